"""The CLI end to end on tiny data: prepare -> train -> evaluate -> predict, and bad input."""
import csv
import gzip
import json

import numpy as np
import pytest

from tf4ctr_fast.cli import main

TINY_MODEL = ["model.mlp_s_hidden=[16]", "model.mlp_c_hidden=[16,16]", "model.dnn_hidden=[16]",
              "model.embedding_dim=4", "train.batch_size=64", "train.eval_batch_size=256",
              "train.epochs=2", "train.progress=false"]


def write_ids_csv(path, rows, header=("user", "item", "ctx", "label")):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def planted_rows(n, seed):
    rng = np.random.default_rng(seed)
    user, item, ctx = rng.integers(0, 20, n), rng.integers(100, 130, n), rng.integers(0, 3, n)
    label = ((user % 2 == 0) ^ (item % 3 == 0)).astype(int)
    return np.column_stack([user, item, ctx, label]).tolist()


def write_planted_run(folder):
    """Planted train/valid/test CSVs in `folder` and a run config over them; returns the config path."""
    paths = {}
    for split, n, seed in (("train", 600, 0), ("valid", 200, 1), ("test", 200, 2)):
        paths[split] = folder / f"{split}.csv.gz"
        write_ids_csv(paths[split], planted_rows(n, seed))
    config = folder / "run.yaml"
    config.write_text(
        "dataset:\n  name: tiny\n  format: csv_ids\n"
        f"  train: {paths['train']}\n  valid: {paths['valid']}\n  test: {paths['test']}\n"
        f"  prepared_dir: {folder / 'prepared'}\n  group_field: user\n  keep_columns: [user, item]\n"
        f"train:\n  out_dir: {folder / 'run'}\n  monitor: auc+gauc\n")
    return config


@pytest.fixture
def ids_dataset(tmp_path):
    return tmp_path, write_planted_run(tmp_path)


def test_prepare_train_evaluate_predict(ids_dataset, capsys):
    tmp_path, config = ids_dataset
    assert main(["prepare", "--config", str(config)]) == 0
    assert (tmp_path / "prepared" / "schema.json").exists()
    assert main(["train", "--config", str(config), *TINY_MODEL]) == 0
    out = capsys.readouterr().out
    assert "test   AUC" in out and "samples/s" in out
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["test"]["auc"] > 0.6  # the planted rule is learnable

    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "test"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["auc"] == pytest.approx(result["test"]["auc"], abs=1e-9)

    new = tmp_path / "new.csv"
    write_ids_csv(new, [[0, 100, 1], [999, 100, 0]], header=("user", "item", "ctx"))
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--input", str(new),
                 "--output", str(tmp_path / "scores.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "scores.csv")))
    assert rows[0] == ["user", "item", "score"]
    assert [r[:2] for r in rows[1:]] == [["0", "100"], ["999", "100"]]  # raw ids, unseen user kept as given
    assert all(0.0 < float(r[2]) < 1.0 for r in rows[1:])
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--device", "tpu"]) == 2
    assert "--device: unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["DualMLP", "DNN"])
def test_baselines_train(ids_dataset, model):
    tmp_path, config = ids_dataset
    assert main(["train", "--config", str(config), f"model.name={model}", *TINY_MODEL]) == 0


def test_bad_input_exits_2_naming_file_and_line(ids_dataset, capsys):
    tmp_path, config = ids_dataset
    write_ids_csv(tmp_path / "train.csv.gz", [[1, 100, 0, 1], [2, "abc", 0, 0]])
    assert main(["prepare", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.csv.gz" in err and ":3" in err
    assert not (tmp_path / "prepared").exists()


def test_unknown_key_exits_2(ids_dataset, capsys):
    _, config = ids_dataset
    assert main(["train", "--config", str(config), "model.alpah=0.3"]) == 2
    assert "'model.alpah' is unknown" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "model.name=DCN", "model.params.cross_layers=2"]) == 2
    assert "'model.params.cross_layers' is unknown" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_train_help_states_how_each_backend_trains_embeddings(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "dense Adam" in text and "whole tables" in text                       # reference
    assert "fused sparse optimizer" in text and "rows a batch looks up" in text  # torchrec
    assert "--nproc" in text


def test_overrides_after_an_option_still_count(ids_dataset, capsys):
    _, config = ids_dataset
    # the key after --nproc must reach the config (and fail there), not be dropped or refused by argparse
    assert main(["train", "--config", str(config), "train.epochs=1", "--nproc", "1", "model.alpah=0.3"]) == 2
    assert "'model.alpah' is unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(config), "--bogus"])
    assert e.value.code == 2


def test_train_reprepares_when_dataset_options_change(ids_dataset, capsys):
    tmp_path, config = ids_dataset
    assert main(["prepare", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), *TINY_MODEL, "train.epochs=1"]) == 0
    assert "preparing" not in capsys.readouterr().out  # same options: the folder is reused
    assert main(["train", "--config", str(config), *TINY_MODEL, "train.epochs=1", "dataset.min_count=3",
                 "--overwrite"]) == 0
    assert "prepared with other dataset options" in capsys.readouterr().out
    schema = json.loads((tmp_path / "prepared" / "schema.json").read_text())
    assert schema["options"]["min_count"] == 3
