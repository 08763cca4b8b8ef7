"""Model checkpoints: weights plus the config and schema needed to rebuild and use the model.

The payload holds only tensors and plain Python values, so it loads with `weights_only=True`
(no arbitrary unpickling). The schema travels with the weights because `predict` needs its
vocabularies to map raw values to ids.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import InputError
from ..io_utils import atomic_file
from .runlog import to_jsonable

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "model_state", "config", "schema", "epoch", "metrics")


def _build_model(model_cfg: Any, vocab_sizes: list[int]) -> nn.Module:
    # Imported here so checkpoints of any model go through the one model registry.
    from ..reference.models import build_model
    return build_model(model_cfg, vocab_sizes)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: RunConfig, schema: dict,
                    epoch: int, metrics: dict) -> None:
    """Write the checkpoint atomically: a crash mid-write leaves no file at `path`."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "schema": schema,
        "epoch": int(epoch),
        "metrics": to_jsonable(metrics),
    }
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
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED_KEYS):
        raise InputError(f"{path}: not a tf4ctr_fast checkpoint (missing keys)")
    if payload["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {payload['format_version']} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    return payload


def _load_state(path: str | os.PathLike, model: nn.Module, payload: dict[str, Any]) -> None:
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit this model ({e})") from None


def restore_weights(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the checkpoint's weights into an existing model; returns the payload."""
    payload = read_checkpoint(path)
    _load_state(path, model, payload)
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, RunConfig, dict]:
    """Rebuild the model from the saved config and vocab sizes; returns (model in eval mode, cfg, schema)."""
    payload = read_checkpoint(path)
    try:
        cfg = RunConfig.from_dict(payload["config"])
    except InputError as e:
        raise InputError(f"{path}: saved config: {e}") from None
    schema = payload["schema"]
    vocab_sizes = [int(f["vocab_size"]) for f in schema["fields"]]
    model = _build_model(cfg.model, vocab_sizes)
    _load_state(path, model, payload)
    model.to(device).eval()
    return model, cfg, schema


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding best.pt."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt"
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    return p
