"""Fused TF4CTR twin head: auxiliary logits z_s, z_c, DFM fusion, mean BCE on σ(z) plus the Twin Focus
loss, and the gradients of every input, in one pass over h_s and h_c.

Semantics: shared/REFERENCE.md ("Model", "DFM", "Twin Focus loss"). Parity target: the reference head,
`Linear` heads + `reference.dfm` module + `reference.loss.total_loss`. Kernels: kernels/twin_head.cpp
(CPU, float32/float64), kernels/twin_head_triton.py (CUDA, float32/bfloat16/float16 in, float32 math).
Tests: tests/test_twin_head_cpu.py, tests/test_twin_head_triton.py; speed: bench/test_bench_twin_head.py.

Numerics. The kernels evaluate the loss on logits, log σ(z) = -softplus(-z), so loss and gradients are
finite and exact to rounding for any logit (tested to |z| = 120). The reference applies BCE to
probabilities and PyTorch clamps log at -100, which departs from the exact value where σ saturates
(worst case: the wrong label, log(1 - σ(|z|))):
  float32 reference: 2.6% off at |z| = 16; from |z| ≈ 16.6 σ rounds to 1, BCE becomes 100 instead of
    |z| and its gradient 0 instead of ±1.
  float64 reference: relative error ≈ 1e-16·e^|z| / |z|: below float32 rounding to |z| ≈ 23, 3e-7 at
    |z| = 25, 4e-5 at |z| = 30; the clamp from |z| ≈ 37.
So against the float64 reference the float32 kernels agree to float32 rounding for |z| ≤ 25 (tested at
1e-5 relative, loss, logits and every gradient); beyond, the difference is the reference's error.

Autograd. Only `loss` is differentiable; `z`, `z_s`, `z_c` are returned as non-differentiable outputs
(training backpropagates the loss only; use the reference head for anything that differentiates the
logits). The forward pass reads h once and, while each row is in cache, also produces the parameter
gradients and the per-row derivatives g = d loss / d(projections) ([B, K]); backward multiplies those
by grad_output and writes grad_h = grad_output · g @ w (op twin_head_grad_h), a pass that reads no h.
So a training step reads h once and writes grad_h once (the reference reads h twice), any grad_output
costs the same, and nothing [B, H]-sized is held between forward and backward. Double backward is not
supported.

VF (voting fusion) is not fused: it samples Gumbel noise during training. `fused_head_from_modules`
runs the reference path for it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference import dfm as ref_dfm
from ..reference.loss import total_loss
from ..reference.twin_head import reference_head
from . import HAS_KERNELS

# Fusion name -> the kernels' code. The kernels see K projections per branch: row 0 is the auxiliary
# head, rows 1.. the fusion's own projections of [h_s ; h_c], split at Hs into a w_s and a w_c part.
FUSIONS = {"sum": 0, "WSF": 1, "CF": 2, "MoEF": 3}
_PARAM_COUNT = {"sum": 0, "WSF": 2, "CF": 2, "MoEF": 4}

_OP = "tf4ctr_fast::twin_head"
_GRAD_H_OP = "tf4ctr_fast::twin_head_grad_h"


def twin_head(h_s: Tensor, h_c: Tensor, w_s: Tensor, b_s: Tensor, w_c: Tensor, b_c: Tensor,
              fusion: str, fusion_params: Sequence[Tensor], y: Tensor,
              alpha: float, c: float, gamma: float, twin_focus: bool = True,
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, z, z_s, z_c) of the TF4CTR head; see the module docstring for numerics and autograd.

    h_s [B, Hs], h_c [B, Hc]: encoder outputs. w_s [Hs] (or [1, Hs]), b_s [] (or [1]), w_c, b_c: the
    auxiliary heads. y [B]: labels (0/1; soft labels work too).
    fusion_params, the DFM module's parameters in nn.Linear layout (`fusion_params_from_module` pulls
    them out of a reference module):
      "sum":  ()
      "WSF":  (a_s [], a_c [])
      "CF":   (weight [1, Hs+Hc], bias [1])
      "MoEF": (gate_weight [2, Hs+Hc], gate_bias [2], expert_weight [2, Hs+Hc], expert_bias [2])
    loss = mean BCE(σ(z), y) + (twin_focus ? Twin Focus loss(σ(z_s), σ(z_c); alpha, c, gamma) : 0);
    no regularizer. z, z_s, z_c: [B], float32 (float64 for float64 inputs).

    Tolerance to the reference (probability space, log clamped at -100): float32 rounding against the
    float64 reference for |z| ≤ 25 (1e-5 relative is tested); beyond, the kernels keep the exact value
    and the reference drifts to its clamp (module docstring has the figures). Without the compiled
    library this runs the reference path.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"twin_head: fusion {fusion!r} is not fused (fused: {', '.join(FUSIONS)}); "
                         "VF needs Gumbel noise and keeps the reference path")
    if len(fusion_params) != _PARAM_COUNT[fusion]:
        raise ValueError(f"twin_head: {fusion} takes {_PARAM_COUNT[fusion]} fusion params, "
                         f"got {len(fusion_params)}")
    if not HAS_KERNELS:
        return _reference_head(h_s, h_c, w_s, b_s, w_c, b_c, fusion, fusion_params, y, alpha, c, gamma,
                               twin_focus)
    packed = _pack(h_s, w_s, b_s, w_c, b_c, fusion, fusion_params)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (h_s, h_c, *packed))
    out = torch.ops.tf4ctr_fast.twin_head(h_s, h_c, *packed, y.to(h_s.dtype), float(alpha), float(c),
                                          float(gamma), FUSIONS[fusion], bool(twin_focus), need_grad)
    return out[0], out[1], out[2], out[3]


def _pack(h_s: Tensor, w_s: Tensor, b_s: Tensor, w_c: Tensor, b_c: Tensor, fusion: str,
          params: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The kernels' inputs (w_s [K,Hs], w_c [K,Hc], b_s [K], b_c [K], mix [2]) from module-layout
    parameters. Built with differentiable ops: autograd routes the op's packed gradients back to
    each parameter."""
    hs_dim, dt = h_s.shape[1], h_s.dtype
    rows_s, rows_c = [w_s.reshape(1, -1)], [w_c.reshape(1, -1)]
    bias_s, bias_c = [b_s.reshape(1)], [b_c.reshape(1)]
    mix = h_s.new_ones(2)  # read only by WSF
    if fusion == "WSF":
        mix = torch.stack([params[0].reshape(()), params[1].reshape(())])
    elif fusion in ("CF", "MoEF"):
        weight = params[0] if fusion == "CF" else torch.cat([params[0], params[2]])
        bias = params[1] if fusion == "CF" else torch.cat([params[1], params[3]])
        rows_s.append(weight[:, :hs_dim])
        rows_c.append(weight[:, hs_dim:])
        bias_s.append(bias)
        bias_c.append(bias.new_zeros(bias.shape))  # the fusion bias is counted once, on the s side
    cast = [torch.cat(rows_s), torch.cat(rows_c), torch.cat(bias_s), torch.cat(bias_c), mix]
    return tuple(t.to(dt) for t in cast)  # type: ignore[return-value]


def _reference_head(h_s, h_c, w_s, b_s, w_c, b_c, fusion, params, y, alpha, c, gamma, twin_focus):
    """The reference head's math with the parameters passed as tensors (reference.dfm's forwards,
    written out because there are no modules here): the fallback when the kernels are missing."""
    z_s = h_s @ w_s.reshape(-1) + b_s.reshape(())
    z_c = h_c @ w_c.reshape(-1) + b_c.reshape(())
    if fusion == "sum":
        z = z_s + z_c
    elif fusion == "WSF":
        z = params[0] * z_s + params[1] * z_c
    else:
        h = torch.cat([h_s, h_c], dim=-1)
        if fusion == "CF":
            z = F.linear(h, params[0], params[1]).squeeze(-1)
        else:
            z = (torch.softmax(F.linear(h, params[0], params[1]), dim=-1)
                 * F.linear(h, params[2], params[3])).sum(dim=-1)
    loss = total_loss(z, z_s, z_c, y.to(z.dtype), alpha, c, gamma, twin_focus=twin_focus)
    return loss, z, z_s, z_c


def fusion_params_from_module(dfm: nn.Module) -> Optional[tuple[str, tuple[Tensor, ...]]]:
    """(fusion name, params for `twin_head`) of a reference DFM module, or None if it is not fused (VF)."""
    if isinstance(dfm, ref_dfm.SumFusion):
        return "sum", ()
    if isinstance(dfm, ref_dfm.WSF):
        return "WSF", (dfm.a_s, dfm.a_c)
    if isinstance(dfm, ref_dfm.CF):
        return "CF", (dfm.fc.weight, dfm.fc.bias)
    if isinstance(dfm, ref_dfm.MoEF):
        return "MoEF", (dfm.gate.weight, dfm.gate.bias, dfm.experts.weight, dfm.experts.bias)
    return None


def fused_head_from_modules(h_s: Tensor, h_c: Tensor, head_s: nn.Linear, head_c: nn.Linear, dfm: nn.Module,
                            y: Optional[Tensor], alpha: float, c: float, gamma: float,
                            twin_focus: bool = True) -> dict[str, Tensor]:
    """Drop-in body of `TwinModel.head` on the fused op: {"logit", "z_s", "z_c"} plus "loss" when
    labels are given. Without labels (inference) and for VF it runs the reference modules; the
    fused outputs' logits are non-differentiable (module docstring)."""
    fused = fusion_params_from_module(dfm)
    if y is None or fused is None:
        return reference_head(h_s, h_c, head_s, head_c, dfm, y, alpha, c, gamma, twin_focus=twin_focus)
    name, params = fused
    # Under bf16 autocast the encoders hand over bf16 h: the head reads it in the weights' precision
    # (one cast of [B, H], small beside the encoders; the C++ kernel takes one dtype for all inputs).
    h_s, h_c = h_s.to(head_s.weight.dtype), h_c.to(head_c.weight.dtype)
    loss, z, z_s, z_c = twin_head(h_s, h_c, head_s.weight, head_s.bias, head_c.weight, head_c.bias,
                                  name, params, y, alpha, c, gamma, twin_focus)
    return {"logit": z, "z_s": z_s, "z_c": z_c, "loss": loss}


# ---- torch.library registrations: autograd, fake (meta) kernel, CUDA kernel -----------------------

def _logit_dtype(h: Tensor) -> torch.dtype:
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _fake(h_s, h_c, w_s, w_c, b_s, b_c, mix, y, alpha, c, gamma, fusion, twin_focus, need_grad):
    acc = _logit_dtype(h_s)
    rows = h_s.new_empty((h_s.shape[0],), dtype=acc)
    outs = [h_s.new_empty((), dtype=acc), rows, torch.empty_like(rows), torch.empty_like(rows)]
    if need_grad:
        k = w_s.shape[0]
        outs += [h_s.new_empty((h_s.shape[0], k), dtype=acc), h_s.new_empty((h_s.shape[0], k), dtype=acc)]
        outs += [torch.empty_like(t) for t in (w_s, w_c, b_s, b_c, mix)]
    else:
        outs += [h_s.new_empty((0,)) for _ in range(7)]
    return tuple(outs)


def _fake_grad_h(g, w, scale):
    return w.new_empty((g.shape[0], w.shape[1]))


def _setup_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(*output[1:])
    # Otherwise autograd materializes a zero gradient for every non-differentiable output.
    ctx.set_materialize_grads(False)
    ctx.need_grad = inputs[-1]
    w_s, w_c = inputs[2], inputs[3]
    ctx.save_for_backward(w_s, w_c, *output[4:])


def _backward(ctx, grad_loss, *_non_differentiable):
    # inputs: h_s, h_c, w_s, w_c, b_s, b_c, mix, then y and the 6 non-tensor arguments
    if grad_loss is None:  # unmaterialized: no gradient reached the loss
        return (None,) * 14
    if not ctx.need_grad:
        raise RuntimeError("tf4ctr_fast::twin_head was called with need_grad=False; it cannot backpropagate")
    w_s, w_c, g_s, g_c, *param_grads = ctx.saved_tensors
    scale = grad_loss.to(g_s.dtype)
    grad_h_s = torch.ops.tf4ctr_fast.twin_head_grad_h(g_s, w_s, scale) if ctx.needs_input_grad[0] else None
    grad_h_c = torch.ops.tf4ctr_fast.twin_head_grad_h(g_c, w_c, scale) if ctx.needs_input_grad[1] else None
    params = [g * grad_loss.to(g.dtype) for g in param_grads]  # [K, H] at most: cheap
    return (grad_h_s, grad_h_c, *params, None, None, None, None, None, None, None)


def _cuda_kernel(h_s, h_c, w_s, w_c, b_s, b_c, mix, y, alpha, c, gamma, fusion, twin_focus, need_grad):
    from ..kernels.twin_head_triton import twin_head_triton  # imports triton: only when on CUDA
    return twin_head_triton(h_s, h_c, w_s, w_c, b_s, b_c, mix, y, alpha, c, gamma, fusion, twin_focus,
                            need_grad)


def _cuda_grad_h(g, w, scale):
    from ..kernels.twin_head_triton import grad_h_triton
    return grad_h_triton(g, w, scale)


if HAS_KERNELS:
    torch.library.register_fake(_OP)(_fake)
    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
    torch.library.register_kernel(_OP, "cuda")(_cuda_kernel)
    torch.library.register_fake(_GRAD_H_OP)(_fake_grad_h)
    torch.library.register_kernel(_GRAD_H_OP, "cuda")(_cuda_grad_h)
