"""TF4CTR (TF4CTRv2): SSEM -> (MLP_s, MLP_c) -> auxiliary logits z_s, z_c, DFM fusion, BCE + Twin Focus
loss (REFERENCE.md "Model"). TwinModel is also DualMLP's network (models/dualmlp.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from ..features import ModelInput
from ..layers.init import xavier_linear
from ..layers.mlp import MLPBlock
from ..layers.ssem import SSEM_NAMES, build_ssem
from ..reference.dfm import DFM_NAMES, build_dfm
from ..reference.twin_head import reference_head
from .base import CTRModel, ModelParams, ModelParts, check_widths
from .registry import register


@dataclass
class TwinEncoderParams(ModelParams):
    mlp_s_hidden: list[int] = field(default_factory=lambda: [400, 400])
    mlp_c_hidden: list[int] = field(default_factory=lambda: [400, 400, 400])

    def check(self, require) -> None:
        check_widths(require, self, "mlp_s_hidden", "mlp_c_hidden")


@dataclass
class TF4CTRParams(TwinEncoderParams):
    ssem: str = "SER"              # "SER" | "GM" | "MoE" | "share"
    dfm: str = "WSF"               # "WSF" | "VF" | "CF" | "MoEF" | "sum"
    # Defaults: the published Criteo_x4 settings (REFERENCE.md).
    alpha: float = 0.35
    c: float = 0.9
    gamma: float = 1.0
    vf_tau: float = 0.8

    def check(self, require) -> None:
        super().check(require)
        require(self.ssem in SSEM_NAMES, "ssem", f"must be one of {', '.join(SSEM_NAMES)}")
        require(self.dfm in DFM_NAMES, "dfm", f"must be one of {', '.join(DFM_NAMES)}")
        require(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]")
        # c in [0, 1] keeps both focus bases, c + p_t and (2 - c) - p_t, non-negative.
        require(0 <= self.c <= 1, "c", "must be in [0, 1]")
        require(self.gamma >= 0, "gamma", "must be >= 0")
        require(self.vf_tau > 0, "vf_tau", "must be > 0")


class TwinModel(CTRModel):
    """SSEM -> (MLP_s, MLP_c) -> head: auxiliary logits z_s, z_c, DFM fusion, loss. model.head picks the
    head: "reference" (op by op) or "fused" (tf4ctr_fast.ops.twin_head, one op)."""

    def __init__(self, parts: ModelParts, encoders: TwinEncoderParams, ssem: str, dfm: str, vf_tau: float,
                 alpha: float, c: float, gamma: float):
        super().__init__()
        cfg = parts.shared
        self.ssem = build_ssem(ssem, parts.fields.vocab_sizes, cfg.embedding_dim, cfg.batch_norm, cfg.net_dropout,
                               parts.fields.bags, parts.tables)
        simple_dim, complex_dim = self.ssem.output_dims
        self.mlp_s = MLPBlock(simple_dim, encoders.mlp_s_hidden, cfg.batch_norm, cfg.net_dropout)
        self.mlp_c = MLPBlock(complex_dim, encoders.mlp_c_hidden, cfg.batch_norm, cfg.net_dropout)
        self.head_s = xavier_linear(self.mlp_s.output_dim, 1)
        self.head_c = xavier_linear(self.mlp_c.output_dim, 1)
        self.dfm = build_dfm(dfm, self.mlp_s.output_dim, self.mlp_c.output_dim, vf_tau)
        self.alpha, self.c, self.gamma = alpha, c, gamma
        self.fused_head = cfg.head == "fused"

    def encode(self, x: ModelInput) -> tuple[Tensor, Tensor]:
        e_s, e_c = self.ssem(x)
        return self.mlp_s(e_s), self.mlp_c(e_c)

    def head(self, h_s: Tensor, h_c: Tensor, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Everything after the encoders: {"logit", "z_s", "z_c"}, plus "loss" when labels are given."""
        twin_focus = self.ctr_loss.twin
        if self.ctr_loss.name not in ("bce", "twin_focus"):  # the head's ops know BCE on z (+ Twin Focus)
            out = reference_head(h_s, h_c, self.head_s, self.head_c, self.dfm, None, self.alpha, self.c, self.gamma)
            if y is not None:
                out["loss"] = self.ctr_loss(out["logit"], y)
            return out
        if self.fused_head:
            from ..ops import fused_head_from_modules  # lazy: loads the compiled kernels

            return fused_head_from_modules(h_s, h_c, self.head_s, self.head_c, self.dfm, y,
                                           self.alpha, self.c, self.gamma, twin_focus=twin_focus)
        return reference_head(h_s, h_c, self.head_s, self.head_c, self.dfm, y,
                              self.alpha, self.c, self.gamma, twin_focus=twin_focus)

    def forward(self, x: ModelInput, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        return self.head(*self.encode(x), y=y)


@register("TF4CTR", TF4CTRParams)
class TF4CTR(TwinModel):
    """The SSEM and DFM of the config, trained with the Twin Focus loss."""

    default_loss, twin = "twin_focus", True

    def __init__(self, params: TF4CTRParams, parts: ModelParts):
        super().__init__(parts, params, params.ssem, params.dfm, params.vf_tau,
                         params.alpha, params.c, params.gamma)
