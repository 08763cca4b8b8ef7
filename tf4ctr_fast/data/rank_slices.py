"""Each rank's slice of every batch, read straight from the split's memory-mapped columns: what the
ranks of a multi-process run (train.nproc > 1, torchrun) train and score on.

Every rank walks the same sequence of global batches, the order that a one-process run's
DeviceBatchLoader draws from the same seed on the same device, and reads only its contiguous slice
of each (rows [n*r//W, n*(r+1)//W) of a batch of n rows, rank r of W). No rank copies the split:
the page cache holds what the ranks read, once per machine. In training, the epoch's last batch is
left out when it has fewer rows than ranks (a rank would get none); in scoring, such a batch leaves
some ranks an empty slice, which the sharded forward accepts.

Batches are (x, labels FloatTensor [b]) as DeviceBatchLoader's; `global_rows` is the size of the
batch last yielded, all ranks' slices together.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ..features import Features


def take_jagged_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The jagged rows `rows` of (values [nnz], offsets [N + 1]), in that order, reading only those rows
    (values and offsets may be memmaps of any size)."""
    starts = np.asarray(offsets[rows], dtype=np.int64)
    lengths = np.asarray(offsets[rows + 1], dtype=np.int64) - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    source = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(int(new_offsets[-1]))
    return np.asarray(values[source], dtype=np.int32), new_offsets


class RankSliceLoader:
    """Rank `rank` of `world`'s slices of one split's batches (see the module doc). `split` needs .ids
    (int [N, F]), .labels (float [N]) and optionally .multi_valued ({name: (values, offsets)}), e.g. a
    memory-mapped PreparedDataset split."""

    kind = "rank_slices"    # what the run log and last.dcp call it

    def __init__(self, split: Any, batch_size: int, rank: int, world: int, device: str | torch.device = "cpu",
                 shuffle: bool = False, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.ids, self.labels = split.ids, split.labels
        self.bags = dict(getattr(split, "multi_valued", None) or {})
        self.num_rows = int(len(self.labels))
        self.batch_size, self.rank, self.world, self.shuffle = batch_size, rank, world, shuffle
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)   # as DeviceBatchLoader's: the same orders
        self.generator.manual_seed(seed)
        self.global_rows = 0

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __len__(self) -> int:
        batches = -(-self.num_rows // self.batch_size)
        tail = self.num_rows % self.batch_size
        return batches - 1 if self.shuffle and 0 < tail < self.world else batches

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        n, b = self.num_rows, self.batch_size
        order = (torch.randperm(n, generator=self.generator, device=self.device).cpu().numpy()
                 if self.shuffle else None)
        for k in range(len(self)):
            start = k * b
            rows = min(b, n - start)
            lo, hi = start + rows * self.rank // self.world, start + rows * (self.rank + 1) // self.world
            index = order[lo:hi] if order is not None else np.arange(lo, hi)
            # np.array copies: the rows leave the (read-only) memmap
            rows_ids, rows_labels = ((self.ids[lo:hi], self.labels[lo:hi]) if order is None
                                     else (self.ids[index], self.labels[index]))
            x = torch.from_numpy(np.array(rows_ids, dtype=np.int64)).to(self.device)
            y = torch.from_numpy(np.array(rows_labels, dtype=np.float32)).to(self.device)
            self.global_rows = rows
            if self.bags:
                bags = {}
                for name, (values, offsets) in self.bags.items():
                    v, o = take_jagged_rows(values, offsets, index)
                    bags[name] = (torch.from_numpy(v.astype(np.int64)).to(self.device), torch.from_numpy(o).to(self.device))
                x = Features(x, bags)
            yield x, y
