"""Metrics against independent hand/brute-force computations."""
import math

import numpy as np
import pytest

from tf4ctr_fast.train.metrics import auc, difficulty_counts, gauc, logloss


def brute_force_auc(y, p):
    """P(score_pos > score_neg) + 0.5 P(tie), over all positive-negative pairs."""
    pos, neg = p[y == 1], p[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = (rng.random(n) < 0.3).astype(np.float32)
    p = rng.integers(0, 12, n) / 11.0           # few distinct scores: many ties, across classes too
    p = np.where(y == 1, np.minimum(p + 0.1, 1.0), p)
    assert auc(y, p) == pytest.approx(brute_force_auc(y, p), abs=1e-12)


def test_auc_extremes_and_single_class():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(y, np.full(4, 0.5)) == 0.5
    assert math.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_gauc_by_hand():
    # group 7: pos 0.9, 0.2 vs neg 0.5 -> pairs (0.9>0.5)=1, (0.2<0.5)=0 -> AUC 1/2, 3 rows
    # group 3: pos 0.4 vs neg 0.4, 0.1 -> tie 0.5 + win 1 -> AUC 3/4, 3 rows
    # group 5: only positives -> skipped (its 2 rows do not count in the weights)
    # group 9: pos 0.8 vs neg 0.3, 0.2, 0.1 -> AUC 1, 4 rows
    group = np.array([7, 3, 5, 7, 9, 3, 9, 5, 9, 3, 7, 9])
    y = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.4, 0.3, 0.5, 0.8, 0.4, 0.3, 0.6, 0.2, 0.1, 0.2, 0.1])
    expected = (0.5 * 3 + 0.75 * 3 + 1.0 * 4) / (3 + 3 + 4)
    assert gauc(y, p, group) == pytest.approx(expected, abs=1e-12)


def test_gauc_random_groups_match_per_group_brute_force():
    rng = np.random.default_rng(5)
    n = 400
    group = rng.integers(0, 25, n) * 1000 - 3      # arbitrary int64 ids, incl. negative
    y = (rng.random(n) < 0.4).astype(np.float64)
    p = rng.integers(0, 6, n) / 5.0
    num = den = 0.0
    for g in np.unique(group):
        rows = group == g
        if 0 < y[rows].sum() < rows.sum():
            num += brute_force_auc(y[rows], p[rows]) * rows.sum()
            den += rows.sum()
    assert gauc(y, p, group) == pytest.approx(num / den, abs=1e-12)


def test_gauc_nan_when_no_group_has_both_classes():
    assert math.isnan(gauc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]), np.array([1, 1, 2])))


def test_logloss_by_hand_with_clipping():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.8, 0.25, 0.0, 1.0])          # the last two are clipped to 1e-7 / 1 - 1e-7
    expected = -(math.log(0.8) + math.log(0.75) + math.log(1e-7) + math.log(1e-7)) / 4
    assert logloss(y, p) == pytest.approx(expected, rel=1e-9)


def test_difficulty_counts_by_hand():
    # p_t: pos -> p, neg -> 1 - p; t0 = 0.3, t1 = 0.6
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.45, 0.1, 0.05, 0.35, 0.5, 0.7, 0.95])
    # pos p_t: 0.9 well, 0.6 well (boundary), 0.45 poorly, 0.1 mis
    # neg p_t: 0.95 well, 0.65 well, 0.5 poorly, 0.3 poorly (boundary), 0.05 mis
    assert difficulty_counts(y, p, (0.3, 0.6)) == {
        "pos_well": 2, "pos_poorly": 1, "pos_mis": 1,
        "neg_well": 2, "neg_poorly": 2, "neg_mis": 1}
