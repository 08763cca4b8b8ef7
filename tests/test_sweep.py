"""`tf4ctr-fast sweep`: the statistics against scipy's (values computed with scipy 1.17, which the
project does not depend on), the argument parsing, and a whole tiny sweep: runs, table, skip on rerun."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tf4ctr_fast import cli
from tf4ctr_fast.errors import InputError
from tf4ctr_fast.sweep import (configurations, folder_of, paired, parse_grid, parse_seeds, seeds_for_power,
                               t_two_tailed_p, welch)

# DNN test AUCs over 7 seeds (issue "Comparisons users can trust") against a made-up tighter set
A = [0.98336, 0.98448, 0.98444, 0.98089, 0.98508, 0.98464, 0.98516]
B = [0.98504, 0.9851, 0.9846, 0.9855, 0.9849, 0.9848, 0.9853]


def test_welch_matches_scipy():
    t, df, p = welch(A, B)   # scipy.stats.ttest_ind(A, B, equal_var=False)
    assert t == pytest.approx(-1.7803157264676868, rel=1e-12)
    assert df == pytest.approx(6.493723490796945, rel=1e-12)
    assert p == pytest.approx(0.121559604376372, rel=1e-9)


def test_paired_matches_scipy():
    t, df, p = paired(A, B)  # scipy.stats.ttest_rel(A, B)
    assert (t, df) == (pytest.approx(-1.6061369009918163, rel=1e-12), 6)
    assert p == pytest.approx(0.1593670477628373, rel=1e-9)


@pytest.mark.parametrize("t, df, want", [(2.5, 3.7, 0.07182202291182678), (0.1, 100, 0.9205445310958512),
                                         (12, 1.5, 0.018042029274027864), (-2.5, 3.7, 0.07182202291182678)])
def test_t_distribution_tail_matches_scipy(t, df, want):
    assert t_two_tailed_p(t, df) == pytest.approx(want, rel=1e-9)   # 2 * scipy.stats.t.sf(|t|, df)


def test_seeds_for_power():
    # sigma 0.0015 (the project's DNN on Frappe) and a 0.001 AUC claim: 2 * 2.8016^2 * 2.25 = 35.3
    assert seeds_for_power(0.001, 0.0015, 0.0015) == 36
    assert seeds_for_power(-0.004, 0.0015, 0.0015) == 3
    assert seeds_for_power(0.0, 0.001, 0.001) is None


def test_degenerate_samples():
    assert all(math.isnan(x) for x in welch([1.0], B))     # one value: no variance, no test
    assert welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0         # identical constants
    assert welch([1.0, 1.0], [2.0, 2.0])[2] == 0.0


def test_parse_seeds_and_grid():
    assert parse_seeds("2023-2025") == [2023, 2024, 2025]
    assert parse_seeds("1-2,7,2") == [1, 2, 7]
    grid = parse_grid(["model.name=TF4CTR,DNN", "model.mlp_c_hidden=[400,400],[200]"])
    assert grid == [("model.name", ["TF4CTR", "DNN"]), ("model.mlp_c_hidden", ["[400,400]", "[200]"])]
    configs = configurations(grid)
    assert len(configs) == 4 and configs[0] == {"model.name": "TF4CTR", "model.mlp_c_hidden": "[400,400]"}
    assert len({folder_of(c) for c in configs}) == 4
    assert configurations([]) == [{}]


@pytest.mark.parametrize("seeds, grid, needle", [
    ("2025-2023", [], "--seeds"), ("x", [], "--seeds"),
    ("1", ["model.name"], "--grid"), ("1", ["model.name=A,"], "--grid"),
    ("1", ["dataset.min_count=1,2"], "dataset keys"), ("1", ["train.seed=1,2"], "sets train.seed"),
    ("1", ["model.name=A", "model.name=B"], "given twice"),
])
def test_bad_arguments_name_the_option(tmp_path, capsys, seeds, grid, needle):
    argv = ["sweep", "--seeds", seeds, "--out", str(tmp_path / "s")] + [x for g in grid for x in ("--grid", g)]
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_unknown_baseline(tmp_path, capsys):
    argv = ["sweep", "--seeds", "1", "--grid", "model.name=TF4CTR,DNN", "--baseline", "model.name=FM",
            "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    assert "--baseline 'model.name=FM' is not one of" in capsys.readouterr().err


TINY = ["dataset.name=sweep_tiny", "dataset.synthetic.rows=3000", "train.epochs=1", "train.batch_size=500",
        "model.mlp_s_hidden=[16]", "model.mlp_c_hidden=[16]", "model.dnn_hidden=[16]"]


def test_tiny_sweep_runs_every_pair_then_skips_finished(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--seeds", "1-2", "--grid", "model.name=TF4CTR,DNN", "--baseline", "model.name=DNN",
            "--jobs", "2", "--out", str(out), f"dataset.prepared_dir={tmp_path / 'data'}", *TINY]
    assert cli.main(argv) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["baseline"] == "model.name=DNN"
    rows = {r["configuration"]: r for r in summary["rows"]}
    assert set(rows) == {"model.name=TF4CTR", "model.name=DNN"}
    for row in rows.values():
        assert row["seeds"] == [1, 2] and row["missing_seeds"] == []
        auc = row["metrics"]["test_auc"]
        assert auc["n"] == 2 and 0 < auc["mean"] < 1 and auc["std"] >= 0
    twin = rows["model.name=TF4CTR"]["metrics"]["test_auc"]
    assert twin["paired_n"] == 2 and 0 <= twin["welch_p"] <= 1
    assert "welch_p" not in rows["model.name=DNN"]["metrics"]["test_auc"]
    for folder in ("name=TF4CTR", "name=DNN"):
        for seed in (1, 2):
            run = out / folder / f"seed{seed}"
            assert (run / "results.json").is_file() and (run.parent / f"seed{seed}.console.txt").is_file()
            first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
            assert first["config"]["train"]["seed"] == seed
    table = (out / "sweep.md").read_text()
    assert "`model.name=TF4CTR`" in table and "Command: `tf4ctr-fast sweep" in table

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/results.json")}
    capsys.readouterr()
    assert cli.main(argv) == 0       # everything finished: nothing reruns, the table is rewritten
    assert "(4 finished already)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/results.json")} == stamps

    # --table-only over a larger grid: the table of what is finished, seed 3 listed missing, nothing run
    wider = [a if a != "1-2" else "1-3" for a in argv] + ["--table-only"]
    assert cli.main(wider) == 0
    assert "table only" in capsys.readouterr().out
    assert not list(out.glob("*/seed3*"))
    rows = {r["configuration"]: r for r in json.loads((out / "sweep.json").read_text())["rows"]}
    assert all(r["seeds"] == [1, 2] and r["missing_seeds"] == [3] for r in rows.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a run that fails at run time: CUDA on a CPU-only box")
def test_failed_run_exits_1_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sweep"
    # train.device=cuda passes every config check and fails when the run starts on a CPU-only box
    argv = ["sweep", "--seeds", "1", "--grid", "train.device=cpu,cuda", "--grid", "model.name=DNN",
            "--out", str(out), f"dataset.prepared_dir={tmp_path / 'data'}", *TINY[:-1]]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "console" in err
    summary = json.loads((out / "sweep.json").read_text())
    rows = {r["configuration"]: r for r in summary["rows"]}
    assert rows["train.device=cpu model.name=DNN"]["seeds"] == [1]
    assert rows["train.device=cuda model.name=DNN"]["missing_seeds"] == [1]


def test_bad_configuration_stops_the_sweep_before_any_run(tmp_path, capsys):
    out = tmp_path / "sweep"
    # the override is a DeepFM key: checked with each configuration's model.name applied
    argv = ["sweep", "--seeds", "1", "--grid", "model.name=DeepFM,DNN", "--out", str(out),
            "model.params.hidden_units=[8]", f"dataset.prepared_dir={tmp_path / 'data'}", *TINY[:-1]]
    assert cli.main(argv) == 2
    assert "model.params.hidden_units" in capsys.readouterr().err
    assert not out.exists()


def test_unfinished_runs_resume_or_start_over(tmp_path):
    from tf4ctr_fast.sweep import Run, _train_command

    run = Run({"model.name": "DNN"}, 3, tmp_path / "name=DNN" / "seed3")
    fresh = _train_command("c.yaml", ["train.epochs=2"], run, 1)
    assert "--resume" not in fresh and "--overwrite" not in fresh and "train.seed=3" in fresh
    run.out_dir.mkdir(parents=True)
    (run.out_dir / "log.jsonl").write_text("")          # killed before its first last.pt
    assert "--overwrite" in _train_command("c.yaml", [], run, 1)
    (run.out_dir / "last.pt").write_bytes(b"")          # resumable: its own config, no overrides
    cmd = _train_command("c.yaml", ["train.epochs=2"], run, 1)
    assert cmd[cmd.index("--resume") + 1] == str(run.out_dir)
    assert "--config" not in cmd and "train.epochs=2" not in cmd
