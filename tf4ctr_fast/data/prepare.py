"""`tf4ctr-fast prepare`: raw data -> a prepared folder (columns.py), dispatching on dataset.format."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..config import DatasetConfig
from ..errors import InputError
from .columns import load_prepared
from .csv_ids import prepare_csv_ids
from .synthetic import generate_synthetic

_PREPARERS: dict[str, Callable[[DatasetConfig, Path], Path]] = {
    "synthetic": generate_synthetic,
    "csv_ids": prepare_csv_ids,
}


def prepare(cfg: DatasetConfig, out_dir: Optional[str | Path] = None, progress: bool = True) -> Path:
    """Write the prepared folder (default cfg.resolved_prepared_dir()) and return its path."""
    preparer = _PREPARERS.get(cfg.format)
    if preparer is None:
        raise InputError(f"config key 'dataset.format': unknown format {cfg.format!r} "
                         f"(known: {', '.join(_PREPARERS)})")
    path = preparer(cfg, Path(out_dir) if out_dir is not None else cfg.resolved_prepared_dir())
    if progress:
        print(summary(path))
    return path


def summary(path: str | Path) -> str:
    """One line: where, rows per split, vocabulary size per field."""
    ds = load_prepared(path)
    order = {name: i for i, name in enumerate(("train", "valid", "test"))}
    splits = sorted(ds.schema["splits"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    rows = ", ".join(f"{name} {n:,}" for name, n in splits)
    vocabs = " ".join(f"{name}={size}" for name, size in zip(ds.field_names, ds.vocab_sizes))
    return f"prepared {path}: rows {rows}; {len(ds.field_names)} fields, vocab sizes {vocabs}"
