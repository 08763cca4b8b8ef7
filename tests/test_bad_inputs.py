"""Every bad input gets one clear answer (issue 12): exit code 2, a message naming the place (file:line
or the config key, and whether it came from the YAML file or the command line), and no artifact that
looks complete (no prepared folder, no results.json, no scores file).

Each case runs the CLI in-process on a few lines written to tmp_path."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tf4ctr_fast.cli import main
from tf4ctr_fast.config import RANGES, ranges_table

from test_cli import TINY_MODEL, write_planted_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _fails(argv: list[str], capsys, *fragments: str) -> str:
    """Run the CLI; assert exit 2 and one `error:` line holding every fragment; return the message."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _nothing_complete(folder: Path) -> None:
    assert not list(folder.rglob("schema.json")), "a prepared folder was left behind"
    assert not list(folder.rglob("results.json")), "a run folder was left behind"
    assert not [p for p in folder.rglob(".*") if p.name.endswith(".tmp")], "a temp file was left behind"


# ---------------------------------------------------------------------------------------------
# run config: every numeric key range-checked, each message naming the key and where it came from

CONFIG_CASES = [
    ("train.lr=-1", "'train.lr': must be (0, 1]"),
    ("train.lr=0", "'train.lr': must be (0, 1]"),
    ("train.lr=1e30", "'train.lr': must be (0, 1]"),
    ("train.lr=1e12", "'train.lr': must be (0, 1]"),
    ("train.lr=.inf", "'train.lr': expected a finite number"),
    ("train.lr=.nan", "'train.lr': expected a finite number"),
    ("train.lr=fast", "'train.lr': expected a number"),
    ("train.clip_norm=-1", "'train.clip_norm': must be > 0"),
    ("train.clip_norm=0", "'train.clip_norm': must be > 0"),
    ("train.lr_decay=5", "'train.lr_decay': must be (0, 1]"),
    ("train.lr_decay=0", "'train.lr_decay': must be (0, 1]"),
    ("train.min_lr=-1", "'train.min_lr': must be >= 0"),
    ("train.min_lr=0.5", "'train.min_lr': 0.5 is above train.lr"),
    ("train.patience=0", "'train.patience': must be >= 1"),
    ("train.lr_decay_patience=0", "'train.lr_decay_patience': must be >= 1"),
    ("train.num_threads=-3", "'train.num_threads': must be >= 0"),
    ("train.batch_size=0", "'train.batch_size': must be >= 1"),
    ("train.eval_batch_size=-1", "'train.eval_batch_size': must be >= 1"),
    ("train.epochs=0", "'train.epochs': must be >= 1"),
    ("train.max_steps_per_epoch=0", "'train.max_steps_per_epoch': must be >= 1"),
    ("train.seed=-1", "'train.seed': must be [0, 4294967295]"),
    ("train.difficulty_thresholds=[0.7,0.2]", "'train.difficulty_thresholds': expected [t0, t1]"),
    ("train.difficulty_thresholds=[0.2,1.5]", "'train.difficulty_thresholds[1]': must be [0, 1]"),
    ("train.difficulty_thresholds=[0.5]", "'train.difficulty_thresholds': expected [t0, t1]"),
    ("train.sparse_lr=0", "'train.sparse_lr': must be (0, 10]"),
    ("train.sparse_eps=-1", "'train.sparse_eps': must be (0, 1]"),
    ("train.nproc=0", "'train.nproc': must be >= 1"),
    ("train.batch_size=2.5", "'train.batch_size': expected an integer"),
    ("train.progress=maybe", "'train.progress': expected true/false"),
    ("dataset.min_count=0", "'dataset.min_count': must be >= 1"),
    ("dataset.seed=-5", "'dataset.seed': must be [0, 4294967295]"),
    ("model.nam=DNN", "config key 'model.nam' is unknown"),
    ("train.lr", "expected key=value"),
    ("dataset.prepared_dir=.", "'dataset.prepared_dir'"),
    ("dataset.prepared_dir=..", "'dataset.prepared_dir'"),
    ("train.out_dir=.", "'train.out_dir'"),
]


@pytest.mark.parametrize("override, fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_override_is_blamed_on_the_command_line(tmp_path, capsys, override, fragment):
    config = write_planted_run(tmp_path)
    message = _fails(["train", "--config", config, *TINY_MODEL, override], capsys, fragment)
    if "_dir" not in override:
        assert f"command-line override '{override}'" in message and "run.yaml" not in message
    _nothing_complete(tmp_path)


SYNTHETIC_CASES = [
    ("dataset.synthetic.rows=5", "'dataset.synthetic.rows': 5 rows leave the valid split empty"),
    ("dataset.synthetic.rows=0", "'dataset.synthetic.rows': must be >= 1"),
    ("dataset.synthetic.split=[0.5,0.3,0.3]", "'dataset.synthetic.split': expected 3 fractions"),
    ("dataset.synthetic.split=[0.8,0.2]", "'dataset.synthetic.split': expected 3 fractions"),
    ("dataset.synthetic.split=[1.2,-0.1,-0.1]", "'dataset.synthetic.split[0]': must be [0, 1]"),
    ("dataset.synthetic.hard_fraction=2", "'dataset.synthetic.hard_fraction': must be [0, 1]"),
    ("dataset.synthetic.cat_vocab=0", "'dataset.synthetic.cat_vocab': must be >= 1"),
    ("dataset.synthetic.int_vocab=-1", "'dataset.synthetic.int_vocab': must be >= 1"),
    ("dataset.synthetic.zipf_a=-1", "'dataset.synthetic.zipf_a': must be >= 0"),
    ("dataset.synthetic.cat_vocab_sizes=[3,0]", "'dataset.synthetic.cat_vocab_sizes[1]': must be >= 1"),
    ("dataset.synthetic.num_int_fields=-1", "'dataset.synthetic.num_int_fields': must be >= 0"),
]


@pytest.mark.parametrize("override, fragment", SYNTHETIC_CASES, ids=[c[0] for c in SYNTHETIC_CASES])
def test_bad_synthetic_key(tmp_path, capsys, override, fragment):
    _fails(["prepare", f"dataset.prepared_dir={tmp_path / 'prepared'}", override], capsys, fragment,
           f"command-line override '{override}'")
    _nothing_complete(tmp_path)


YAML_CASES = [
    ("train:\n  lr: -1\n", "run.yaml: config key 'train.lr': must be (0, 1]"),
    ("train:\n  lrr: 0.1\n", "run.yaml: config key 'train.lrr' is unknown"),
    ("train:\n  patience: 0\n", "run.yaml: config key 'train.patience'"),
    ("train: 5\n", "run.yaml: config key 'train': expected a mapping"),
    ("train:\n  lr: 1e-3\n  min_lr: 1e-2\n", "run.yaml: config key 'train.min_lr'"),
    ("dataset:\n  synthetic:\n    rows: 5\n", "run.yaml: config key 'dataset.synthetic.rows'"),
    ("train: [1\n", "run.yaml: not valid YAML"),
    ("- a\n", "run.yaml: expected a mapping"),
]


@pytest.mark.parametrize("text, fragment", YAML_CASES, ids=[c[0].replace("\n", " ") for c in YAML_CASES])
def test_bad_config_file_is_blamed_on_the_file(tmp_path, monkeypatch, capsys, text, fragment):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)  # the default prepared and run folders land in tmp_path
    _fails(["train", "--config", config], capsys, fragment)
    _nothing_complete(tmp_path)


def test_out_dir_that_is_a_file(tmp_path, capsys):
    config = write_planted_run(tmp_path)
    (tmp_path / "taken").write_text("mine")
    _fails(["train", "--config", config, *TINY_MODEL, f"train.out_dir={tmp_path / 'taken'}"], capsys,
           "'train.out_dir'", "is a file")
    assert (tmp_path / "taken").read_text() == "mine"
    assert not list(tmp_path.rglob("results.json"))


def test_valid_split_with_one_class_is_blamed_on_the_data(tmp_path, capsys):
    rows = "".join(f"{i % 5},{i % 7},0\n" for i in range(60))
    for split in ("train", "valid"):
        (tmp_path / f"{split}.csv").write_text("user,item,label\n" + (rows if split == "valid" else
                                               rows.replace(",0\n", ",1\n", 20)))
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset:\n  name: one\n  format: csv_ids\n  train: {tmp_path / 'train.csv'}\n"
                      f"  valid: {tmp_path / 'valid.csv'}\n  prepared_dir: {tmp_path / 'prepared'}\n"
                      f"train:\n  out_dir: {tmp_path / 'run'}\n")
    _fails(["train", "--config", config, *TINY_MODEL], capsys, "the valid split has only one class",
           "labels are 0")
    assert not list(tmp_path.rglob("results.json"))


def test_docs_table_is_the_code_table():
    assert ranges_table() in (REPO / "docs" / "config.md").read_text()


def test_every_numeric_dataset_and_train_key_has_a_range():
    import dataclasses
    import typing

    from tf4ctr_fast.config import DatasetConfig, TrainConfig

    def numeric(cls, prefix):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from numeric(tp, f"{prefix}.{f.name}")
            elif {int, float} & {tp, *typing.get_args(tp), *(a for t in typing.get_args(tp) for a in typing.get_args(t))}:
                yield f"{prefix}.{f.name}"

    keys = [*numeric(DatasetConfig, "dataset"), *numeric(TrainConfig, "train")]
    assert sorted(set(keys) - set(RANGES)) == []


# ---------------------------------------------------------------------------------------------
# data files: every bad row named by file:line, nothing prepared


def _prepare(tmp_path: Path, fmt: str, data: bytes, schema: str | None, capsys, *fragments: str,
             name: str = "d.csv") -> str:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    argv = ["prepare", f"dataset.format={fmt}", f"dataset.train={path}",
            f"dataset.prepared_dir={tmp_path / 'prepared'}", "train.progress=false"]
    if schema is not None:
        (tmp_path / "schema.yaml").write_text(schema)
        argv.append(f"dataset.schema={tmp_path / 'schema.yaml'}")
    message = _fails(argv, capsys, *fragments)
    _nothing_complete(tmp_path)
    return message


CSV_COLUMNS = ("columns:\n  - {name: label, kind: label}\n  - {name: a, kind: categorical, codec: int}\n"
               "  - {name: b, kind: categorical}\n")
GOOD_CSV = "label,a,b\n" + "".join(f"{i % 2},{i},x{i}\n" for i in range(40))   # lines 2..41
CSV_CASES = {   # name: (the 42nd line, or whole text, in bytes; extra schema text; message fragment)
    "int overflow": (b"1,-99999999999999999999,x\n", "", "d.csv:42: column 'a'"),
    "int fraction": (b"1,3.5,x\n", "", "d.csv:42: column 'a': '3.5' is not an integer"),
    "int negative fraction": (b"1,-1.5,x\n", "", "d.csv:42: column 'a': '-1.5' is not an integer"),
    "int junk": (b"1,unkonwn,x\n", "", "d.csv:42: column 'a': 'unkonwn' is not an integer"),
    "label 2": (b"2,1,x\n", "", "d.csv:42: column 'label': '2' is not a label"),
    "label text": (b"yes,1,x\n", "", "d.csv:42: column 'label'"),
    "too many fields": (b"1,1,x,9\n", "", "d.csv:42: expected 3 ','-separated fields, found 4"),
    "too few fields": (b"1,1\n", "", "d.csv:42: expected 3"),
    "quoted": (b'1,1,"x"\n', "", "d.csv:42: quoted fields are not supported"),
    "not utf-8": (b"1,1,\xff\xfe\n", "", "d.csv:42: column 'b': not UTF-8 text"),
    "time junk under a ratio split": (b"1,1,x,zz\n", "  - {name: t, kind: time}\n", "d.csv:42: column 't': 'zz'"),
    "log2 fraction": (b"1,1,3.5\n", "", "d.csv:42: column 'b': '3.5' is not an integer (rule log2)"),
    "log2 huge": (b"1,1,-99999999999999999999\n", "", "d.csv:42: column 'b'"),
    "keep junk": (b"1,1,x,k\n", "  - {name: k, kind: keep}\n", "d.csv:42: column 'k'"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_row(tmp_path, capsys, case):
    line, extra, fragment = CSV_CASES[case]
    text, columns = GOOD_CSV, CSV_COLUMNS + extra
    if extra:  # one more column in every row
        text = "label,a,b,k\n" if "keep" in case else "label,a,b,t\n"
        text += "".join(f"{i % 2},{i},x{i},{i}\n" for i in range(40))
    if case.startswith("log2"):
        text = "label,a,b\n" + "".join(f"{i % 2},{i},{i}\n" for i in range(40))
        columns = columns.replace("{name: b, kind: categorical}", "{name: b, kind: numeric_bucket, rule: log2}")
    _prepare(tmp_path, "csv", text.encode() + line, columns, capsys, fragment)


SCHEMA_CASES = {
    "unknown kind": (CSV_COLUMNS.replace("kind: categorical}\n", "kind: categorial}\n"),
                     "schema.yaml: key 'columns[2].kind': unknown kind 'categorial' (known: categorical"),
    "max_len missing": (CSV_COLUMNS.replace("kind: categorical}\n", "kind: multi_valued, separator: '|'}\n"),
                        "schema.yaml: key 'columns[2].max_len': missing"),
    "max_len zero": (CSV_COLUMNS.replace("kind: categorical}\n", "kind: multi_valued, separator: '|', max_len: 0}\n"),
                     "schema.yaml: key 'columns[2].max_len': expected an integer >= 1"),
    "unknown codec": (CSV_COLUMNS.replace("codec: int", "codec: float"), "schema.yaml: key 'columns[1].codec'"),
    "ratios not summing to 1": (CSV_COLUMNS + "split: {by: ratio, ratios: [0.5, 0.3, 0.3]}\n",
                                "schema.yaml: key 'split.ratios': [0.5, 0.3, 0.3] sum to 1.1"),
    "ratios negative": (CSV_COLUMNS + "split: {by: ratio, ratios: [0.9, -0.1, 0.2]}\n", "key 'split.ratios'"),
    "no label": (CSV_COLUMNS.replace("  - {name: label, kind: label}\n", ""), "no column of kind label"),
    "repeated column": (CSV_COLUMNS + "  - {name: a, kind: categorical}\n", "'a' is listed twice"),
    "unknown top key": (CSV_COLUMNS + "delimeter: ';'\n", "schema.yaml: key 'delimeter' is unknown"),
    "bad on_bad_row": (CSV_COLUMNS + "on_bad_row: ignore\n", "schema.yaml: key 'on_bad_row'"),
    "header lacks a column": (CSV_COLUMNS + "  - {name: zz, kind: categorical}\n",
                              "d.csv:1: header has no column 'zz'"),
    "min_count zero": (CSV_COLUMNS.replace("codec: int}", "codec: int, min_count: 0}"), "columns[1].min_count'"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_bad_csv_schema(tmp_path, capsys, case):
    schema, fragment = SCHEMA_CASES[case]
    _prepare(tmp_path, "csv", GOOD_CSV.encode(), schema, capsys, fragment)


def _criteo_row(label="0", ints=None, cats=None) -> bytes:
    ints = ints or [str(i) for i in range(13)]
    cats = cats or ["05db9164"] * 26
    return ("\t".join([label, *ints, *cats]) + "\n").encode()


GOOD_CRITEO = b"".join(_criteo_row(str(i % 2)) for i in range(30))   # lines 1..30
CRITEO_CASES = {
    "BOM": (b"\xef\xbb\xbf" + GOOD_CRITEO, "d.txt:1: the file starts with a UTF-8 byte order mark (BOM"),
    "label 2": (GOOD_CRITEO + _criteo_row("2"), "d.txt:31: column 'label'"),
    "count fraction": (GOOD_CRITEO + _criteo_row(ints=["3.5"] + ["1"] * 12), "d.txt:31: column 'I1': '3.5' is not an integer"),
    "count negative fraction": (GOOD_CRITEO + _criteo_row(ints=["-1.5"] + ["1"] * 12), "d.txt:31: column 'I1'"),
    "count huge": (GOOD_CRITEO + _criteo_row(ints=["-99999999999999999999"] + ["1"] * 12), "d.txt:31: column 'I1'"),
    "bad hex": (GOOD_CRITEO + _criteo_row(cats=["zzzz"] * 26), "d.txt:31: column 'C1'"),
    "41 fields": (GOOD_CRITEO + _criteo_row()[:-1] + b"\textra\n", "d.txt:31: expected 14 to 40 tab-separated fields"),
    "empty file": (b"", "d.txt"),
}


@pytest.mark.parametrize("case", list(CRITEO_CASES))
def test_bad_criteo_file(tmp_path, capsys, case):
    data, fragment = CRITEO_CASES[case]
    _prepare(tmp_path, "criteo", data, None, capsys, fragment, name="d.txt")


def _corrupt_crc(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[-8] ^= 0xFF   # the member's CRC32
    return bytes(packed)


@pytest.mark.parametrize("fmt", ["criteo", "csv_ids", "csv"])
@pytest.mark.parametrize("damage", ["crc", "truncated"])
def test_damaged_gzip_names_the_line_after_the_readable_text(tmp_path, capsys, fmt, damage):
    text = (GOOD_CRITEO * 30 if fmt == "criteo"
            else b"label,a,b\n" + b"".join(b"%d,%d,%d\n" % (i % 2, i, i) for i in range(900)))
    lines = text.count(b"\n")
    packed = _corrupt_crc(text) if damage == "crc" else gzip.compress(text)[:-40]
    path = tmp_path / "d.csv.gz"
    path.write_bytes(packed)
    schema = tmp_path / "schema.yaml"
    schema.write_text(CSV_COLUMNS.replace("{name: b, kind: categorical}", "{name: b, kind: categorical, codec: int}"))
    argv = ["prepare", f"dataset.format={fmt}", f"dataset.train={path}", f"dataset.prepared_dir={tmp_path / 'p'}"]
    if fmt == "csv":
        argv.append(f"dataset.schema={schema}")
    message = _fails(argv, capsys, "d.csv.gz:", "unreadable gzip data after line")
    line = int(message.split("d.csv.gz:")[1].split(":")[0])
    assert line > lines - 40 if damage == "truncated" else line == lines + 1, message
    _nothing_complete(tmp_path)


IDS_CASES = {
    "id junk": (b"1,unknown,1\n", "d.csv:42"),
    "label 2": (b"1,1,2\n", "d.csv:42"),
    "too many fields": (b"1,1,1,1\n", "d.csv:42"),
    "too few fields": (b"1,1\n", "d.csv:42"),
}


@pytest.mark.parametrize("case", list(IDS_CASES))
def test_bad_csv_ids_row(tmp_path, capsys, case):
    line, fragment = IDS_CASES[case]
    text = "user,item,label\n" + "".join(f"{i % 5},{i},{i % 2}\n" for i in range(40))
    _prepare(tmp_path, "csv_ids", text.encode() + line, None, capsys, fragment)


LIBFM_SCHEMA = "fields: [a, b]\n"
GOOD_LIBFM = "".join(f"{i % 2} {i % 5}:1 {10 + i % 7}:1\n" for i in range(40))
LIBFM_CASES = {
    "value 2": (b"1 3:2 11:1\n", "d.libfm:41"),
    "label 5": (b"5 3:1 11:1\n", "d.libfm:41"),
    "not a feature": (b"1 abc 11:1\n", "d.libfm:41"),
    "one field short": (b"1 3:1\n", "d.libfm:41"),
}


@pytest.mark.parametrize("case", list(LIBFM_CASES))
def test_bad_libfm_row(tmp_path, capsys, case):
    line, fragment = LIBFM_CASES[case]
    _prepare(tmp_path, "libfm", GOOD_LIBFM.encode() + line, LIBFM_SCHEMA, capsys, fragment, name="d.libfm")


# ---------------------------------------------------------------------------------------------
# predict and evaluate: a bad option or input file is named, no scores file is written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny csv_ids run (planted data) and, beside it, a prepared folder encoded otherwise."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_planted_run(folder)
    assert main(["train", "--config", str(config), *TINY_MODEL, "train.epochs=1"]) == 0
    assert main(["prepare", "--config", str(config), "dataset.min_count=50",
                 f"dataset.prepared_dir={folder / 'other'}"]) == 0
    (folder / "garbage.pt").write_bytes(b"not a checkpoint" * 10)
    (folder / "in.csv").write_text("user,item,ctx\n1,101,0\n2,102,1\n")
    (folder / "bad_in.csv").write_text("user,item,ctx\n1,101,0\n2,oops,1\n")
    (folder / "short_in.csv").write_text("user,item\n1,101\n")
    return folder


def _predict_cases(f: Path) -> dict[str, tuple[list, str]]:
    run, out = f / "run", f / "out" / "scores.csv"
    base = ["predict", "--checkpoint", run, "--input", f / "in.csv", "--output", out]
    return {
        "batch size 0": ([*base, "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        "batch size -1": ([*base, "--batch-size", "-1"], "--batch-size: must be >= 1, got -1"),
        "output a folder": (base[:-1] + [f], "--output"),
        "output is the input": (base[:-1] + [f / "in.csv"], "is the --input file"),
        "input missing": ([*base[:4], f / "nope.csv", *base[5:]], "nope.csv"),
        "input bad row": ([*base[:4], f / "bad_in.csv", *base[5:]], "bad_in.csv:3"),
        "input lacks a column": ([*base[:4], f / "short_in.csv", *base[5:]], "short_in.csv"),
        "checkpoint missing": ([base[0], "--checkpoint", f / "nope", *base[3:]], "nope"),
        "checkpoint garbage": ([base[0], "--checkpoint", f / "garbage.pt", *base[3:]],
                               "garbage.pt: not a readable checkpoint"),
        "device unknown": ([*base, "--device", "tpu"], "--device"),
    }


PREDICT_CASES = list(_predict_cases(Path("x")))


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_bad_predict(trained, capsys, case):
    argv, fragment = _predict_cases(trained)[case]
    message = _fails(argv, capsys, fragment)
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    out = trained / "out"
    assert not out.exists() or not list(out.iterdir()), "scores or a temp folder were left behind"


def _evaluate_cases(f: Path) -> dict[str, tuple[list, str]]:
    base = ["evaluate", "--checkpoint", f / "run"]
    return {
        "split unknown": ([*base, "--split", "nope"], "no split 'nope'"),
        "data encoded otherwise": ([*base, "--data", f / "other"], "is not encoded like the data"),
        "data missing": ([*base, "--data", f / "nowhere"], "nowhere"),
        "data not a prepared folder": ([*base, "--data", f / "run"], "run"),
        "checkpoint garbage": (["evaluate", "--checkpoint", f / "garbage.pt"], "garbage.pt: not a readable checkpoint"),
        "device unknown": ([*base, "--device", "tpu"], "--device"),
    }


@pytest.mark.parametrize("case", list(_evaluate_cases(Path("x"))))
def test_bad_evaluate(trained, capsys, case):
    argv, fragment = _evaluate_cases(trained)[case]
    message = _fails(argv, capsys, fragment)
    assert "weights_only" not in message


def test_predict_quiet_prints_nothing(trained, capsys):
    out = trained / "quiet" / "scores.csv"
    assert main(["predict", "--checkpoint", str(trained / "run"), "--input", str(trained / "in.csv"),
                 "--output", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert out.read_text().splitlines()[0] == "user,item,score"


# ---------------------------------------------------------------------------------------------
# on_bad_value: oov (codec int): junk goes to OOV and is counted; the default stays an error


def test_on_bad_value_oov_maps_junk_to_oov_and_counts_it(tmp_path, capsys):
    import json

    import numpy as np

    text = GOOD_CSV + "1,unkonwn,x\n0,n/a,y\n"
    (tmp_path / "d.csv").write_text(text)
    (tmp_path / "schema.yaml").write_text(CSV_COLUMNS.replace("codec: int}", "codec: int, on_bad_value: oov}")
                                          + "split: {by: files}\n")
    assert main(["prepare", "dataset.format=csv", f"dataset.train={tmp_path / 'd.csv'}", "dataset.min_count=1",
                 f"dataset.schema={tmp_path / 'schema.yaml'}", f"dataset.prepared_dir={tmp_path / 'p'}",
                 "train.progress=false"]) == 0
    schema = json.loads((tmp_path / "p" / "schema.json").read_text())
    assert schema["report"]["bad_values_as_oov"] == {"a": 2}
    ids = np.load(tmp_path / "p" / "train" / "ids.npy")
    assert sorted(schema["fields"][0]["vocab"]) == sorted(str(i) for i in range(40))
    assert (ids[:, 0] == 1).sum() == 2   # the two junk values, nothing else


@pytest.mark.parametrize("column, fragment", [
    ("{name: b, kind: categorical, on_bad_value: oov}", "oov is for codec int feature columns"),
    ("{name: b, kind: categorical, codec: int, on_bad_value: skip}", "expected error or oov"),
])
def test_on_bad_value_is_checked(tmp_path, capsys, column, fragment):
    schema = CSV_COLUMNS.replace("{name: b, kind: categorical}", column)
    _prepare(tmp_path, "csv", GOOD_CSV.encode(), schema, capsys, "schema.yaml: key 'columns[2].on_bad_value'",
             fragment)


# ---------------------------------------------------------------------------------------------
# knobs that must do what they say


def test_progress_false_silences_prepare(tmp_path, capsys):
    config = write_planted_run(tmp_path)
    (tmp_path / "schema.yaml").write_text(CSV_COLUMNS)
    (tmp_path / "d.csv").write_text(GOOD_CSV)
    assert main(["prepare", "dataset.format=csv", f"dataset.train={tmp_path / 'd.csv'}",
                 f"dataset.schema={tmp_path / 'schema.yaml'}", f"dataset.prepared_dir={tmp_path / 'p'}",
                 "train.progress=false"]) == 0
    assert capsys.readouterr().err == ""
    assert config.exists()


def test_log_writes_float32_as_its_shortest_text():
    import json

    import numpy as np

    from tf4ctr_fast.train.runlog import to_jsonable

    value = {"lr": np.float32(0.01), "row": np.array([0.1, 0.7], dtype=np.float32), "x": np.float64(0.1),
             "nan": np.float32("nan"), "scalar": np.array(np.float32(0.3))}
    assert json.dumps(to_jsonable(value)) == '{"lr": 0.01, "row": [0.1, 0.7], "x": 0.1, "nan": null, "scalar": 0.3}'


def test_fx_tracing_notice_is_filtered():
    import logging

    import tf4ctr_fast.embedding  # noqa: F401  (installs the filter)

    logger = logging.getLogger("torch.fx._symbolic_trace")
    notice = logger.makeRecord(logger.name, logging.WARNING, "x", 1,
                               "is_fx_tracing will return true for both fx.symbolic_trace and torch.export.", (), None)
    other = logger.makeRecord(logger.name, logging.WARNING, "x", 1, "something else", (), None)
    assert not logger.filter(notice) and logger.filter(other)


def test_schema_summary_lists_multi_valued_fields():
    from types import SimpleNamespace

    from tf4ctr_fast.train.trainer import _schema_summary

    data = SimpleNamespace(field_names=["a"], vocab_sizes=[5], group_field=None, multi_valued_fields=[
        {"name": "tags", "vocab_size": 9, "max_len": 4, "pooling": "mean", "vocab": {"x": 2}}])
    summary = _schema_summary(data, {})
    assert summary["multi_valued_fields"] == [{"name": "tags", "vocab_size": 9, "max_len": 4, "pooling": "mean"}]


def test_override_order_does_not_matter_and_a_cross_key_clash_blames_the_override(tmp_path):
    from tf4ctr_fast.config import load_config
    from tf4ctr_fast.errors import InputError

    assert load_config(None, ["train.min_lr=0.01", "train.lr=0.1"]).train.min_lr == 0.01
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  min_lr: 1.0e-6\n")
    with pytest.raises(InputError, match=r"^command-line override 'train.lr=1e-7': config key 'train.min_lr'"):
        load_config(config, ["train.lr=1e-7"])
    config.write_text("train:\n  lr: 1.0e-7\n")
    with pytest.raises(InputError, match=r"run.yaml: config key 'train.min_lr'"):
        load_config(config, ["train.seed=3"])
