"""`predict` inputs of the streaming formats (criteo, csv, libfm): a file encoded with a training folder's
vocabularies equals the split prepare wrote for the same file (ids, jagged fields, group, keep,
labels), unseen values are OOV, labels may be absent, bad rows are named; and the CLI end to end."""
from __future__ import annotations

import csv
import gzip
import math
import re
from pathlib import Path

import numpy as np
import pytest

from tf4ctr_fast.cli import _write_scores, main
from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.criteo import prepare_criteo
from tf4ctr_fast.data.libfm import prepare_libfm
from tf4ctr_fast.data.predict_input import PREDICT_SPLIT, encode_for_predict_text
from tf4ctr_fast.data.schema_csv import prepare_schema_csv
from tf4ctr_fast.errors import InputError

from test_cli import TINY_MODEL
from test_prepare_criteo import GOOD, TINY
from test_prepare_libfm import BLOCKS
from test_prepare_schema_csv import SCHEMA, TRAIN, VALID, _write

FILES = {"split": {"by": "files"}}


def kaggle_rows(n: int, seed: int) -> list[str]:
    """Kaggle train.txt lines: a planted click rule, missing values, short rows, a few rare values."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        ints = [str(v) if rng.random() > 0.2 else "" for v in rng.integers(-1, 60, 13)]
        cats = [f"{v:08x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 12, 26) * 0x1000193]
        cats[0] = f"{rng.integers(0, 1 << 32):08x}" if rng.random() < 0.2 else cats[0]   # often unseen
        label = int(cats[1] in ("00000000", "01000193") or (ints[0] not in ("", "-1") and int(ints[0]) > 40))
        fields = [str(label), *ints, *cats]
        if i % 7 == 3:   # Kaggle rows that lost trailing empty fields
            fields = fields[:-3]
        lines.append("\t".join(fields))
    return lines


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def drop_first_column(lines: list[str], sep: str = "\t") -> list[str]:
    return [line.split(sep, 1)[1] if sep in line else "" for line in lines]


def encoded(path: Path, prepared, out: Path, **kw):
    """The PREDICT_SPLIT of `path` encoded with a prepared folder's schema, and that folder."""
    folder = load_prepared(encode_for_predict_text(path, prepared.schema, out, progress=False, **kw))
    assert folder.schema["splits"] == {PREDICT_SPLIT: folder.split(PREDICT_SPLIT).num_rows}
    return folder.split(PREDICT_SPLIT), folder


def assert_same_rows(got, want, labels: bool = True) -> None:
    np.testing.assert_array_equal(got.ids, want.ids)
    assert got.ids.dtype == np.int32
    if labels:
        np.testing.assert_array_equal(got.labels, want.labels)
    else:
        assert np.isnan(got.labels).all() and got.labels.shape == want.labels.shape
    for name in ("group", "keep"):
        if getattr(want, name) is None:
            assert getattr(got, name) is None
        else:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert got.multi_valued.keys() == want.multi_valued.keys()
    for name, (values, offsets) in want.multi_valued.items():
        np.testing.assert_array_equal(got.multi_valued[name][0], values)
        np.testing.assert_array_equal(got.multi_valued[name][1], offsets)


@pytest.fixture
def criteo_files(tmp_path):
    """train / valid Kaggle TSVs and the folder prepared from them (min_count 2: rare values are OOV)."""
    train = write_lines(tmp_path / "train.tsv", kaggle_rows(300, 0))
    valid = write_lines(tmp_path / "valid.tsv", kaggle_rows(120, 1))
    cfg = DatasetConfig(name="c", format="criteo", train=str(train), valid=str(valid), min_count=2)
    return tmp_path, load_prepared(prepare_criteo(cfg, tmp_path / "prepared"))


# ------------------------------------------------------------------------------------------------
# criteo


def test_criteo_valid_file_encodes_to_the_prepared_valid_split(criteo_files):
    tmp_path, ds = criteo_files
    for name in ("valid", "train"):
        got, folder = encoded(tmp_path / f"{name}.tsv", ds, tmp_path / f"p_{name}")
        assert_same_rows(got, ds.split(name))
    assert folder.schema["fields"] == ds.schema["fields"] and folder.schema["label"] == "label"
    assert folder.schema["sources"][PREDICT_SPLIT]["path"] == str((tmp_path / "train.tsv").resolve())
    assert (ds.split("valid").ids[:, 13] == 1).any()      # C1: unseen hashes are OOV
    # chunks of a few lines: the same rows in the same order
    got, _ = encoded(tmp_path / "valid.tsv", ds, tmp_path / "small", chunk_bytes=400, workers=1)
    assert_same_rows(got, ds.split("valid"))


def test_criteo_test_layout_without_label_and_gzip(criteo_files):
    tmp_path, ds = criteo_files
    lines = drop_first_column((tmp_path / "valid.tsv").read_text().splitlines())
    assert min(line.count("\t") for line in lines) < 38        # some rows lost trailing fields
    (tmp_path / "test.tsv.gz").write_bytes(gzip.compress("".join(x + "\n" for x in lines).encode()))
    got, folder = encoded(tmp_path / "test.tsv.gz", ds, tmp_path / "p", has_label=False)
    assert_same_rows(got, ds.split("valid"), labels=False)
    assert folder.schema["label"] is None
    # without has_label=False the first column is read as the label, and is not one
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'test.tsv.gz'}:")):
        encoded(tmp_path / "test.tsv.gz", ds, tmp_path / "q")


def test_criteo_csv_header_says_whether_there_is_a_label(tmp_path):
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rows = [(line.split("\t") + [""] * 40)[:40] for line in kaggle_rows(200, 2)]
    train = tmp_path / "train.csv"
    train.write_text("\n".join(",".join(r) for r in [names] + rows) + "\n")
    ds = load_prepared(prepare_criteo(DatasetConfig(format="criteo", train=str(train), min_count=2),
                                      tmp_path / "prepared", schema=FILES))
    (tmp_path / "test.csv").write_text("\n".join(",".join(r[1:]) for r in [names] + rows[:50]) + "\n")
    got, folder = encoded(tmp_path / "test.csv", ds, tmp_path / "p")      # no --no-label needed
    np.testing.assert_array_equal(got.ids, ds.split("train").ids[:50])
    assert np.isnan(got.labels).all() and folder.schema["label"] is None


def test_criteo_unseen_values_are_oov(criteo_files):
    tmp_path, ds = criteo_files
    row = GOOD.replace("68fd1e64", "deadbeef").replace("\t12\t", "\t100000\t")  # I12: bucket 132, unseen
    got, _ = encoded(write_lines(tmp_path / "new.tsv", [row]), ds, tmp_path / "p")
    want = [ds.schema["fields"][j]["vocab"].get(str(int(v) if int(v) <= 2 else math.floor(math.log(int(v)) ** 2)), 1)
            for j, v in enumerate(row.split("\t")[1:14])]
    assert got.ids[0, :13].tolist() == want and want[11] == 1
    assert got.ids[0, 13:].tolist() == [1] * 26


# ------------------------------------------------------------------------------------------------
# csv with a schema: int (group) / str / numeric buckets / keep / multi-valued


@pytest.fixture
def csv_files(tmp_path):
    cfg = _write(tmp_path, train=TRAIN + TRAIN.split("\n", 1)[1].replace("10,b", "30,d"))   # more rows
    return tmp_path, load_prepared(prepare_schema_csv(cfg, tmp_path / "prepared", schema=tmp_path / "schema.yaml"))


def test_csv_valid_file_encodes_to_the_prepared_valid_split(csv_files):
    tmp_path, ds = csv_files
    for name in ("valid", "train"):
        got, folder = encoded(tmp_path / f"{name}.csv", ds, tmp_path / f"p_{name}")
        assert_same_rows(got, ds.split(name))
    assert folder.schema["multi_valued_fields"] == ds.schema["multi_valued_fields"]
    assert folder.schema["group_field"] == "user" and folder.schema["keep_columns"] == ["item"]
    valid = ds.split("valid")
    song, genres = ds.field_names.index("song"), ds.split("valid").multi_valued["genres"]
    assert valid.ids[0, song] == 1 and genres[0].tolist()[1] == 1     # song c, genre w: unseen -> OOV


def test_csv_without_label_column_and_columns_in_another_order(csv_files):
    tmp_path, ds = csv_files
    header, *rows = VALID.splitlines()
    names = header.split(",")
    order = [names.index(n) for n in ("genres", "extra", "user", "item", "I1", "song", "age")]  # no label
    (tmp_path / "score_me.csv").write_text("\n".join(",".join(line.split(",")[i] for i in order)
                                                     for line in [header, *rows]) + "\n")
    got, folder = encoded(tmp_path / "score_me.csv", ds, tmp_path / "p")
    assert_same_rows(got, ds.split("valid"), labels=False)
    assert folder.schema["label"] is None
    # a feature column the header lacks is named
    (tmp_path / "bad.csv").write_text("item,user\n1,2\n")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'bad.csv'}:1: header has no column 'song'")):
        encoded(tmp_path / "bad.csv", ds, tmp_path / "q")


def test_headerless_tsv_with_and_without_label(tmp_path):
    schema = {"delimiter": "\t", "header": False, "split": {"by": "files"}, "columns": [
        {"name": "u", "kind": "categorical", "codec": "int"},
        {"name": "label", "kind": "label"},
        {"name": "h", "kind": "categorical", "codec": "hex"},
        {"name": "tags", "kind": "multi_valued", "separator": " ", "max_len": 2}]}
    cfg = _write(tmp_path, train="5\t1\tff\ta b c\n5\t0\t0a\t\n6\t1\tFF\tb\n", valid=None, schema=schema)
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "prepared", schema=tmp_path / "schema.yaml"))
    got, _ = encoded(tmp_path / "train.csv", ds, tmp_path / "a")
    assert_same_rows(got, ds.split("train"))
    write_lines(tmp_path / "new.tsv", ["7\tff\tc a", "5\t0b\t"])
    got, _ = encoded(tmp_path / "new.tsv", ds, tmp_path / "b", has_label=False)
    vocab = {f["name"]: f["vocab"] for f in ds.schema["fields"] + ds.multi_valued_fields}
    assert got.ids.tolist() == [[1, vocab["h"]["ff"]], [vocab["u"]["5"], 1]]
    values, offsets = got.multi_valued["tags"]
    assert values.tolist() == [1, vocab["tags"]["a"]] and offsets.tolist() == [0, 2, 2]   # c: cut by max_len
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'new.tsv'}:1: expected 4 tab-separated")):
        encoded(tmp_path / "new.tsv", ds, tmp_path / "c")                   # the label is expected by default


# ------------------------------------------------------------------------------------------------
# libfm


@pytest.fixture
def libfm_files(tmp_path):
    (tmp_path / "train.libfm").write_text("1 0:1 5:1 10:1\n-1 1:1 6:1 11:1\n\n0 0:1 7:1\n1 12:1 0:1 5:1\n")
    (tmp_path / "valid.libfm").write_text("0 1:1 5:1 10:1\n1 4:1 13:1 9:1\n1 7:1\n")   # 4, 9, 13 unseen
    cfg = DatasetConfig(format="libfm", train=str(tmp_path / "train.libfm"), valid=str(tmp_path / "valid.libfm"),
                        min_count=1)
    return tmp_path, load_prepared(prepare_libfm(cfg, tmp_path / "prepared", schema=BLOCKS))


def test_libfm_valid_file_encodes_to_the_prepared_valid_split(libfm_files):
    tmp_path, ds = libfm_files
    got, _ = encoded(tmp_path / "valid.libfm", ds, tmp_path / "p")
    assert_same_rows(got, ds.split("valid"))
    # 4, 9, 13 are unseen; row 3 has no user (never missing in train: OOV) and no ctx (missing: id 2)
    assert got.ids.tolist() == [[3, 2, 3], [1, 1, 1], [1, 4, 2]]
    # rows of features only
    lines = (tmp_path / "valid.libfm").read_text().splitlines()
    write_lines(tmp_path / "features.libfm", drop_first_column(lines, " "))
    got, folder = encoded(tmp_path / "features.libfm", ds, tmp_path / "q", has_label=False)
    assert_same_rows(got, ds.split("valid"), labels=False)
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'features.libfm'}:1: label '1:1' is not")):
        encoded(tmp_path / "features.libfm", ds, tmp_path / "r")


# ------------------------------------------------------------------------------------------------
# bad rows, skip mode, nothing left behind


def test_bad_row_names_file_and_line_and_leaves_nothing(criteo_files):
    tmp_path, ds = criteo_files
    before = sorted(p.name for p in tmp_path.iterdir())
    write_lines(tmp_path / "bad.tsv", [GOOD, GOOD, GOOD.replace("\t7\t", "\tseven\t")])
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'bad.tsv'}:3: column 'I7': 'seven' is not an integer (rule log2)")):
        encoded(tmp_path / "bad.tsv", ds, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "bad.tsv"])
    (tmp_path / "empty.tsv").write_text("\n")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'empty.tsv'}: no data rows")):
        encoded(tmp_path / "empty.tsv", ds, tmp_path / "out")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'nope.tsv'}: file not found")):
        encoded(tmp_path / "nope.tsv", ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_skip_mode_of_the_training_schema_drops_and_counts(tmp_path):
    write_lines(tmp_path / "train.tsv", TINY.splitlines() * 3)
    cfg = DatasetConfig(format="criteo", train=str(tmp_path / "train.tsv"), min_count=1)
    ds = load_prepared(prepare_criteo(cfg, tmp_path / "prepared", schema={"on_bad_row": "skip", **FILES}))
    write_lines(tmp_path / "new.tsv", [GOOD, "1\t2", GOOD, "x"])
    got, folder = encoded(tmp_path / "new.tsv", ds, tmp_path / "p")
    assert got.num_rows == 2 and folder.schema["report"]["skipped_rows"] == 2
    assert folder.schema["report"]["skipped_examples"][0].startswith(f"{tmp_path / 'new.tsv'}:2: expected 14 to 40")


def test_a_schema_of_another_format_is_refused(tmp_path):
    with pytest.raises(InputError, match="format 'csv_ids' is not one of criteo, csv, libfm"):
        encode_for_predict_text(tmp_path / "x", {"options": {"format": "csv_ids"}}, tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# the CLI: prepare, train, predict


@pytest.fixture(scope="module")
def criteo_run(tmp_path_factory):
    """A TF4CTR run trained for one epoch on Kaggle-shaped files (shared by the CLI tests)."""
    tmp_path = tmp_path_factory.mktemp("criteo_run")
    paths = {split: write_lines(tmp_path / f"{split}.tsv", kaggle_rows(n, seed))
             for split, n, seed in (("train", 400, 0), ("valid", 150, 1), ("test", 100, 2))}
    config = tmp_path / "run.yaml"
    config.write_text(
        "dataset:\n  name: tiny_criteo\n  format: criteo\n  min_count: 2\n"
        + "".join(f"  {split}: {path}\n" for split, path in paths.items())
        + f"  prepared_dir: {tmp_path / 'prepared'}\ntrain:\n  out_dir: {tmp_path / 'run'}\n")
    assert main(["train", "--config", str(config), *TINY_MODEL, "train.epochs=1"]) == 0
    return tmp_path


def read_scores(path: Path) -> np.ndarray:
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["score"]            # Criteo has no keep columns
    return np.array([float(r[0]) for r in rows[1:]])


def test_cli_predict_criteo_scores_equal_predict_proba_on_the_prepared_split(criteo_run, capsys):
    from tf4ctr_fast.train.checkpoint import load_checkpoint, resolve_checkpoint
    from tf4ctr_fast.train.trainer import predict_proba

    tmp_path = criteo_run
    out = tmp_path / "scores"
    out.mkdir()   # (the folder does not have to exist: see the next test)
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "valid.tsv"),
                 "--output", str(out / "valid.csv")]) == 0
    assert "wrote 150 scores" in capsys.readouterr().out
    scores = read_scores(out / "valid.csv")
    assert len(scores) == 150 and ((scores >= 0) & (scores <= 1)).all()
    model, _, _ = load_checkpoint(resolve_checkpoint(tmp_path / "run"))
    want = predict_proba(model, load_prepared(tmp_path / "prepared").split("valid"), 64, "cpu")
    np.testing.assert_allclose(scores, want, atol=5e-7)
    assert sorted(p.name for p in out.iterdir()) == ["valid.csv"]        # the encoded input is gone

    lines = drop_first_column((tmp_path / "valid.tsv").read_text().splitlines())
    write_lines(tmp_path / "unlabelled.tsv", lines)
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "unlabelled.tsv"),
                 "--output", str(out / "unlabelled.csv"), "--no-label", "--batch-size", "7"]) == 0
    np.testing.assert_allclose(read_scores(out / "unlabelled.csv"), scores, atol=1e-6)


def test_cli_predict_bad_input_or_interrupt_leaves_nothing(criteo_run, capsys, monkeypatch):
    from tf4ctr_fast.train import trainer

    tmp_path = criteo_run
    out = tmp_path / "failed"
    args = ["predict", "--checkpoint", str(tmp_path / "run"), "--output", str(out / "s.csv")]
    write_lines(tmp_path / "bad.tsv", kaggle_rows(5, 3) + ["0\t1\t2"])
    assert main([*args, "--input", str(tmp_path / "bad.tsv")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'bad.tsv'}:6: expected 14 to 40 tab-separated fields" in err, err  # (after the bar)
    assert list(out.iterdir()) == []

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "predict_proba", interrupted)   # after the input was encoded
    assert main([*args, "--input", str(tmp_path / "valid.tsv")]) == 130
    assert list(out.iterdir()) == []


def test_scores_csv_keeps_64_bit_keep_values_exact(tmp_path):
    keep = np.array([[2**60 + 1, -7], [3, 2**62 + 3]], dtype=np.int64)
    _write_scores(tmp_path / "s.csv", ["item", "user"], keep, np.array([0.25, 1.0], dtype=np.float32))
    assert (tmp_path / "s.csv").read_text() == f"item,user,score\n{2**60 + 1},-7,0.250000\n3,{2**62 + 3},1.000000\n"
    _write_scores(tmp_path / "t.csv", [], None, np.array([0.5]))
    assert (tmp_path / "t.csv").read_text() == "score\n0.500000\n"
