"""DCNv2: CrossNetV2 (or its low-rank mixture of experts) over the flat field embeddings, combined with
MLPs as model_structure says, Linear to the logit."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..features import ModelInput
from ..layers.cross import CrossNetMix, CrossNetV2
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .registry import register

STRUCTURES = ("crossnet_only", "stacked", "parallel", "stacked_parallel")


@dataclass
class DCNv2Params(ModelParams):
    model_structure: str = "parallel"
    use_low_rank_mixture: bool = False
    low_rank: int = 32
    num_experts: int = 4
    stacked_dnn_hidden_units: list[int] = field(default_factory=lambda: [500, 500, 500])
    parallel_dnn_hidden_units: list[int] = field(default_factory=lambda: [500, 500, 500])
    num_cross_layers: int = 3

    def check(self, require) -> None:
        require(self.model_structure in STRUCTURES, "model_structure", f"must be one of {', '.join(STRUCTURES)}")
        check_widths(require, self, "stacked_dnn_hidden_units", "parallel_dnn_hidden_units")
        # FuxiCTR reads the last width of the MLPs the structure uses: they cannot be empty.
        if "stacked" in self.model_structure:
            require(bool(self.stacked_dnn_hidden_units), "stacked_dnn_hidden_units", "must not be empty here")
        if "parallel" in self.model_structure:
            require(bool(self.parallel_dnn_hidden_units), "parallel_dnn_hidden_units", "must not be empty here")
        for key in ("low_rank", "num_experts", "num_cross_layers"):
            require(getattr(self, key) >= 1, key, "must be at least 1")


@register("DCNv2", DCNv2Params)
class DCNv2(CTRModel):
    def __init__(self, params: DCNv2Params, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.embedding = parts.tables({"embedding": cfg.embedding_dim})
        width = self.embedding.output_dims[0]
        self.crossnet = (CrossNetMix(width, params.num_cross_layers, params.low_rank, params.num_experts)
                         if params.use_low_rank_mixture else CrossNetV2(width, params.num_cross_layers))
        structure = params.model_structure

        def mlp(hidden: list[int]) -> MLPBlock:
            return MLPBlock(width, hidden, cfg.batch_norm, cfg.net_dropout)

        self.stacked_dnn = mlp(params.stacked_dnn_hidden_units) if "stacked" in structure else None
        self.parallel_dnn = mlp(params.parallel_dnn_hidden_units) if "parallel" in structure else None
        # The cross output, through the stacked MLP if any, next to the parallel MLP's if any.
        final_dim = ((self.stacked_dnn.output_dim if self.stacked_dnn else width)
                     + (self.parallel_dnn.output_dim if self.parallel_dnn else 0))
        self.fc = nn.Linear(final_dim, 1)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        (emb,) = self.embedding(x)
        cross = self.crossnet(emb)
        if self.stacked_dnn is not None:
            cross = self.stacked_dnn(cross)
        if self.parallel_dnn is not None:
            cross = torch.cat([cross, self.parallel_dnn(emb)], dim=-1)
        return self.fc(cross).squeeze(-1)
