"""Input side of the SER tables: ids or Features -> KeyedJaggedTensor, bounds checks, padding, and
the extra bags that carry the batch regularizer through the fused lookup.

Layout of every KJT here: one key per field (in schema order), `stride` bags per key, values grouped
by key. Padding (id 0) is dropped rather than looked up: an empty bag pools to zero and receives no
gradient, which is exactly what the reference's `nn.Embedding(padding_idx=0)` does, while FBGEMM would
otherwise read and update row 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ..errors import InputError

PADDING_ID = 0


def _kjt(keys: Sequence[str], values: Tensor, lengths: Tensor, stride: int) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths.to(torch.int32), stride=stride)


def check_ids(ids: Tensor, field_names: Sequence[str], bounds: Tensor) -> None:
    """Raise InputError naming the field and id if any id of ids [B, F] is outside [0, vocab_size).

    One vectorized compare over the batch; the slow path that finds the culprit only runs on failure.
    FBGEMM clamps out-of-range ids to a valid row, so without this a bad id would train the wrong row.
    """
    if ids.dim() != 2 or ids.shape[1] != len(field_names):
        raise InputError(f"ids must be [batch, {len(field_names)}] (one column per field), got {list(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise InputError(f"ids must be an integer tensor, got {ids.dtype}")
    bad = (ids < 0) | (ids >= bounds)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InputError(f"field {field_names[col]!r}: id {int(ids[row, col])} (batch row {row}) is outside "
                         f"[0, {int(bounds[col])}), the field's vocabulary")


def check_kjt(kjt: KeyedJaggedTensor, field_names: Sequence[str], bounds: Tensor) -> KeyedJaggedTensor:
    """Validate a user KJT (keys, weights, id range) and return it with keys in field order."""
    keys = kjt.keys()
    if sorted(keys) != sorted(field_names):
        raise InputError(f"KeyedJaggedTensor keys {keys} do not match the SER fields {list(field_names)}")
    if kjt.weights_or_none() is not None:
        raise InputError("weighted KeyedJaggedTensors are not supported by the SER tables (pooling is sum/mean)")
    if list(keys) != list(field_names):
        kjt = kjt.permute([keys.index(name) for name in field_names])
    values = kjt.values()
    per_value_bound = torch.repeat_interleave(bounds, torch.tensor(kjt.length_per_key(), device=bounds.device))
    bad = (values < 0) | (values >= per_value_bound)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        field = int(torch.searchsorted(torch.tensor(kjt.offset_per_key()[1:]), i, right=True))
        raise InputError(f"field {field_names[field]!r}: id {int(values[i])} is outside "
                         f"[0, {int(bounds[field])}), the field's vocabulary")
    return kjt


def ids_to_kjt(ids: Tensor, field_names: Sequence[str]) -> KeyedJaggedTensor:
    """Single-valued fields: ids [B, F] -> KJT with one key per field, padding (0) as empty bags."""
    by_field = ids.t()
    present = by_field != PADDING_ID
    return _kjt(field_names, by_field[present], present.reshape(-1), stride=ids.shape[0])


def features_to_kjt(ids: Tensor, field_names: Sequence[str],
                    bags: Optional[dict[str, tuple[Tensor, Tensor]]] = None) -> KeyedJaggedTensor:
    """A batch (tf4ctr_fast.features) as one KJT: a key per single-valued field (ids [B, F], padding as
    an empty bag), then a key per multi-valued field, its bags as they are (values, offsets [B + 1])."""
    single = ids_to_kjt(ids, field_names)
    if not bags:
        return single
    names = list(bags)
    values = torch.cat([bags[n][0] for n in names]).to(single.values().dtype)
    lengths = torch.cat([torch.diff(bags[n][1]) for n in names])
    return KeyedJaggedTensor.concat([single, _kjt(names, values, lengths, stride=ids.shape[0])])


def drop_padding(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """The same KJT without padding ids (a no-op copy-free return when there are none)."""
    values = kjt.values()
    present = values != PADDING_ID
    if bool(present.all()):
        return kjt
    lengths = kjt.lengths()
    bag_of_value = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths.long())
    new_lengths = torch.bincount(bag_of_value[present], minlength=lengths.numel())
    return _kjt(kjt.keys(), values[present], new_lengths, stride=kjt.stride())


def append_unique_row_bags(kjt: KeyedJaggedTensor, row_offsets: Tensor) -> KeyedJaggedTensor:
    """Append, after the batch's bags, one single-id bag per distinct (field, id) the batch looks up.

    The pooled output of those extra bags is exactly the looked-up rows, once each, so
    (lambda/2) * ||extra output||^2 is the batch regularizer of REFERENCE.md "Our decisions" 3, and its
    gradient (lambda * row) reaches each row in the same fused update as the loss gradient, whatever
    the optimizer. row_offsets [F + 1]: exclusive cumulative vocabulary sizes (global row numbering).
    The extra part has R = max distinct ids of one field bags per key; shorter keys get empty bags.
    """
    keys = kjt.keys()
    num_fields, batch = len(keys), kjt.stride()
    device = kjt.values().device
    values = kjt.values().long()
    length_per_key = torch.tensor(kjt.length_per_key(), device=device)
    field_of_value = torch.repeat_interleave(torch.arange(num_fields, device=device), length_per_key)
    unique_rows = torch.unique(values + row_offsets[field_of_value])       # sorted: grouped by field
    field_of_row = torch.bucketize(unique_rows, row_offsets[1:], right=True)
    counts = torch.bincount(field_of_row, minlength=num_fields)
    extra = int(counts.max()) if unique_rows.numel() else 0

    extra_lengths = torch.arange(extra, device=device) < counts[:, None]       # [F, R]
    lengths = torch.cat([kjt.lengths().view(num_fields, batch), extra_lengths.to(kjt.lengths().dtype)], 1)
    # Interleave per field: [batch values of field f, distinct ids of field f].
    counts_before = torch.cumsum(counts, 0) - counts
    main_through = torch.cumsum(length_per_key, 0)
    out = torch.empty(values.numel() + unique_rows.numel(), dtype=values.dtype, device=device)
    out[torch.arange(values.numel(), device=device) + counts_before[field_of_value]] = values
    out[torch.arange(unique_rows.numel(), device=device) + main_through[field_of_row]] = (
        unique_rows - row_offsets[field_of_row])
    return _kjt(keys, out, lengths.reshape(-1), stride=batch + extra)
