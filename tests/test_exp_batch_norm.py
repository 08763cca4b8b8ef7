"""ops.exp_batch_norm (kernels/exp_batch_norm.cpp in training on the CPU) against its op-by-op twin,
torch's exp and BatchNorm (reference/exp_batch_norm.py): outputs, the input's and the affine
parameters' gradients, running statistics and the batch count, over a grid of shapes; eval and the
paths without the kernel are the twin itself."""
import copy

import pytest
import torch
from torch import nn

from batch_norm_checks import affine_bn, assert_as_close_to_float64, assert_module_matches_twin
from tf4ctr_fast.ops import HAS_KERNELS
from tf4ctr_fast.ops.exp_batch_norm import exp_batch_norm
from tf4ctr_fast.reference.exp_batch_norm import exp_batch_norm as twin

needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="compiled kernels missing")


@needs_kernels
@pytest.mark.parametrize("batch,dim,neurons", [(7, 4, 5), (64, 16, 40), (2, 1, 3), (300, 3, 33)])
def test_kernel_matches_twin_in_training(batch, dim, neurons):
    bn = affine_bn(neurons, batch)
    bn_twin = copy.deepcopy(bn)
    # exp of a wide range: outputs from about 0.02 to 50, as AFN's products of powers spread
    z = (torch.randn(batch, dim, neurons) * 1.3).requires_grad_()
    z_twin = z.detach().clone().requires_grad_()
    y, y_twin = exp_batch_norm(z, bn), twin(z_twin, bn_twin)
    assert y.shape == (batch, neurons, dim) and y.is_contiguous()
    torch.testing.assert_close(y, y_twin, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_twin.backward(g)
    # dz = e * w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) cancels where a channel has few values
    # (2 at (2, 1, 3)): the tolerance is on the scale of its terms before they cancel
    e = torch.exp(z_twin.detach())
    invstd = 1 / (e.var(dim=(0, 1), unbiased=False) + bn.eps).sqrt()
    scale = (e * g.transpose(1, 2).abs() * bn.weight.detach().abs() * invstd).max().item()
    torch.testing.assert_close(z.grad, z_twin.grad, rtol=1e-4, atol=1e-5 * scale)
    assert_module_matches_twin(bn, bn_twin)


@needs_kernels
def test_kernel_variance_survives_a_large_mean():
    # Channels with mean 1e4 and spread 0.3: a one-pass variance (E[x^2] - E[x]^2) in float32 would be
    # noise there. Against float64 the kernel must be as close as torch's BatchNorm; both are limited
    # by float32's spacing of the inputs near 1e4.
    torch.manual_seed(0)
    z = torch.log(1e4 + torch.rand(500, 16, 6))
    exact = nn.functional.batch_norm(torch.exp(z.double()).transpose(1, 2), None, None, training=True)
    assert_as_close_to_float64(exp_batch_norm(z, nn.BatchNorm1d(6)), twin(z, nn.BatchNorm1d(6)), exact)


@needs_kernels
def test_kernel_refuses_bad_shapes():
    with pytest.raises(RuntimeError, match="z must be a float32 CPU tensor"):
        torch.ops.tf4ctr_fast.exp_batch_norm_forward(torch.zeros(2, 3), torch.ones(3), torch.zeros(3),
                                                     torch.zeros(3), torch.ones(3), 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="weight must be a contiguous float32 CPU vector of 4"):
        torch.ops.tf4ctr_fast.exp_batch_norm_forward(torch.zeros(2, 3, 4), torch.ones(3), torch.zeros(4),
                                                     torch.zeros(4), torch.ones(4), 0.1, 1e-5)


def test_eval_and_double_inputs_run_the_twin():
    bn = affine_bn(5, 1).eval()
    z = torch.randn(4, 3, 5)
    torch.testing.assert_close(exp_batch_norm(z, bn), twin(z, bn), rtol=0, atol=0)
    bn64 = copy.deepcopy(bn).double().train()
    z64 = z.double()
    torch.testing.assert_close(exp_batch_norm(z64, bn64), twin(z64, copy.deepcopy(bn).double().train()),
                               rtol=0, atol=0)
