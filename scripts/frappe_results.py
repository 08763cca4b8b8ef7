#!/usr/bin/env python3
"""Frappe_x1 accuracy table: TF4CTR vs DualMLP vs DNN under one protocol, several seeds.

Each run is one `tf4ctr-fast train` command (printed, and listed in the table), so every figure can be
reproduced by hand. Finished runs (results.json present) are reused, so the script resumes after a crash.

    .venv/bin/python scripts/frappe_results.py --jobs 2 --out docs/results_frappe.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tf4ctr_fast.cli"]


def run_command(model: str, seed: int, runs_dir: Path, extra: list[str]) -> list[str]:
    tag = "_".join([model, *(e.replace("=", "-").replace(".", "_") for e in extra)])
    # model.backend=reference: the results table is the reference backend's unless --extra says otherwise
    # (the default backend became "auto" after these runs)
    return [*CLI, "train", "--config", "configs/frappe.yaml", f"model.name={model}", f"train.seed={seed}",
            "train.num_threads=1", "train.progress=false", f"train.out_dir={runs_dir / f'{tag}_seed{seed}'}",
            "model.backend=reference", *extra]


def run_one(cmd: list[str], collect_only: bool = False) -> dict | None:
    out_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("train.out_dir=")))
    results = ROOT / out_dir / "results.json"
    if not results.exists():
        if collect_only:
            return None
        print("$", shlex.join(cmd[2:]), flush=True)
        log = ROOT / out_dir.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return json.loads(results.read_text())


def mean_std(values: list[float], fmt: str) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(std, fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["TF4CTR", "DualMLP", "DNN"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2023, 2024, 2025])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--runs-dir", default="runs/frappe")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run, e.g. model.head=fused")
    parser.add_argument("--out", default="docs/results_frappe.md")
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished runs, start none")
    args = parser.parse_args()

    if not args.collect_only:
        subprocess.run([*CLI, "prepare", "--config", "configs/frappe.yaml"], cwd=ROOT, check=True)
    commands = {(m, s): run_command(m, s, Path(args.runs_dir), args.extra) for m in args.models for s in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(commands, pool.map(lambda c: run_one(c, args.collect_only), commands.values())))
    results = {key: r for key, r in results.items() if r is not None}

    lines = [f"Command: `.venv/bin/python scripts/frappe_results.py {shlex.join(sys.argv[1:])}`", "",
             "| model | seeds | test AUC | test gAUC | test logloss | epochs (best) | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for model in args.models:
        seeds = [s for s in args.seeds if (model, s) in results]
        rs = [results[(model, s)] for s in seeds]
        if not rs:
            continue
        lines.append(" | ".join([
            f"| {model}", ", ".join(map(str, seeds)),
            mean_std([r["test"]["auc"] for r in rs], ".4f"),
            mean_std([r["test"]["gauc"] for r in rs], ".4f"),
            mean_std([r["test"]["logloss"] for r in rs], ".4f"),
            ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in rs),
            mean_std([r["wall_time_s"] for r in rs], ".0f") + " |"]))
    lines += ["", "Per run:", "", "| model | seed | test AUC | test logloss | valid AUC | command |", "|---|---|---|---|---|---|"]
    for (model, seed), r in results.items():
        cmd = shlex.join(["tf4ctr-fast", *commands[(model, seed)][3:]])
        lines.append(f"| {model} | {seed} | {r['test']['auc']:.5f} | {r['test']['logloss']:.5f} | "
                     f"{r['valid']['auc']:.5f} | `{cmd}` |")
    out = ROOT / args.out
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
