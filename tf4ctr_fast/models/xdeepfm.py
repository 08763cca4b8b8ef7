"""xDeepFM: logistic regression + CIN over the field embeddings + an optional MLP, logits summed."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..features import ModelInput
from ..layers.cin import CompressedInteractionNet
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from ..layers.shallow import LogisticRegression
from .base import CTRModel, ModelParams, ModelParts, by_field, check_widths
from .registry import register


@dataclass
class xDeepFMParams(ModelParams):  # noqa: N801  (the model's name)
    dnn_hidden_units: list[int] = field(default_factory=lambda: [64, 64, 64])   # [] : LR + CIN only
    cin_hidden_units: list[int] = field(default_factory=lambda: [16, 16, 16])

    def check(self, require) -> None:
        check_widths(require, self, "dnn_hidden_units", "cin_hidden_units")
        require(bool(self.cin_hidden_units), "cin_hidden_units", "must not be empty")


@register("xDeepFM", xDeepFMParams)
class xDeepFM(CTRModel):  # noqa: N801
    def __init__(self, params: xDeepFMParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.dim = cfg.embedding_dim
        self.embedding = parts.tables({"lr": 1, "embedding": self.dim})
        self.dnn = (MLPBlock(self.embedding.output_dims[1], params.dnn_hidden_units, cfg.batch_norm, cfg.net_dropout,
                             output_dim=1) if params.dnn_hidden_units else None)
        self.lr = LogisticRegression(use_bias=False)
        self.cin = CompressedInteractionNet(parts.num_fields, params.cin_hidden_units)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        weights, emb = self.embedding(x)
        out = self.lr(weights) + self.cin(by_field(emb, self.dim))
        if self.dnn is not None:
            out = out + self.dnn(emb)
        return out.squeeze(-1)
