"""DNN: field embeddings -> MLP -> Linear(1), plain BCE."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..features import ModelInput
from ..layers.init import xavier_linear
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .registry import register


@dataclass
class DNNParams(ModelParams):
    dnn_hidden: list[int] = field(default_factory=lambda: [400, 400, 400])

    def check(self, require) -> None:
        check_widths(require, self, "dnn_hidden")


@register("DNN", DNNParams)
class DNN(CTRModel):
    def __init__(self, params: DNNParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.embedding = parts.tables({"embedding": cfg.embedding_dim})
        self.mlp = MLPBlock(self.embedding.output_dims[0], params.dnn_hidden, cfg.batch_norm, cfg.net_dropout)
        self.out = xavier_linear(self.mlp.output_dim, 1)

    def logit(self, x: ModelInput) -> Tensor:
        (e,) = self.embedding(x)
        return self.out(self.mlp(e)).squeeze(-1)
