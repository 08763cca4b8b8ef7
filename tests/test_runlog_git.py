"""A run's git_dirty: an untracked source file changes what the commit id describes, an untracked run
folder or note elsewhere in the tree does not (runs write into the tree)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from tf4ctr_fast.train import runlog

ROOT = Path(runlog.__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(runlog._git("rev-parse", "HEAD") is None, reason="not a git checkout")


@pytest.mark.parametrize("where, counts", [("tf4ctr_fast", True), ("kernels", True), ("configs", True),
                                           ("docs/runs", False), (".", False)])
def test_untracked_files_count_only_under_the_code(where, counts):
    probe = ROOT / where / f"untracked_probe_{uuid.uuid4().hex}.txt"
    if not probe.parent.is_dir():
        pytest.skip(f"{where} is not in this checkout")
    probe.write_text("x")
    try:
        listed = probe.name in (runlog._uncommitted() or "")
        assert listed == counts
        if counts:
            assert runlog.environment(torch.device("cpu"))["git_dirty"] is True
    finally:
        probe.unlink()
