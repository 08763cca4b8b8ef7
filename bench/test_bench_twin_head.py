"""Fused twin head vs the reference head: one training step of the head alone, H = 400, B rows
(--bench-size: 16384 small, 65536 medium/full).

Each case first asserts parity with the reference, then times forward plus the gradients of h_s,
h_c and every head/fusion parameter (torch.autograd.grad, so nothing accumulates into .grad). Paths:
  reference     Linear heads + reference.dfm module + reference.loss.total_loss
  fused         tf4ctr_fast.ops (C++ on CPU, Triton on CUDA), grad_output = 1
  fused_scaled  the same with grad_output = 2: backward scales the forward's per-row derivatives, so
                this should cost the same as `fused` (a design that produced grad_h in the forward
                would need one more pass over it here)
Useful traffic (bytes): h read once, grad_h written once; FLOPs: the K projections per branch
(K = 1 auxiliary head + the fusion's own), forward, parameter gradients and grad_h. CPU figures
include first-touch page faults of the fresh [B, H] gradient tensors, which both paths allocate.
"""
from __future__ import annotations

import pytest
import torch

import tf4ctr_fast.ops as ops
from harness import record, sync
from tf4ctr_fast.reference import dfm as ref_dfm
from tf4ctr_fast.layers.init import xavier_linear
from tf4ctr_fast.reference.loss import total_loss

H = 400
ALPHA, C, GAMMA = 0.25, 0.7, 1.0  # Frappe's published setting
PROJECTIONS = {"WSF": 1, "MoEF": 5}  # K: the auxiliary head + the fusion's projections of [h_s ; h_c]


class Case:
    def __init__(self, fusion: str, batch: int, device: torch.device):
        torch.manual_seed(0)
        self.fusion, self.batch, self.device = fusion, batch, device
        self.head_s, self.head_c = xavier_linear(H, 1).to(device), xavier_linear(H, 1).to(device)
        self.dfm = ref_dfm.build_dfm(fusion, H, H).to(device)
        self.h_s = torch.randn(batch, H, device=device, requires_grad=True)
        self.h_c = torch.randn(batch, H, device=device, requires_grad=True)
        self.y = (torch.rand(batch, device=device) < 0.3).float()
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
        sync(self.device)
        return grads

    def useful_bytes(self, element_size: int = 4) -> int:
        return 2 * (self.h_s.numel() + self.h_c.numel()) * element_size  # read h, write grad_h

    def useful_flops(self) -> int:
        return 6 * self.batch * 2 * H * PROJECTIONS[self.fusion]


def assert_parity(case: Case, path: str) -> None:
    scale = 2.0 if path == "fused_scaled" else 1.0
    got, want = case.step(path), case.step("reference")
    torch.testing.assert_close(case.loss(path).detach() / scale, case.loss("reference").detach(), rtol=1e-5, atol=0)
    for i, (a, b) in enumerate(zip(got, want)):
        # relative to each gradient's largest entry: the fp32 reference sums B rows in another order
        torch.testing.assert_close(a / scale, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(),
                                   msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.fixture(scope="module", params=list(PROJECTIONS))
def case(request, env) -> Case:
    return Case(request.param, env.sizes.head_batch, env.device)


@pytest.mark.parametrize("path", ["reference", "fused", "fused_scaled"])
def test_twin_head_step(benchmark, env, case, path):
    if path != "reference":
        if not ops.HAS_KERNELS:
            pytest.fail("compiled kernels missing: pip install --no-build-isolation -e .")
        assert_parity(case, path)
    label = f"{case.fusion} B={case.batch} H={H}"
    benchmark.group = f"twin head {label} {env.device.type}"
    benchmark.pedantic(case.step, args=(path,), rounds=env.sizes.head_rounds, warmup_rounds=1, iterations=1)
    record(benchmark, env, bench="twin_head", case=label, path=path, batch=case.batch,
           flops=case.useful_flops(), bytes_moved=case.useful_bytes(), fusion=case.fusion, hidden=H)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs compiled only on CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_kernel_bandwidth(benchmark, env, case, dtype):
    """The forward op alone, with need_grad: it reads h once and writes only [B, K] per-row
    derivatives and the parameter gradients (grad_h is the backward op's), so its useful traffic is
    h and its FLOPs the projections and the parameter gradients."""
    from tf4ctr_fast.ops.twin_head import FUSIONS, _pack

    h_s, h_c = case.h_s.detach().to(dtype), case.h_c.detach().to(dtype)
    name, params = ops.fusion_params_from_module(case.dfm)
    packed = [p.detach() for p in _pack(h_s, case.head_s.weight, case.head_s.bias, case.head_c.weight,
                                        case.head_c.bias, name, params)]
    y = case.y.to(dtype)

    def run():
        out = torch.ops.tf4ctr_fast.twin_head(h_s, h_c, *packed, y, ALPHA, C, GAMMA, FUSIONS[name], True, True)
        torch.cuda.synchronize()
        return out

    label = f"{case.fusion} {str(dtype).removeprefix('torch.')} B={case.batch} H={H}"
    benchmark.group = f"triton twin head kernel {label}"
    benchmark.pedantic(run, rounds=50, warmup_rounds=3, iterations=1)
    record(benchmark, env, bench="twin_head_kernel", case=label, path="triton", batch=case.batch,
           flops=case.useful_flops() * 2 // 3, bytes_moved=case.useful_bytes(h_s.element_size()) // 2,
           fusion=case.fusion, dtype=str(dtype))
