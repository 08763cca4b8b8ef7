"""Throughput of `prepare` on a Criteo-Kaggle-shaped TSV: MB of raw text per minute and peak memory;
and the memory of the synthetic generator at Criteo's vocabulary size.

    pytest bench/test_bench_prepare.py --benchmark-only                       # 200 MB (default)
    TF4CTR_BENCH_PREPARE_MB=2000 pytest bench/test_bench_prepare.py --benchmark-only -s

The file is random but shaped like Kaggle's train.txt: label (25% clicks), I1..I13 with Criteo's
missing rates and heavy-tailed counts (I2 has negatives), C1..C26 as 8-digit hex hashes drawn with
Zipf frequencies from Criteo's per-field vocabulary sizes, and Criteo's missing rates. It is written
in blocks, in O(block) memory, by a separate process, so that neither its time nor its memory counts.

`prepare` runs in a fresh process too, and benchmark.extra_info records: MB/min and rows/s; the CPU
seconds (that process + its workers), the load average before the run and the rate the CPU time allows
on idle cores (on a shared machine the wall-clock rate depends on the other load); and memory:
resource.getrusage (self, children) as asked, but on Linux a spawned process's ru_maxrss starts from
its parent's RSS at fork time, so it overstates; the high-water marks /proc/<pid>/status VmHWM of the
prepare process and of its workers (sampled every 0.2 s) do not, and RssAnon separates heap from the
file-backed pages of the memmapped output a worker has written.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.criteo import prepare_criteo

SIZE_MB = float(os.environ.get("TF4CTR_BENCH_PREPARE_MB", "200"))
# Share of missing values per column, and distinct values per categorical field, of the full Kaggle data.
INT_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]
CAT_MISSING = [0, 0, 0.03, 0.03, 0, 0.12, 0, 0, 0, 0.03, 0, 0.03, 0, 0, 0, 0.03, 0, 0, 0.44, 0.44, 0.03,
               0.76, 0, 0.03, 0.44, 0.44]
CAT_VOCAB = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
             5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
ZIPF_A = 1.15
BLOCK_ROWS = 100_000
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _zipf_ranks(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Ranks 0..vocab-1 with P(rank k) ~ (k+1)^-a, by inverting the continuous approximation of the CDF."""
    u = rng.random(n)
    top = vocab ** (1 - ZIPF_A) - 1
    return np.minimum(((u * top + 1) ** (1 / (1 - ZIPF_A))).astype(np.int64) - 1, vocab - 1)


def _digits(values: np.ndarray, missing: np.ndarray, width: int) -> np.ndarray:
    """uint8 [n, width]: signed decimals right-aligned, zero bytes for padding and missing values."""
    out = np.zeros((len(values), width), dtype=np.uint8)
    rest = np.abs(values)
    for p in range(width - 1, -1, -1):
        out[:, p] = np.where((rest > 0) | (p == width - 1), 48 + rest % 10, 0)
        rest //= 10
    first = (out != 0).argmax(axis=1)
    negative = values < 0
    out[np.flatnonzero(negative), first[negative] - 1] = ord("-")
    out[missing] = 0
    return out


def _block(rng: np.random.Generator, n: int) -> bytes:
    columns = [np.where(rng.random(n) < 0.25, ord("1"), ord("0")).astype(np.uint8)[:, None]]
    for j, share in enumerate(INT_MISSING):
        values = np.floor(np.exp(rng.normal(1.0 + 0.25 * j, 1.6, n))).astype(np.int64)
        if j == 1:  # I2: small negatives happen
            values -= rng.random(n) < 0.05
            values = np.maximum(values, -3)
        columns.append(_digits(values, rng.random(n) < share, 10))
    for j, (share, vocab) in enumerate(zip(CAT_MISSING, CAT_VOCAB)):
        # an odd multiplier is a bijection mod 2^32: distinct ranks get distinct hashes
        hashed = (_zipf_ranks(rng, n, vocab) * 2654435761 + 97 * j + 1) % (1 << 32)
        text = _HEX[(hashed[:, None] >> (4 * np.arange(7, -1, -1))) & 15]
        text[rng.random(n) < share] = 0
        columns.append(text)
    seps = np.full((n, 1), ord("\t"), dtype=np.uint8)
    parts = []
    for column in columns:
        parts += [column, seps]
    parts[-1] = np.full((n, 1), ord("\n"), dtype=np.uint8)
    table = np.concatenate(parts, axis=1)
    return table[table != 0].tobytes()  # drop the padding: fields become variable-length


def write_kaggle_like(path: Path, target_bytes: float, seed: int = 0) -> int:
    """Write about target_bytes of Kaggle-shaped TSV; returns the number of rows."""
    rng = np.random.default_rng(seed)
    rows, written = 0, 0
    with open(path, "wb") as f:
        while written < target_bytes:
            data = _block(rng, BLOCK_ROWS)
            if written + len(data) > target_bytes:  # trim the last block at a line end
                data = data[:data.rfind(b"\n", 0, int(target_bytes - written)) + 1] or data[:data.find(b"\n") + 1]
            f.write(data)
            written += len(data)
            rows += data.count(b"\n")
    return rows


def _in_fresh_process(fn, *args):
    """fn(*args) in a new (spawned, non-daemonic: it may start workers of its own) process."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_call_and_send, args=(send, fn, args))
    process.start()
    send.close()
    ok, value = receive.recv()
    process.join()
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{value}")
    return value


def _call_and_send(conn, fn, args) -> None:
    import traceback
    try:
        conn.send((True, fn(*args)))
    except BaseException:
        conn.send((False, traceback.format_exc()))


def _max_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _proc_mb(pid: int, key: str) -> float:
    """A memory line of /proc/<pid>/status (kB) in MB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _prepare_and_measure(path: Path, out: Path) -> dict:
    """Runs in a fresh process: prepare, timing it and sampling its workers' memory."""
    peak = {"VmHWM": 0.0, "RssAnon": 0.0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            for child in _children(os.getpid()):
                for key in peak:
                    peak[key] = max(peak[key], _proc_mb(child, key))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    cfg = DatasetConfig(name="kaggle_like", format="criteo", train=str(path), min_count=10)
    start, before = time.perf_counter(), os.times()
    prepare_criteo(cfg, out, progress=False)
    seconds, after = time.perf_counter() - start, os.times()
    stop.set()
    watcher.join()
    return {"seconds": seconds, "cpu_seconds": sum(after[:4]) - sum(before[:4]),
            "vmhwm_prepare_mb": _proc_mb(os.getpid(), "VmHWM"), "vmhwm_largest_worker_mb": peak["VmHWM"],
            "rss_anon_largest_worker_mb": peak["RssAnon"],
            "getrusage_self_mb": _max_rss_mb(resource.RUSAGE_SELF),
            "getrusage_children_mb": _max_rss_mb(resource.RUSAGE_CHILDREN)}


@pytest.fixture(scope="module")
def kaggle_tsv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kaggle_like")
    path = folder / "train.txt"
    rows = _in_fresh_process(write_kaggle_like, path, SIZE_MB * 1e6)  # its memory must not count
    yield path, rows
    shutil.rmtree(folder, ignore_errors=True)


def test_prepare_criteo_throughput(benchmark, kaggle_tsv, tmp_path):
    path, rows = kaggle_tsv
    out = tmp_path / "prepared"
    load_before = os.getloadavg()[0]
    m = benchmark.pedantic(_in_fresh_process, (_prepare_and_measure, path, out), rounds=1, iterations=1)
    ds = load_prepared(out)
    assert sum(ds.schema["splits"].values()) == rows
    mb = path.stat().st_size / 1e6
    cores = len(os.sched_getaffinity(0))
    info = {
        "raw_mb": round(mb, 1), "rows": rows, "seconds": round(m["seconds"], 2),
        "mb_per_min": round(mb / m["seconds"] * 60, 1), "rows_per_s": round(rows / m["seconds"]),
        "workers": cores, "cpu_seconds": round(m["cpu_seconds"], 1), "load_average_before": round(load_before, 2),
        "mb_per_min_on_idle_cores": round(mb / (m["cpu_seconds"] / cores) * 60, 1),
        "vocab_total": int(sum(ds.vocab_sizes)),
        **{k: round(v) for k, v in m.items() if k.endswith("_mb")},
    }
    benchmark.extra_info.update(info)
    print(f"\nprepare criteo: {mb:.0f} MB, {rows:,} rows in {m['seconds']:.1f} s = {info['mb_per_min']} MB/min "
          f"(load average before {load_before:.1f}; CPU {m['cpu_seconds']:.0f} s = "
          f"{info['mb_per_min_on_idle_cores']} MB/min on idle cores)\n  memory MB: "
          + ", ".join(f"{k[:-3]} {info[k]}" for k in m if k.endswith("_mb")))
    shutil.rmtree(out, ignore_errors=True)


def _synthesize_in_fresh_process(sizes: list[int], rows: int) -> tuple[float, float, int]:
    from tf4ctr_fast.config import SyntheticConfig
    from tf4ctr_fast.data.synthetic import synthesize

    start = time.perf_counter()
    data = synthesize(SyntheticConfig(rows=rows), 2023, sizes)
    # VmHWM, not ru_maxrss: the latter starts from the parent's RSS at fork time
    return time.perf_counter() - start, _proc_mb(os.getpid(), "VmHWM"), int(sum(data.vocab_sizes))


def test_synthetic_with_criteo_vocabularies_stays_small(benchmark):
    """Criteo's per-field vocabulary sizes, scaled to its ~5.5M ids after min-count 10: the generator's
    per-id tables are a few vectors per field, so peak memory stays a few hundred MB."""
    scale = 5.5e6 / sum(CAT_VOCAB)
    sizes = [max(2, int(v * scale)) if v > 10_000 else v for v in CAT_VOCAB]
    rows = 300_000
    # a fresh process: its peak memory is the generator's alone
    seconds, peak_mb, ids = benchmark.pedantic(_in_fresh_process, (_synthesize_in_fresh_process, sizes, rows),
                                               rounds=1, iterations=1)
    benchmark.extra_info.update({"ids": ids, "rows": rows, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb)})
    print(f"\nsynthetic: {ids:,} ids, {rows:,} rows in {seconds:.1f} s, peak RSS (VmHWM) {peak_mb:.0f} MB")
    assert ids > 5_000_000 and peak_mb < 1024
