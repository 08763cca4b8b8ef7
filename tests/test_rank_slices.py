"""RankSliceLoader: the ranks' slices, put together batch by batch and rank by rank, are the
one-process DeviceBatchLoader's batches of the same seed (so a sharded run trains on the same
batches), read from memory-mapped columns without copying them; bags follow their rows."""
import numpy as np
import pytest
import torch
from test_loader import make_split, with_bags

from tf4ctr_fast.data.loader import DeviceBatchLoader
from tf4ctr_fast.data.rank_slices import RankSliceLoader, take_jagged_rows
from tf4ctr_fast.features import Features


def _memmapped(split, tmp_path):
    for name in ("ids", "labels"):
        np.save(tmp_path / f"{name}.npy", getattr(split, name))
        setattr(split, name, np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    return split


def _joined(slices):
    """One batch from every rank's slice of it (in rank order)."""
    xs, ys = zip(*slices)
    if isinstance(xs[0], Features):
        bags, shift = [], 0
        for x in xs:
            values, offsets = x.bags["tags"]
            bags.append((values, offsets[1:] + shift))
            shift += len(values)
        values = torch.cat([v for v, _ in bags])
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), *[o for _, o in bags]])
        return Features(torch.cat([x.ids for x in xs]), {"tags": (values, offsets)}), torch.cat(ys)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("bags", [False, True])
def test_the_ranks_slices_make_the_one_process_batches(tmp_path, world, shuffle, bags):
    n, batch = 26, 8        # the last batch has 2 rows: fewer than 3 ranks
    split = _memmapped(make_split(n), tmp_path)
    if bags:
        split, _ = with_bags(split, seed=world)
    one = DeviceBatchLoader(split, batch, "cpu", shuffle=shuffle, seed=4)
    ranks = [RankSliceLoader(split, batch, r, world, "cpu", shuffle=shuffle, seed=4) for r in range(world)]
    assert all(r.ids is split.ids for r in ranks)      # the memmap itself: no copy of the split
    dropped = shuffle and world == 3                    # training leaves out a batch some rank has no row of
    assert len(ranks[0]) == len(one) - dropped
    for _ in range(2):      # two epochs: the same sequence of orders
        expected = list(one)
        got = []
        for slices in zip(*ranks):
            assert len({r.global_rows for r in ranks}) == 1
            got.append(_joined(slices))
            assert ranks[0].global_rows == len(got[-1][1])
        assert len(got) == len(expected) - dropped
        for (x, y), (ex, ey) in zip(got, expected):
            assert torch.equal(y, ey)
            if bags:
                assert torch.equal(x.ids, ex.ids)
                for a, b in zip(x.bags["tags"], ex.bags["tags"]):
                    assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
            else:
                assert x.dtype == torch.int64 and torch.equal(x, ex)


def test_state_dict_replays_an_epoch():
    split = make_split(30)
    loader = RankSliceLoader(split, 7, 1, 2, shuffle=True, seed=9)
    list(loader)
    state = loader.state_dict()
    first = [x[:, 0].tolist() for x, _ in loader]
    loader.load_state_dict(state)
    assert [x[:, 0].tolist() for x, _ in loader] == first


def test_take_jagged_rows_matches_a_loop():
    split, _ = with_bags(make_split(40), seed=2)
    values, offsets = split.multi_valued["tags"]
    rows = np.array([5, 0, 39, 5, 17])
    got_values, got_offsets = take_jagged_rows(values, offsets, rows)
    expected = [values[offsets[r]:offsets[r + 1]] for r in rows]
    assert got_offsets.tolist() == np.concatenate([[0], np.cumsum([len(e) for e in expected])]).tolist()
    assert got_values.tolist() == np.concatenate(expected).tolist()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        RankSliceLoader(make_split(4), 2, 2, 2)
    with pytest.raises(ValueError, match="batch_size"):
        RankSliceLoader(make_split(4), 0, 0, 2)
