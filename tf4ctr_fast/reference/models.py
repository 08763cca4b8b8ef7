"""Reference models behind the model contract of docs/ARCHITECTURE.md: TF4CTR (TF4CTRv2), DualMLP, DNN.

    model = build_model(model_cfg, vocab_sizes, bag_fields)
    model(x)               -> {"logit" [B]} (+ "z_s", "z_c" for twin models)
    model.loss(x, y)       -> {"loss": CTR loss (+ Twin Focus loss), "logit"}; no regularizer
where x is ids [B, F], or tf4ctr_fast.features.Features(ids, bags) when the model has multi-valued
fields (bag_fields)
    model.regularization() -> (emb_reg / 2) * sum of squared norms of all embedding tables
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import InputError
from ..features import BagField, ModelInput
from .dfm import build_dfm
from .layers import FieldEmbeddings, MLPBlock, embedding_l2, xavier_linear
from .loss import logloss, total_loss
from .ssem import build_ssem

MODEL_NAMES = ("TF4CTR", "DualMLP", "DNN")
HEAD_NAMES = ("reference", "fused")


def reference_head(h_s: Tensor, h_c: Tensor, head_s: nn.Linear, head_c: nn.Linear, dfm: nn.Module,
                   y: Optional[Tensor], alpha: float, c: float, gamma: float,
                   twin_focus: bool = True) -> dict[str, Tensor]:
    """Auxiliary logits z_s, z_c, DFM fusion and (with labels) the loss, op by op: the fused head's
    parity target."""
    z_s = head_s(h_s).squeeze(-1)
    z_c = head_c(h_c).squeeze(-1)
    out = {"logit": dfm(h_s, h_c, z_s, z_c), "z_s": z_s, "z_c": z_c}
    if y is not None:
        out["loss"] = total_loss(out["logit"], z_s, z_c, y, alpha, c, gamma, twin_focus=twin_focus)
    return out


class TwinModel(nn.Module):
    """SSEM -> (MLP_s, MLP_c) -> head: auxiliary logits z_s, z_c, DFM fusion, loss.

    TF4CTR takes its SSEM and DFM from the config and trains with the Twin Focus loss; DualMLP is the
    same network with shared embeddings, z = z_s + z_c and plain BCE.
    """

    def __init__(self, cfg: ModelConfig, vocab_sizes: Sequence[int], ssem: str, dfm: str, twin_focus: bool,
                 bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.ssem = build_ssem(ssem, vocab_sizes, cfg.embedding_dim, cfg.batch_norm, cfg.net_dropout, bag_fields)
        self.mlp_s = MLPBlock(self.ssem.simple_dim, cfg.mlp_s_hidden, cfg.batch_norm, cfg.net_dropout)
        self.mlp_c = MLPBlock(self.ssem.complex_dim, cfg.mlp_c_hidden, cfg.batch_norm, cfg.net_dropout)
        self.head_s = xavier_linear(self.mlp_s.output_dim, 1)
        self.head_c = xavier_linear(self.mlp_c.output_dim, 1)
        self.dfm = build_dfm(dfm, self.mlp_s.output_dim, self.mlp_c.output_dim, cfg.vf_tau)
        self.twin_focus = twin_focus
        self.alpha, self.c, self.gamma = cfg.alpha, cfg.c, cfg.gamma
        self.emb_reg = cfg.emb_reg
        self.fused_head = cfg.head == "fused"

    def encode(self, x: ModelInput) -> tuple[Tensor, Tensor]:
        e_s, e_c = self.ssem(x)
        return self.mlp_s(e_s), self.mlp_c(e_c)

    def head(self, h_s: Tensor, h_c: Tensor, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Everything after the encoders: {"logit", "z_s", "z_c"}, plus "loss" when labels are given.
        model.head == "fused" runs it as one fused op (tf4ctr_fast.ops.twin_head)."""
        if self.fused_head:
            from ..ops import fused_head_from_modules  # lazy: ops imports this package

            return fused_head_from_modules(h_s, h_c, self.head_s, self.head_c, self.dfm, y,
                                           self.alpha, self.c, self.gamma, twin_focus=self.twin_focus)
        return reference_head(h_s, h_c, self.head_s, self.head_c, self.dfm, y,
                              self.alpha, self.c, self.gamma, twin_focus=self.twin_focus)

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        return self.head(*self.encode(x))

    def loss(self, x: ModelInput, y: Tensor) -> dict[str, Tensor]:
        out = self.head(*self.encode(x), y=y)
        return {"loss": out["loss"], "logit": out["logit"]}

    def regularization(self) -> Tensor:
        return embedding_l2(self.ssem.embedding_tables(), self.emb_reg)


class DNN(nn.Module):
    """Embeddings -> MLP -> Linear(1), plain BCE."""

    def __init__(self, cfg: ModelConfig, vocab_sizes: Sequence[int], bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.embedding = FieldEmbeddings(vocab_sizes, cfg.embedding_dim, bag_fields)
        self.mlp = MLPBlock(self.embedding.output_dim, cfg.dnn_hidden, cfg.batch_norm, cfg.net_dropout)
        self.out = xavier_linear(self.mlp.output_dim, 1)
        self.emb_reg = cfg.emb_reg

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        return {"logit": self.out(self.mlp(self.embedding(x))).squeeze(-1)}

    def loss(self, x: ModelInput, y: Tensor) -> dict[str, Tensor]:
        logit = self(x)["logit"]
        return {"loss": logloss(logit, y), "logit": logit}

    def regularization(self) -> Tensor:
        return embedding_l2(self.embedding.weights(), self.emb_reg)


def check_model_config(cfg: ModelConfig) -> None:
    """Range checks the dataclass types cannot express; each error names its config key."""

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise InputError(f"config key 'model.{key}': {what}, got {getattr(cfg, key)!r}")

    require(cfg.embedding_dim >= 1, "embedding_dim", "must be at least 1")
    for key in ("mlp_s_hidden", "mlp_c_hidden", "dnn_hidden"):
        require(all(units >= 1 for units in getattr(cfg, key)), key, "every hidden width must be at least 1")
    require(0 <= cfg.net_dropout < 1, "net_dropout", "must be in [0, 1)")
    require(cfg.emb_reg >= 0, "emb_reg", "must be >= 0")
    require(0 <= cfg.alpha <= 1, "alpha", "must be in [0, 1]")
    # c in [0, 1] keeps both focus bases, c + p_t and (2 - c) - p_t, non-negative.
    require(0 <= cfg.c <= 1, "c", "must be in [0, 1]")
    require(cfg.gamma >= 0, "gamma", "must be >= 0")
    require(cfg.vf_tau > 0, "vf_tau", "must be > 0")
    require(cfg.head in HEAD_NAMES, "head", f"must be one of {', '.join(HEAD_NAMES)}")


def build_model(model_cfg: ModelConfig, vocab_sizes: list[int], bag_fields: Sequence[BagField] = ()) -> nn.Module:
    """The model named by model_cfg.name over fields with these vocabulary sizes, on plain nn.Embedding
    tables. model.head picks the twin models' head: "reference" (op by op) or "fused" (one op; DNN has
    no twin head). DualMLP ignores model.ssem / model.dfm (shared embeddings + sum fusion by definition).
    bag_fields: the multi-valued fields, pooled by nn.EmbeddingBag after the single-valued ones."""
    check_model_config(model_cfg)
    name = model_cfg.name
    if name == "TF4CTR":
        return TwinModel(model_cfg, vocab_sizes, model_cfg.ssem, model_cfg.dfm, twin_focus=True, bag_fields=bag_fields)
    if name == "DualMLP":
        return TwinModel(model_cfg, vocab_sizes, "share", "sum", twin_focus=False, bag_fields=bag_fields)
    if name == "DNN":
        return DNN(model_cfg, vocab_sizes, bag_fields)
    raise InputError(f"config key 'model.name': unknown model {name!r} (known: {', '.join(MODEL_NAMES)})")
