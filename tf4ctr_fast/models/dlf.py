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
from ..errors import InputError
from .base import CTRModel, ModelParams, ModelParts, by_field, check_widths
from .encoders import EncoderInput, EncoderParams, TwinEncoder, register_encoder
from .registry import register

ATTENTION = ("none", "cross", "self")


@dataclass
class DLFStackKeys:
    """The keys of DLF's network (layers.dlf.DLFStack), shared by the DLF model and the DLF encoder of
    the twin models. Their DLF_default + main_run.py: 3 layers, rank 24, block MLPs 2 layers of 512
    (one hidden layer, then the output Linear), 32 tokens per block (main_run.py sets 32;
    model_config.yaml says 16)."""

    attention: str = "none"          # none: DLF; cross: DLF_att_cross; self: DLF_att_self (docs/models.md)
    num_layers: int = 3              # their attention_layers
    lcb_tokens: int = 32             # num_emb_lcb
    fmb_tokens: int = 32             # num_emb_fmb (FMB and RLI each make this many)
    attention_tokens: int = 32       # num_emb_att, attention "cross" only ("self" makes one per field)
    rank: int = 24                   # rank_fmb
    num_heads: int = 2
    block_hidden_units: list[int] = field(default_factory=lambda: [512])    # num_hidden_DLF 2, dim_hidden_DLF 512

    def check(self, require) -> None:
        require(self.attention in ATTENTION, "attention", f"must be one of {', '.join(ATTENTION)}")
        for key in ("num_layers", "lcb_tokens", "fmb_tokens", "attention_tokens", "rank", "num_heads"):
            require(getattr(self, key) >= 1, key, "must be at least 1")
        check_widths(require, self, "block_hidden_units")

    def check_token_dim(self, dim: int, where: str, require) -> None:
        if self.attention != "none":
            require(dim % self.num_heads == 0, "num_heads",
                    f"must divide {where} ({dim}) when attention is {self.attention!r}")

    def build(self, num_fields: int, dim: int, batch_norm: bool, dropout: float) -> DLFStack:
        return DLFStack(num_fields, dim, self.num_layers, self.lcb_tokens, self.fmb_tokens, self.attention,
                        self.attention_tokens, self.rank, self.num_heads, self.block_hidden_units,
                        batch_norm, dropout)


@dataclass
class DLFParams(DLFStackKeys, ModelParams):
    head_hidden_units: list[int] = field(default_factory=lambda: [512])     # num_hidden_head 2, dim_hidden_head 512

    def check(self, require) -> None:
        super().check(require)
        check_widths(require, self, "head_hidden_units")

    def check_with_shared(self, shared, require) -> None:
        self.check_token_dim(shared.embedding_dim, "model.embedding_dim", require)


@register("DLF", DLFParams)
class DLF(CTRModel):
    def __init__(self, params: DLFParams, parts: ModelParts):
        super().__init__()
        cfg = parts.shared
        self.dim = dim = cfg.embedding_dim
        self.embedding = parts.tables({"embedding": dim})
        self.stack = params.build(parts.num_fields, dim, cfg.batch_norm, cfg.net_dropout)
        self.body_dim = self.stack.output_dim
        self.head = MLPBlock(self.body_dim, params.head_hidden_units, cfg.batch_norm, cfg.net_dropout, output_dim=1)
        reset_linear_layers_(self)

    def body(self, x: ModelInput) -> Tensor:
        """The representation the logit layer reads: [B, body_dim]."""
        (emb,) = self.embedding(x)
        return self.stack(by_field(emb, self.dim))

    def logit(self, x: ModelInput) -> Tensor:
        return self.head(self.body(x)).squeeze(-1)


# ---- DLF's network as a twin model's encoder (TF4CTR-DLF: models/tf4ctr.py) --------------------

@dataclass
class DLFEncoderKeys(DLFStackKeys, EncoderParams):
    """`model.params.<side>_encoder: {name: DLF, ...}`: DLF's network keys (the side's SSEM embedding is
    its field tokens)."""


@register_encoder("DLF", DLFEncoderKeys)
class DLFEncoder(TwinEncoder):
    """DLF's network over the side's embedding read as F field tokens: the last layer's tokens
    flattened, [B, (2·fmb + lcb + att)·field_dim]."""

    prefix = "dlf"

    def __init__(self, params: DLFEncoderKeys, inp: EncoderInput):
        super().__init__()

        def require(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise InputError(f"config key 'model.params.simple_encoder' / 'complex_encoder' {{name: DLF}}, "
                                 f"key '{key}': {what}, got {getattr(params, key)!r}")

        params.check_token_dim(inp.field_dim, "the side's embedding dim per field", require)
        self.field_dim = inp.field_dim
        self.stack = params.build(inp.num_fields, inp.field_dim, inp.batch_norm, inp.dropout)
        self.output_dim = self.stack.output_dim

    def forward(self, e: Tensor, tables: dict[str, Tensor]) -> Tensor:
        return self.stack(by_field(e, self.field_dim))

