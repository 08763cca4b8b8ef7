"""Benchmark-session setup: the versions and device every result is tied to, recorded in the
pytest-benchmark JSON (`--benchmark-json` / `--benchmark-autosave`) as machine_info."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "commit": _commit()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    else:
        info["device"] = "cpu"
    machine_info["tf4ctr_fast"] = info
