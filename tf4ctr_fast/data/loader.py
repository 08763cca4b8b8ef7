"""Batches of one split, with the whole split resident on the training device.

The ids stay int32 on the device (half the memory of int64) and are widened per batch, because
embedding lookups want int64. Shuffling is one `randperm` per epoch on the device, so a training
step does no host work and no host-to-device copy.

Multi-valued fields (jagged: values + offsets) are permuted once per epoch, on the device, into the
epoch's row order; a batch is then a contiguous slice of them. The slice bounds come from one host
copy of the permuted offsets per epoch, so steps stay free of device-to-host syncs.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from ..features import Features, ModelInput, slice_bags


def _to_device(array: np.ndarray, dtype: np.dtype, device: torch.device) -> torch.Tensor:
    """Copy a (possibly read-only memmap) array to `device` without a torch non-writable warning."""
    array = np.asarray(array, dtype=dtype)
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, dtype=dtype, order="C")   # materializes a memmap in host memory once
    return torch.from_numpy(array).to(device)


def permute_jagged(values: Tensor, offsets: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """The jagged rows `order` of (values [nnz], offsets [N + 1]), in that order, on their device."""
    lengths = torch.diff(offsets)[order]
    new_offsets = torch.zeros(len(order) + 1, dtype=offsets.dtype, device=offsets.device)
    torch.cumsum(lengths, 0, out=new_offsets[1:])
    # value k of the output is value (k - new start of its row) + old start of its row
    shift = torch.repeat_interleave(offsets[:-1][order] - new_offsets[:-1], lengths, output_size=values.numel())
    return values[shift + torch.arange(values.numel(), device=values.device)], new_offsets


class DeviceBatchLoader:
    """Yields (x, y FloatTensor [b]) for one split; the last partial batch is kept. x is ids LongTensor
    [b, F], or tf4ctr_fast.features.Features(ids, bags) when the split has multi-valued fields.

    `split` needs `.ids` (int [N, F]) and `.labels` (float [N]), optionally `.multi_valued` ({name:
    (values [nnz], offsets [N + 1])}). With shuffle=False the batches follow the row order
    (evaluation); with shuffle=True every epoch draws a new permutation from a generator seeded once
    with `seed`, so the sequence of epochs is reproducible.
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
        self.bags = {name: (_to_device(values, np.int32, self.device), _to_device(offsets, np.int64, self.device))
                     for name, (values, offsets) in (getattr(split, "multi_valued", None) or {}).items()}
        for name, (values, offsets) in self.bags.items():
            if offsets.shape != (self.num_rows + 1,) or int(offsets[-1]) != values.numel():
                raise ValueError(f"multi-valued field {name!r}: offsets {tuple(offsets.shape)} do not fit "
                                 f"{self.num_rows} rows and {values.numel()} values")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    kind = "device"     # train.loader's name for it

    @property
    def num_rows(self) -> int:
        return self.ids.shape[0]

    def state_dict(self) -> dict[str, Any]:
        """Where the sequence of epochs stands (taken between epochs, it fixes the next epoch's order)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[ModelInput, torch.Tensor]]:
        n, b = self.num_rows, self.batch_size
        order = torch.randperm(n, generator=self.generator, device=self.device) if self.shuffle else None
        bags = self.bags
        if order is not None and bags:
            bags = {name: permute_jagged(values, offsets, order) for name, (values, offsets) in bags.items()}
        # host copies of the offsets: where each batch's values start and end, without a sync per step
        bounds = {name: offsets.cpu().numpy() for name, (_, offsets) in bags.items()}
        for start in range(0, n, b):
            stop = min(start + b, n)
            if order is None:
                ids, y = self.ids[start:stop], self.labels[start:stop]
            else:
                rows = order[start:stop]
                ids, y = self.ids.index_select(0, rows), self.labels.index_select(0, rows)
            if not bags:
                yield ids.long(), y
                continue
            batch_bags = slice_bags(bags, bounds, start, stop)
            yield Features(ids.long(), {n: (v.long(), o) for n, (v, o) in batch_bags.items()}), y
