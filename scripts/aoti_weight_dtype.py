"""Does storing a serving MLP's weights in float16 / bfloat16 make an AOTInductor package faster at batch
1 on this CPU? (docs/serving.md, "Halving the weight bytes".) The TF4CTR Criteo config's dense shapes
(MLP_c 624 -> 400 -> 400 -> 400, MLP_s 312 -> 400 -> 400; 0.86 M weights), weights stored in DTYPE and
cast to float32 inside the program, exported with a dynamic batch, compiled with the default options or
the tuned ones (`export.AOTI_TUNED_OPTIONS`: freezing + max_autotune). Prints the package size, the
largest difference from the eager float32 module of the same weights, and p50 / min latency of 3000
batch-1 calls (1 thread, after 300 warm-up calls).

    .venv/bin/python scripts/aoti_weight_dtype.py float16 --tuned
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from tf4ctr_fast.export import AOTI_TUNED_OPTIONS

COMPLEX, SIMPLE = [624, 400, 400, 400], [312, 400, 400]


class TwinMLPs(torch.nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        gen = torch.Generator().manual_seed(0)

        def weights(dims: list[int]) -> torch.nn.ParameterList:
            return torch.nn.ParameterList(
                torch.nn.Parameter((torch.randn(b, a, generator=gen) / a ** 0.5).to(dtype), requires_grad=False)
                for a, b in zip(dims, dims[1:]))
        self.complex, self.simple = weights(COMPLEX), weights(SIMPLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = x, x[:, :SIMPLE[0]]
        for w in self.complex:
            h = torch.relu(torch.nn.functional.linear(h, w.float()))
        for w in self.simple:
            g = torch.relu(torch.nn.functional.linear(g, w.float()))
        return h.sum(-1) + g.sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tuned", action="store_true", help="compile with export.AOTI_TUNED_OPTIONS")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = TwinMLPs(getattr(torch, args.dtype)).eval()
    program = torch.export.export(model, (torch.randn(4, COMPLEX[0]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))
    with tempfile.TemporaryDirectory() as tmp:
        path = torch._inductor.aoti_compile_and_package(
            program, package_path=os.path.join(tmp, "model.pt2"),
            inductor_configs=dict(AOTI_TUNED_OPTIONS) if args.tuned else {})
        size = os.path.getsize(path)
        runner = torch._inductor.aoti_load_package(path)
    x = torch.randn(1, COMPLEX[0])
    diff = (runner(x) - model(x)).abs().max().item()
    for _ in range(300):
        runner(x)
    times = []
    for _ in range(3000):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"{args.dtype} {'tuned' if args.tuned else 'default'}: package {size / 1e6:.1f} MB, max diff {diff:.1e}, "
          f"p50 {times[len(times) // 2] * 1e6:.0f} us, min {times[0] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
