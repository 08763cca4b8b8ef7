"""AutoInt (AutoInt+ with its MLP, the default): stacked multi-head self-attention over the field
embeddings -> Linear, plus an MLP over the same embeddings and optionally logistic regression."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..features import ModelInput
from ..layers.attention import MultiHeadSelfAttention
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from ..layers.shallow import LogisticRegression
from .base import CTRModel, ModelParams, ModelParts, by_field, check_widths
from .registry import register


@dataclass
class AutoIntParams(ModelParams):
    dnn_hidden_units: list[int] = field(default_factory=lambda: [64, 64, 64])   # [] : plain AutoInt
    attention_layers: int = 2
    num_heads: int = 1
    attention_dim: int = 8
    layer_norm: bool = False
    use_scale: bool = False
    use_wide: bool = False
    use_residual: bool = True

    def check(self, require) -> None:
        check_widths(require, self, "dnn_hidden_units")
        for key in ("attention_layers", "num_heads", "attention_dim"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        require(self.attention_dim % self.num_heads == 0, "attention_dim", "must be a multiple of num_heads")


@register("AutoInt", AutoIntParams)
class AutoInt(CTRModel):
    def __init__(self, params: AutoIntParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.dim = cfg.embedding_dim
        kinds = {"lr": 1, "embedding": self.dim} if params.use_wide else {"embedding": self.dim}
        self.embedding = parts.tables(kinds)
        self.lr = LogisticRegression(use_bias=False) if params.use_wide else None
        flat_width = self.embedding.output_dims[-1]
        self.dnn = (MLPBlock(flat_width, params.dnn_hidden_units, cfg.batch_norm, cfg.net_dropout, output_dim=1)
                    if params.dnn_hidden_units else None)
        self.self_attention = nn.Sequential(*[
            MultiHeadSelfAttention(self.dim if i == 0 else params.attention_dim, params.attention_dim,
                                   params.num_heads, cfg.net_dropout, params.use_residual, params.use_scale,
                                   params.layer_norm)
            for i in range(params.attention_layers)])
        self.fc = nn.Linear(parts.num_fields * params.attention_dim, 1)
        reset_linear_layers_(self)

    def logit(self, x: ModelInput) -> Tensor:
        *weights, emb = self.embedding(x)
        out = self.fc(self.self_attention(by_field(emb, self.dim)).flatten(start_dim=1))
        if self.dnn is not None:
            out = out + self.dnn(emb)
        if self.lr is not None:
            out = out + self.lr(weights[0])
        return out.squeeze(-1)
