"""The run log: one JSON object per line, flushed after every record.

The first record ("params") holds everything needed to reproduce the run: the full config, a
summary of the prepared data and the software/hardware environment. Then one "epoch" record per
epoch and a final "result". A crash keeps every record written so far; a log without a "result"
line is an unfinished run. Non-finite floats are written as null so the file is strict JSON.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python, paths -> str, nan/inf -> None, recursively.

    A float32 (or float16) is written as the shortest text that reads back as the same float32:
    0.01, not the float64 it widens to (0.009999999776482582)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype in (np.float16, np.float32):   # element by element, as numpy scalars
            return to_jsonable(list(value) if value.ndim else value[()])
        return to_jsonable(value.tolist())
    if isinstance(value, (np.float16, np.float32)):
        value = float(str(value))   # numpy prints the shortest round-tripping digits
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def _git(*args: str) -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


# Where an untracked file changes what a run computes. Untracked files elsewhere (run folders under
# docs/runs, data, notes) do not, and runs write into the tree, so they do not make a checkout dirty.
CODE_PATHS = (":/tf4ctr_fast", ":/kernels", ":/configs", ":/CMakeLists.txt", ":/setup.py")


def _uncommitted() -> Optional[str]:
    """git status lines of the changes a commit id does not describe: tracked files changed anywhere,
    untracked files under CODE_PATHS (ignored files, such as the built _C.so, are not listed)."""
    tracked = _git("status", "--porcelain", "--untracked-files=no")
    untracked = _git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
    if tracked is None or untracked is None:
        return None
    return "\n".join(line for line in (tracked + "\n" + untracked).splitlines() if line)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, platform, device and the git commit of the code (None outside a checkout)."""
    commit = _git("rev-parse", "HEAD")
    dirty = _uncommitted() if commit else None
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "num_threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


class RunLog:
    """Append-only JSON-lines writer; use as a context manager so the file is closed on errors.

    keep=None starts a new log (an existing file is replaced). keep=n continues an existing log after
    its first n records, dropping the rest: a resumed run keeps what its checkpoint accounts for and
    writes the records after it again, so none is lost or doubled. `records`: how many it now holds.
    """

    def __init__(self, path: str | os.PathLike, keep: Optional[int] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep is None:
            self._file = open(self.path, "w", encoding="utf-8")
            self.records = 0
            return
        _truncate_to_records(self.path, keep)
        self._file = open(self.path, "a", encoding="utf-8")
        self.records = keep

    def write(self, event: str, **fields: Any) -> None:
        record = to_jsonable({"event": event, **fields})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self.records += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _truncate_to_records(path: Path, keep: int) -> None:
    """Cut the log after its first `keep` lines (a line cut short by a kill counts as none)."""
    data = path.read_bytes() if path.is_file() else b""
    end = 0
    for _ in range(keep):
        newline = data.find(b"\n", end)
        if newline < 0:
            raise InputError(f"{path}: holds fewer than the {keep} records its checkpoint accounts for")
        end = newline + 1
    os.truncate(path, end)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run log, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
