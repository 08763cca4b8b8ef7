"""What the BatchNorm kernels' tests share (tests/test_exp_batch_norm.py, tests/test_batch_norm_relu.py):
a BatchNorm1d with non-trivial affine parameters and running statistics, the comparison of a module
the kernel trained with its twin's, and the float64 yardstick."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def affine_bn(channels: int, seed: int, momentum: float = 0.1) -> nn.BatchNorm1d:
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.normal_(1.0, 0.3)
        bn.bias.normal_(0.0, 0.3)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def assert_module_matches_twin(bn: nn.BatchNorm1d, bn_twin: nn.BatchNorm1d) -> None:
    """After one training forward and backward of each: the affine parameters' gradients, the running
    statistics and the batch count."""
    for name in ("weight", "bias"):
        want = getattr(bn_twin, name).grad
        torch.testing.assert_close(getattr(bn, name).grad, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(bn, name), getattr(bn_twin, name), rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == bn_twin.num_batches_tracked.item() == 1


def assert_as_close_to_float64(got: Tensor, twin_out: Tensor, exact: Tensor) -> None:
    """The kernel's output at least as close to the float64 result as torch's (within 2x, plus 1e-6)."""
    err, err_twin = ((t.detach().double() - exact).abs().max().item() for t in (got, twin_out))
    assert err <= 2 * err_twin + 1e-6, (err, err_twin)
