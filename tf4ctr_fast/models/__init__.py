"""The model zoo: one file per model, each registered under its name with its own parameter dataclass
(docs/ARCHITECTURE.md "Model zoo"). `build_model` is the one factory training, evaluation and
checkpoint loading use."""
# Importing a model file registers the model (in this order: models.model_names()).
from . import (afn, autoint, dcn, dcnv2, deepfm, dlf, dnn, dualmlp, edcn, eulernet, finalmlp, fm,  # noqa: F401
               lr, tf4ctr, widedeep, xdeepfm)
from .base import CTRModel, ModelParams, ModelParts
from .registry import (build_model, check_model_config, model_class, model_names, register, resolve_params,
                       resolved_model_config)
from .state_dicts import copy_weights, engine_to_reference_state_dict, reference_to_engine_state_dict

__all__ = ["CTRModel", "ModelParams", "ModelParts", "build_model", "check_model_config", "copy_weights",
           "engine_to_reference_state_dict", "model_class", "model_names", "reference_to_engine_state_dict",
           "register", "resolve_params", "resolved_model_config"]
