"""Multi-process training of any model on the torchrec backend: DistributedModelParallel shards its
field tables (TorchRec planner, fused FBGEMM TBE per shard), DDP replicates the rest.

Per rank:
    rank, world, device = init_distributed()
    torch.manual_seed(seed)                     # the same seed everywhere: every rank builds the same init
    model = build_model(cfg, vocab_sizes, fused=False, ...)     # cfg.backend == "torchrec"
    dmp = shard_model(model, "table_wise")
    dense_opt = torch.optim.Adam(dmp.module.dense_parameters())      # gradients averaged by DDP
    loss = dmp(ids, y)["loss"] + dmp.module.regularization()    # call the wrapper: DDP hooks its forward
    loss.backward(); dense_opt.step()
    dmp.fused_optimizer                         # the tables' KeyedOptimizer (lr changes)
Launch N local ranks with `launch(nproc, fn, *args)` (what `tf4ctr-fast train --nproc N` calls).

Objective under data parallelism: the mean over ranks of each rank's loss (mean over its batch) plus
its batch regularizer (the rows that rank looked up). DDP averages the dense gradients; TorchRec's
pooled all-to-all divides the tables' gradients by the world size (comm_ops.GRADIENT_DIVISION, on by
default), so they get the same average.

Sharding on CPU (gloo): table_wise and column_wise. row_wise needs CUDA.
Checkpoints: training writes sharded ones (train/checkpoint.py save_sharded: no rank holds a whole
table). `unsharded_state_dict` gathers a sharded model into the keys and shapes of the unsharded
model on one rank, and `load_unsharded_state_dict` loads such a state dict into a sharded model:
tools for tests and small tables (shard_model uses the latter to keep the initial weights).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from .embedding import FusedFieldTables
from .errors import InputError

SHARDINGS = ("table_wise", "column_wise", "row_wise")
_FUSED_KERNEL = "fused"


def init_distributed(backend: Optional[str] = None, device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group described by the torchrun-style environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT). gloo on CPU, nccl on CUDA. device: "auto" (the GPU
    LOCAL_RANK when CUDA is available, else the CPU), "cuda" or "cpu" (CPU ranks even on a GPU
    machine). Returns (rank, world, device)."""
    wants_cuda = torch.cuda.is_available() if device == "auto" else torch.device(device).type == "cuda"
    if wants_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return dist.get_rank(), dist.get_world_size(), device


def shard_model(model: nn.Module, sharding: str = "table_wise", device: Optional[torch.device] = None,
                pg: Optional[dist.ProcessGroup] = None) -> DistributedModelParallel:
    """Shard the model's TorchRec field tables (FusedFieldTables built with fused=False) across the
    process group, fusing their optimizer into the sharded kernels; DDP replicates the rest. The tables
    keep the weights they had before sharding."""
    if sharding not in SHARDINGS:
        raise InputError(f"sharding {sharding!r} is unknown (known: {', '.join(SHARDINGS)})")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if sharding == "row_wise" and device.type != "cuda":
        raise InputError("row_wise sharding needs CUDA; on CPU (gloo) use table_wise or column_wise")
    tables = {name: m for name, m in model.named_modules() if isinstance(m, FusedFieldTables)}
    if len(tables) != 1 or not all(isinstance(t.ebc, EmbeddingBagCollection) for t in tables.values()):
        raise InputError("shard_model needs a model with one set of TorchRec field tables, built with "
                         "fused=False (models.build_model(..., fused=False) on model.backend torchrec)")
    (prefix, tables), = tables.items()
    pg = pg or dist.GroupMember.WORLD
    world = dist.get_world_size(pg)

    # DistributedModelParallel re-initialises sharded tables, so their weights are put back below.
    start = {f"{prefix}.{k}": v.detach().clone() for k, v in tables.state_dict().items()}
    optimizer, kwargs = tables.cfg.fused_optimizer(device)
    apply_optimizer_in_backward(optimizer, tables.ebc.parameters(), kwargs)
    kind = getattr(ShardingType, sharding.upper()).value
    # min_partition 4 lets column_wise split even d/2 = 8 tables (FBGEMM's row granule is 4 floats).
    constraints = {t.name: ParameterConstraints(sharding_types=[kind], compute_kernels=[_FUSED_KERNEL],
                                                min_partition=4 if sharding == "column_wise" else None)
                   for t in tables.cfg.table_configs()}
    # the real ranks per host (torchrun's LOCAL_WORLD_SIZE; --nproc sets it too): TorchRec's default is 8
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=device.type,
                                                         local_world_size=local_world),
                                       constraints=constraints)
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(model, sharders, pg)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders, env=None)
    load_unsharded_state_dict(dmp, start, strict=False)
    return dmp


def unsharded_state_dict(model: nn.Module, dst: int = 0) -> Optional[dict[str, Tensor]]:
    """A collective (every rank calls it): the full state dict, keys and shapes as in the unsharded
    model, on rank `dst`; None on the other ranks."""
    rank = dist.get_rank()
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if rank == dst else None
            value.gather(dst=dst, out=full)
            out[key] = full
        else:
            out[key] = value.detach().cpu().clone()
    return out if rank == dst else None


def load_unsharded_state_dict(model: nn.Module, state: dict[str, Tensor], strict: bool = True) -> None:
    """Copy a full (unsharded) state dict into a sharded model: each rank takes its shards' slices.
    Only the keys in `state` are loaded unless strict, which requires exactly the model's keys."""
    current = model.state_dict()
    if strict and set(state) != set(current):
        missing, extra = sorted(set(current) - set(state)), sorted(set(state) - set(current))
        raise InputError(f"state dict does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for key, full in state.items():
            if key not in current:
                raise InputError(f"state dict key {key!r} is not in the model")
            target = current[key]
            if isinstance(target, ShardedTensor):
                if tuple(full.shape) != tuple(target.size()):
                    raise InputError(f"state dict key {key!r}: shape {list(full.shape)}, "
                                     f"model has {list(target.size())}")
                for shard in target.local_shards():
                    rows, cols = shard.metadata.shard_offsets
                    n_rows, n_cols = shard.metadata.shard_sizes
                    shard.tensor.copy_(full[rows:rows + n_rows, cols:cols + n_cols])
            else:
                target.copy_(full)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(local_rank: int, nproc: int, port: int, threads: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    torch.set_num_threads(threads)
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) in `nproc` local processes, torchrun-style: each sees RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR/PORT and calls init_distributed() itself. fn must be importable (spawn).
    The CPU threads are split between the ranks. Raises if any rank fails."""
    if nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {nproc}")
    threads = max(1, torch.get_num_threads() // nproc)
    mp.start_processes(_rank_main, args=(nproc, _free_port(), threads, fn, args), nprocs=nproc,
                       join=True, start_method="spawn")
