"""BatchNorm then ReLU over x [B, C], an MLP hidden layer (not wired into layers/mlp.py yet: a Frappe DNN
trained slower with it, cause not found; docs/benchmarks.md "BatchNorm + ReLU fused"). Training on
the CPU in float32 runs kernels/batch_norm_relu.cpp (ops `batch_norm_relu_forward` / `_backward`:
two passes over [B, C] each way, statistics in double, and x is the only [B, C] tensor kept for
backward where torch keeps x and y); everything else (eval, CUDA, bf16 under autocast, a batch
of one, a library without kernels) runs the twin tf4ctr_fast/reference/batch_norm_relu.py, so
exported programs hold torch's ops only. Tests: tests/test_batch_norm_relu.py; bench:
bench/test_bench_batch_norm_relu.py."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..reference import batch_norm_relu as reference
from . import cpu_batch_norm_kernel_applies


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                momentum: float, eps: float) -> Tensor:
        y, mean, invstd = torch.ops.tf4ctr_fast.batch_norm_relu_forward(
            x, weight, bias, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(x, mean, invstd, weight, bias)   # not y: backward recomputes relu's mask from x
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, mean, invstd, weight, bias = ctx.saved_tensors
        dx, d_weight, d_bias = torch.ops.tf4ctr_fast.batch_norm_relu_backward(
            grad.contiguous(), x, mean, invstd, weight, bias)
        return dx, d_weight, d_bias, None, None, None, None


def batch_norm_relu(x: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    """relu(bn(x)) for x [B, C]; bn's running statistics and batch count advance as nn.BatchNorm1d's do."""
    if not (cpu_batch_norm_kernel_applies(bn, x) and x.dim() == 2 and x.size(0) > 1):
        return reference.batch_norm_relu(x, bn)
    bn.num_batches_tracked.add_(1)
    return _BatchNormReLU.apply(x.contiguous(), bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum,
                                bn.eps)
