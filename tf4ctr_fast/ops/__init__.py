"""Public fused ops and their dispatch: C++ on CPU (tf4ctr_fast/_C.so), Triton on CUDA, and the
reference PyTorch path anywhere the compiled library is missing.

The library is built by `pip install --no-build-isolation [-e] .` (setup.py -> CMakeLists.txt). A
checkout without it still imports: every op falls back to the reference path, and one warning says so.
TF4CTR_DISABLE_KERNELS=1 forces that fallback (to compare, or to rule the kernels out).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

_LIBRARY = Path(__file__).resolve().parents[1] / "_C.so"


def _load_kernels() -> bool:
    if os.environ.get("TF4CTR_DISABLE_KERNELS") == "1":
        warnings.warn("tf4ctr_fast: TF4CTR_DISABLE_KERNELS=1, fused ops run the reference PyTorch path",
                      RuntimeWarning, stacklevel=3)
        return False
    if not _LIBRARY.exists():
        warnings.warn(f"tf4ctr_fast: compiled kernels not found ({_LIBRARY}); fused ops run the slower "
                      "reference PyTorch path. Build them with `pip install --no-build-isolation -e .`",
                      RuntimeWarning, stacklevel=3)
        return False
    try:
        torch.ops.load_library(str(_LIBRARY))
    except (OSError, RuntimeError) as e:  # typically built against another torch: rebuild
        warnings.warn(f"tf4ctr_fast: could not load {_LIBRARY} ({e}); fused ops run the slower reference "
                      "PyTorch path. Rebuild with `pip install --no-build-isolation -e .`",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


# True when the custom ops (namespace torch.ops.tf4ctr_fast) are registered.
HAS_KERNELS: bool = _load_kernels()


def cpu_batch_norm_kernel_applies(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> bool:
    """A BatchNorm kernel (exp_batch_norm, batch_norm_relu) can stand in for `bn` on `x`: training with
    batch statistics, affine, running statistics with a momentum (not the cumulative average), on the
    CPU in float32. Anything else runs the op's reference twin."""
    return (HAS_KERNELS and bn.training and bn.affine and bn.track_running_stats and bn.momentum is not None
            and x.device.type == "cpu" and x.dtype == torch.float32 and bn.weight.dtype == torch.float32)


from .twin_head import (  # noqa: E402  (needs HAS_KERNELS)
    FUSIONS,
    fused_head_from_modules,
    fusion_params_from_module,
    twin_head,
)

__all__ = ["HAS_KERNELS", "FUSIONS", "twin_head", "fused_head_from_modules", "fusion_params_from_module"]
