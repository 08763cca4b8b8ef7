"""The prepared-dataset folder: id rules, round trip, atomicity, determinism, bad folders."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tf4ctr_fast.data import columns
from tf4ctr_fast.data.columns import IntVocab, categorical_field, load_prepared, write_prepared
from tf4ctr_fast.errors import InputError


def test_vocab_ids_follow_raw_value_order_and_min_count():
    train = np.array([30, 10, 30, -4, 10, -4, 5, 30])
    vocab = IntVocab.fit(train, min_count=2)
    # counts: 30:3, 10:2, -4:2, 5:1 -> known -4, 10, 30 get 2, 3, 4; 5 and unseen values get OOV 1
    assert vocab.size == 5
    assert vocab.encode(np.array([-4, 10, 30, 5, 7, 10**12])).tolist() == [2, 3, 4, 1, 1, 1]
    assert vocab.encode(np.array([30])).dtype == np.int32
    assert IntVocab.fit(train, min_count=1).encode(np.array([-4, 5, 10, 30])).tolist() == [2, 3, 4, 5]
    assert IntVocab.fit(train, min_count=4).encode(np.array([30, 10])).tolist() == [1, 1]


def test_vocab_json_round_trip_and_bad_vocab():
    vocab = IntVocab.fit(np.array([7, 3, 3, 7, 11]), min_count=1)
    assert vocab.to_json() == {"3": 2, "7": 3, "11": 4}
    field = categorical_field("f", vocab.size, vocab.to_json())
    again = IntVocab.from_field(field, "schema.json")
    assert again.encode(np.array([11, 3, 4])).tolist() == [4, 2, 1]
    with pytest.raises(InputError, match="schema.json.*'f'"):
        IntVocab.from_field(categorical_field("f", 4, {"3": 3, "7": 2}), "schema.json")
    with pytest.raises(InputError, match="no vocabulary"):
        IntVocab.from_field(categorical_field("f", 4, None), "schema.json")


def _schema(group: bool, keep: list[str]) -> dict:
    return {"fields": [categorical_field("a", 4, None), categorical_field("b", 3, None)],
            "label": "label", "group_field": "a" if group else None, "keep_columns": keep,
            "options": {"x": 1}, "sources": {}}


def _arrays(n: int, seed: int, group: bool, keep: int):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, 4, n), rng.integers(0, 3, n)], axis=1).astype(np.int32)
    labels = rng.integers(0, 2, n).astype(np.float32)
    return (ids, labels, rng.integers(-5, 5, n) if group else None,
            rng.integers(0, 100, (n, keep)) if keep else None)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip(tmp_path):
    splits = {"train": _arrays(50, 0, True, 2), "valid": _arrays(7, 1, True, 2)}
    out = write_prepared(tmp_path / "ds", _schema(True, ["a", "z"]), splits)
    ds = load_prepared(out)
    assert ds.field_names == ["a", "b"] and ds.vocab_sizes == [4, 3]
    assert ds.group_field == "a" and ds.keep_columns == ["a", "z"]
    assert ds.schema["splits"] == {"train": 50, "valid": 7}
    assert ds.schema["format_version"] == columns.FORMAT_VERSION
    assert ds.has_split("valid") and not ds.has_split("test")
    for name, (ids, labels, group, keep) in splits.items():
        s = ds.split(name)
        assert isinstance(s.ids, np.memmap) and s.ids.dtype == np.int32
        assert s.num_rows == len(labels)
        np.testing.assert_array_equal(s.ids, ids)
        np.testing.assert_array_equal(s.labels, labels)
        np.testing.assert_array_equal(s.group, group)
        np.testing.assert_array_equal(s.keep, keep)
        assert s.labels.dtype == np.float32 and s.group.dtype == np.int64 and s.keep.dtype == np.int64
    with pytest.raises(InputError, match="no split 'test'"):
        ds.split("test")


def test_no_group_no_keep(tmp_path):
    ds = load_prepared(write_prepared(tmp_path / "ds", _schema(False, []),
                                      {"train": _arrays(5, 0, False, 0)}))
    s = ds.split("train")
    assert s.group is None and s.keep is None
    assert sorted(p.name for p in (tmp_path / "ds" / "train").iterdir()) == ["ids.npy", "labels.npy"]


def test_identical_input_gives_identical_bytes_and_replaces_old(tmp_path):
    splits = {"train": _arrays(40, 3, True, 1)}
    write_prepared(tmp_path / "a", _schema(True, ["b"]), splits)
    write_prepared(tmp_path / "b", _schema(False, []), {"train": _arrays(9, 4, False, 0)})
    write_prepared(tmp_path / "b", _schema(True, ["b"]), splits)  # over an older, different folder
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp or .old siblings


def test_crash_while_writing_leaves_nothing(tmp_path, monkeypatch):
    real_save = np.save
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_prepared(tmp_path / "ds", _schema(False, []),
                       {"train": _arrays(5, 0, False, 0), "valid": _arrays(5, 1, False, 0)})
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_arrays_are_rejected_before_writing(tmp_path):
    ids, labels, _, _ = _arrays(5, 0, False, 0)
    ids[0, 1] = 3  # field b has vocab_size 3
    with pytest.raises(ValueError, match="outside"):
        write_prepared(tmp_path / "ds", _schema(False, []), {"train": (ids, labels, None, None)})
    with pytest.raises(ValueError, match="group"):
        write_prepared(tmp_path / "ds", _schema(True, []), {"train": _arrays(5, 0, False, 0)})
    assert list(tmp_path.iterdir()) == []


def test_bad_folders(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path / 'nowhere'}.*no schema.json"):
        load_prepared(tmp_path / "nowhere")
    out = write_prepared(tmp_path / "ds", _schema(False, []), {"train": _arrays(5, 0, False, 0)})
    schema = json.loads((out / "schema.json").read_text())
    schema["format_version"] = 99
    (out / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(InputError, match=f"{out}.*format_version 99"):
        load_prepared(out)
    schema["format_version"] = columns.FORMAT_VERSION
    schema["splits"]["train"] = 6  # disagrees with the arrays
    (out / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(InputError, match="ids.npy: shape"):
        load_prepared(out).split("train")
    (out / "schema.json").write_text("{not json")
    with pytest.raises(InputError, match="schema.json"):
        load_prepared(out)


def test_vocabulary_spanning_more_than_int64_range_rebuilds():
    # np.diff of these keys overflows; the order check must compare them instead
    field = {"name": "x", "vocab": {str(-2**63 + 1): 2, str(2**63 - 1): 3}}
    assert IntVocab.from_field(field, "schema.json").encode(np.array([2**63 - 1, 5])).tolist() == [3, 1]
