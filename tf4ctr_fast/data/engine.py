"""The streaming prepare engine: raw text files -> a prepared folder, in bounded memory, on all cores.

A format (schema_csv.py, criteo.py, libfm.py) says how to decode a chunk of whole lines into token
keys; this module does everything else, the same way for every format:

    chunks   plain files are cut into byte ranges ending at line ends (workers read them
             themselves); gzip files are inflated by the main process and handed out chunk by chunk
    pass 0   only to split one file by ratio (row count) or by time (the time column): assign every
             row its split and its rank inside the split
    pass 1   decode, check every row, count the keys of training rows (KeyCounter per field)
    vocab    min_count threshold per field, ids 2.. in key order
    pass 2   decode again, encode, write each row at its final position into preallocated memmapped
             columns inside atomic_dir; str tokens' text is read back at their first occurrence
    schema   schema.json written last

`encode_text` runs the same passes over one file with vocabularies given (a trained model's): pass 1
only checks the rows, pass 2 writes them all, in file order, into one split (`tf4ctr-fast predict`).

Chunks are decoded in worker processes (multiprocessing, spawn) and their results consumed in file
order, so the first bad line reported is the first in the file and every output is independent of
the number of workers and the chunk size. Memory: a few chunks per worker, the vocabulary counts
(O(distinct values)) and a split and a position per row (9 bytes per row).
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_dir
from .columns import OOV_ID, PADDING_ID, IntVocab, check_replaceable, write_schema
from .text import BAD_VALUE, Chunk, count_lines
from .vocab import KeyCounter, count_of, count_run, fit, key_text, to_json

SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_CHUNK_BYTES = 16 << 20   # arrays per chunk stay under glibc's 32 MB mmap threshold: memory is
#                                  reused instead of freshly page-faulted for every chunk
MAX_EXAMPLES = 10                # skipped rows quoted in the report
_GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"   # UTF-8 byte order mark


# ---------------------------------------------------------------------------------------------
# What a format provides


@dataclass(frozen=True)
class FieldInfo:
    """One output field: its name, key codec, min_count, and what schema.json records beside it."""

    name: str
    codec: str
    min_count: int
    schema: dict[str, Any] = field(default_factory=dict)
    on_bad_value: str = "error"     # "oov": junk tokens of a codec int field encode as OOV, counted


@dataclass
class Decoded:
    """One chunk, decoded. Rows are the chunk's non-blank lines, in order."""

    total_lines: int                 # lines in the chunk, blank ones included
    number: np.ndarray               # int64 [n]: 0-based line index of each row within the chunk
    bad: np.ndarray                  # bool [n]
    reasons: list[tuple[np.ndarray, Callable[[int], str]]]   # (bad mask, row -> message), in check order
    cat_keys: np.ndarray             # int64 [F, n] (field-major: each field's keys are contiguous)
    cat_starts: Optional[np.ndarray]  # int64 [F, n] token starts, when some field is a str field
    mv: list[tuple[np.ndarray, np.ndarray, np.ndarray]]      # per field: lengths [n], keys [nnz], starts [nnz]
    labels: np.ndarray               # float32 [n]
    group: Optional[np.ndarray] = None   # int64 [n]
    keep: Optional[np.ndarray] = None    # int64 [K, n]
    time: Optional[np.ndarray] = None    # float64 [n]

    @property
    def rows(self) -> int:
        return len(self.number)

    def message(self, row: int) -> str:
        for mask, describe in self.reasons:
            if mask[row]:
                return describe(row)
        raise AssertionError("row is not bad")


class ChunkDecoder(Protocol):
    """Decodes chunks of one file (picklable: it travels to the worker processes)."""

    def decode(self, chunk: Chunk) -> Decoded: ...

    def token_ends(self, multi_valued: bool, j: int) -> bytes:
        """Bytes that end a token of categorical field j (or multi-valued field j)."""


class TextFormat(Protocol):
    label: str
    categorical: list[FieldInfo]
    multi_valued: list[FieldInfo]
    group_field: Optional[str]
    keep_columns: list[str]
    time_column: Optional[str]
    has_header: bool

    def decoder(self, path: Path, header: Optional[str]) -> ChunkDecoder:
        """The decoder of one file; `header` is its first line when has_header. Raises InputError."""

    def options(self) -> dict[str, Any]:
        """schema["options"]: everything that determines the output."""

    def report(self) -> dict[str, Any]:
        """Extra entries for schema["report"] (e.g. ignored columns)."""


# ---------------------------------------------------------------------------------------------
# How rows are split


@dataclass(frozen=True)
class SplitPlan:
    """`files`: one file per split. `ratio` / `time`: one file, cut in the given proportions after a
    seeded shuffle or in order of the format's time column (ties keep file order)."""

    by: str                          # "files" | "ratio" | "time"
    files: dict[str, Path]           # split name -> file; for ratio/time one entry, "data"
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 2023

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by": self.by}
        if self.by != "files":
            out["ratios"] = list(self.ratios)
        if self.by == "ratio":
            out["seed"] = self.seed
        return out


def ratio_split(n: int, ratios: tuple[float, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(split index int8 [n], rank within the split int64 [n]) of a seeded shuffled cut."""
    return _cut(np.random.default_rng(seed).permutation(n), ratios)


def time_split(times: np.ndarray, ratios: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Like ratio_split, in ascending time order (NaN, i.e. bad rows, last)."""
    return _cut(np.argsort(times, kind="stable"), ratios)


def _cut(order: np.ndarray, ratios: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    n = len(order)
    cuts = np.rint(np.cumsum(ratios) / sum(ratios) * n).astype(np.int64)
    cuts[-1] = n
    split = np.empty(n, dtype=np.int8)
    rank = np.empty(n, dtype=np.int64)
    for s, (lo, hi) in enumerate(zip(np.concatenate([[0], cuts[:-1]]), cuts)):
        split[order[lo:hi]] = s
        rank[order[lo:hi]] = np.arange(hi - lo)
    return split, rank


@dataclass(frozen=True)
class EngineOptions:
    workers: int = 0                  # 0: every core this process may use
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    on_bad_row: str = "error"         # "error" | "skip" (skipped rows are counted in the report)
    progress: bool = True


# ---------------------------------------------------------------------------------------------
# Files and chunks


@dataclass(frozen=True)
class _Source:
    index: int
    split: Optional[str]      # files mode: the split this file is; else None
    path: Path
    gzip: bool
    size: int                 # bytes on disk
    data_start: int           # offset of the first data line (after a header) in the text
    first_line: int           # 1-based line number of the first data line


@dataclass(frozen=True)
class _Task:
    source: int
    chunk: int
    start: int                # offset in the (decompressed) text
    end: int
    raw_bytes: int            # bytes of the file on disk this chunk stands for (progress)
    data: Optional[bytes]     # the text, for gzip sources; plain sources are read by the worker
    extra: Any = None         # pass-specific per-row arrays


def first_line(path: Path, skip_blank: bool = False) -> tuple[bytes, int, bool]:
    """(the first line of a file, or its first non-blank one, without the newline; its 1-based
    number; whether the file is gzip). InputError if it cannot be read."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    if path.suffix == ".gz" and not gz:
        raise InputError(f"{path}:1: unreadable gzip file (no gzip header)")
    pieces = _gunzip(path, block=1 << 16) if gz else _plain_pieces(path)
    text, number = b"", 1
    for _, _, piece in pieces:
        text += piece
        while b"\n" in text:
            line, text = text.split(b"\n", 1)
            if not skip_blank or line.strip(b"\r"):
                return line, number, gz
            number += 1
    return text, number, gz


def _plain_pieces(path: Path, block: int = 1 << 16) -> Iterator[tuple[int, int, bytes]]:
    with open(path, "rb") as f:
        while data := f.read(block):
            yield len(data), 0, data


def read_header(path: Path) -> str:
    """The header line of a file (gzip or plain) as text; InputError if missing or not UTF-8."""
    return _header_text(path, first_line(path)[0])


def _header_text(path: Path, line: bytes) -> str:
    if not line.strip():
        raise InputError(f"{path}:1: empty file, expected a header row")
    try:
        return line.decode("utf-8").lstrip("\ufeff").rstrip("\r")
    except UnicodeDecodeError:
        raise InputError(f"{path}:1: header is not UTF-8 text") from None


def _open_source(index: int, split: Optional[str], path: Path, has_header: bool) -> tuple[_Source, Optional[str]]:
    """Check a file, detect gzip, read its header line when the format has one."""
    line, _, gz = first_line(path)
    header, data_start = None, 0
    if has_header:
        header = _header_text(path, line)
        data_start = len(line) + 1
    elif line.startswith(BOM):  # a header's BOM is dropped with the header; a data row's would spoil its first field
        raise InputError(f"{path}:1: the file starts with a UTF-8 byte order mark (BOM, bytes EF BB BF), "
                         "which this headerless format does not take; save the file without a BOM")
    source = _Source(index=index, split=split, path=path, gzip=gz, size=path.stat().st_size,
                     data_start=data_start, first_line=2 if has_header else 1)
    return source, header


def _gunzip(path: Path, block: int = 1 << 20) -> Iterator[tuple[int, int, bytes]]:
    """(compressed bytes consumed, newlines so far, text) pieces of every gzip member of a file.

    Damage, or a stream that stops inside a member, raises InputError naming the line where the
    readable text stops.
    """
    lines = 0
    with open(path, "rb") as f:
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        in_member = False
        data = f.read(block)
        while data:
            text = inflate(member, data, path, lines)
            in_member, consumed = True, len(data)
            if member.eof:  # another member may follow
                rest = member.unused_data
                consumed -= len(rest)
                member, in_member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), False
                data = rest or f.read(block)
            else:
                data = f.read(block)
            lines += text.count(b"\n")
            yield consumed, lines, text
        if in_member:
            raise InputError(f"{path}:{lines + 1}: unreadable gzip data after line {lines}: the compressed "
                             "stream ends early (a truncated file)")


def inflate(member: Any, data: bytes, path: Path, lines: int) -> bytes:
    """member.decompress(data); on damage, InputError naming the line where the readable text stops,
    `lines` being the newlines before `data`."""
    saved = member.copy()
    try:
        return member.decompress(data)
    except zlib.error as e:
        lines += _lines_before_damage(saved, data)
        raise InputError(f"{path}:{lines + 1}: unreadable gzip data after line {lines}: the file is corrupt "
                         f"({e})") from None


def _lines_before_damage(member: Any, data: bytes) -> int:
    """The newlines `member` inflates from `data` before it fails.

    zlib drops the whole output of a failing call, and a bad checksum fails only at the member's end,
    after all its text: so `data` is inflated again in pieces, a failing piece redone in smaller
    ones, down to one byte (else a damaged 1 MB block would blame line 1 of a file that reads fine
    for thousands of lines)."""
    lines, at, step = 0, 0, 1 << 14
    while at < len(data):
        before = member.copy()
        try:
            lines += member.decompress(data[at:at + step]).count(b"\n")
        except zlib.error:
            if step == 1:
                break
            member, step = before, max(1, step // 16)
            continue
        at += step
    return lines


def _gzip_tasks(source: _Source, chunk_bytes: int) -> Iterator[_Task]:
    """Chunks of whole lines of a gzip file; the main process inflates, workers get the text."""
    buffer, offset, raw, index, skip = bytearray(), 0, 0, 0, source.data_start
    for consumed, _, text in _gunzip(source.path):
        raw += consumed
        buffer += text
        if skip:  # the header line
            cut = min(skip, len(buffer))
            del buffer[:cut]
            skip, offset = skip - cut, offset + cut
        while len(buffer) >= chunk_bytes:
            end = (buffer.rfind(b"\n", 0, chunk_bytes) + 1) or (buffer.find(b"\n", chunk_bytes) + 1)
            if end == 0:  # a line longer than a chunk: wait for its end
                break
            yield _Task(source.index, index, offset, offset + end, raw, bytes(buffer[:end]))
            del buffer[:end]
            offset, raw, index = offset + end, 0, index + 1
    if buffer or index == 0:
        yield _Task(source.index, index, offset, offset + len(buffer), raw, bytes(buffer))


def _plain_tasks(source: _Source, chunk_bytes: int) -> list[_Task]:
    """Byte ranges of whole lines, each about chunk_bytes long."""
    bounds = [source.data_start]
    with open(source.path, "rb") as f:
        while bounds[-1] + chunk_bytes < source.size:
            f.seek(bounds[-1] + chunk_bytes - 1)
            rest = f.readline()
            bounds.append(bounds[-1] + chunk_bytes - 1 + len(rest))
    if bounds[-1] < source.size or len(bounds) == 1:
        bounds.append(source.size)
    return [_Task(source.index, i, lo, hi, hi - lo, None) for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _tasks(source: _Source, chunk_bytes: int) -> Iterator[_Task]:
    return _gzip_tasks(source, chunk_bytes) if source.gzip else iter(_plain_tasks(source, chunk_bytes))


# ---------------------------------------------------------------------------------------------
# Worker side: module state set once per pass by the pool initializer


_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state, files={}, outputs={})


def _init_pool_worker(state: dict[str, Any], parent: int) -> None:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _init_worker(state)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when `parent` (the prepare that spawned it) dies.

    A parent killed by SIGKILL (or the OOM killer) runs no cleanup: without this its workers wait on
    their task queue for minutes, holding memory, and keep the multiprocessing resource tracker alive
    (it exits once the last process holding its pipe is gone). Linux only; elsewhere workers outlive
    a killed parent. (The kernel watches the thread that spawned the worker: ProcessPoolExecutor
    spawns from the thread that submits the tasks, which outlives the pool.)
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _close_worker() -> None:
    for f in _STATE.get("files", {}).values():
        f.close()
    _STATE.clear()  # drops the memmaps too


def _chunk(task: _Task) -> Chunk:
    if task.data is not None:
        return Chunk.from_bytes(task.data)
    files = _STATE["files"]
    if task.source not in files:
        files[task.source] = open(_STATE["paths"][task.source], "rb")
    return Chunk.read(files[task.source], task.start, task.end - task.start)


def _decode(task: _Task) -> tuple[Chunk, Decoded]:
    chunk = _chunk(task)
    return chunk, _STATE["decoders"][task.source].decode(chunk)


def _bad_report(dec: Decoded, limit: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    bad = np.flatnonzero(dec.bad)
    return bad, [(int(dec.number[r]), dec.message(int(r))) for r in bad[:limit]]


def _rows_in_chunk(task: _Task) -> tuple[int, int]:
    return count_lines(_chunk(task))


def _times_in_chunk(task: _Task) -> tuple[int, int, np.ndarray]:
    _, dec = _decode(task)
    return dec.total_lines, dec.rows, np.where(dec.bad, np.nan, dec.time)


@dataclass
class _Pass1Result:
    total_lines: int
    rows: int
    bad: np.ndarray                      # row indices within the chunk
    messages: list[tuple[int, str]]      # (0-based line within the chunk, message) of the first bad rows
    counts: list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]     # per categorical field
    mv_counts: list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]  # per multi-valued field
    mv_lengths: list[np.ndarray]         # per multi-valued field: int32 [rows]


def _count_chunk(task: _Task) -> _Pass1Result:
    chunk, dec = _decode(task)
    limit = MAX_EXAMPLES if _STATE["skip_bad"] else 1
    bad, messages = _bad_report(dec, limit)
    split = task.extra  # per-row split index, or one index for the whole chunk
    train = ~dec.bad & (split == 0)
    keys = np.compress(train, dec.cat_keys, axis=1)
    starts = np.compress(train, dec.cat_starts, axis=1) + task.start if dec.cat_starts is not None else None
    counts = [count_run(keys[j], starts[j] if info.codec == "str" else None)
              for j, info in enumerate(_STATE["categorical"])]
    mv_counts, mv_lengths = [], []
    for info, (lengths, tokens, starts) in zip(_STATE["multi_valued"], dec.mv):
        taken = np.repeat(train, lengths)
        mv_counts.append(count_run(tokens[taken], starts[taken] + task.start if info.codec == "str" else None))
        mv_lengths.append(lengths.astype(np.int32))
    return _Pass1Result(dec.total_lines, dec.rows, bad, messages, counts, mv_counts, mv_lengths)


@dataclass(frozen=True)
class _Placement:
    """Where the rows of one chunk go (pass 2)."""

    split: np.ndarray                # int8 [rows]: split index, -1 for skipped rows
    pos: np.ndarray                  # int64 [rows]: row position in its split
    mv_dest: list[np.ndarray]        # per multi-valued field: int64 [rows], first value's position
    recover: list[tuple[bool, int, np.ndarray]]   # (multi-valued?, field, chunk offsets) of texts to read


def _write_chunk(task: _Task) -> list[list[str]]:
    chunk, dec = _decode(task)
    place: _Placement = task.extra
    if len(place.split) != dec.rows:
        raise RuntimeError(f"chunk {task.chunk} of source {task.source} changed between passes")
    vocabs: list[IntVocab] = _STATE["vocabs"]
    ids = np.empty((dec.rows, len(vocabs)), dtype=np.int32)  # every row encoded once, then scattered
    for j, vocab in enumerate(vocabs):
        ids[:, j] = vocab.encode(dec.cat_keys[j])
    mv_ids = [vocab.encode(keys) for (_, keys, _), vocab in zip(dec.mv, _STATE["mv_vocabs"])]
    for s, name in enumerate(_STATE["split_names"]):
        member = place.split == s
        rows = np.flatnonzero(member)
        if len(rows) == 0:
            continue
        out = _outputs(name)
        pos = place.pos[rows]
        out["ids"][pos] = ids[rows]
        out["labels"][pos] = dec.labels[rows]
        if dec.group is not None:
            out["group"][pos] = dec.group[rows]
        if dec.keep is not None:
            out["keep"][pos] = dec.keep[:, rows].T
        for j, ((lengths, _, _), values) in enumerate(zip(dec.mv, mv_ids)):
            n = lengths[rows]
            dest = np.repeat(place.mv_dest[j][rows] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
            out["mv"][j][dest] = values[np.repeat(member, lengths)]
    texts = []
    for multi_valued, j, offsets in place.recover:
        texts.append(_read_tokens(chunk, offsets, _STATE["decoders"][task.source].token_ends(multi_valued, j)))
    return texts


def _outputs(split: str) -> dict[str, Any]:
    """The memmapped columns of one split, opened once per worker and pass."""
    cache = _STATE["outputs"]
    if split not in cache:
        folder = Path(_STATE["out_dir"]) / split
        arrays: dict[str, Any] = {name: np.load(folder / f"{name}.npy", mmap_mode="r+")
                                  for name in ("ids", "labels", "group", "keep") if (folder / f"{name}.npy").exists()}
        arrays["mv"] = [np.load(folder / f"mv_{j}.values.npy", mmap_mode="r+")
                        for j in range(len(_STATE["multi_valued"]))]
        cache[split] = arrays
    return cache[split]


def _read_tokens(chunk: Chunk, offsets: np.ndarray, ends: bytes) -> list[str]:
    """The text of the tokens starting at `offsets` (chunk-relative), each up to the next end byte."""
    stops = np.flatnonzero(np.isin(chunk.buf, np.frombuffer(ends, dtype=np.uint8)))
    stop = np.append(stops, len(chunk.buf))[np.searchsorted(stops, offsets)]
    return [bytes(chunk.buf[a:b]).decode("utf-8", errors="surrogateescape").rstrip("\r")
            for a, b in zip(offsets.tolist(), stop.tolist())]


# ---------------------------------------------------------------------------------------------
# Main side


class _Runner:
    """Runs one pass's tasks on worker processes (inline when one worker suffices), results in order.

    At most 2 tasks per worker are in flight, which bounds the memory of gzip chunks in transit.
    Leaving the `with` block by an exception (bad input, Ctrl-C) cancels the queued tasks and waits
    for the running ones (one chunk each, well under a second). concurrent.futures rather than
    multiprocessing.Pool: Pool.terminate() can deadlock on a worker idling in its task queue, and a
    pool whose worker died waits forever where the executor raises BrokenProcessPool.
    """

    def __init__(self, workers: int, state: dict[str, Any]):
        self.workers, self.state, self.pool = workers, state, None

    def __enter__(self) -> _Runner:
        if self.workers > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_pool_worker,
                                            initargs=(self.state, os.getpid()))
        else:
            _init_worker(self.state)
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=kind is not None)
        else:
            _close_worker()

    def map(self, fn: Callable[[_Task], Any], tasks: Iterator[_Task]) -> Iterator[tuple[_Task, Any]]:
        if self.pool is None:
            for task in tasks:
                yield task, fn(task)
            return
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append((task, self.pool.submit(fn, task)))
            if len(pending) >= 2 * self.workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _progress(opts: EngineOptions, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not opts.progress, leave=False, dynamic_ncols=True)


def _sha256_thread(paths: list[Path]) -> tuple[threading.Thread, dict[Path, str]]:
    """Hash the input files in the background (hashlib releases the GIL on large blocks)."""
    digests: dict[Path, str] = {}

    def run() -> None:
        for path in paths:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
            digests[path] = h.hexdigest()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, digests


def _workers(opts: EngineOptions) -> int:
    if opts.workers > 0:
        return opts.workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class _RowTable:
    """Per-row bookkeeping over all sources, in task order (9 bytes per row)."""

    source_rows: list[list[int]] = field(default_factory=list)   # per source: rows per chunk
    split: Optional[np.ndarray] = None       # int8 [N]
    rank: Optional[np.ndarray] = None        # int64 [N]: position in the split (before skipped rows)


@dataclass(frozen=True)
class _Job:
    """The files of one run and what every pass needs."""

    fmt: TextFormat
    sources: list[_Source]
    split_names: list[str]
    workers: int
    state: dict[str, Any]          # what the workers of every pass get
    opts: EngineOptions


def _start(fmt: TextFormat, named: list[tuple[Optional[str], Path]], split_names: list[str],
           opts: EngineOptions) -> _Job:
    """Open the files (split name or None, path) and their decoders."""
    if opts.on_bad_row not in ("error", "skip"):
        raise InputError(f"on_bad_row must be 'error' or 'skip', got {opts.on_bad_row!r}")
    sources, decoders = [], []
    for i, (split, path) in enumerate(named):
        source, header = _open_source(i, split, Path(path), fmt.has_header)
        sources.append(source)
        decoders.append(fmt.decoder(source.path, header))
    workers = min(_workers(opts), max(1, sum(-(-max(s.size, 1) // opts.chunk_bytes) for s in sources)))
    state = {"paths": [str(s.path) for s in sources], "decoders": decoders,
             "categorical": fmt.categorical, "multi_valued": fmt.multi_valued,
             "skip_bad": opts.on_bad_row == "skip", "split_names": split_names}
    return _Job(fmt, sources, split_names, workers, state, opts)


def prepare_text(fmt: TextFormat, plan: SplitPlan, out_dir: str | Path, opts: EngineOptions,
                 format_name: str) -> Path:
    """Prepare `plan`'s files with `fmt` into `out_dir` (atomically; schema.json last)."""
    if plan.by == "files":
        named = [(name, Path(plan.files[name])) for name in SPLIT_NAMES if name in plan.files]
        job = _start(fmt, named, [name for name, _ in named], opts)
    else:
        job = _start(fmt, [(None, Path(plan.files["data"]))], list(SPLIT_NAMES[:len(plan.ratios)]), opts)
    sources, workers = job.sources, job.workers
    hasher, digests = _sha256_thread([s.path for s in sources])
    rows = _RowTable()

    if plan.by != "files":
        _run_pass0(fmt, plan, sources[0], rows, workers, job.state, opts)
    counters, mv_counters, mv_lengths, bad_rows, examples = _run_pass1(fmt, sources, rows, workers, job.state, opts)
    if plan.by == "files":
        _rows_by_file(rows)
    train_path = sources[0].path
    vocabs = [fit(*c.result()[:2], f.min_count, f"{train_path}: field '{f.name}'")
              for f, c in zip(fmt.categorical, counters)]
    mv_vocabs = [fit(*c.result()[:2], f.min_count, f"{train_path}: field '{f.name}'")
                 for f, c in zip(fmt.multi_valued, mv_counters)]
    sizes, pos = _positions(rows, bad_rows, job.split_names, sources, plan)
    hasher.join()

    with atomic_dir(out_dir, check_replaceable) as tmp:
        recover_plan = _recovery_plan(fmt, counters, mv_counters, vocabs, mv_vocabs)
        texts = _write_columns(tmp, job, rows, pos, sizes, mv_lengths, vocabs, mv_vocabs, recover_plan)
        schema = _schema(fmt, format_name, plan, opts, sources, digests, vocabs, mv_vocabs, texts,
                         bad_rows, examples)
        oov = {f.name: count_of(c, BAD_VALUE) for f, c in zip(fmt.categorical, counters) if f.on_bad_value == "oov"}
        if oov:  # junk values read as OOV, per field, in the train split
            schema["report"]["bad_values_as_oov"] = oov
        write_schema(tmp, schema, dict(zip(job.split_names, sizes)))
    return Path(out_dir)


def encode_text(fmt: TextFormat, path: str | Path, out_dir: str | Path, opts: EngineOptions,
                vocabs: list[IntVocab], mv_vocabs: list[IntVocab], schema: dict[str, Any],
                split_name: str) -> Path:
    """Encode every good row of one file, in file order, into the one split `split_name` of a new
    prepared folder at `out_dir`, with the given vocabularies (no fitting: unseen keys -> OOV).

    `schema` is the schema.json the vocabularies come from (a training folder's): the new folder's
    schema is a copy with this file as its source, this run's report, and fmt's label (None when the
    rows have none: labels.npy then holds the decoders' NaN). Bad rows: as in prepare_text.
    """
    job = _start(fmt, [(split_name, Path(path))], [split_name], opts)
    hasher, digests = _sha256_thread([job.sources[0].path])
    rows = _RowTable()
    # the source is not "train": pass 1 counts nothing, it checks the rows and measures them
    *_, mv_lengths, bad_rows, examples = _run_pass1(fmt, job.sources, rows, job.workers, job.state, opts,
                                                    desc="checking rows")
    _rows_by_file(rows)
    plan = SplitPlan(by="files", files={split_name: job.sources[0].path})
    sizes, pos = _positions(rows, bad_rows, job.split_names, job.sources, plan)
    hasher.join()

    with atomic_dir(out_dir, check_replaceable) as tmp:
        _write_columns(tmp, job, rows, pos, sizes, mv_lengths, vocabs, mv_vocabs, recover=[])
        encoded = {**schema, "label": fmt.label,
                   "options": {**schema["options"], "on_bad_row": opts.on_bad_row},
                   "sources": _sources_json(job.sources, digests),
                   "report": _report(fmt, bad_rows, examples)}
        write_schema(tmp, encoded, {split_name: sizes[0]})
    return Path(out_dir)


def _rows_by_file(rows: _RowTable) -> None:
    """One file per split: source s is split s, its rows in file order."""
    rows.split = np.concatenate([np.full(sum(r), s, dtype=np.int8) for s, r in enumerate(rows.source_rows)])
    rows.rank = np.concatenate([np.arange(sum(r), dtype=np.int64) for r in rows.source_rows])


def _write_columns(tmp: Path, job: _Job, rows: _RowTable, pos: np.ndarray, sizes: list[int],
                   mv_lengths: list[np.ndarray], vocabs: list[IntVocab], mv_vocabs: list[IntVocab],
                   recover: list[tuple[bool, int, np.ndarray]]) -> list[list[str]]:
    """Allocate every split's arrays in `tmp` and fill them (pass 2); returns the recovered texts."""
    mv_dest = _allocate(tmp, job.fmt, job.split_names, sizes, rows.split, pos, mv_lengths)
    state = dict(job.state, vocabs=vocabs, mv_vocabs=mv_vocabs, out_dir=str(tmp))
    return _run_pass2(job.fmt, job.sources, rows, pos, mv_dest, recover, tmp, job.workers, state, job.opts)


def _run_pass0(fmt: TextFormat, plan: SplitPlan, source: _Source, rows: _RowTable, workers: int,
           state: dict[str, Any], opts: EngineOptions) -> None:
    per_chunk, times = [], []
    fn = _times_in_chunk if plan.by == "time" else _rows_in_chunk
    with _progress(opts, source.size, f"{source.path.name}: counting rows") as bar, _Runner(workers, state) as run:
        for task, result in run.map(fn, _tasks(source, opts.chunk_bytes)):
            per_chunk.append(result[1])
            if plan.by == "time":
                times.append(result[2])
            bar.update(task.raw_bytes)
    rows.source_rows = [per_chunk]
    n = sum(per_chunk)
    if plan.by == "time":
        rows.split, rows.rank = time_split(np.concatenate(times) if times else np.zeros(0), plan.ratios)
    else:
        rows.split, rows.rank = ratio_split(n, plan.ratios, plan.seed)


def _run_pass1(fmt: TextFormat, sources: list[_Source], rows: _RowTable, workers: int,
           state: dict[str, Any], opts: EngineOptions, desc: str = "counting values"):
    counters = [KeyCounter(track_first=f.codec == "str") for f in fmt.categorical]
    mv_counters = [KeyCounter(track_first=f.codec == "str") for f in fmt.multi_valued]
    mv_lengths: list[list[np.ndarray]] = [[] for _ in fmt.multi_valued]
    bad_rows: list[np.ndarray] = []
    examples: list[str] = []
    ratio = rows.split is not None
    if not ratio:
        rows.source_rows = [[] for _ in sources]
    row_base = 0

    def tasks() -> Iterator[_Task]:
        offset = 0
        for source in sources:
            for task in _tasks(source, opts.chunk_bytes):
                if ratio:
                    # rows per chunk are known from pass 0, so each task can carry its rows' splits
                    n = rows.source_rows[0][task.chunk]
                    extra = rows.split[offset:offset + n]
                    offset += n
                else:
                    extra = np.int8(0 if source.split == "train" else 1)
                yield _replace(task, extra=extra)

    total = sum(s.size for s in sources)
    line_base = {s.index: s.first_line for s in sources}
    with _progress(opts, total, desc) as bar, _Runner(workers, state) as run:
        for task, res in run.map(_count_chunk, tasks()):
            source = sources[task.source]
            if ratio and res.rows != rows.source_rows[0][task.chunk]:
                raise RuntimeError("row count changed between passes")
            if not ratio:
                rows.source_rows[task.source].append(res.rows)
            first_line = line_base[task.source]
            if len(res.bad):
                located = [f"{source.path}:{first_line + line}: {msg}" for line, msg in res.messages]
                if opts.on_bad_row == "error":
                    raise InputError(located[0])
                examples.extend(located[:MAX_EXAMPLES - len(examples)])
                bad_rows.append(row_base + res.bad)
            line_base[task.source] = first_line + res.total_lines
            row_base += res.rows
            for counter, counted in zip(counters, res.counts):
                counter.add(*counted)
            for counter, counted in zip(mv_counters, res.mv_counts):
                counter.add(*counted)
            for acc, lengths in zip(mv_lengths, res.mv_lengths):
                acc.append(lengths)
            bar.update(task.raw_bytes)
    lengths = [np.concatenate(acc) if acc else np.zeros(0, dtype=np.int32) for acc in mv_lengths]
    bad = np.concatenate(bad_rows) if bad_rows else np.zeros(0, dtype=np.int64)
    return counters, mv_counters, lengths, bad, examples


def _replace(task: _Task, **kw: Any) -> _Task:
    return _Task(**{**task.__dict__, **kw})


def _positions(rows: _RowTable, bad: np.ndarray, split_names: list[str], sources: list[_Source],
               plan: SplitPlan) -> tuple[list[int], np.ndarray]:
    """Compact each split around the skipped rows: (rows per split, position of every row).

    The ranks become the positions in place (the table's rank is gone afterwards).
    """
    split, pos = rows.split, rows.rank
    rows.rank = None
    sizes = []
    for s, name in enumerate(split_names):
        bad_ranks = np.sort(pos[bad[split[bad] == s]])
        members = split == s
        pos[members] -= np.searchsorted(bad_ranks, pos[members])
        sizes.append(int(np.count_nonzero(members)) - len(bad_ranks))
        if sizes[-1] == 0:
            where = sources[s].path if plan.by == "files" else sources[0].path
            what = "no data rows" if plan.by == "files" else f"split '{name}' would be empty"
            raise InputError(f"{where}: {what}" + (" left after skipping bad rows" if len(bad_ranks) else ""))
    split[bad] = -1
    return sizes, pos


def _allocate(tmp: Path, fmt: TextFormat, split_names: list[str], sizes: list[int], split: np.ndarray,
              pos: np.ndarray, mv_lengths: list[np.ndarray]) -> list[np.ndarray]:
    """Create every output array at its final size; write the multi-valued offsets.

    Returns, per multi-valued field, the position of each row's first value in its split.
    """
    from numpy.lib.format import open_memmap

    num_keep = len(fmt.keep_columns)
    mv_dest = [np.zeros(len(split), dtype=np.int64) for _ in fmt.multi_valued]
    for s, (name, n) in enumerate(zip(split_names, sizes)):
        folder = tmp / name
        folder.mkdir()
        shapes = {"ids": ((n, len(fmt.categorical)), np.int32), "labels": ((n,), np.float32)}
        if fmt.group_field is not None:
            shapes["group"] = ((n,), np.int64)
        if num_keep:
            shapes["keep"] = ((n, num_keep), np.int64)
        members = np.flatnonzero(split == s)
        for j, lengths in enumerate(mv_lengths):
            by_pos = np.zeros(n, dtype=np.int64)
            by_pos[pos[members]] = lengths[members]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(by_pos, out=offsets[1:])
            np.save(folder / f"mv_{j}.offsets.npy", offsets, allow_pickle=False)
            mv_dest[j][members] = offsets[pos[members]]
            shapes[f"mv_{j}.values"] = ((int(offsets[-1]),), np.int32)
        for file, (shape, dtype) in shapes.items():
            open_memmap(folder / f"{file}.npy", mode="w+", dtype=dtype, shape=shape)  # zero-filled, sparse
    return mv_dest


def _recovery_plan(fmt: TextFormat, counters: list[KeyCounter], mv_counters: list[KeyCounter],
                   vocabs: list[IntVocab], mv_vocabs: list[IntVocab]) -> list[tuple[bool, int, np.ndarray]]:
    """(multi-valued?, field, first offsets of the known keys in key order) of every str field."""
    plan = []
    for multi_valued, infos, cs, vs in ((False, fmt.categorical, counters, vocabs),
                                        (True, fmt.multi_valued, mv_counters, mv_vocabs)):
        for j, (info, counter, vocab) in enumerate(zip(infos, cs, vs)):
            if info.codec == "str":
                keys, _, first = counter.result()
                plan.append((multi_valued, j, first[np.searchsorted(keys, vocab.known)]))
    return plan


def _run_pass2(fmt: TextFormat, sources: list[_Source], rows: _RowTable, pos: np.ndarray,
           mv_dest: list[np.ndarray], recover: list[tuple[bool, int, np.ndarray]], tmp: Path, workers: int,
           state: dict[str, Any], opts: EngineOptions) -> list[list[str]]:
    """Encode and write every row; returns the texts of the str fields' known keys, in key order."""
    texts: list[dict[int, str]] = [{} for _ in recover]
    sorted_offsets = [(np.argsort(offsets, kind="stable"), np.sort(offsets)) for _, _, offsets in recover]

    def tasks() -> Iterator[_Task]:
        row = 0
        for source in sources:
            for task in _tasks(source, opts.chunk_bytes):
                n = rows.source_rows[source.index][task.chunk]
                take = slice(row, row + n)
                wanted = []
                for (multi_valued, j, _), (order, offsets) in zip(recover, sorted_offsets):
                    lo, hi = ((np.searchsorted(offsets, task.start), np.searchsorted(offsets, task.end))
                              if source.index == 0 else (0, 0))
                    wanted.append((multi_valued, j, offsets[lo:hi] - task.start))
                place = _Placement(rows.split[take], pos[take], [d[take] for d in mv_dest], wanted)
                row += n
                yield _replace(task, extra=place)

    total = sum(s.size for s in sources)
    with _progress(opts, total, "writing columns") as bar, _Runner(workers, state) as run:
        for task, found in run.map(_write_chunk, tasks()):
            if task.source == 0:
                for k, ((order, offsets), got) in enumerate(zip(sorted_offsets, found)):
                    lo = np.searchsorted(offsets, task.start)
                    for i, text in zip(order[lo:lo + len(got)].tolist(), got):
                        texts[k][i] = text
            bar.update(task.raw_bytes)
    return [[t[i] for i in range(len(t))] for t in texts]


def _schema(fmt: TextFormat, format_name: str, plan: SplitPlan, opts: EngineOptions, sources: list[_Source],
            digests: dict[Path, str], vocabs: list[IntVocab], mv_vocabs: list[IntVocab],
            texts: list[list[str]], bad_rows: np.ndarray, examples: list[str]) -> dict[str, Any]:
    recovered = iter(texts)

    def entry(info: FieldInfo, vocab: IntVocab, kind: str) -> dict[str, Any]:
        words = next(recovered) if info.codec == "str" else key_text(info.codec, vocab.known)
        return {"name": info.name, "kind": kind, "vocab_size": vocab.size, "padding_id": PADDING_ID,
                "oov_id": OOV_ID, "codec": info.codec, "min_count": info.min_count, **info.schema,
                "vocab": to_json(vocab, words)}

    # recovery texts come in the order categorical str fields, then multi-valued str fields
    fields = [entry(f, v, "categorical") for f, v in zip(fmt.categorical, vocabs)]
    multi = [entry(f, v, "multi_valued") for f, v in zip(fmt.multi_valued, mv_vocabs)]
    return {
        "fields": fields,
        "multi_valued_fields": multi,
        "label": fmt.label,
        "group_field": fmt.group_field,
        "keep_columns": list(fmt.keep_columns),
        "options": {"format": format_name, **fmt.options(), "split": plan.to_json(),
                    "on_bad_row": opts.on_bad_row},
        "sources": _sources_json(sources, digests),
        "report": _report(fmt, bad_rows, examples),
    }


def _sources_json(sources: list[_Source], digests: dict[Path, str]) -> dict[str, Any]:
    return {s.split or "data": {"path": str(s.path.resolve()), "sha256": digests[s.path]} for s in sources}


def _report(fmt: TextFormat, bad_rows: np.ndarray, examples: list[str]) -> dict[str, Any]:
    return {"skipped_rows": int(len(bad_rows)), "skipped_examples": examples, **fmt.report()}
