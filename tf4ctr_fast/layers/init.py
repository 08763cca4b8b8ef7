"""Initialisation rules of FuxiCTR (REFERENCE.md "Training protocol"), shared by every layer."""
from __future__ import annotations

import torch
from torch import Tensor, nn

PADDING_ID = 0
EMBEDDING_INIT_STD = 1e-4


def xavier_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """nn.Linear with FuxiCTR's init: xavier-normal weights, zero bias."""
    linear = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.xavier_normal_(linear.weight)
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


def reset_linear_layers_(module: nn.Module) -> None:
    """FuxiCTR's BaseModel.reset_parameters default rule: every nn.Linear and nn.Conv1d inside `module`
    gets xavier-normal weights and a zero bias (models call it once, after building their layers)."""
    for layer in module.modules():
        if type(layer) in (nn.Linear, nn.Conv1d):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def init_embedding_table_(weight: Tensor) -> None:
    """N(0, 1e-4) everywhere but the padding row, which stays zero (FuxiCTR's embedding init)."""
    with torch.no_grad():
        nn.init.normal_(weight, std=EMBEDDING_INIT_STD)
        weight[PADDING_ID].zero_()
