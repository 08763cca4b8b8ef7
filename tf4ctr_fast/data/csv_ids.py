"""Prepare CSV files (plain or gzip) whose columns are already integer ids, with a header row.

Like Frappe_x1's `user,item,daytime,...,label`. Plain comma-separated integers, no quoting; empty
lines are skipped. Vocabularies are fitted on train only (columns.IntVocab). Parsing is numpy's
loadtxt (C speed); only when it rejects a file do we re-scan it in Python to name the bad line.
"""
from __future__ import annotations

import hashlib
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np

from ..config import DatasetConfig
from ..errors import InputError
from .engine import inflate
from .columns import IntVocab, SplitArrays, categorical_field, write_prepared

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_CHUNK = 1 << 20  # compressed bytes per step; damage is located to within one step
_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class IdTable:
    """The requested integer columns of one CSV file."""

    path: Path
    sha256: str                      # of the file as stored (compressed if gzip)
    columns: dict[str, np.ndarray]   # int64 [N] per requested column present in the file
    line_numbers: np.ndarray         # int64 [N]: the 1-based file line of each row


@dataclass(frozen=True)
class _CsvFile:
    """A whole CSV file in memory, header split off."""

    path: Path
    sha256: str
    data: bytes   # decompressed
    text: str
    header: list[str]


def read_id_csv(path: str | Path, required: dict[str, str], optional: tuple[str, ...] = ()) -> IdTable:
    """Read columns `required` (name -> what asked for it, for messages) and `optional` if present.

    Every problem raises one InputError naming the file and line.
    """
    return _parse_ids(_open_csv(Path(path)), required, optional)


def _open_csv(path: Path) -> _CsvFile:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    raw = path.read_bytes()
    gzipped = raw[:2] == _GZIP_MAGIC
    if path.suffix == ".gz" and not gzipped:
        raise InputError(f"{path}:1: unreadable gzip file (no gzip header)")
    data = _gunzip(path, raw) if gzipped else raw
    text = _decode(path, data)
    header_line = text.split("\n", 1)[0]
    header = [name.strip() for name in header_line.lstrip("\ufeff").rstrip("\r").split(",")]
    if header == [""]:
        raise InputError(f"{path}:1: empty file, expected a header row")
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise InputError(f"{path}:1: header repeats column {duplicates[0]!r}")
    return _CsvFile(path=path, sha256=hashlib.sha256(raw).hexdigest(), data=data, text=text,
                    header=header)


def _parse_ids(f: _CsvFile, required: dict[str, str], optional: tuple[str, ...]) -> IdTable:
    for name, asked_by in required.items():
        if name not in f.header:
            raise InputError(f"{f.path}:1: header has no column {name!r} (required by {asked_by}); "
                             f"it has: {', '.join(f.header)}")
    wanted = list(required) + [c for c in optional if c in f.header and c not in required]
    line_numbers = _data_line_numbers(f.path, f.data, num_columns=len(f.header))
    if len(line_numbers) == 0:
        raise InputError(f"{f.path}:1: header but no data rows")
    header_end = f.text.find("\n")
    try:
        values = np.loadtxt(io.StringIO(f.text[header_end + 1:]), delimiter=",", dtype=np.int64,
                            usecols=[f.header.index(c) for c in wanted], comments=None, ndmin=2)
    except ValueError as e:
        _raise_first_non_integer(f, wanted, error=e)
    if values.shape[0] != len(line_numbers):  # our blank-line rule disagrees with numpy's
        raise InputError(f"{f.path}: read {values.shape[0]} rows but counted {len(line_numbers)} lines")
    columns = {name: np.ascontiguousarray(values[:, j]) for j, name in enumerate(wanted)}
    return IdTable(path=f.path, sha256=f.sha256, columns=columns, line_numbers=line_numbers)


def _gunzip(path: Path, raw: bytes) -> bytes:
    """Decompress every gzip member; on damage, name the line where the readable text stops."""
    chunks: list[bytes] = []
    offset, lines = 0, 0
    while offset < len(raw):
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while not member.eof and offset < len(raw):
            chunk = raw[offset:offset + _GZIP_CHUNK]
            offset += len(chunk)
            chunks.append(inflate(member, chunk, path, lines))
            lines += chunks[-1].count(b"\n")
        if not member.eof:
            raise InputError(f"{path}:{lines + 1}: unreadable gzip data after line {lines}: the compressed "
                             "stream ends early (a truncated file)")
        offset -= len(member.unused_data)  # the next member starts there
    return b"".join(chunks)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text") from None


def _data_line_numbers(path: Path, data: bytes, num_columns: int) -> np.ndarray:
    """1-based line numbers of the non-empty lines after the header; checks their column counts.

    Vectorised over the raw bytes so that a 300k-row file costs milliseconds.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    lengths = ends - starts
    has_cr = np.zeros(len(starts), dtype=bool)
    nonempty = lengths > 0
    has_cr[nonempty] = buf[ends[nonempty] - 1] == ord("\r")
    blank = (lengths - has_cr) == 0  # numpy's loadtxt skips exactly these lines
    commas = np.bincount(np.searchsorted(newlines, np.flatnonzero(buf == ord(","))),
                         minlength=len(starts))
    rows = np.flatnonzero(~blank)
    rows = rows[rows > 0]  # line index 0 is the header
    bad = rows[commas[rows] != num_columns - 1]
    if len(bad):
        line = int(bad[0])
        raise InputError(f"{path}:{line + 1}: expected {num_columns} columns as in the header, "
                         f"found {int(commas[line]) + 1}")
    return rows + 1


def _raise_first_non_integer(f: _CsvFile, wanted: list[str], error: ValueError) -> NoReturn:
    """loadtxt rejected the file: find the first bad value in Python to name its line."""
    positions = [f.header.index(c) for c in wanted]
    for number, line in enumerate(f.text.split("\n"), start=1):
        line = line.rstrip("\r")
        if number == 1 or not line:
            continue
        cells = line.split(",")
        for name, pos in zip(wanted, positions):
            cell = cells[pos].strip()
            if not _INT.fullmatch(cell):
                raise InputError(f"{f.path}:{number}: column {name!r}: {cell!r} is not an integer id")
            if not _INT64_MIN <= int(cell) <= _INT64_MAX:
                raise InputError(f"{f.path}:{number}: column {name!r}: {cell} does not fit in 64 bits")
    raise InputError(f"{f.path}: {error}")


def _labels(table: IdTable, label: str) -> np.ndarray:
    values = table.columns[label]
    bad = np.flatnonzero((values != 0) & (values != 1))
    if len(bad):
        row = int(bad[0])
        raise InputError(f"{table.path}:{int(table.line_numbers[row])}: label {label!r} must be 0 or 1, "
                         f"got {int(values[row])}")
    return values.astype(np.float32)


@dataclass(frozen=True)
class _Options:
    """The resolved prepare options; recorded verbatim in schema["options"]."""

    label: str
    fields: list[str]
    group_field: Optional[str]
    keep_columns: list[str]
    min_count: int

    def required_columns(self) -> dict[str, str]:
        """Column -> the config key that asked for it (for error messages)."""
        cols = {self.label: "config key 'dataset.label'"}
        cols.update({f: "config key 'dataset.fields'" for f in self.fields})
        if self.group_field is not None:
            cols.setdefault(self.group_field, "config key 'dataset.group_field'")
        cols.update({c: "config key 'dataset.keep_columns'" for c in self.keep_columns if c not in cols})
        return cols

    def to_json(self) -> dict[str, Any]:
        return {"format": "csv_ids", "label": self.label, "fields": self.fields,
                "group_field": self.group_field, "keep_columns": self.keep_columns,
                "min_count": self.min_count}


def _resolve_options(cfg: DatasetConfig, train_header: list[str]) -> _Options:
    fields = list(cfg.fields) if cfg.fields is not None else [c for c in train_header if c != cfg.label]
    if not fields:
        raise InputError("config key 'dataset.fields': no feature columns")
    if cfg.label in fields:
        raise InputError(f"config key 'dataset.fields': {cfg.label!r} is the label column")
    for key, names in (("dataset.fields", fields), ("dataset.keep_columns", cfg.keep_columns)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"config key '{key}': {repeated[0]!r} is listed twice")
    if cfg.min_count < 1:
        raise InputError(f"config key 'dataset.min_count': must be >= 1, got {cfg.min_count}")
    return _Options(label=cfg.label, fields=fields, group_field=cfg.group_field,
                    keep_columns=list(cfg.keep_columns), min_count=cfg.min_count)


def _split_paths(cfg: DatasetConfig) -> dict[str, Path]:
    if not cfg.train:
        raise InputError("config key 'dataset.train': required for dataset.format 'csv_ids'")
    paths = {"train": cfg.train, "valid": cfg.valid, "test": cfg.test}
    return {name: Path(p) for name, p in paths.items() if p}


def _split_arrays(table: IdTable, opts: _Options, vocabs: dict[str, IntVocab]) -> SplitArrays:
    ids = np.stack([vocabs[f].encode(table.columns[f]) for f in opts.fields], axis=1)
    group = table.columns[opts.group_field] if opts.group_field is not None else None
    keep = (np.stack([table.columns[c] for c in opts.keep_columns], axis=1)
            if opts.keep_columns else None)
    return ids, _labels(table, opts.label), group, keep


def prepare_csv_ids(cfg: DatasetConfig, out_dir: str | Path) -> Path:
    """Read every split (all errors surface before anything is written), then write the folder."""
    paths = _split_paths(cfg)
    train = _open_csv(paths["train"])
    opts = _resolve_options(cfg, train.header)
    tables = {"train": _parse_ids(train, opts.required_columns(), optional=())}
    del train  # the raw text is several times the size of the parsed columns
    tables.update({name: read_id_csv(p, opts.required_columns())
                   for name, p in paths.items() if name != "train"})
    vocabs = {f: IntVocab.fit(tables["train"].columns[f], opts.min_count) for f in opts.fields}
    schema = {
        "fields": [categorical_field(f, vocabs[f].size, vocabs[f].to_json()) for f in opts.fields],
        "label": opts.label,
        "group_field": opts.group_field,
        "keep_columns": opts.keep_columns,
        "options": opts.to_json(),
        "sources": {name: {"path": str(t.path.resolve()), "sha256": t.sha256} for name, t in tables.items()},
    }
    splits = {name: _split_arrays(t, opts, vocabs) for name, t in tables.items()}
    return write_prepared(out_dir, schema, splits)


def encode_for_predict(csv_path: str | Path, schema: dict[str, Any], vocabs: Optional[list[IntVocab]] = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray], Optional[np.ndarray]]:
    """Map a CSV's raw values through a prepared schema's vocabularies (unseen -> OOV); `vocabs`, one per
    field, replaces the schema's (an export's schema has none: tf4ctr_fast/export.py).

    Returns (ids int32 [N, F], keep column -> int64 [N], labels float32 [N] or None when the file
    has no label column).
    """
    if vocabs is None:
        vocabs = [IntVocab.from_field(f, "prepared schema") for f in schema["fields"]]
    fields = [f["name"] for f in schema["fields"]]
    required = {f: "the prepared schema's fields" for f in fields}
    required.update({c: "the prepared schema's keep_columns"
                     for c in schema["keep_columns"] if c not in required})
    label = schema["label"]
    table = read_id_csv(csv_path, required, optional=(label,))
    ids = np.stack([v.encode(table.columns[f]) for v, f in zip(vocabs, fields)], axis=1)
    keep = {c: table.columns[c] for c in schema["keep_columns"]}
    labels = _labels(table, label) if label in table.columns else None
    return ids, keep, labels
