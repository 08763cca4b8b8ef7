"""Sparse adam's replay on its own: every row of one table (R rows x D) owing K steps, caught up in one
call of the kernel (torch.ops.tf4ctr_fast.sparse_adam_catch_up, 1 thread). Prints the best of three
calls in ns per element-step. To compare two builds, run it with PYTHONPATH set to each checkout.

    .venv/bin/python scripts/replay_speed.py 1000000 16 64
"""
import argparse
import sys
import time

import torch

import tf4ctr_fast.embedding.sparse_adam  # noqa: F401  (registers the kernels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int)
    parser.add_argument("dim", type=int)
    parser.add_argument("steps", type=int, help="owed steps per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(args.rows * args.dim, generator=g) * 0.01
    scales = torch.rand(args.steps + 1, generator=g) * 0.5 + 0.5   # clip factors, one per step
    layout = (torch.tensor([0]), torch.tensor([0, args.dim], dtype=torch.int32), torch.tensor([0, args.rows]))
    best = float("inf")
    for _ in range(3):
        w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
        row_step = torch.zeros(args.rows, dtype=torch.int64)
        start = time.perf_counter()
        torch.ops.tf4ctr_fast.sparse_adam_catch_up(w, m, v, row_step, *layout, None, None, scales, args.steps,
                                                   1e-3, 0.9, 0.999, 1e-8, 0.1)
        best = min(best, time.perf_counter() - start)
    per = best / (args.rows * args.dim * args.steps) * 1e9
    print(f"{tf4ctr_fast.__file__}: rows {args.rows} dim {args.dim} steps {args.steps}: {best * 1e3:.1f} ms, "
          f"{per:.3f} ns per element-step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
