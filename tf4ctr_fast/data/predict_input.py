"""Rows to score, encoded like the training data: `tf4ctr-fast predict` for criteo, csv and libfm.

A training folder's schema.json says how its rows were decoded (schema["options"]: the format, the
CSV layout or the libfm fields) and encoded (each field's codec and vocabulary). The input is decoded
by the same format, rebuilt from those options, and encoded with those vocabularies by the streaming
engine (engine.encode_text): no fitting and no split; every good row goes, in file order, into the one
split "predict" of a prepared folder. Unseen values map to OOV (1), as in a valid or test split; bad
rows stop with file:line, or are dropped and counted under the training schema's `on_bad_row: skip`.

Labels are optional. With a header (csv with `header: true`, a Criteo CSV) the header says whether the
label column is there. Without one (Kaggle TSV, headerless csv, libfm) the rows are taken to start
with the label unless has_label=False (`predict --no-label`): Criteo's test.txt is train.txt without
its first column; libfm rows are then `idx:1 idx:1 ...`. Without labels the folder's labels.npy holds
NaN (the loaders want a labels column) and its schema's "label" is null.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from .columns import IntVocab
from .criteo import criteo_layout
from .engine import DEFAULT_CHUNK_BYTES, EngineOptions, FieldInfo, TextFormat, encode_text, read_header
from .libfm import LibfmFormat
from .schema_csv import CsvFormat, CsvLayout, header_names
from .vocab import from_json

STREAMING_FORMATS = ("criteo", "csv", "libfm")
PREDICT_SPLIT = "predict"
_WHERE = "the model's training schema"   # how messages name the schema (it travels in the checkpoint)


def encode_for_predict_text(input_path: str | Path, schema: dict[str, Any], out_dir: str | Path,
                            has_label: Optional[bool] = None, progress: bool = True, workers: int = 0,
                            chunk_bytes: int = DEFAULT_CHUNK_BYTES, vocabs: Optional[list[IntVocab]] = None) -> Path:
    """Encode `input_path` with the training `schema` into the prepared folder `out_dir` (one split,
    PREDICT_SPLIT). has_label: None = from the header, or True for a file without one. vocabs: every
    field's vocabulary, single-valued then multi-valued, in place of the schema's (an export's schema
    has none: tf4ctr_fast/export.py)."""
    path = Path(input_path)
    options = _options(schema)
    fmt = predict_format(options, path, has_label)
    if vocabs is None:
        vocabs = _vocabularies(schema, "fields", fmt.categorical) + _vocabularies(schema, "multi_valued_fields",
                                                                                 fmt.multi_valued)
    else:
        _check_fields(schema, "fields", fmt.categorical)
        _check_fields(schema, "multi_valued_fields", fmt.multi_valued)
    single = len(fmt.categorical)
    vocabs, mv_vocabs = vocabs[:single], vocabs[single:]
    opts = EngineOptions(workers=workers, chunk_bytes=chunk_bytes, progress=progress,
                         on_bad_row=options.get("on_bad_row", "error"))
    return encode_text(fmt, path, out_dir, opts, vocabs, mv_vocabs, schema, PREDICT_SPLIT)


def predict_format(options: dict[str, Any], path: Path, has_label: Optional[bool]) -> TextFormat:
    """The training format, from schema["options"], for the rows of `path`."""
    try:
        if options["format"] == "libfm":
            return LibfmFormat(options["fields"], options["blocks"], options["min_count"],
                               has_label=has_label is not False)
        recorded = options["layout"]
        # Criteo's layout is a preset (rows may end early), so it is rebuilt, not read back
        layout = (criteo_layout(recorded["delimiter"], recorded["header"]) if options["format"] == "criteo"
                  else CsvLayout.from_json(recorded))
        min_count = options["min_count"]
    except (KeyError, TypeError) as e:
        raise InputError(f"{_WHERE}: options are incomplete ({type(e).__name__}: {e})") from None
    if not _csv_has_label(layout, path, has_label):
        layout = layout.without_label()
    return CsvFormat(layout, min_count)


def _options(schema: dict[str, Any]) -> dict[str, Any]:
    options = schema.get("options") or {}
    if options.get("format") not in STREAMING_FORMATS:
        raise InputError(f"{_WHERE}: dataset format {options.get('format')!r} is not one of "
                         f"{', '.join(STREAMING_FORMATS)}")
    return options


def _csv_has_label(layout: CsvLayout, path: Path, has_label: Optional[bool]) -> bool:
    if has_label is not None or not layout.header:
        return has_label is not False
    label = next(c.name for c in layout.columns if c.kind == "label")
    return label in header_names(read_header(path), layout.delimiter)


def _check_fields(schema: dict[str, Any], key: str, infos: list[FieldInfo]) -> list[dict[str, Any]]:
    """schema[key], unless its fields are not the ones the rebuilt format decodes."""
    entries = schema.get(key, [])
    if [(e.get("name"), e.get("codec")) for e in entries] != [(f.name, f.codec) for f in infos]:
        raise InputError(f"{_WHERE}: key '{key}' does not match the fields its options describe")
    return entries


def _vocabularies(schema: dict[str, Any], key: str, infos: list[FieldInfo]) -> list[IntVocab]:
    """The vocabularies of schema[key], checked against the fields the rebuilt format decodes."""
    entries = _check_fields(schema, key, infos)
    return [from_json(e["codec"], e["vocab"], f"{_WHERE}: field '{e['name']}'") for e in entries]
