"""Synthetic Criteo-schema data: layout, Zipf frequencies, base CTR, determinism, a real hard part."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tf4ctr_fast.config import DatasetConfig, SyntheticConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.prepare import prepare
from tf4ctr_fast.data.synthetic import synthesize
from tf4ctr_fast.errors import InputError

# Small vocabularies so that a logistic regression can learn every weight from 32k rows.
SMALL = dict(rows=40_000, num_int_fields=3, num_cat_fields=5, int_vocab=8, cat_vocab=20)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties."""
    order = np.argsort(score, kind="stable")
    _, inverse, counts = np.unique(score[order], return_inverse=True, return_counts=True)
    ranks = np.empty(len(score))
    ranks[order] = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_auc_helper_against_pair_counting():
    rng = np.random.default_rng(0)
    score, label = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60)
    pairs = [(1.0 if s > t else 0.5 if s == t else 0.0)
             for s, a in zip(score, label) if a == 1 for t, b in zip(score, label) if b == 0]
    assert auc(score, label) == pytest.approx(np.mean(pairs))


def test_criteo_layout_and_id_ranges():
    data = synthesize(SyntheticConfig(rows=5000, int_vocab=16, cat_vocab=300), seed=1)
    assert data.field_names == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert data.vocab_sizes == [18] * 13 + [302] * 26
    assert data.ids.shape == (5000, 39) and data.ids.dtype == np.int32
    assert data.ids.min() >= 2  # 0 padding and 1 OOV are never drawn
    assert np.all(data.ids.max(axis=0) < np.array(data.vocab_sizes))
    assert set(np.unique(data.labels)) == {0.0, 1.0}


def test_value_frequencies_follow_truncated_zipf():
    cfg = SyntheticConfig(rows=100_000, num_int_fields=1, num_cat_fields=1, int_vocab=6, cat_vocab=6,
                          zipf_a=1.2)
    data = synthesize(cfg, seed=3)
    expected = np.array([k ** -1.2 for k in range(1, 7)])
    expected /= expected.sum()
    int_freq = np.bincount(data.ids[:, 0] - 2, minlength=6) / cfg.rows
    np.testing.assert_allclose(int_freq, expected, atol=0.006)  # integer buckets: rank order
    cat_freq = np.sort(np.bincount(data.ids[:, 1] - 2, minlength=6))[::-1] / cfg.rows
    np.testing.assert_allclose(cat_freq, expected, atol=0.006)  # categorical: permuted ranks


def test_base_ctr_and_planted_probability():
    data = synthesize(SyntheticConfig(**SMALL), seed=5)
    assert data.click_prob.mean() == pytest.approx(0.25, abs=1e-6)
    assert data.labels.mean() == pytest.approx(0.25, abs=0.01)
    # labels really are drawn from click_prob: the positives' share among high-prob rows matches
    high = data.click_prob > 0.5
    assert data.labels[high].mean() == pytest.approx(data.click_prob[high].mean(), abs=0.03)


def test_deterministic_in_seed():
    cfg = SyntheticConfig(**SMALL)
    a, b, c = synthesize(cfg, seed=7), synthesize(cfg, seed=7), synthesize(cfg, seed=8)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.ids, c.ids)


def _logistic_regression_auc(data, n_train: int) -> float:
    """One weight per (field, value), fitted to convergence on the first n_train rows."""
    offsets = np.concatenate([[0], np.cumsum(data.vocab_sizes)[:-1]])
    x = torch.from_numpy(data.ids.astype(np.int64) + offsets)
    y = torch.from_numpy(data.labels).double()
    w = torch.zeros(sum(data.vocab_sizes) + 1, dtype=torch.float64, requires_grad=True)  # last: bias
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        logit = w[x[:n_train]].sum(1) + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[:n_train])
        loss = loss + 1e-5 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        score = (w[x[n_train:]].sum(1) + w[-1]).numpy()
    return auc(score, data.labels[n_train:])


@pytest.mark.parametrize("hard_fraction", [0.3, 0.0])
def test_first_order_model_misses_only_the_hard_part(hard_fraction):
    torch.set_num_threads(1)
    data = synthesize(SyntheticConfig(**SMALL, hard_fraction=hard_fraction), seed=2023)
    n_train = 32_000
    ceiling = auc(data.click_prob[n_train:], data.labels[n_train:])
    linear = _logistic_regression_auc(data, n_train)
    assert ceiling > 0.7  # the data carries real signal
    if hard_fraction > 0:
        assert ceiling - linear > 0.03, (ceiling, linear)
    else:  # without hard samples the same fit reaches the ceiling: the gap above is the hard part
        assert abs(ceiling - linear) < 0.01, (ceiling, linear)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepared_folder(tmp_path):
    cfg = DatasetConfig(name="syn", seed=11,
                        synthetic=SyntheticConfig(rows=1000, int_vocab=5, cat_vocab=9, split=[0.7, 0.2, 0.1]))
    ds = load_prepared(prepare(cfg, tmp_path / "a", progress=False))
    assert ds.schema["splits"] == {"train": 700, "valid": 200, "test": 100}
    assert ds.vocab_sizes == [7] * 13 + [11] * 26 and ds.group_field is None
    assert ds.schema["options"]["seed"] == 11
    assert ds.schema["options"]["synthetic"]["split"] == [0.7, 0.2, 0.1]
    data = synthesize(cfg.synthetic, seed=11)
    np.testing.assert_array_equal(ds.split("valid").ids, data.ids[700:900])
    np.testing.assert_array_equal(ds.split("test").labels, data.labels[900:])
    prepare(cfg, tmp_path / "b", progress=False)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")


def test_prepare_default_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = DatasetConfig(name="syn", synthetic=SyntheticConfig(rows=50, cat_vocab=4, split=[1.0, 0.0, 0.0]))
    out = prepare(cfg, progress=False)
    assert out == Path("data_prepared/syn")
    assert load_prepared(tmp_path / out).schema["splits"] == {"train": 50}  # empty splits are left out


@pytest.mark.parametrize("kw, key", [
    (dict(split=[0.8, 0.1]), "split"),
    (dict(split=[0.8, 0.3, 0.1]), "split"),
    (dict(split=[0.0, 0.5, 0.5]), "split"),
    (dict(hard_fraction=1.5), "hard_fraction"),
    (dict(rows=0), "rows"),
    (dict(cat_vocab=0), "cat_vocab"),
])
def test_bad_synthetic_config_names_key(tmp_path, kw, key):
    with pytest.raises(InputError, match=f"'dataset.synthetic.{key}'"):
        prepare(DatasetConfig(synthetic=SyntheticConfig(**kw)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
