"""BatchNorm over the neurons of exp(z), AFN's logarithmic layer after its projection: z [B, d, N] ->
[B, N, d]. Training on the CPU in float32 runs kernels/exp_batch_norm.cpp (ops `exp_batch_norm_forward`
/ `_backward`: four passes forward and two backward over a [B, N, d] tensor where torch's exp,
transposing copy and BatchNorm take about ten; statistics in double); everything else (eval, CUDA,
bf16, a library without kernels) runs the twin tf4ctr_fast/reference/exp_batch_norm.py, so exported
programs hold torch's ops only. Tests: tests/test_exp_batch_norm.py; bench: bench/test_bench_logarithmic.py."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..reference import exp_batch_norm as reference
from . import cpu_batch_norm_kernel_applies


class _ExpBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                momentum: float, eps: float) -> Tensor:
        y, e, mean, invstd = torch.ops.tf4ctr_fast.exp_batch_norm_forward(
            z, weight, bias, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(e, mean, invstd, weight)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        e, mean, invstd, weight = ctx.saved_tensors
        dz, d_weight, d_bias = torch.ops.tf4ctr_fast.exp_batch_norm_backward(
            grad.contiguous(), e, mean, invstd, weight)
        return dz, d_weight, d_bias, None, None, None, None


def exp_batch_norm(z: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    """bn(exp(z)) with the neurons of z [B, d, N] as channels, returned [B, N, d]; bn's running
    statistics and batch count advance as nn.BatchNorm1d's do."""
    if not cpu_batch_norm_kernel_applies(bn, z):
        return reference.exp_batch_norm(z, bn)
    bn.num_batches_tracked.add_(1)
    return _ExpBatchNorm.apply(z, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps)
