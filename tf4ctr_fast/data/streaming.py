"""Batches of a split larger than device memory, streamed from its memmapped columns, and the rule
that picks between this and the device-resident loader.

StreamingBatchLoader reads the split in chunks of whole batches (about 64 MB of ids). A background
thread reads the next chunk from disk (the page cache), shuffles its rows, copies it to pinned memory
and on to the device on a side CUDA stream, while the training loop consumes the current one: double
buffering, with at most `prefetch` chunks waiting. With shuffle, every epoch draws a new order of the
chunks and of the rows inside each chunk from a generator seeded by (seed, epoch); the rows a chunk
leaves over (less than a batch) go in front of the next one, so every batch but the epoch's last is
full. A chunk-local shuffle mixes rows only within about 64 MB: prepare's ratio split writes rows
already shuffled, so that is enough there; a split in file order (by files or time) is mixed less.

Batches are (x, labels FloatTensor [B]) like DeviceBatchLoader's: x is ids LongTensor [B, F], or,
when the split has multi-valued fields, tf4ctr_fast.features.Features(ids, {field: (values LongTensor
[nnz], offsets LongTensor [B + 1])}).
"""
from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..features import Features, slice_bags
from .loader import DeviceBatchLoader
from .rank_slices import take_jagged_rows

CHUNK_BYTES = 64 << 20
DEVICE_MEMORY_SHARE = 0.5   # choose_loader: a split may take this share of the free device memory


@dataclass
class _Block:
    """Consecutive rows on the host: ids, labels and each multi-valued field's (values, offsets)."""

    ids: np.ndarray                                   # int32 [r, F]
    labels: np.ndarray                                # float32 [r]
    multi_valued: list[tuple[np.ndarray, np.ndarray]]  # per field: values int32 [nnz], offsets int64 [r + 1]

    @property
    def rows(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> _Block:
        return _Block(self.ids[rows], self.labels[rows], [take_jagged_rows(v, o, rows) for v, o in self.multi_valued])

    def then(self, other: _Block) -> _Block:
        """This block followed by `other`."""
        if self.rows == 0:
            return other
        multi = [(np.concatenate([v1, v2]), np.concatenate([o1, o2[1:] + o1[-1]]))
                 for (v1, o1), (v2, o2) in zip(self.multi_valued, other.multi_valued)]
        return _Block(np.concatenate([self.ids, other.ids]), np.concatenate([self.labels, other.labels]), multi)

    def split_at(self, row: int) -> tuple[_Block, _Block]:
        head = _Block(self.ids[:row], self.labels[:row],
                      [(v[:o[row]], o[:row + 1]) for v, o in self.multi_valued])
        tail = _Block(self.ids[row:], self.labels[row:],
                      [(v[o[row]:], o[row:] - o[row]) for v, o in self.multi_valued])
        return head, tail


@dataclass
class _DeviceChunk:
    """A block on the training device, with its batch boundaries computed on the host."""

    ids: torch.Tensor
    labels: torch.Tensor
    bags: dict[str, tuple[torch.Tensor, torch.Tensor]]
    bounds: dict[str, np.ndarray]      # per field: host copy of the offsets, to slice without a sync
    ready: Optional[torch.cuda.Event]


class StreamingBatchLoader:
    """Yields batches of one split, reading it chunk by chunk (see the module doc).

    `split` needs .ids (int [N, F]), .labels (float [N]) and optionally .multi_valued ({name: (values,
    offsets)}), e.g. a memory-mapped PreparedDataset split. `chunk_rows` defaults to about 64 MB of
    ids, rounded to whole batches; `prefetch` is the number of chunks ready ahead of the one in use.
    """

    def __init__(self, split: Any, batch_size: int, device: str | torch.device = "cpu",
                 shuffle: bool = False, seed: int = 0, chunk_rows: Optional[int] = None, prefetch: int = 2):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.device = torch.device(device)
        # the device that a bare "cuda" means, read in the caller's thread (the producer's differs)
        self._caller_device = torch.cuda.current_device() if self.device.type == "cuda" else None
        self.num_rows = int(len(split.labels))
        self.multi_valued_names = list(getattr(split, "multi_valued", {}) or {})
        row_bytes = max(1, split.ids.shape[1] * 4 + 4)
        rows = chunk_rows or max(1, CHUNK_BYTES // row_bytes)
        self.chunk_rows = max(batch_size, rows // batch_size * batch_size)
        self.prefetch = max(1, prefetch)
        self.epoch = 0

    kind = "streaming"  # train.loader's name for it

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Where the sequence of epochs stands (taken between epochs, it fixes the next epoch's order)."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])

    def __iter__(self) -> Iterator[tuple]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(rng, ready, stop), daemon=True,
                                  name="tf4ctr-stream")
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from self._batches(item)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)

    # -- producer thread ------------------------------------------------------------------------

    def _produce(self, rng: np.random.Generator, ready: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            if self.device.type == "cuda":
                # The producer thread starts on device 0; torch 2.11 refuses set_device("cuda")
                # without an index (seen on the first GPU run), so name the caller's device.
                torch.cuda.set_device(self.device.index if self.device.index is not None else self._caller_device)
            stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            starts = np.arange(0, self.num_rows, self.chunk_rows)
            if self.shuffle:
                starts = rng.permutation(starts)
            carry = None
            for k, start in enumerate(starts.tolist()):
                block = self._read(start, min(start + self.chunk_rows, self.num_rows))
                if self.shuffle:
                    block = block.take(rng.permutation(block.rows))
                if carry is not None:
                    block = carry.then(block)
                last = k == len(starts) - 1
                whole = block.rows if last else block.rows // self.batch_size * self.batch_size
                block, carry = block.split_at(whole)
                if block.rows and not put(self._to_device(block, stream)):
                    return
            put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    def _read(self, lo: int, hi: int) -> _Block:
        multi = []
        for name in self.multi_valued_names:
            values, offsets = self.split.multi_valued[name]
            o = np.asarray(offsets[lo:hi + 1], dtype=np.int64)
            multi.append((np.array(values[o[0]:o[-1]], dtype=np.int32), o - o[0]))  # a copy: memmaps are read-only
        return _Block(np.array(self.split.ids[lo:hi], dtype=np.int32),
                      np.array(self.split.labels[lo:hi], dtype=np.float32), multi)

    def _to_device(self, block: _Block, stream: Optional[torch.cuda.Stream]) -> _DeviceChunk:
        host = [torch.from_numpy(block.ids), torch.from_numpy(block.labels)]
        for values, offsets in block.multi_valued:
            host += [torch.from_numpy(values), torch.from_numpy(offsets)]
        bounds = dict(zip(self.multi_valued_names, (offsets for _, offsets in block.multi_valued)))
        if stream is None:
            moved, event = [t.to(self.device) for t in host], None
        else:
            with torch.cuda.stream(stream):
                # pinned: the copy runs asynchronously, overlapping the training step on the main stream
                moved = [t.pin_memory().to(self.device, non_blocking=True) for t in host]
            event = torch.cuda.Event()
            event.record(stream)
        bags = {name: (moved[i], moved[i + 1]) for name, i in zip(self.multi_valued_names, range(2, len(moved), 2))}
        return _DeviceChunk(moved[0], moved[1], bags, bounds, event)

    # -- consumer side --------------------------------------------------------------------------

    def _batches(self, chunk: _DeviceChunk) -> Iterator[tuple]:
        if chunk.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(chunk.ready)
            for t in (chunk.ids, chunk.labels, *[x for pair in chunk.bags.values() for x in pair]):
                t.record_stream(current)  # allocated on the side stream, used on this one
        b = self.batch_size
        for lo in range(0, len(chunk.labels), b):
            hi = min(lo + b, len(chunk.labels))
            ids, labels = chunk.ids[lo:hi].long(), chunk.labels[lo:hi]
            if not chunk.bags:
                yield ids, labels
                continue
            bags = slice_bags(chunk.bags, chunk.bounds, lo, hi)
            yield Features(ids, {name: (v.long(), o) for name, (v, o) in bags.items()}), labels


def split_bytes(split: Any) -> int:
    """Bytes that a device-resident copy of the split takes: ids and labels (4 bytes a value), and per
    multi-valued field its values (4 bytes) and offsets (8 bytes), counted twice for the epoch's
    permuted copy (DeviceBatchLoader shuffles them on the device)."""
    total = int(np.prod(split.ids.shape)) * 4 + int(len(split.labels)) * 4
    for values, offsets in (getattr(split, "multi_valued", None) or {}).values():
        total += 2 * (int(len(values)) * 4 + int(len(offsets)) * 8)
    return total


def free_device_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


LOADERS = ("auto", "device", "streaming")


def choose_loader(split: Any, device: str | torch.device, batch_size: int, shuffle: bool = False,
                  seed: int = 0, budget_bytes: Optional[int] = None, kind: str = "auto", **streaming: Any):
    """DeviceBatchLoader when the split fits, else StreamingBatchLoader (kind "device" / "streaming"
    forces one).

    The rule: the split is kept on the device when split_bytes(split) is at most `budget_bytes`, by
    default half of the free device memory (CUDA: cudaMemGetInfo; CPU: MemAvailable), leaving the
    other half to the model, its optimizer state, activations and the other splits. Criteo Kaggle's
    45M x 39 ids (7 GB) stay on an 80 GB GPU; the same data streams on a 16 GB one.
    """
    if kind not in LOADERS:
        raise ValueError(f"loader kind {kind!r} is not one of {', '.join(LOADERS)}")
    device = torch.device(device)
    if kind == "auto":
        if budget_bytes is None:
            budget_bytes = int(free_device_bytes(device) * DEVICE_MEMORY_SHARE)
        kind = "device" if split_bytes(split) <= budget_bytes else "streaming"
    if kind == "device":
        return DeviceBatchLoader(split, batch_size, device, shuffle=shuffle, seed=seed)
    return StreamingBatchLoader(split, batch_size, device, shuffle=shuffle, seed=seed, **streaming)
