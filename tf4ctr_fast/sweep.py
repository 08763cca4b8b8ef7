"""`tf4ctr-fast sweep`: every (configuration, seed) of a grid as its own training run, then one table
of mean ± std per configuration with significance tests against a baseline configuration.

    tf4ctr-fast sweep --config configs/frappe.yaml --seeds 2023-2029 \
        --grid model.name=TF4CTR,DNN [--grid key=v1,v2 ...] [--baseline model.name=DNN] [--jobs 2]

Layout: <out>/<configuration>/seed<seed>/ is an ordinary run folder (log.jsonl, best.pt,
results.json, ...), so every run can be evaluated, resumed or plotted on its own;
<out>/<configuration>/seed<seed>.console.txt holds what its `train` printed. A run whose results.json
exists is finished and skipped, so a sweep that was stopped continues where it stopped when started
again with the same arguments. At the end, and also when only some runs are finished, <out>/sweep.md
and <out>/sweep.json hold the table.

Why subprocesses: a run is exactly what `tf4ctr-fast train` does with these overrides (nothing shared
between runs, a crash stays in its run), and `--jobs N` runs N at once with the CPU threads split
between them (threads beyond the cores make torch 5x slower, see DEVELOPERS.md).

Statistics (per metric, over seeds): mean, sample std (n - 1), and against the baseline: the
difference of means, Welch's two-tailed t-test (unequal variances, the paper's t-test without its
equal-variance assumption), and a paired two-tailed t-test over the seeds both configurations ran.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .errors import InputError
from .io_utils import atomic_file
from .signals import sigterm_interrupts
from .train.runfolder import RESULTS_NAME, RUN_DIRS, RUN_FILES, last_checkpoint
METRICS = (("test", "auc"), ("test", "gauc"), ("test", "logloss"), ("valid", "auc"))


# ---- what to run ------------------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    """'2023-2029', '2023,2025', '1-3,7' -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise InputError(f"--seeds: {part.strip()!r} is not a seed or a range like 2023-2029")
        seeds.update(range(int(m[1]), int(m[2] if m[2] is not None else m[1]) + 1))
    return sorted(seeds)


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets: 'a,[1,2],b' -> ['a', '[1,2]', 'b']."""
    values, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return [v.strip() for v in values]


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """['model.name=TF4CTR,DNN', ...] -> [('model.name', ['TF4CTR', 'DNN']), ...]."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or any(v == "" for v in _split_values(values)):
            raise InputError(f"--grid {item!r}: expected key=value1,value2,... (lists in brackets: "
                             "key=[400,400],[200,200])")
        if key.startswith("dataset."):
            raise InputError(f"--grid {item!r}: dataset keys cannot vary within a sweep (every run "
                             "shares one prepared dataset); give them as overrides, one sweep per dataset")
        if key in ("train.seed", "train.out_dir"):
            raise InputError(f"--grid {item!r}: the sweep sets {key} itself (--seeds, --out)")
        if key in (k for k, _ in grid):
            raise InputError(f"--grid: key {key!r} is given twice")
        grid.append((key, _split_values(values)))
    return grid


def configurations(grid: Sequence[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, in the order given (the first value varies slowest)."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in grid))]


def label_of(config: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items()) or "default"


def folder_of(config: dict[str, str]) -> str:
    """A folder name for the configuration: readable, and distinct for distinct configurations."""
    name = "_".join(f"{k.split('.')[-1]}={v}" for k, v in config.items()) or "default"
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", name)


@dataclass
class Run:
    config: dict[str, str]
    seed: int
    out_dir: Path

    @property
    def console(self) -> Path:
        return self.out_dir.with_name(f"{self.out_dir.name}.console.txt")

    @property
    def finished(self) -> bool:
        return (self.out_dir / RESULTS_NAME).is_file()


def plan_runs(out: Path, configs: Sequence[dict[str, str]], seeds: Sequence[int]) -> list[Run]:
    folders = [folder_of(c) for c in configs]
    if len(set(folders)) != len(folders):
        raise InputError("--grid: two configurations map to the same folder name; use values that differ "
                         "in letters or digits")
    # seed-major: a sweep stopped half-way has whole seeds, so its paired comparisons already hold
    return [Run(c, s, out / f / f"seed{s}") for s in seeds for c, f in zip(configs, folders)]


# ---- running ----------------------------------------------------------------------------------------

def _train_command(config_path: Optional[str], overrides: Sequence[str], run: Run, threads: int) -> list[str]:
    """The run's `train`; an unfinished run (killed, or the sweep stopped) goes on from its last.pt with
    --resume (its saved config), and one killed before its first last.pt starts over (--overwrite
    removes only that run's own files)."""
    cmd = [sys.executable, "-m", "tf4ctr_fast.cli", "train"]
    quiet = [f"train.num_threads={threads}", "train.progress=false"]
    if last_checkpoint(run.out_dir) is not None:
        return cmd + ["--resume", str(run.out_dir), *quiet]
    if any((run.out_dir / name).exists() for name in (*RUN_FILES, *RUN_DIRS)):
        cmd.append("--overwrite")
    if config_path:
        cmd += ["--config", config_path]
    return cmd + [quiet[0], *overrides, *(f"{k}={v}" for k, v in run.config.items()),
                  f"train.seed={run.seed}", f"train.out_dir={run.out_dir}", quiet[1]]


def _threads(overrides: Sequence[str], jobs: int) -> int:
    """train.num_threads when the overrides set it (e.g. two sweeps side by side), else the cores
    split between the jobs."""
    given = [o.partition("=")[2] for o in overrides if o.partition("=")[0].strip() == "train.num_threads"]
    if given and given[-1].strip().isdigit() and int(given[-1]) > 0:
        return int(given[-1])
    return max(1, (os.cpu_count() or 1) // jobs)


def run_all(runs: Sequence[Run], config_path: Optional[str], overrides: Sequence[str], jobs: int,
            progress: bool = True) -> dict[str, int]:
    """Run every unfinished run, at most `jobs` at once; returns {run folder: exit code} of those run.
    Ctrl-C or SIGTERM stops the running ones with SIGTERM (each ends like a Ctrl-C'd `train`)."""
    from tqdm import tqdm

    todo = [r for r in runs if not r.finished]
    threads = _threads(overrides, jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    running: dict[subprocess.Popen, tuple[Run, object]] = {}
    codes: dict[str, int] = {}
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep runs", unit="run",
               disable=not progress)
    try:
        with sigterm_interrupts():
            while todo or running:
                while todo and len(running) < jobs:
                    run = todo.pop(0)
                    run.out_dir.parent.mkdir(parents=True, exist_ok=True)
                    command = _train_command(config_path, overrides, run, threads)
                    # a resumed run's console goes on after what it printed before its stop
                    log = open(run.console, "a" if "--resume" in command else "w")
                    proc = subprocess.Popen(command, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                    running[proc] = (run, log)
                for proc in [p for p in running if p.poll() is not None]:
                    run, log = running.pop(proc)
                    log.close()
                    codes[str(run.out_dir)] = proc.returncode
                    bar.update(1)
                    if proc.returncode != 0:
                        tqdm.write(f"run {run.out_dir} failed (exit {proc.returncode}); see {run.console}")
                time.sleep(0.2)
    except KeyboardInterrupt:
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc, (_, log) in running.items():
            proc.wait()
            log.close()
        raise
    finally:
        bar.close()
    return codes


def check_and_prepare(config_path: Optional[str], overrides: Sequence[str],
                      configs: Sequence[dict[str, str]]) -> None:
    """Load every configuration's config (a bad key fails the sweep before any run starts, naming it,
    and overrides that only some models take, e.g. model.params.*, are checked with the grid's values
    applied), then prepare the shared dataset once, so that concurrent runs never race to."""
    from .config import load_config
    from .data.prepare import ensure_prepared

    cfgs = [load_config(config_path, [*overrides, *(f"{k}={v}" for k, v in c.items())]) for c in configs]
    ensure_prepared(cfgs[0].dataset, progress=cfgs[0].train.progress)


# ---- statistics -------------------------------------------------------------------------------------

def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):   # the fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return front * h / a


def t_two_tailed_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isnan(t) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(t, df, two-tailed p) of Welch's test that mean(a) == mean(b); nan when either has < 2 values."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb == 0:
        return (0.0 if ma == mb else math.copysign(math.inf, ma - mb)), math.nan, (1.0 if ma == mb else 0.0)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return t, df, t_two_tailed_p(t, df)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(t, df, two-tailed p) of the paired test over matched pairs (a[i], b[i])."""
    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < 2:
        return math.nan, math.nan, math.nan
    mean, std = mean_std(diffs)
    df = len(diffs) - 1
    if std == 0:
        return (0.0 if mean == 0 else math.copysign(math.inf, mean)), df, (1.0 if mean == 0 else 0.0)
    t = mean / (std / math.sqrt(len(diffs)))
    return t, df, t_two_tailed_p(t, df)


Z_ALPHA, Z_POWER = 1.959964, 0.841621   # two-tailed 5 % level, 80 % power (normal quantiles)


def seeds_for_power(diff: float, std_a: float, std_b: float) -> Optional[int]:
    """Seeds per configuration for an 80 %-power two-tailed 5 % test to detect `diff` at these
    spreads (normal approximation, 2 (z_a + z_b)^2 s^2 / diff^2 with the pooled s): how many a claim
    of this size needs under this protocol."""
    var = (std_a * std_a + std_b * std_b) / 2
    if diff == 0 or math.isnan(var) or math.isnan(diff):
        return None
    return max(2, math.ceil(2 * (Z_ALPHA + Z_POWER) ** 2 * var / (diff * diff)))


# ---- the table --------------------------------------------------------------------------------------

@dataclass
class ConfigResult:
    label: str
    folder: str
    seeds: dict[int, dict[str, float]] = field(default_factory=dict)   # seed -> {"test_auc": ...}
    missing: list[int] = field(default_factory=list)


def collect(runs: Sequence[Run]) -> list[ConfigResult]:
    by_label: dict[str, ConfigResult] = {}
    for run in runs:
        res = by_label.setdefault(label_of(run.config), ConfigResult(label_of(run.config), run.out_dir.parent.name))
        if not run.finished:
            res.missing.append(run.seed)
            continue
        data = json.loads((run.out_dir / RESULTS_NAME).read_text())
        res.seeds[run.seed] = {f"{split}_{metric}": float(data[split][metric])
                               for split, metric in METRICS
                               if isinstance(data.get(split), dict) and data[split].get(metric) is not None}
    return list(by_label.values())


def summarize(results: Sequence[ConfigResult], baseline: str) -> dict:
    """The table as plain data: per configuration and metric, n / mean / std, and against the
    baseline configuration: diff, Welch t / p, paired t / p (n pairs)."""
    base = next((r for r in results if r.label == baseline), None)
    rows = []
    for res in results:
        row = {"configuration": res.label, "folder": res.folder, "seeds": sorted(res.seeds),
               "missing_seeds": res.missing, "metrics": {}}
        for split, metric in METRICS:
            key = f"{split}_{metric}"
            values = {s: m[key] for s, m in res.seeds.items() if key in m}
            if not values:
                continue
            mean, std = mean_std(list(values.values()))
            entry = {"n": len(values), "mean": mean, "std": std, "per_seed": values}
            if base is not None and res is not base:
                ref = {s: m[key] for s, m in base.seeds.items() if key in m}
                if ref:
                    t, df, p = welch(list(values.values()), list(ref.values()))
                    common = sorted(set(values) & set(ref))
                    tp, dfp, pp = paired([values[s] for s in common], [ref[s] for s in common])
                    ref_mean, ref_std = mean_std(list(ref.values()))
                    entry.update(diff=mean - ref_mean, welch_t=t, welch_df=df, welch_p=p,
                                 paired_n=len(common), paired_t=tp, paired_p=pp,
                                 seeds_for_power=seeds_for_power(mean - ref_mean, std, ref_std))
            row["metrics"][key] = entry
        rows.append(row)
    return {"baseline": baseline if base is not None else None, "rows": rows}


def _fmt(x: Optional[float], spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def to_markdown(summary: dict, title: str) -> str:
    lines = [f"# {title}", "",
             f"Baseline for the tests: `{summary['baseline']}`." if summary["baseline"] else
             "No baseline configuration: no tests.", "",
             "Mean ± sample std over seeds; Δ = mean − baseline mean; p: two-tailed, Welch's t-test and the "
             "paired t-test over the seeds both ran (n pairs); seeds/80%: seeds per configuration that a "
             "5 %-level test needs to detect this Δ at these spreads with 80 % power.", ""]
    metrics = [f"{s}_{m}" for s, m in METRICS if any(f"{s}_{m}" in r["metrics"] for r in summary["rows"])]
    lines.append("| configuration | seeds | " + " | ".join(
        f"{k.replace('_', ' ')} | Δ | p Welch | p paired | seeds/80%" for k in metrics) + " |")
    lines.append("|---|---:|" + "---:|---:|---:|---:|---:|" * len(metrics))
    for row in summary["rows"]:
        cells = [f"`{row['configuration']}`",
                 f"{len(row['seeds'])}" + (f" (missing {', '.join(map(str, row['missing_seeds']))})"
                                           if row["missing_seeds"] else "")]
        for key in metrics:
            e = row["metrics"].get(key)
            if e is None:
                cells += [""] * 5
                continue
            cells.append(f"{e['mean']:.5f} ± {_fmt(e['std'], '.5f') or 'n/a'}")
            cells.append(_fmt(e.get("diff"), "+.5f"))
            cells.append(_fmt(e.get("welch_p"), ".3g"))
            cells.append(_fmt(e.get("paired_p"), ".3g") + (f" ({e['paired_n']})" if "paired_n" in e else ""))
            cells.append(str(e["seeds_for_power"]) if e.get("seeds_for_power") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(out: Path, runs: Sequence[Run], baseline: str, command: str) -> dict:
    summary = summarize(collect(runs), baseline)
    summary["command"] = command
    with atomic_file(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_file(out / "sweep.md") as tmp:
        tmp.write_text(to_markdown(summary, f"Sweep {out.name}") + f"\nCommand: `{command}`\n")
    return summary


# ---- the command ------------------------------------------------------------------------------------

def sweep(config_path: Optional[str], overrides: Sequence[str], seeds_text: str, grid_items: Sequence[str],
          baseline: Optional[str], jobs: int, out: Optional[str], progress: bool = True,
          table_only: bool = False) -> dict:
    """Run the grid's missing runs, then write the table; table_only: write the table of the runs
    finished so far and run nothing (a sweep still running writes its own table when it ends)."""
    if jobs < 1:
        raise InputError(f"--jobs: expected at least 1, got {jobs}")
    if config_path and not Path(config_path).is_file():
        raise InputError(f"--config {config_path}: no such file")
    seeds = parse_seeds(seeds_text)
    configs = configurations(parse_grid(grid_items))
    labels = [label_of(c) for c in configs]
    baseline = baseline if baseline is not None else labels[0]
    if baseline not in labels:
        raise InputError(f"--baseline {baseline!r} is not one of the configurations: {', '.join(labels)}")
    out_dir = Path(out) if out else Path("sweeps") / (Path(config_path).stem if config_path else "default")
    runs = plan_runs(out_dir, configs, seeds)
    command = "tf4ctr-fast sweep " + " ".join(
        ([f"--config {config_path}"] if config_path else []) + [f"--seeds {seeds_text}"]
        + [f"--grid {g}" for g in grid_items] + [f"--baseline '{baseline}'", f"--jobs {jobs}",
                                                  f"--out {out_dir}"] + list(overrides))
    done = sum(r.finished for r in runs)
    print(f"sweep: {len(configs)} configuration(s) x {len(seeds)} seed(s) = {len(runs)} runs in {out_dir} "
          f"({done} finished already)" + (", table only" if table_only else f", {jobs} at once"), flush=True)
    codes: dict[str, int] = {}
    if table_only:
        summary = write_table(out_dir, runs, baseline, command)
    else:
        check_and_prepare(config_path, overrides, configs)
        try:
            codes = run_all(runs, config_path, overrides, jobs, progress)
        finally:
            summary = write_table(out_dir, runs, baseline, command)   # also after Ctrl-C: what is done
    failed = [path for path, code in codes.items() if code != 0]
    print(to_markdown(summary, f"Sweep {out_dir.name}"))
    print(f"table: {out_dir / 'sweep.md'} (and sweep.json)")
    if failed:
        print(f"sweep: {len(failed)} run(s) failed: {', '.join(failed)}; each one's console log is beside "
              "its folder (seed<N>.console.txt); run the same sweep again to retry them", file=sys.stderr)
    summary["failed"] = failed
    return summary
