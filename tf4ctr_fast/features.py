"""A batch's model input, and the multi-valued fields a model is built with.

A dataset without multi-valued fields feeds its models plain ids [B, F] (int64, one column per
single-valued field). A dataset with some feeds `Features(ids, bags)`: the same ids plus, per
multi-valued field, one bag of ids per row as (values [nnz], offsets [B + 1]), row i's ids being
values[offsets[i]:offsets[i + 1]]. The models pool each bag (nn.EmbeddingBag in the reference
backend, a KeyedJaggedTensor key in the TorchRec one): no padding to a fixed length anywhere.

Field order, everywhere (embedding outputs, field tables, checkpoints): the single-valued fields in
schema order, then the multi-valued fields in schema order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence, Union

import torch
from torch import Tensor

from .errors import InputError

POOLINGS = ("sum", "mean")
Bags = dict[str, tuple[Tensor, Tensor]]   # field name -> (values [nnz], offsets [B + 1])


class Features(NamedTuple):
    """ids [B, F] of the single-valued fields and {name: (values [nnz], offsets [B + 1])} of the
    multi-valued ones."""

    ids: Tensor
    bags: Bags

    def rows(self, lo: int, hi: int) -> Features:
        """Rows lo..hi-1 (a contiguous slice: the bags stay views, only their offsets are rebased)."""
        return Features(self.ids[lo:hi], slice_bags(self.bags, {n: o for n, (_, o) in self.bags.items()}, lo, hi))


def slice_bags(bags: Bags, bounds: dict[str, Any], lo: int, hi: int) -> Bags:
    """Rows lo..hi-1 of every bag. bounds[name] holds the field's offsets (a host copy lets a loader
    slice device tensors without a device-to-host sync per batch)."""
    out = {}
    for name, (values, offsets) in bags.items():
        first, last = int(bounds[name][lo]), int(bounds[name][hi])
        out[name] = (values[first:last], offsets[lo:hi + 1] - first)
    return out


ModelInput = Union[Tensor, Features]


def split_input(x: ModelInput) -> tuple[Tensor, Bags]:
    """(ids, bags) of either form of model input; plain ids have no bags."""
    if isinstance(x, Features):
        return x.ids, x.bags
    return x, {}


def rows_of(x: ModelInput, lo: int, hi: int) -> ModelInput:
    return x.rows(lo, hi) if isinstance(x, Features) else x[lo:hi]


@dataclass(frozen=True)
class BagField:
    """A multi-valued field as a model sees it: its vocabulary and how its bag is pooled."""

    name: str
    vocab_size: int
    pooling: str = "sum"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InputError(f"multi-valued field {self.name!r}: pooling {self.pooling!r} is not one of "
                             f"{', '.join(POOLINGS)}")
        if self.vocab_size < 1:
            raise InputError(f"multi-valued field {self.name!r}: vocabulary size {self.vocab_size}, need >= 1")


def bag_fields_of(schema: dict[str, Any]) -> list[BagField]:
    """The multi-valued fields of a prepared schema (schema.json "multi_valued_fields")."""
    return [BagField(f["name"], int(f["vocab_size"]), f.get("pooling", "sum"))
            for f in schema.get("multi_valued_fields", [])]


def check_bags(bags: Bags, names: Sequence[str], batch: int) -> None:
    """Exactly the bags of the multi-valued fields `names`, each with offsets [batch + 1]: else an
    InputError naming the field. (Id ranges are checked where the ids are looked up.)"""
    if sorted(bags) != sorted(names):
        raise InputError(f"the model's multi-valued fields are {list(names)}, the batch has bags for "
                         f"{sorted(bags)}" + ("" if names else ": pass ids [batch, fields] only"))
    for name, (values, offsets) in bags.items():
        if offsets.dim() != 1 or offsets.numel() != batch + 1 or values.dim() != 1:
            raise InputError(f"multi-valued field {name!r}: expected values [nnz] and offsets [{batch + 1}], "
                             f"got {list(values.shape)} and {list(offsets.shape)}")
        if offsets.dtype not in (torch.int32, torch.int64) or values.dtype not in (torch.int32, torch.int64):
            raise InputError(f"multi-valued field {name!r}: values and offsets must be integer tensors")
