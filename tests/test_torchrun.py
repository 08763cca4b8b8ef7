"""`torchrun ... -m tf4ctr_fast train`: two torchrun invocations (`--nnodes 2`, one rank each, a c10d
rendezvous on 127.0.0.1: two "machines" on this one) train one run together through the CLI, and
their loss trajectory is the one-process run's.

No BatchNorm and no dropout (per-rank batch statistics and masks differ from one process's by
design), and no embedding L2: each rank regularizes the rows its own slice looked up, so a row only
one rank saw gets half the one-process decay (docs/distributed.md); with it the trajectories differ
by about 1e-3 relative."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_cli import write_planted_run
from tf4ctr_fast.cli import main
from tf4ctr_fast.train.runlog import read_log
from tf4ctr_fast.torchrun import launched

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="gloo ranks on CPU; CUDA ranks need a GPU each")

ENGINE = ["model.backend=torchrec", "model.embedding_dim=8", "model.mlp_s_hidden=[16]",
          "model.mlp_c_hidden=[16,16]", "model.emb_reg=0", "model.batch_norm=false",
          "model.net_dropout=0", "train.sparse_optimizer=rowwise_adagrad", "train.sparse_lr=0.1",
          "train.lr=0.01", "train.batch_size=64",
          "train.eval_batch_size=199", "train.epochs=3", "train.patience=5", "train.progress=false",
          "train.num_threads=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_nodes(port, train_args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "0",
           "-m", "tf4ctr_fast", "train", *train_args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]


def _outputs(nodes):
    return [node.communicate(timeout=600)[0] for node in nodes]


def _torchrun_two_nodes(config, out_dir, *extra):
    nodes = _start_two_nodes(_free_port(), ["--config", str(config), *ENGINE, f"train.out_dir={out_dir}", *extra])
    outputs = _outputs(nodes)
    return [node.returncode for node in nodes], outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    config = write_planted_run(tmp)
    codes, outputs = _torchrun_two_nodes(config, tmp / "run_torchrun")
    assert codes == [0, 0], "\n".join(outputs)
    assert main(["train", "--config", str(config), *ENGINE, f"train.out_dir={tmp / 'run_one'}"]) == 0
    return tmp, config, outputs


def _epochs(run_dir):
    return [r for r in read_log(run_dir / "log.jsonl") if r["event"] == "epoch"]


def test_two_torchrun_nodes_follow_the_one_process_run(runs):
    tmp, _, outputs = runs
    nodes, one = _epochs(tmp / "run_torchrun"), _epochs(tmp / "run_one")
    assert read_log(tmp / "run_torchrun" / "log.jsonl")[0]["config"]["train"]["nproc"] == 2
    assert len(nodes) == len(one) == 3
    # same initial weights (the sharded and the fused tables are built alike), same batches: the
    # sum order of the gradients is all that differs
    assert [r["train_loss"] for r in nodes] == pytest.approx([r["train_loss"] for r in one], rel=1e-5)
    # the validation, scored on the shards by both ranks (200 rows in batches of 199: the last one has
    # fewer rows than ranks), equals one process's
    assert [r["valid"]["logloss"] for r in nodes] == pytest.approx([r["valid"]["logloss"] for r in one], rel=1e-5)
    assert [r["valid"]["auc"] for r in nodes] == pytest.approx([r["valid"]["auc"] for r in one], rel=1e-6)
    result = json.loads((tmp / "run_torchrun" / "results.json").read_text())
    assert result["test"]["auc"] > 0.6
    # exactly one rank (rank 0, on either "node") reports the result
    assert sum("test   AUC" in out for out in outputs) == 1


def test_bad_input_on_rank_0_stops_every_rank(runs):
    tmp, config, _ = runs
    # the run folder holds a finished run: rank 0 refuses it, and the other rank stops with its message
    codes, outputs = _torchrun_two_nodes(config, tmp / "run_torchrun")
    assert all(code != 0 for code in codes)
    assert all("--overwrite" in out for out in outputs), outputs


def test_not_launched_without_torchrun(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert launched() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launched() == (3, 4, 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched() is None        # torchrun with one rank: an ordinary one-process run


def _children(pid):
    """The pids whose parent is `pid` (torchrun's workers of one agent)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_killed_rank_stops_the_job_and_resume_continues_it(runs):
    """SIGKILL one rank's process mid-run: both "machines" stop, naming what happened; `--resume` on
    two ranks again continues from last.dcp (written every 4 steps: most likely mid-epoch), and the
    run's loss trajectory is still the one-process run's (the same batches in the same order, the
    optimizers' state and the position in the epoch carried over)."""
    tmp, config, _ = runs
    out_dir = tmp / "run_killed"
    port = _free_port()
    nodes = _start_two_nodes(port, ["--config", str(config), *ENGINE, f"train.out_dir={out_dir}",
                                    "train.epochs=8", "train.patience=8", "train.checkpoint_every_steps=4"])
    deadline = time.monotonic() + 300
    while not (out_dir / "last.dcp").is_dir():      # the first sharded checkpoint (epoch 1, step 4) is in place
        assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), _outputs(nodes)
        time.sleep(0.01)
    victims = _children(nodes[1].pid)
    assert victims, "node 1's torchrun has no worker"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    outputs = _outputs(nodes)
    assert all(n.returncode != 0 for n in nodes), outputs
    assert not (out_dir / "results.json").exists()
    assert "SIGKILL" in outputs[1] or "Signal 9" in outputs[1], outputs[1]
    # the surviving rank names the lost peer and the way on
    assert f"tf4ctr-fast train --resume {out_dir}" in "\n".join(outputs), outputs
    saved = torch.load(out_dir / "last.dcp" / "meta.pt", weights_only=True)
    assert saved["world_size"] == 2 and (saved["run"]["epoch"], saved["run"]["step"]) >= (1, 4)

    nodes = _start_two_nodes(_free_port(), ["--resume", str(out_dir), "train.progress=false"])
    outputs = _outputs(nodes)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(outputs)
    records = read_log(out_dir / "log.jsonl")
    assert any(r["event"] == "resumed" for r in records)
    resumed, one = _epochs(out_dir), _epochs(tmp / "run_one")
    assert [r["epoch"] for r in resumed] == list(range(1, len(resumed) + 1))
    assert [r["train_loss"] for r in resumed[:3]] == pytest.approx([r["train_loss"] for r in one], rel=1e-5)
    assert json.loads((out_dir / "results.json").read_text())["test"]["auc"] > 0.6
