"""Evaluation metrics in numpy, as FuxiCTR computes them (REFERENCE.md "Metrics").

AUC is the rank-sum (Mann-Whitney) statistic with tied scores sharing their average rank, which is
exactly sklearn's roc_auc_score. gAUC runs the same rank computation inside every group at once
(one sort by (group, score)), so it costs one lexsort however many users there are.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

LOGLOSS_EPS = 1e-7


def _group_aucs(y: np.ndarray, p: np.ndarray, group: Optional[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(AUC per group, rows per group); a group with a single class gets AUC nan."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p).ravel()           # sorted in its own dtype: float32 sorts faster
    n = y.size
    if p.size != n or (group is not None and np.size(group) != n):
        raise ValueError(f"length mismatch: y {n}, p {p.size}"
                         + ("" if group is None else f", group {np.size(group)}"))
    if n == 0:
        return np.full(0, np.nan), np.zeros(0, dtype=np.int64)
    if group is None:
        order = np.argsort(p)             # any order within ties: they share one average rank
        new_group = np.zeros(n, dtype=bool)
    else:
        group = np.asarray(group).ravel()
        order = np.lexsort((p, group))           # by group, then by score
        g = group[order]
        new_group = np.r_[False, g[1:] != g[:-1]]
    new_group[0] = True
    ps, ys = p[order], (y[order] > 0.5).astype(np.float64)

    group_idx = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    new_tie = new_group | np.r_[True, ps[1:] != ps[:-1]]
    tie_idx = np.cumsum(new_tie) - 1
    tie_start = np.flatnonzero(new_tie)
    tie_end = np.r_[tie_start[1:], n]
    # 1-based rank within the group, averaged over the tie block
    tie_rank = (tie_start - group_start[group_idx[tie_start]]) + (tie_end - tie_start + 1) / 2.0
    rank = tie_rank[tie_idx]

    n_rows = np.bincount(group_idx)
    n_pos = np.bincount(group_idx, weights=ys)
    n_neg = n_rows - n_pos
    pos_rank_sum = np.bincount(group_idx, weights=rank * ys)
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    aucs[(n_pos == 0) | (n_neg == 0)] = np.nan
    return aucs, n_rows


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve; nan when y holds a single class."""
    return float(_group_aucs(y, p, None)[0][0]) if np.size(y) else float("nan")


def gauc(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> float:
    """Per-group AUC weighted by group size, over groups holding both classes; nan if none does."""
    aucs, n_rows = _group_aucs(y, p, group)
    usable = ~np.isnan(aucs)
    if not usable.any():
        return float("nan")
    return float(np.sum(aucs[usable] * n_rows[usable]) / np.sum(n_rows[usable]))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy with p clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


DIFFICULTY_KEYS = ("pos_well", "pos_poorly", "pos_mis", "neg_well", "neg_poorly", "neg_mis")


def difficulty_counts(y: np.ndarray, p: np.ndarray,
                      thresholds: Sequence[float] = (0.3, 0.6)) -> dict[str, int]:
    """Samples per class and difficulty (paper Fig. 2/11), by p_t = y*p + (1-y)*(1-p):
    p_t < t0 misclassified, t0 <= p_t < t1 poorly classified, p_t >= t1 well classified."""
    t0, t1 = thresholds
    positive = np.asarray(y).ravel() > 0.5
    p = np.asarray(p, dtype=np.float64).ravel()
    p_t = np.where(positive, p, 1.0 - p)
    mis, well = p_t < t0, p_t >= t1
    poorly = ~mis & ~well
    counts = {}
    for cls, rows in (("pos", positive), ("neg", ~positive)):
        counts[f"{cls}_well"] = int(np.sum(well & rows))
        counts[f"{cls}_poorly"] = int(np.sum(poorly & rows))
        counts[f"{cls}_mis"] = int(np.sum(mis & rows))
    return counts
