"""Op-by-op twin of kernels/dropout.cpp: dropout whose mask is a hash of (element index, seed).

Element i of a call with seed s is kept when lowbias32(lowbias32(lo32(i) ^ lo32(s)) ^ hi32(s) ^ hi32(i))
has its top 24 bits at or above floor(p * 2^24); kept elements are scaled by 1 / (1 - p). The 32-bit
unsigned arithmetic is done in int64 tensors, masked to 32 bits after every step (a product of two
32-bit values may wrap int64, and its low 32 bits are still right)."""
from __future__ import annotations

import torch
from torch import Tensor

_LOW32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _LOW32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _LOW32
    return x ^ (x >> 16)


def keep_mask(numel: int, p: float, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """bool [numel]: which elements of a tensor of `numel` elements (flat, row-major) a call keeps."""
    i = torch.arange(numel, dtype=torch.int64, device=device)
    s = seed & ((1 << 64) - 1)
    seed_lo, seed_hi = s & _LOW32, s >> 32
    h = _hash32(_hash32((i & _LOW32) ^ seed_lo) ^ seed_hi ^ (i >> 32))
    return (h >> 8) >= int(p * 16777216.0)


def dropout_mask_scale(x: Tensor, p: float, seed: int) -> Tensor:
    """x * (keep ? 1 / (1 - p) : 0), keep = keep_mask (a dropped inf or NaN gives NaN, as in torch)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout_mask_scale: p must be in [0, 1), got {p}")
    keep = keep_mask(x.numel(), p, seed, x.device).view(x.shape)
    return x * (keep.to(x.dtype) * (1.0 / (1.0 - p)))
