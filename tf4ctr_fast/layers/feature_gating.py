"""FinalMLP's two-stream blocks: feature selection gates and the bilinear interaction aggregation
(FuxiCTR model_zoo/FinalMLP, without context features: fs1_context = fs2_context = [])."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .mlp import MLPBlock


class FeatureSelection(nn.Module):
    """Two gates 2 * sigmoid(MLP(b_k)) over the flat embedding [B, F*d], each from a learned context
    vector b_k [1, d] (FinalMLP with empty fs contexts): -> (x * gate_1, x * gate_2)."""

    def __init__(self, feature_dim: int, embedding_dim: int, hidden_units: Sequence[int]):
        super().__init__()
        self.context_1 = nn.Parameter(torch.zeros(1, embedding_dim))
        self.context_2 = nn.Parameter(torch.zeros(1, embedding_dim))
        self.gate_1 = nn.Sequential(MLPBlock(embedding_dim, hidden_units, False, 0.0, output_dim=feature_dim),
                                    nn.Sigmoid())
        self.gate_2 = nn.Sequential(MLPBlock(embedding_dim, hidden_units, False, 0.0, output_dim=feature_dim),
                                    nn.Sigmoid())

    def forward(self, flat_emb: Tensor) -> tuple[Tensor, Tensor]:
        # The gates depend on no input: computed for one row and broadcast (FuxiCTR repeats the
        # context per row first; same values).
        return flat_emb * (2 * self.gate_1(self.context_1)), flat_emb * (2 * self.gate_2(self.context_2))


class InteractionAggregation(nn.Module):
    """w_x^T x + w_y^T y + sum over heads of x_h^T W_h y_h: x [B, Dx], y [B, Dy] -> [B, 1]."""

    def __init__(self, x_dim: int, y_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_x, self.head_y = num_heads, x_dim // num_heads, y_dim // num_heads
        self.w_x = nn.Linear(x_dim, 1)
        self.w_y = nn.Linear(y_dim, 1)
        self.w_xy = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_heads * self.head_x * self.head_y, 1)))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        head_x = x.view(-1, self.num_heads, self.head_x)
        head_y = y.view(-1, self.num_heads, self.head_y)
        w = self.w_xy.view(self.num_heads, self.head_x, self.head_y)
        bilinear = torch.einsum("bhi,hij,bhj->bh", head_x, w, head_y).sum(dim=1, keepdim=True)
        return self.w_x(x) + self.w_y(y) + bilinear
