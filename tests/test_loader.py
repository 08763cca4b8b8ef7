"""DeviceBatchLoader: coverage, order, reproducibility, dtypes, partial last batch."""
from types import SimpleNamespace

import numpy as np
import torch

from tf4ctr_fast.data.loader import DeviceBatchLoader


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
