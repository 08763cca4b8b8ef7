"""Reference models behind the model contract: outputs, loss wiring, regularizer, training, config errors."""
import dataclasses
import itertools

import pytest
import torch
from torch import nn

from tf4ctr_fast.config import ModelConfig
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.reference.loss import logloss, total_loss
from tf4ctr_fast.models import build_model

VOCAB = [10, 10, 7]
B = 32
TINY = ModelConfig(embedding_dim=4, mlp_s_hidden=[8], mlp_c_hidden=[8, 8], dnn_hidden=[8, 8],
                   net_dropout=0.1, emb_reg=0.01, alpha=0.25, c=0.7, gamma=2.0, head="reference")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def cfg(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def batch(n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.stack([torch.randint(1, v, (n,)) for v in VOCAB], dim=1)
    return ids, torch.randint(0, 2, (n,)).float()


@pytest.mark.parametrize("ssem,dfm", list(itertools.product(["SER", "GM", "MoE", "share"],
                                                             ["WSF", "VF", "CF", "MoEF", "sum"])))
def test_tf4ctr_outputs_loss_wiring_and_gradients(ssem, dfm):
    ids, y = batch()
    # Without BatchNorm every parameter must get a non-zero gradient (a bias right before BatchNorm
    # has an exactly-zero one).
    plain = build_model(cfg(ssem=ssem, dfm=dfm, batch_norm=False), VOCAB)
    plain.loss(ids, y)["loss"].backward()
    for name, param in plain.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"

    model = build_model(cfg(ssem=ssem, dfm=dfm), VOCAB)
    out = model(ids)
    assert set(out) == {"logit", "z_s", "z_c"}
    assert all(t.shape == (B,) for t in out.values())
    res = model.loss(ids, y)
    assert set(res) == {"loss", "logit"} and res["loss"].dim() == 0

    model.eval()  # deterministic: forward and loss see the same logits
    out, res = model(ids), model.loss(ids, y)
    torch.testing.assert_close(res["logit"], out["logit"], rtol=0, atol=0)
    expected = total_loss(out["logit"], out["z_s"], out["z_c"], y, 0.25, 0.7, 2.0)
    torch.testing.assert_close(res["loss"], expected)


def test_dualmlp_is_shared_embeddings_sum_fusion_and_plain_bce():
    model = build_model(cfg(name="DualMLP", ssem="SER", dfm="VF"), VOCAB).eval()  # ssem/dfm ignored
    assert len([m for m in model.modules() if isinstance(m, nn.Embedding)]) == len(VOCAB)
    ids, y = batch()
    out = model(ids)
    torch.testing.assert_close(out["logit"], out["z_s"] + out["z_c"])
    torch.testing.assert_close(model.loss(ids, y)["loss"], logloss(out["logit"], y))


def test_dnn_outputs_a_logit_and_plain_bce():
    model = build_model(cfg(name="DNN"), VOCAB).eval()
    ids, y = batch()
    out = model(ids)
    assert set(out) == {"logit"} and out["logit"].shape == (B,)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [l.out_features for l in linears] == [8, 8, 1]
    res = model.loss(ids, y)
    torch.testing.assert_close(res["loss"], logloss(out["logit"], y))


def test_forward_and_loss_go_through_the_replaceable_head():
    model = build_model(TINY, VOCAB)
    seen = []

    def fake_head(h_s, h_c, y=None):
        seen.append((h_s.shape, h_c.shape, y is not None))
        zeros = torch.zeros(B)
        return {"logit": zeros, "z_s": zeros, "z_c": zeros, "loss": torch.tensor(7.0)}

    model.head = fake_head
    ids, y = batch()
    model(ids)
    assert model.loss(ids, y)["loss"].item() == 7.0
    assert seen == [((B, 8), (B, 8), False), ((B, 8), (B, 8), True)]


@pytest.mark.parametrize("name,ssem,num_tables", [
    ("TF4CTR", "SER", 2 * len(VOCAB)), ("TF4CTR", "GM", len(VOCAB)),
    ("DualMLP", "SER", len(VOCAB)), ("DNN", "SER", len(VOCAB))])
def test_regularization_is_half_lambda_times_squared_norm_of_all_tables(name, ssem, num_tables):
    emb_reg = 0.3
    model = build_model(cfg(name=name, ssem=ssem, emb_reg=emb_reg), VOCAB)
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    assert len(tables) == num_tables
    total = 0.0
    with torch.no_grad():
        for t, weight in enumerate(tables):  # known values, summed by hand in plain Python
            rows, cols = weight.shape
            values = [[(t + 1) * 0.01 * (r - c) for c in range(cols)] for r in range(rows)]
            weight.copy_(torch.tensor(values))
            total += sum(v * v for row in values for v in row)
    assert model.regularization().item() == pytest.approx(emb_reg / 2 * total, rel=1e-5)


@pytest.mark.parametrize("name,ssem,dfm", [("TF4CTR", "SER", "WSF"), ("TF4CTR", "GM", "VF"),
                                           ("TF4CTR", "MoE", "MoEF"), ("DualMLP", "share", "sum"),
                                           ("DNN", "SER", "WSF")])
def test_training_steps_reduce_loss_on_a_planted_problem(name, ssem, dfm):
    model = build_model(cfg(name=name, ssem=ssem, dfm=dfm), VOCAB)
    ids, _ = batch(256)
    y = (ids[:, 0] >= 5).float()  # field 0 alone decides the label
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model.loss(ids, y)["loss"].item()
        model.train()
        return loss

    before = eval_loss()
    # 80 steps: at 40, GM+VF sat right at the bar with 2 threads (reduction order), 0.544 x before
    for _ in range(80):
        opt.zero_grad()
        (model.loss(ids, y)["loss"] + model.regularization()).backward()
        opt.step()
    assert eval_loss() < 0.5 * before


@pytest.mark.parametrize("changes,key", [
    ({"name": "NoSuchModel"}, "model.name"),
    ({"ssem": "ser"}, "model.ssem"),
    ({"dfm": "Sum"}, "model.dfm"),
    ({"head": "triton"}, "model.head"),
    ({"embedding_dim": 5}, "model.embedding_dim"),
    ({"embedding_dim": 0}, "model.embedding_dim"),
    ({"mlp_c_hidden": [8, 0]}, "model.mlp_c_hidden"),
    ({"net_dropout": 1.0}, "model.net_dropout"),
    ({"emb_reg": -1.0}, "model.emb_reg"),
    ({"alpha": 1.5}, "model.alpha"),
    ({"c": -0.1}, "model.c"),
    ({"gamma": -1.0}, "model.gamma"),
    ({"vf_tau": 0.0}, "model.vf_tau"),
])
def test_bad_config_raises_input_error_naming_the_key(changes, key):
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        build_model(cfg(**changes), VOCAB)


def test_odd_embedding_dim_is_fine_without_ser():
    model = build_model(cfg(name="DualMLP", embedding_dim=5), VOCAB)
    assert model(batch()[0])["logit"].shape == (B,)


@pytest.mark.parametrize("name,dfm", [("TF4CTR", "WSF"), ("TF4CTR", "MoEF"), ("TF4CTR", "CF"),
                                      ("TF4CTR", "VF"), ("DualMLP", "WSF")])
def test_fused_head_model_matches_reference_head_model(name, dfm):
    """The engine's default head (one fused op) against the op-by-op head, same weights: the training
    loss and every parameter gradient."""
    from tf4ctr_fast import ops

    assert ops.HAS_KERNELS, "the C++ kernels are not built: `pip install --no-build-isolation -e .`"
    torch.manual_seed(0)
    reference = build_model(cfg(name=name, dfm=dfm, head="reference"), VOCAB)
    fused = build_model(cfg(name=name, dfm=dfm, head="fused"), VOCAB)
    fused.load_state_dict(reference.state_dict())
    ids, y = batch()
    grads = []
    for model in (reference, fused):
        model.eval()  # VF draws Gumbel noise in training mode
        model.zero_grad()
        loss = model.loss(ids, y)["loss"]
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_ref, g_ref), (loss_fused, g_fused) = grads
    torch.testing.assert_close(loss_fused, loss_ref, rtol=1e-5, atol=1e-7)
    assert g_ref.keys() == g_fused.keys()
    for n in g_ref:
        torch.testing.assert_close(g_fused[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)
