"""`tf4ctr-fast prepare`: raw data -> a prepared folder (columns.py), dispatching on dataset.format.

synthetic (synthetic.py), csv_ids (csv_ids.py: integer-id CSVs read whole), and the streaming text
formats (engine.py): criteo (criteo.py), csv with a schema file (schema_csv.py), libfm (libfm.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Optional

from ..config import DatasetConfig
from ..errors import InputError
from ..io_utils import atomic_file
from .columns import PREPARED_FROM, check_replaceable, load_prepared
from .criteo import prepare_criteo
from .csv_ids import prepare_csv_ids
from .libfm import prepare_libfm
from .schema_csv import prepare_schema_csv
from .synthetic import generate_synthetic


def _streaming(preparer: Callable[..., Path]) -> Callable[[DatasetConfig, Path, bool], Path]:
    return lambda cfg, out, progress: preparer(cfg, out, progress=progress, schema=cfg.schema)


_PREPARERS: dict[str, Callable[[DatasetConfig, Path, bool], Path]] = {
    "synthetic": lambda cfg, out, progress: generate_synthetic(cfg, out),
    "csv_ids": lambda cfg, out, progress: prepare_csv_ids(cfg, out),
    "criteo": _streaming(prepare_criteo),
    "csv": _streaming(prepare_schema_csv),
    "libfm": _streaming(prepare_libfm),
}


def prepare(cfg: DatasetConfig, out_dir: Optional[str | Path] = None, progress: bool = True) -> Path:
    """Write the prepared folder (default cfg.resolved_prepared_dir()) and return its path."""
    preparer = _PREPARERS.get(cfg.format)
    if preparer is None:
        raise InputError(f"config key 'dataset.format': unknown format {cfg.format!r} "
                         f"(known: {', '.join(_PREPARERS)})")
    out = Path(out_dir) if out_dir is not None else cfg.resolved_prepared_dir()
    if os.path.lexists(out):  # fail now, not after hours of reading (the write checks it again)
        check_replaceable(out)
    path = preparer(cfg, out, progress)
    # Written after the folder is complete: a crash in between only costs a re-prepare, never a stale reuse.
    with atomic_file(path / PREPARED_FROM) as tmp:
        tmp.write_text(json.dumps(_dataset_options(cfg), sort_keys=True, indent=1) + "\n")
    if progress:
        print(summary(path))
    return path


def is_prepared_from(cfg: DatasetConfig, path: Optional[str | Path] = None) -> bool:
    """Whether the prepared folder exists and was written from these dataset options (so `train` can
    reuse it instead of silently training on data prepared with other options)."""
    path = Path(path) if path is not None else cfg.resolved_prepared_dir()
    marker = path / PREPARED_FROM
    if not (path / "schema.json").exists() or not marker.exists():
        return False
    return json.loads(marker.read_text()) == _dataset_options(cfg)


def ensure_prepared(cfg: DatasetConfig, progress: bool = True) -> Path:
    """The prepared folder of `cfg`, prepared first when it is missing or was written from other
    dataset options (what `train` and `sweep` do before training)."""
    path = cfg.resolved_prepared_dir()
    if not is_prepared_from(cfg, path):
        print(f"preparing {cfg.name} into {path} (none there yet, or prepared with other dataset options)",
              flush=True)
        prepare(cfg, progress=progress)
    return path


def _dataset_options(cfg: DatasetConfig) -> dict:
    options = dataclasses.asdict(cfg)
    options.pop("prepared_dir")
    return options


def summary(path: str | Path) -> str:
    """One line: where, rows per split, vocabulary size per field."""
    ds = load_prepared(path)
    order = {name: i for i, name in enumerate(("train", "valid", "test"))}
    splits = sorted(ds.schema["splits"].items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    rows = ", ".join(f"{name} {n:,}" for name, n in splits)
    vocabs = " ".join(f"{name}={size}" for name, size in zip(ds.field_names, ds.vocab_sizes))
    multi = "".join(f" {f['name']}={f['vocab_size']}(multi-valued)" for f in ds.multi_valued_fields)
    skipped = ds.schema.get("report", {}).get("skipped_rows", 0)
    note = f"; skipped {skipped:,} bad rows (schema.json report)" if skipped else ""
    return (f"prepared {path}: rows {rows}; {len(ds.field_names) + len(ds.multi_valued_fields)} fields, "
            f"vocab sizes {vocabs}{multi}{note}")
