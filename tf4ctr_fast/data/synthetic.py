"""Synthetic data with Criteo's schema and a planted click model with easy and hard samples.

Fields: I1..I13 (bucketised integers, `int_vocab` buckets) and C1..C26 (`cat_vocab` ids), values
drawn with frequency ~ rank^-zipf_a. Integer buckets keep rank order (small buckets are common, as
with Criteo's log-bucketised counts); categorical ids are a random permutation of ranks, like hashes.

Click model, for raw values x of one row:
    easy part   lin(x)   = sum_f w_f[x_f]                           (first order)
    hard part   inter(x) = sum_{(a,b) in pairs} <u_a[x_a], u_b[x_b]>  (pairwise, low-rank)
    y ~ Bernoulli(sigmoid(bias + lin(x) + hard * inter(x))),  hard ~ Bernoulli(hard_fraction)
The latent tables u are centred under the value distribution, so E[inter | x_f] = 0 for every single
field: on the logit scale no first-order model recovers any of it, only models of field interactions
do. The noise is the Bernoulli draw and the hidden `hard` flag, so the best possible score is the
mixture `click_prob(x)`; its AUC is the ceiling for any model. `bias` makes the mean CTR BASE_CTR.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import DatasetConfig, SyntheticConfig, check_ranges
from ..errors import InputError
from .columns import FIRST_KNOWN_ID, SplitArrays, categorical_field, write_prepared

# Shape of the planted model; recorded in schema["options"] so a change shows in prepared data.
NUM_PAIRS = 12
LATENT_DIM = 4
LINEAR_STD = 1.5        # std of lin(x) over the rows
INTERACTION_STD = 4.0   # std of inter(x) over the rows
BASE_CTR = 0.25
SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class SyntheticData:
    field_names: list[str]
    vocab_sizes: list[int]     # buckets + 2 (padding and OOV ids are never drawn)
    ids: np.ndarray            # int32 [N, F], raw value + 2
    labels: np.ndarray         # float32 [N]
    click_prob: np.ndarray     # float64 [N]: planted P(click | ids), the best score any model can give


def synthesize(cfg: SyntheticConfig, seed: int, cat_vocab_sizes: Optional[Sequence[int]] = None) -> SyntheticData:
    """Deterministic in (cfg, seed); vectorised, a few seconds for 300k rows.

    `cat_vocab_sizes` gives each categorical field its own size instead of cfg.cat_vocab (Criteo's
    are very unequal). Memory is linear in the ids, a few vectors per field and no per-id matrix:
    Criteo's 5.5M ids after min-count take 275 MB in all at 300k rows
    (bench/test_bench_prepare.py::test_synthetic_with_criteo_vocabularies_stays_small).
    """
    _check(cfg)
    sizes = list(cat_vocab_sizes) if cat_vocab_sizes is not None else [cfg.cat_vocab] * cfg.num_cat_fields
    if len(sizes) != cfg.num_cat_fields or min(sizes, default=1) < 1:
        raise InputError(f"config key 'dataset.synthetic.cat_vocab_sizes': expected {cfg.num_cat_fields} "
                         f"sizes >= 1 (one per categorical field), got {sizes}")
    rng = np.random.default_rng(seed)
    names = ([f"I{i + 1}" for i in range(cfg.num_int_fields)]
             + [f"C{i + 1}" for i in range(cfg.num_cat_fields)])
    buckets = [cfg.int_vocab] * cfg.num_int_fields + sizes
    n, num_fields = cfg.rows, len(names)

    raw: list[np.ndarray] = []          # per field: int32 [N] raw values 0..buckets-1
    value_probs: list[np.ndarray] = []  # per field: probability of each raw value
    for j, v in enumerate(buckets):
        rank_probs = np.arange(1, v + 1, dtype=np.float64) ** -cfg.zipf_a
        rank_probs /= rank_probs.sum()
        ranks = np.minimum(np.searchsorted(np.cumsum(rank_probs), rng.random(n), side="right"), v - 1)
        is_categorical = j >= cfg.num_int_fields
        raw_of_rank = rng.permutation(v).astype(np.int32) if is_categorical else np.arange(v, dtype=np.int32)
        raw.append(raw_of_rank[ranks])
        probs = np.empty(v)
        probs[raw_of_rank] = rank_probs
        value_probs.append(probs)

    lin = np.zeros(n)
    for j, v in enumerate(buckets):
        lin += rng.standard_normal(v)[raw[j]]
    lin = _standardize(lin, LINEAR_STD)

    all_pairs = [(a, b) for a in range(num_fields) for b in range(a + 1, num_fields)]
    chosen = rng.choice(len(all_pairs), size=min(NUM_PAIRS, len(all_pairs)), replace=False)
    latent = {}
    for j in sorted({f for k in chosen for f in all_pairs[k]}):
        u = rng.standard_normal((buckets[j], LATENT_DIM))
        latent[j] = u - value_probs[j] @ u  # centred: E[u_j[x_j]] = 0
    inter = np.zeros(n)
    for k in sorted(chosen):
        a, b = all_pairs[k]
        inter += np.einsum("nk,nk->n", latent[a][raw[a]], latent[b][raw[b]])
    inter = _standardize(inter, INTERACTION_STD)

    bias = _solve_bias(lin, inter, cfg.hard_fraction)
    click_prob = ((1 - cfg.hard_fraction) * _sigmoid(bias + lin)
                  + cfg.hard_fraction * _sigmoid(bias + lin + inter))
    hard = rng.random(n) < cfg.hard_fraction
    labels = (rng.random(n) < _sigmoid(bias + lin + hard * inter)).astype(np.float32)
    ids = np.stack(raw, axis=1) + np.int32(FIRST_KNOWN_ID)
    return SyntheticData(field_names=names, vocab_sizes=[v + FIRST_KNOWN_ID for v in buckets],
                         ids=ids, labels=labels, click_prob=click_prob)


def generate_synthetic(cfg: DatasetConfig, out_dir: str | Path) -> Path:
    """Write a prepared folder: contiguous train/valid/test rows in cfg.synthetic.split proportions."""
    # `dataset.synthetic.cat_vocab_sizes` is the key the lead adds to SyntheticConfig; soft until then
    sizes = cfg.synthetic.cat_vocab_sizes or None
    data = synthesize(cfg.synthetic, cfg.seed, sizes)
    bounds = cfg.synthetic.split_bounds()
    splits: dict[str, SplitArrays] = {
        name: (data.ids[lo:hi], data.labels[lo:hi], None, None)
        for name, (lo, hi) in zip(SPLIT_NAMES, bounds) if hi > lo}
    schema = {
        # No vocab: generated ids never had raw values to map.
        "fields": [categorical_field(name, size, None)
                   for name, size in zip(data.field_names, data.vocab_sizes)],
        "label": "label",
        "group_field": None,
        "keep_columns": [],
        "options": {"format": "synthetic", "seed": cfg.seed,
                    "synthetic": dataclasses.asdict(cfg.synthetic),
                    **({"cat_vocab_sizes": list(sizes)} if sizes else {}),
                    "planted_model": {"num_pairs": NUM_PAIRS, "latent_dim": LATENT_DIM,
                                      "linear_std": LINEAR_STD, "interaction_std": INTERACTION_STD,
                                      "base_ctr": BASE_CTR}},
        "sources": {},
    }
    return write_prepared(out_dir, schema, splits)


def _check(cfg: SyntheticConfig) -> None:
    check_ranges(cfg, "dataset.synthetic")  # load_config checked it too; synthesize may get one built in code


def _standardize(x: np.ndarray, std: float) -> np.ndarray:
    spread = x.std()
    return (x - x.mean()) * (std / spread) if spread > 0 else np.zeros_like(x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def _solve_bias(lin: np.ndarray, inter: np.ndarray, hard_fraction: float) -> float:
    """The bias that makes the mean planted click probability BASE_CTR.

    Newton's method, kept inside a shrinking bracket (the mean CTR rises with the bias).
    """
    lo, hi, bias = -40.0, 40.0, 0.0
    for _ in range(100):
        p_easy, p_hard = _sigmoid(bias + lin), _sigmoid(bias + lin + inter)
        gap = ((1 - hard_fraction) * p_easy + hard_fraction * p_hard).mean() - BASE_CTR
        if abs(gap) < 1e-9:
            break
        lo, hi = (bias, hi) if gap < 0 else (lo, bias)
        slope = ((1 - hard_fraction) * p_easy * (1 - p_easy) + hard_fraction * p_hard * (1 - p_hard)).mean()
        bias -= gap / slope
        if not lo < bias < hi:
            bias = 0.5 * (lo + hi)
    return bias
