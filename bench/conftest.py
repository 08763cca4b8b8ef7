"""Benchmark-session setup: the `--bench-size` option, the `env` fixture (device, sizes and the
measured ceilings every figure is put beside), the sweeps that depend on the size, and the machine
record that goes into the pytest-benchmark JSON as machine_info["tf4ctr_fast"].

    pytest bench/ --benchmark-only [--bench-size small|medium|full] [--bench-threads N]
                                   [--benchmark-json out.json]

See docs/benchmarks.md. The README's test command (`python -m pytest -q tests`) and a bare `pytest`
(pytest.ini: testpaths = tests) never collect this folder.
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
from datetime import date
from pathlib import Path
from typing import Optional

import pytest
import torch

from harness import SIZES, Env, cpu_model, pick_device

_session_env: Optional[Env] = None   # set by the `env` fixture, read by the machine-info hook


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=list(SIZES), default=None,
                     help="benchmark sizes (bench/harness.py SIZES); default: full on CUDA, small on CPU")
    parser.addoption("--bench-threads", type=int, default=0,
                     help="torch CPU threads (default: torch's own choice, all cores); use 1 on a machine "
                          "that other jobs keep busy")


def unused_path(path: Path) -> Path:
    """`path`, or the first free `<stem>-2<suffix>`, `-3`, ...: a run never replaces the JSON of an
    earlier run of the same day (pytest-benchmark would overwrite it)."""
    candidate, n = path, 2
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    return candidate


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads --benchmark-json
def pytest_configure(config):
    if getattr(config.option, "benchmark_json", "absent") is None:
        # The suite always leaves its JSON (every raw timing + machine record), named by device and date.
        kind = torch.cuda.get_device_name(0).split()[-1].lower() if torch.cuda.is_available() else "cpu"
        config.option.benchmark_json = unused_path(Path(__file__).parent / "results" / f"{kind}-{date.today()}.json")
    threads = config.getoption("--bench-threads", 0)
    if threads > 0:
        torch.set_num_threads(threads)
    # TorchRec's own modules still use it; nothing here does.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated")


def pytest_report_header(config):
    from tf4ctr_fast.train.trainer import oversubscription   # the trainer's rule, one definition

    load, cores, threads = os.getloadavg()[0], os.cpu_count() or 1, torch.get_num_threads()
    line = f"tf4ctr_fast bench: torch threads {threads}, load average {load:.1f} on {cores} cores"
    warning = oversubscription(threads, load, cores)
    if warning:
        line += f"\nWARNING: {warning}; CPU timings will be erratic: consider --bench-threads 1"
    return line


def _sizes(config):
    name = config.getoption("--bench-size") or ("full" if torch.cuda.is_available() else "small")
    return SIZES[name]


def _vocab_id(vocab: int) -> str:
    """100000 -> vocab100k, 5500000 -> vocab5.5M"""
    value, unit = (vocab / 1e6, "M") if vocab >= 1e6 else (vocab / 1e3, "k")
    return f"vocab{value:g}{unit}"


def pytest_generate_tests(metafunc):
    """Sweeps that depend on --bench-size; module scope, so that a module fixture can build a case
    once for all of its paths."""
    sizes = _sizes(metafunc.config)
    if "vocab" in metafunc.fixturenames:
        metafunc.parametrize("vocab", sizes.vocabs, ids=_vocab_id, scope="module")
    if "infer_batch" in metafunc.fixturenames:
        metafunc.parametrize("infer_batch", sizes.infer_batches, ids=lambda b: f"B{b}", scope="module")


@pytest.fixture(scope="session")
def env(request) -> Env:
    global _session_env
    _session_env = Env.measure(pick_device(), _sizes(request.config))
    return _session_env


def _version(module: str) -> Optional[str]:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except ImportError:
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "triton", "fbgemm_gpu", "torchrec", "numpy")},
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    driver=subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          capture_output=True, text=True).stdout.strip())
    if _session_env is not None:
        info.update(_session_env.as_dict())
    machine_info["tf4ctr_fast"] = info
