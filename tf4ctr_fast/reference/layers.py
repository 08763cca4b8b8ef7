"""Building blocks shared by the reference models: the MLP block, per-field embeddings, the init rules
and the embedding regularizer, all with FuxiCTR 2.0.1 semantics (REFERENCE.md "Model", "Training
protocol")."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..features import BagField, ModelInput, check_bags, split_input

PADDING_ID = 0
EMBEDDING_INIT_STD = 1e-4


def xavier_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """nn.Linear with FuxiCTR's init: xavier-normal weights, zero bias."""
    linear = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.xavier_normal_(linear.weight)
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


class MLPBlock(nn.Module):
    """Per hidden layer: Linear -> BatchNorm1d (optional) -> ReLU -> Dropout.

    There is no output layer: the last hidden layer is the block's output (`output_dim` wide), as in
    FuxiCTR's MLP_Block with output_dim=None. With no hidden units the block is the identity.
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], batch_norm: bool, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for units in hidden_units:
            layers.append(xavier_linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def init_embedding_table_(weight: Tensor) -> None:
    """N(0, 1e-4) everywhere but the padding row, which stays zero (FuxiCTR's embedding init)."""
    with torch.no_grad():
        nn.init.normal_(weight, std=EMBEDDING_INIT_STD)
        weight[PADDING_ID].zero_()


class FieldEmbeddings(nn.Module):
    """One table per field: ids [B, F] (or Features with bags of the multi-valued fields) -> the field
    embeddings side by side, [B, (F + M) * dim], single-valued fields first, then each multi-valued
    field's pooled bag (tf4ctr_fast.features)."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, dim, padding_idx=PADDING_ID) for v in vocab_sizes)
        # include_last_offset: the loaders' offsets are [B + 1], row i = values[offsets[i]:offsets[i + 1]].
        self.bags = nn.ModuleList(nn.EmbeddingBag(f.vocab_size, dim, mode=f.pooling, padding_idx=PADDING_ID,
                                                  include_last_offset=True) for f in bag_fields)
        for table in [*self.tables, *self.bags]:
            init_embedding_table_(table.weight)
        self.bag_fields = list(bag_fields)
        self.num_fields = len(vocab_sizes)
        self.dim = dim
        self.output_dim = (self.num_fields + len(self.bag_fields)) * dim

    def forward(self, x: ModelInput) -> Tensor:
        ids, bags = split_input(x)
        if ids.dim() != 2 or ids.shape[1] != self.num_fields:
            raise ValueError(f"ids must be [batch, {self.num_fields}], got {list(ids.shape)}")
        check_bags(bags, [f.name for f in self.bag_fields], ids.shape[0])
        pooled = [table(*bags[f.name]) for f, table in zip(self.bag_fields, self.bags)]
        return torch.cat([table(ids[:, f]) for f, table in enumerate(self.tables)] + pooled, dim=-1)

    def weights(self) -> list[nn.Parameter]:
        return [table.weight for table in [*self.tables, *self.bags]]


def embedding_l2(tables: Iterable[Tensor], emb_reg: float) -> Tensor:
    """(emb_reg / 2) * sum of squared L2 norms over whole tables (FuxiCTR's embedding_regularizer)."""
    return (emb_reg / 2) * sum(w.pow(2).sum() for w in tables)
