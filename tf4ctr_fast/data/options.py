"""Options shared by the text formats (criteo, csv, libfm): the schema YAML and the split plan.

`dataset.schema` names a YAML file. For format csv it describes the columns (schema_csv.py); for
every text format it may also set
    on_bad_row: error | skip        # skip: bad rows are dropped and counted in schema["report"]
    split: {by: files}              # dataset.train / valid / test, one file per split
    split: {by: ratio, ratios: [0.8, 0.1, 0.1]}          # one file, shuffled with dataset.seed
    split: {by: time, column: ts, ratios: [0.8, 0.1, 0.1]}   # one file, cut in time order (csv)
Without `split`: by files when dataset.valid or dataset.test is set, else by ratio 8:1:1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import DatasetConfig
from ..errors import InputError
from .engine import SPLIT_NAMES, EngineOptions, SplitPlan

Spec = dict[str, Any]


def load_spec(source: Optional[str | Path | Spec], allowed: set[str]) -> tuple[Spec, str]:
    """(the YAML mapping, how messages name it); unknown top-level keys are errors."""
    if source is None:
        return {}, "config key 'dataset.schema'"
    if isinstance(source, dict):
        spec, where = source, "schema"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"config key 'dataset.schema': {path}: file not found")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML: {e}") from None
        where = str(path)
        if not isinstance(spec, dict):
            raise InputError(f"{path}: expected a mapping (keys: {', '.join(sorted(allowed))})")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(f"{where}: key '{unknown[0]}' is unknown (known: {', '.join(sorted(allowed))})")
    return spec, where


def engine_options(spec: Spec, where: str, progress: bool, workers: int, chunk_bytes: int) -> EngineOptions:
    on_bad_row = spec.get("on_bad_row", "error")
    if on_bad_row not in ("error", "skip"):
        raise InputError(f"{where}: key 'on_bad_row': expected error or skip, got {on_bad_row!r}")
    return EngineOptions(workers=workers, chunk_bytes=chunk_bytes, on_bad_row=on_bad_row, progress=progress)


def split_plan(cfg: DatasetConfig, spec: Spec, where: str, format_name: str) -> tuple[SplitPlan, Optional[str]]:
    """(the plan, the time column or None) from dataset.train/valid/test and the spec's `split`."""
    if not cfg.train:
        raise InputError(f"config key 'dataset.train': required for dataset.format '{format_name}'")
    given = {name: getattr(cfg, name) for name in SPLIT_NAMES if getattr(cfg, name)}
    split = spec.get("split", {"by": "files" if len(given) > 1 else "ratio"})
    if not isinstance(split, dict) or split.get("by") not in ("files", "ratio", "time"):
        raise InputError(f"{where}: key 'split': expected a mapping with by: files, ratio or time")
    unknown = sorted(set(split) - {"by", "ratios", "column"})
    if unknown:
        raise InputError(f"{where}: key 'split.{unknown[0]}' is unknown (known: by, ratios, column)")
    by = split["by"]
    if by == "files":
        return SplitPlan(by="files", files={k: Path(v) for k, v in given.items()}), None
    for name in ("valid", "test"):
        if name in given:
            raise InputError(f"config key 'dataset.{name}': split by {by} cuts dataset.train alone; "
                             "leave valid and test unset")
    ratios = split.get("ratios", [0.8, 0.1, 0.1])
    if (not isinstance(ratios, list) or not 2 <= len(ratios) <= 3
            or not all(isinstance(r, (int, float)) and r > 0 for r in ratios)):
        raise InputError(f"{where}: key 'split.ratios': expected 2 or 3 positive numbers "
                         f"(train, valid[, test]), got {ratios!r}")
    if abs(sum(ratios) - 1) > 1e-6:  # not normalised: a typo would otherwise change every split's size
        raise InputError(f"{where}: key 'split.ratios': {ratios!r} sum to {sum(ratios):g}; the fractions "
                         "(train, valid[, test]) must sum to 1")
    column = split.get("column")
    if by == "time" and not isinstance(column, str):
        raise InputError(f"{where}: key 'split.column': split by time needs the time column's name")
    if by != "time" and column is not None:
        raise InputError(f"{where}: key 'split.column': only split by time uses a column")
    plan = SplitPlan(by=by, files={"data": Path(cfg.train)}, ratios=tuple(float(r) for r in ratios),
                     seed=cfg.seed)
    return plan, column


def reject_csv_ids_keys(cfg: DatasetConfig, format_name: str) -> None:
    """dataset.fields / group_field / keep_columns describe csv_ids files; elsewhere the schema does."""
    for key, value, default in (("fields", cfg.fields, None), ("group_field", cfg.group_field, None),
                                ("keep_columns", cfg.keep_columns, [])):
        if value != default:
            raise InputError(f"config key 'dataset.{key}': not used by format '{format_name}' "
                             "(declare columns in the dataset.schema file)")
