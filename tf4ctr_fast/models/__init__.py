"""The engine's models: the reference TF4CTR with its SSEM on TorchRec/FBGEMM tables."""
from .engine import (BACKENDS, EngineTwinModel, build_engine_model, engine_to_reference_state_dict,
                     reference_to_engine_state_dict)

__all__ = ["BACKENDS", "EngineTwinModel", "build_engine_model", "engine_to_reference_state_dict",
           "reference_to_engine_state_dict"]
