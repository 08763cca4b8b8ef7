"""AFN (AFN+ with its DNN ensemble, the default): a logarithmic transformation layer learns
arbitrary-order cross features, an MLP reads them; AFN+ adds an MLP over a second, separate
embedding and mixes both logits with Linear(2, 1)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..features import ModelInput
from ..layers.init import reset_linear_layers_
from ..layers.logarithmic import LogarithmicTransformation
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts, by_field, check_widths
from .registry import register


@dataclass
class AFNParams(ModelParams):
    logarithmic_neurons: int = 1200
    afn_hidden_units: list[int] = field(default_factory=lambda: [400, 400, 400])
    afn_dropout: float = 0.0
    ensemble_dnn: bool = True
    dnn_hidden_units: list[int] = field(default_factory=lambda: [400, 400, 400])
    dnn_dropout: float = 0.0

    def check(self, require) -> None:
        check_widths(require, self, "afn_hidden_units", "dnn_hidden_units")
        require(self.logarithmic_neurons >= 1, "logarithmic_neurons", "must be at least 1")
        for key in ("afn_dropout", "dnn_dropout"):
            require(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")


@register("AFN", AFNParams)
class AFN(CTRModel):
    def __init__(self, params: AFNParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.dim = cfg.embedding_dim
        # AFN+'s DNN reads its own embedding: a second table kind per field.
        kinds = {"embedding": self.dim, "dnn_embedding": self.dim} if params.ensemble_dnn else {"embedding": self.dim}
        self.embedding = parts.tables(kinds)
        self.logarithmic = LogarithmicTransformation(parts.num_fields, params.logarithmic_neurons)
        self.afn_mlp = MLPBlock(self.dim * params.logarithmic_neurons, params.afn_hidden_units, cfg.batch_norm,
                                params.afn_dropout, output_dim=1)
        if params.ensemble_dnn:
            self.dnn = MLPBlock(self.embedding.output_dims[1], params.dnn_hidden_units, cfg.batch_norm,
                                params.dnn_dropout, output_dim=1)
            self.fc = nn.Linear(2, 1)
        else:
            self.dnn = self.fc = None
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        emb, *dnn_emb = self.embedding(x)
        out = self.afn_mlp(self.logarithmic(by_field(emb, self.dim)))
        if self.dnn is not None:
            out = self.fc(torch.cat([out, self.dnn(dnn_emb[0])], dim=-1))
        return out.squeeze(-1)
