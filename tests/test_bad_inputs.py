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
