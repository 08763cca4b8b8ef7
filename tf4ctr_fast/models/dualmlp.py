"""DualMLP: TF4CTR's network with shared embeddings, z = z_s + z_c and plain BCE (the paper's DualMLP
baseline; FinalMLP adds feature selection and a bilinear fusion, models/finalmlp.py)."""
from __future__ import annotations

from .base import ModelParts
from .registry import register
from .tf4ctr import TwinEncoderParams, TwinModel


@register("DualMLP", TwinEncoderParams)
class DualMLP(TwinModel):
    # Its loss is BCE on z only; it has no Twin Focus parameters, so twin_focus is refused (TF4CTR with
    # ssem share and dfm sum is DualMLP with the Twin Focus loss).
    default_loss, twin = "bce", False

    def __init__(self, params: TwinEncoderParams, parts: ModelParts):
        # Without the Twin Focus loss alpha, c, gamma and vf_tau are never read.
        super().__init__(parts, params, "share", "sum", vf_tau=1.0, alpha=0.0, c=0.0, gamma=0.0)
