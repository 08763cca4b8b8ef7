"""`tf4ctr-fast train --nproc 2`: two gloo ranks train a tiny TF4CTR with sharded tables through the CLI,
score and checkpoint their shards (sharded checkpoint folders), and the checkpoint, loaded whole into
one process, predicts what the ranks reported.
One launch (process start-up and the torchrec imports dominate the cost)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from torch.multiprocessing import ProcessRaisedException

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from test_cli import write_planted_run  # noqa: E402

import tf4ctr_fast.distributed  # noqa: E402
from tf4ctr_fast.cli import main  # noqa: E402
from tf4ctr_fast.config import load_config  # noqa: E402
from tf4ctr_fast.data.columns import load_prepared  # noqa: E402
from tf4ctr_fast.errors import InputError  # noqa: E402
from tf4ctr_fast.train.checkpoint import _build_model, load_checkpoint, read_checkpoint, restore_weights  # noqa: E402
from tf4ctr_fast.train.runlog import read_log  # noqa: E402
from tf4ctr_fast.train.trainer import predict_proba, train  # noqa: E402

# distributed.init_distributed gives every rank its own GPU whenever CUDA is present.
pytestmark = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                                reason="2 ranks on a CUDA machine need 2 GPUs")

ENGINE = ["model.backend=torchrec", "model.embedding_dim=8", "model.mlp_s_hidden=[16]",
          "model.mlp_c_hidden=[16,16]", "model.emb_reg=0.001", "train.sparse_lr=0.1", "train.lr=0.01",
          "train.batch_size=64", "train.eval_batch_size=256", "train.epochs=6", "train.progress=false"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nproc2")
    config = write_planted_run(tmp)
    code = main(["train", "--config", str(config), "--nproc", "2", *ENGINE])
    return code, tmp, config


def test_two_ranks_train_through_the_cli(two_rank_run):
    code, tmp, _ = two_rank_run
    assert code == 0
    result = json.loads((tmp / "run" / "results.json").read_text())
    assert result["test"]["auc"] > 0.6                      # the planted rule is learnable
    records = read_log(tmp / "run" / "log.jsonl")
    assert records[0]["config"]["train"]["nproc"] == 2
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == result["epochs"] >= 2
    # samples count the whole batches (both ranks' slices): 600 rows per epoch
    assert all(r["train_samples"] == 600 and r["steps"] == 10 for r in epochs)
    assert all(r["sparse_lr"] is not None for r in epochs)


def test_sharded_checkpoint_predicts_what_the_ranks_evaluated(two_rank_run, capsys):
    _, tmp, config = two_rank_run
    run = tmp / "run"
    result = json.loads((run / "results.json").read_text())
    best = [r for r in read_log(run / "log.jsonl") if r["event"] == "epoch"][result["best_epoch"] - 1]
    # No whole table anywhere: the checkpoints are sharded folders (every rank wrote its shards).
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert sorted(p.name for p in (run / "best.dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                                      "meta.pt"]
    # The final figures, scored on the shards with best.dcp loaded back, == that epoch's validation
    assert result["valid"]["n"] == best["valid"]["n"] == 200
    for key in ("auc", "gauc", "logloss"):
        assert result["valid"][key] == pytest.approx(best["valid"][key], rel=1e-6, abs=1e-9), key
    # ... and == the sharded checkpoint loaded whole into one process (up to the order of float sums)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--split", "valid"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated.pop("split") == "valid" and evaluated["n"] == 200
    for key in ("auc", "gauc", "logloss"):
        assert evaluated[key] == pytest.approx(result["valid"][key], rel=1e-6), key

    # It loads into the fused single-process model too, predicting the same; and `consolidate`
    # writes the equivalent one-file checkpoint (beside it; an existing file is never replaced).
    loaded, cfg, schema = load_checkpoint(run / "best.dcp")
    fused = _build_model(cfg, [f["name"] for f in schema["fields"]], [f["vocab_size"] for f in schema["fields"]])
    restore_weights(run / "best.dcp", fused)
    assert fused.sparse_optimizer() is not None
    valid = load_prepared(tmp / "prepared").split("valid")
    expected = predict_proba(loaded, valid, 256)
    np.testing.assert_allclose(predict_proba(fused, valid, 256), expected, rtol=1e-6, atol=1e-7)
    assert main(["consolidate", "--checkpoint", str(run), "--output", str(tmp / "whole.pt")]) == 0
    assert main(["consolidate", "--checkpoint", str(run), "--output", str(tmp / "whole.pt")]) == 2
    whole, _, _ = load_checkpoint(tmp / "whole.pt")
    np.testing.assert_array_equal(predict_proba(whole, valid, 256), expected)


def test_a_sharded_run_resumes_on_another_number_of_ranks(two_rank_run, tmp_path):
    """The finished 2-rank run, as if killed just before its results: resumed on 3 ranks, the
    checkpoints load onto the new sharding (DCP reshards) and the final figures are the same."""
    _, tmp, _ = two_rank_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run, ignore=shutil.ignore_patterns("run.lock"))
    result = json.loads((run / "results.json").read_text())
    (run / "results.json").unlink()
    assert main(["train", "--resume", str(run), "train.nproc=3"]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["best_epoch"] == result["best_epoch"] and again["epochs"] == result["epochs"]
    for split in ("valid", "test"):
        for key in ("auc", "gauc", "logloss"):
            assert again[split][key] == pytest.approx(result[split][key], rel=1e-6), (split, key)
    assert [r["event"] for r in read_log(run / "log.jsonl")][-2:] == ["resumed", "result"]


def test_bad_input_in_a_rank_comes_back_as_input_error(two_rank_run, monkeypatch):
    """A rank's exception reaches the parent as traceback text; an InputError must stay one (exit 2)."""
    _, tmp, config = two_rank_run

    def rank_fails(nproc, fn, *args):
        raise ProcessRaisedException("Traceback (most recent call last):\n  ...\n"
                                     "tf4ctr_fast.errors.InputError: field 'item': id 99 is outside [0, 5)",
                                     error_index=1, error_pid=123)

    monkeypatch.setattr(tf4ctr_fast.distributed, "launch", rank_fails)
    # a folder of its own: the finished run's is kept (and train refuses to replace it)
    cfg = load_config(config, [*ENGINE, "train.nproc=2", f"train.out_dir={tmp / 'failing'}"])
    with pytest.raises(InputError, match="field 'item': id 99"):
        train(cfg, load_prepared(tmp / "prepared"))

    def rank_crashes(nproc, fn, *args):
        raise ProcessRaisedException("Traceback ...\nRuntimeError: boom", error_index=0, error_pid=1)

    monkeypatch.setattr(tf4ctr_fast.distributed, "launch", rank_crashes)
    with pytest.raises(ProcessRaisedException, match="boom"):
        train(cfg, load_prepared(tmp / "prepared"))


def test_sharded_runs_use_the_fused_head(two_rank_run):
    _, tmp, _ = two_rank_run
    assert read_log(tmp / "run" / "log.jsonl")[0]["config"]["model"]["head"] == "fused"


def start_two_rank_run(config, run, epochs: int) -> subprocess.Popen:
    """`train --nproc 2` in a process group of its own, returned once its first last.dcp exists."""
    cmd = [sys.executable, "-m", "tf4ctr_fast", "train", "--config", str(config), "--nproc", "2", *ENGINE,
           f"train.epochs={epochs}", f"train.patience={epochs}", f"train.out_dir={run}", "train.num_threads=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "last.dcp").is_dir():
        if time.monotonic() > deadline or proc.poll() is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no last.dcp: {proc.communicate()[0]}")
        time.sleep(0.05)
    return proc


def test_sigterm_stops_the_ranks_at_a_checkpoint_and_resume_finishes(two_rank_run, tmp_path):
    """SIGTERM to the whole `--nproc 2` process group (what a scheduler sends): exit 143, the message
    names last.dcp and the resume command; the resumed run finishes with every epoch logged once."""
    _, tmp, config = two_rank_run
    run = tmp_path / "run"
    proc = start_two_rank_run(config, run, epochs=40)
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out
    assert f"{run / 'last.dcp'} holds the run at epoch" in out and f"tf4ctr-fast train --resume {run}" in out, out
    assert not (run / "results.json").exists()

    assert main(["train", "--resume", str(run), "train.progress=false"]) == 0
    records = read_log(run / "log.jsonl")
    epochs = [r["epoch"] for r in records if r["event"] == "epoch"]
    assert epochs == list(range(1, 41)) and any(r["event"] == "resumed" for r in records)


def test_ranks_stop_at_a_checkpoint_when_the_launcher_is_killed(two_rank_run, tmp_path):
    """SIGKILL to the `--nproc` launcher alone (it cannot forward it): its ranks must not train on as
    orphans holding the run folder. torch's spawn asks the kernel for SIGINT to each rank when the
    launcher dies (prctl PR_SET_PDEATHSIG in torch.multiprocessing's _wrap), which stops them like a
    Ctrl-C; they leave a whole last.dcp to resume from."""
    _, tmp, config = two_rank_run
    run = tmp_path / "run"
    proc = start_two_rank_run(config, run, epochs=100000)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)                # EOF: every rank (they share the pipe) has exited
        meta = read_checkpoint(run / "last.dcp")     # whole: a stop never leaves half a checkpoint
        assert meta["epoch"] >= 1 and not (run / "results.json").exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)     # the ranks, if they outlived the test's patience
        except ProcessLookupError:
            pass
