"""Run folders (docs/runs.md): one run at a time, a finished or unfinished run never replaced without
--overwrite (which removes the run's own files only), resuming in process, and the divergence stop."""
import json
import os
import time

import pytest
import torch
from test_trainer import VOCAB, FailsInEpochTwo, TinyLogistic, make_cfg, planted_data

from tf4ctr_fast.cli import main
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.train.checkpoint import read_checkpoint
from tf4ctr_fast.train.runfolder import open_run
from tf4ctr_fast.train.runlog import RunLog, read_log
from tf4ctr_fast.train.trainer import train


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_second_run_on_a_locked_folder_fails_at_once_naming_the_pid(tmp_path):
    data, _ = planted_data(rows=(256, 100, 50))
    with open_run(tmp_path):           # run A holds the folder (a lock of another open file: as another process)
        start = time.monotonic()
        with pytest.raises(InputError, match=rf"another run is using this folder \(pid {os.getpid()},"):
            train(make_cfg(tmp_path), data, model=TinyLogistic(VOCAB))
        assert time.monotonic() - start < 2
        assert not (tmp_path / "log.jsonl").exists()
    train(make_cfg(tmp_path, epochs=1), data, model=TinyLogistic(VOCAB))    # free again


def test_a_finished_run_is_kept_unless_overwrite_which_removes_only_its_own_files(tmp_path):
    data, _ = planted_data(rows=(256, 100, 50))
    train(make_cfg(tmp_path, epochs=2), data, model=TinyLogistic(VOCAB))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".best.pt.x1y2.tmp").write_text("left by a kill")
    before = folder_bytes(tmp_path)
    with pytest.raises(InputError, match=rf"{tmp_path}: holds a finished run \(results.json\); pass --overwrite"):
        train(make_cfg(tmp_path, epochs=1), data, model=TinyLogistic(VOCAB))
    assert folder_bytes(tmp_path) == before

    train(make_cfg(tmp_path, epochs=1), data, model=TinyLogistic(VOCAB), overwrite=True)
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / ".best.pt.x1y2.tmp").exists()


@pytest.mark.parametrize("loader", ["device", "streaming"])
def test_an_unfinished_run_is_refused_with_how_to_resume_and_resumes_exactly(tmp_path, capsys, loader):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path / "run", batch_size=128, checkpoint_every_steps=1, loader=loader)  # 4 steps an epoch
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, data, model=FailsInEpochTwo(VOCAB, fail_at_call=4 + 3))
    before = folder_bytes(tmp_path / "run")
    with pytest.raises(InputError, match=rf"unfinished run .*`tf4ctr-fast train --resume {tmp_path / 'run'}`, "
                                         "or pass --overwrite"):
        train(cfg, data, model=TinyLogistic(VOCAB))
    assert folder_bytes(tmp_path / "run") == before
    run = read_checkpoint(tmp_path / "run" / "last.pt")["run"]
    assert (run["epoch"], run["step"]) == (2, 2)

    # a resume may not change what the remaining steps compute
    assert main(["train", "--resume", str(tmp_path / "run"), "train.lr=0.1"]) == 2
    assert "only train.progress, train.num_threads, train.checkpoint_every_steps" in capsys.readouterr().err

    resumed = train(cfg, data, model=TinyLogistic(VOCAB), resume=True)
    whole = train(make_cfg(tmp_path / "whole", batch_size=128, loader=loader), data, model=TinyLogistic(VOCAB))
    assert resumed["valid"] == whole["valid"] and resumed["test"] == whole["test"]
    events = [r["event"] for r in read_log(tmp_path / "run" / "log.jsonl")]
    assert events == ["params", "epoch", "resumed", *["epoch"] * (resumed["epochs"] - 1), "result"]
    with pytest.raises(InputError, match="has finished .*nothing to resume"):
        train(cfg, data, model=TinyLogistic(VOCAB), resume=True)


class LossTimes(TinyLogistic):
    """From its `at`-th loss on, multiplies the loss by `factor` (nan: a non-finite loss)."""

    def __init__(self, vocab_sizes, at, factor):
        super().__init__(vocab_sizes)
        self.calls, self.at, self.factor = 0, at, factor

    def loss(self, ids, y):
        self.calls += 1
        out = super().loss(ids, y)
        return {**out, "loss": out["loss"] * self.factor} if self.calls >= self.at else out


@pytest.mark.parametrize("factor,problem", [(float("nan"), "the loss or the gradient norm is not finite"),
                                            (1e4, "its mean train loss 3027 is over train.divergence_factor 100 times epoch 1's")])
def test_divergence_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, factor, problem):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path, batch_size=128, checkpoint_every_steps=2)            # 4 steps an epoch
    with pytest.raises(InputError) as e:
        train(cfg, data, model=LossTimes(VOCAB, at=4 + 3, factor=factor))
    assert str(e.value).startswith(f"training diverged in epoch 2 by step 4: {problem}")
    assert f"the last good checkpoint {tmp_path / 'last.pt'} (epoch 2 after step 2) is kept" in str(e.value)
    assert not (tmp_path / "results.json").exists()
    last = read_checkpoint(tmp_path / "last.pt")
    assert (last["run"]["epoch"], last["run"]["step"]) == (2, 2)
    assert all(torch.isfinite(v).all() for v in last["model_state"].values())
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_resume_rewrites_a_best_checkpoint_a_kill_kept_from_being_written(tmp_path):
    """Killed between last.pt and best.pt at the end of an improving epoch: best.pt comes from last.pt."""
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path / "run", batch_size=128, epochs=3)   # last.pt at epoch ends only, this short
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, data, model=FailsInEpochTwo(VOCAB, fail_at_call=4 + 1))
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert (last["run"]["epoch"], last["run"]["step"], last["run"]["best_epoch"]) == (2, 0, 1)
    (tmp_path / "run" / "best.pt").unlink()
    resumed = train(cfg, data, model=TinyLogistic(VOCAB), resume=True)
    whole = train(make_cfg(tmp_path / "whole", batch_size=128, epochs=3), data, model=TinyLogistic(VOCAB))
    assert resumed["valid"] == whole["valid"] and resumed["best_epoch"] == whole["best_epoch"]


def test_a_best_checkpoint_that_disagrees_with_last_is_refused(tmp_path):
    data, _ = planted_data(rows=(512, 200, 100))
    cfg = make_cfg(tmp_path, batch_size=128, checkpoint_every_steps=1)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, data, model=FailsInEpochTwo(VOCAB, fail_at_call=4 + 3))     # last.pt: epoch 2 step 2
    (tmp_path / "best.pt").unlink()
    with pytest.raises(InputError, match=rf"{tmp_path / 'best.pt'}: does not hold epoch 1, the best one"):
        train(cfg, data, model=TinyLogistic(VOCAB), resume=True)


def test_a_run_resumes_only_as_the_kind_of_run_that_wrote_its_checkpoint(tmp_path):
    """last.pt (one process) and last.dcp (sharded, tests/test_torchrun.py resumes one) are not
    interchangeable: each is refused by the other kind of run, saying which it needs."""
    data, _ = planted_data(rows=(64, 32, 16))
    cfg = make_cfg(tmp_path, nproc=2)
    cfg.model.backend = "torchrec"
    out = cfg.resolved_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(InputError, match="one-process run's checkpoint: resume it with train.nproc=1"):
        train(cfg, data, resume=True)
    (out / "last.pt").unlink()
    (out / "last.dcp").mkdir()
    (out / "last.dcp" / "meta.pt").write_bytes(b"")
    cfg.train.nproc = 1
    with pytest.raises(InputError, match="multi-process run's checkpoint: resume it on 2 or more ranks"):
        train(cfg, data, resume=True)


def test_overwrite_removes_a_sharded_checkpoint_only_when_a_run_wrote_it(tmp_path):
    out = tmp_path / "run"
    (out / "best.dcp").mkdir(parents=True)
    (out / "best.dcp" / "notes.txt").write_text("mine")     # no meta.pt: not a checkpoint folder
    (out / "log.jsonl").write_text("")
    with pytest.raises(InputError, match="best.dcp: is not a checkpoint folder a run wrote"):
        with open_run(out, overwrite=True):
            pass
    assert (out / "best.dcp" / "notes.txt").read_text() == "mine"
    (out / "best.dcp" / "meta.pt").write_bytes(b"")
    with open_run(out, overwrite=True):
        assert not (out / "best.dcp").exists() and not (out / "log.jsonl").exists()


def test_the_log_goes_on_after_the_records_a_checkpoint_accounts_for(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"event": "params"}\n{"event": "epoch"}\n{"event": "epoch"}\n{"event": "ep')  # cut by a kill
    with RunLog(path, keep=2) as log:
        log.write("resumed")
        assert log.records == 3
    assert [r["event"] for r in read_log(path)] == ["params", "epoch", "resumed"]
    with pytest.raises(InputError, match="fewer than the 5 records"):
        RunLog(path, keep=5)
