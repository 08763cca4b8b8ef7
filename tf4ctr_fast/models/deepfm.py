"""DeepFM: FM (logistic regression + pairwise inner products, per sample) + an MLP over the same field
embeddings."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..features import ModelInput
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from ..layers.shallow import LogisticRegression, fm_second_order
from .base import CTRModel, ModelParams, ModelParts, by_field, check_widths
from .registry import register


@dataclass
class DeepFMParams(ModelParams):
    hidden_units: list[int] = field(default_factory=lambda: [64, 64, 64])

    def check(self, require) -> None:
        check_widths(require, self, "hidden_units")


@register("DeepFM", DeepFMParams)
class DeepFM(CTRModel):
    def __init__(self, params: DeepFMParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.dim = cfg.embedding_dim
        self.embedding = parts.tables({"lr": 1, "embedding": self.dim})
        self.lr = LogisticRegression(use_bias=True)
        self.mlp = MLPBlock(self.embedding.output_dims[1], params.hidden_units, cfg.batch_norm, cfg.net_dropout,
                            output_dim=1)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        weights, emb = self.embedding(x)
        fm = self.lr(weights) + fm_second_order(by_field(emb, self.dim))
        return (fm + self.mlp(emb)).squeeze(-1)
