"""The paper-faithful plain-PyTorch TF4CTR and baselines: the parity and speed baseline of the engine."""
from .loss import bce_prob, logloss, total_loss, twin_focus_loss
from .models import DNN, TwinModel, build_model

__all__ = ["DNN", "TwinModel", "bce_prob", "build_model", "logloss", "total_loss", "twin_focus_loss"]
