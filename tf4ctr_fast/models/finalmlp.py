"""FinalMLP: two MLP streams over the field embeddings, each behind its own feature-selection gate,
fused by multi-head bilinear interaction aggregation."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..features import ModelInput
from ..layers.feature_gating import FeatureSelection, InteractionAggregation
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .registry import register


@dataclass
class FinalMLPParams(ModelParams):
    mlp1_hidden_units: list[int] = field(default_factory=lambda: [1024, 512])
    mlp1_dropout: float = 0.0
    mlp1_batch_norm: bool = False
    mlp2_hidden_units: list[int] = field(default_factory=lambda: [1024, 512, 256])
    mlp2_dropout: float = 0.0
    mlp2_batch_norm: bool = False
    use_fs: bool = True
    fs_hidden_units: list[int] = field(default_factory=lambda: [1024, 512])
    num_heads: int = 2

    def check(self, require) -> None:
        check_widths(require, self, "mlp1_hidden_units", "mlp2_hidden_units", "fs_hidden_units")
        for key in ("mlp1_hidden_units", "mlp2_hidden_units"):
            require(bool(getattr(self, key)), key, "must not be empty")
        for key in ("mlp1_dropout", "mlp2_dropout"):
            require(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")
        require(self.num_heads >= 1, "num_heads", "must be at least 1")
        for key in ("mlp1_hidden_units", "mlp2_hidden_units"):
            widths = getattr(self, key)
            require(not widths or widths[-1] % self.num_heads == 0, key,
                    f"its last width must be a multiple of num_heads ({self.num_heads})")


@register("FinalMLP", FinalMLPParams)
class FinalMLP(CTRModel):
    def __init__(self, params: FinalMLPParams, parts: ModelParts):
        super().__init__()
        dim = parts.shared.embedding_dim
        self.embedding = parts.tables({"embedding": dim})
        width = self.embedding.output_dims[0]
        self.mlp1 = MLPBlock(width, params.mlp1_hidden_units, params.mlp1_batch_norm, params.mlp1_dropout)
        self.mlp2 = MLPBlock(width, params.mlp2_hidden_units, params.mlp2_batch_norm, params.mlp2_dropout)
        self.fs = FeatureSelection(width, dim, params.fs_hidden_units) if params.use_fs else None
        self.fusion = InteractionAggregation(self.mlp1.output_dim, self.mlp2.output_dim, params.num_heads)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        (emb,) = self.embedding(x)
        x1, x2 = self.fs(emb) if self.fs is not None else (emb, emb)
        return self.fusion(self.mlp1(x1), self.mlp2(x2)).squeeze(-1)
