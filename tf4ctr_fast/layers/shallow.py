"""The shallow terms: logistic regression over per-field weights and the FM second-order term."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class LogisticRegression(nn.Module):
    """sum over fields of each field's 1-wide weight (the "lr" table kind) [+ bias]: [B, F] -> [B, 1].
    FuxiCTR's LogisticRegression (its weights are 1-dim embeddings, regularized like the others)."""

    def __init__(self, use_bias: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1)) if use_bias else None

    def forward(self, field_weights: Tensor) -> Tensor:
        out = field_weights.sum(dim=1, keepdim=True)
        return out + self.bias if self.bias is not None else out


def fm_second_order(emb: Tensor) -> Tensor:
    """sum over field pairs i < j of <e_i, e_j>, per sample: emb [B, F, d] -> [B, 1], computed as
    0.5 * ((sum_i e_i)^2 - sum_i e_i^2) summed over d (FuxiCTR's InnerProductInteraction "product_sum")."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_square = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=-1, keepdim=True)
