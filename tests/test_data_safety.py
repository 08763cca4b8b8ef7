"""Never lose a user's data (issue 11): each command removes or replaces only what it made; names stay
inside their parent folders; evaluate refuses data encoded unlike the checkpoint's; a killed prepare
leaves no worker running and its temp folder is removed by the next prepare."""
from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tf4ctr_fast.cli import main
from tf4ctr_fast.config import RunConfig, load_config
from tf4ctr_fast.errors import InputError

from test_cli import TINY_MODEL, write_ids_csv, write_planted_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL_SYNTHETIC = ["dataset.synthetic.rows=2000", "dataset.synthetic.num_int_fields=2",
                   "dataset.synthetic.num_cat_fields=3", "dataset.synthetic.cat_vocab=50"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# prepare replaces only a prepared folder


def test_prepare_into_the_raw_data_folder_keeps_the_raw_files(tmp_path, capsys):
    config = write_planted_run(tmp_path)
    before = _files(tmp_path)
    assert main(["prepare", "--config", str(config), f"dataset.prepared_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: is not a prepared folder" in err
    assert _files(tmp_path) == before


def test_prepare_keeps_a_file_at_the_prepared_path(tmp_path, capsys):
    config = write_planted_run(tmp_path)
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["prepare", "--config", str(config), f"dataset.prepared_dir={target}"]) == 2
    assert f"{target}: exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_prepare_keeps_a_prepared_folder_holding_a_user_file(tmp_path, capsys):
    config = write_planted_run(tmp_path)
    assert main(["prepare", "--config", str(config)]) == 0
    (tmp_path / "prepared" / "README").write_text("mine")
    assert main(["prepare", "--config", str(config)]) == 2
    assert "README is not part of a prepared folder" in capsys.readouterr().err
    assert (tmp_path / "prepared" / "README").read_text() == "mine"


def test_prepare_replaces_a_prepared_folder_of_todays_layout(tmp_path):
    """A folder written before schema.json had a fingerprint is still recognised and replaced."""
    config = write_planted_run(tmp_path)
    assert main(["prepare", "--config", str(config)]) == 0
    schema_path = tmp_path / "prepared" / "schema.json"
    old = json.loads(schema_path.read_text())
    del old["fingerprint"]
    schema_path.write_text(json.dumps(old))
    assert main(["prepare", "--config", str(config), "dataset.min_count=1"]) == 0
    assert "fingerprint" in json.loads(schema_path.read_text())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("name", ["''", ".", "..", "../../x", "/tmp/x", "a/b", "a\\b"])  # '' : YAML for empty
def test_dataset_name_is_confined_to_data_prepared(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", *SMALL_SYNTHETIC, "dataset.name=other"]) == 0
    before = _files(tmp_path)
    assert main(["prepare", *SMALL_SYNTHETIC, f"dataset.name={name}"]) == 2
    assert "config key 'dataset.name'" in capsys.readouterr().err
    assert _files(tmp_path) == before   # data_prepared/other survives
    assert not (tmp_path.parent / "x").exists()


def test_prepared_dir_naming_the_parent_of_prepared_folders_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", *SMALL_SYNTHETIC, "dataset.name=other"]) == 0
    assert main(["prepare", *SMALL_SYNTHETIC, "dataset.prepared_dir=data_prepared"]) == 2
    assert "data_prepared: is not a prepared folder" in capsys.readouterr().err
    assert (tmp_path / "data_prepared" / "other" / "schema.json").exists()


def test_run_folder_name_is_confined_to_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["dataset.name=../../x"])
    with pytest.raises(InputError, match="dataset.name"):
        cfg.resolved_out_dir()
    # train checks the run folder before preparing anything
    assert main(["train", *SMALL_SYNTHETIC, "dataset.name=../x", f"dataset.prepared_dir={tmp_path / 'p'}"]) == 2
    assert "config key 'dataset.name'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The default run folder


def test_default_run_folder_differs_in_backend_and_head():
    folders = {load_config(None, overrides).resolved_out_dir()
               for overrides in ([], ["model.backend=reference"], ["model.head=reference"], ["model.name=DNN"],
                                 ["train.seed=1"])}
    assert len(folders) == 5
    # backend "auto" is named as the run resolves it (TF4CTR on the CPU: torchrec), never "auto"
    assert RunConfig().resolved_out_dir() == Path("runs/synthetic_criteo_TF4CTR_torchrec_fused_seed2023")


# ---------------------------------------------------------------------------------------------
# predict writes no input


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run over planted csv_ids data: (folder, config)."""
    folder = tmp_path_factory.mktemp("run")
    config = write_planted_run(folder)
    assert main(["train", "--config", str(config), *TINY_MODEL, "train.epochs=1"]) == 0
    return folder, config


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "checkpoint"])
def test_predict_refuses_to_write_over_its_input(trained, tmp_path, capsys, link):
    folder, _ = trained
    source = tmp_path / "new.csv"
    write_ids_csv(source, [[0, 100, 1], [3, 101, 0]], header=("user", "item", "ctx"))
    output = {"same": source, "symlink": tmp_path / "sym.csv", "hardlink": tmp_path / "hard.csv",
              "checkpoint": folder / "run" / "best.pt"}[link]
    if link == "symlink":
        output.symlink_to(source)
    elif link == "hardlink":
        os.link(source, output)
    protected = folder / "run" / "best.pt" if link == "checkpoint" else source
    before = protected.read_bytes()
    assert main(["predict", "--checkpoint", str(folder / "run"), "--input", str(source),
                 "--output", str(output)]) == 2
    assert "--output" in capsys.readouterr().err
    assert protected.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# evaluate checks the data's encoding


def test_evaluate_refuses_data_prepared_again_with_other_options(trained, capsys):
    folder, config = trained
    assert main(["evaluate", "--checkpoint", str(folder / "run")]) == 0
    capsys.readouterr()
    assert main(["prepare", "--config", str(config), "dataset.min_count=30"]) == 0
    try:
        assert main(["evaluate", "--checkpoint", str(folder / "run")]) == 2
        err = capsys.readouterr().err
        assert str(folder / "prepared") in err and str(folder / "run" / "best.pt") in err
        assert "vocab size" in err and "(checkpoint vs data)" in err
    finally:  # the module's other tests use the training data
        assert main(["prepare", "--config", str(config)]) == 0


def test_evaluate_refuses_a_folder_with_a_larger_vocabulary(trained, tmp_path, capsys):
    folder, config = trained
    rows = np.array([[u, 100 + u % 50, u % 3, u % 2] for u in range(400)]).tolist()  # 400 users, not 20
    for split in ("train", "valid", "test"):
        write_ids_csv(tmp_path / f"{split}.csv", rows)
    other = tmp_path / "other"
    assert main(["prepare", "--config", str(config), f"dataset.prepared_dir={other}", "dataset.min_count=1",
                 *(f"dataset.{s}={tmp_path / f'{s}.csv'}" for s in ("train", "valid", "test"))]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(folder / "run"), "--data", str(other)]) == 2
    assert "field 'user' vocab size" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A killed prepare


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _write_big_csv(folder: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.integers(0, 2, rows), rng.integers(0, 5000, (rows, 6))])
    np.savetxt(folder / "train.csv", table, fmt="%d", delimiter=",", header="label,a,b,c,d,e,f", comments="")
    columns = [{"name": "label", "kind": "label"}] + [{"name": c, "kind": "categorical", "codec": "int"}
                                                       for c in "abcdef"]
    (folder / "schema.yaml").write_text(yaml.safe_dump({"columns": columns}))


PREPARE_SCRIPT = """
import sys
from pathlib import Path
from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.schema_csv import prepare_schema_csv
d = Path(sys.argv[1])
prepare_schema_csv(DatasetConfig(name="big", format="csv", train=str(d / "train.csv"), min_count=1),
                   d / "big", schema=str(d / "schema.yaml"), workers=2, chunk_bytes=1 << 15)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent on Linux")
def test_kill_9_of_prepare_leaves_no_process_and_no_temp_folder(tmp_path):
    _write_big_csv(tmp_path, 50_000)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", PREPARE_SCRIPT, str(tmp_path)], env=env)
    seen: set[int] = set()
    temps: list[Path] = []
    try:
        # kill once pass 2 runs: its temp folder exists and its workers are spawned
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            seen |= _children(proc.pid)
            temps = list(tmp_path.glob(".big.*.tmp"))
            if temps and len(_children(proc.pid)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None and temps, "the prepare ended before its pass 2 could be caught"
        seen |= _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in seen):
            time.sleep(0.05)
        assert not [pid for pid in seen if _alive(pid)], "workers or the resource tracker outlived the prepare"
    finally:
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    assert temps[0].exists()
    # another prepare's live temp folder (this process is alive) is left alone
    live = tmp_path / f".big.{socket.gethostname()}.{os.getpid()}.x.tmp"
    live.mkdir()
    _write_big_csv(tmp_path, 2000)
    subprocess.run([sys.executable, "-c", PREPARE_SCRIPT, str(tmp_path)], env=env, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "big", "schema.yaml", "train.csv"])


# ---------------------------------------------------------------------------------------------
# Units: the encoding fingerprint, links at the prepared path


def _field(name, vocab, **extra):
    return {"name": name, "kind": "categorical", "vocab_size": len(vocab) + 2, "codec": "int",
            "vocab": {str(v): i + 2 for i, v in enumerate(vocab)}, **extra}


def test_fingerprint_covers_the_encoding_and_only_it():
    from tf4ctr_fast.data.fingerprint import check_same_encoding, fingerprint

    trained = {"fields": [_field("a", [1, 2]), _field("b", [5])], "splits": {"train": 10}}
    same = {"fields": [_field("a", [1, 2], min_count=9), _field("b", [5])], "splits": {"test": 3},
            "fingerprint": "stale"}
    assert fingerprint(trained) == fingerprint(same)   # rows, splits, min_count: not the encoding
    check_same_encoding(Path("ckpt.pt"), trained, Path("data"), same)
    cases = {"fields ['a', 'b'] vs ['b', 'a']": [_field("b", [5]), _field("a", [1, 2])],
             "field 'a' vocab size 4 vs 5": [_field("a", [1, 2, 3]), _field("b", [5])],
             "field 'b' vocabulary: same size, other values": [_field("a", [1, 2]), _field("b", [6])]}
    for message, fields in cases.items():
        with pytest.raises(InputError, match=f"^data is not encoded like the data ckpt.pt was trained on: "
                                             f"{re.escape(message)} \\(checkpoint vs data\\)"):
            check_same_encoding(Path("ckpt.pt"), trained, Path("data"), {"fields": fields})


def test_prepare_keeps_a_symlink_at_the_prepared_path(tmp_path, capsys):
    config = write_planted_run(tmp_path)
    assert main(["prepare", "--config", str(config)]) == 0
    (tmp_path / "link").symlink_to(tmp_path / "prepared")
    assert main(["prepare", "--config", str(config), f"dataset.prepared_dir={tmp_path / 'link'}"]) == 2
    assert f"{tmp_path / 'link'}: is a symbolic link" in capsys.readouterr().err
    assert (tmp_path / "link").is_symlink()


def test_temp_folders_of_dead_processes_are_removed_and_only_those(tmp_path):
    from tf4ctr_fast.io_utils import temp_dir_beside

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    prefix = f".out.csv.{socket.gethostname()}"
    stale = tmp_path / f"{prefix}.{dead}.a.input"
    live = tmp_path / f"{prefix}.{os.getpid()}.b.input"
    other = tmp_path / f"{prefix}.{dead}.c.tmp"      # another suffix: another kind of temp folder
    for folder in (stale, live, other):
        folder.mkdir()
    with temp_dir_beside(tmp_path / "out.csv", ".input") as tmp:
        assert tmp.is_dir() and not stale.exists() and live.exists() and other.exists()
    assert not tmp.exists()
