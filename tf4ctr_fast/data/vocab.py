"""Vocabularies over int64 token keys (text.py): counting in pieces, thresholds, and the JSON form.

A field's vocabulary is a columns.IntVocab over its keys: known keys, ascending, get ids 2.. (0 is
padding, 1 is OOV). The key *codec* says how a key is written in schema.json, where a vocabulary maps
the raw token text to its id:
- "int": the decimal value ("" for a missing value); ids follow numeric order, as for csv_ids.
- "hex": the hex text ("" for missing); ids follow (width, value), i.e. text order at equal width.
- "str": the token text itself, recovered from the file; ids follow the 64-bit FNV-1a key order
  (deterministic, but not alphabetical).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .columns import FIRST_KNOWN_ID, IntVocab
from .text import BAD_VALUE, MISSING, hash_text, hex_text

CODECS = ("int", "hex", "str")
MAX_IDS = int(np.iinfo(np.int32).max)   # ids are stored as int32


class KeyCounter:
    """Occurrence counts of int64 keys, fed as per-chunk (unique keys, counts) runs.

    Runs are merged lazily, once the pending ones outweigh the merged table, so the total work stays
    O(n log n) and memory O(distinct keys), however many chunks there are. With `track_first`, each
    key also keeps the smallest "first position" it was reported with (for str keys: the file offset
    of its first occurrence, from which its text is read back).
    """

    def __init__(self, track_first: bool = False):
        self.track_first = track_first
        self._runs: list[tuple[np.ndarray, ...]] = []
        self._merged: Optional[tuple[np.ndarray, ...]] = None
        self._pending = 0

    def add(self, keys: np.ndarray, counts: np.ndarray, first: Optional[np.ndarray] = None) -> None:
        if len(keys) == 0:
            return
        self._runs.append((keys, counts, first) if self.track_first else (keys, counts))
        self._pending += len(keys)
        if self._pending > max(len(self._merged[0]) if self._merged else 0, 1 << 20):
            self._merge()

    def result(self) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(keys ascending, counts, first positions or None)."""
        self._merge()
        if self._merged is None:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, (empty if self.track_first else None)
        keys, counts, *first = self._merged
        return keys, counts, (first[0] if first else None)

    def _merge(self) -> None:
        if not self._runs:
            return
        runs = self._runs + ([self._merged] if self._merged is not None else [])
        keys, counts, *first = (np.concatenate(column) for column in zip(*runs))
        self._merged = _sum_by_key(keys, counts, first[0] if first else None, self.track_first)
        self._runs, self._pending = [], 0


def count_run(keys: np.ndarray, first: Optional[np.ndarray] = None
              ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(unique keys, counts, smallest `first` per key or None) of one chunk's keys."""
    if first is None:  # np.unique sorts the keys alone, which numpy does with SIMD: several times faster
        uniq, counts = np.unique(keys, return_counts=True)
        return uniq, counts, None
    keys, counts, first = _sum_by_key(keys, np.ones(len(keys), dtype=np.int64), first, True)
    return keys, counts, first


def _sum_by_key(keys: np.ndarray, counts: np.ndarray, first: Optional[np.ndarray], track_first: bool
                ) -> tuple[np.ndarray, ...]:
    order = np.argsort(keys)  # sums and minima do not care about the order of equal keys
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else order
    out = (keys[starts], np.add.reduceat(counts[order], starts) if len(keys) else counts)
    if track_first:
        out += (np.minimum.reduceat(first[order], starts) if len(keys) else first,)
    return out


def fit(keys: np.ndarray, counts: np.ndarray, min_count: int, where: str) -> IntVocab:
    """Keys seen at least min_count times become known; `where` names the field for the int32 check."""
    known = keys[(counts >= min_count) & (keys != BAD_VALUE)]
    if len(known) + FIRST_KNOWN_ID > MAX_IDS:
        raise InputError(f"{where}: {len(known):,} known values overflow int32 ids; raise min_count")
    return IntVocab(known)


def key_text(codec: str, keys: np.ndarray) -> list[str]:
    """The text of int and hex keys (str keys need the file: see recover_text in the engine)."""
    if codec == "int":
        return ["" if k == MISSING else str(k) for k in keys.tolist()]
    if codec == "hex":
        return [hex_text(k) for k in keys.tolist()]
    raise ValueError(f"codec {codec!r} keys cannot be written without their text")


def to_json(vocab: IntVocab, texts: list[str]) -> dict[str, int]:
    """schema.json form: token text -> id (texts aligned with vocab.known)."""
    return {text: i + FIRST_KNOWN_ID for i, text in enumerate(texts)}


def from_json(codec: str, vocab: dict[str, int], where: str) -> IntVocab:
    """Rebuild a vocabulary from schema.json, e.g. to encode new rows for prediction."""
    try:
        pairs = sorted((int(i), text_key(codec, text)) for text, i in vocab.items())
    except ValueError:
        raise InputError(f"{where}: vocabulary entry is not valid for codec {codec!r}") from None
    ids = np.array([i for i, _ in pairs], dtype=np.int64)
    known = np.array([k for _, k in pairs], dtype=np.int64)
    # (compared, not np.diff: the difference from MISSING, int64's minimum, overflows)
    if not (np.array_equal(ids, np.arange(FIRST_KNOWN_ID, FIRST_KNOWN_ID + len(ids)))
            and np.all(known[1:] > known[:-1])):
        raise InputError(f"{where}: vocabulary ids are not 2.. in ascending key order")
    return IntVocab(known)


def text_key(codec: str, text: str) -> int:
    """The key of one token text (inverse of key_text; hash for str)."""
    if codec == "int":
        return int(MISSING) if text == "" else int(text)
    if codec == "hex":
        return (len(text) << 56) | int(text, 16) if text else 0
    if codec == "str":
        return hash_text(text)
    raise ValueError(f"unknown codec {codec!r}")


def count_of(counter: KeyCounter, key: int) -> int:
    """How many times `counter` saw `key`."""
    keys, counts, _ = counter.result()
    at = int(np.searchsorted(keys, key))
    return int(counts[at]) if at < len(keys) and keys[at] == key else 0
