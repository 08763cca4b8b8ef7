"""DLF (arXiv 2505.19182, the authors' Keffee/DLF models.py: DLF, DLF_att_cross, DLF_att_self): a stack
of DLF layers over the field-embedding tokens (layers/dlf.py), flattened, MLP -> 1.

`body(x)` is the network before the logit layer: the last layer's tokens flattened, [B, body_dim] with
body_dim = (2·fmb_tokens + lcb_tokens + attention tokens) · embedding_dim. The network itself is
layers/dlf.py's DLFStack (field tokens in): a twin model can use it as its complex encoder."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..features import ModelInput
from ..layers.dlf import DLFStack
from ..layers.init import reset_linear_layers_
from ..layers.mlp import MLPBlock
from .base import CTRModel, ModelParams, ModelParts, by_field, check_widths
from .registry import register

ATTENTION = ("none", "cross", "self")


@dataclass
class DLFParams(ModelParams):
    # Their DLF_default + main_run.py: 3 layers, rank 24, MLPs 2 layers of 512 (one hidden layer, then the
    # output Linear), 32 tokens per block (main_run.py sets 32; model_config.yaml says 16).
    attention: str = "none"          # none: DLF; cross: DLF_att_cross; self: DLF_att_self (docs/models.md)
    num_layers: int = 3              # their attention_layers
    lcb_tokens: int = 32             # num_emb_lcb
    fmb_tokens: int = 32             # num_emb_fmb (FMB and RLI each make this many)
    attention_tokens: int = 32       # num_emb_att, attention "cross" only ("self" makes one per field)
    rank: int = 24                   # rank_fmb
    num_heads: int = 2
    block_hidden_units: list[int] = field(default_factory=lambda: [512])    # num_hidden_DLF 2, dim_hidden_DLF 512
    head_hidden_units: list[int] = field(default_factory=lambda: [512])     # num_hidden_head 2, dim_hidden_head 512

    def check(self, require) -> None:
        require(self.attention in ATTENTION, "attention", f"must be one of {', '.join(ATTENTION)}")
        for key in ("num_layers", "lcb_tokens", "fmb_tokens", "attention_tokens", "rank", "num_heads"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        check_widths(require, self, "block_hidden_units", "head_hidden_units")

    def check_with_shared(self, shared, require) -> None:
        if self.attention != "none":
            require(shared.embedding_dim % self.num_heads == 0, "num_heads",
                    f"must divide model.embedding_dim ({shared.embedding_dim}) when attention is {self.attention!r}")


@register("DLF", DLFParams)
class DLF(CTRModel):
    def __init__(self, params: DLFParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.dim = dim = cfg.embedding_dim
        self.embedding = parts.tables({"embedding": dim})
        self.stack = DLFStack(parts.num_fields, dim, params.num_layers, params.lcb_tokens, params.fmb_tokens,
                              params.attention, params.attention_tokens, params.rank, params.num_heads,
                              params.block_hidden_units, cfg.batch_norm, cfg.net_dropout)
        self.body_dim = self.stack.output_dim
        self.head = MLPBlock(self.body_dim, params.head_hidden_units, cfg.batch_norm, cfg.net_dropout, output_dim=1)
        reset_linear_layers_(self)

    def body(self, x: ModelInput) -> Tensor:
        """The representation the logit layer reads: [B, body_dim]."""
        (emb,) = self.embedding(x)
        return self.stack(by_field(emb, self.dim))

    def logit(self, x: ModelInput) -> Tensor:
        return self.head(self.body(x)).squeeze(-1)
