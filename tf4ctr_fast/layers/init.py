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


INIT_ORDERS = ("project", "fuxictr")
# (model, backend) whose weights draw_in_fuxictr_order_ makes FuxiCTR's, checked bit for bit
# (scripts/check_fuxictr_init.py). Another model may hold randomly initialised parameters the redraw
# does not cover (DLF's token mixing, EulerNet's orders, ...): they would keep draws from the same
# seed's stream as the redrawn ones, identical numbers in two tensors. train.init_order refuses them.
FUXICTR_ORDER_CHECKED = ("DNN", "reference")


def draw_in_fuxictr_order_(model: nn.Module) -> None:
    """Redraw the weights of `model` from torch's default generator in the order FuxiCTR 2.3 draws them
    when it builds a model: each embedding table's nn.Embedding default N(0, 1) (padding row zeroed),
    then FeatureEmbeddingDict's N(0, 1e-4) on the rows after the padding row, then each nn.Linear /
    nn.Conv1d default init (as it is built), then BaseModel.reset_parameters: xavier-normal weights and
    zero biases, and the N(0, 1e-4) again. Tables and layers go in module order, so after
    seed_everything(seed) this reproduces FuxiCTR's initial weights (and generator state) for a model
    built in FuxiCTR's order whose random parameters are all tables and Linear / Conv1d layers: DNN,
    bit for bit (FUXICTR_ORDER_CHECKED). The distributions are the project order's; only which draw
    lands where changes."""
    tables = [m.weight for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    layers = [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv1d)]
    with torch.no_grad():
        for weight in tables:
            nn.init.normal_(weight)
            weight[PADDING_ID].zero_()
        for weight in tables:
            nn.init.normal_(weight[PADDING_ID + 1:], std=EMBEDDING_INIT_STD)
        for layer in layers:
            layer.reset_parameters()
        reset_linear_layers_(model)
        for weight in tables:
            nn.init.normal_(weight[PADDING_ID + 1:], std=EMBEDDING_INIT_STD)
