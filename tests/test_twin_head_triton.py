"""The Triton twin-head kernel (kernels/twin_head_triton.py) against the reference head's math.

On CUDA it runs compiled, with CUDA tensors, also through the op's dispatch and in bfloat16. Without
CUDA it runs on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py), float32 only, on a reduced
grid: the interpreter executes every program in Python. The full parameter grid is covered against
the same reference by tests/test_twin_head_cpu.py.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from tf4ctr_fast.kernels.twin_head_triton import grad_h_triton, twin_head_triton  # noqa: E402  (after the skip)
from tf4ctr_fast.reference.loss import total_loss  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
HS, HC = 24, 40
ALPHA = 0.25
PROJECTIONS = {0: 1, 1: 1, 2: 2, 3: 5}  # fusion code (sum, WSF, CF, MoEF) -> projections per branch


def make_inputs(fusion: int, batch: int, seed: int, scale: float = 0.3, hs: int = HS):
    """The kernel's packed inputs (layout: kernels/twin_head.cpp header), float32 on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    k = PROJECTIONS[fusion]
    ts = [torch.randn(batch, hs, generator=g), torch.randn(batch, HC, generator=g),
          scale * torch.randn(k, hs, generator=g), scale * torch.randn(k, HC, generator=g),
          scale * torch.randn(k, generator=g), scale * torch.randn(k, generator=g),
          torch.tensor([0.4, 0.7]), (torch.rand(batch, generator=g) < 0.4).float()]
    return [t.to(DEVICE) for t in ts]


def reference(h_s, h_c, w_s, w_c, b_s, b_c, mix, y, alpha, c, gamma, fusion, twin_focus):
    """reference.dfm's fusions written on the packed layout, then reference.loss.total_loss."""
    s, t = h_s @ w_s.T + b_s, h_c @ w_c.T + b_c
    z_s, z_c, f = s[:, 0], t[:, 0], s + t  # f[:, j >= 1]: the fusion's projections of [h_s ; h_c]
    if fusion == 0:
        z = z_s + z_c
    elif fusion == 1:
        z = mix[0] * z_s + mix[1] * z_c
    elif fusion == 2:
        z = f[:, 1]
    else:
        z = (torch.softmax(f[:, 1:3], dim=-1) * f[:, 3:5]).sum(dim=-1)
    return total_loss(z, z_s, z_c, y, alpha, c, gamma, twin_focus=twin_focus), z, z_s, z_c


def run_kernels(inputs, c, gamma, fusion, twin_focus=True, need_grad=True, scale=1.0):
    """Forward kernel, then the backward kernel for grad_h as the op's autograd runs them: loss, z, z_s,
    z_c, then the gradients of h_s, h_c, w_s, w_c, b_s, b_c, mix (times scale, i.e. grad_output)."""
    out = twin_head_triton(*inputs, ALPHA, c, gamma, fusion, twin_focus, need_grad, grid=2)
    if not need_grad:
        return out
    s = torch.tensor(scale, device=DEVICE)
    grad_h = [grad_h_triton(out[4], inputs[2], s), grad_h_triton(out[5], inputs[3], s)]
    return [*out[:4], *grad_h, *(scale * g for g in out[6:])]


def reference_outputs(inputs, c, gamma, fusion, twin_focus=True):
    """loss, z, z_s, z_c and the gradients of the 7 tensor inputs, from the float64 reference."""
    leaves = [t.double().requires_grad_() for t in inputs[:7]]
    loss, z, z_s, z_c = reference(*leaves, inputs[7].double(), ALPHA, c, gamma, fusion, twin_focus)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
    return [loss, z, z_s, z_c, *grads]


def assert_outputs_close(got, want, rtol, min_scale=1e-30):
    names = ("loss", "z", "z_s", "z_c", "grad h_s", "grad h_c", "grad w_s", "grad w_c", "grad b_s", "grad b_c",
             "grad mix")
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        b = b.detach().to(a.dtype)
        scale = max(b.abs().max().item(), min_scale)
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("fusion", [0, 1, 2, 3])
def test_float32_matches_reference(fusion):
    # batch 37 with 16-row blocks on a 2-program grid: program 0 walks two blocks, the last is ragged
    for batch, (gamma, c) in itertools.product((1, 37), ((0.0, 0.0), (2.0, 1.0), (3.0, 0.7))):
        inputs = make_inputs(fusion, batch, seed=batch + fusion)
        got = run_kernels(inputs, c, gamma, fusion)
        assert got[0].dtype == got[1].dtype == torch.float32
        assert_outputs_close(got, reference_outputs(inputs, c, gamma, fusion), rtol=1e-5)


@pytest.mark.parametrize("fusion", [0, 1, 2, 3])
def test_width_one_simple_encoder(fusion):
    """The TF4CTR-DeepFM / -WideDeep presets hand the head h_s of width 1 (an FM / LR output)."""
    inputs = make_inputs(fusion, 37, seed=fusion, hs=1)
    assert_outputs_close(run_kernels(inputs, 0.7, 2.0, fusion), reference_outputs(inputs, 0.7, 2.0, fusion),
                         rtol=1e-5)


def test_grad_output_scales_every_gradient():
    inputs = make_inputs(3, 37, seed=9)
    want = reference_outputs(inputs, 0.7, 2.0, 3)
    got = run_kernels(inputs, 0.7, 2.0, 3, scale=-2.5)
    assert_outputs_close(got[:4] + [g / -2.5 for g in got[4:]], want, rtol=1e-5)


def test_without_gradients_and_without_twin_focus():
    inputs = make_inputs(1, 20, seed=3)
    got = run_kernels(inputs, 0.7, 2.0, 1, twin_focus=False, need_grad=False)
    want = reference_outputs(inputs, 0.7, 2.0, 1, twin_focus=False)
    assert all(t.numel() == 0 for t in got[4:])
    assert_outputs_close([*got[:4], *want[4:]], want, rtol=1e-5)


def test_extreme_logits_are_finite_and_exact():
    """|z_s|, |z_c| up to 80 (|z| up to 120): equal to the exact logit-space loss, which the
    probability-space reference is not there (it clamps log at -100)."""
    z_grid = torch.linspace(-80.0, 80.0, 9)
    zs, zc = (g.reshape(-1) for g in torch.meshgrid(z_grid, z_grid.flip(0) / 2, indexing="ij"))
    zs, zc, y = zs.repeat(2), zc.repeat(2), torch.cat([torch.zeros(81), torch.ones(81)])
    h_s, h_c = torch.zeros(162, HS), torch.zeros(162, HC)
    h_s[:, 0], h_c[:, 0] = zs, zc
    w_s, w_c = torch.zeros(1, HS), torch.zeros(1, HC)
    w_s[0, 0] = w_c[0, 0] = 1.0
    inputs = [t.to(DEVICE) for t in (h_s, h_c, w_s, w_c, torch.zeros(1), torch.zeros(1), torch.ones(2), y)]
    c, gamma = 0.7, 2.0
    out = run_kernels(inputs, c, gamma, 0)
    loss, grad_h_s, grad_h_c = out[0], out[4].cpu(), out[5].cpu()

    zs, zc, y = zs.double().requires_grad_(), zc.double().requires_grad_(), y.double()

    def bce(t):
        return y * F.softplus(-t) + (1 - y) * F.softplus(t)

    def p_true(t):
        return y * torch.sigmoid(t) + (1 - y) * torch.sigmoid(-t)

    exact = (bce(zs + zc).mean() + ALPHA * (bce(zs) * (c + p_true(zs)) ** gamma).mean()
             + (1 - ALPHA) * (bce(zc) * ((2 - c) - p_true(zc)) ** gamma).mean())
    exact_zs, exact_zc = torch.autograd.grad(exact, [zs, zc])
    assert all(torch.isfinite(t).all() for t in out if t.numel())
    torch.testing.assert_close(loss.double().cpu(), exact.detach(), rtol=1e-6, atol=0)
    # with one-hot h and unit weights, grad h[:, 0] is d loss / d z_s (z_c), the other columns 0
    one_row = 1.0 / len(y)
    torch.testing.assert_close(grad_h_s[:, 0].double(), exact_zs, rtol=1e-5, atol=1e-5 * one_row)
    torch.testing.assert_close(grad_h_c[:, 0].double(), exact_zc, rtol=1e-5, atol=1e-5 * one_row)
    assert not grad_h_s[:, 1:].any() and not grad_h_c[:, 1:].any()


@pytest.mark.skipif(not CUDA, reason="bfloat16 and the op's CUDA dispatch need a GPU")
@pytest.mark.parametrize("fusion", [1, 3])
def test_bfloat16_inputs_on_cuda(fusion):
    inputs = make_inputs(fusion, 4097, seed=5)
    bf16 = [t.bfloat16() for t in inputs]
    out = twin_head_triton(*bf16, ALPHA, 0.7, 2.0, fusion, True, True)
    one = torch.ones((), device=DEVICE)
    got = [*out[:4], grad_h_triton(out[4], bf16[2], one), grad_h_triton(out[5], bf16[3], one), *out[6:]]
    assert got[0].dtype == torch.float32 and got[4].dtype == torch.bfloat16
    # the reference sees the same bf16-rounded values; the kernel accumulates in float32
    want = reference_outputs([t.float() for t in bf16], 0.7, 2.0, fusion)
    assert_outputs_close([g.float() for g in got], want, rtol=2e-2)


@pytest.mark.skipif(not CUDA, reason="the op's CUDA dispatch needs a GPU")
def test_op_dispatches_cuda_tensors_to_triton():
    import tf4ctr_fast.ops as ops
    from tf4ctr_fast.reference import dfm as ref_dfm
    from tf4ctr_fast.layers.init import xavier_linear

    torch.manual_seed(0)
    head_s, head_c = xavier_linear(HS, 1).cuda(), xavier_linear(HC, 1).cuda()
    dfm = ref_dfm.MoEF(HS, HC).cuda()
    h_s, h_c = torch.randn(4097, HS, device="cuda"), torch.randn(4097, HC, device="cuda")
    y = (torch.rand(4097, device="cuda") < 0.4).float()
    params = [h_s.requires_grad_(), h_c.requires_grad_(), *head_s.parameters(), *head_c.parameters(),
              *dfm.parameters()]
    out = ops.fused_head_from_modules(h_s, h_c, head_s, head_c, dfm, y, ALPHA, 0.7, 2.0)
    got = torch.autograd.grad(out["loss"], params)
    z_s, z_c = head_s(h_s).squeeze(-1), head_c(h_c).squeeze(-1)
    ref = total_loss(dfm(h_s, h_c, z_s, z_c), z_s, z_c, y, ALPHA, 0.7, 2.0)
    want = torch.autograd.grad(ref, params)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
