"""StreamingBatchLoader: every row once per epoch with its label and multi-valued values, full batches,
seeded chunk-and-row shuffles, the same order as DeviceBatchLoader without shuffle, thread cleanup,
errors; choose_loader's rule; a prepared multi-valued dataset as Features and as a KeyedJaggedTensor."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from tf4ctr_fast.config import DatasetConfig
from tf4ctr_fast.data.columns import load_prepared
from tf4ctr_fast.data.loader import DeviceBatchLoader
from tf4ctr_fast.data.schema_csv import prepare_schema_csv
from tf4ctr_fast.data.streaming import StreamingBatchLoader, choose_loader, split_bytes
from tf4ctr_fast.features import Features

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_split(n: int = 1003, f: int = 3, multi_valued: bool = False) -> SimpleNamespace:
    """Row r: ids (r, r + 10000, ...), label r % 2, and (multi-valued) values 100 r + k for k < r % 4."""
    ids = (np.arange(n)[:, None] + 10000 * np.arange(f)[None, :]).astype(np.int32)
    split = SimpleNamespace(ids=ids, labels=(np.arange(n) % 2).astype(np.float32), multi_valued={})
    if multi_valued:
        lengths = np.arange(n) % 4
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.concatenate([100 * r + np.arange(k) for r, k in enumerate(lengths)]).astype(np.int32)
        split.multi_valued = {"tags": (values, offsets)}
    return split


def epoch_rows(loader, check_mv: bool = False) -> list[int]:
    rows, sizes = [], []
    for x, y in loader:
        ids = x.ids if check_mv else x
        r = ids[:, 0].cpu().numpy()
        assert ids.dtype == torch.int64 and y.dtype == torch.float32
        np.testing.assert_array_equal(ids.cpu().numpy(), r[:, None] + 10000 * np.arange(ids.shape[1]))
        np.testing.assert_array_equal(y.cpu().numpy(), r % 2)
        if check_mv:
            values, offsets = x.bags["tags"]
            values, offsets = values.cpu().numpy(), offsets.cpu().numpy()
            assert offsets[0] == 0 and len(offsets) == len(r) + 1
            for i, row in enumerate(r):
                assert values[offsets[i]:offsets[i + 1]].tolist() == [100 * row + k for k in range(row % 4)]
        rows += r.tolist()
        sizes.append(len(r))
    assert all(s == loader.batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= loader.batch_size
    assert len(sizes) == len(loader)
    return rows


@pytest.mark.parametrize("device", DEVICES)
def test_every_row_once_per_epoch_in_full_batches(device):
    loader = StreamingBatchLoader(make_split(1003), batch_size=10, device=device, shuffle=True, seed=1,
                                  chunk_rows=70)
    assert loader.chunk_rows == 70
    epochs = [epoch_rows(loader) for _ in range(3)]
    for rows in epochs:
        assert sorted(rows) == list(range(1003))
    assert epochs[0] != epochs[1] != epochs[2]
    again = StreamingBatchLoader(make_split(1003), 10, device, shuffle=True, seed=1, chunk_rows=70)
    assert [epoch_rows(again) for _ in range(3)] == epochs      # seeded per (seed, epoch)
    other = StreamingBatchLoader(make_split(1003), 10, device, shuffle=True, seed=2, chunk_rows=70)
    assert epoch_rows(other) != epochs[0]


def test_shuffle_moves_chunks_and_rows_within_chunks():
    loader = StreamingBatchLoader(make_split(700), batch_size=7, shuffle=True, seed=0, chunk_rows=70)
    first_chunks = set()
    for _ in range(6):
        rows = epoch_rows(loader)
        first = rows[:70]
        assert len({r // 70 for r in first}) == 1          # a chunk's rows stay together...
        assert first != sorted(first)                       # ...in a new order
        first_chunks.add(first[0] // 70)
    assert len(first_chunks) > 1                            # and the chunk order changes


def test_without_shuffle_same_batches_as_device_loader():
    split = make_split(95)
    streamed = list(StreamingBatchLoader(split, batch_size=8, chunk_rows=16))
    resident = list(DeviceBatchLoader(split, batch_size=8))
    assert len(streamed) == len(resident) == 12
    for (a, y), (b, z) in zip(streamed, resident):
        assert torch.equal(a, b) and torch.equal(y, z)


@pytest.mark.parametrize("device", DEVICES)
def test_multi_valued_rows_follow_their_rows(device):
    loader = StreamingBatchLoader(make_split(301, multi_valued=True), batch_size=16, device=device,
                                  shuffle=True, seed=4, chunk_rows=40)
    assert sorted(epoch_rows(loader, check_mv=True)) == list(range(301))
    plain = StreamingBatchLoader(make_split(301, multi_valued=True), batch_size=16, device=device)
    assert epoch_rows(plain, check_mv=True) == list(range(301))


def _stream_threads() -> int:
    return sum(t.name == "tf4ctr-stream" and t.is_alive() for t in threading.enumerate())


def test_breaking_out_stops_the_thread_and_errors_reach_the_consumer():
    loader = StreamingBatchLoader(make_split(1000), batch_size=5, chunk_rows=10, prefetch=1)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    assert _stream_threads() == 0

    class Broken:
        shape = (100, 3)

        def __getitem__(self, key):
            raise OSError("disk gone")

    split = SimpleNamespace(ids=Broken(), labels=np.zeros(100, dtype=np.float32), multi_valued={})
    with pytest.raises(OSError, match="disk gone"):
        list(StreamingBatchLoader(split, batch_size=10))
    assert _stream_threads() == 0


def test_choose_loader_rule():
    split = make_split(100)
    assert split_bytes(split) == 100 * 3 * 4 + 100 * 4
    assert isinstance(choose_loader(split, "cpu", 10, budget_bytes=1600), DeviceBatchLoader)
    assert isinstance(choose_loader(split, "cpu", 10, budget_bytes=1599), StreamingBatchLoader)
    assert isinstance(choose_loader(split, "cpu", 10), DeviceBatchLoader)   # a few KB fit any host
    assert isinstance(choose_loader(split, "cpu", 10, kind="streaming"), StreamingBatchLoader)
    assert isinstance(choose_loader(split, "cpu", 10, budget_bytes=0, kind="device"), DeviceBatchLoader)
    jagged = make_split(100, multi_valued=True)
    values, offsets = jagged.multi_valued["tags"]
    assert split_bytes(jagged) == split_bytes(split) + 2 * (len(values) * 4 + 101 * 8)
    assert isinstance(choose_loader(jagged, "cpu", 10), DeviceBatchLoader)
    streaming = choose_loader(jagged, "cpu", 10, shuffle=True, seed=3, budget_bytes=1000, chunk_rows=20)
    assert isinstance(streaming, StreamingBatchLoader) and streaming.shuffle and streaming.chunk_rows == 20
    with pytest.raises(ValueError, match="loader kind"):
        choose_loader(split, "cpu", 10, kind="disk")


def test_prepared_multi_valued_split_to_keyed_jagged_tensor(tmp_path):
    pytest.importorskip("torchrec")
    from tf4ctr_fast.embedding.features import features_to_kjt

    (tmp_path / "train.csv").write_text("label,user,tags\n1,5,a|b\n0,6,\n1,5,b|c|a\n0,7,c\n")
    schema = {"columns": [{"name": "label", "kind": "label"},
                          {"name": "user", "kind": "categorical", "codec": "int", "min_count": 2},
                          {"name": "tags", "kind": "multi_valued", "separator": "|", "max_len": 2, "pooling": "sum"}],
              "split": {"by": "files"}}
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    cfg = DatasetConfig(format="csv", train=str(tmp_path / "train.csv"), min_count=1)
    ds = load_prepared(prepare_schema_csv(cfg, tmp_path / "out", schema=tmp_path / "schema.yaml"))
    tags = ds.multi_valued_fields[0]["vocab"]
    for kind in ("device", "streaming"):
        (x, y), (x2, _) = list(choose_loader(ds.split("train"), "cpu", batch_size=3, kind=kind))
        assert isinstance(x, Features)
        assert x.ids.tolist() == [[2], [1], [2]] and y.tolist() == [1, 0, 1]
        values, offsets = x.bags["tags"]
        assert offsets.tolist() == [0, 2, 2, 4] and values.tolist() == [tags["a"], tags["b"], tags["b"], tags["c"]]

        kjt = features_to_kjt(x.ids, ds.field_names, x.bags)
        assert kjt.keys() == ["user", "tags"] and kjt.stride() == 3
        assert kjt["user"].values().tolist() == [2, 1, 2] and kjt["user"].lengths().tolist() == [1, 1, 1]
        assert kjt["tags"].values().tolist() == values.tolist() and kjt["tags"].lengths().tolist() == [2, 0, 2]
        last = features_to_kjt(x2.ids, ds.field_names, x2.bags)
        assert last.stride() == 1 and last["tags"].values().tolist() == [tags["c"]]
        assert features_to_kjt(x.ids, ds.field_names).keys() == ["user"]
