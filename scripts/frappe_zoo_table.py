#!/usr/bin/env python3
"""The model zoo's Frappe_x1r table (docs/results.md "Model zoo on Frappe_x1r") from the committed run
folders, the paper's Table VII Frappe column beside it. Runs: scripts/frappe_zoo.sh (baselines),
docs/runs/frappe/sweep_decay1 (DNN, TF4CTR) and docs/runs/frappe/DualMLP_model_head-reference_seed*.

    .venv/bin/python scripts/frappe_zoo_table.py            # prints the markdown table
    .venv/bin/python scripts/frappe_zoo_table.py --write    # ... and puts it into docs/results.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tf4ctr_fast.io_utils import atomic_file  # noqa: E402
from tf4ctr_fast.sweep import mean_std, welch  # noqa: E402

RUNS = ROOT / "docs" / "runs" / "frappe"
SEEDS = (2023, 2024, 2025)
# TF4CTR paper, Table VII, Frappe AUC (%); AutoInt and AFN are the paper's AutoInt+ and AFN+
PAPER = {"WideDeep": 98.32, "DeepFM": 98.37, "DCN": 98.38, "xDeepFM": 98.45, "AutoInt": 98.41,
         "AFN": 98.19, "DCNv2": 98.45, "EDCN": 98.41, "EulerNet": 98.16, "TF4CTR": 98.72}
ORDER = ["LR", "FM", "DNN", "WideDeep", "DeepFM", "DCN", "xDeepFM", "AutoInt", "AFN", "DCNv2", "EDCN",
         "EulerNet", "FinalMLP", "DualMLP", "TF4CTR"]


def run_folder(model: str, seed: int) -> Path:
    if model in ("DNN", "TF4CTR"):
        return RUNS / "sweep_decay1" / f"name={model}" / f"seed{seed}"
    if model == "DualMLP":
        return RUNS / f"DualMLP_model_head-reference_seed{seed}"
    return RUNS / "zoo" / model / f"name={model}" / f"seed{seed}"


def results(model: str) -> dict[int, dict]:
    found = {}
    for seed in SEEDS:
        path = run_folder(model, seed) / "results.json"
        if path.is_file():
            found[seed] = json.loads(path.read_text())
    return found


def fmt(values: list[float], digits: int = 5) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


BEGIN, END = "<!-- zoo table: scripts/frappe_zoo_table.py --write -->", "<!-- /zoo table -->"


def main() -> None:
    text = table_markdown()
    print(text)
    if "--write" in sys.argv[1:]:
        write_block(ROOT / "docs" / "results.md", BEGIN, END, text)


def write_block(doc: Path, begin: str, end: str, text: str) -> None:
    """Replaces what lies between the marker lines begin and end in doc (atomically)."""
    body = doc.read_text()
    head, _, rest = body.partition(begin)
    if end not in rest:
        sys.exit(f"{doc}: no {begin} ... {end} block to replace")
    with atomic_file(doc) as tmp:
        tmp.write_text(f"{head}{begin}\n{text}\n{end}{rest.partition(end)[2]}")


def table_markdown() -> str:
    table = {m: results(m) for m in ORDER}
    tf = [r["test"]["auc"] for r in table["TF4CTR"].values()]
    rows = ["| model | paper AUC % | seeds | test AUC | test gAUC | test logloss | Δ vs paper (pts) "
            "| TF4CTR − model: Δ AUC, p (Welch) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for model, res in table.items():
        auc = [r["test"]["auc"] for r in res.values()]
        gauc = [r["test"]["gauc"] for r in res.values()]
        logloss = [r["test"]["logloss"] for r in res.values()]
        paper = PAPER.get(model)
        delta = f"{100 * mean_std(auc)[0] - paper:+.2f}" if auc and paper else ""
        versus = ""
        if model != "TF4CTR" and auc and tf:
            diff = mean_std(tf)[0] - mean_std(auc)[0]
            versus = f"{diff:+.5f}"
            if len(auc) > 1 and len(tf) > 1:
                versus += f", p {welch(tf, auc)[2]:.2g}"
        seeds = ",".join(str(s) for s in res) or "not run"
        rows.append(f"| {model} | {paper if paper else ''} | {seeds} | {fmt(auc)} | {fmt(gauc)} "
                    f"| {fmt(logloss, 4)} | {delta} | {versus} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
