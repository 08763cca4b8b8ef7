"""Dropout for training on the CPU: kernels/dropout.cpp (op `dropout_mask_scale`), its mask a hash of
(element index, seed), so backward recomputes it from the seed and nothing is stored; the twin
tf4ctr_fast/reference/dropout.py where the compiled library is missing. Each call draws its seed from
torch's default generator, so runs stay reproducible from train.seed and resume exactly (the trainer
saves that generator's state). Tensors other than float32 on the CPU (CUDA, bf16 under autocast) use
torch's own dropout. Tests: tests/test_dropout.py; bench: bench/test_bench_dropout.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import dropout as reference
from . import HAS_KERNELS


def dropout_mask_scale(x: Tensor, p: float, seed: int, reference_path: bool = False) -> Tensor:
    """See reference.dropout.dropout_mask_scale."""
    if HAS_KERNELS and not reference_path:
        return torch.ops.tf4ctr_fast.dropout_mask_scale(x, p, seed)
    return reference.dropout_mask_scale(x, p, seed)


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return dropout_mask_scale(x, p, seed)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # dropout is x -> mask * x / (1 - p): its gradient is the same map applied to grad
        return dropout_mask_scale(grad.contiguous(), ctx.p, ctx.seed), None, None


def draw_seed() -> int:
    """A seed in [0, 2^63) from torch's default CPU generator."""
    return int(torch.empty((), dtype=torch.int64).random_())


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout(x, p, training), with the hash mask for float32 CPU tensors."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return F.dropout(x, p, training)
    return _HashDropout.apply(x, p, draw_seed())
