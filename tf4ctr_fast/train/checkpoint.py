"""Model checkpoints: weights plus the config and schema needed to rebuild and use the model.

The payload holds only tensors and plain Python values, so it loads with `weights_only=True`
(no arbitrary unpickling). The schema travels with the weights because `predict` needs its
vocabularies to map raw values to ids. A model with fused embedding tables (model.backend "torchrec")
also saves its sparse optimizer's state ("sparse_optimizer_state": the row-wise Adagrad accumulators
live there, not in the model's state dict).

A multi-process run (train.nproc > 1, or torchrun) writes sharded checkpoints instead: a folder
(best.dcp, last.dcp) of torch.distributed.checkpoint files in which every rank writes its own table
shards and their sparse optimizer state, the dense weights are written once, and rank 0 adds
META_NAME: the payload above without "model_state" ("sharded": True), plus, in last.dcp, the training
state. Each rank also writes its random number generators (rank<r>.pt) where the trainer asks for
them. No rank ever holds a whole table. Such a folder loads onto any number of ranks (DCP reshards;
load_sharded) and, whole, into one process (read_checkpoint, load_checkpoint and restore_weights take
it like a file: evaluate, predict, export; `tf4ctr-fast consolidate` writes the equivalent best.pt).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..config import RunConfig
from ..errors import InputError, torch_load_reason
from ..features import BagField, bag_fields_of
from ..io_utils import atomic_dir, atomic_file
from ..models import build_model
from .runlog import to_jsonable

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "model_state", "config", "schema", "epoch", "metrics")
META_NAME = "meta.pt"           # a sharded checkpoint's rank-0 payload


def _build_model(cfg: RunConfig, field_names: Sequence[str], vocab_sizes: Sequence[int],
                 device: Optional[torch.device] = None, fused: bool = True,
                 bag_fields: Sequence[BagField] = ()) -> nn.Module:
    """The one place a run's model is built from its config: training, checkpoint loading, each rank.
    field_names / vocab_sizes: the single-valued fields; bag_fields: the multi-valued ones
    (features.bag_fields_of(schema)).

    fused=False gives the torchrec backend plain (unfused) tables: what distributed.shard_model shards
    and fuses, and what inference uses (it needs no optimizer, so a checkpoint of any sparse optimizer
    loads on any device). The reference backend ignores it. The model itself: models.build_model.
    """
    tc = cfg.train
    optimizer, lr = tc.sparse_optimizer, tc.sparse_lr
    if cfg.model.backend == "torchrec" and (optimizer == "auto" or lr is None):
        # a config that did not pass through train() (which logs the resolved pair): one process here
        from ..embedding.fused_tables import resolve_sparse

        optimizer, lr = resolve_sparse(optimizer, lr, tc.lr, device or torch.device("cpu"), sharded=False)
    return build_model(cfg.model, list(vocab_sizes), bag_fields, field_names=list(field_names),
                       sparse_optimizer=optimizer, sparse_lr=lr if lr is not None else tc.lr,
                       sparse_eps=tc.sparse_eps, device=device, fused=fused)


def sparse_optimizer_of(model: nn.Module) -> Optional[Any]:
    """The torchrec KeyedOptimizer of the model's fused tables; None for models without any."""
    getter = getattr(model, "sparse_optimizer", None)
    return getter() if getter is not None else None


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: RunConfig, schema: dict,
                    epoch: int, metrics: dict, extra: Optional[dict[str, Any]] = None) -> None:
    """Write the checkpoint atomically: a crash mid-write leaves no file at `path`. `extra`: more
    entries (tensors and plain values), e.g. the training state of a resumable checkpoint."""
    payload = {**_to_cpu(extra or {}),
        "format_version": FORMAT_VERSION,
        "model_state": _to_cpu(model.state_dict()),
        "config": cfg.to_dict(),
        "schema": schema,
        "epoch": int(epoch),
        "metrics": to_jsonable(metrics),
    }
    sparse = sparse_optimizer_of(model)
    if sparse is not None:
        payload["sparse_optimizer_state"] = _to_cpu(sparse.state_dict())
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload; a missing, truncated or foreign file raises InputError naming the path. For a
    sharded checkpoint folder: its META_NAME payload (no "model_state")."""
    path = Path(path)
    sharded = path.is_dir()
    file = path / META_NAME if sharded else path
    if not file.is_file():
        raise InputError(f"{file}: checkpoint not found" if not sharded else
                         f"{path}: not a sharded checkpoint (no {META_NAME})")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise InputError(f"{file}: not a readable checkpoint ({torch_load_reason(e)})") from None
    required = [k for k in _REQUIRED_KEYS if not (sharded and k == "model_state")]
    if not isinstance(payload, dict) or any(k not in payload for k in required) or \
            sharded != bool(payload.get("sharded")):
        raise InputError(f"{path}: not a tf4ctr_fast checkpoint (missing keys)")
    if payload["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {payload['format_version']} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    return payload


def _load_state(path: str | os.PathLike, model: nn.Module, payload: dict[str, Any]) -> None:
    """The weights, and the sparse optimizer's state when both the payload and the model have one
    (inference models and sharded checkpoints loaded into one process have none)."""
    if payload.get("sharded"):
        _load_whole(Path(path), model)
        return
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit this model ({e})") from None
    sparse = sparse_optimizer_of(model)
    if sparse is not None and "sparse_optimizer_state" in payload:
        try:
            sparse.load_state_dict(payload["sparse_optimizer_state"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise InputError(f"{path}: sparse optimizer state does not fit this model's "
                             f"train.sparse_optimizer ({e})") from None


def restore_weights(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the checkpoint's weights (and sparse optimizer state) into an existing model; returns the payload."""
    payload = read_checkpoint(path)
    _load_state(path, model, payload)
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, RunConfig, dict]:
    """Rebuild the model for inference from the saved config and schema; returns (model in eval mode,
    cfg, schema). The torchrec backend comes back with unfused tables (same weights, same predictions,
    no optimizer), whichever sparse optimizer or number of processes trained it."""
    payload = read_checkpoint(path)
    try:
        cfg = RunConfig.from_dict(payload["config"])
    except InputError as e:
        raise InputError(f"{path}: saved config: {e}") from None
    schema = payload["schema"]
    fields = schema["fields"]
    model = _build_model(cfg, [f["name"] for f in fields], [int(f["vocab_size"]) for f in fields],
                         torch.device(device), fused=False, bag_fields=bag_fields_of(schema))
    _load_state(path, model, payload)
    model.eval()
    return model, cfg, schema


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, a sharded checkpoint folder, or a run folder holding best.pt or best.dcp."""
    p = Path(path)
    if p.is_dir() and not (p / META_NAME).is_file():
        p = p / "best.pt" if (p / "best.pt").is_file() or not (p / "best.dcp").is_dir() else p / "best.dcp"
    if not (p.is_file() or (p / META_NAME).is_file()):
        raise InputError(f"{p}: checkpoint not found")
    return p


# -- sharded checkpoints (multi-process runs) ------------------------------------------------------

def written_by_a_run(path: Path) -> bool:
    """Whether `path` is a sharded checkpoint folder that a run wrote (and so may replace or remove):
    a real folder, not a link, holding META_NAME."""
    return not path.is_symlink() and (path / META_NAME).is_file()


def _replaceable(path: Path) -> None:
    """atomic_dir's check: a sharded checkpoint folder is replaced only by another one."""
    if not written_by_a_run(path):
        raise InputError(f"{path}: exists but is not a sharded checkpoint a run wrote; move it away")


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.pt"


def _dcp_state(model: nn.Module, sparse: Optional[Any]) -> dict[str, Any]:
    state = {"model": model.state_dict()}
    if sparse is not None:
        state["sparse_optimizer"] = sparse.state_dict()
    return state


def save_sharded(path: str | os.PathLike, model: nn.Module, sparse: Optional[Any], cfg: RunConfig,
                 schema: dict, epoch: int, metrics: dict, extra: Optional[dict[str, Any]] = None,
                 rank_state: Optional[dict[str, Any]] = None) -> None:
    """A collective (every rank calls it): the sharded model (distributed.shard_model) and its fused
    optimizer `sparse` into the folder `path`, atomically (a crash mid-write leaves the previous folder
    or none). `extra`: rank 0's training state for META_NAME; `rank_state`: this rank's own (rank<r>.pt).
    Replicated tensors (the dense part) must be equal on every rank: DCP writes one rank's copy."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from ..torchrun import rank0_first

    rank = dist.get_rank()
    with contextlib.ExitStack() as stack:
        # rank 0 makes the scratch folder beside `path` (a shared file system: every rank writes there)
        tmp = Path(rank0_first(lambda: str(stack.enter_context(atomic_dir(path, _replaceable)))))
        dcp.save(_dcp_state(model, sparse), checkpoint_id=tmp)
        if rank_state is not None:
            torch.save(_to_cpu(rank_state), _rank_file(tmp, rank))
        if rank == 0:
            torch.save({**_to_cpu(extra or {}), "format_version": FORMAT_VERSION, "sharded": True,
                        "world_size": dist.get_world_size(), "config": cfg.to_dict(), "schema": schema,
                        "epoch": int(epoch), "metrics": to_jsonable(metrics)}, tmp / META_NAME)
        dist.barrier()          # every rank's files are there: rank 0 moves the folder into place
    dist.barrier()


def load_sharded(path: str | os.PathLike, model: nn.Module, sparse: Optional[Any]) -> dict[str, Any]:
    """A collective: the folder's weights (and, with `sparse`, the fused optimizer's state) into the
    sharded model, on any number of ranks. Returns META_NAME's payload with "rng": this rank's
    saved generators (None where the folder has none for this rank: it was written by fewer ranks)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    payload = read_checkpoint(path)
    state = _dcp_state(model, sparse)
    try:
        dcp.load(state, checkpoint_id=path)
    except Exception as e:      # DCP wraps every rank's failure in one CheckpointException
        raise InputError(f"{path}: does not fit this run's sharded model (a column_wise run's sparse "
                         f"optimizer state loads only onto as many ranks as wrote it): "
                         f"{str(e).strip().splitlines()[-1][:300]}") from None
    model.load_state_dict(state["model"])
    if sparse is not None:
        sparse.load_state_dict(state["sparse_optimizer"])
    own = _rank_file(path, dist.get_rank())
    payload["rng"] = torch.load(own, weights_only=True).get("rng") if own.is_file() else None
    return payload


def _load_whole(path: Path, model: nn.Module) -> None:
    """A sharded checkpoint's weights into an unsharded model in this one process (whole tables)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():     # (DCP warns that it loads in one process: the intent)
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=path, no_dist=True)
    except Exception as e:
        raise InputError(f"{path}: weights do not fit this model "
                         f"({str(e).strip().splitlines()[-1][:300]})") from None
    model.load_state_dict(state["model"])


def consolidate(path: str | os.PathLike, output: Optional[str | os.PathLike] = None) -> Path:
    """Write the one-file checkpoint (best.pt layout: weights of the unsharded model, config, schema,
    epoch, metrics) of a sharded checkpoint folder, or of a run folder's best.dcp; default output: the
    folder's name with .pt (RUN/best.dcp -> RUN/best.pt). The sparse optimizer's state is left out."""
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise InputError(f"{path}: is a one-file checkpoint already")
    output = Path(output) if output is not None else path.with_suffix(".pt")
    if output.exists():
        raise InputError(f"{output}: exists; choose another output or move it away")
    model, cfg, schema = load_checkpoint(path)
    payload = read_checkpoint(path)
    save_checkpoint(output, model, cfg, schema, payload["epoch"], payload["metrics"])
    return output
