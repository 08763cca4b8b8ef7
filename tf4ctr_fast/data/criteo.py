"""Criteo Kaggle / x4 click logs (`dataset.format: criteo`): a fixed schema for the schema-CSV path.

Rows are label, I1..I13 (integer counts), C1..C26 (8-digit hex hashes), empty = missing:
- Kaggle `train.txt`: tab separated, no header. Rows that lost trailing empty fields (the head
  sample has some) read as if those fields were empty, down to 14 fields (label, I1..I13).
- CSV with a header `label,I1,..,C26`, dense values possibly written as floats (1382.0): detected
  from the first line of dataset.train.
I1..I13 become categorical buckets (v > 2 -> floor(ln(v)^2), else int(v); missing is a token of its
own, as is a missing C); C1..C26 use the hex codec. Vocabularies use dataset.min_count (the published
Criteo runs: 10). Split: x4's shuffled 8:1:1 with dataset.seed, unless valid/test files are given;
the optional dataset.schema file may set `on_bad_row` and `split` (options.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import DatasetConfig
from ..errors import InputError
from .engine import BOM, DEFAULT_CHUNK_BYTES, first_line, prepare_text
from .options import Spec, engine_options, load_spec, reject_csv_ids_keys, split_plan
from .schema_csv import Column, CsvFormat, CsvLayout

INT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
_SHORTEST_ROW = 1 + len(INT_COLUMNS)


def criteo_layout(delimiter: str = "\t", header: bool = False) -> CsvLayout:
    columns = ((Column("label", "label", codec="int"),)
               + tuple(Column(name, "numeric_bucket", codec="int", rule="log2") for name in INT_COLUMNS)
               + tuple(Column(name, "categorical", codec="hex") for name in CAT_COLUMNS))
    return CsvLayout(columns=columns, delimiter=delimiter, header=header,
                     min_fields=None if header else _SHORTEST_ROW)


def detect_layout(path: Path) -> CsvLayout:
    """Kaggle TSV or a CSV with a header, from the file's first non-blank line."""
    line, number, _ = first_line(path, skip_blank=True)
    delimiter = "\t" if b"\t" in line else ","
    first = line.split(delimiter.encode(), 1)[0].strip()
    if first.startswith(BOM) and first[len(BOM):].replace(b".", b"", 1).lstrip(b"-").isdigit():
        raise InputError(f"{path}:{number}: the file starts with a UTF-8 byte order mark (BOM, bytes EF BB BF) "
                         "before its first label; save the file without a BOM")
    try:
        float(first)
        header = False
    except ValueError:
        header = number == 1 and first != b""   # a header can only be line 1
    return criteo_layout(delimiter, header)


def prepare_criteo(cfg: DatasetConfig, out_dir: str | Path, progress: bool = False,
                   schema: Optional[str | Path | Spec] = None, workers: int = 0,
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Path:
    reject_csv_ids_keys(cfg, "criteo")
    spec, where = load_spec(schema, {"on_bad_row", "split"})
    plan, time_column = split_plan(cfg, spec, where, "criteo")
    if time_column is not None:
        raise InputError(f"{where}: key 'split': Criteo rows have no time column; split by files or ratio")
    if cfg.min_count < 1:
        raise InputError(f"config key 'dataset.min_count': must be >= 1, got {cfg.min_count}")
    fmt = CsvFormat(detect_layout(Path(cfg.train)), cfg.min_count)
    return prepare_text(fmt, plan, out_dir, engine_options(spec, where, progress, workers, chunk_bytes), "criteo")
