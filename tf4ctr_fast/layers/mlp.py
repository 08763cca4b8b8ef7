"""The MLP block every model uses (FuxiCTR's MLP_Block with ReLU hidden activations)."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from .dropout import Dropout
from .init import xavier_linear


class MLPBlock(nn.Module):
    """Per hidden layer: Linear -> BatchNorm1d (optional) -> ReLU -> Dropout; then, with output_dim,
    one Linear(., output_dim) without activation.

    Without output_dim the last hidden layer is the block's output (`output_dim` attribute: its
    width), as in FuxiCTR's MLP_Block with output_dim=None. With no hidden units and no output_dim
    the block is the identity.
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], batch_norm: bool, dropout: float,
                 output_dim: Optional[int] = None):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for units in hidden_units:
            layers.append(xavier_linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = units
        if output_dim is not None:
            layers.append(xavier_linear(width, output_dim))
            width = output_dim
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
