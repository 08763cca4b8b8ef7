"""Sparse adam's regular step on its own (torch.ops.tf4ctr_fast.sparse_adam_step, 1 thread): 39 tables
x 141k rows x 16 floats (5.5e6 rows), batch 4096, one skewed id per field and sample, 30 steps (the
first 5 not counted). Prints the median and the minimum in ms. `replay` also replays the steps the
looked-up rows owe. To compare two builds, run it with PYTHONPATH set to each checkout, in turn.

    .venv/bin/python scripts/adam_step_speed.py [step|replay]
"""
import sys
import time

import torch

import tf4ctr_fast
import tf4ctr_fast.embedding.sparse_adam  # noqa: F401  (registers the kernels)

TABLES, ROWS, DIM, BATCH, STEPS, WARMUP = 39, 141_000, 16, 4096, 30, 5


def main() -> int:
    replay = sys.argv[1:] == ["replay"]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(TABLES * ROWS * DIM, generator=g) * 0.01
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    row_step = torch.zeros(TABLES * ROWS, dtype=torch.int64)
    layout = (torch.arange(TABLES, dtype=torch.int64) * ROWS * DIM,
              torch.arange(TABLES + 1, dtype=torch.int32) * DIM,
              torch.arange(TABLES + 1, dtype=torch.int64) * ROWS)
    offsets = torch.arange(TABLES * BATCH + 1, dtype=torch.int64)   # one id per (table, sample) bag
    times = []
    for step in range(1, STEPS + 1):
        ids = (torch.rand(TABLES * BATCH, generator=g).pow(3) * ROWS).long()   # skewed, like real logs
        grad = torch.randn(BATCH, TABLES * DIM, generator=g) * 1e-3
        start = time.perf_counter()
        torch.ops.tf4ctr_fast.sparse_adam_step(w, m, v, row_step, *layout, ids, offsets, grad, None, step,
                                               1e-3, 0.9, 0.999, 1e-8, 0.1, replay)
        times.append(time.perf_counter() - start)
    times = sorted(times[WARMUP:])
    print(f"{tf4ctr_fast.__file__}: replay={replay}: median {times[len(times) // 2] * 1e3:.1f} ms, "
          f"min {times[0] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
