"""AFN's logarithmic transformation against its op-by-op twin, FuxiCTR's AFN.logarithmic_net
(tf4ctr_fast/reference/logarithmic.py):
values, gradients of the input and of every parameter, running statistics, train and eval."""
import copy

import pytest
import torch
from torch import nn

from tf4ctr_fast.layers.logarithmic import LogarithmicTransformation
from tf4ctr_fast.reference.logarithmic import logarithmic_net


@pytest.mark.parametrize("batch,fields,dim,neurons", [(7, 3, 4, 5), (64, 10, 16, 40), (2, 1, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_logarithmic_layer_matches_fuxictr_formulation(batch, fields, dim, neurons, training):
    torch.manual_seed(batch + neurons)
    layer = LogarithmicTransformation(fields, neurons)
    nn.init.normal_(layer.coefficients.weight, std=0.3)
    for bn in (layer.log_batch_norm, layer.exp_batch_norm):   # non-trivial affine and running stats
        nn.init.normal_(bn.weight, 1.0, 0.2)
        nn.init.normal_(bn.bias, 0.0, 0.2)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(layer)
    layer.train(training)
    reference.train(training)
    # Some entries below the floor: the clamp's zero gradient is part of the contract.
    emb = torch.randn(batch, fields, dim) * torch.where(torch.rand(batch, fields, dim) < 0.1, 1e-7, 1.0)
    x, x_ref = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    out, expected = layer(x), logarithmic_net(reference, x_ref)
    assert out.shape == (batch, neurons * dim)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5 * x_ref.grad.abs().max().item() + 1e-9)
    # Sums over B*d terms that cancel (in training the log BatchNorm's bias gradient is exactly 0:
    # the exp BatchNorm normalises its shift away): an absolute tolerance on the gradients' scale.
    scale = max(p.grad.abs().max().item() for p in reference.parameters())
    for (name, p), p_ref in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: name + m)
    for (name, b), b_ref in zip(layer.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6, msg=name)
