"""The fused twin head on CPU (tf4ctr_fast/ops/twin_head.py, kernels/twin_head.cpp) against the
reference head: Linear heads + reference.dfm module + reference.loss.total_loss.

Oracle: the reference evaluated in float64 on the same (float32) inputs. The float32 reference is
itself only good to ~5e-6 relative (MoEF gate gradients) and clamps log(1-σ(z)) once σ saturates, so
it would blur what these tests measure; one test still compares it directly at the model's settings.
Tolerances are relative to each tensor's largest magnitude (entries near 0 carry that absolute error).
"""
from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import tf4ctr_fast.ops as ops
from tf4ctr_fast.ops import fused_head_from_modules, twin_head
from tf4ctr_fast.ops.twin_head import _pack
from tf4ctr_fast.reference import dfm as ref_dfm
from tf4ctr_fast.layers.init import xavier_linear
from tf4ctr_fast.reference.loss import total_loss

HS, HC = 24, 40  # Hs != Hc catches a swapped split of the fusion weights
ALPHA = 0.25
FUSED = ("sum", "WSF", "CF", "MoEF")


def test_kernels_are_built():
    """Fails (not skips) without the compiled library, so a broken build cannot pass the suite."""
    assert ops.HAS_KERNELS or os.environ.get("TF4CTR_DISABLE_KERNELS") == "1", (
        "tf4ctr_fast/_C.so is missing: run `pip install --no-build-isolation -e .`")


class Head(nn.Module):
    """The reference head (TwinModel.head) as a module, so it can be copied to float64."""

    def __init__(self, fusion: str, hs: int = HS, hc: int = HC):
        super().__init__()
        self.head_s, self.head_c = xavier_linear(hs, 1), xavier_linear(hc, 1)
        self.dfm = ref_dfm.build_dfm(fusion, hs, hc)
        with torch.no_grad():  # non-zero biases and fusion weights, so every term is exercised
            for p in self.parameters():
                if p.dim() < 2:
                    p.add_(0.3 * torch.randn_like(p))

    def reference(self, h_s, h_c, y, c, gamma, twin_focus=True):
        z_s, z_c = self.head_s(h_s).squeeze(-1), self.head_c(h_c).squeeze(-1)
        z = self.dfm(h_s, h_c, z_s, z_c)
        return total_loss(z, z_s, z_c, y, ALPHA, c, gamma, twin_focus=twin_focus), z, z_s, z_c

    def fused(self, h_s, h_c, y, c, gamma, twin_focus=True):
        out = fused_head_from_modules(h_s, h_c, self.head_s, self.head_c, self.dfm, y, ALPHA, c, gamma,
                                      twin_focus)
        return out["loss"], out["logit"], out["z_s"], out["z_c"]


def run(head: Head, which: str, h_s, h_c, y, c, gamma, twin_focus=True, dtype=None):
    """(loss, z, z_s, z_c) and the gradients of loss by h_s, h_c and every parameter."""
    if dtype is not None:
        head = copy.deepcopy(head).to(dtype)
        h_s, h_c, y = h_s.to(dtype), h_c.to(dtype), y.to(dtype)
    h_s, h_c = h_s.detach().requires_grad_(), h_c.detach().requires_grad_()
    outs = getattr(head, which)(h_s, h_c, y, c, gamma, twin_focus)
    grads = torch.autograd.grad(outs[0], [h_s, h_c, *head.parameters()])
    return [o.detach() for o in outs], list(grads)


def assert_close(actual, expected, rtol, what="", min_scale=1e-30):
    expected = expected.to(actual.dtype)
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, min_scale)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


def assert_head_matches(fused, ref, rtol, min_scale=1e-30):
    (f_out, f_grads), (r_out, r_grads) = fused, ref
    for name, a, b in zip(("loss", "z", "z_s", "z_c"), f_out, r_out):
        assert_close(a, b, rtol, name)
    assert len(f_grads) == len(r_grads)
    for i, (a, b) in enumerate(zip(f_grads, r_grads)):
        assert a.dtype == b.dtype or b.dtype == torch.float64
        assert_close(a, b, rtol, f"grad {i}", min_scale)


def make_batch(batch: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(batch, HS, generator=g, dtype=dtype)
    h_c = torch.randn(batch, HC, generator=g, dtype=dtype)
    y = (torch.rand(batch, generator=g) < 0.4).to(dtype)
    return h_s, h_c, y


@pytest.mark.parametrize("fusion", FUSED)
def test_float32_matches_reference_on_the_grid(fusion):
    """Every gamma in {0,1,2,3}, c in {0,1}, batch 1, 7 and 4097 (several kernel blocks, a ragged last)."""
    torch.manual_seed(0)
    head = Head(fusion)
    for batch, gamma, c in itertools.product((1, 7, 4097), (0.0, 1.0, 2.0, 3.0), (0.0, 1.0)):
        h_s, h_c, y = make_batch(batch, seed=batch)
        fused = run(head, "fused", h_s, h_c, y, c, gamma)
        ref = run(head, "reference", h_s, h_c, y, c, gamma, dtype=torch.float64)
        assert_head_matches(fused, ref, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSED)
def test_float64_matches_reference_tightly(fusion):
    torch.manual_seed(1)
    head = Head(fusion).double()
    h_s, h_c, y = make_batch(300, seed=3, dtype=torch.float64)
    fused = run(head, "fused", h_s, h_c, y, 0.7, 2.0)
    ref = run(head, "reference", h_s, h_c, y, 0.7, 2.0)
    assert all(g.dtype == torch.float64 for g in fused[1])
    assert_head_matches(fused, ref, rtol=1e-11)


@pytest.mark.parametrize("gamma", [0.5, 1.5])
def test_non_integer_gamma(gamma):
    """The kernel special-cases gamma in {0,1,2,3}; any other value takes the pow path."""
    torch.manual_seed(4)
    head = Head("WSF")
    h_s, h_c, y = make_batch(257, seed=8)
    fused = run(head, "fused", h_s, h_c, y, 0.7, gamma)
    assert_head_matches(fused, run(head, "reference", h_s, h_c, y, 0.7, gamma, dtype=torch.float64), rtol=1e-5)


def test_float32_matches_float32_reference_at_model_settings():
    torch.manual_seed(2)
    head = Head("WSF")
    h_s, h_c, y = make_batch(2048, seed=4)
    assert_head_matches(run(head, "fused", h_s, h_c, y, 0.7, 1.0), run(head, "reference", h_s, h_c, y, 0.7, 1.0),
                        rtol=1e-5)


def test_plain_bce_without_twin_focus():
    """DualMLP: sum fusion and no Twin Focus term."""
    torch.manual_seed(3)
    head = Head("sum")
    h_s, h_c, y = make_batch(513, seed=5)
    fused = run(head, "fused", h_s, h_c, y, 0.8, 2.0, twin_focus=False)
    ref = run(head, "reference", h_s, h_c, y, 0.8, 2.0, twin_focus=False, dtype=torch.float64)
    assert_head_matches(fused, ref, rtol=1e-5)
    with_tf = run(head, "fused", h_s, h_c, y, 0.8, 2.0)
    assert with_tf[0][0] > fused[0][0]  # the flag really drops a (positive) term


# ---- extreme logits ------------------------------------------------------------------------------

def exact_head(z_s, z_c, z, y, c, gamma):
    """The loss on logits with the exact log-sigmoid (no clamp): what the kernels claim to compute."""
    def bce(t):
        return y * nn.functional.softplus(-t) + (1 - y) * nn.functional.softplus(t)

    def p_true(t):
        return y * torch.sigmoid(t) + (1 - y) * torch.sigmoid(-t)

    tf = ALPHA * (bce(z_s) * (c + p_true(z_s)) ** gamma).mean()
    tf = tf + (1 - ALPHA) * (bce(z_c) * ((2 - c) - p_true(z_c)) ** gamma).mean()
    return bce(z).mean() + tf


def extreme_inputs(max_logit: float):
    """sum fusion with h_s, h_c one-hot so z_s, z_c (and z = z_s + z_c) sweep ±max_logit, both labels."""
    zs = torch.linspace(-max_logit, max_logit, 9, dtype=torch.float64)
    grid_s, grid_c = torch.meshgrid(zs, zs.flip(0) / 2, indexing="ij")
    grid_s, grid_c = grid_s.reshape(-1).repeat(2), grid_c.reshape(-1).repeat(2)
    y = torch.cat([torch.zeros(81), torch.ones(81)]).double()
    h_s = torch.zeros(162, HS, dtype=torch.float64)
    h_c = torch.zeros(162, HC, dtype=torch.float64)
    h_s[:, 0], h_c[:, 0] = grid_s, grid_c
    return h_s, h_c, y


@pytest.mark.parametrize("gamma,c", [(0.0, 0.0), (1.0, 1.0), (2.0, 0.7), (3.0, 0.0)])
def test_extreme_logits_are_finite_and_exact(gamma, c):
    """|z| up to 80: the float32 kernel equals the exact logit-space loss (float64), finite everywhere.
    The probability-space reference clamps there (100 instead of |z|, zero gradients), so it is
    not the oracle here."""
    h_s, h_c, y = extreme_inputs(80.0)
    w_s = torch.zeros(HS, dtype=torch.float64)
    w_c = torch.zeros(HC, dtype=torch.float64)
    w_s[0] = w_c[0] = 1.0
    zero = torch.zeros((), dtype=torch.float64)

    leaves64 = [t.clone().requires_grad_() for t in (h_s, h_c, w_s, zero, w_c, zero)]
    hs, hc, ws, bs, wc, bc = leaves64
    z_s, z_c = hs @ ws + bs, hc @ wc + bc
    exact = exact_head(z_s, z_c, z_s + z_c, y, c, gamma)
    exact_grads = torch.autograd.grad(exact, leaves64)

    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]
    loss, z, _, _ = twin_head(*leaves32[:2], leaves32[2], leaves32[3], leaves32[4], leaves32[5], "sum", (),
                              y.float(), ALPHA, c, gamma)
    grads = torch.autograd.grad(loss, leaves32)
    assert torch.isfinite(loss) and torch.isfinite(z).all()
    assert z.abs().max() == 120.0  # the sweep really reaches past 80
    assert_close(loss, exact.detach(), 1e-6, "loss")
    for i, (a, b) in enumerate(zip(grads, exact_grads)):
        assert torch.isfinite(a).all()
        # the bias gradients cancel to ~0 over the symmetric sweep: compare at one row's scale, 1/B
        assert_close(a, b, 1e-5, f"grad {i}", min_scale=1.0 / len(y))

    # Where the float64 probability-space reference is still exact (|z| <= 25), it agrees too.
    h_s, h_c, y = (t.float() for t in extreme_inputs(25.0 / 1.5))  # |z_s + z_c| <= 1.5 * max
    head = Head("sum")
    with torch.no_grad():
        for lin in (head.head_s, head.head_c):
            lin.weight.zero_()
            lin.weight[0, 0] = 1.0
            lin.bias.zero_()
    fused = run(head, "fused", h_s, h_c, y, c, gamma)
    ref = run(head, "reference", h_s, h_c, y, c, gamma, dtype=torch.float64)
    assert_head_matches(fused, ref, rtol=1e-5, min_scale=1.0 / len(y))


# ---- autograd, scaling, determinism ---------------------------------------------------------------

def _op_inputs(fusion: str, batch: int, dtype):
    g = torch.Generator().manual_seed(7)
    h_s, h_c = torch.randn(batch, 3, generator=g, dtype=dtype), torch.randn(batch, 4, generator=g, dtype=dtype)
    w_s, w_c = torch.randn(3, generator=g, dtype=dtype), torch.randn(4, generator=g, dtype=dtype)
    b_s, b_c = torch.randn((), generator=g, dtype=dtype), torch.randn((), generator=g, dtype=dtype)
    shapes = {"sum": [], "WSF": [(), ()], "CF": [(1, 7), (1,)], "MoEF": [(2, 7), (2,), (2, 7), (2,)]}[fusion]
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    y = (torch.rand(batch, generator=g) < 0.5).to(dtype)
    return [h_s, h_c, w_s, b_s, w_c, b_c], params, y


@pytest.mark.parametrize("fusion", FUSED)
def test_gradcheck_float64(fusion):
    tensors, params, y = _op_inputs(fusion, 6, torch.float64)
    leaves = [t.requires_grad_() for t in tensors + params]
    n = len(tensors)

    def loss(*xs):
        return twin_head(*xs[:6], fusion, xs[n:], y, ALPHA, 0.6, 2.0)[0]

    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-8)


def test_backward_scales_by_grad_output():
    """Backward scales the forward's derivatives by grad_output (it is not assumed to be 1)."""
    tensors, params, y = _op_inputs("MoEF", 9, torch.float32)
    leaves = [t.requires_grad_() for t in tensors + params]

    def grads(scale):
        loss = twin_head(*leaves[:6], "MoEF", leaves[6:], y, ALPHA, 0.6, 2.0)[0]
        return torch.autograd.grad(loss * scale, leaves)

    for a, b in zip(grads(-2.5), grads(1.0)):
        torch.testing.assert_close(a, -2.5 * b)
    # two uses of one loss: the autograd engine sums, each use sees grad_output 1
    loss = twin_head(*leaves[:6], "MoEF", leaves[6:], y, ALPHA, 0.6, 2.0)[0]
    for a, b in zip(torch.autograd.grad(loss + loss, leaves), grads(1.0)):
        torch.testing.assert_close(a, 2 * b)


def test_logits_are_non_differentiable_and_no_grad_skips_gradients():
    tensors, params, y = _op_inputs("WSF", 5, torch.float32)
    leaves = [t.requires_grad_() for t in tensors + params]
    loss, z, z_s, z_c = twin_head(*leaves[:6], "WSF", leaves[6:], y, ALPHA, 0.6, 2.0)
    assert loss.requires_grad and not (z.requires_grad or z_s.requires_grad or z_c.requires_grad)
    with torch.no_grad():
        packed = _pack(leaves[0], *leaves[2:6], "WSF", leaves[6:])
        out = torch.ops.tf4ctr_fast.twin_head(leaves[0], leaves[1], *packed, y, ALPHA, 0.6, 2.0, 1, True, False)
    assert all(t.numel() == 0 for t in out[4:])
    torch.testing.assert_close(out[0], loss.detach())


def test_deterministic_across_thread_counts():
    torch.manual_seed(5)
    head = Head("MoEF")
    h_s, h_c, y = make_batch(4097, seed=6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(head, "fused", h_s, h_c, y, 0.7, 2.0)
        torch.set_num_threads(2)
        two = run(head, "fused", h_s, h_c, y, 0.7, 2.0)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        assert torch.equal(a, b)


# ---- the op as torch sees it: schema, fake kernel, export, compile ---------------------------------

def test_opcheck():
    tensors, params, y = _op_inputs("MoEF", 5, torch.float32)
    packed = _pack(tensors[0], *tensors[2:6], "MoEF", params)
    args = (tensors[0].requires_grad_(), tensors[1].requires_grad_(), *(p.requires_grad_() for p in packed),
            y, ALPHA, 0.6, 2.0, 3, True, True)
    torch.library.opcheck(torch.ops.tf4ctr_fast.twin_head.default, args)
    g, w = torch.randn(6, 5), torch.randn(5, 7)
    torch.library.opcheck(torch.ops.tf4ctr_fast.twin_head_grad_h.default, (g, w, torch.tensor(-1.5)))
    torch.testing.assert_close(torch.ops.tf4ctr_fast.twin_head_grad_h(g, w, torch.tensor(-1.5)), -1.5 * g @ w)


def test_frozen_encoder_skips_grad_h():
    """Backward writes grad_h only for the h that needs it."""
    tensors, params, y = _op_inputs("WSF", 5, torch.float32)
    h_s, h_c, *rest = tensors
    leaves = [h_c.requires_grad_(), *(t.requires_grad_() for t in rest + params)]
    loss = twin_head(h_s, *tensors[1:], "WSF", params, y, ALPHA, 0.6, 2.0)[0]
    assert len(torch.autograd.grad(loss, leaves)) == len(leaves)
    assert h_s.grad is None


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp_s, self.mlp_c = nn.Linear(5, HS), nn.Linear(6, HC)
        self.head = Head("WSF")

    def forward(self, x_s, x_c, y):
        h_s, h_c = torch.relu(self.mlp_s(x_s)), torch.relu(self.mlp_c(x_c))
        return self.head.fused(h_s, h_c, y, 0.7, 2.0)[0]


def test_export_sees_one_op():
    torch.manual_seed(8)
    model = TinyModel()
    x_s, x_c, y = torch.randn(16, 5), torch.randn(16, 6), (torch.rand(16) < 0.5).float()
    exported = torch.export.export(model, (x_s, x_c, y))
    calls = [n for n in exported.graph.nodes if n.op == "call_function" and "tf4ctr_fast" in str(n.target)]
    assert len(calls) == 1
    torch.testing.assert_close(exported.module()(x_s, x_c, y), model(x_s, x_c, y))


def test_compile_fullgraph_forward_and_backward():
    torch.manual_seed(9)
    model = TinyModel()
    x_s, x_c, y = torch.randn(16, 5), torch.randn(16, 6), (torch.rand(16) < 0.5).float()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x_s, x_c, y), list(model.parameters()))
    want = torch.autograd.grad(model(x_s, x_c, y), list(model.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---- the public API's edges ---------------------------------------------------------------------

def test_vf_and_inference_keep_the_reference_path():
    torch.manual_seed(10)
    head = Head("VF")
    h_s, h_c, y = make_batch(8, seed=11)
    head.eval()  # deterministic VF
    out = fused_head_from_modules(h_s, h_c, head.head_s, head.head_c, head.dfm, y, ALPHA, 0.7, 2.0)
    torch.testing.assert_close(out["loss"], head.reference(h_s, h_c, y, 0.7, 2.0)[0])
    wsf = Head("WSF")
    out = fused_head_from_modules(h_s, h_c, wsf.head_s, wsf.head_c, wsf.dfm, None, ALPHA, 0.7, 2.0)
    assert "loss" not in out and out["logit"].requires_grad  # reference modules: differentiable logits
    with pytest.raises(ValueError, match="VF"):
        twin_head(h_s, h_c, head.head_s.weight, head.head_s.bias, head.head_c.weight, head.head_c.bias,
                  "VF", (), y, ALPHA, 0.7, 2.0)
    with pytest.raises(ValueError, match="takes 2"):
        twin_head(h_s, h_c, wsf.head_s.weight, wsf.head_s.bias, wsf.head_c.weight, wsf.head_c.bias,
                  "WSF", (wsf.dfm.a_s,), y, ALPHA, 0.7, 2.0)


def test_unsupported_dtype_is_a_clear_error():
    tensors, params, y = _op_inputs("sum", 4, torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        twin_head(*tensors, "sum", params, y, ALPHA, 0.6, 2.0)


def test_missing_library_falls_back_with_one_warning(tmp_path):
    script = textwrap.dedent("""
        import warnings, torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import tf4ctr_fast.ops as ops
            import tf4ctr_fast.ops.twin_head
        assert not ops.HAS_KERNELS
        assert len([w for w in caught if "reference PyTorch path" in str(w.message)]) == 1, caught
        torch.manual_seed(0)
        h_s, h_c, y = torch.randn(6, 3), torch.randn(6, 4), torch.tensor([0., 1, 1, 0, 1, 0])
        w_s, w_c, b = torch.randn(3), torch.randn(4), torch.zeros(())
        a = torch.tensor(0.5)
        loss, z, z_s, z_c = ops.twin_head(h_s, h_c, w_s, b, w_c, b, "WSF", (a, a), y, 0.25, 0.7, 2.0)
        from tf4ctr_fast.reference.loss import total_loss
        zs, zc = h_s @ w_s, h_c @ w_c
        torch.testing.assert_close(loss, total_loss(0.5 * zs + 0.5 * zc, zs, zc, y, 0.25, 0.7, 2.0))
        print("ok")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF4CTR_DISABLE_KERNELS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
