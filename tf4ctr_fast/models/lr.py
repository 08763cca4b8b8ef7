"""LR: logistic regression, one learned weight per feature value plus a bias."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInput
from ..layers.shallow import LogisticRegression
from .base import CTRModel, ModelParams, ModelParts
from .registry import register


@dataclass
class LRParams(ModelParams):
    """LR has no parameters of its own."""


@register("LR", LRParams)
class LR(CTRModel):
    def __init__(self, params: LRParams, parts: ModelParts):
        super().__init__()
        self.embedding = parts.tables({"lr": 1})
        self.lr = LogisticRegression(use_bias=True)

    def logit(self, x: ModelInput) -> Tensor:
        (weights,) = self.embedding(x)
        return self.lr(weights).squeeze(-1)
