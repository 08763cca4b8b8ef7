"""Model checkpoints: weights plus the config and schema needed to rebuild and use the model.

The payload holds only tensors and plain Python values, so it loads with `weights_only=True`
(no arbitrary unpickling). The schema travels with the weights because `predict` needs its
vocabularies to map raw values to ids. A model with fused embedding tables (model.backend "torchrec")
also saves its sparse optimizer's state ("sparse_optimizer_state": the row-wise Adagrad accumulators
live there, not in the model's state dict).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..config import RunConfig
from ..errors import InputError, torch_load_reason
from ..features import BagField, bag_fields_of
from ..io_utils import atomic_file
from ..models import build_model
from .runlog import to_jsonable

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "model_state", "config", "schema", "epoch", "metrics")


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
    """The raw payload; a missing, truncated or foreign file raises InputError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise InputError(f"{path}: not a readable checkpoint ({torch_load_reason(e)})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED_KEYS):
        raise InputError(f"{path}: not a tf4ctr_fast checkpoint (missing keys)")
    if payload["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {payload['format_version']} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    return payload


def _load_state(path: str | os.PathLike, model: nn.Module, payload: dict[str, Any]) -> None:
    """The weights, and the sparse optimizer's state when both the payload and the model have one
    (inference models and distributed runs' checkpoints have none)."""
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
    """A checkpoint file, or a run folder holding best.pt."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt"
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    return p
