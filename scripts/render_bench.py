"""Render a pytest-benchmark JSON of `pytest bench/ --benchmark-only` as a markdown table and plots.

    python scripts/render_bench.py bench/results/cpu-2026-11-22.json [--out-dir DIR]

Writes, next to the JSON (or into DIR), each atomically:
  <stem>.md             the machine record and one table: every benchmark's median beside its
                        reference, the ratio, samples/s, and FLOP/s and bytes/s beside the measured
                        ceilings (docs/benchmarks.md explains how to read it)
  <stem>-inference.png  inference throughput and latency vs batch size, one line per form
  <stem>-vocab.png      training-step and SER-layer time vs total vocabulary, engine and reference
A plot whose benchmarks are not in the JSON is not written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tf4ctr_fast.io_utils import atomic_file  # noqa: E402

BENCH_TITLES = {  # table order
    "twin_head": "twin head step",
    "twin_head_kernel": "Triton twin head op",
    "embedding_layer": "SER embedding layer step",
    "train_step": "training step",
    "epoch": "epoch with data loading",
    "inference": "inference",
}
Bench = dict[str, Any]


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return ""
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def _rate(info: dict, key: str, fraction_key: str, unit: str) -> str:
    if key not in info:
        return ""
    return f"{_si(info[key], unit)} ({info[fraction_key]:.1%})"


def _per_step(b: Bench, stat: str) -> float:
    """A timing statistic per step: a harness path whose call holds several steps says how many."""
    return b["stats"][stat] / b["extra_info"].get("steps_per_call", 1)


def _row(b: Bench) -> list[str]:
    info, median = b["extra_info"], _per_step(b, "median")
    if "bench" not in info:  # a benchmark outside the harness (e.g. test_bench_prepare.py)
        return ["other", b["name"], "", _seconds(median), "", "", "", "", ""]
    if info["path"] == "reference":
        ratio = "baseline"
    elif "speedup_vs_reference" in info:
        ratio = f"{info['speedup_vs_reference']:.2f}x (min {info['speedup_vs_reference_min']:.2f}x)"
    else:
        ratio = ""
    return [BENCH_TITLES.get(info["bench"], info["bench"]), info["case"], info["path"], _seconds(median),
            _seconds(info.get("reference_median_s")), ratio, _si(info["samples_per_s"], "samples/s"),
            _rate(info, "achieved_flops_per_s", "flops_vs_matmul", "FLOP/s"),
            _rate(info, "achieved_bytes_per_s", "bytes_vs_copy", "B/s")]


def _order(b: Bench) -> int:
    bench = b["extra_info"].get("bench")
    return list(BENCH_TITLES).index(bench) if bench in BENCH_TITLES else len(BENCH_TITLES)


def render_markdown(data: dict) -> str:
    machine = data["machine_info"].get("tf4ctr_fast", {})
    commit = data.get("commit_info", {})
    lines = [
        f"# Benchmarks: {machine.get('device', '?')}",
        "",
        f"- run: {data.get('datetime', '?')}, size `{machine.get('bench_size', '?')}`, commit "
        f"`{str(machine.get('commit', commit.get('id', '?')))[:10]}`"
        f"{' (uncommitted changes)' if machine.get('dirty', commit.get('dirty')) else ''}",
        f"- versions: torch {machine.get('torch')}, torchrec {machine.get('torchrec')}, fbgemm_gpu "
        f"{machine.get('fbgemm_gpu')}, triton {machine.get('triton')}, python {machine.get('python')}",
    ]
    if "gpu" in machine:
        lines.append(f"- GPU: {machine['gpu']}, driver {machine.get('driver')}, CUDA {machine.get('cuda')}")
    lines.append(f"- CPU: {machine.get('cpu')}, {machine.get('cpu_cores')} cores, torch threads "
                 f"{machine.get('torch_threads')}, load average at the end "
                 f"{', '.join(f'{x:.1f}' for x in machine.get('load_average', []))}")
    if "copy_bytes_per_s" in machine:
        lines.append(f"- ceilings measured in this run: copy {_si(machine['copy_bytes_per_s'], 'B/s')} "
                     f"(bytes read + written), fp32 matmul {_si(machine['matmul_flops_per_s'], 'FLOP/s')}")
    lines += ["",
              "| benchmark | case | path | median | reference median | vs reference | throughput "
              "| FLOP/s (of matmul) | bytes/s (of copy) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for b in sorted(data["benchmarks"], key=_order):  # stable: run order within a benchmark
        lines.append("| " + " | ".join(_row(b)) + " |")
    return "\n".join(lines) + "\n"


def _series(data: dict, bench: str) -> dict[str, list[Bench]]:
    out: dict[str, list[Bench]] = {}
    for b in data["benchmarks"]:
        if b["extra_info"].get("bench") == bench:
            out.setdefault(b["extra_info"]["path"], []).append(b)
    return out


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_inference(data: dict, path: Path) -> bool:
    series = _series(data, "inference")
    if not series:
        return False
    fig = Figure(figsize=(10, 4))
    throughput, latency = fig.subplots(1, 2)
    for form, runs in series.items():
        runs = sorted(runs, key=lambda b: b["extra_info"]["batch"])
        batch = [b["extra_info"]["batch"] for b in runs]
        throughput.plot(batch, [b["extra_info"]["samples_per_s"] for b in runs], "o-", label=form)
        latency.errorbar(batch, [b["stats"]["median"] * 1e3 for b in runs],
                         yerr=[[(b["stats"]["median"] - b["stats"]["min"]) * 1e3 for b in runs],
                               [(b["stats"]["max"] - b["stats"]["median"]) * 1e3 for b in runs]],
                         fmt="o-", capsize=2, label=form)
    machine = data["machine_info"].get("tf4ctr_fast", {})
    first = next(iter(series.values()))[0]["extra_info"]
    if "matmul_flops_per_s" in machine and "flops" in first:
        # the model's FLOPs per sample at the measured fp32 matmul rate: no form can go faster
        ceiling = machine["matmul_flops_per_s"] / (first["flops"] / first["batch"])
        throughput.axhline(ceiling, color="grey", linestyle="--", linewidth=1, label="fp32 matmul ceiling")
    for ax, ylabel in ((throughput, "samples/s (batch / median)"), (latency, "latency, ms: median (min-max)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"TF4CTR inference, eval mode: {first['device']}", fontsize=10)
    _save(fig, path)
    return True


def plot_vocab(data: dict, path: Path) -> bool:
    panels = [(bench, _series(data, bench)) for bench in ("train_step", "embedding_layer")]
    panels = [(bench, series) for bench, series in panels if series]
    if not panels:
        return False
    fig = Figure(figsize=(5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (bench, series) in zip(axes, panels):
        for path_name, runs in series.items():
            runs = sorted(runs, key=lambda b: b["extra_info"]["vocab_total"])
            vocab = [b["extra_info"]["vocab_total"] for b in runs]
            median = [_per_step(b, "median") for b in runs]
            ax.errorbar(vocab, median, yerr=[[m - _per_step(b, "min") for m, b in zip(median, runs)],
                                             [_per_step(b, "max") - m for m, b in zip(median, runs)]],
                        fmt="o-" if path_name == "reference" else "s-", capsize=3, label=path_name)
            for b in runs:
                if "speedup_vs_reference" in b["extra_info"]:  # above the higher of the two points
                    info = b["extra_info"]
                    top = max(_per_step(b, "median"), info["reference_median_s"])
                    ax.annotate(f"{info['speedup_vs_reference']:.1f}x", (info["vocab_total"], top),
                                textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        first = next(iter(series.values()))[0]["extra_info"]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.margins(y=0.15)
        ax.set_xlabel("total vocabulary (ids over all fields)")
        ax.set_ylabel("seconds per step: median (min-max)")
        ax.set_title(f"{BENCH_TITLES[bench]}, batch {first['batch']}, {first['fields']} fields", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"engine vs reference (ratio = reference / engine): {first['device']}", fontsize=10)
    _save(fig, path)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a --benchmark-json file of pytest bench/")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: the JSON's folder")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    out = args.out_dir or args.json.parent
    stem = args.json.stem
    written = [out / f"{stem}.md"]
    with atomic_file(written[0]) as tmp:
        tmp.write_text(render_markdown(data))
    for plot, suffix in ((plot_inference, "inference"), (plot_vocab, "vocab")):
        if plot(data, out / f"{stem}-{suffix}.png"):
            written.append(out / f"{stem}-{suffix}.png")
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
