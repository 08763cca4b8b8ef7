"""Fused twin head vs the reference head: forward + backward at B = 65536, H = 400.

    pytest bench/ --benchmark-only [--benchmark-json out.json]

Each case first asserts parity with the reference, then times one training step of the head: forward,
then the gradients of h_s, h_c and every head/fusion parameter (torch.autograd.grad, so nothing
accumulates into .grad). Paths:
  reference     Linear heads + reference.dfm module + reference.loss.total_loss
  fused         tf4ctr_fast.ops (C++ on CPU, Triton on CUDA), grad_output = 1
  fused_scaled  the same with grad_output = 2: backward scales the forward's per-row derivatives, so
                this should cost the same as `fused` (a design that produced grad_h in the forward
                would need one more pass over it here)
extra_info carries speedup_vs_reference (the reference median of the same session / this median) and,
on CUDA, the Triton kernel's achieved bytes/s. CPU figures include first-touch page faults of the
fresh [B, H] gradient tensors, which both paths allocate.
"""
from __future__ import annotations

import pytest
import torch

import tf4ctr_fast.ops as ops
from tf4ctr_fast.reference import dfm as ref_dfm
from tf4ctr_fast.reference.layers import xavier_linear
from tf4ctr_fast.reference.loss import total_loss

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
B, H = 65536, 400
ALPHA, C, GAMMA = 0.25, 0.7, 1.0  # Frappe's published setting
ROUNDS = 20 if CUDA else 7
CASES = [(fusion, path) for fusion in ("WSF", "MoEF") for path in ("reference", "fused", "fused_scaled")]

_medians: dict[tuple[str, str], float] = {}


class Case:
    def __init__(self, fusion: str):
        torch.manual_seed(0)
        self.head_s, self.head_c = xavier_linear(H, 1).to(DEVICE), xavier_linear(H, 1).to(DEVICE)
        self.dfm = ref_dfm.build_dfm(fusion, H, H).to(DEVICE)
        self.h_s = torch.randn(B, H, device=DEVICE, requires_grad=True)
        self.h_c = torch.randn(B, H, device=DEVICE, requires_grad=True)
        self.y = (torch.rand(B, device=DEVICE) < 0.3).float()
        self.inputs = [self.h_s, self.h_c, *self.head_s.parameters(), *self.head_c.parameters(),
                       *self.dfm.parameters()]

    def loss(self, path: str) -> torch.Tensor:
        if path == "reference":
            z_s, z_c = self.head_s(self.h_s).squeeze(-1), self.head_c(self.h_c).squeeze(-1)
            return total_loss(self.dfm(self.h_s, self.h_c, z_s, z_c), z_s, z_c, self.y, ALPHA, C, GAMMA)
        out = ops.fused_head_from_modules(self.h_s, self.h_c, self.head_s, self.head_c, self.dfm, self.y,
                                          ALPHA, C, GAMMA)
        return out["loss"] * 2.0 if path == "fused_scaled" else out["loss"]

    def step(self, path: str):
        grads = torch.autograd.grad(self.loss(path), self.inputs)
        if CUDA:
            torch.cuda.synchronize()
        return grads


def assert_parity(case: Case, path: str) -> None:
    scale = 2.0 if path == "fused_scaled" else 1.0
    got, want = case.step(path), case.step("reference")
    torch.testing.assert_close(case.loss(path).detach() / scale, case.loss("reference").detach(), rtol=1e-5, atol=0)
    for i, (a, b) in enumerate(zip(got, want)):
        # relative to each gradient's largest entry: the fp32 reference sums 65536 rows in another order
        torch.testing.assert_close(a / scale, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(),
                                   msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.mark.parametrize("fusion,path", CASES)
def test_twin_head_step(benchmark, fusion, path):
    if path != "reference" and not ops.HAS_KERNELS:
        pytest.fail("compiled kernels missing: pip install --no-build-isolation -e .")
    case = Case(fusion)
    if path != "reference":
        assert_parity(case, path)
    benchmark.group = f"twin head {fusion} B={B} H={H} {DEVICE.type}"
    benchmark.extra_info.update(fusion=fusion, path=path, batch=B, hidden=H, device=DEVICE.type,
                                threads=torch.get_num_threads())
    benchmark.pedantic(case.step, args=(path,), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    _medians[(fusion, path)] = median = benchmark.stats.stats.median
    if path != "reference" and (fusion, "reference") in _medians:
        benchmark.extra_info["speedup_vs_reference"] = round(_medians[(fusion, "reference")] / median, 2)


@pytest.mark.skipif(not CUDA, reason="the Triton kernel runs compiled only on CUDA")
@pytest.mark.parametrize("fusion,dtype", [("WSF", torch.float32), ("WSF", torch.bfloat16),
                                          ("MoEF", torch.float32)])
def test_triton_kernel_bandwidth(benchmark, fusion, dtype):
    """The op alone (forward with gradients): h read once, grad_h written once."""
    from tf4ctr_fast.ops.twin_head import FUSIONS, _pack

    case = Case(fusion)
    h_s, h_c = case.h_s.detach().to(dtype), case.h_c.detach().to(dtype)
    name, params = ops.fusion_params_from_module(case.dfm)
    packed = [p.detach() for p in _pack(h_s, case.head_s.weight, case.head_s.bias, case.head_c.weight,
                                        case.head_c.bias, name, params)]
    y = case.y.to(dtype)

    def run():
        out = torch.ops.tf4ctr_fast.twin_head(h_s, h_c, *packed, y, ALPHA, C, GAMMA, FUSIONS[name], True, True)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"triton twin head kernel B={B} H={H}"
    benchmark.pedantic(run, rounds=50, warmup_rounds=3, iterations=1)
    moved = 2 * (h_s.numel() + h_c.numel()) * h_s.element_size()  # read h, write grad_h
    benchmark.extra_info.update(fusion=fusion, dtype=str(dtype), bytes_moved=moved)
    if benchmark.stats is not None:
        benchmark.extra_info["achieved_GBps"] = round(moved / benchmark.stats.stats.median / 1e9, 1)
