#!/usr/bin/env python3
"""Create/reuse .venv and install tf4ctr_fast with a matching torch / FBGEMM / TorchRec set.

The three lock together (FBGEMM 1.X <-> torch 2.(X+5) <-> TorchRec 1.X). `pip install torchrec` would
pull the 500 MB CUDA fbgemm-gpu even on a CPU box, so TorchRec goes in with --no-deps plus its real
needs, and the FBGEMM package is chosen from the installed torch and the presence of CUDA.
Re-running is cheap: a stamp records what was installed for which inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TF4CTR_VENV", ROOT / ".venv"))
DEFAULT_TORCH = "2.13.0"
BASE_PACKAGES = ["numpy", "pyyaml", "tqdm", "matplotlib", "pytest", "pytest-benchmark", "triton"]
# TorchRec's runtime needs, minus fbgemm-gpu (chosen below); torchmetrics is pinned by torchrec itself.
TORCHREC_NEEDS = ["tensordict", "torchmetrics==1.0.3", "pyre-extensions", "iopath"]


def say(msg: str) -> None:
    print(f"[install] {msg}", flush=True)


def run(*args: str) -> None:
    say(" ".join(args))
    subprocess.run(args, check=True)


def venv_python() -> str:
    return str(VENV / "bin" / "python")


def installed_version(package: str) -> str | None:
    out = subprocess.run(
        [venv_python(), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
        capture_output=True, text=True)
    return out.stdout.strip() or None


def has_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def fbgemm_choice(torch_version: str, cuda: bool) -> tuple[str, str]:
    """(fbgemm package spec, torchrec spec) for a torch version, by the 2.(X+5) <-> 1.X lock."""
    major, minor = (int(p) for p in torch_version.split("+")[0].split(".")[:2])
    if major != 2 or minor < 10:
        raise SystemExit(f"[install] torch {torch_version} is older than what FBGEMM/TorchRec 1.5+ support")
    x = minor - 5
    fbgemm = f"fbgemm-gpu==1.{x}.*" if cuda else f"fbgemm-gpu-cpu==1.{x}.*"
    return fbgemm, f"torchrec==1.{x}.*"


def main() -> None:
    inputs = hashlib.sha256()
    for name in ("scripts/install.py", "setup.py", "CMakeLists.txt"):
        path = ROOT / name
        if path.exists():
            inputs.update(path.read_bytes())
    for src in sorted((ROOT / "kernels").glob("*")):
        if src.is_file():
            inputs.update(src.read_bytes())
    stamp = VENV / ".tf4ctr-installed.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("inputs") == inputs.hexdigest():
        say(f"reusing {VENV} ({json.loads(stamp.read_text())['chosen']})")
        return

    if not (VENV / "bin" / "python").exists():
        run(sys.executable, "-m", "venv", str(VENV))
    pip = [venv_python(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]

    torch_version = installed_version("torch")
    if torch_version is None:
        # On the CPU boxes this resolves to the local CPU wheel; on a CUDA box pip's default torch is CUDA.
        run(*pip, f"torch=={os.environ.get('TF4CTR_TORCH', DEFAULT_TORCH)}")
        torch_version = installed_version("torch")
    cuda = has_cuda_gpu()
    fbgemm, torchrec = fbgemm_choice(torch_version, cuda)
    say(f"chose torch {torch_version} ({'CUDA' if cuda else 'CPU'}) -> {fbgemm}, {torchrec} (--no-deps)")

    run(*pip, *BASE_PACKAGES, fbgemm, *TORCHREC_NEEDS)
    run(*pip, "--no-deps", torchrec)
    # --no-build-isolation: the C++ kernels build against the torch installed above, not a fresh one.
    run(*pip, "--no-build-isolation", "-e", str(ROOT))

    chosen = {p: installed_version(p) for p in
              ("torch", "fbgemm-gpu" if cuda else "fbgemm-gpu-cpu", "torchrec", "triton", "numpy")}
    say("installed: " + ", ".join(f"{k} {v}" for k, v in chosen.items()))
    stamp.write_text(json.dumps({"inputs": inputs.hexdigest(), "chosen": chosen}))


if __name__ == "__main__":
    main()
