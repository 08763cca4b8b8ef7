"""EulerNet: field embeddings as complex numbers mu * e^{i e} (real part r, imaginary part p), stacked
Euler interaction layers, one Linear applied to both parts, logits summed."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..features import ModelInput
from ..layers.euler import EulerInteraction
from .base import CTRModel, ModelParams, ModelParts, by_field
from .registry import register


@dataclass
class EulerNetParams(ModelParams):
    shape: list[int] = field(default_factory=lambda: [3])     # output fields ("orders") of each layer
    net_ex_dropout: float = 0.1
    net_im_dropout: float = 0.1
    layer_norm: bool = False

    def check(self, require) -> None:
        require(bool(self.shape) and all(n >= 1 for n in self.shape), "shape", "needs widths of at least 1")
        for key in ("net_ex_dropout", "net_im_dropout"):
            require(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")


@register("EulerNet", EulerNetParams)
class EulerNet(CTRModel):
    def __init__(self, params: EulerNetParams, parts: ModelParts):
        super().__init__()
        self.dim = dim = parts.shared.embedding_dim
        self.embedding = parts.tables({"embedding": dim})
        fields = [parts.num_fields, *params.shape]
        # The layers keep their own init (FuxiCTR resets the model's Linear layers before creating them).
        self.interactions = nn.ModuleList(
            EulerInteraction(before, after, dim, params.layer_norm, params.net_ex_dropout, params.net_im_dropout)
            for before, after in zip(fields[:-1], fields[1:]))
        self.mu = nn.Parameter(torch.ones(1, parts.num_fields, 1))
        self.reg = nn.Linear(fields[-1] * dim, 1)
        nn.init.xavier_normal_(self.reg.weight)

    def logit(self, x: ModelInput) -> Tensor:
        (emb,) = self.embedding(x)
        emb = by_field(emb, self.dim)
        r, p = self.mu * torch.cos(emb), self.mu * torch.sin(emb)
        for layer in self.interactions:
            r, p = layer(r, p)
        return (self.reg(r.flatten(start_dim=1)) + self.reg(p.flatten(start_dim=1))).squeeze(-1)
