"""train.precision: the arithmetic of the forward pass.

  fp32  everything in float32 (the reference's, and the default until the accuracy check of docs/
        benchmarks.md "bf16" has run on Frappe: issue "Train 3x faster")
  bf16  the forward under torch.autocast(bfloat16): the encoders' matmuls (and whatever else autocast
        lists) in bf16; the master weights, Adam's state, the embedding tables, the loss
        (reference/loss.py takes it in float32) and the metrics stay float32
  auto  bf16 where the device runs it fast (a CPU with AVX512-BF16 or AMX, a CUDA GPU of compute
        capability 8.0 or more), else fp32

The choice is printed at the start of a run and logged in its first record.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import InputError

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's fast-bf16 features among avx512_bf16 and amx_bf16 (Linux /proc/cpuinfo flags)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def resolve_precision(name: str, device: torch.device, cpuinfo: str | None = None) -> tuple[str, str]:
    """(fp32 | bf16, why) for train.precision `name` on `device`."""
    if name not in PRECISIONS:
        raise InputError(f"config key 'train.precision': {name!r} is not one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        fast, what = major >= 8, f"CUDA compute capability {major}.{minor}"
    else:
        flags = cpu_bf16_flags(cpuinfo)
        fast, what = bool(flags), f"CPU with {', '.join(flags)}" if flags else "CPU without AVX512-BF16 or AMX"
    if name == "auto":
        return ("bf16" if fast else "fp32"), f"auto: {what}"
    if name == "bf16" and not fast:
        return "bf16", f"as set, though slow here ({what}: bf16 is emulated)"
    return name, "as set"


def autocast(precision: str, device: torch.device):
    """The forward's context: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
