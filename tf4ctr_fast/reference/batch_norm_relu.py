"""Op-by-op twin of kernels/batch_norm_relu.cpp: an MLP hidden layer's BatchNorm then ReLU over
x [B, C], with torch's BatchNorm (the layer's own module) and relu."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def batch_norm_relu(x: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    return torch.relu(bn(x))
