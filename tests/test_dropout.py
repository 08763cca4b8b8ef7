"""The hashed-mask dropout (kernels/dropout.cpp, twin tf4ctr_fast/reference/dropout.py, autograd and
seeding in tf4ctr_fast/ops/dropout.py, module tf4ctr_fast/layers/dropout.py): kernel == twin bit for
bit over shapes, p and seeds; the gradient is the same mask; the keep rate and the masks' independence
are what dropout needs; the seed comes from torch's generator; the thread count changes nothing."""
import math

import pytest
import torch

from tf4ctr_fast.layers.dropout import Dropout
from tf4ctr_fast.ops import HAS_KERNELS
from tf4ctr_fast.ops.dropout import dropout, dropout_mask_scale
from tf4ctr_fast.reference.dropout import keep_mask

needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="compiled kernels not built")

SHAPES = [(1,), (7,), (3, 5), (1003, 37), (64, 400), (2, 3, 129)]
SEEDS = [0, 1, 12345, 2**32 - 1, 2**32, 2**40 + 7, 2**63 - 1]


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 0.5, 0.9])
def test_kernel_equals_twin_bit_for_bit(shape, p):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
    for seed in SEEDS:
        torch.testing.assert_close(dropout_mask_scale(x, p, seed), dropout_mask_scale(x, p, seed, reference_path=True),
                                   rtol=0, atol=0)


@needs_kernels
def test_kernel_reads_non_contiguous_input_like_its_contiguous_copy():
    x = torch.randn(40, 30).t()
    torch.testing.assert_close(dropout_mask_scale(x, 0.3, 9), dropout_mask_scale(x.contiguous(), 0.3, 9),
                               rtol=0, atol=0)


def test_keep_rate_and_scale():
    n, p = 200_000, 0.2
    y = dropout_mask_scale(torch.ones(n), p, 77)
    kept = y != 0
    # binomial: 6 standard deviations
    assert abs(kept.float().mean().item() - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    assert torch.all(y[kept] == torch.tensor(1 / (1 - p), dtype=torch.float32))


def test_masks_of_two_seeds_and_of_neighbouring_elements_are_independent():
    n, p = 200_000, 0.5
    a, b = keep_mask(n, p, 1).float(), keep_mask(n, p, 2).float()
    bound = 6 / math.sqrt(n)
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < bound
    assert abs(torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1].item()) < bound   # lag 1
    assert abs(torch.corrcoef(torch.stack([a[:-400], a[400:]]))[0, 1].item()) < bound   # one MLP row apart


def test_elements_beyond_two_to_the_32_use_the_high_index_bits():
    # element 2^32 + k must not repeat element k: the twin's mask of a short tensor at those indices
    from tf4ctr_fast.reference.dropout import _hash32

    i = torch.arange(1000, dtype=torch.int64)
    low = _hash32(_hash32(i ^ 5) ^ 0 ^ 0)
    high = _hash32(_hash32(i ^ 5) ^ 0 ^ 1)
    assert (low != high).float().mean() > 0.99


@pytest.mark.parametrize("reference_path", [False, True])
def test_gradient_is_the_same_mask(reference_path, monkeypatch):
    if not reference_path and not HAS_KERNELS:
        pytest.skip("compiled kernels not built")
    import tf4ctr_fast.ops.dropout as ops_dropout

    if reference_path:
        monkeypatch.setattr(ops_dropout, "HAS_KERNELS", False)
    x = torch.randn(33, 17, requires_grad=True)
    g = torch.randn(33, 17)
    torch.manual_seed(3)
    y = dropout(x, 0.25, training=True)
    y.backward(g)
    torch.manual_seed(3)
    seed = ops_dropout.draw_seed()
    scale = keep_mask(x.numel(), 0.25, seed).view(x.shape).float() / 0.75
    torch.testing.assert_close(y, x.detach() * scale, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, g * scale, rtol=0, atol=0)


def test_seed_comes_from_torchs_generator():
    x = torch.randn(100, 10)
    torch.manual_seed(0)
    a, b = dropout(x, 0.5, True), dropout(x, 0.5, True)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.5, True), a) and not torch.equal(a, b)


@needs_kernels
def test_thread_count_changes_nothing():
    x = torch.randn(300_000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dropout_mask_scale(x, 0.2, 11)
        torch.set_num_threads(2)
        two = dropout_mask_scale(x, 0.2, 11)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


def test_module_is_identity_in_eval_and_at_p_zero_and_torchs_off_the_cpu_float32_path():
    x = torch.randn(8, 4)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    bf16 = x.to(torch.bfloat16)
    y = Dropout(0.5).train()(bf16)                     # torch's dropout: same dtype, 0 or 2x
    assert y.dtype == torch.bfloat16 and torch.all((y == 0) | (y == 2 * bf16))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_mask_scale(x, 1.0, 0, reference_path=True)
