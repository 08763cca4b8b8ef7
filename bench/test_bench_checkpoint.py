"""What the resumable checkpoint (last.pt) costs a training run: train.checkpoint_every_steps at its
default (null: at every epoch end, and within an epoch after a minute of work and 50 write-times)
against 0 (no last.pt), the claim being <= 2 % of the throughput (docs/runs.md).

A timed round is one whole `train` call, as the CLI makes it: the default TF4CTR (reference backend,
batch 4096) on a prepared synthetic Criteo-schema folder of 10 x Sizes.epoch_rows rows (80 % train),
2 epochs, valid evaluated after each, test at the end. The path without checkpoints is named
"reference" (harness.record's baseline): speedup_vs_reference of the "default" path is the ratio of
the two throughputs. extra_info also holds last.pt's size and the time one write of it takes
(io_utils.atomic_file + torch.save), the cost the interval rule divides.
"""
from __future__ import annotations

import time

import pytest
import torch

from harness import record
from tf4ctr_fast.config import DatasetConfig, RunConfig, SyntheticConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.synthetic import generate_synthetic
from tf4ctr_fast.io_utils import atomic_file
from tf4ctr_fast.train.trainer import train

EPOCHS = 2


@pytest.fixture(scope="module")
def prepared(env, tmp_path_factory):
    cfg = DatasetConfig(name="bench_checkpoint", synthetic=SyntheticConfig(rows=10 * env.sizes.epoch_rows))
    return generate_synthetic(cfg, tmp_path_factory.mktemp("checkpoint") / "prepared")


def write_seconds(path) -> float:
    """One more write of the checkpoint at `path`, as the trainer writes it."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    start = time.perf_counter()
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return time.perf_counter() - start


@pytest.mark.parametrize("path", ["reference", "default"])
def test_checkpoint_cost(benchmark, env, prepared, tmp_path, path):
    data = load_prepared(prepared)
    cfg = RunConfig(dataset=DatasetConfig(name="bench_checkpoint", prepared_dir=str(prepared)))
    cfg.train.epochs = EPOCHS
    cfg.train.device = str(env.device)
    cfg.train.progress = False
    cfg.train.out_dir = str(tmp_path / "run")
    cfg.train.checkpoint_every_steps = 0 if path == "reference" else None
    rows = data.schema["splits"]["train"]
    benchmark.group = f"training with checkpoints {rows} rows x {EPOCHS} epochs {env.device.type}"
    benchmark.pedantic(lambda: train(cfg, data, overwrite=True), rounds=env.sizes.epoch_rounds,
                       warmup_rounds=0, iterations=1)
    last = tmp_path / "run" / "last.pt"
    extra = {"last_pt_bytes": last.stat().st_size, "last_pt_write_s": write_seconds(last)} if last.exists() else {}
    record(benchmark, env, bench="checkpoint", case=f"{rows} rows x {EPOCHS} epochs", path=path,
           batch=rows * EPOCHS, **extra)
