#!/usr/bin/env python3
"""Issue "TF4CTR as a plug-in": the paper's Tables VIII, V and VI on Frappe_x1r (docs/results.md) from the
committed run folders of scripts/frappe_tables.sh (and the zoo's base models, scripts/frappe_zoo.sh),
the paper's Frappe numbers beside them. A configuration not run yet shows as "not run"; a partly run
one with the seeds it has.

    .venv/bin/python scripts/frappe_plugin_tables.py            # prints the three tables
    .venv/bin/python scripts/frappe_plugin_tables.py --write    # ... and puts them into docs/results.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from frappe_zoo_table import ROOT, RUNS, SEEDS, fmt, write_block

from tf4ctr_fast.sweep import mean_std, paired, welch

# TF4CTR paper (arXiv 2405.03167v4), Frappe columns, AUC %.
PAPER_VIII = {"DeepFM": (98.37, 98.54), "WideDeep": (98.32, 98.49), "xDeepFM": (98.45, 98.56)}
PAPER_V = {"DualMLP": {"bce": 98.37, "focal": 98.29, "rce": 98.35, "tf": 98.55},
           "DeepFM": {"bce": 98.37, "focal": 98.43, "rce": 98.42, "tf": 98.48},
           "DCNv2": {"bce": 98.45, "focal": 98.50, "rce": 98.46, "tf": 98.52}}
SSEMS, DFMS = ("SER", "GM", "MoE", "share"), ("WSF", "VF", "CF", "MoEF", "sum")
PAPER_VI = {  # (AUC, gAUC) per SSEM row, DFM column
    "SER": [(98.72, 98.17), (98.52, 98.02), (98.70, 98.21), (98.64, 98.20), (98.72, 98.21)],
    "GM": [(98.57, 98.06), (98.40, 97.88), (98.41, 97.84), (98.42, 97.92), (98.57, 97.97)],
    "MoE": [(98.54, 98.00), (98.53, 98.00), (98.56, 98.01), (98.44, 97.91), (98.55, 97.97)],
    "share": [(98.52, 98.02), (98.51, 97.98), (98.54, 98.04), (98.41, 97.85), (98.51, 97.98)]}
LOSSES = {"bce": "log loss (base)", "focal": "focal", "rce": "R-CE", "tf": "TF loss"}


def seed_results(folder: Path, seeds=SEEDS) -> dict[int, dict]:
    """seed -> results.json of the finished runs under folder/seed<N>."""
    found = {}
    for seed in seeds:
        path = folder / f"seed{seed}" / "results.json"
        if path.is_file():
            found[seed] = json.loads(path.read_text())
    return found


def test_auc(found: dict[int, dict]) -> dict[int, float]:
    return {seed: r["test"]["auc"] for seed, r in found.items()}


def versus(new: dict[int, float], base: dict[int, float]) -> str:
    """Δ of the means in AUC points (x100), Welch's p, and the paired p over the seeds both ran."""
    if not new or not base:
        return ""
    text = f"{100 * (mean_std(list(new.values()))[0] - mean_std(list(base.values()))[0]):+.2f}"
    if len(new) > 1 and len(base) > 1:
        text += f", Welch p {welch(list(new.values()), list(base.values()))[2]:.2g}"
    common = sorted(set(new) & set(base))
    if len(common) > 1:
        text += f", paired p {paired([new[s] for s in common], [base[s] for s in common])[2]:.2g}"
    return text


def seeds_text(found: dict) -> str:
    return ",".join(str(s) for s in sorted(found)) or "not run"


def table_viii() -> str:
    folders = {"DeepFM": RUNS / "table8" / "name=TF4CTR-DeepFM", "xDeepFM": RUNS / "table8" / "name=TF4CTR-xDeepFM",
               "WideDeep": RUNS / "table8_widedeep" / "name=TF4CTR-WideDeep"}
    rows = ["| model | paper: base → TF4CTR-* (Δ pts) | seeds | base test AUC | TF4CTR-* test AUC "
            "| Δ pts, p |", "|---|---|---|---:|---:|---|"]
    for model, folder in folders.items():
        base = test_auc(seed_results(RUNS / "zoo" / model / f"name={model}"))
        plug = test_auc(seed_results(folder))
        paper_base, paper_plug = PAPER_VIII[model]
        rows.append(f"| {model} | {paper_base:.2f} → {paper_plug:.2f} ({paper_plug - paper_base:+.2f}) "
                    f"| {seeds_text(plug)} | {fmt(list(base.values()))} | {fmt(list(plug.values()))} "
                    f"| {versus(plug, base)} |")
    return "\n".join(rows)


def table_v_folder(model: str, loss: str) -> Path:
    if loss == "tf":
        return RUNS / "table5" / f"{model}_tf" / "loss=twin_focus"
    if loss == "bce" and model != "DualMLP":    # the zoo's runs: same settings and seeds
        return RUNS / "zoo" / model / f"name={model}"
    return RUNS / "table5" / model / f"loss={loss}"


def table_v() -> str:
    rows = ["| base model | loss | paper AUC % (Δ) | seeds | test AUC | test logloss | Δ pts vs log loss, p |",
            "|---|---|---|---|---:|---:|---|"]
    for model, paper in PAPER_V.items():
        base = test_auc(seed_results(table_v_folder(model, "bce")))
        for loss, name in LOSSES.items():
            found = seed_results(table_v_folder(model, loss))
            auc = test_auc(found)
            logloss = [r["test"]["logloss"] for r in found.values()]
            delta = "" if loss == "bce" else f" ({paper[loss] - paper['bce']:+.2f})"
            rows.append(f"| {model} | {name} | {paper[loss]:.2f}{delta} | {seeds_text(found)} "
                        f"| {fmt(list(auc.values()))} | {fmt(logloss, 4)} "
                        f"| {'' if loss == 'bce' else versus(auc, base)} |")
    return "\n".join(rows)


def table_vi() -> str:
    rows = ["| SSEM \\ DFM | " + " | ".join(DFMS) + " |", "|---|" + "---:|" * len(DFMS)]
    for ssem in SSEMS:
        cells = []
        for dfm, (paper_auc, paper_gauc) in zip(DFMS, PAPER_VI[ssem]):
            found = seed_results(RUNS / "table6" / f"ssem={ssem}_dfm={dfm}", seeds=(2023,))
            ours = (f"{found[2023]['test']['auc'] * 100:.2f} / {found[2023]['test']['gauc'] * 100:.2f}"
                    if found else "not run")
            cells.append(f"{ours} ({paper_auc:.2f} / {paper_gauc:.2f})")
        rows.append(f"| {ssem} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


TABLES = {"table8": table_viii, "table5": table_v, "table6": table_vi}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: scripts/frappe_plugin_tables.py --write -->", f"<!-- /{name} -->"


def main() -> None:
    for name, make in TABLES.items():
        text = make()
        print(f"{name}\n{text}\n")
        if "--write" in sys.argv[1:]:
            write_block(ROOT / "docs" / "results.md", *markers(name), text)


if __name__ == "__main__":
    main()
