"""DeepFM: Wide & Deep whose wide part is a full FM (logistic regression + pairwise inner products of
the same field embeddings the MLP reads, per sample)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..features import ModelInput
from ..layers.shallow import fm_second_order
from .base import ModelParts, by_field
from .registry import register
from .widedeep import WideDeep, WideDeepParams


@dataclass
class DeepFMParams(WideDeepParams):
    """DeepFM's keys are Wide & Deep's (hidden_units of the MLP)."""


@register("DeepFM", DeepFMParams)
class DeepFM(WideDeep):
    def __init__(self, params: DeepFMParams, parts: ModelParts):
        super().__init__(params, parts, lr_bias=True)
        self.dim = parts.shared.embedding_dim

    def logit(self, x: ModelInput) -> Tensor:
        weights, emb = self.embedding(x)
        return (self.lr(weights) + fm_second_order(by_field(emb, self.dim)) + self.mlp(emb)).squeeze(-1)
