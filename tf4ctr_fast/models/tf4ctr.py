"""TF4CTR (TF4CTRv2) built from parts: SSEM -> (simple encoder, complex encoder) -> auxiliary logits z_s,
z_c, DFM fusion, loss (REFERENCE.md "Model"). Plain `TF4CTR` has MLP encoders; the plug-in presets put a
library model's body on the simple side (REFERENCE.md "TF4CTR as a plug-in", docs/models.md). TwinModel
is also DualMLP's network (models/dualmlp.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor

from ..features import ModelInput
from ..layers.init import xavier_linear
from ..layers.shallow import LogisticRegression
from ..layers.ssem import SSEM_NAMES, build_ssem
from ..losses import CTRLoss
from ..reference.dfm import DFM_NAMES, VF, build_dfm
from ..reference.loss import total_loss
from ..reference.twin_head import reference_head
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .encoders import EncoderInput, TwinEncoder, encoder_names, encoder_spec
from .registry import register

logger = logging.getLogger(__name__)

SIDES = ("simple", "complex")
WIDE_KIND = "lr_wide"  # the table kind of the wide logit's first-order weights


def _mlp_spec() -> dict[str, Any]:
    return {"name": "MLP"}


@dataclass
class TwinEncoderParams(ModelParams):
    mlp_s_hidden: list[int] = field(default_factory=lambda: [400, 400])
    mlp_c_hidden: list[int] = field(default_factory=lambda: [400, 400, 400])
    # {name: MLP | LR | FM | CIN | a registered encoder, <its keys>} (models/encoders.py)
    simple_encoder: dict[str, Any] = field(default_factory=_mlp_spec)
    complex_encoder: dict[str, Any] = field(default_factory=_mlp_spec)

    def check(self, require) -> None:
        check_widths(require, self, "mlp_s_hidden", "mlp_c_hidden")
        names = ", ".join(encoder_names())
        for side in SIDES:
            key = f"{side}_encoder"
            spec = getattr(self, key)
            require(spec.get("name") in encoder_names(), key, f"'name' must be one of {names}")
            if spec.get("name") in encoder_names():
                encoder_spec(spec, key)  # the encoder's own keys: InputError naming model.params.<key>.<k>

    def encoders(self) -> dict[str, tuple[type[TwinEncoder], Any]]:
        """side -> (encoder class, its parameters)."""
        return {side: encoder_spec(getattr(self, f"{side}_encoder"), f"{side}_encoder") for side in SIDES}


@dataclass
class TF4CTRParams(TwinEncoderParams):
    ssem: str = "SER"              # "SER" | "GM" | "MoE" | "share"
    dfm: str = "WSF"               # "WSF" | "VF" | "CF" | "MoEF" | "sum"
    # Defaults: the published Criteo_x4 settings (REFERENCE.md).
    alpha: float = 0.35
    c: float = 0.9
    gamma: float = 1.0
    vf_tau: float = 0.8
    # A bias-free LR logit over the raw ids added to the fused logit only, not to z_s, z_c (the authors'
    # xDeepFM plug-in).
    wide_logit: bool = False

    def check(self, require) -> None:
        super().check(require)
        require(self.ssem in SSEM_NAMES, "ssem", f"must be one of {', '.join(SSEM_NAMES)}")
        require(self.dfm in DFM_NAMES, "dfm", f"must be one of {', '.join(DFM_NAMES)}")
        require(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]")
        # c in [0, 1] keeps both focus bases, c + p_t and (2 - c) - p_t, non-negative.
        require(0 <= self.c <= 1, "c", "must be in [0, 1]")
        require(self.gamma >= 0, "gamma", "must be >= 0")
        require(self.vf_tau > 0, "vf_tau", "must be > 0")
        if all(getattr(self, f"{side}_encoder").get("name") in encoder_names() for side in SIDES):
            blind = any(not cls.reads_embedding for cls, _ in self.encoders().values())
            # SER's and MoE's tables / experts for a side nobody reads would train nothing.
            require(not blind or self.ssem in ("share", "GM"), "ssem",
                    "must be share or GM when an encoder reads no embedding (LR)")


class TwinModel(CTRModel):
    """SSEM -> (encoder_s, encoder_c) -> head: auxiliary logits z_s = Linear(h_s), z_c = Linear(h_c), DFM
    fusion (+ the wide logit), loss. model.head picks the head: "reference" (op by op) or "fused"
    (tf4ctr_fast.ops.twin_head, one op), which serves the DFMs but VF, the losses bce and twin_focus, and
    no wide logit; anything else runs op by op and says so once in the log (`use_loss`).

    The encoders' own tables (LR / FM first-order weights, kind lr_simple / lr_complex) and the wide
    logit's (lr_wide) are looked up with the SSEM's: one set of tables per model."""

    twin = True

    def __init__(self, parts: ModelParts, encoders: TwinEncoderParams, ssem: str, dfm: str, vf_tau: float,
                 alpha: float, c: float, gamma: float, wide_logit: bool = False):
        super().__init__()
        cfg = parts.shared
        specs = encoders.encoders()
        # Each encoder's table kinds, renamed per side (an FM on both sides has two first-order tables).
        self.table_kinds = {side: {kind: f"{kind}_{side}" for kind in cls.table_kinds}
                            for side, (cls, _) in specs.items()}
        extra = {name: specs[side][0].table_kinds[kind]
                 for side, kinds in self.table_kinds.items() for kind, name in kinds.items()}
        if wide_logit:
            extra[WIDE_KIND] = 1
        self.extra_kinds = list(extra)
        self.ssem = build_ssem(ssem, parts.fields.vocab_sizes, cfg.embedding_dim, cfg.batch_norm, cfg.net_dropout,
                               parts.fields.bags, parts.tables, extra)
        widths = dict(zip(SIDES, self.ssem.output_dims[:2]))
        hidden = {"simple": encoders.mlp_s_hidden, "complex": encoders.mlp_c_hidden}
        self.encoder_names = {}
        for side, suffix in zip(SIDES, ("s", "c")):
            cls, params = specs[side]
            inp = EncoderInput(widths[side], parts.num_fields, tuple(hidden[side]), cfg.batch_norm, cfg.net_dropout)
            self.encoder_names[side] = f"{cls.prefix}_{suffix}"
            self.add_module(self.encoder_names[side], cls(params, inp))
        hs_dim, hc_dim = self.encoder("simple").output_dim, self.encoder("complex").output_dim
        self.head_s = xavier_linear(hs_dim, 1)
        self.head_c = xavier_linear(hc_dim, 1)
        self.dfm = build_dfm(dfm, hs_dim, hc_dim, vf_tau)
        self.wide = LogisticRegression(use_bias=False) if wide_logit else None
        self.alpha, self.c, self.gamma = alpha, c, gamma
        self.head_kind = cfg.head
        self.fused_head = False

    def encoder(self, side: str) -> TwinEncoder:
        return getattr(self, self.encoder_names[side])

    def use_loss(self, loss: CTRLoss) -> None:
        super().use_loss(loss)
        reason = self.not_fused_because()
        self.fused_head = self.head_kind == "fused" and reason is None
        if self.head_kind == "fused" and reason is not None:
            logger.info("model %s: %s; its head runs op by op (model.head fused is ignored)", self.name, reason)

    def not_fused_because(self) -> Optional[str]:
        """Why the fused head cannot serve this model, or None."""
        if self.ctr_loss.name not in ("bce", "twin_focus"):
            return f"the fused head computes bce / twin_focus, not model.loss {self.ctr_loss.name}"
        if self.wide is not None:
            return "the fused head has no input for the wide logit"
        if isinstance(self.dfm, VF):
            return "VF samples Gumbel noise in training, which the fused head does not"
        return None

    def encode(self, x: ModelInput) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(h_s, h_c, the wide logit [B] or None)."""
        e_s, e_c, *extras = self.ssem(x)
        looked_up = dict(zip(self.extra_kinds, extras))
        h = [self.encoder(side)(e, {kind: looked_up[name] for kind, name in self.table_kinds[side].items()})
             for side, e in zip(SIDES, (e_s, e_c))]
        wide = self.wide(looked_up[WIDE_KIND]).squeeze(-1) if self.wide is not None else None
        return h[0], h[1], wide

    def head(self, h_s: Tensor, h_c: Tensor, y: Optional[Tensor] = None,
             wide: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Everything after the encoders: {"logit", "z_s", "z_c"}, plus "loss" when labels are given."""
        twin_focus = self.ctr_loss.twin
        if self.fused_head:
            from ..ops import fused_head_from_modules  # lazy: loads the compiled kernels

            return fused_head_from_modules(h_s, h_c, self.head_s, self.head_c, self.dfm, y,
                                           self.alpha, self.c, self.gamma, twin_focus=twin_focus)
        out = reference_head(h_s, h_c, self.head_s, self.head_c, self.dfm, None, self.alpha, self.c, self.gamma)
        if wide is not None:
            out["logit"] = out["logit"] + wide
        if y is not None:
            out["loss"] = (total_loss(out["logit"], out["z_s"], out["z_c"], y, self.alpha, self.c, self.gamma)
                           if twin_focus else self.ctr_loss(out["logit"], y))
        return out

    def forward(self, x: ModelInput, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        h_s, h_c, wide = self.encode(x)
        # head(h_s, h_c, y) is the replaceable head's contract; only a model with a wide logit adds it.
        return self.head(h_s, h_c, y) if wide is None else self.head(h_s, h_c, y, wide=wide)


@register("TF4CTR", TF4CTRParams)
class TF4CTR(TwinModel):
    """The SSEM, encoders and DFM of the config, trained with the Twin Focus loss."""

    default_loss, twin = "twin_focus", True

    def __init__(self, params: TF4CTRParams, parts: ModelParts):
        super().__init__(parts, params, params.ssem, params.dfm, params.vf_tau,
                         params.alpha, params.c, params.gamma, wide_logit=params.wide_logit)


# The authors' plug-ins (REFERENCE.md "TF4CTR as a plug-in"): TF4CTR with other defaults, no code of
# their own. Every key of TF4CTR applies; docs/models.md says where we differ from their code.

@dataclass
class TF4CTRDeepFMParams(TF4CTRParams):
    simple_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "FM"})


@dataclass
class TF4CTRWideDeepParams(TF4CTRParams):
    # Their code has no SSEM here (one embedding of dim d, LR on the ids): share is that.
    ssem: str = "share"
    simple_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "LR"})


@dataclass
class TF4CTRxDeepFMParams(TF4CTRParams):  # noqa: N801  (the model's name)
    simple_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "CIN"})
    wide_logit: bool = True


@register("TF4CTR-DeepFM", TF4CTRDeepFMParams)
class TF4CTRDeepFM(TF4CTR):
    """Simple = FM (first-order weights + per-sample pair term on the easy embedding), complex = MLP."""


@register("TF4CTR-WideDeep", TF4CTRWideDeepParams)
class TF4CTRWideDeep(TF4CTR):
    """Simple = LR over the raw ids, complex = MLP over the one shared embedding."""


@register("TF4CTR-xDeepFM", TF4CTRxDeepFMParams)
class TF4CTRxDeepFM(TF4CTR):  # noqa: N801
    """Simple = CIN on the easy embedding, complex = MLP, + a bias-free LR logit on the fused logit."""


@dataclass
class TF4CTRDLFParams(TF4CTRParams):
    complex_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "DLF"})


@register("TF4CTR-DLF", TF4CTRDLFParams)
class TF4CTRDLF(TF4CTR):
    """Simple = MLP on the easy embedding, complex = DLF's network on the hard one (a combination
    neither paper has: issue "DLF")."""
