"""Op-by-op twin of kernels/exp_batch_norm.cpp: BatchNorm over the neurons of exp(z) for AFN's
logarithmic layer, z [B, d, N] -> [B, N, d], with torch's exp and BatchNorm (the layer's own module)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def exp_batch_norm(z: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    return bn(torch.exp(z.transpose(1, 2).contiguous()))
