"""`prepare` for CSV/TSV + schema YAML: every column kind by hand, splits by files / ratio / time,
Frappe through the schema path = csv_ids, bad schemas and bad rows, determinism."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.engine import ratio_split
from tf4ctr_fast.data.prepare import prepare
from tf4ctr_fast.data.schema_csv import prepare_schema_csv
from tf4ctr_fast.data.text import hash_text
from tf4ctr_fast.errors import InputError

FRAPPE = Path(__file__).resolve().parents[2] / "shared" / "data" / "frappe_x1r"

TRAIN = """label,user,song,genres,age,I1,item,extra
1,10,b,x|y|z,17,5,100,q
0,20,a,y,30,,101,q
1,10,a,,45,1,102,q
0,10,b,z|x,29.5,-1,103,q
"""
# columns in another order; an unseen genre (w) and I1 bucket (100 -> 21)
VALID = """item,label,I1,age,genres,song,user,extra
200,1,100,18,x|w,c,20,q
"""
SCHEMA = {"columns": [
    {"name": "label", "kind": "label"},
    {"name": "user", "kind": "categorical", "codec": "int", "group": True},
    {"name": "song", "kind": "categorical"},
    {"name": "genres", "kind": "multi_valued", "separator": "|", "max_len": 2, "pooling": "mean"},
    {"name": "age", "kind": "numeric_bucket", "boundaries": [18, 30]},
    {"name": "I1", "kind": "numeric_bucket", "rule": "log2"},
    {"name": "item", "kind": "keep"},
]}


def _write(tmp_path: Path, train: str = TRAIN, valid: str | None = VALID, schema: dict = SCHEMA) -> DatasetConfig:
    (tmp_path / "train.csv").write_text(train)
    if valid is not None:
        (tmp_path / "valid.csv").write_text(valid)
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    return DatasetConfig(name="t", format="csv", train=str(tmp_path / "train.csv"), min_count=1,
                         valid=str(tmp_path / "valid.csv") if valid is not None else None)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _by_hash(*texts: str) -> dict[str, int]:
    """A str field's vocabulary: ids 2.. in the order of the 64-bit FNV-1a keys."""
    return {t: i + 2 for i, t in enumerate(sorted(texts, key=hash_text))}


def test_fnv1a_matches_published_test_vectors():
    assert hash_text("") == 0xCBF29CE484222325 - (1 << 64)
    assert hash_text("a") == 0xAF63DC4C8601EC8C - (1 << 64)
    assert hash_text("foobar") == 0x85944171F73967E8 - (1 << 64)


def test_every_column_kind_by_hand(tmp_path):
    cfg = _write(tmp_path)
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml"))
    assert ds.field_names == ["user", "song", "age", "I1"]
    vocab = {f["name"]: f["vocab"] for f in ds.schema["fields"]}
    assert vocab["user"] == {"10": 2, "20": 3}
    assert vocab["song"] == _by_hash("a", "b")
    assert vocab["age"] == {"0": 2, "1": 3, "2": 4}          # 17 | 18 <= 29.5 < 30 | 30, 45
    assert vocab["I1"] == {"": 2, "-1": 3, "1": 4, "2": 5}   # missing first; 5 -> floor(ln(5)^2) = 2
    song = vocab["song"]
    train = ds.split("train")
    assert train.ids.tolist() == [[2, song["b"], 2, 5], [3, song["a"], 4, 2], [2, song["a"], 4, 4],
                                  [2, song["b"], 3, 3]]
    assert train.labels.tolist() == [1, 0, 1, 0]
    assert train.group.tolist() == [10, 20, 10, 10] and ds.group_field == "user"
    assert train.keep.tolist() == [[100], [101], [102], [103]] and ds.keep_columns == ["item"]

    [genres] = ds.multi_valued_fields
    assert genres["kind"] == "multi_valued" and genres["pooling"] == "mean" and genres["max_len"] == 2
    g = genres["vocab"]
    assert g == _by_hash("x", "y", "z")                     # z only survives from "z|x": max_len cuts row 1
    values, offsets = train.multi_valued["genres"]
    assert offsets.tolist() == [0, 2, 3, 3, 5]
    assert values.tolist() == [g["x"], g["y"], g["y"], g["z"], g["x"]]
    assert values.dtype == np.int32 and offsets.dtype == np.int64

    valid = ds.split("valid")
    assert valid.ids.tolist() == [[3, 1, 3, 1]]             # song c and I1 bucket 21 unseen -> OOV
    values, offsets = valid.multi_valued["genres"]
    assert values.tolist() == [g["x"], 1] and offsets.tolist() == [0, 2]
    assert valid.keep.tolist() == [[200]] and valid.group.tolist() == [20]
    assert ds.schema["report"]["ignored_columns"] == ["extra"]
    assert [f["codec"] for f in ds.schema["fields"]] == ["int", "str", "int", "int"]
    assert ds.schema["fields"][2]["boundaries"] == [18.0, 30.0] and ds.schema["fields"][3]["bucket"] == "log2"


def test_tsv_without_header_and_min_count(tmp_path):
    schema = {"delimiter": "\t", "header": False, "columns": [
        {"name": "u", "kind": "categorical", "codec": "int", "min_count": 2},
        {"name": "label", "kind": "label"},
        {"name": "h", "kind": "categorical", "codec": "hex"}]}
    cfg = _write(tmp_path, train="5\t1\tff\n5\t0.0\t0a\n6\t1.0\tFF\n", valid=None, schema=schema)
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump({**schema, "split": {"by": "files"}}))
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml"))
    assert ds.schema["fields"][0]["vocab"] == {"5": 2}     # 6 seen once < its min_count 2
    assert ds.schema["fields"][1]["vocab"] == {"0a": 2, "ff": 3}   # hex is case-blind
    assert ds.split("train").ids.tolist() == [[2, 3], [2, 2], [1, 3]]
    assert ds.split("train").labels.tolist() == [1, 0, 1]


def test_split_by_ratio_is_seeded_and_complete(tmp_path):
    rows = "".join(f"{i % 2},{i % 3},s{i % 4},,{i},{i},{1000 + i},q\n" for i in range(50))
    cfg = _write(tmp_path, train=TRAIN.splitlines()[0] + "\n" + rows, valid=None,
                 schema={**SCHEMA, "split": {"by": "ratio", "ratios": [0.6, 0.2, 0.2]}})
    cfg.seed = 5
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml"))
    assert ds.schema["splits"] == {"train": 30, "valid": 10, "test": 10}
    split, rank = ratio_split(50, (0.6, 0.2, 0.2), seed=5)
    for s, name in enumerate(("train", "valid", "test")):
        order = sorted(np.flatnonzero(split == s), key=lambda r: rank[r])
        assert ds.split(name).keep[:, 0].tolist() == [1000 + r for r in order]


def test_split_by_time_is_an_ordered_cut(tmp_path):
    times = [5, 1, 9, 3, 3, 7, 0, 8, 2, 6]
    schema = {"columns": [{"name": "label", "kind": "label"}, {"name": "x", "kind": "categorical"},
                          {"name": "t", "kind": "time"}, {"name": "id", "kind": "keep"}],
              "split": {"by": "time", "column": "t", "ratios": [0.6, 0.2, 0.2]}}
    rows = "".join(f"1,a,{t},{i}\n" for i, t in enumerate(times))
    cfg = _write(tmp_path, train="label,x,t,id\n" + rows, valid=None, schema=schema)
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml"))
    order = sorted(range(10), key=lambda i: (times[i], i))   # ties (the two 3s) keep file order
    got = [ds.split(s).keep[:, 0].tolist() for s in ("train", "valid", "test")]
    assert got == [order[:6], order[6:8], order[8:]]
    assert ds.schema["options"]["split"] == {"by": "time", "ratios": [0.6, 0.2, 0.2]}


@pytest.mark.skipif(not FRAPPE.exists(), reason="../shared/data/frappe_x1r not present")
def test_frappe_through_the_schema_path_equals_csv_ids(tmp_path):
    names = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
    schema = {"columns": [{"name": "label", "kind": "label"}]
              + [{"name": n, "kind": "categorical", "codec": "int", "group": n == "user",
                  "keep": n in ("user", "item")} for n in names]}
    files = {s: str(FRAPPE / f"{s}.csv.gz") for s in ("train", "valid", "test")}
    ids_cfg = DatasetConfig(format="csv_ids", group_field="user", keep_columns=["user", "item"], **files)
    reference = load_prepared(prepare(ids_cfg, tmp_path / "ids", progress=False))
    cfg = DatasetConfig(format="csv", **files)
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "csv", schema=schema))
    assert ds.field_names == reference.field_names and ds.vocab_sizes == reference.vocab_sizes
    assert [f["vocab"] for f in ds.schema["fields"]] == [f["vocab"] for f in reference.schema["fields"]]
    for split in ("train", "valid", "test"):
        a, b = ds.split(split), reference.split(split)
        for name in ("ids", "labels", "group", "keep"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{split} {name}")


def test_text_of_str_values_is_read_back_across_chunks_and_workers(tmp_path):
    rows = "".join(f"{i % 2},{i % 7},song{i % 13},g{i % 3}|g{i % 5},{i},{i},{i},q\n" for i in range(400))
    cfg = _write(tmp_path, train=TRAIN.splitlines()[0] + "\n" + rows)
    one = prepare_schema_csv(cfg, tmp_path / "one", schema=tmp_path / "schema.yaml", workers=1)
    many = prepare_schema_csv(cfg, tmp_path / "many", schema=tmp_path / "schema.yaml", workers=1, chunk_bytes=700)
    assert _hashes(one) == _hashes(many)
    ds = load_prepared(one)
    assert ds.schema["fields"][1]["vocab"] == _by_hash(*(f"song{i}" for i in range(13)))
    assert ds.multi_valued_fields[0]["vocab"] == _by_hash(*(f"g{i}" for i in range(5)))


@pytest.mark.parametrize("change, words", [
    ({"columns": [{"name": "label", "kind": "target"}]}, "'columns[0].kind': unknown kind 'target'"),
    ({"columns": [{"name": "label", "kind": "label"}, {"name": "g", "kind": "multi_valued", "max_len": 3}]},
     "'columns[1].separator'"),
    ({"columns": [{"name": "label", "kind": "label"},
                  {"name": "a", "kind": "numeric_bucket", "boundaries": [3, 1]}]}, "'columns[1].boundaries'"),
    ({"columns": [{"name": "label", "kind": "label"}, {"name": "a", "kind": "numeric_bucket"}]}, "rule: log2"),
    ({"columns": [{"name": "x", "kind": "categorical"}]}, "no column of kind label"),
    ({"columns": [{"name": "label", "kind": "label"}, {"name": "x", "kind": "categorical", "keep": True}]},
     "needs codec int"),
    ({"columns": [{"name": "label", "kind": "label"}, {"name": "x", "kind": "categorical", "pooling": "sum"}]},
     "'columns[1].pooling'"),
    ({"columns": SCHEMA["columns"], "delimiter": ";;"}, "'delimiter'"),
    ({"columns": SCHEMA["columns"], "colums": []}, "'colums' is unknown"),
    ({"columns": SCHEMA["columns"] + [{"name": "user", "kind": "keep"}]}, "'user' is listed twice"),
])
def test_bad_schema_names_its_key(tmp_path, change, words):
    cfg = _write(tmp_path, schema=change)
    with pytest.raises(InputError, match=re.escape(words)) as err:
        prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml")
    assert str(tmp_path / "schema.yaml") in str(err.value)
    assert not (tmp_path / "out").exists()


BAD_ROWS = {
    "header lacks a column": ("valid.csv", VALID.replace("genres", "genre"), 1, "header has no column 'genres'"),
    "non-integer id": ("train.csv", TRAIN.replace("0,20,a", "0,2x,a"), 3, "column 'user': '2x' is not an integer"),
    "not a number": ("train.csv", TRAIN.replace(",45,", ",old,"), 4, "column 'age': 'old' is not a number"),
    "label": ("valid.csv", VALID.replace("200,1,", "200,yes,"), 2, "column 'label': 'yes' is not a label"),
    "quoted text": ("train.csv", TRAIN.replace(",b,x|y|z", ',"b",x|y|z'), 2, "quoted fields"),
    "field count": ("train.csv", TRAIN.replace(",a,,45,", ",a,45,"), 4, "expected 8 ','-separated fields, found 7"),
    "keep not integer": ("train.csv", TRAIN.replace(",101,", ",10x,"), 3, "column 'item': '10x' is not an integer"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_names_file_and_line(tmp_path, case):
    name, text, line, words = BAD_ROWS[case]
    cfg = _write(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as err:
        prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml")
    assert f"{tmp_path / name}:{line}: {words}" in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


def test_bad_multi_valued_token_and_skip_mode(tmp_path):
    schema = {"columns": [{"name": "label", "kind": "label"},
                          {"name": "g", "kind": "multi_valued", "separator": ";", "max_len": 4, "codec": "int"}]}
    cfg = _write(tmp_path, train="label,g\n1,1;2\n0,3;x;4\n1,5\n", valid=None,
                 schema={**schema, "split": {"by": "files"}})
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'train.csv'}:3: column 'g': value 'x'")):
        prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml")
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump({**schema, "split": {"by": "files"}, "on_bad_row": "skip"}))
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml"))
    values, offsets = ds.split("train").multi_valued["g"]
    assert ds.multi_valued_fields[0]["vocab"] == {"1": 2, "2": 3, "5": 4}
    assert values.tolist() == [2, 3, 4] and offsets.tolist() == [0, 2, 3]
    assert ds.schema["report"]["skipped_rows"] == 1


def test_config_needs_a_schema_and_rejects_csv_ids_keys(tmp_path):
    cfg = _write(tmp_path)
    with pytest.raises(InputError, match="'dataset.schema'"):
        prepare_schema_csv(cfg, tmp_path / "out")
    cfg.keep_columns = ["item"]
    with pytest.raises(InputError, match="'dataset.keep_columns'"):
        prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml")
