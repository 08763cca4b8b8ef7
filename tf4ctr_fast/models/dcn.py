"""DCN: CrossNet over the flat field embeddings, an optional parallel MLP, Linear on their concatenation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..features import ModelInput
from ..layers.cross import CrossNet
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .registry import register


@dataclass
class DCNParams(ModelParams):
    dnn_hidden_units: list[int] = field(default_factory=lambda: [1024, 512, 256])   # [] : CrossNet only
    num_cross_layers: int = 3

    def check(self, require) -> None:
        check_widths(require, self, "dnn_hidden_units")
        require(self.num_cross_layers >= 1, "num_cross_layers", "must be at least 1")


@register("DCN", DCNParams)
class DCN(CTRModel):
    def __init__(self, params: DCNParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.embedding = parts.tables({"embedding": cfg.embedding_dim})
        width = self.embedding.output_dims[0]
        self.crossnet = CrossNet(width, params.num_cross_layers)
        self.dnn = (MLPBlock(width, params.dnn_hidden_units, cfg.batch_norm, cfg.net_dropout)
                    if params.dnn_hidden_units else None)
        self.fc = nn.Linear(width + (self.dnn.output_dim if self.dnn else 0), 1)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        (emb,) = self.embedding(x)
        out = self.crossnet(emb)
        if self.dnn is not None:
            out = torch.cat([out, self.dnn(emb)], dim=-1)
        return self.fc(out).squeeze(-1)
