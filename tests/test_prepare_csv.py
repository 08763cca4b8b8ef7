"""`prepare` for integer-id CSVs: exact ids on a hand-made file, Frappe, every bad input, determinism."""
from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data import csv_ids
from tf4ctr_fast.data.csv_ids import encode_for_predict
from tf4ctr_fast.data.prepare import prepare
from tf4ctr_fast.errors import InputError

FRAPPE = Path(__file__).resolve().parents[2] / "shared" / "data" / "frappe_x1r"

TRAIN = """user,item,ctx,label
30,7,1,1
10,8,1,0
30,7,2,0
-4,9,1,1
10,7,1,0
-4,7,1,1
5,8,1,0
"""
# Same columns in another order, an unseen user (99) and unseen item/ctx values (9 is rare, 3 new).
VALID = """label,ctx,user,item
1,3,10,9
0,1,99,7
"""


def _cfg(tmp_path: Path, train: str = TRAIN, valid: str | None = VALID, **kw) -> DatasetConfig:
    (tmp_path / "train.csv").write_text(train)
    if valid is not None:
        (tmp_path / "valid.csv").write_text(valid)
    return DatasetConfig(name="tiny", format="csv_ids", train=str(tmp_path / "train.csv"),
                         valid=str(tmp_path / "valid.csv") if valid is not None else None, **kw)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_csv_ids_by_hand(tmp_path):
    cfg = _cfg(tmp_path, group_field="user", keep_columns=["item", "user"])
    ds = load_prepared(prepare(cfg, tmp_path / "out", progress=False))
    # min_count 2 on train: user -4,10,30 known (5 seen once); item 7,8 known (9 once); ctx 1 known.
    assert ds.field_names == ["user", "item", "ctx"]
    assert ds.vocab_sizes == [5, 4, 3]
    train = ds.split("train")
    assert train.ids.tolist() == [[4, 2, 2], [3, 3, 2], [4, 2, 1], [2, 1, 2], [3, 2, 2], [2, 2, 2], [1, 3, 2]]
    assert train.labels.tolist() == [1, 0, 0, 1, 0, 1, 0]
    assert train.group.tolist() == [30, 10, 30, -4, 10, -4, 5]
    assert train.keep.tolist() == [[7, 30], [8, 10], [7, 30], [9, -4], [7, 10], [7, -4], [8, 5]]
    valid = ds.split("valid")
    assert valid.ids.tolist() == [[3, 1, 1], [1, 2, 2]]
    assert valid.labels.tolist() == [1, 0]
    assert valid.group.tolist() == [10, 99]
    assert not ds.has_split("test")
    assert ds.schema["fields"][0]["vocab"] == {"-4": 2, "10": 3, "30": 4}
    assert ds.schema["options"] == {"format": "csv_ids", "label": "label", "fields": ["user", "item", "ctx"],
                                    "group_field": "user", "keep_columns": ["item", "user"], "min_count": 2}
    source = ds.schema["sources"]["train"]
    assert source["path"] == str((tmp_path / "train.csv").resolve())
    assert source["sha256"] == hashlib.sha256((tmp_path / "train.csv").read_bytes()).hexdigest()


def test_min_count_one_and_field_subset(tmp_path):
    cfg = _cfg(tmp_path, fields=["item", "user"], min_count=1)
    ds = load_prepared(prepare(cfg, tmp_path / "out", progress=False))
    assert ds.field_names == ["item", "user"]
    assert ds.vocab_sizes == [5, 6]  # items 7,8,9; users -4,5,10,30
    assert ds.split("train").ids[:, 1].tolist() == [5, 4, 5, 2, 4, 2, 3]
    assert ds.split("valid").ids.tolist() == [[4, 4], [2, 1]]
    assert ds.group_field is None and ds.split("train").keep is None


def test_gzip_crlf_and_blank_lines_read_like_plain(tmp_path):
    (tmp_path / "p").mkdir()
    plain = load_prepared(prepare(_cfg(tmp_path / "p"), tmp_path / "p" / "out", progress=False))
    odd = TRAIN.replace("\n", "\r\n").replace("5,8,1,0", "\r\n5,8,1,0\r\n")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "train.csv.gz").write_bytes(gzip.compress(odd.encode()))
    (tmp_path / "g" / "valid.csv").write_text(VALID)
    cfg = DatasetConfig(format="csv_ids", train=str(tmp_path / "g" / "train.csv.gz"),
                        valid=str(tmp_path / "g" / "valid.csv"))
    gz = load_prepared(prepare(cfg, tmp_path / "g" / "out", progress=False))
    for split in ("train", "valid"):
        np.testing.assert_array_equal(gz.split(split).ids, plain.split(split).ids)
        np.testing.assert_array_equal(gz.split(split).labels, plain.split(split).labels)


def test_multi_member_gzip_read_in_small_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_ids, "_GZIP_CHUNK", 7)
    half = TRAIN.index("-4,9")
    (tmp_path / "train.csv.gz").write_bytes(gzip.compress(TRAIN[:half].encode())
                                            + gzip.compress(TRAIN[half:].encode()))
    table = csv_ids.read_id_csv(tmp_path / "train.csv.gz", {"user": "test", "label": "test"})
    assert table.columns["user"].tolist() == [30, 10, 30, -4, 10, -4, 5]
    assert table.line_numbers.tolist() == [2, 3, 4, 5, 6, 7, 8]


def test_identical_inputs_give_byte_identical_folders(tmp_path):
    cfg = _cfg(tmp_path, group_field="user", keep_columns=["item"])
    prepare(cfg, tmp_path / "a", progress=False)
    prepare(cfg, tmp_path / "b", progress=False)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    # schema + prepared_from + (ids, labels, group, keep) x 2 splits
    assert len(_hashes(tmp_path / "a")) == 2 + 2 * 4


def test_prepare_prints_one_line_summary(tmp_path, capsys):
    prepare(_cfg(tmp_path), tmp_path / "out")
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "train 7" in out and "valid 2" in out and "user=5" in out and "ctx=3" in out


def test_unknown_format_names_config_key(tmp_path):
    with pytest.raises(InputError, match="'dataset.format'.*'libsvm'"):
        prepare(DatasetConfig(format="libsvm"), tmp_path / "out", progress=False)


@pytest.mark.parametrize("kw, pattern", [
    (dict(fields=["user", "label"]), "'dataset.fields'.*label"),
    (dict(fields=["user", "user"]), "'dataset.fields'.*twice"),
    (dict(min_count=0), "'dataset.min_count'"),
])
def test_bad_options_name_config_key(tmp_path, kw, pattern):
    with pytest.raises(InputError, match=pattern):
        prepare(_cfg(tmp_path, **kw), tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="'dataset.train'"):
        prepare(DatasetConfig(format="csv_ids"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# (file to break, its new content, extra config, expected line, words the message must contain)
BAD_INPUTS = {
    "empty file": ("train.csv", "", {}, 1, "empty"),
    "header only": ("train.csv", "user,item,ctx,label\n", {}, 1, "no data rows"),
    "header only in valid": ("valid.csv", "label,ctx,user,item\n", {}, 1, "no data rows"),
    "too few columns": ("train.csv", TRAIN.replace("10,8,1,0", "10,8,0"), {}, 3, "expected 4 columns"),
    "too many columns": ("valid.csv", VALID.replace("0,1,99,7", "0,1,99,7,5"), {}, 3, "found 5"),
    "non-integer id": ("train.csv", TRAIN.replace("-4,9,1,1", "-4,x9,1,1"), {}, 5, "'item'"),
    "float id": ("valid.csv", VALID.replace("1,3,10,9", "1,3,10.5,9"), {}, 2, "'user'"),
    "empty id": ("train.csv", TRAIN.replace("5,8,1,0", "5,,1,0"), {}, 8, "'item'"),
    "after blank lines": ("train.csv", TRAIN.replace("30,7,2,0", "\n\n30,7,2,zero"), {}, 6, "'label'"),
    "label not 0/1": ("train.csv", TRAIN.replace("-4,7,1,1", "-4,7,1,2"), {}, 7, "0 or 1"),
    "label not 0/1 in valid": ("valid.csv", VALID.replace("0,1,99,7", "-1,1,99,7"), {}, 3, "0 or 1"),
    "unknown field": ("train.csv", TRAIN, {"fields": ["user", "price"]}, 1, "'price'"),
    "valid lacks a column": ("valid.csv", "label,user,item\n1,10,9\n", {}, 1, "'ctx'"),
    "missing keep column": ("train.csv", TRAIN, {"keep_columns": ["session"]}, 1, "'session'"),
    "missing group column": ("train.csv", TRAIN, {"group_field": "session"}, 1, "'session'"),
    "missing label column": ("train.csv", TRAIN.replace("label", "click"), {}, 1, "'label'"),
    "not utf-8": ("train.csv", TRAIN.replace("5,8", "5\xff,8"), {}, 8, "UTF-8"),
    "id beyond int64": ("train.csv", TRAIN.replace("10,8,1,0", "10,99999999999999999999,1,0"), {}, 3,
                        "64 bits"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, case):
    name, content, extra, line, words = BAD_INPUTS[case]
    cfg = _cfg(tmp_path, **extra)
    (tmp_path / name).write_bytes(content.encode("latin-1") if case == "not utf-8" else content.encode())
    with pytest.raises(InputError) as err:
        prepare(cfg, tmp_path / "out", progress=False)
    message = str(err.value)
    assert f"{tmp_path / name}:{line}:" in message, message
    assert words in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv", "valid.csv"]  # nothing written


def test_missing_and_unreadable_files(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.valid = str(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'nope.csv'}: file not found")):
        prepare(cfg, tmp_path / "out", progress=False)

    cfg.valid = str(tmp_path / "valid.csv.gz")
    (tmp_path / "valid.csv.gz").write_bytes(VALID.encode())  # named .gz, not gzip
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'valid.csv.gz'}:1: unreadable gzip")):
        prepare(cfg, tmp_path / "out", progress=False)

    # A gzip stream cut short: the line named is the one after the last complete line it gave.
    rows = "label,ctx,user,item\n" + "".join(f"1,{i % 7},{i},{i % 5}\n" for i in range(20000))
    (tmp_path / "valid.csv.gz").write_bytes(gzip.compress(rows.encode())[:-2000])
    with pytest.raises(InputError) as err:
        prepare(cfg, tmp_path / "out", progress=False)
    found = re.search(re.escape(str(tmp_path / "valid.csv.gz")) + r":(\d+): unreadable gzip", str(err.value))
    assert found and int(found.group(1)) > 1, str(err.value)
    assert not (tmp_path / "out").exists()


def test_encode_for_predict(tmp_path):
    ds = load_prepared(prepare(_cfg(tmp_path, keep_columns=["user"]), tmp_path / "out", progress=False))
    (tmp_path / "new.csv").write_text("item,ctx,user,other\n8,1,30,5\n9,2,77,6\n")
    ids, keep, labels = encode_for_predict(tmp_path / "new.csv", ds.schema)
    assert ids.dtype == np.int32 and ids.tolist() == [[4, 3, 2], [1, 1, 1]]
    assert keep["user"].tolist() == [30, 77] and labels is None
    ids, keep, labels = encode_for_predict(tmp_path / "valid.csv", ds.schema)
    np.testing.assert_array_equal(ids, ds.split("valid").ids)
    assert labels.tolist() == [1.0, 0.0]
    (tmp_path / "bad.csv").write_text("user,item\n1,2\n")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'bad.csv'}:1:") + ".*'ctx'"):
        encode_for_predict(tmp_path / "bad.csv", ds.schema)


# ---- Frappe (skipped when ../shared/data is absent) -------------------------------------------

@pytest.fixture(scope="module")
def frappe(tmp_path_factory):
    if not (FRAPPE / "train.csv.gz").is_file():
        pytest.skip(f"{FRAPPE} not present")
    cfg = DatasetConfig(name="frappe", format="csv_ids", train=str(FRAPPE / "train.csv.gz"),
                        valid=str(FRAPPE / "valid.csv.gz"), test=str(FRAPPE / "test.csv.gz"),
                        group_field="user", keep_columns=["user", "item"])
    return load_prepared(prepare(cfg, tmp_path_factory.mktemp("frappe") / "ds", progress=False))


def _read_rows(name: str) -> tuple[list[str], list[list[str]]]:
    with gzip.open(FRAPPE / name, "rt") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_frappe_rows_vocab_and_ids(frappe):
    assert frappe.schema["splits"] == {"train": 202027, "valid": 57722, "test": 28860}
    header, train = _read_rows("train.csv.gz")
    fields = header[:-1]
    assert frappe.field_names == fields and header[-1] == "label"
    id_maps = []  # per field: raw value -> id, by the rules, from plain Python counting
    for j in range(len(fields)):
        counts = collections.Counter(row[j] for row in train)
        known = sorted(int(v) for v, c in counts.items() if c >= 2)
        id_maps.append({v: i + 2 for i, v in enumerate(known)})
    assert frappe.vocab_sizes == [len(m) + 2 for m in id_maps]
    for split, rows, step in (("train", train, 17), ("test", _read_rows("test.csv.gz")[1], 1)):
        rows = [[int(v) for v in row] for row in rows[::step]]  # a sample of train keeps this quick
        got = frappe.split(split)
        expected = [[id_maps[j].get(v, 1) for j, v in enumerate(row[:-1])] for row in rows]
        np.testing.assert_array_equal(got.ids[::step], expected)
        np.testing.assert_array_equal(got.labels[::step], [row[-1] for row in rows])
        np.testing.assert_array_equal(got.group[::step], [row[0] for row in rows])
        np.testing.assert_array_equal(got.keep[::step], [row[:2] for row in rows])
    assert 0.3 < float(np.mean(frappe.split("valid").labels)) < 0.37  # 1/3 positive
