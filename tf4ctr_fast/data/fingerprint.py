"""The encoding fingerprint of a prepared schema: are two folders' ids the same ids?

A model's embedding row i of field f means "raw value v" only for the vocabulary it was trained with.
Data prepared again under the same name (another min_count, other raw files) can keep every shape
and still mean other values, or grow a vocabulary past the model's tables. `fingerprint` hashes what
fixes the meaning of the ids: the field list in column order and each field's schema entry (name,
kind, vocab_size, codec, vocabulary, bucketing, bag separator / max_len / pooling, ...), all but
min_count, which only chose the vocabulary (hashed itself). Rows, labels and splits are not in it:
a test split may change, its encoding may not.

write_schema stores it in every schema.json (so a checkpoint's schema carries it too), for people and
tools comparing folders; `check_same_encoding` recomputes it from both schemas, so folders and
checkpoints written before it existed are checked the same way.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import InputError

FIELD_LISTS = ("fields", "multi_valued_fields")
_NOT_ENCODING = ("min_count",)


def _encoding(schema: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {key: [{k: v for k, v in entry.items() if k not in _NOT_ENCODING} for entry in schema.get(key, [])]
            for key in FIELD_LISTS}


def fingerprint(schema: dict[str, Any]) -> str:
    """sha256 (hex) of the schema's encoding: equal fingerprints, interchangeable ids."""
    text = json.dumps(_encoding(schema), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_encoding(checkpoint: Path, trained: dict[str, Any], data: Path, schema: dict[str, Any]) -> None:
    """InputError naming the checkpoint, the data folder and the first difference, unless the data
    folder's schema encodes ids as the schema the checkpoint was trained on."""
    if fingerprint(trained) == fingerprint(schema):
        return
    raise InputError(f"{data} is not encoded like the data {checkpoint} was trained on: "
                     f"{_first_difference(_encoding(trained), _encoding(schema))} (checkpoint vs data); "
                     "prepare that data again with the training run's dataset options, or train on this folder")


def _first_difference(trained: dict[str, list[dict]], data: dict[str, list[dict]]) -> str:
    for key in FIELD_LISTS:
        names = ([e.get("name") for e in trained[key]], [e.get("name") for e in data[key]])
        if names[0] != names[1]:
            return f"{key} {names[0]} vs {names[1]}"
        for a, b in zip(trained[key], data[key]):
            for k in sorted(set(a) | set(b), key=lambda k: (k == "vocab", k)):  # sizes before contents
                if a.get(k) != b.get(k):
                    if k == "vocab":
                        return f"field '{a['name']}' vocabulary: same size, other values"
                    return f"field '{a['name']}' {k.replace('_', ' ')} {a.get(k)!r} vs {b.get(k)!r}"
    raise AssertionError("fingerprints differ but the encodings do not")
