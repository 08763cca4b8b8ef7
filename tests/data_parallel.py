"""Shared by the sharding tests: a few SGD steps of a sharded model on each rank's slice of every batch,
and its single-process twin running the same data-parallel objective (the mean over the rank slices of
loss + batch regularizer; SGD is linear, so one fused table update per lookup equals the summed one)."""
from typing import Iterable

import torch
import torch.distributed as dist

from tf4ctr_fast.features import rows_of


def rank_slice(x, y, rank: int, world: int):
    """Rank `rank`'s contiguous slice of a batch (what the trainer gives each rank)."""
    lo, hi = rank * len(y) // world, (rank + 1) * len(y) // world
    return rows_of(x, lo, hi), y[lo:hi]


def train_sharded(dmp, batches: Iterable, rank: int, world: int, dense_lr: float) -> list[float]:
    """SGD steps on this rank's slices; returns the objective (mean over ranks) per step."""
    dense_opt = torch.optim.SGD(dmp.module.dense_parameters(), lr=dense_lr)
    losses = []
    for x, y in batches:
        dense_opt.zero_grad()
        loss = dmp(*rank_slice(x, y, rank, world))["loss"] + dmp.module.regularization()  # call dmp: DDP hooks
        loss.backward()
        dense_opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def train_single_process_twin(model, batches: Iterable, world: int, dense_lr: float) -> list[float]:
    dense_opt = torch.optim.SGD(model.dense_parameters(), lr=dense_lr)
    losses = []
    for x, y in batches:
        dense_opt.zero_grad()
        total = sum(model.loss(*rank_slice(x, y, r, world))["loss"] + model.regularization()
                    for r in range(world)) / world
        total.backward()
        dense_opt.step()
        losses.append(total.item())
    return losses


def run_on_ranks(world: int, rank_main, folder) -> dict:
    """launch(world, rank_main, path): rank_main saves rank 0's results to path; returns them."""
    from tf4ctr_fast.distributed import launch

    out = folder / "results.pt"
    launch(world, rank_main, str(out))
    return torch.load(out, weights_only=False)
