"""Run plots from the epoch records of the run log, written atomically as PNG.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it
works headless and does not disturb a caller's own matplotlib state.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io_utils import atomic_file

Record = dict[str, Any]
PLOT_NAMES = ("learning_curves.png", "difficulty.png")


def _save_png(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _mark_lr_changes(ax: Any, records: Sequence[Record]) -> None:
    """Dashed line before each epoch that ran with a new learning rate, labelled on the side with room
    (left of the line in the plot's right half: a cut before the last epoch would put it past the edge)."""
    middle = (records[0]["epoch"] + records[-1]["epoch"]) / 2 if records else 0
    for prev, rec in zip(records, records[1:]):
        if rec["lr"] != prev["lr"]:
            x = rec["epoch"] - 0.5
            right_half = x > middle
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(f"lr {rec['lr']:.0e}", (x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-2 if right_half else 2, -10), textcoords="offset points",
                        ha="right" if right_half else "left", fontsize=7, color="grey")


def plot_learning_curves(epoch_records: Sequence[Record], path: str | os.PathLike) -> None:
    """Train loss, valid AUC (and gAUC) and valid logloss per epoch; best epoch starred."""
    epochs = [r["epoch"] for r in epoch_records]
    valid = [r["valid"] for r in epoch_records]
    best = [r for r in epoch_records if r.get("improved")]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_loss, ax_auc, ax_ll = fig.subplots(1, 3)

    ax_loss.plot(epochs, [r["train_loss"] for r in epoch_records], "o-", label="train loss")
    ax_loss.set_title("train loss (as optimized, incl. reg)")
    ax_auc.plot(epochs, [v["auc"] for v in valid], "o-", label="valid AUC")
    if any(v.get("gauc") is not None for v in valid):
        ax_auc.plot(epochs, [v.get("gauc") for v in valid], "s-", label="valid gAUC")
    ax_auc.set_title("valid AUC")
    ax_ll.plot(epochs, [v["logloss"] for v in valid], "o-", color="tab:red", label="valid logloss")
    ax_ll.set_title("valid logloss")
    if best:
        last_best = best[-1]
        ax_auc.plot([last_best["epoch"]], [last_best["valid"]["auc"]], "*", color="gold",
                    markersize=14, markeredgecolor="black", label=f"best (epoch {last_best['epoch']})")
        ax_ll.plot([last_best["epoch"]], [last_best["valid"]["logloss"]], "*", color="gold",
                   markersize=14, markeredgecolor="black")
    for ax in (ax_loss, ax_auc, ax_ll):
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        _mark_lr_changes(ax, epoch_records)
    ax_auc.legend(fontsize=8)
    _save_png(fig, path)


_DIFFICULTY_COLORS = (("well", "tab:green", "well (p_t ≥ t1)"),
                      ("poorly", "tab:orange", "poorly (t0 ≤ p_t < t1)"),
                      ("mis", "tab:red", "misclassified (p_t < t0)"))


def plot_difficulty(epoch_records: Sequence[Record], path: str | os.PathLike) -> None:
    """Stacked bars per epoch of valid samples well / poorly / misclassified, for positives and
    for negatives (paper Fig. 2/11)."""
    epochs = [r["epoch"] for r in epoch_records]
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, cls, title in ((axes[0], "pos", "positives"), (axes[1], "neg", "negatives")):
        bottom = [0] * len(epochs)
        for kind, color, label in _DIFFICULTY_COLORS:
            counts = [r["difficulty"][f"{cls}_{kind}"] for r in epoch_records]
            ax.bar(epochs, counts, bottom=bottom, color=color, label=label, width=0.7)
            bottom = [b + c for b, c in zip(bottom, counts)]
        ax.set_title(f"valid {title}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("samples")
        ax.set_xticks(epochs)
    thresholds = epoch_records[0].get("difficulty_thresholds") if epoch_records else None
    if thresholds:
        fig.suptitle(f"sample difficulty by p_t (t0={thresholds[0]}, t1={thresholds[1]})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], fontsize=8, loc="outside right center")
    _save_png(fig, path)


def write_plots(epoch_records: Sequence[Record], out_dir: str | os.PathLike) -> None:
    """Both run plots into `out_dir`; also works on the epoch records of an unfinished run's log."""
    out_dir = Path(out_dir)
    plot_learning_curves(epoch_records, out_dir / PLOT_NAMES[0])
    plot_difficulty(epoch_records, out_dir / PLOT_NAMES[1])
