"""CSV / TSV files described by a schema YAML (`dataset.format: csv`, `dataset.schema: file.yaml`).

```yaml
delimiter: ","            # one character; "\t" for TSV (default ",")
header: true              # column names from the first line (default); false: `columns` in file order
columns:                  # with a header, columns not listed are ignored (and named in the report)
  - {name: label, kind: label}                      # 0/1 (0.0/1.0 too)
  - {name: user, kind: categorical, codec: int, group: true}
  - {name: count, kind: categorical, codec: int, on_bad_value: oov}   # junk -> OOV, counted (default: error)
  - {name: song, kind: categorical}                 # codec str (default): any text
  - {name: genres, kind: multi_valued, separator: "|", max_len: 5, pooling: mean}
  - {name: I1, kind: numeric_bucket, rule: log2}    # Criteo's floor(ln(v)^2) rule
  - {name: age, kind: numeric_bucket, boundaries: [18, 25, 35, 50]}   # bucket = #boundaries <= v
  - {name: item, kind: keep}                        # raw integer kept for `predict`, not a feature
  - {name: ts, kind: time}                          # numbers; used by `split: {by: time, column: ts}`
on_bad_row: error         # and `split:`: see options.py
```
Kinds: categorical (codec int | hex | str; `group: true` / `keep: true` also keep its raw value),
multi_valued (separator, max_len: the first max_len values are kept, pooling sum | mean: recorded for
the model), numeric_bucket (a missing value is a token of its own), label, group (not a feature),
keep (not a feature), time. Every field takes an optional `min_count` (default dataset.min_count).
Fields are written in column order; multi-valued ones as jagged arrays (docs/data.md).
No quoting: a field may not contain the delimiter, and a field starting with a quote is rejected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import DatasetConfig
from ..errors import InputError
from .engine import DEFAULT_CHUNK_BYTES, Decoded, FieldInfo, prepare_text
from .options import Spec, engine_options, load_spec, reject_csv_ids_keys, split_plan
from .text import (BAD_VALUE, MISSING, Chunk, hash_keys, hex_keys, log2_buckets, parse_ints, parse_numbers,
                   split_lines, split_spans, utf8_spans)
from .vocab import CODECS

KINDS = ("categorical", "multi_valued", "numeric_bucket", "label", "group", "keep", "time")
POOLINGS = ("sum", "mean")
_COLUMN_KEYS = {
    "categorical": {"codec", "group", "keep", "min_count", "on_bad_value"},
    "multi_valued": {"codec", "separator", "max_len", "pooling", "min_count"},
    "numeric_bucket": {"rule", "boundaries", "min_count"},
    "label": set(), "group": {"codec"}, "keep": set(), "time": set(),
}
_TOP_KEYS = {"delimiter", "header", "columns", "on_bad_row", "split"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    codec: str = "str"
    separator: Optional[str] = None
    max_len: Optional[int] = None
    pooling: Optional[str] = None
    rule: Optional[str] = None
    boundaries: Optional[tuple[float, ...]] = None
    group: bool = False
    keep: bool = False
    min_count: Optional[int] = None
    on_bad_value: Optional[str] = None    # "oov": a codec int token that is no integer encodes as OOV

    @property
    def is_field(self) -> bool:
        return self.kind in ("categorical", "numeric_bucket", "multi_valued")

    def schema_extra(self) -> dict[str, Any]:
        """What schema.json records beside the vocabulary."""
        if self.kind == "multi_valued":
            return {"separator": self.separator, "max_len": self.max_len, "pooling": self.pooling}
        if self.kind == "numeric_bucket":
            return {"bucket": self.rule} if self.rule else {"bucket": "boundaries",
                                                            "boundaries": list(self.boundaries)}
        return {}


@dataclass(frozen=True)
class CsvLayout:
    """A parsed schema: the file layout and the columns."""

    columns: tuple[Column, ...]
    delimiter: str = ","
    header: bool = True
    # Rows may end early (the missing trailing fields are empty) down to this many fields; None: every
    # row has all its fields. Only the Criteo preset sets it (criteo.py).
    min_fields: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return {"delimiter": self.delimiter, "header": self.header,
                "columns": [{k: v for k, v in c.__dict__.items() if v is not None and v is not False}
                            for c in self.columns]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CsvLayout:
        """The layout a prepared folder recorded (to_json). min_fields is not recorded: the Criteo
        preset, the only one that sets it, is rebuilt by criteo.criteo_layout instead."""
        columns = tuple(Column(**{**c, "boundaries": tuple(c["boundaries"])} if "boundaries" in c else c)
                        for c in data["columns"])
        return cls(columns=columns, delimiter=data["delimiter"], header=data["header"])

    def without_label(self) -> CsvLayout:
        """The layout of rows to score that lack the label column (the other columns in place)."""
        at = next(i for i, c in enumerate(self.columns) if c.kind == "label")
        shorter = self.min_fields is not None and at < self.min_fields
        return CsvLayout(columns=self.columns[:at] + self.columns[at + 1:], delimiter=self.delimiter,
                         header=self.header, min_fields=self.min_fields - 1 if shorter else self.min_fields)


def header_names(header: str, delimiter: str) -> list[str]:
    """The column names of a header line."""
    return [name.strip() for name in header.split(delimiter)]


def parse_layout(spec: Spec, where: str) -> CsvLayout:
    """Check a schema mapping; every error names the key."""
    delimiter = spec.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter.encode()) != 1 or delimiter in "\r\n":
        raise InputError(f"{where}: key 'delimiter': expected one character, got {delimiter!r}")
    header = spec.get("header", True)
    if not isinstance(header, bool):
        raise InputError(f"{where}: key 'header': expected true or false, got {header!r}")
    raw = spec.get("columns")
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: key 'columns': expected a non-empty list of columns")
    columns = tuple(_column(c, f"{where}: key 'columns[{i}]", delimiter) for i, c in enumerate(raw))
    _check_columns(columns, where)
    return CsvLayout(columns=columns, delimiter=delimiter, header=header)


def _column(c: Any, key: str, delimiter: str) -> Column:
    if not isinstance(c, dict) or not isinstance(c.get("name"), str) or "kind" not in c:
        raise InputError(f"{key}': expected a mapping with a name and a kind ({' | '.join(KINDS)})")
    if c["kind"] not in KINDS:
        raise InputError(f"{key}.kind': unknown kind {c['kind']!r} (known: {' | '.join(KINDS)})")
    kind = c["kind"]
    unknown = sorted(set(c) - {"name", "kind"} - _COLUMN_KEYS[kind])
    if unknown:
        raise InputError(f"{key}.{unknown[0]}': not a key of a {kind} column "
                         f"(known: {', '.join(sorted(_COLUMN_KEYS[kind])) or 'none'})")
    codec = c.get("codec", "int" if kind == "group" else "str")
    if codec not in CODECS or (kind == "group" and codec == "hex"):
        raise InputError(f"{key}.codec': expected {' | '.join(CODECS)}, got {codec!r}")
    min_count = c.get("min_count")
    if min_count is not None and (not isinstance(min_count, int) or min_count < 1):
        raise InputError(f"{key}.min_count': expected an integer >= 1, got {min_count!r}")
    for flag in ("group", "keep"):
        if not isinstance(c.get(flag, False), bool):
            raise InputError(f"{key}.{flag}': expected true or false")
    if c.get("keep") and codec != "int":
        raise InputError(f"{key}.keep': kept raw values are integers; needs codec int")
    on_bad_value = c.get("on_bad_value", "error")
    if on_bad_value not in ("error", "oov"):
        raise InputError(f"{key}.on_bad_value': expected error or oov, got {on_bad_value!r}")
    if on_bad_value == "oov" and (codec != "int" or c.get("group") or c.get("keep")):
        raise InputError(f"{key}.on_bad_value': oov is for codec int feature columns (not group or keep ones)")
    out = dict(name=c["name"], kind=kind, codec=codec, group=c.get("group", False), keep=c.get("keep", False),
               min_count=min_count, on_bad_value="oov" if on_bad_value == "oov" else None)
    if kind == "multi_valued":
        sep, max_len, pooling = c.get("separator"), c.get("max_len"), c.get("pooling", "sum")
        if not isinstance(sep, str) or len(sep.encode()) != 1 or sep in ("\n", "\r", delimiter):
            raise InputError(f"{key}.separator': expected one character other than the delimiter")
        if max_len is None:
            raise InputError(f"{key}.max_len': missing; a multi_valued column needs max_len, the most values "
                             "of a row that are kept (e.g. max_len: 10)")
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise InputError(f"{key}.max_len': expected an integer >= 1, got {max_len!r}")
        if pooling not in POOLINGS:
            raise InputError(f"{key}.pooling': expected {' | '.join(POOLINGS)}, got {pooling!r}")
        out.update(separator=sep, max_len=max_len, pooling=pooling)
    if kind == "numeric_bucket":
        rule, bounds = c.get("rule"), c.get("boundaries")
        if (rule is None) == (bounds is None) or rule not in (None, "log2"):
            raise InputError(f"{key}': a numeric_bucket column needs rule: log2 or boundaries: [...]")
        if bounds is not None:
            if (not isinstance(bounds, list) or not bounds
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                    or any(b <= a for a, b in zip(bounds, bounds[1:]))):
                raise InputError(f"{key}.boundaries': expected increasing numbers, got {bounds!r}")
            out["boundaries"] = tuple(float(b) for b in bounds)
        out.update(rule=rule, codec="int")
    if kind in ("label", "keep", "time"):
        out["codec"] = "int"
    return Column(**out)


def _check_columns(columns: tuple[Column, ...], where: str) -> None:
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{where}: key 'columns': {repeated[0]!r} is listed twice")
    for kind in ("label", "group", "time"):
        count = sum(c.kind == kind or (kind == "group" and c.group) for c in columns)
        if count > 1:
            raise InputError(f"{where}: key 'columns': more than one {kind} column")
    if not any(c.kind == "label" for c in columns):
        raise InputError(f"{where}: key 'columns': no column of kind label")
    if not any(c.is_field for c in columns):
        raise InputError(f"{where}: key 'columns': no feature column (categorical, multi_valued, numeric_bucket)")


class CsvFormat:
    """engine.TextFormat of a CsvLayout."""

    def __init__(self, layout: CsvLayout, min_count: int, time_column: Optional[str] = None):
        self.layout, self.min_count = layout, min_count
        cols = layout.columns
        if time_column is not None and not any(c.name == time_column and c.kind == "time" for c in cols):
            raise InputError(f"split by time: no column {time_column!r} of kind time in the schema")
        self.time_column = time_column
        self.has_header = layout.header
        # None only for rows to score without labels (CsvLayout.without_label); prepare needs a label
        self.label = next((c.name for c in cols if c.kind == "label"), None)
        self.single = [c for c in cols if c.kind in ("categorical", "numeric_bucket")]
        self.multi = [c for c in cols if c.kind == "multi_valued"]
        self.categorical = [self._info(c) for c in self.single]
        self.multi_valued = [self._info(c) for c in self.multi]
        self.group_field = next((c.name for c in cols if c.kind == "group" or c.group), None)
        self.keep_columns = [c.name for c in cols if c.kind == "keep" or c.keep]
        self._ignored: list[str] = []

    def _info(self, c: Column) -> FieldInfo:
        return FieldInfo(c.name, c.codec, c.min_count or self.min_count, c.schema_extra(), c.on_bad_value or "error")

    def decoder(self, path: Path, header: Optional[str]) -> CsvDecoder:
        cols = self.layout.columns
        if header is None:
            return CsvDecoder(self, list(range(len(cols))), len(cols))
        names = header_names(header, self.layout.delimiter)
        missing = [c.name for c in cols if c.name not in names]
        if missing:
            raise InputError(f"{path}:1: header has no column {missing[0]!r} (named in the schema); "
                             f"it has: {', '.join(names)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"{path}:1: header repeats column {repeated[0]!r}")
        self._ignored = sorted(set(self._ignored) | (set(names) - {c.name for c in cols}))
        return CsvDecoder(self, [names.index(c.name) for c in cols], len(names))

    def options(self) -> dict[str, Any]:
        return {"layout": self.layout.to_json(), "min_count": self.min_count}

    def report(self) -> dict[str, Any]:
        return {"ignored_columns": self._ignored}


class CsvDecoder:
    """Decodes chunks of one file whose columns sit at `positions` (engine.ChunkDecoder).

    Single-valued fields are parsed in groups that share a parser (all log2 buckets at once, all hex
    columns at once, ...): a few large numpy calls per chunk instead of a few per column.
    """

    def __init__(self, fmt: CsvFormat, positions: list[int], num_fields: int):
        layout = fmt.layout
        self.columns = layout.columns
        self.position = {c.name: p for c, p in zip(self.columns, positions)}
        self.num_fields = num_fields
        self.min_fields = num_fields if layout.min_fields is None else min(layout.min_fields, num_fields)
        self.delimiter = ord(layout.delimiter)
        self.single, self.multi = fmt.single, fmt.multi
        self.label = fmt.label
        self.group = next((c for c in self.columns if c.kind == "group" or c.group), None)
        self.keep = [c for c in self.columns if c.kind == "keep" or c.keep]
        # checked under every split, not only split by time: a time column of garbage is a mistake either way
        self.time = next((c for c in self.columns if c.kind == "time"), None)
        groups: dict[Any, list[int]] = {}
        for j, c in enumerate(self.single):
            parser = (c.rule or ("boundaries", j)) if c.kind == "numeric_bucket" else c.codec
            groups.setdefault(parser, []).append(j)
        self.groups = list(groups.items())
        self.text_columns = [c.name for c in self.columns if c.codec == "str" and c.kind != "label"]

    def token_ends(self, multi_valued: bool, j: int) -> bytes:
        ends = bytes([self.delimiter, 10, 13])
        return ends + self.multi[j].separator.encode() if multi_valued else ends

    def decode(self, chunk: Chunk) -> Decoded:
        lines = split_lines(chunk, self.delimiter)
        names = list(self.position)
        column = {name: k for k, name in enumerate(names)}
        start, length = lines.columns(np.array([self.position[name] for name in names], dtype=np.int64))
        n = len(lines.first)
        reasons: list[tuple[np.ndarray, Callable[[int], str]]] = []

        def check(bad: np.ndarray, describe: Callable[[int], str]) -> None:
            if bad.any():
                reasons.append((bad, describe))

        def bad_token(name: str, what: str) -> Callable[[int], str]:
            k = column[name]
            return lambda r: f"column {name!r}: {chunk.text(int(start[k, r]), int(length[k, r]))!r} {what}"

        count = lines.count
        sep_name = "tab" if self.delimiter == 9 else repr(chr(self.delimiter))
        wanted = (f"{self.num_fields}" if self.min_fields == self.num_fields
                  else f"{self.min_fields} to {self.num_fields}")
        check((count < self.min_fields) | (count > self.num_fields),
              lambda r: f"expected {wanted} {sep_name}-separated fields, found {count[r]}")
        if self.text_columns:  # (a quote in a number or hex token already fails to parse)
            k = [column[name] for name in self.text_columns]
            quoted = (chunk.byte_at(start[k]) == ord('"')) & (length[k] > 0)
            check(quoted.any(axis=0), lambda r: "quoted fields are not supported (no field may contain the delimiter)")
            # The vocabulary keeps each value's text: bytes that are not UTF-8 have none
            bad_text = ~utf8_spans(chunk, start[k], length[k])
            check(bad_text.any(axis=0), lambda r: f"column {self.text_columns[int(np.argmax(bad_text[:, r]))]!r}: "
                  "not UTF-8 text (codec str); re-encode the file as UTF-8")

        if self.label is None:  # rows to score: the label is unknown
            labels = np.full(n, np.nan, dtype=np.float32)
        else:
            k = column[self.label]
            values, ok = parse_numbers(chunk, start[k], length[k])
            check(~ok | ((values != 0) & (values != 1)), bad_token(self.label, "is not a label (0 or 1)"))
            labels = values.astype(np.float32)

        cat_keys = np.zeros((len(self.single), n), dtype=np.int64)
        for parser, js in self.groups:
            ks = [column[self.single[j].name] for j in js]
            keys, ok, what = self._parse(chunk, parser, start[ks], length[ks])
            cat_keys[js] = keys
            for i in np.flatnonzero(~ok.all(axis=1)):
                if self.single[js[i]].on_bad_value == "oov":
                    cat_keys[js[i], ~ok[i]] = BAD_VALUE
                else:
                    check(~ok[i], bad_token(self.single[js[i]].name, what))
        cat_starts = None
        if any(c.codec == "str" for c in self.single):
            cat_starts = start[[column[c.name] for c in self.single]]

        mv = []
        for c in self.multi:
            k = column[c.name]
            mv.append(self._multi(chunk, c, start[k], length[k], n, check))

        group = None
        if self.group is not None:
            c = self.group
            if c in self.single:
                group = cat_keys[self.single.index(c)]
            else:
                k = column[c.name]
                group, ok, what = self._parse(chunk, c.codec, start[k:k + 1], length[k:k + 1])
                group = group[0]
                check(~ok[0], bad_token(c.name, what))
        keep = None
        if self.keep:
            ks = [column[c.name] for c in self.keep]
            keep, ok = parse_ints(chunk, start[ks], length[ks])
            keep, ok = keep.reshape(len(ks), n), ok.reshape(len(ks), n) & (length[ks] > 0)
            for i in np.flatnonzero(~ok.all(axis=1)):
                check(~ok[i], bad_token(self.keep[i].name, "is not an integer (kept raw values must be)"))
        time = None
        if self.time is not None:
            k = column[self.time.name]
            time, ok = parse_numbers(chunk, start[k], length[k])
            check(~ok, bad_token(self.time.name, "is not a number (time column)"))

        bad = np.zeros(n, dtype=bool)
        for mask, _ in reasons:
            bad |= mask
        return Decoded(total_lines=lines.total_lines, number=lines.number, bad=bad, reasons=reasons,
                       cat_keys=cat_keys, cat_starts=cat_starts, mv=mv, labels=labels, group=group,
                       keep=keep, time=time)

    def _parse(self, chunk: Chunk, parser: Any, start: np.ndarray, length: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, str]:
        """Keys [k, n], ok [k, n] and the complaint about a bad token, for columns sharing a parser."""
        if parser == "log2" or isinstance(parser, tuple):
            values, ok = parse_numbers(chunk, start, length)
            missing = length == 0
            if parser == "log2":
                # Criteo's rule is for counts: a fraction would be truncated, a value past int64 would
                # wrap to the missing token's key
                ok &= (values == np.floor(values)) & (np.abs(values) < 2.0 ** 62)
                keys = log2_buckets(np.where(ok, values, 0.0))
            else:
                boundaries = np.asarray(self.single[parser[1]].boundaries)
                keys = np.searchsorted(boundaries, values, side="right").astype(np.int64)
            keys[missing] = MISSING
            return keys, ok | missing, "is not an integer (rule log2)" if parser == "log2" else "is not a number"
        keys, ok = _token_keys(chunk, parser, start, length)
        what = {"int": "is not an integer (codec int)", "hex": "is not a hex token (codec hex)"}.get(parser, "")
        return keys, ok, what

    def _multi(self, chunk: Chunk, c: Column, s: np.ndarray, l: np.ndarray, n: int, check):
        owner, ts, tl = split_spans(chunk, s, l, ord(c.separator))
        # keep the first max_len pieces of each row
        kept = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left") < c.max_len
        owner, ts, tl = owner[kept], ts[kept], tl[kept]
        lengths = np.bincount(owner, minlength=n).astype(np.int64)
        keys, ok = _token_keys(chunk, c.codec, ts, tl)
        if not ok.all():
            first_bad = np.full(n, -1, dtype=np.int64)
            bad_pieces = np.flatnonzero(~ok)
            first_bad[owner[bad_pieces][::-1]] = bad_pieces[::-1]
            check(first_bad >= 0, lambda r: f"column {c.name!r}: value "
                  f"{chunk.text(int(ts[first_bad[r]]), int(tl[first_bad[r]]))!r} is not valid for codec {c.codec}")
        return lengths, keys, ts


def _token_keys(chunk: Chunk, codec: str, s: np.ndarray, l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if codec == "int":
        return parse_ints(chunk, s, l)
    if codec == "hex":
        return hex_keys(chunk, s, l)
    return hash_keys(chunk, s, l), np.ones(s.shape, dtype=bool)


def prepare_schema_csv(cfg: DatasetConfig, out_dir: str | Path, progress: bool = False,
                       schema: Optional[str | Path | Spec] = None, workers: int = 0,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Path:
    """`dataset.format: csv`: files described by the schema YAML `schema` (see the module doc)."""
    reject_csv_ids_keys(cfg, "csv")
    if schema is None:
        raise InputError("config key 'dataset.schema': format csv needs a schema file describing the columns")
    spec, where = load_spec(schema, _TOP_KEYS)
    layout = parse_layout(spec, where)
    plan, time_column = split_plan(cfg, spec, where, "csv")
    _check_min_count(cfg)
    fmt = CsvFormat(layout, cfg.min_count, time_column)
    return prepare_text(fmt, plan, out_dir, engine_options(spec, where, progress, workers, chunk_bytes), "csv")


def _check_min_count(cfg: DatasetConfig) -> None:
    if cfg.min_count < 1:
        raise InputError(f"config key 'dataset.min_count': must be >= 1, got {cfg.min_count}")
