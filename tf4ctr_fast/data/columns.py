"""The prepared-dataset folder: memory-mappable id columns plus schema.json (docs/ARCHITECTURE.md).

```
<dir>/schema.json           written last; its presence marks the folder complete
<dir>/<split>/ids.npy       int32 [N, F]; column j is field j of schema["fields"]
<dir>/<split>/labels.npy    float32 [N], 0/1
<dir>/<split>/group.npy     int64 [N], raw group value, when schema["group_field"] is set
<dir>/<split>/keep.npy      int64 [N, K], raw values of schema["keep_columns"], when non-empty
<dir>/<split>/mv_<j>.values.npy   int32 [nnz]  ids of multi-valued field j of schema["multi_valued_fields"]
<dir>/<split>/mv_<j>.offsets.npy  int64 [N+1]  row i's ids are values[offsets[i]:offsets[i + 1]]
```
Id rules: 0 padding, 1 OOV, known raw values 2.. in ascending raw-value order (for text fields of the
streaming formats: in the order of their 64-bit keys, docs/data.md). A field's "vocab" maps the raw
value (as a string) to its id; it is null for generated data that never had raw values.
Multi-valued fields (docs/data.md) are not columns of ids.npy: they are jagged, one pair per field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_dir
from .fingerprint import fingerprint

FORMAT_VERSION = 1
SCHEMA_FILE = "schema.json"
PREPARED_FROM = "prepared_from.json"  # prepare.py: the DatasetConfig a folder was prepared from
PADDING_ID = 0
OOV_ID = 1
FIRST_KNOWN_ID = 2
_LARGE_VOCAB = 1 << 14


@dataclass(frozen=True)
class IntVocab:
    """The known raw integer values of one field, ascending: value known[i] has id i + 2."""

    known: np.ndarray  # int64, sorted, unique

    @classmethod
    def fit(cls, values: np.ndarray, min_count: int) -> IntVocab:
        """Values seen at least `min_count` times become known; the rest will map to OOV."""
        uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
        return cls(uniq[counts >= min_count])

    @classmethod
    def from_field(cls, field: dict[str, Any], where: str) -> IntVocab:
        """Rebuild from a schema field; `where` names the schema for error messages."""
        vocab = field.get("vocab")
        if vocab is None:
            raise InputError(f"{where}: field '{field['name']}' has no vocabulary (generated data "
                             "has no raw values to encode)")
        try:
            pairs = sorted((int(i), int(raw)) for raw, i in vocab.items())
        except (TypeError, ValueError):
            raise InputError(f"{where}: field '{field['name']}' has a non-integer vocabulary") from None
        ids = np.array([i for i, _ in pairs], dtype=np.int64)
        known = np.array([raw for _, raw in pairs], dtype=np.int64)
        if not (np.array_equal(ids, np.arange(FIRST_KNOWN_ID, FIRST_KNOWN_ID + len(ids)))
                and np.all(known[1:] > known[:-1])):   # not np.diff: it overflows across 2^63
            raise InputError(f"{where}: field '{field['name']}': vocabulary ids are not 2.. in "
                             "ascending raw-value order")
        return cls(known)

    @property
    def size(self) -> int:
        """Number of ids including padding and OOV."""
        return len(self.known) + FIRST_KNOWN_ID

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Raw values -> int32 ids; unknown values -> OOV."""
        values = np.asarray(values, dtype=np.int64)
        if len(self.known) == 0:
            return np.full(values.shape, OOV_ID, dtype=np.int32)
        if len(self.known) > _LARGE_VOCAB and values.size > _LARGE_VOCAB:
            # Binary searches in a large table miss the cache; look up each distinct value once.
            distinct, inverse = np.unique(values, return_inverse=True)
            return self._lookup(distinct)[inverse].reshape(values.shape)
        return self._lookup(values)

    def _lookup(self, values: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(self.known, values), len(self.known) - 1)
        hit = self.known[pos] == values
        return np.where(hit, pos + FIRST_KNOWN_ID, OOV_ID).astype(np.int32)

    def to_json(self) -> dict[str, int]:
        return {str(raw): i + FIRST_KNOWN_ID for i, raw in enumerate(self.known.tolist())}


def categorical_field(name: str, vocab_size: int, vocab: Optional[dict[str, int]]) -> dict[str, Any]:
    """One entry of schema["fields"]."""
    return {"name": name, "kind": "categorical", "vocab_size": int(vocab_size),
            "padding_id": PADDING_ID, "oov_id": OOV_ID, "vocab": vocab}


@dataclass(frozen=True)
class Split:
    ids: np.ndarray                # int32 [N, F]
    labels: np.ndarray             # float32 [N]
    group: Optional[np.ndarray]    # int64 [N]
    keep: Optional[np.ndarray]     # int64 [N, K]
    num_rows: int
    # multi-valued field name -> (values int32 [nnz], offsets int64 [N + 1])
    multi_valued: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


# (ids, labels, group, keep), as handed to write_prepared
SplitArrays = tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]


def write_prepared(out_dir: str | Path, schema: dict[str, Any], splits: dict[str, SplitArrays]) -> Path:
    """Write a prepared folder atomically; sets schema "format_version" and "splits" (row counts).

    `schema` carries "fields", "label", "group_field", "keep_columns", "options", "sources".
    Inconsistent arrays are a programming error (ValueError), not bad user input.
    """
    out_dir = Path(out_dir)
    schema = dict(schema, format_version=FORMAT_VERSION,
                  splits={name: int(arrays[0].shape[0]) for name, arrays in splits.items()})
    checked = {name: _checked_arrays(schema, name, arrays) for name, arrays in splits.items()}
    with atomic_dir(out_dir, check_replaceable) as tmp:
        for name, arrays in checked.items():
            (tmp / name).mkdir()
            for file, arr in arrays.items():
                np.save(tmp / name / file, arr, allow_pickle=False)
        write_schema(tmp, schema, schema["splits"])
    return out_dir


def write_schema(folder: Path, schema: dict[str, Any], splits: dict[str, int]) -> dict[str, Any]:
    """Write schema.json (setting "format_version", "splits" and the encoding's "fingerprint",
    data/fingerprint.py); call it after every array is written.

    Last, so that a folder with a schema is a complete folder even without the atomic rename.
    """
    schema = dict(schema, format_version=FORMAT_VERSION, splits={k: int(v) for k, v in splits.items()},
                  fingerprint=fingerprint(schema))
    (Path(folder) / SCHEMA_FILE).write_text(json.dumps(schema, sort_keys=True, indent=1) + "\n")
    return schema


def check_replaceable(path: Path) -> None:
    """Return if `path` is a prepared folder, which a new prepare may replace; else InputError naming it.

    A prepared folder is a real folder (not a link) holding a schema.json with its splits, those
    splits' folders of .npy arrays, optionally prepared_from.json, and nothing else: a folder that
    also holds anything a user put there (raw files, notes) is not replaced, and neither is a file.
    """
    def refuse(why: str) -> NoReturn:
        raise InputError(f"{path}: {why}, and prepare replaces nothing but a folder it prepared: "
                         "set dataset.prepared_dir (or dataset.name) to another path, or move this one away")

    if path.is_symlink() or not path.is_dir():
        refuse("exists and is not a folder" if not path.is_symlink() else "is a symbolic link")
    try:
        schema = json.loads((path / SCHEMA_FILE).read_text())
        splits = set(schema["splits"])
    except (OSError, ValueError, TypeError, KeyError):
        refuse(f"is not a prepared folder (no readable {SCHEMA_FILE} with its splits)")
    for entry in sorted(path.iterdir()):
        if entry.name in splits and entry.is_dir() and not entry.is_symlink():
            stray = [f for f in sorted(entry.iterdir()) if f.suffix != ".npy" or not f.is_file()]
            if stray:
                refuse(f"{stray[0].relative_to(path)} is not part of a prepared folder")
        elif not entry.is_file() or not (entry.name in (SCHEMA_FILE, PREPARED_FROM) or _is_marker_temp(entry.name)):
            refuse(f"{entry.name} is not part of a prepared folder")


def _is_marker_temp(name: str) -> bool:
    """The temp file of an interrupted PREPARED_FROM write (io_utils.atomic_file)."""
    return name.startswith(f".{PREPARED_FROM}.") and name.endswith(".tmp")


def _checked_arrays(schema: dict[str, Any], split: str, arrays: SplitArrays) -> dict[str, np.ndarray]:
    ids, labels, group, keep = arrays
    vocab_sizes = np.array([f["vocab_size"] for f in schema["fields"]])
    n, num_keep = ids.shape[0], len(schema["keep_columns"])
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    out = {"ids.npy": ids, "labels.npy": np.ascontiguousarray(labels, dtype=np.float32)}
    if ids.ndim != 2 or ids.shape[1] != len(vocab_sizes) or out["labels.npy"].shape != (n,):
        raise ValueError(f"split {split}: ids {ids.shape} / labels {labels.shape} do not match "
                         f"{len(vocab_sizes)} fields")
    if n and (ids.min() < 0 or np.any(ids.max(axis=0) >= vocab_sizes)):
        raise ValueError(f"split {split}: ids outside [0, vocab_size)")
    if (group is None) != (schema["group_field"] is None):
        raise ValueError(f"split {split}: group array and schema group_field disagree")
    if group is not None:
        out["group.npy"] = np.ascontiguousarray(group, dtype=np.int64)
        if out["group.npy"].shape != (n,):
            raise ValueError(f"split {split}: group shape {group.shape}, expected ({n},)")
    if (keep is None) != (num_keep == 0):
        raise ValueError(f"split {split}: keep array and schema keep_columns disagree")
    if keep is not None:
        out["keep.npy"] = np.ascontiguousarray(keep, dtype=np.int64)
        if out["keep.npy"].shape != (n, num_keep):
            raise ValueError(f"split {split}: keep shape {keep.shape}, expected ({n}, {num_keep})")
    return out


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    schema: dict[str, Any]

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.schema["fields"]]

    @property
    def vocab_sizes(self) -> list[int]:
        return [int(f["vocab_size"]) for f in self.schema["fields"]]

    @property
    def group_field(self) -> Optional[str]:
        return self.schema["group_field"]

    @property
    def keep_columns(self) -> list[str]:
        return list(self.schema["keep_columns"])

    @property
    def multi_valued_fields(self) -> list[dict[str, Any]]:
        """Schema entries of the jagged fields (kind "multi_valued": vocab_size, pooling, max_len, ...)."""
        return list(self.schema.get("multi_valued_fields", []))

    def has_split(self, name: str) -> bool:
        return name in self.schema["splits"]

    def split(self, name: str) -> Split:
        """Memory-mapped arrays of one split; shapes are checked against the schema."""
        if not self.has_split(name):
            raise InputError(f"{self.path}: prepared dataset has no split '{name}' "
                             f"(it has: {', '.join(self.schema['splits'])})")
        n = int(self.schema["splits"][name])
        num_keep = len(self.keep_columns)
        ids = self._load(name, "ids.npy", (n, len(self.schema["fields"])))
        labels = self._load(name, "labels.npy", (n,))
        group = self._load(name, "group.npy", (n,)) if self.group_field is not None else None
        keep = self._load(name, "keep.npy", (n, num_keep)) if num_keep else None
        multi_valued = {}
        for j, f in enumerate(self.multi_valued_fields):
            offsets = self._load(name, f"mv_{j}.offsets.npy", (n + 1,))
            values = self._load(name, f"mv_{j}.values.npy", (int(offsets[-1]),))
            if offsets[0] != 0:  # (monotonicity is not checked: that would read every offset)
                raise InputError(f"{self.path / name}/mv_{j}.offsets.npy: offsets must start at 0")
            multi_valued[f["name"]] = (values, offsets)
        return Split(ids=ids, labels=labels, group=group, keep=keep, num_rows=n, multi_valued=multi_valued)

    def _load(self, split: str, file: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.path / split / file
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read prepared array ({e})") from None
        if arr.shape != shape:
            raise InputError(f"{path}: shape {arr.shape}, but {self.path / SCHEMA_FILE} says {shape}")
        return arr


def load_prepared(path: str | Path) -> PreparedDataset:
    path = Path(path)
    schema_path = path / SCHEMA_FILE
    if not schema_path.is_file():
        raise InputError(f"{path}: not a prepared dataset (no {SCHEMA_FILE}; run `tf4ctr-fast prepare`)")
    try:
        schema = json.loads(schema_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{schema_path}: unreadable schema ({e})") from None
    version = schema.get("format_version") if isinstance(schema, dict) else None
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: prepared-dataset format_version {version!r} is not supported "
                         f"(this version reads {FORMAT_VERSION}); prepare it again")
    return PreparedDataset(path=path, schema=schema)
