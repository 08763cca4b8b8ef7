"""scripts/frappe_plugin_tables.py: the result tables of issue "TF4CTR as a plug-in" come from the run
folders it is pointed at, with the right folder per cell, means, Δ and the paper's numbers."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import frappe_plugin_tables as tables  # noqa: E402


def _result(folder: Path, seed: int, auc: float, gauc: float = 0.98, logloss: float = 0.15) -> None:
    run = folder / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"test": {"auc": auc, "gauc": gauc, "logloss": logloss}}))


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(tables, "RUNS", tmp_path)
    return tmp_path


def _row(text: str, *starts: str) -> str:
    found = [line for line in text.splitlines() if line.startswith("| " + " | ".join(starts) + " |")]
    assert len(found) == 1, (starts, text)
    return found[0]


def test_table_viii_reads_the_base_from_the_zoo_and_the_preset_from_table8(runs):
    base, plug = [0.9830, 0.9840, 0.9850], [0.9850, 0.9856]
    for seed, auc in zip((2023, 2024, 2025), base):
        _result(runs / "zoo" / "DeepFM" / "name=DeepFM", seed, auc)
    for seed, auc in zip((2023, 2024), plug):
        _result(runs / "table8" / "name=TF4CTR-DeepFM", seed, auc)
    row = _row(tables.table_viii(), "DeepFM")
    assert "98.37 → 98.54 (+0.17)" in row and "| 2023,2024 |" in row
    assert f"{statistics.mean(plug):.5f} ± {statistics.stdev(plug):.5f}" in row
    assert f"{100 * (statistics.mean(plug) - statistics.mean(base)):+.2f}, Welch p" in row
    assert "paired p" in row                                   # two seeds in common
    assert "| not run |" in _row(tables.table_viii(), "xDeepFM")


def test_table_v_takes_dualmlp_bce_from_its_own_runs_and_deepfm_bce_from_the_zoo(runs):
    _result(runs / "table5" / "DualMLP" / "loss=bce", 2023, 0.9840)
    _result(runs / "table5" / "DualMLP" / "loss=focal", 2023, 0.9830, logloss=0.2)
    _result(runs / "zoo" / "DeepFM" / "name=DeepFM", 2023, 0.9845)
    _result(runs / "table5" / "DeepFM_tf" / "loss=twin_focus", 2023, 0.9855)
    text = tables.table_v()
    focal = _row(text, "DualMLP", "focal")
    assert "98.29 (-0.08)" in focal and "0.98300" in focal and "0.2000" in focal and "-0.10" in focal
    assert "0.98400" in _row(text, "DualMLP", "log loss (base)")
    assert "0.98450" in _row(text, "DeepFM", "log loss (base)")
    tf = _row(text, "DeepFM", "TF loss")
    assert "98.48 (+0.11)" in tf and "+0.10" in tf
    assert "not run" in _row(text, "DCNv2", "R-CE")


def test_table_vi_cells_are_seed_2023_beside_the_paper(runs):
    _result(runs / "table6" / "ssem=GM_dfm=VF", 2023, 0.98512, gauc=0.97901)
    _result(runs / "table6" / "ssem=GM_dfm=CF", 2024, 0.99)   # another seed: not Table VI's
    row = _row(tables.table_vi(), "GM")
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    assert cells[1] == "98.51 / 97.90 (98.40 / 97.88)"
    assert cells[2] == "not run (98.41 / 97.84)"
    assert len(cells) == len(tables.DFMS)
