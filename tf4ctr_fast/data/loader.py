"""Batches of one split, with the whole split resident on the training device.

The ids stay int32 on the device (half the memory of int64) and are widened per batch, because
embedding lookups want int64. Shuffling is one `randperm` per epoch on the device, so a training
step does no host work and no host-to-device copy.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch


def _to_device(array: np.ndarray, dtype: np.dtype, device: torch.device) -> torch.Tensor:
    """Copy a (possibly read-only memmap) array to `device` without a torch non-writable warning."""
    array = np.asarray(array, dtype=dtype)
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, dtype=dtype, order="C")   # materializes a memmap in host memory once
    return torch.from_numpy(array).to(device)


class DeviceBatchLoader:
    """Yields (ids LongTensor [b, F], y FloatTensor [b]) for one split; the last partial batch is kept.

    `split` needs `.ids` (int [N, F]) and `.labels` (float [N]). With shuffle=False the batches follow
    the row order (evaluation); with shuffle=True every epoch draws a new permutation from a generator
    seeded once with `seed`, so the sequence of epochs is reproducible.
    """

    def __init__(self, split: Any, batch_size: int, device: str | torch.device = "cpu",
                 shuffle: bool = False, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.ids = _to_device(split.ids, np.int32, self.device)
        self.labels = _to_device(split.labels, np.float32, self.device)
        if self.ids.ndim != 2 or self.labels.shape != (self.ids.shape[0],):
            raise ValueError(f"ids must be [N, F] and labels [N]; got {tuple(self.ids.shape)} "
                             f"and {tuple(self.labels.shape)}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def num_rows(self) -> int:
        return self.ids.shape[0]

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = self.num_rows, self.batch_size
        if not self.shuffle:
            for start in range(0, n, b):
                yield self.ids[start:start + b].long(), self.labels[start:start + b]
            return
        order = torch.randperm(n, generator=self.generator, device=self.device)
        for start in range(0, n, b):
            rows = order[start:start + b]
            yield self.ids.index_select(0, rows).long(), self.labels.index_select(0, rows)
