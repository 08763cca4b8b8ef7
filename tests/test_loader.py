"""DeviceBatchLoader: coverage, order, reproducibility, dtypes, partial last batch, multi-valued bags."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tf4ctr_fast.data.loader import DeviceBatchLoader, permute_jagged


def make_split(n=23, f=3):
    # row r holds ids (r, r + 1000, ...) so a batch tells which rows it carries
    ids = (np.arange(n)[:, None] + 1000 * np.arange(f)[None, :]).astype(np.int32)
    labels = (np.arange(n) % 2).astype(np.float32)
    return SimpleNamespace(ids=ids, labels=labels, num_rows=n)


def rows_of(batches):
    return [b[0][:, 0].tolist() for b in batches]


def test_eval_order_is_row_order_and_last_partial_batch_kept():
    split = make_split(23)
    loader = DeviceBatchLoader(split, batch_size=5, device="cpu", shuffle=False)
    batches = list(loader)
    assert len(loader) == 5 == len(batches)
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    assert sum(rows_of(batches), []) == list(range(23))
    ids, y = batches[-1]
    assert ids.dtype == torch.int64 and y.dtype == torch.float32
    assert torch.equal(ids, torch.from_numpy(split.ids[20:]).long())
    assert torch.equal(y, torch.from_numpy(split.labels[20:]))


def test_shuffle_covers_every_row_once_with_labels_attached():
    split = make_split(23)
    loader = DeviceBatchLoader(split, batch_size=4, device="cpu", shuffle=True, seed=3)
    for _ in range(2):
        seen = []
        for ids, y in loader:
            r = ids[:, 0].numpy()
            assert np.array_equal(ids.numpy(), split.ids[r].astype(np.int64))
            assert np.array_equal(y.numpy(), split.labels[r])
            seen += r.tolist()
        assert sorted(seen) == list(range(23))


def test_shuffle_reproducible_per_seed_and_new_each_epoch():
    split = make_split(40)
    a = DeviceBatchLoader(split, 8, "cpu", shuffle=True, seed=11)
    b = DeviceBatchLoader(split, 8, "cpu", shuffle=True, seed=11)
    a1, a2 = sum(rows_of(a), []), sum(rows_of(a), [])
    b1, b2 = sum(rows_of(b), []), sum(rows_of(b), [])
    assert (a1, a2) == (b1, b2)
    assert a1 != a2 and a1 != list(range(40))
    c1 = sum(rows_of(DeviceBatchLoader(split, 8, "cpu", shuffle=True, seed=12)), [])
    assert c1 != a1


def test_ids_stored_int32_on_device_and_readonly_memmap_accepted(tmp_path):
    split = make_split(10)
    path = tmp_path / "ids.npy"
    np.save(path, split.ids)
    split.ids = np.load(path, mmap_mode="r")
    loader = DeviceBatchLoader(split, 4, "cpu")
    assert loader.ids.dtype == torch.int32
    assert sum(rows_of(loader), []) == list(range(10))


def with_bags(split, seed=0):
    """Adds a multi-valued field 'tags': row r holds 7 r + k for k < its random length 0..5."""
    lengths = np.random.default_rng(seed).integers(0, 6, split.ids.shape[0])
    split.multi_valued = {"tags": (np.concatenate([7 * r + np.arange(k) for r, k in enumerate(lengths)]).astype(np.int32),
                                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))}
    return split, lengths


def test_multi_valued_bags_follow_their_rows_in_every_order():
    split, lengths = with_bags(make_split(53))
    for shuffle in (False, True):
        loader = DeviceBatchLoader(split, 8, "cpu", shuffle=shuffle, seed=5)
        for _ in range(2):
            seen = []
            for x, y in loader:
                r = x.ids[:, 0].numpy()
                values, offsets = x.bags["tags"]
                assert values.dtype == offsets.dtype == torch.int64 and offsets[0] == 0
                assert np.array_equal(y.numpy(), split.labels[r])
                for i, row in enumerate(r):
                    assert values[offsets[i]:offsets[i + 1]].tolist() == [7 * row + k for k in range(lengths[row])]
                seen += r.tolist()
            assert sorted(seen) == list(range(53)) and (seen == list(range(53))) == (not shuffle)


def test_permute_jagged_matches_a_loop():
    split, _ = with_bags(make_split(40), seed=1)
    values, offsets = (torch.from_numpy(a) for a in split.multi_valued["tags"])
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    got_values, got_offsets = permute_jagged(values, offsets, order)
    expected = [values[offsets[r]:offsets[r + 1]] for r in order.tolist()]
    assert torch.equal(got_values, torch.cat(expected))
    assert torch.equal(torch.diff(got_offsets), torch.tensor([len(e) for e in expected]))


def test_inconsistent_offsets_are_refused():
    split, _ = with_bags(make_split(10))
    values, offsets = split.multi_valued["tags"]
    split.multi_valued["tags"] = (values[:-1], offsets)
    with pytest.raises(ValueError, match="'tags'"):
        DeviceBatchLoader(split, 4, "cpu")
