"""Input side of the fused field tables: ids or Features -> bags grouped by field (the fused lookup's layout) or
a KeyedJaggedTensor, bounds checks, padding, and the extra bags that carry the batch regularizer
through the fused lookup.

Layout everywhere here (`FieldBags` and every KJT): one key per field (in schema order), `stride` bags
per key, values grouped by key. Padding (id 0) is dropped rather than looked up: an empty bag pools to
zero and receives no gradient, which is exactly what the reference's `nn.Embedding(padding_idx=0)`
does, while FBGEMM would otherwise read and update row 0.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ..errors import InputError

PADDING_ID = 0


class FieldBags(NamedTuple):
    """A batch as the fused lookup reads it: values [N] holds field 0's bags, then field 1's, ... (each
    field's bags in batch order); lengths [F, stride] is the size of every bag."""

    values: Tensor
    lengths: Tensor


def _kjt(keys: Sequence[str], values: Tensor, lengths: Tensor, stride: int) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths.to(torch.int32), stride=stride)


def field_bags_to_kjt(bags: FieldBags, keys: Sequence[str]) -> KeyedJaggedTensor:
    return _kjt(keys, bags.values, bags.lengths.reshape(-1), stride=bags.lengths.shape[1])


def kjt_to_field_bags(kjt: KeyedJaggedTensor) -> FieldBags:
    return FieldBags(kjt.values(), kjt.lengths().view(len(kjt.keys()), kjt.stride()))


def _check_ids_layout(ids: Tensor, field_names: Sequence[str]) -> None:
    if ids.dim() != 2 or ids.shape[1] != len(field_names):
        raise InputError(f"ids must be [batch, {len(field_names)}] (one column per field), got {list(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise InputError(f"ids must be an integer tensor, got {ids.dtype}")


def check_ids(ids: Tensor, field_names: Sequence[str], bounds: Tensor) -> None:
    """Raise InputError naming the field and id if any id of ids [B, F] is outside [0, vocab_size).

    One vectorized compare over the batch; the slow path that finds the culprit only runs on failure.
    FBGEMM clamps out-of-range ids to a valid row, so without this a bad id would train the wrong row.
    """
    _check_ids_layout(ids, field_names)
    bad = (ids < 0) | (ids >= bounds)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InputError(f"field {field_names[col]!r}: id {int(ids[row, col])} (batch row {row}) is outside "
                         f"[0, {int(bounds[col])}), the field's vocabulary")


def _no_padding_all_in_range(by_field: Tensor, bounds: Tensor) -> bool:
    """True if every id of by_field [F, B] is in [1, vocab_size): one reduction pass (each field's min
    and max) settles both the bounds check and whether there is padding to drop."""
    if by_field.shape[1] == 0:
        return False
    low, high = by_field.aminmax(dim=1)
    return bool(((low > PADDING_ID) & (high < bounds)).all())


def ids_to_field_bags(ids: Tensor, field_names: Sequence[str], bounds: Tensor) -> FieldBags:
    """Checked single-valued ids [B, F] -> one bag per (field, row), empty where the id is padding.
    InputError (from check_ids) if an id is out of range."""
    _check_ids_layout(ids, field_names)
    by_field = ids.t().contiguous()     # the values' layout; the checks below then read it from cache
    if _no_padding_all_in_range(by_field, bounds):
        # The common case: every bag holds exactly its id, no mask to build or apply.
        return FieldBags(by_field.view(-1), torch.ones(by_field.shape, dtype=torch.int32, device=ids.device))
    check_ids(ids, field_names, bounds)
    return _single_id_bags(by_field)


def _single_id_bags(by_field: Tensor) -> FieldBags:
    """ids by_field [F, B] -> one bag per id, empty for padding."""
    present = by_field != PADDING_ID
    return FieldBags(by_field.masked_select(present), present.to(torch.int32))


def check_kjt(kjt: KeyedJaggedTensor, field_names: Sequence[str], bounds: Tensor) -> KeyedJaggedTensor:
    """Validate a user KJT (keys, weights, lengths, id range) and return it with keys in field order."""
    keys = kjt.keys()
    if sorted(keys) != sorted(field_names):
        raise InputError(f"KeyedJaggedTensor keys {keys} do not match the tables' fields {list(field_names)}")
    if kjt.weights_or_none() is not None:
        raise InputError("weighted KeyedJaggedTensors are not supported by the fused field tables (pooling is sum/mean)")
    if kjt.variable_stride_per_key():
        raise InputError("variable-batch KeyedJaggedTensors are not supported by the fused field tables "
                         "(one stride for all keys)")
    # The fused lookup trusts the offsets built from these lengths (FBGEMM's own check is off there).
    lengths, num_values = kjt.lengths(), kjt.values().numel()
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.sum()) != num_values):
        raise InputError(f"KeyedJaggedTensor lengths must be >= 0 and sum to its number of values ({num_values})")
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
    return field_bags_to_kjt(_single_id_bags(ids.t()), field_names)


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


def row_offsets_for(vocab_sizes: Sequence[int], device: Optional[torch.device] = None) -> Tensor:
    """[F + 1] exclusive cumulative vocabulary sizes (the global row numbering of
    append_unique_rows), int32 when every global row fits: int32 sorts and scatters faster."""
    dtype = torch.int32 if sum(vocab_sizes) < 2**31 else torch.int64
    return torch.tensor([0] + list(vocab_sizes), dtype=torch.int64, device=device).cumsum(0).to(dtype)


# Distinct rows by a "seen" mask over the whole global row space (O(rows)) when it is at most this many
# times the batch's ids, else by sorting the ids (O(n log n)); measured break-even on CPU: about 5.
SEEN_MASK_MAX_ROWS_PER_ID = 4


def sorted_distinct_rows(rows: Tensor, num_rows: int) -> Tensor:
    """torch.unique(rows) (sorted) for rows in [0, num_rows), in rows' dtype."""
    if num_rows > SEEN_MASK_MAX_ROWS_PER_ID * rows.numel():
        return torch.unique(rows)
    seen = torch.zeros(num_rows, dtype=torch.bool, device=rows.device)
    seen[rows] = True
    return seen.nonzero().view(-1).to(rows.dtype)


def append_unique_rows(bags: FieldBags, row_offsets: Tensor) -> FieldBags:
    """Append, after the batch's bags, one single-id bag per distinct (field, id) the batch looks up.

    The pooled output of those extra bags is exactly the looked-up rows, once each, so
    (lambda/2) * ||extra output||^2 is the batch regularizer of REFERENCE.md "Our decisions" 3, and its
    gradient (lambda * row) reaches each row in the same fused update as the loss gradient, whatever
    the optimizer. row_offsets [F + 1]: exclusive cumulative vocabulary sizes (global row numbering);
    the work and the returned values are in its dtype (int32 from row_offsets_for where rows fit).
    The extra part has R = max distinct ids of one field bags per key; shorter keys get empty bags.
    """
    values, lengths = bags
    num_fields = lengths.shape[0]
    values = values.to(row_offsets.dtype)
    length_per_key = lengths.sum(1)
    field_start = torch.repeat_interleave(row_offsets[:-1], length_per_key, output_size=values.numel())
    unique_rows = sorted_distinct_rows(values + field_start, int(row_offsets[-1]))   # grouped by field
    field_of_row = torch.bucketize(unique_rows, row_offsets[1:], right=True)
    counts = torch.bincount(field_of_row, minlength=num_fields)
    ids_per_key, rows_per_key = torch.stack([length_per_key, counts]).tolist()      # one host sync

    # Interleave per field: [batch values of field f, distinct ids of field f].
    unique_ids = unique_rows - row_offsets[field_of_row]
    pieces = zip(values.split(ids_per_key), unique_ids.split(rows_per_key))
    out = torch.cat([part for field_parts in pieces for part in field_parts])
    extra_lengths = torch.arange(max(rows_per_key, default=0), device=values.device) < counts[:, None]   # [F, R]
    return FieldBags(out, torch.cat([lengths, extra_lengths.to(lengths.dtype)], 1))

