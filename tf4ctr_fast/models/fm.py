"""FM: logistic regression + the sum of pairwise inner products of the field embeddings."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInput
from ..layers.shallow import LogisticRegression, fm_second_order
from .base import CTRModel, ModelParams, ModelParts, by_field
from .registry import register


@dataclass
class FMParams(ModelParams):
    """FM has no parameters of its own (embedding_dim is shared)."""


@register("FM", FMParams)
class FM(CTRModel):
    def __init__(self, params: FMParams, parts: ModelParts):
        super().__init__()
        self.dim = parts.shared.embedding_dim
        self.embedding = parts.tables({"lr": 1, "embedding": self.dim})
        self.lr = LogisticRegression(use_bias=True)

    def logit(self, x: ModelInput) -> Tensor:
        weights, emb = self.embedding(x)
        return (self.lr(weights) + fm_second_order(by_field(emb, self.dim))).squeeze(-1)
