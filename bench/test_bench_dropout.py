"""Dropout, forward + backward of one [B, 400] activation (an MLP layer of the paper's models), p 0.2:
  torch      torch.nn.functional.dropout (what the layer library used before: a Bernoulli draw per
             element from MT19937)
  reference  tf4ctr_fast/reference/dropout.py, the op-by-op twin of the kernel (the hash in int64
             tensor arithmetic)
  fused      kernels/dropout.cpp through tf4ctr_fast.ops.dropout (the mask recomputed in backward)
Parity first: fused equals the twin bit for bit on the case's tensor. CPU only (on CUDA the layer
library keeps torch's dropout). B = 10000 (Frappe's batch) and 4096."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import record
from tf4ctr_fast.ops import HAS_KERNELS
from tf4ctr_fast.ops.dropout import dropout, dropout_mask_scale
from tf4ctr_fast.reference.dropout import dropout_mask_scale as twin

P, H = 0.2, 400
_torch_median: dict[int, float] = {}


def step(path: str, x: torch.Tensor, g: torch.Tensor) -> None:
    if path == "torch":
        y = F.dropout(x, P, True)
    elif path == "reference":
        y = twin(x, P, 123)
    else:
        y = dropout(x, P, True)
    y.backward(g)
    x.grad = None


@pytest.mark.parametrize("batch", [10000, 4096], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("path", ["reference", "torch", "fused"])
def test_dropout_step(benchmark, env, batch, path):
    if env.device.type != "cpu":
        pytest.skip("the fused dropout is the CPU path (CUDA keeps torch's)")
    if path == "fused" and not HAS_KERNELS:
        pytest.fail("compiled kernels missing: pip install --no-build-isolation -e .")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, H, generator=gen).requires_grad_()
    g = torch.randn(batch, H, generator=gen)
    if path == "fused":
        torch.testing.assert_close(dropout_mask_scale(x.detach(), P, 123), twin(x.detach(), P, 123), rtol=0, atol=0)
    benchmark.group = f"dropout fwd+bwd B={batch} H={H} p={P} {env.device.type}"
    benchmark.pedantic(step, args=(path, x, g), rounds=10, warmup_rounds=1, iterations=1)
    record(benchmark, env, bench="dropout", case=f"B={batch}", path=path, batch=batch,
           bytes_moved=4 * 4 * x.numel())          # read x, write y; read g, write the gradient
    if benchmark.stats is None:
        return
    if path == "torch":
        _torch_median[batch] = benchmark.stats.stats.median
    elif path == "fused" and batch in _torch_median:
        benchmark.extra_info["speedup_vs_torch"] = _torch_median[batch] / benchmark.stats.stats.median
