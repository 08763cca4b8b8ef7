"""AFN's logarithmic transformation layer, forward + backward, Frappe's shapes (10 fields, d 16, 1200
neurons), p the input and every parameter getting its gradient:
  reference  tf4ctr_fast/reference/logarithmic.py, FuxiCTR's AFN.logarithmic_net as written there
             (projection over a transposed view, BatchNorm over the strided [B, 1200, 16] result)
  layer      tf4ctr_fast/layers/logarithmic.py (a plain 2-D projection made contiguous before exp and
             BatchNorm)
Parity first: the layer's output and input gradient match the twin's on the case's tensors.
B = 2000 and 10000 (Frappe's batch: about 0.8 GB per [B, 1200, 16] activation)."""
from __future__ import annotations

import copy

import pytest
import torch

from harness import record
from tf4ctr_fast.layers.logarithmic import LogarithmicTransformation
from tf4ctr_fast.reference.logarithmic import logarithmic_net

FIELDS, DIM, NEURONS = 10, 16, 1200


def step(layer: LogarithmicTransformation, path: str, x: torch.Tensor, g: torch.Tensor) -> None:
    y = logarithmic_net(layer, x) if path == "reference" else layer(x)
    y.backward(g)
    x.grad = None
    layer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("batch", [2000, 10000], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("path", ["reference", "layer"])
def test_logarithmic_step(benchmark, env, batch, path):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = LogarithmicTransformation(FIELDS, NEURONS).to(env.device)
    x = (torch.randn(batch, FIELDS, DIM, generator=gen) * 1e-2).to(env.device).requires_grad_()
    g = torch.randn(batch, NEURONS * DIM, generator=gen).to(env.device)
    if path == "layer":
        twin, x_twin = copy.deepcopy(layer), x.detach().clone().requires_grad_()
        y, y_twin = layer(x), logarithmic_net(twin, x_twin)
        torch.testing.assert_close(y, y_twin, rtol=1e-4, atol=1e-4)
        y.backward(g)
        y_twin.backward(g)
        torch.testing.assert_close(x.grad, x_twin.grad, rtol=1e-4, atol=1e-5 * x_twin.grad.abs().max().item())
        x.grad = None
        layer.zero_grad(set_to_none=True)
    benchmark.group = f"AFN logarithmic fwd+bwd B={batch} F={FIELDS} d={DIM} N={NEURONS} {env.device.type}"
    benchmark.pedantic(step, args=(layer, path, x, g), rounds=5, warmup_rounds=1, iterations=1)
    record(benchmark, env, bench="logarithmic", case=f"B={batch}", path=path, batch=batch,
           bytes_moved=4 * batch * NEURONS * DIM * 8)   # about 8 passes over [B, N, d] forward + backward
