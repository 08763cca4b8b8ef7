"""ops.batch_norm_relu (kernels/batch_norm_relu.cpp in training on the CPU) against its op-by-op twin,
torch's BatchNorm and relu (reference/batch_norm_relu.py): outputs, the input's and the affine
parameters' gradients, running statistics and the batch count, over a grid of shapes; eval, a batch
of one and the paths without the kernel are the twin itself. (Not wired into MLPBlock: docs/benchmarks.md
"BatchNorm + ReLU fused".)"""
import copy

import pytest
import torch
from torch import nn

from batch_norm_checks import affine_bn, assert_as_close_to_float64, assert_module_matches_twin
from tf4ctr_fast.ops import HAS_KERNELS
from tf4ctr_fast.ops.batch_norm_relu import batch_norm_relu
from tf4ctr_fast.reference.batch_norm_relu import batch_norm_relu as twin

needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="compiled kernels missing")


@needs_kernels
@pytest.mark.parametrize("batch,channels", [(2, 3), (7, 5), (300, 33), (1000, 400), (257, 17)])
@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_kernel_matches_twin_in_training(batch, channels, momentum):
    bn = affine_bn(channels, batch, momentum)
    bn_twin = copy.deepcopy(bn)
    # a Linear's output: per-channel means and spreads of different sizes
    x = (torch.randn(batch, channels) * torch.rand(channels) * 3 + torch.randn(channels)).requires_grad_()
    x_twin = x.detach().clone().requires_grad_()
    y, y_twin = batch_norm_relu(x, bn), twin(x_twin, bn_twin)
    assert y.shape == (batch, channels) and y.is_contiguous()
    # xhat = (x - mean) / sigma loses float32's spacing of x relative to sigma on both sides (channels
    # with a spread of 0.01 and a mean of 1 here): close to each other, and the kernel at least as
    # close to float64 as torch
    torch.testing.assert_close(y, y_twin, rtol=1e-5, atol=1e-4)
    exact = torch.relu(nn.functional.batch_norm(x.detach().double(), None, None, bn_twin.weight.double(),
                                                bn_twin.bias.double(), training=True))
    assert_as_close_to_float64(y, y_twin, exact)
    g = torch.randn_like(y)
    y.backward(g)
    y_twin.backward(g)
    # dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)) cancels where a channel has few values
    # (2 at batch 2): the tolerance is on the scale of its terms before they cancel
    invstd = 1 / (x_twin.detach().var(dim=0, unbiased=False) + bn.eps).sqrt()
    scale = (g.abs() * bn.weight.detach().abs() * invstd).max().item()
    torch.testing.assert_close(x.grad, x_twin.grad, rtol=1e-4, atol=1e-5 * scale)
    assert_module_matches_twin(bn, bn_twin)


@needs_kernels
def test_kernel_gradient_against_an_independent_formula():
    # BatchNorm + ReLU's gradient written out (not torch's autograd): g = dy where y > 0, then
    # dx = w / sigma * (g - mean(g) - xhat * mean(g * xhat)), dw = sum(g * xhat), db = sum(g); in float64
    torch.manual_seed(3)
    bn = affine_bn(9, 3)
    x = torch.randn(64, 9, requires_grad=True)
    dy = torch.randn(64, 9)
    y = batch_norm_relu(x, bn)
    y.backward(dy)
    xd = x.detach().double()
    xhat = (xd - xd.mean(0)) / (xd.var(0, unbiased=False) + bn.eps).sqrt()
    w, b = bn.weight.detach().double(), bn.bias.detach().double()
    pre = xhat * w + b
    torch.testing.assert_close(y.double(), pre.clamp_min(0), rtol=1e-5, atol=1e-5)
    gm = dy.double() * (pre > 0)
    sigma = (xd.var(0, unbiased=False) + bn.eps).sqrt()
    dx = w / sigma * (gm - gm.mean(0) - xhat * (gm * xhat).mean(0))
    torch.testing.assert_close(x.grad.double(), dx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad.double(), (gm * xhat).sum(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.bias.grad.double(), gm.sum(0), rtol=1e-4, atol=1e-5)


@needs_kernels
def test_kernel_variance_survives_a_large_mean():
    # Channels with mean 1e4 and spread 0.3: a one-pass variance (E[x^2] - E[x]^2) in float32 would be
    # noise there. Against float64 the kernel must be as close as torch's BatchNorm.
    torch.manual_seed(0)
    x = 1e4 + torch.rand(500, 6)
    exact = torch.relu(nn.functional.batch_norm(x.double(), None, None, training=True))
    assert_as_close_to_float64(batch_norm_relu(x, nn.BatchNorm1d(6)), twin(x, nn.BatchNorm1d(6)), exact)


@needs_kernels
def test_kernel_statistics_survive_an_outlying_first_row():
    # the one-pass statistics are sums of values shifted by the first row's (batch_stats.h): a first row
    # 1000 standard deviations out must not cost the variance its digits
    torch.manual_seed(1)
    x = torch.randn(400, 7)
    x[0] = 1000.0
    exact = torch.relu(nn.functional.batch_norm(x.double(), None, None, training=True))
    assert_as_close_to_float64(batch_norm_relu(x, nn.BatchNorm1d(7)), twin(x, nn.BatchNorm1d(7)), exact)


@needs_kernels
def test_kernel_refuses_bad_shapes():
    with pytest.raises(RuntimeError, match="x must be a contiguous float32 CPU tensor"):
        torch.ops.tf4ctr_fast.batch_norm_relu_forward(torch.zeros(2, 3, 4), torch.ones(3), torch.zeros(3),
                                                      torch.zeros(3), torch.ones(3), 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="weight must be a contiguous float32 CPU vector of 4"):
        torch.ops.tf4ctr_fast.batch_norm_relu_forward(torch.zeros(2, 4), torch.ones(3), torch.zeros(4),
                                                      torch.zeros(4), torch.ones(4), 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="more than one value per channel"):
        torch.ops.tf4ctr_fast.batch_norm_relu_forward(torch.zeros(1, 4), torch.ones(4), torch.zeros(4),
                                                      torch.zeros(4), torch.ones(4), 0.1, 1e-5)


def test_eval_batch_of_one_and_double_inputs_run_the_twin():
    bn = affine_bn(5, 1).eval()
    x = torch.randn(4, 5)
    torch.testing.assert_close(batch_norm_relu(x, bn), twin(x, bn), rtol=0, atol=0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):   # torch's own message
        batch_norm_relu(torch.randn(1, 5), affine_bn(5, 1))
    bn64 = copy.deepcopy(bn).double().train()
    x64 = x.double()
    torch.testing.assert_close(batch_norm_relu(x64, bn64), twin(x64, copy.deepcopy(bn).double().train()),
                               rtol=0, atol=0)
