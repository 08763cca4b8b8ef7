"""A full TF4CTR training step on Criteo-schema synthetic data: engine vs reference, batch 4096,
39 fields, total vocabulary swept by --bench-size (the step-time-vs-vocabulary plot).

  reference  reference backend (nn.Embedding tables) + op-by-op head; Adam over every parameter,
             whole-table L2, clipping over every gradient (the paper's protocol)
  engine     TorchRec/FBGEMM SER tables (row-wise Adagrad fused into backward, L2 over the batch's
             rows) + fused twin head (C++ on CPU, Triton on CUDA); Adam and clipping on the dense part
  engine_bf16  the same engine step with its forward under bf16 autocast (train.precision bf16);
             its parity with the float32 step is tests/test_precision.py's, to bf16 rounding
  engine_adam  the engine with sparse optimizer "adam" (CPU only: the reference's dense Adam with the
             whole-table L2, on the looked-up rows; parity: one step, every row, harness.
             assert_adam_step_parity). The timed step repeats one batch, so its rows owe no steps:
  adam_replay_all_rows  is the rest of its cost: every row of every table replaying one owed step
             (sparse optimizer's catch_up after one step no row took): the worst case per step, a
             catch-up after every step.
  engine_adam_epoch  the amortised cost: one call is ADAM_EPOCH_STEPS steps on as many distinct
             batches (rows replay what they owe when a batch reads them), then every row caught up
             (what the trainer does before evaluating); its ratio is per step. A real epoch has
             thousands of steps, so this charges the final pass over the tables more than training
             does. Its replays are the kernel's of engine_adam (parity above); replays over many
             steps against the reference backend: tests/test_sparse_adam.py.

A step is what tf4ctr_fast.train.trainer does per batch (harness.training_step). Parity first, per
vocabulary, on the fresh pair: loss, logits, every dense gradient and the tables' fused update
(harness.assert_step_parity). Useful FLOPs: forward and backward of the Linear layers, 6 per
multiply-add per sample.
"""
from __future__ import annotations

import pytest

import copy

from harness import (assert_adam_step_parity, assert_step_parity, build_engine_adam, build_pair, criteo_batch,
                     criteo_vocab_sizes, linear_macs, record, training_step)

ADAM_EPOCH_STEPS = 16


class StepCase:
    def __init__(self, vocab: int, batch: int, device):
        self.vocab_sizes = criteo_vocab_sizes(vocab)
        self.ids, self.y = criteo_batch(self.vocab_sizes, batch, device)
        self.models = dict(zip(("reference", "engine"), build_pair(self.vocab_sizes, device)))
        assert_step_parity(self.models["reference"], self.models["engine"], self.ids, self.y)
        self.steps = {path: training_step(model) for path, model in self.models.items()}
        self.steps["engine_bf16"] = training_step(self.models["engine"], precision="bf16")
        if device.type == "cpu":
            reference = self.models["reference"]
            batches = [criteo_batch(self.vocab_sizes, batch, device, seed=1 + k) for k in range(ADAM_EPOCH_STEPS)]
            assert_adam_step_parity(copy.deepcopy(reference), build_engine_adam(reference, self.vocab_sizes, device),
                                    self.ids, self.y)
            adam = build_engine_adam(reference, self.vocab_sizes, device)
            self.steps["engine_adam"] = training_step(adam)
            self.steps["adam_replay_all_rows"] = _replay_one_step(adam.sparse_optimizer())
            self.steps["engine_adam_epoch"] = _adam_epoch(adam, batches)
        self.flops = 6 * linear_macs(self.models["reference"]) * batch


def _replay_one_step(optimizer):
    """step(ids, y): every row of the tables replays one step (as if one more batch had looked up none)."""
    def step(ids, y) -> None:
        optimizer.steps += 1
        optimizer.catch_up()
    return step


def _adam_epoch(model, batches):
    """step(ids, y), ids and y unused: a training step on each of `batches`, then every table row caught
    up (an epoch's end)."""
    step, optimizer = training_step(model), model.sparse_optimizer()

    def epoch(ids, y) -> None:
        for batch_ids, batch_y in batches:
            step(batch_ids, batch_y)
        optimizer.catch_up()
    return epoch


@pytest.fixture(scope="module")
def step_case(env, vocab) -> StepCase:
    return StepCase(vocab, env.sizes.step_batch, env.device)


@pytest.mark.parametrize("path", ["reference", "engine", "engine_bf16", "engine_adam", "adam_replay_all_rows",
                                  "engine_adam_epoch"])
def test_training_step(benchmark, env, step_case, vocab, path):
    if path not in step_case.steps:
        pytest.skip(f"{path}: CPU only (sparse optimizer adam)")
    batch = step_case.ids.shape[0]
    benchmark.group = f"training step vocab {vocab:.1e} B={batch} {env.device.type}"
    benchmark.pedantic(step_case.steps[path], args=(step_case.ids, step_case.y), rounds=env.sizes.step_rounds,
                       warmup_rounds=1, iterations=1)
    record(benchmark, env, bench="train_step", case=f"vocab {vocab:.1e}", path=path, batch=batch,
           flops=step_case.flops, vocab_total=sum(step_case.vocab_sizes), fields=len(step_case.vocab_sizes),
           steps_per_call=ADAM_EPOCH_STEPS if path == "engine_adam_epoch" else 1)
