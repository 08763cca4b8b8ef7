"""Wide & Deep: logistic regression without bias (wide) + an MLP over the field embeddings (deep)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..features import ModelInput
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from ..layers.shallow import LogisticRegression
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .registry import register


@dataclass
class WideDeepParams(ModelParams):
    hidden_units: list[int] = field(default_factory=lambda: [64, 64, 64])

    def check(self, require) -> None:
        check_widths(require, self, "hidden_units")


@register("WideDeep", WideDeepParams)
class WideDeep(CTRModel):
    def __init__(self, params: WideDeepParams, parts: ModelParts, lr_bias: bool = False):
        super().__init__()
        cfg = parts.shared
        self.embedding = parts.tables({"lr": 1, "embedding": cfg.embedding_dim})
        # FuxiCTR's wide part has no bias of its own (the MLP's output layer has one); DeepFM's FM has.
        self.lr = LogisticRegression(use_bias=lr_bias)
        self.mlp = MLPBlock(self.embedding.output_dims[1], params.hidden_units, cfg.batch_norm, cfg.net_dropout,
                            output_dim=1)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        weights, emb = self.embedding(x)
        return (self.lr(weights) + self.mlp(emb)).squeeze(-1)
