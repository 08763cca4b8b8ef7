"""A run launched by torchrun (one process per rank, on one machine or many): how `train` recognises
it, and the steps that rank 0 does alone while the other ranks wait for its outcome.

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \
        -m tf4ctr_fast train --config C model.backend=torchrec

`--nproc N` (tf4ctr_fast.distributed.launch) is the one-machine shortcut that starts the ranks itself;
under torchrun the ranks exist already, so `train` joins their process group instead (docs/distributed.md).
No torchrec import here: every `train` asks `launched()`.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional, TypeVar

from .errors import InputError

T = TypeVar("T")


class Launch(NamedTuple):
    rank: int
    world_size: int
    local_world_size: int


def launched() -> Optional[Launch]:
    """The torchrun launch this process belongs to, when it belongs to one with more than one rank.
    torchrun's elastic agent sets TORCHELASTIC_RUN_ID for its workers; `--nproc`'s own ranks do not
    have it (they never call `train`)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env or int(env.get("WORLD_SIZE", "1")) <= 1:
        return None
    world = int(env["WORLD_SIZE"])
    return Launch(int(env["RANK"]), world, int(env.get("LOCAL_WORLD_SIZE", world)))


def rank0_first(fn: Callable[[], T]) -> T:
    """Run fn on rank 0 only (a prepare, the run-folder checks) while the others wait, and give every
    rank its (picklable) value. Bad input on rank 0 is raised as the same InputError on every rank, so
    every rank stops with its message instead of waiting forever for a rank that left."""
    import torch.distributed as dist

    outcome: list = [None, None]        # [error message, value]
    if dist.get_rank() == 0:
        try:
            outcome[1] = fn()
        except InputError as e:
            outcome[0] = str(e)
        except BaseException as e:      # any other failure stops the other ranks too, then raises here
            dist.broadcast_object_list([f"rank 0 failed: {type(e).__name__}: {e}", None], src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise InputError(outcome[0])
    return outcome[1]
