"""The op-by-op parity oracles of the fused ops: the CTR / Twin Focus losses, the DFM fusions and
TF4CTR's head exactly as the authors compute them (the models live in tf4ctr_fast.models)."""
from .loss import bce_prob, logloss, total_loss, twin_focus_loss
from .twin_head import reference_head

__all__ = ["bce_prob", "logloss", "reference_head", "total_loss", "twin_focus_loss"]
