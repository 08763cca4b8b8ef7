"""EDCN: a cross stream and a deep stream over the flat field embeddings, exchanging information each
layer through a bridge module, with regulation modules (field-wise gates) feeding each layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..features import ModelInput
from ..layers.cross import EDCN_BRIDGES, BridgeModule, CrossInteraction, RegulationModule
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts
from .registry import register


@dataclass
class EDCNParams(ModelParams):
    num_cross_layers: int = 3
    bridge_type: str = "hadamard_product"
    temperature: float = 1.0

    def check(self, require) -> None:
        require(self.num_cross_layers >= 1, "num_cross_layers", "must be at least 1")
        require(self.bridge_type in EDCN_BRIDGES, "bridge_type", f"must be one of {', '.join(EDCN_BRIDGES)}")
        require(self.temperature > 0, "temperature", "must be > 0")


@register("EDCN", EDCNParams)
class EDCN(CTRModel):
    def __init__(self, params: EDCNParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.embedding = parts.tables({"embedding": cfg.embedding_dim})
        width = self.embedding.output_dims[0]
        layers = range(params.num_cross_layers)
        # As in FuxiCTR: the deep layers never batch-normalise; model.batch_norm goes to the regulation.
        self.dense_layers = nn.ModuleList(MLPBlock(width, [width], False, cfg.net_dropout) for _ in layers)
        self.cross_layers = nn.ModuleList(CrossInteraction(width) for _ in layers)
        self.bridge_modules = nn.ModuleList(BridgeModule(width, params.bridge_type) for _ in layers)
        self.regulation_modules = nn.ModuleList(
            RegulationModule(parts.num_fields, cfg.embedding_dim, params.temperature, cfg.batch_norm) for _ in layers)
        self.fc = nn.Linear(3 * width, 1)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        (emb,) = self.embedding(x)
        cross, deep = self.regulation_modules[0](emb)
        cross_0 = cross
        last = len(self.cross_layers) - 1
        for i, (cross_layer, dense, bridge_module) in enumerate(
                zip(self.cross_layers, self.dense_layers, self.bridge_modules)):
            # FuxiCTR's cross step has no residual here: x_{i+1} = x_0 * (w^T x_i) + b.
            cross = cross_layer(cross_0, cross)
            deep = dense(deep)
            bridge = bridge_module(cross, deep)
            if i < last:
                cross, deep = self.regulation_modules[i + 1](bridge)
        return self.fc(torch.cat([cross, deep, bridge], dim=-1)).squeeze(-1)
