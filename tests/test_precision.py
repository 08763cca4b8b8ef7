"""train.precision: the choice, the loss kept in float32 under bf16 autocast, the fused head against the
reference head under bf16, and a bf16 training run against the same run in float32."""
from __future__ import annotations

import pytest
import torch

from tf4ctr_fast.config import ModelConfig
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.reference.loss import logloss, total_loss
from tf4ctr_fast.models import build_model
from tf4ctr_fast.train.precision import autocast, cpu_bf16_flags, resolve_precision
from tf4ctr_fast.train.trainer import train

from test_trainer import make_cfg, planted_data  # noqa: E402

CPU = torch.device("cpu")
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n"
WITHOUT = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"


def test_choice_follows_the_cpu_flags():
    assert cpu_bf16_flags(WITH_BF16) == ["avx512_bf16"]
    assert resolve_precision("auto", CPU, WITH_BF16)[0] == "bf16"
    assert resolve_precision("auto", CPU, WITHOUT)[0] == "fp32"
    assert resolve_precision("fp32", CPU, WITH_BF16) == ("fp32", "as set")
    precision, why = resolve_precision("bf16", CPU, WITHOUT)
    assert precision == "bf16" and "emulated" in why
    with pytest.raises(InputError, match="train.precision"):
        resolve_precision("fp16", CPU, WITH_BF16)


def test_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    logit, z_s, z_c = (torch.randn(64).bfloat16() for _ in range(3))
    y = (torch.rand(64) < 0.3).float()
    with autocast("bf16", CPU):
        got = total_loss(logit, z_s, z_c, y, 0.25, 0.7, 1.0)
        plain = logloss(logit, y)
    assert got.dtype == plain.dtype == torch.float32
    want = total_loss(logit.float(), z_s.float(), z_c.float(), y, 0.25, 0.7, 1.0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _pair(head: str):
    torch.manual_seed(0)
    return build_model(ModelConfig(head=head, mlp_s_hidden=[32], mlp_c_hidden=[32, 32], net_dropout=0.0,
                                   batch_norm=False),  # BN makes the Linear biases' gradients pure rounding noise
                       [50, 60, 70])


def test_fused_head_matches_reference_head_under_bf16():
    """The fast path's bf16 twin: the same encoders in bf16, the head in float32 (fused) or in bf16
    (reference Linear layers): loss, logits and every gradient agree to bf16 rounding."""
    fused, ref = _pair("fused"), _pair("reference")
    ids = torch.randint(1, 50, (256, 3))
    y = (torch.rand(256) < 0.4).float()
    outs = {}
    for name, model in (("fused", fused), ("reference", ref)):
        with autocast("bf16", CPU):
            out = model.loss(ids, y)
        out["loss"].backward()
        assert out["loss"].dtype == torch.float32
        outs[name] = (out["loss"].detach(), out["logit"].detach().float(),
                      {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (lf, zf, gf), (lr_, zr, gr) = outs["fused"], outs["reference"]
    torch.testing.assert_close(lf, lr_, rtol=1e-2, atol=0)
    torch.testing.assert_close(zf, zr, rtol=0, atol=3e-2 * float(zr.abs().max()))
    assert gf.keys() == gr.keys()
    for name in gf:
        scale = float(gr[name].abs().max())
        torch.testing.assert_close(gf[name], gr[name], rtol=0, atol=5e-2 * scale + 1e-8, msg=name)


def test_bf16_run_learns_like_the_float32_run(tmp_path):
    results = {}
    for precision in ("fp32", "bf16"):
        data, _ = planted_data()
        cfg = make_cfg(tmp_path / precision, precision=precision, lr=0.01, epochs=4)
        cfg.model.mlp_s_hidden, cfg.model.mlp_c_hidden, cfg.model.net_dropout = [32], [32, 32], 0.0
        results[precision] = train(cfg, data)
    first = (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()[0]
    assert '"precision": "bf16"' in first
    assert results["bf16"]["test"]["auc"] > 0.7
    assert abs(results["bf16"]["test"]["auc"] - results["fp32"]["test"]["auc"]) < 0.02
