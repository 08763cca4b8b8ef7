"""One training epoch end to end, data loading included: engine vs reference (harness.build_pair) on
a prepared synthetic Criteo-schema folder (--bench-size: Sizes.epoch_rows rows, 80 % train,
10,000 ids per categorical field), batch 4096.

A timed round is what the trainer does for one epoch: open the prepared folder (memory-mapped
columns), build the DeviceBatchLoader (the train split copied to the device once), then one training
step (harness.training_step) per shuffled batch, the last partial batch included. Not included:
validation, checkpoints, logs. Parity first, on the fresh pair and the loader's first batch
(harness.assert_step_parity), which also warms both paths up.
"""
from __future__ import annotations

import pytest

from harness import (assert_step_parity, build_pair, field_names, linear_macs, record, sync,
                     training_step)
from tf4ctr_fast.config import DatasetConfig, SyntheticConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.loader import DeviceBatchLoader
from tf4ctr_fast.data.synthetic import generate_synthetic


@pytest.fixture(scope="module")
def prepared(env, tmp_path_factory):
    cfg = DatasetConfig(name="bench_synthetic", synthetic=SyntheticConfig(rows=env.sizes.epoch_rows))
    return generate_synthetic(cfg, tmp_path_factory.mktemp("epoch") / "prepared")


@pytest.fixture(scope="module")
def epoch_case(env, prepared):
    data = load_prepared(prepared)
    assert data.field_names == field_names()
    models = dict(zip(("reference", "engine"), build_pair(data.vocab_sizes, env.device)))
    ids, y = next(iter(DeviceBatchLoader(data.split("train"), env.sizes.step_batch, env.device,
                                         shuffle=True, seed=0)))
    assert_step_parity(models["reference"], models["engine"], ids, y)
    return models, data


def run_epoch(folder, step, batch_size: int, device) -> None:
    loader = DeviceBatchLoader(load_prepared(folder).split("train"), batch_size, device, shuffle=True, seed=0)
    for ids, y in loader:
        step(ids, y)
    sync(device)


@pytest.mark.parametrize("path", ["reference", "engine"])
def test_epoch(benchmark, env, prepared, epoch_case, path):
    models, data = epoch_case
    rows, batch = data.schema["splits"]["train"], env.sizes.step_batch
    benchmark.group = f"epoch {rows} rows B={batch} {env.device.type}"
    benchmark.pedantic(run_epoch, args=(prepared, training_step(models[path]), batch, env.device),
                       rounds=env.sizes.epoch_rounds, warmup_rounds=0, iterations=1)
    record(benchmark, env, bench="epoch", case=f"{rows} rows", path=path, batch=rows,
           flops=6 * linear_macs(models["reference"]) * rows, vocab_total=sum(data.vocab_sizes),
           steps=-(-rows // batch))
