"""TF4CTR built from parts (models/tf4ctr.py, models/encoders.py): the plug-in presets' encoders against
formulas written here, the fused head against the op-by-op head for every preset (values and gradients,
both embedding backends), what runs op by op and that it is logged once, the config errors."""
import copy
import logging
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")

from tf4ctr_fast.config import ModelConfig  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.layers.cross import CrossNetMix  # noqa: E402
from tf4ctr_fast.models import build_model, copy_weights  # noqa: E402

try:
    import torchrec  # noqa: F401
    BACKENDS = ["reference", "torchrec"]
except ImportError:  # pragma: no cover
    BACKENDS = ["reference"]

PRESETS = ["TF4CTR", "TF4CTR-DeepFM", "TF4CTR-WideDeep", "TF4CTR-xDeepFM"]
FUSED_DFMS = ["WSF", "CF", "MoEF", "sum"]
VOCAB = [11, 7, 9, 5]
D = 8
B = 32


def config(name, backend="reference", head="fused", **params):
    base = {"mlp_s_hidden": [8], "mlp_c_hidden": [8, 8], "alpha": 0.25, "c": 0.7, "gamma": 2.0}
    if name == "TF4CTR-xDeepFM":
        base["simple_encoder"] = {"name": "CIN", "cin_hidden_units": [4, 3]}
    base.update(params)
    return ModelConfig(name=name, embedding_dim=D, batch_norm=False, net_dropout=0.0, emb_reg=0.0, head=head,
                       backend=backend, params=base)


def build(cfg, fused=True):
    return build_model(cfg, VOCAB, sparse_optimizer="sgd", sparse_lr=1.0, fused=fused)


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (B,), generator=gen) for v in VOCAB], dim=1)
    return ids, torch.randint(0, 2, (B,), generator=gen).float()


def perturbed(model):
    """Non-zero biases / WSF weights / embeddings far from 0, so every term carries weight."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for t in model.field_tables():
            for w in t.field_weights().values():
                w.copy_(torch.randn(w.shape, generator=gen) * 0.3)
        for p in model.dense_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def step(model, x, y):
    """(loss, logit, dense grads by name, table rows after one fused SGD step / table grads)."""
    model.zero_grad(set_to_none=True)
    out = model(x, y)
    out["loss"].backward()
    tables = {id(w) for t in model.field_tables() for w in t.parameters()}
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and id(p) not in tables}
    fused_tables = model.sparse_optimizer() is not None
    rows = {k: w.detach().clone() if fused_tables else w.grad
            for t in model.field_tables() for k, w in t.field_weights().items()}
    return out["loss"].detach(), out["logit"].detach(), grads, rows


# DLF's network at toy sizes (models/dlf.py DLFEncoder), with attention tokens: 2 heads over d = 8
SMALL_DLF = {"name": "DLF", "num_layers": 2, "lcb_tokens": 3, "fmb_tokens": 2, "rank": 3, "attention": "cross",
             "attention_tokens": 2, "block_hidden_units": [8]}

# Every preset the fused head takes, and the xDeepFM preset's CIN encoder without its wide logit.
FUSABLE = {"TF4CTR": {}, "TF4CTR-DeepFM": {}, "TF4CTR-WideDeep": {},
           "TF4CTR-xDeepFM-no-wide": {"wide_logit": False,
                                      "simple_encoder": {"name": "CIN", "cin_hidden_units": [4], "output_dim": 6}},
           "TF4CTR-DLF": {"complex_encoder": SMALL_DLF}}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dfm", FUSED_DFMS)
@pytest.mark.parametrize("case", list(FUSABLE))
def test_fused_head_matches_op_by_op(case, dfm, backend):
    torch.manual_seed(0)
    name = case.removesuffix("-no-wide")
    fused = perturbed(build(config(name, backend, "fused", dfm=dfm, **FUSABLE[case])))
    ops = build(config(name, backend, "reference", dfm=dfm, **FUSABLE[case]))
    copy_weights(fused, ops)
    assert fused.fused_head and not ops.fused_head
    x, y = batch()
    loss_f, logit_f, grads_f, rows_f = step(fused, x, y)
    loss_o, logit_o, grads_o, rows_o = step(ops, x, y)
    # The fused kernel works on logits, the reference on clamped probabilities: float32 rounding apart.
    torch.testing.assert_close(loss_f, loss_o, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(logit_f, logit_o, rtol=2e-5, atol=1e-5)
    assert grads_f.keys() == grads_o.keys() and grads_f
    for n in grads_o:
        scale = grads_o[n].abs().max().item()
        torch.testing.assert_close(grads_f[n], grads_o[n], rtol=1e-4, atol=1e-4 * scale + 1e-7, msg=n)
    for k in rows_o:   # torchrec: rows after the fused SGD step; reference: the tables' gradients
        torch.testing.assert_close(rows_f[k], rows_o[k], rtol=1e-4, atol=1e-6, msg=str(k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_width_one_encoders_feed_the_fused_head(backend):
    """The DeepFM and WideDeep presets hand the head h_s of width 1."""
    for name in ("TF4CTR-DeepFM", "TF4CTR-WideDeep"):
        model = build(config(name, backend))
        h_s, h_c, wide = model.encode(batch()[0])
        assert h_s.shape == (B, 1) and h_c.shape == (B, 8) and wide is None and model.fused_head


def table(model, kind, field):
    """The reference backend's weight of one table kind and field."""
    return model.field_tables()[0].field_weights()[(kind, f"f{field}")]


def test_deepfm_preset_simple_encoder_is_a_per_sample_fm_on_the_easy_embedding():
    model = perturbed(build(config("TF4CTR-DeepFM"))).eval()
    x, _ = batch(2)
    with torch.no_grad():
        h_s = model.encode(x)[0].squeeze(-1)
    fm = model.fm_s
    for i in range(4):   # each sample on its own: no batch-summed term
        e = [table(model, "easy", f)[x[i, f]] for f in range(len(VOCAB))]
        pairs = sum(torch.dot(e[a], e[b]) for a in range(len(e)) for b in range(a + 1, len(e)))
        first = sum(table(model, "lr_simple", f)[x[i, f], 0] for f in range(len(VOCAB))) + fm.lr.bias[0]
        torch.testing.assert_close(h_s[i], (pairs + first).detach(), rtol=1e-5, atol=1e-6)
    assert table(model, "easy", 0).shape[1] == D // 2 and table(model, "hard", 0).shape[1] == D


def test_widedeep_preset_simple_encoder_is_lr_on_the_ids_and_shares_one_embedding():
    model = perturbed(build(config("TF4CTR-WideDeep"))).eval()
    x, _ = batch(3)
    with torch.no_grad():
        h_s = model.encode(x)[0].squeeze(-1)
    want = sum(table(model, "lr_simple", f)[x[:, f], 0] for f in range(len(VOCAB)))
    torch.testing.assert_close(h_s, want, rtol=1e-6, atol=1e-7)
    assert {kind for kind, _ in model.field_tables()[0].field_weights()} == {"embedding", "lr_simple"}
    assert not [n for n, _ in model.named_parameters() if "lr_s." in n]   # LR without bias


def test_xdeepfm_preset_adds_the_wide_logit_to_the_fused_logit_only():
    model = perturbed(build(config("TF4CTR-xDeepFM", dfm="WSF"))).eval()
    x, _ = batch(4)
    with torch.no_grad():
        out = model(x)
        h_s, h_c, wide = model.encode(x)
    assert h_s.shape == (B, 7)          # CIN's pooled maps, 4 + 3
    want_wide = sum(table(model, "lr_wide", f)[x[:, f], 0] for f in range(len(VOCAB)))
    torch.testing.assert_close(wide, want_wide, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["z_s"], model.head_s(h_s).squeeze(-1), rtol=1e-6, atol=1e-6)
    fused = model.dfm.a_s * out["z_s"] + model.dfm.a_c * out["z_c"] + want_wide
    torch.testing.assert_close(out["logit"], fused, rtol=1e-6, atol=1e-6)


def test_cin_encoder_with_output_dim_is_the_linear_of_its_pooled_maps():
    """output_dim: the authors' form, CIN's Linear to the complex MLP's last width."""
    spec = {"name": "CIN", "cin_hidden_units": [4, 3], "output_dim": 8}
    model = perturbed(build(config("TF4CTR-xDeepFM", simple_encoder=spec, dfm="CF"))).eval()
    x, _ = batch(5)
    with torch.no_grad():
        h_s = model.encode(x)[0]
        cin = model.cin_s.cin
        emb = torch.stack([table(model, "easy", f)[x[:, f]] for f in range(len(VOCAB))], dim=1)
        pooled, x_k = [], emb
        for conv in cin.layers:   # the CIN recursion, written out
            outer = (emb[:, :, None, :] * x_k[:, None, :, :]).reshape(B, -1, emb.shape[-1])
            x_k = conv(outer)
            pooled.append(x_k.sum(-1))
        want = cin.fc(torch.cat(pooled, dim=-1))
    assert h_s.shape == (B, 8)
    torch.testing.assert_close(h_s, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [{"name": "CrossNet", "num_cross_layers": 2},
                                  {"name": "CrossNetV2", "num_cross_layers": 2},
                                  {"name": "CrossNetV2", "use_low_rank_mixture": True, "low_rank": 3,
                                   "num_experts": 2, "num_cross_layers": 2}])
def test_cross_network_encoders_are_the_cross_recursions(spec):
    model = perturbed(build(config("TF4CTR", simple_encoder=spec))).eval()
    x, _ = batch(7)
    with torch.no_grad():
        h_s = model.encode(x)[0]
        e = torch.cat([table(model, "easy", f)[x[:, f]] for f in range(len(VOCAB))], dim=-1)
        x_l, cross = e, model.crossnet_s.crossnet
        if spec.get("use_low_rank_mixture"):   # DCNv2's mixture, its own recursion tested with DCNv2
            assert isinstance(cross, CrossNetMix) and len(cross.u) == 2 and cross.u[0].shape == (2, e.shape[1], 3)
            x_l = cross(e)
        else:                                  # written out: x_{l+1} = x_l + x_0 * (...)
            for layer in cross.layers:
                x_l = x_l + (e * (x_l @ layer.weight.weight.T) + layer.bias if spec["name"] == "CrossNet"
                             else e * layer(x_l))
    assert h_s.shape == e.shape
    torch.testing.assert_close(h_s, x_l, rtol=1e-5, atol=1e-6)


def test_plain_tf4ctr_is_unchanged_by_the_encoder_keys():
    torch.manual_seed(5)
    plain = build(config("TF4CTR"))
    torch.manual_seed(5)
    spelled = build(config("TF4CTR", simple_encoder={"name": "MLP"}, complex_encoder={"name": "MLP"}))
    assert plain.state_dict().keys() == spelled.state_dict().keys()
    assert all(torch.equal(v, spelled.state_dict()[k]) for k, v in plain.state_dict().items())
    assert any(k.startswith("mlp_s.layers.") for k in plain.state_dict())


@pytest.mark.parametrize("name,params,why", [
    ("TF4CTR-xDeepFM", {}, "wide logit"),
    ("TF4CTR", {"dfm": "VF"}, "VF samples Gumbel noise"),
    ("TF4CTR-DeepFM", {"loss": "focal"}, "not model.loss focal"),
])
def test_what_the_fused_head_cannot_take_runs_op_by_op_and_says_so_once(name, params, why, caplog):
    loss = params.pop("loss", None)
    cfg = config(name, **params)
    cfg.loss = loss
    with caplog.at_level(logging.INFO, logger="tf4ctr_fast"):
        model = build(cfg)
        x, y = batch()
        for _ in range(2):
            model(x, y)["loss"].backward()
    said = [r.getMessage() for r in caplog.records if "runs op by op" in r.getMessage()]
    assert len(said) == 1 and why in said[0] and not model.fused_head


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("loss", ["bce", "focal", "rce"])
def test_a_non_twin_loss_replaces_the_whole_loss_of_a_twin_model(name, loss):
    """model.loss other than twin_focus: the loss of the fused logit only, no auxiliary terms."""
    from tf4ctr_fast.losses import build_loss

    cfg = config(name, head="reference")
    cfg.loss = loss
    model = perturbed(build(cfg))
    x, y = batch(6)
    out = model(x, y)
    torch.testing.assert_close(out["loss"], build_loss(loss)(out["logit"], y), rtol=0, atol=0)


@pytest.mark.parametrize("params,match", [
    ({"simple_encoder": {"name": "GBDT"}}, r"'model\.params\.simple_encoder': 'name' must be one of MLP, LR, FM, CIN, CrossNet, CrossNetV2, DLF, got \{'name': 'GBDT'\}"),
    ({"complex_encoder": {"name": "CIN", "depth": 2}},
     r"'model\.params\.complex_encoder\.depth' is unknown for encoder CIN \(its keys: cin_hidden_units, output_dim\)"),
    ({"simple_encoder": {"name": "CIN", "cin_hidden_units": []}},
     r"'model\.params\.simple_encoder\.cin_hidden_units': must be a non-empty list"),
    ({"simple_encoder": {"name": "CIN", "output_dim": 0}},
     r"'model\.params\.simple_encoder\.output_dim': must be unset or at least 1 \(encoder CIN\), got 0"),
    ({"simple_encoder": {"name": "FM", "k": 1}}, r"'model\.params\.simple_encoder\.k' is unknown for encoder FM"),
    ({"simple_encoder": {}}, r"'model\.params\.simple_encoder': 'name' must be one of"),
    ({"ssem": "SER"}, r"'model\.params\.ssem': must be share or GM when an encoder reads no embedding"),
])
def test_config_errors_name_the_key(params, match):
    with pytest.raises(InputError, match=match):
        build(config("TF4CTR-WideDeep", **params))


def test_presets_defaults():
    from tf4ctr_fast.models import resolve_params

    deepfm = resolve_params(ModelConfig(name="TF4CTR-DeepFM"))
    widedeep = resolve_params(ModelConfig(name="TF4CTR-WideDeep"))
    xdeepfm = resolve_params(ModelConfig(name="TF4CTR-xDeepFM"))
    assert (deepfm.ssem, deepfm.simple_encoder, deepfm.complex_encoder, deepfm.wide_logit) == \
        ("SER", {"name": "FM"}, {"name": "MLP"}, False)
    assert (widedeep.ssem, widedeep.simple_encoder, widedeep.wide_logit) == ("share", {"name": "LR"}, False)
    assert (xdeepfm.ssem, xdeepfm.simple_encoder, xdeepfm.wide_logit) == ("SER", {"name": "CIN"}, True)
    assert copy.deepcopy(deepfm) == deepfm


def test_dlf_encoder_is_dlfs_network_on_the_hard_embedding():
    """TF4CTR-DLF's complex side: DLF's stack over the SER hard embedding read as [B, F, d] tokens."""
    from tf4ctr_fast.models.dlf import DLFEncoder

    model = build(config("TF4CTR-DLF", complex_encoder=SMALL_DLF)).eval()
    assert isinstance(model.dlf_c, DLFEncoder)
    # (2 fmb + lcb + att) tokens of the hard side's d = 8
    assert model.dlf_c.output_dim == (2 * 2 + 3 + 2) * D
    x = batch()[0]
    _, h_c, _ = model.encode(x)
    _, hard, *_ = model.ssem(x)
    torch.testing.assert_close(h_c, model.dlf_c.stack(hard.view(B, len(VOCAB), D)))


def test_dlf_encoder_heads_must_divide_the_field_dim():
    with pytest.raises(InputError, match="num_heads"):
        build(config("TF4CTR-DLF", complex_encoder={**SMALL_DLF, "num_heads": 3}))
