"""An MLP hidden layer's BatchNorm then ReLU, forward + backward of one [B, 400] activation (the
paper's models' layers), in training (batch statistics):
  reference  tf4ctr_fast/reference/batch_norm_relu.py: torch's BatchNorm1d and relu (what the layer
             library ran before)
  fused      kernels/batch_norm_relu.cpp through tf4ctr_fast.ops.batch_norm_relu
Parity first: the fused output and input gradient equal float64's on the case's tensor. CPU only
(on CUDA the layer library keeps torch's ops). B = 10000 (Frappe's batch) and 4096 (the Criteo
bench's)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness import record
from tf4ctr_fast.ops import HAS_KERNELS
from tf4ctr_fast.ops.batch_norm_relu import batch_norm_relu
from tf4ctr_fast.reference.batch_norm_relu import batch_norm_relu as twin

H = 400


def step(fn, bn: nn.BatchNorm1d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    y = fn(x, bn)
    y.backward(g)
    return y


@pytest.mark.parametrize("batch", [10000, 4096], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("path", ["reference", "fused"])
def test_batch_norm_relu_step(benchmark, env, batch, path):
    if env.device.type != "cpu":
        pytest.skip("the fused BatchNorm + ReLU is the CPU path (CUDA keeps torch's ops)")
    if path == "fused" and not HAS_KERNELS:
        pytest.fail("compiled kernels missing: pip install --no-build-isolation -e .")
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, H, generator=gen) * 2 + 0.5).requires_grad_()
    g = torch.randn(batch, H, generator=gen)
    bn = nn.BatchNorm1d(H)
    fn = batch_norm_relu if path == "fused" else twin
    if path == "fused":
        # against float64 (torch's float32 BatchNorm is no oracle here: at 1 thread and B 10000 its input
        # gradient is 0.13 off float64's on this tensor, the kernel's 3e-7)
        x64 = x.detach().double().requires_grad_()
        y64 = step(lambda t, m: torch.relu(nn.functional.batch_norm(t, None, None, training=True, eps=m.eps)),
                   bn, x64, g.double())
        torch.testing.assert_close(step(fn, copy.deepcopy(bn), x, g).double(), y64, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    benchmark.group = f"batch_norm_relu fwd+bwd B={batch} H={H} {env.device.type}"
    x.grad = None

    def timed() -> None:
        step(fn, bn, x, g)
        x.grad = None

    benchmark.pedantic(timed, rounds=10, warmup_rounds=1, iterations=1)
    # the traffic the work cannot avoid: forward reads x, writes y; backward reads dy, x, y, writes dx
    record(benchmark, env, bench="batch_norm_relu", case=f"B={batch}", path=path, batch=batch,
           bytes_moved=6 * 4 * x.numel())
