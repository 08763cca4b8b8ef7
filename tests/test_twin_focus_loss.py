"""The reference losses against plain-Python hand computations (REFERENCE.md "Twin Focus loss")."""
import itertools
import math

import pytest
import torch

from tf4ctr_fast.reference.loss import bce_prob, logloss, total_loss, twin_focus_loss

# Positives and negatives, confident and unsure, right and wrong.
P_S = [0.9, 0.2, 0.6, 0.05, 0.7, 0.35]
P_C = [0.3, 0.8, 0.55, 0.99, 0.1, 0.5]
Y = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]

CASES = list(itertools.product([0.0, 0.25, 1.0], [0.0, 1.0, 0.7], [0, 1, 2, 3]))  # alpha, c, gamma


def hand_bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def hand_p_t(p: float, y: float) -> float:
    return p if y == 1 else 1 - p


def hand_twin_focus(p_s, p_c, y, alpha, c, gamma) -> float:
    n = len(y)
    simple = sum(hand_bce(p, t) * (c + hand_p_t(p, t)) ** gamma for p, t in zip(p_s, y)) / n
    complex_ = sum(hand_bce(p, t) * ((2 - c) - hand_p_t(p, t)) ** gamma for p, t in zip(p_c, y)) / n
    return alpha * simple + (1 - alpha) * complex_


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_bce_prob_per_sample_and_clamped_like_pytorch():
    got = bce_prob(t64(P_S), t64(Y))
    assert got.shape == (len(Y),)
    assert got.tolist() == pytest.approx([hand_bce(p, y) for p, y in zip(P_S, Y)], rel=1e-12)
    # The authors' BCE is on probabilities: a saturated wrong prediction costs log-clamp 100, not inf.
    assert bce_prob(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])).tolist() == [100.0, 100.0]


@pytest.mark.parametrize("alpha,c,gamma", CASES)
def test_twin_focus_loss_matches_hand_computation(alpha, c, gamma):
    expected = hand_twin_focus(P_S, P_C, Y, alpha, c, gamma)
    got64 = twin_focus_loss(t64(P_S), t64(P_C), t64(Y), alpha, c, gamma)
    assert got64.dim() == 0
    assert got64.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    got32 = twin_focus_loss(torch.tensor(P_S), torch.tensor(P_C), torch.tensor(Y), alpha, c, gamma)
    assert got32.item() == pytest.approx(expected, rel=1e-5)


def hand_grad(p: float, y: float, base_sign: float, offset: float, gamma: float) -> float:
    """d/dp of bce(p, y) * (offset + base_sign * p_t)^gamma, using bce = -log p_t and dp_t/dp = 2y - 1."""
    p_t = hand_p_t(p, y)
    base = offset + base_sign * p_t
    d_bce = -1 / p_t
    d_focus = gamma * base_sign * base ** (gamma - 1) if gamma else 0.0
    return (2 * y - 1) * (d_bce * base ** gamma + (-math.log(p_t)) * d_focus)


@pytest.mark.parametrize("alpha,c,gamma", CASES)
def test_twin_focus_gradient_matches_hand_derivation(alpha, c, gamma):
    p_s, p_c = t64(P_S).requires_grad_(), t64(P_C).requires_grad_()
    twin_focus_loss(p_s, p_c, t64(Y), alpha, c, gamma).backward()
    n = len(Y)
    expect_s = [alpha / n * hand_grad(p, y, +1, c, gamma) for p, y in zip(P_S, Y)]
    expect_c = [(1 - alpha) / n * hand_grad(p, y, -1, 2 - c, gamma) for p, y in zip(P_C, Y)]
    assert p_s.grad.tolist() == pytest.approx(expect_s, rel=1e-10, abs=1e-14)
    assert p_c.grad.tolist() == pytest.approx(expect_c, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("alpha,c,gamma", [(0.25, 0.7, 1), (0.2, 0.8, 2), (0.35, 0.9, 3)])
def test_twin_focus_gradcheck_float64(alpha, c, gamma):
    y = t64(Y)
    p_s, p_c = t64(P_S).requires_grad_(), t64(P_C).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: twin_focus_loss(a, b, y, alpha, c, gamma), (p_s, p_c))


def test_total_loss_is_logloss_plus_twin_focus_of_sigmoids():
    logit = [0.3, -1.2, 2.0, 0.0, -0.4, 1.1]
    z_s = [1.5, -0.3, 0.2, -2.5, 0.8, 0.0]
    z_c = [-0.6, 1.4, 0.1, 3.0, -1.9, 0.4]
    sig = lambda values: [1 / (1 + math.exp(-v)) for v in values]  # noqa: E731
    ctr = sum(hand_bce(p, y) for p, y in zip(sig(logit), Y)) / len(Y)
    tf = hand_twin_focus(sig(z_s), sig(z_c), Y, 0.25, 0.7, 2)
    args = (t64(logit), t64(z_s), t64(z_c), t64(Y), 0.25, 0.7, 2)
    assert total_loss(*args).item() == pytest.approx(ctr + tf, rel=1e-12)
    assert total_loss(*args, twin_focus=False).item() == pytest.approx(ctr, rel=1e-12)
    assert logloss(t64(logit), t64(Y)).item() == pytest.approx(ctr, rel=1e-12)
