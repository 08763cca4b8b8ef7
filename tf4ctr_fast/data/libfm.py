"""libfm files (`dataset.format: libfm`): `label idx:1 idx:1 ...`, one categorical field per feature
block, as in the NFM / BARS Frappe and MovieLens-tag files.

```yaml
# dataset.schema
fields: [user, item, daytime]     # the field names, in order
blocks: [0, 957, 5057]            # optional: first feature index of each field's block (ascending);
                                  # without it the k-th feature of a row belongs to field k
on_bad_row: error                 # and `split:` (options.py)
```
Labels -1 and 0 read as 0, 1 as 1. Values must be 1 (binary features: ids, not weights). A field's
key is the feature index (codec int), so vocabularies and ids match those of a CSV of the same
indices. With blocks, a field absent from a row is a missing value (a token of its own); a field
given twice is a bad row. By position, every row lists exactly one feature per field. Separator:
single spaces (repeated or trailing spaces are tolerated). Rows to score may come without the label
(`LibfmFormat(..., has_label=False)`, `predict --no-label`): then every token is a feature.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import DatasetConfig
from ..errors import InputError
from .engine import DEFAULT_CHUNK_BYTES, Decoded, FieldInfo, prepare_text
from .options import Spec, engine_options, load_spec, reject_csv_ids_keys, split_plan
from .text import MISSING, Chunk, parse_ints, parse_numbers, split_lines

_TOP_KEYS = {"fields", "blocks", "on_bad_row", "split"}


class LibfmFormat:
    """engine.TextFormat of libfm files."""

    has_header = False
    multi_valued: list[FieldInfo] = []
    group_field: Optional[str] = None
    keep_columns: list[str] = []
    time_column: Optional[str] = None

    def __init__(self, fields: list[str], blocks: Optional[list[int]], min_count: int, has_label: bool = True):
        """has_label=False: rows to score, features only (`idx:1 idx:1 ...`); labels come out NaN."""
        self.fields, self.blocks, self.min_count = fields, blocks, min_count
        self.label = "label" if has_label else None
        self.categorical = [FieldInfo(name, "int", min_count) for name in fields]

    def decoder(self, path: Path, header: Optional[str]) -> LibfmDecoder:
        return LibfmDecoder(self.fields, self.blocks, self.label is not None)

    def options(self) -> dict[str, Any]:
        return {"fields": self.fields, "blocks": self.blocks, "min_count": self.min_count}

    def report(self) -> dict[str, Any]:
        return {}


class LibfmDecoder:
    def __init__(self, fields: list[str], blocks: Optional[list[int]], has_label: bool = True):
        self.fields, self.has_label = fields, has_label
        self.blocks = None if blocks is None else np.asarray(blocks, dtype=np.int64)

    def token_ends(self, multi_valued: bool, j: int) -> bytes:
        return b" \n\r"

    def decode(self, chunk: Chunk) -> Decoded:
        lines = split_lines(chunk, ord(" "))
        n, num_fields = len(lines.first), len(self.fields)
        reasons: list[tuple[np.ndarray, Callable[[int], str]]] = []

        def check(rows: np.ndarray, describe: Callable[[int], str]) -> None:
            if rows.any():
                reasons.append((rows, describe))

        def text(token: np.ndarray) -> Callable[[int], str]:
            return lambda r: chunk.text(int(lines.start[token[r]]), int(lines.length[token[r]]))

        token, owner = lines.fields()
        if self.has_label:
            label_text = text(lines.first)
            values, ok = parse_numbers(chunk, lines.start[lines.first], lines.length[lines.first])
            check(~ok | ~np.isin(values, (-1, 0, 1)), lambda r: f"label {label_text(r)!r} is not -1, 0 or 1")
            labels = (values == 1).astype(np.float32)
            feature = token != lines.first[owner]   # every token after a line's first is a feature
        else:  # rows to score: every token is a feature, the label is unknown
            labels = np.full(n, np.nan, dtype=np.float32)
            feature = np.ones(len(token), dtype=bool)
        feature &= lines.length[token] > 0          # (repeated or trailing spaces)
        token, owner = token[feature], owner[feature]
        start, length = lines.start[token], lines.length[token]
        colon = np.flatnonzero(chunk.buf == ord(":"))
        which = np.searchsorted(start, colon, side="right") - 1
        inside = which >= 0
        inside[inside] = colon[inside] < start[which[inside]] + length[which[inside]]
        colons = np.bincount(which[inside], minlength=len(start))
        colon_at = start.copy()
        colon_at[which[inside]] = colon[inside]
        idx, idx_ok = parse_ints(chunk, start, colon_at - start)
        val, val_ok = parse_numbers(chunk, colon_at + 1, np.maximum(start + length - colon_at - 1, 0))
        malformed = (colons != 1) | ~idx_ok | (colon_at == start) | (idx < 0)
        not_binary = ~malformed & (~val_ok | (val != 1))
        if self.blocks is not None:
            field = np.searchsorted(self.blocks, idx, side="right") - 1
            outside = ~malformed & (field < 0)
            where = "is below the first field block"
        else:
            field = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
            outside = ~malformed & (field >= num_fields)
            where = f"is one more than the {num_fields} fields"
        for mask, what in ((malformed, "is not index:value"),
                           (not_binary, "has a value other than 1 (features are binary)"),
                           (outside, where)):
            first_bad = np.full(n, -1, dtype=np.int64)
            first_bad[owner[mask][::-1]] = token[mask][::-1]     # the first bad feature of each row
            check(first_bad >= 0, lambda r, t=text(first_bad), w=what: f"feature {t(r)!r} {w}")

        usable = ~(malformed | not_binary | outside)
        slot = owner[usable] * num_fields + field[usable]
        uniq, counts = np.unique(slot, return_counts=True)
        twice = np.full(n, -1, dtype=np.int64)
        twice[uniq[counts > 1][::-1] // num_fields] = uniq[counts > 1][::-1] % num_fields
        check(twice >= 0, lambda r: f"two features of field '{self.fields[twice[r]]}'")
        keys = np.full((n, num_fields), MISSING, dtype=np.int64)
        keys.reshape(-1)[slot] = idx[usable]
        keys = np.ascontiguousarray(keys.T)  # field-major, as engine.Decoded wants
        if self.blocks is None:
            found = np.bincount(owner[usable], minlength=n)
            check(found < num_fields, lambda r: f"expected {num_fields} features (one per field), found {found[r]}")

        bad = np.zeros(n, dtype=bool)
        for rows, _ in reasons:
            bad |= rows
        return Decoded(total_lines=lines.total_lines, number=lines.number, bad=bad, reasons=reasons,
                       cat_keys=keys, cat_starts=None, mv=[], labels=labels)


def prepare_libfm(cfg: DatasetConfig, out_dir: str | Path, progress: bool = False,
                  schema: Optional[str | Path | Spec] = None, workers: int = 0,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Path:
    reject_csv_ids_keys(cfg, "libfm")
    if schema is None:
        raise InputError("config key 'dataset.schema': format libfm needs a schema file naming the fields")
    spec, where = load_spec(schema, _TOP_KEYS)
    fields = spec.get("fields")
    if (not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields)
            or len(set(fields)) != len(fields)):
        raise InputError(f"{where}: key 'fields': expected a list of distinct field names")
    blocks = spec.get("blocks")
    if blocks is not None and (not isinstance(blocks, list) or len(blocks) != len(fields)
                               or not all(isinstance(b, int) and b >= 0 for b in blocks)
                               or any(b <= a for a, b in zip(blocks, blocks[1:]))):
        raise InputError(f"{where}: key 'blocks': expected {len(fields)} increasing feature indices "
                         "(the first index of each field's block)")
    plan, time_column = split_plan(cfg, spec, where, "libfm")
    if time_column is not None:
        raise InputError(f"{where}: key 'split': libfm rows have no time column; split by files or ratio")
    if cfg.min_count < 1:
        raise InputError(f"config key 'dataset.min_count': must be >= 1, got {cfg.min_count}")
    fmt = LibfmFormat(fields, blocks, cfg.min_count)
    return prepare_text(fmt, plan, out_dir, engine_options(spec, where, progress, workers, chunk_bytes), "libfm")
