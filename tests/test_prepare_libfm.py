"""`prepare` for libfm files: fields by block boundaries and by position on a hand-written file,
Frappe rows converted to libfm give exactly the CSV path's ids, every bad row named."""
from __future__ import annotations

import csv
import gzip
import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest

from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.libfm import prepare_libfm
from tf4ctr_fast.data.prepare import prepare
from tf4ctr_fast.errors import InputError

FRAPPE = Path(__file__).resolve().parents[2] / "shared" / "data" / "frappe_x1r"
FIELDS = ["user", "item", "ctx"]
BLOCKS = {"fields": FIELDS, "blocks": [0, 5, 10], "split": {"by": "files"}}
POSITION = {"fields": FIELDS, "split": {"by": "files"}}
# Blocks: user 0-4, item 5-9, ctx 10-. Row 3 has no ctx; row 4 lists its features out of order.
TEXT = """1 0:1 5:1 10:1
-1 1:1 6:1 11:1

0 0:1 7:1
1 12:1 0:1 5:1
"""


def _cfg(path: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="fm", format="libfm", train=str(path), min_count=kw.pop("min_count", 1), **kw)


def test_fields_by_blocks_by_hand(tmp_path):
    (tmp_path / "t.libfm").write_text(TEXT)
    ds = load_prepared(prepare_libfm(_cfg(tmp_path / "t.libfm"), tmp_path / "out", schema=BLOCKS))
    assert ds.field_names == FIELDS
    assert [f["vocab"] for f in ds.schema["fields"]] == [
        {"0": 2, "1": 3}, {"5": 2, "6": 3, "7": 4}, {"": 2, "10": 3, "11": 4, "12": 5}]  # "" = ctx missing
    train = ds.split("train")
    assert train.ids.tolist() == [[2, 2, 3], [3, 3, 4], [2, 4, 2], [2, 2, 5]]
    assert train.labels.tolist() == [1, 0, 0, 1]


def test_fields_by_position_by_hand(tmp_path):
    (tmp_path / "t.libfm").write_text("1 3:1 40:1\n0 4:1 41:1 \n1  3:1 42:1\n")  # extra spaces are fine
    ds = load_prepared(prepare_libfm(_cfg(tmp_path / "t.libfm", min_count=2), tmp_path / "out",
                                     schema={"fields": ["a", "b"], "split": {"by": "files"}}))
    assert [f["vocab"] for f in ds.schema["fields"]] == [{"3": 2}, {}]
    assert ds.split("train").ids.tolist() == [[2, 1], [1, 1], [2, 1]]


@pytest.mark.skipif(not FRAPPE.exists(), reason="../shared/data/frappe_x1r not present")
@pytest.mark.parametrize("by", ["position", "blocks"])
def test_frappe_rows_as_libfm_give_the_csv_ids(tmp_path, by):
    rng = random.Random(0)
    tables = {}
    for split in ("train", "valid"):
        with gzip.open(FRAPPE / f"{split}.csv.gz", "rt") as f:
            rows = list(itertools.islice(csv.reader(f), 600))
        tables[split] = rows
        (tmp_path / f"{split}.csv").write_text("".join(",".join(r) + "\n" for r in rows))
        header, body = rows[0], rows[1:]
        lines = []
        for r in body:
            features = [f"{v}:1" for name, v in zip(header, r) if name != "label"]
            if by == "blocks":
                rng.shuffle(features)  # with blocks, the order inside a row does not matter
            lines.append(("1" if r[header.index("label")] == "1" else "-1") + " " + " ".join(features) + "\n")
        (tmp_path / f"{split}.libfm").write_text("".join(lines))
    header = tables["train"][0]
    names = [n for n in header if n != "label"]
    body = np.array(tables["train"][1:] + tables["valid"][1:], dtype=np.int64)
    starts = [int(body[:, header.index(n)].min()) for n in names]  # the NFM ids come in field blocks
    assert starts == sorted(starts)
    schema = {"fields": names, **({"blocks": starts} if by == "blocks" else {})}
    files = {s: str(tmp_path / f"{s}.libfm") for s in ("train", "valid")}
    ds = load_prepared(prepare_libfm(DatasetConfig(format="libfm", min_count=2, **files), tmp_path / "fm",
                                     schema=schema))
    reference = load_prepared(prepare(DatasetConfig(format="csv_ids", min_count=2, train=str(tmp_path / "train.csv"),
                                                    valid=str(tmp_path / "valid.csv")), tmp_path / "ids", progress=False))
    assert ds.field_names == reference.field_names
    assert [f["vocab"] for f in ds.schema["fields"]] == [f["vocab"] for f in reference.schema["fields"]]
    for split in ("train", "valid"):
        np.testing.assert_array_equal(ds.split(split).ids, reference.split(split).ids)
        np.testing.assert_array_equal(ds.split(split).labels, reference.split(split).labels)


def test_through_prepare_with_default_ratio_split(tmp_path):
    (tmp_path / "t.libfm").write_text(TEXT * 10)
    ds = load_prepared(prepare_libfm(_cfg(tmp_path / "t.libfm"), tmp_path / "out",
                                     schema={"fields": FIELDS, "blocks": [0, 5, 10]}))
    assert ds.schema["splits"] == {"train": 32, "valid": 4, "test": 4}
    assert ds.schema["options"]["format"] == "libfm" and ds.schema["options"]["blocks"] == [0, 5, 10]


BAD = {
    "no colon": ("1 0:1 5\n", BLOCKS, "feature '5' is not index:value"),
    "not an index": ("1 a:1\n", BLOCKS, "feature 'a:1' is not index:value"),
    "weighted": ("1 0:1 5:0.5\n", BLOCKS, "feature '5:0.5' has a value other than 1"),
    "label": ("2 0:1\n", BLOCKS, "label '2' is not -1, 0 or 1"),
    "field twice": ("1 0:1 3:1\n", BLOCKS, "two features of field 'user'"),
    "below the blocks": ("1 0:1\n", {**BLOCKS, "blocks": [0, 5, 10]}, "feature '0:1' is below the first field block"),
    "extra feature": ("1 0:1 5:1 10:1 11:1\n", POSITION, "feature '11:1' is one more than the 3 fields"),
    "missing feature": ("1 0:1 5:1\n", POSITION, "expected 3 features (one per field), found 2"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_rows_name_file_and_line(tmp_path, case):
    text, schema, words = BAD[case]
    if case == "below the blocks":  # blocks start at 1 here: the good first row uses 1, not 0
        schema = {**schema, "blocks": [1, 5, 10]}
        (tmp_path / "t.libfm").write_text("1 1:1 5:1 10:1\n" + text)
    else:
        (tmp_path / "t.libfm").write_text("1 0:1 5:1 10:1\n" + text)
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 't.libfm'}:2: {words}")):
        prepare_libfm(_cfg(tmp_path / "t.libfm"), tmp_path / "out", schema=schema)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("schema, words", [
    (None, "'dataset.schema'"),
    ({"fields": []}, "'fields'"),
    ({"fields": ["a", "a"]}, "'fields'"),
    ({"fields": ["a", "b"], "blocks": [5, 5]}, "'blocks'"),
    ({"fields": ["a", "b"], "blocks": [0]}, "'blocks'"),
    ({"fields": ["a"], "columns": []}, "'columns' is unknown"),
])
def test_bad_schema(tmp_path, schema, words):
    (tmp_path / "t.libfm").write_text(TEXT)
    with pytest.raises(InputError, match=words):
        prepare_libfm(_cfg(tmp_path / "t.libfm"), tmp_path / "out", schema=schema)
