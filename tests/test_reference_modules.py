"""Reference building blocks, SSEM and DFM variants: shapes, semantics by hand, gradients, eval
determinism."""
import math

import pytest
import torch
from torch import nn

from tf4ctr_fast.errors import InputError
from tf4ctr_fast.reference.dfm import CF, VF, WSF, MoEF, SumFusion, build_dfm
from tf4ctr_fast.layers.dropout import Dropout
from tf4ctr_fast.layers.embedding import FieldEmbeddings
from tf4ctr_fast.layers.mlp import MLPBlock
from tf4ctr_fast.layers.ssem import GM, SER, MoE, Share, build_ssem

VOCAB = [6, 4, 9]
F, D, B = len(VOCAB), 4, 16
HS, HC = 5, 7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_ids(batch: int = B) -> torch.Tensor:
    # Ids from 1 so every looked-up row can receive gradient (row 0 is padding).
    return torch.stack([torch.randint(1, v, (batch,)) for v in VOCAB], dim=1)


def assert_every_parameter_has_gradient(module: nn.Module) -> None:
    # Callers build without BatchNorm: a bias right before BatchNorm has an exactly-zero gradient.
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# ---------------------------------------------------------------- layers

def test_mlp_block_layer_order_and_hand_forward():
    block = MLPBlock(6, [5, 3], batch_norm=True, dropout=0.2)
    kinds = [type(m) for m in block.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, Dropout] * 2
    assert block.output_dim == 3

    plain = MLPBlock(6, [5, 3], batch_norm=False, dropout=0.0)
    assert [type(m) for m in plain.layers] == [nn.Linear, nn.ReLU] * 2
    x = torch.randn(B, 6)
    l1, l2 = plain.layers[0], plain.layers[2]
    expected = torch.relu(torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)
    torch.testing.assert_close(plain(x), expected)
    assert MLPBlock(6, [], batch_norm=True, dropout=0.1).output_dim == 6


def test_linear_init_is_xavier_normal_with_zero_bias():
    linear = MLPBlock(300, [200], batch_norm=False, dropout=0.0).layers[0]
    assert torch.all(linear.bias == 0)
    xavier_std = math.sqrt(2.0 / (300 + 200))
    assert linear.weight.std().item() == pytest.approx(xavier_std, rel=0.05)


def test_field_embeddings_concatenate_rows_and_init_padding_zero():
    emb = FieldEmbeddings([5000, 7], dim=8)
    big = emb.tables[0].weight
    assert torch.all(big[0] == 0)
    assert big[1:].std().item() == pytest.approx(1e-4, rel=0.05)
    assert [t.padding_idx for t in emb.tables] == [0, 0]

    ids = torch.tensor([[3, 0], [4999, 6]])
    out = emb(ids)
    assert out.shape == (2, 16) and emb.output_dim == 16
    for b in range(2):
        for f in range(2):
            torch.testing.assert_close(out[b, f * 8:(f + 1) * 8], emb.tables[f].weight[ids[b, f]])
    out.sum().backward()
    assert torch.all(emb.tables[1].weight.grad[0] == 0)  # padding row never learns


# ---------------------------------------------------------------- SSEM

SSEM_CASES = {  # name: (factory(batch_norm, dropout), simple_dim, complex_dim)
    "SER": (lambda bn, dr: SER(VOCAB, D), F * D // 2, F * D),
    "GM": (lambda bn, dr: GM(VOCAB, D, bn, dr), F * D, F * D),
    "MoE": (lambda bn, dr: MoE(VOCAB, D, bn, dr), F * D, F * D),
    "share": (lambda bn, dr: Share(VOCAB, D), F * D, F * D),
}


@pytest.mark.parametrize("name", SSEM_CASES)
def test_ssem_shapes_gradients_and_eval_determinism(name):
    make, simple_dim, complex_dim = SSEM_CASES[name]
    ids = random_ids()
    ssem = make(False, 0.0)
    e_s, e_c = ssem(ids)
    # Random weights: a plain sum would cancel GM's gate (g*e + (1-g)*e = e).
    ((e_s * torch.randn_like(e_s)).sum() + (e_c * torch.randn_like(e_c)).sum()).backward()
    assert_every_parameter_has_gradient(ssem)

    ssem = make(True, 0.1)
    assert (ssem.simple_dim, ssem.complex_dim) == (simple_dim, complex_dim)
    e_s, e_c = ssem(ids)
    assert e_s.shape == (B, simple_dim) and e_c.shape == (B, complex_dim)
    ssem.eval()
    first, second = ssem(ids), ssem(ids)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_ssem_embedding_tables_are_every_embedding_weight():
    for name, (make, _, _) in SSEM_CASES.items():
        ssem = make(True, 0.0)
        expected = {id(m.weight) for m in ssem.modules() if isinstance(m, nn.Embedding)}
        assert {id(w) for w in ssem.embedding_tables()} == expected, name
    assert len(SER(VOCAB, D).embedding_tables()) == 2 * F


def test_ser_reads_easy_half_dim_and_hard_full_dim_tables():
    ser = SER(VOCAB, D)
    ids = random_ids(3)
    e_s, e_c = ser(ids)
    for f in range(F):
        easy, hard = ser.easy.tables[f].weight, ser.hard.tables[f].weight
        assert easy.shape == (VOCAB[f], D // 2) and hard.shape == (VOCAB[f], D)
        torch.testing.assert_close(e_s[:, f * D // 2:(f + 1) * D // 2], easy[ids[:, f]])
        torch.testing.assert_close(e_c[:, f * D:(f + 1) * D], hard[ids[:, f]])


def test_gm_splits_one_embedding_by_a_per_sample_gate():
    gm = GM(VOCAB, D, batch_norm=True, dropout=0.1).eval()
    with torch.no_grad():
        for table in gm.embedding.tables:  # bigger than the 1e-4 init so the ratios are well defined
            table.weight.uniform_(0.5, 1.5)
    ids = random_ids()
    e = gm.embed(ids)
    e_s, e_c = gm(ids)
    torch.testing.assert_close(e_s + e_c, e)
    g = e_s / e  # one scalar per sample, in (0, 1)
    torch.testing.assert_close(g, g[:, :1].expand_as(g))
    assert torch.all((g > 0) & (g < 1))
    assert gm.gate_mlp.output_dim == F * D // 4 and gm.gate_out.out_features == 1


def test_moe_mixes_two_experts_with_two_softmax_gates():
    moe = MoE(VOCAB, D, batch_norm=True, dropout=0.1).eval()
    ids = random_ids()
    e = moe.embed(ids)
    m1, m2 = moe.experts[0](e), moe.experts[1](e)
    assert m1.shape == (B, F * D)
    assert [l.out_features for l in moe.experts[0].layers if isinstance(l, nn.Linear)] == [F * D // 2, F * D]
    e_s, e_c = moe(ids)
    for gate, got in zip(moe.gates, (e_s, e_c)):
        logits = gate(e)
        w1 = 1 / (1 + torch.exp(logits[:, 1] - logits[:, 0]))  # softmax over two, by hand
        torch.testing.assert_close(got, w1[:, None] * m1 + (1 - w1[:, None]) * m2)


def test_share_feeds_both_encoders_the_same_embedding():
    share = Share(VOCAB, D)
    e_s, e_c = share(random_ids())
    assert e_s is e_c


def test_build_ssem_names_and_errors():
    assert isinstance(build_ssem("share", VOCAB, D, True, 0.0), Share)
    assert isinstance(build_ssem("MoE", VOCAB, D, True, 0.0), MoE)
    with pytest.raises(InputError, match="model.ssem"):
        build_ssem("SERR", VOCAB, D, True, 0.0)
    with pytest.raises(InputError, match="model.embedding_dim"):
        build_ssem("SER", VOCAB, 5, True, 0.0)


# ---------------------------------------------------------------- DFM

DFM_NAMES = ["WSF", "VF", "CF", "MoEF", "sum"]


def dfm_inputs(requires_grad: bool = False):
    h_s, h_c = torch.randn(B, HS), torch.randn(B, HC)
    z_s, z_c = torch.randn(B), torch.randn(B)
    return [t.requires_grad_(requires_grad) for t in (h_s, h_c, z_s, z_c)]


@pytest.mark.parametrize("name", DFM_NAMES)
def test_dfm_shape_gradients_and_eval_determinism(name):
    dfm = build_dfm(name, HS, HC, vf_tau=0.8)
    inputs = dfm_inputs(requires_grad=True)
    z = dfm(*inputs)
    assert z.shape == (B,)
    (z * torch.randn(B)).sum().backward()
    assert_every_parameter_has_gradient(dfm)
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in inputs)

    dfm.eval()
    inputs = dfm_inputs()
    torch.testing.assert_close(dfm(*inputs), dfm(*inputs), rtol=0, atol=0)


def test_wsf_starts_as_the_mean_of_both_logits():
    _, _, z_s, z_c = inputs = dfm_inputs()
    torch.testing.assert_close(WSF()(*inputs), 0.5 * z_s + 0.5 * z_c)


def test_sum_fusion_adds_logits():
    _, _, z_s, z_c = inputs = dfm_inputs()
    torch.testing.assert_close(SumFusion()(*inputs), z_s + z_c)


def test_vf_eval_is_tempered_softmax_vote_and_training_is_noisy():
    tau = 0.8
    vf = VF(HS, HC, tau)
    assert vf.pi_s.bias is None and vf.pi_c.bias is None
    h_s, h_c, z_s, z_c = inputs = dfm_inputs()
    pi_s, pi_c = h_s @ vf.pi_s.weight[0], h_c @ vf.pi_c.weight[0]
    p_s = torch.exp(pi_s / tau) / (torch.exp(pi_s / tau) + torch.exp(pi_c / tau))
    vf.eval()
    torch.testing.assert_close(vf(*inputs), p_s * z_s + (1 - p_s) * z_c)

    vf.train()
    first, second = vf(*inputs), vf(*inputs)
    assert not torch.equal(first, second)  # Gumbel noise
    low, high = torch.minimum(z_s, z_c), torch.maximum(z_s, z_c)
    assert torch.all((first >= low - 1e-6) & (first <= high + 1e-6))  # still a convex vote
    assert torch.all((first > low + 1e-6) & (first < high - 1e-6))  # soft: never one branch alone


def test_cf_is_one_linear_head_over_both_encodings():
    cf = CF(HS, HC)
    with torch.no_grad():
        cf.fc.bias.fill_(0.3)
    h_s, h_c, _, _ = inputs = dfm_inputs()
    w = cf.fc.weight[0]
    torch.testing.assert_close(cf(*inputs), h_s @ w[:HS] + h_c @ w[HS:] + 0.3)


def test_moef_mixes_two_linear_experts_by_a_softmax_gate():
    moef = MoEF(HS, HC)
    with torch.no_grad():
        moef.gate.bias.copy_(torch.tensor([0.2, -0.1]))
        moef.experts.bias.copy_(torch.tensor([0.5, -0.7]))
    h_s, h_c, _, _ = inputs = dfm_inputs()
    h = torch.cat([h_s, h_c], dim=1)
    gate = h @ moef.gate.weight.T + moef.gate.bias
    experts = h @ moef.experts.weight.T + moef.experts.bias
    g0 = torch.exp(gate[:, 0]) / torch.exp(gate).sum(dim=1)
    torch.testing.assert_close(moef(*inputs), g0 * experts[:, 0] + (1 - g0) * experts[:, 1])


def test_build_dfm_unknown_name_names_the_key():
    with pytest.raises(InputError, match="model.dfm"):
        build_dfm("WSFF", HS, HC)
