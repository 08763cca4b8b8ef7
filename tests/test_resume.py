"""Never lose a run: a killed run resumes bitwise exactly, SIGTERM stops like Ctrl-C with a resumable
checkpoint, a diverged run stops keeping its last good checkpoint (docs/runs.md).

The runs here go through the CLI in subprocesses (one process per run, one thread), so that a kill is a
real SIGKILL / SIGTERM and an uninterrupted run is the exact reference."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

import tf4ctr_fast  # noqa: E402
from tf4ctr_fast.cli import main  # noqa: E402
from tf4ctr_fast.train.checkpoint import read_checkpoint  # noqa: E402
from tf4ctr_fast.train.runlog import read_log  # noqa: E402

STEPS_PER_EPOCH = 100       # 4000 train rows / batch 40
CHECKPOINT_EVERY = 7
CONFIG = """\
dataset:
  name: resume_synth
  format: synthetic
  prepared_dir: {prepared}
  synthetic: {{rows: 5000, num_int_fields: 2, num_cat_fields: 4, int_vocab: 8, cat_vocab: 40}}
model:
  embedding_dim: 8
  mlp_s_hidden: [16]
  mlp_c_hidden: [16, 16]
  dnn_hidden: [16]
  net_dropout: 0.2
train:
  batch_size: 40
  eval_batch_size: 4096
  epochs: 3
  lr: 0.003
  device: cpu
  num_threads: 1
  progress: false
  checkpoint_every_steps: {every}
"""
# What differs between two runs of the same computation: timings and where the run lives.
TIMING_KEYS = {"train_time_s", "train_samples_per_s", "eval_time_s", "epoch_time_s", "wall_time_s",
               "out_dir", "checkpoint", "last_checkpoint_writes", "last_checkpoint_write_s",
               "last_checkpoint_share_of_train_time"}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    path = folder / "run.yaml"
    path.write_text(CONFIG.format(prepared=folder / "prepared", every=CHECKPOINT_EVERY))
    assert main(["prepare", "--config", str(path)]) == 0
    return path


def start_train(config: Path, out_dir: Path, *args: str) -> subprocess.Popen:
    """A run in a process of its own, to be killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(tf4ctr_fast.__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "tf4ctr_fast.cli", "train", "--config", str(config),
                             f"train.out_dir={out_dir}", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def position(last: Path) -> tuple[int, int]:
    run = read_checkpoint(last)["run"]       # torch.load(weights_only=True) inside
    return run["epoch"], run["step"]


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()[1][-2000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def at_least(last: Path, epoch: int, step: int):
    if not last.exists():
        return None
    return position(last) >= (epoch, step)


def epochs_logged(out: Path) -> int:
    log = out / "log.jsonl"
    return log.read_text().count('"event": "epoch"') if log.exists() else 0


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def assert_same_run(a: Path, b: Path) -> None:
    """The same weights, optimizer states, log records and results, bit for bit (timings aside)."""
    for name in ("best.pt", "last.pt"):
        pa, pb = read_checkpoint(a / name), read_checkpoint(b / name)
        assert pa["model_state"].keys() == pb["model_state"].keys()
        for key, value in pa["model_state"].items():
            assert torch.equal(value, pb["model_state"][key]), f"{name}: {key} differs"
        assert pa.get("sparse_optimizer_state", {}).keys() == pb.get("sparse_optimizer_state", {}).keys()
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert comparable(ra) == comparable(rb)
    epochs = [[comparable(r) for r in read_log(d / "log.jsonl") if r["event"] == "epoch"] for d in (a, b)]
    assert epochs[0] == epochs[1] and [r["epoch"] for r in epochs[0]] == [1, 2, 3]


@pytest.fixture(scope="module")
def reference_runs(config, tmp_path_factory):
    """The uninterrupted run of each backend (in this process: the runs are the same in any process
    with one thread)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    for backend in ("reference", "torchrec"):
        assert main(["train", "--config", str(config), f"train.out_dir={folder / backend}",
                     f"model.backend={backend}"]) == 0
    return {backend: folder / backend for backend in ("reference", "torchrec")}


@pytest.mark.parametrize("backend", ["reference", "torchrec"])
def test_run_killed_in_epoch_two_resumes_bitwise(config, reference_runs, tmp_path, backend):
    out = tmp_path / "run"
    target = int(np.random.default_rng().integers(1, STEPS_PER_EPOCH // 2))
    proc = start_train(config, out, f"model.backend={backend}")
    wait_for(lambda: at_least(out / "last.pt", 2, target), proc, f"epoch 2 step {target}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    epoch, step = position(out / "last.pt")
    assert epoch == 2 and 0 < step < STEPS_PER_EPOCH, (target, epoch, step)
    assert not (out / "results.json").exists()

    assert main(["train", "--resume", str(out)]) == 0
    assert_same_run(reference_runs[backend], out)
    log = read_log(out / "log.jsonl")
    assert [r["event"] for r in log] == ["params", "epoch", "resumed", "epoch", "epoch", "result"]
    assert (log[2]["epoch"], log[2]["step"]) == (epoch, step)


def test_sigterm_exits_143_with_a_resumable_checkpoint(config, reference_runs, tmp_path):
    out = tmp_path / "run"
    # no periodic checkpoints: the one there is after the signal is written for it
    proc = start_train(config, out, "train.checkpoint_every_steps=0", "model.backend=reference")
    wait_for(lambda: epochs_logged(out) >= 1, proc, "epoch 1's end")
    time.sleep(0.6)         # into epoch 2's steps (an epoch takes over a second)
    assert not (out / "last.pt").exists()
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143, err[-3000:]
    epoch, step = position(out / "last.pt")
    message = err.strip().splitlines()[-1]
    assert message == (f"interrupted by SIGTERM: {out / 'last.pt'} holds the run at epoch {epoch} after step "
                       f"{step}; continue it with `tf4ctr-fast train --resume {out}`")
    assert "Traceback" not in err

    assert main(["train", "--resume", str(out)]) == 0
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (reference_runs["reference"], out))
    assert comparable(ra) == comparable(rb)
