"""Serving artifacts: a trained model as a torch.export program, an AOTInductor package and the
raw-value encoder, in one folder that needs torch (and numpy for the encoder) but not this package.

    tf4ctr-fast export --checkpoint RUN_DIR --output DIR

DIR/model.pt2        torch.export ExportedProgram: ids int64 [B, F] (single-valued fields in prepared
                     order), then per multi-valued field values int64 [nnz] and offsets int64 [B + 1]
                     -> click probabilities float32 [B]; the batch dimension is dynamic
DIR/model_aoti.pt2   the same program compiled by AOTInductor for this machine's CPU (no CUDA package
                     yet): Python `torch._inductor.aoti_load_package(path).loader.run([ids, ...])`
                     (its runner; calling the loaded object parses its specs on every call), or C++
DIR/vocab_keys.npy   int64: every field's known keys, ascending, field after field (prepared order)
DIR/vocab_offsets.npy int64 [fields + 1]: field j's keys are vocab_keys[offsets[j]:offsets[j + 1]];
                     the key of rank r has id r + 2 (0 padding, 1 OOV): np.searchsorted encodes
DIR/manifest.json    fields, inputs, output, versions, the data fingerprint, the prepare options
                     (docs/serving.md)

What is exported is always the reference form of the model (plain nn.Embedding tables, the op-by-op
TF4CTR head): a torchrec-backend checkpoint is converted at export time (models.copy_weights), and the
fused head's compiled op is not needed. Same weights, same probabilities (tests/test_export.py);
docs/serving.md says why this beats exporting the TorchRec module.

Ids outside a field's table (negative, or >= its vocabulary size) are mapped to the OOV id inside the
program, before any lookup: a client's bad id can neither crash the server nor read another row.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data.columns import FIRST_KNOWN_ID, IntVocab
from .errors import InputError
from .features import BagField, Features, bag_fields_of
from .io_utils import atomic_dir
from .layers.init import PADDING_ID

ARTIFACT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PROGRAM_FILE = "model.pt2"
AOTI_FILE = "model_aoti.pt2"
KEYS_FILE = "vocab_keys.npy"
OFFSETS_FILE = "vocab_offsets.npy"
ARTIFACT_FILES = (MANIFEST_FILE, PROGRAM_FILE, AOTI_FILE, KEYS_FILE, OFFSETS_FILE)
OOV_ID = 1


def in_vocabulary(ids: Tensor, vocab_sizes: Tensor) -> Tensor:
    """ids, with every id outside [0, vocab_size) replaced by OOV (vocab_sizes broadcasts over ids)."""
    return torch.where((ids < 0) | (ids >= vocab_sizes), torch.full_like(ids, OOV_ID), ids)


class ServingModel(nn.Module):
    """What is exported: forward(ids [B, F], values_0, offsets_0, values_1, offsets_1, ...) -> σ(logit) [B].

    One (values [nnz], offsets [B + 1]) pair per multi-valued field, in schema order (flat tensors:
    a serving client needs no Python structure). Out-of-vocabulary ids -> OOV first (module docstring).
    """

    def __init__(self, model: nn.Module, vocab_sizes: Sequence[int], bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.model = model
        self.bag_names = [b.name for b in bag_fields]
        self.register_buffer("vocab_sizes", torch.tensor(list(vocab_sizes), dtype=torch.int64), persistent=False)
        self.register_buffer("bag_vocab_sizes", torch.tensor([b.vocab_size for b in bag_fields], dtype=torch.int64),
                             persistent=False)

    def forward(self, ids: Tensor, *bags: Tensor) -> Tensor:
        ids = in_vocabulary(ids, self.vocab_sizes)
        if self.bag_names:
            x = Features(ids, {name: (in_vocabulary(bags[2 * j], self.bag_vocab_sizes[j]), bags[2 * j + 1])
                               for j, name in enumerate(self.bag_names)})
        else:
            x = ids
        return torch.sigmoid(self.model(x)["logit"])


# ------------------------------------------------------------------------------------------------
# building the serving model from a checkpoint


def serving_model_from(model: nn.Module, cfg: Any, schema: dict[str, Any]) -> ServingModel:
    """The reference form of a loaded model (either backend, either head) wrapped for serving, eval mode.

    cfg: the run's RunConfig; schema: its prepared schema. The weights are copied, not shared."""
    from .models import copy_weights
    from .train.checkpoint import _build_model

    fields = schema["fields"]
    reference = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backend="reference", head="reference"))
    bags = bag_fields_of(schema)
    dense = _build_model(reference, [f["name"] for f in fields], [int(f["vocab_size"]) for f in fields],
                         torch.device("cpu"), fused=False, bag_fields=bags)
    copy_weights(model, dense)
    if cfg.model.backend == "torchrec":
        # The torchrec tables drop padding ids before the lookup; nn.Embedding reads row 0. Training
        # keeps that row zero on both backends, but only a zero row makes the two equal for any weights.
        with torch.no_grad():
            for tables in dense.field_tables():
                for weight in tables.field_weights().values():
                    weight[PADDING_ID].zero_()
    return ServingModel(dense, [int(f["vocab_size"]) for f in fields], bags).eval()


def example_inputs(num_fields: int, bag_fields: Sequence[BagField], batch: int = 4) -> tuple[Tensor, ...]:
    """Inputs of ServingModel's signature: `batch` rows of OOV ids, bags of one OOV value each."""
    out = [torch.full((batch, num_fields), OOV_ID, dtype=torch.int64)]
    for _ in bag_fields:
        out += [torch.full((batch,), OOV_ID, dtype=torch.int64), torch.arange(batch + 1, dtype=torch.int64)]
    return tuple(out)


def export_program(serving: ServingModel, num_fields: int, bag_fields: Sequence[BagField]
                   ) -> torch.export.ExportedProgram:
    """torch.export of the serving model with a dynamic batch (and dynamic bag sizes)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 30)
    bags: list[Any] = []
    for j, _ in enumerate(bag_fields):
        bags += [{0: torch.export.Dim(f"nnz_{j}", min=0, max=1 << 40)}, {0: batch + 1}]
    with torch.no_grad():   # (dynamic_shapes follows forward's signature: ids, then the *bags tuple)
        return torch.export.export(serving, example_inputs(num_fields, bag_fields),
                                   dynamic_shapes=({0: batch}, tuple(bags)) if bags else ({0: batch},),
                                   strict=False)


# Inductor options of a latency-tuned AOTI package (export --aoti-tuned). Freezing lets Inductor
# prepack the weights as constants; max_autotune then benchmarks its own C++ GEMM template against the
# ATen (MKL) call per Linear, at the example batch (4), and fuses the BatchNorm/ReLU that follow into
# the GEMM where the template wins. TF4CTR (Criteo config, 1 thread): batch 1 about 1.3-1.7x faster,
# batch 16 and up 1.1-1.8x slower than the default options (docs/serving.md); twice the compile time.
AOTI_TUNED_OPTIONS = {"freezing": True, "max_autotune": True}


def compile_aoti(program: torch.export.ExportedProgram, path: Path, tuned: bool = False) -> Path:
    """AOTInductor package of `program` at `path` (for the device the program's weights are on), with
    Inductor's default options, or AOTI_TUNED_OPTIONS (tuned: for latency at small batches)."""
    import torch._inductor

    return Path(torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs=dict(AOTI_TUNED_OPTIONS) if tuned else {}))


# ------------------------------------------------------------------------------------------------
# the encoder: vocabularies as sorted keys


def field_vocabulary(field: dict[str, Any], where: str) -> Optional[IntVocab]:
    """The known keys of a schema field; None for generated (synthetic) fields, which have no raw values."""
    from .data.vocab import from_json

    if field.get("vocab") is None:
        return None
    if field.get("codec"):
        return from_json(field["codec"], field["vocab"], f"{where}: field '{field['name']}'")
    return IntVocab.from_field(field, where)


def _encoder_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return list(schema["fields"]) + list(schema.get("multi_valued_fields", []))


def write_vocabularies(folder: Path, schema: dict[str, Any], where: str) -> list[Optional[int]]:
    """KEYS_FILE and OFFSETS_FILE in folder; returns each field's number of known keys (None: no vocabulary)."""
    vocabs = [field_vocabulary(f, where) for f in _encoder_fields(schema)]
    keys = [v.known.astype(np.int64) if v is not None else np.zeros(0, dtype=np.int64) for v in vocabs]
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64)
    np.save(folder / KEYS_FILE, np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64))
    np.save(folder / OFFSETS_FILE, offsets)
    return [len(v.known) if v is not None else None for v in vocabs]


def schema_without_vocabularies(schema: dict[str, Any]) -> dict[str, Any]:
    """The prepared schema minus the vocabulary dicts (they are in KEYS_FILE): how predict reads rows."""
    out = dict(schema)
    for key in ("fields", "multi_valued_fields"):
        if key in schema:
            out[key] = [{k: v for k, v in f.items() if k != "vocab"} for f in schema[key]]
    return out


# ------------------------------------------------------------------------------------------------
# export / load


def _versions() -> dict[str, str]:
    try:
        ours = importlib.metadata.version("tf4ctr_fast")
    except importlib.metadata.PackageNotFoundError:
        ours = "unknown"
    return {"torch": torch.__version__, "tf4ctr_fast": ours, "numpy": np.__version__}


def _check_output_folder(path: Path) -> None:
    """An export replaces only a folder that holds an export and nothing else."""
    if path.is_symlink() or not path.is_dir():
        raise InputError(f"--output {path}: exists and is not an export folder; choose another --output")
    extra = sorted(p.name for p in path.iterdir() if p.name not in ARTIFACT_FILES)
    if extra or not (path / MANIFEST_FILE).is_file():
        raise InputError(f"--output {path}: is not an export folder (holds {extra[:3] or 'no manifest.json'}); "
                         "export replaces nothing but a folder it wrote: choose another --output")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, aoti: bool = True,
                      aoti_tuned: bool = False) -> Path:
    """Write the serving folder of a checkpoint (file or run folder) at `output`, atomically
    (aoti: also the AOTInductor package, compiled with compile_aoti(tuned=aoti_tuned))."""
    from .train.checkpoint import load_checkpoint, read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    model, cfg, schema = load_checkpoint(path, "cpu")
    epoch = int(read_checkpoint(path)["epoch"])
    serving = serving_model_from(model, cfg, schema)
    bags = bag_fields_of(schema)
    fields = schema["fields"]
    program = export_program(serving, len(fields), bags)
    output = Path(output)
    with atomic_dir(output, _check_output_folder) as tmp:
        known = write_vocabularies(tmp, schema, f"{path}: schema")
        torch.export.save(program, tmp / PROGRAM_FILE)
        if aoti:
            compile_aoti(program, tmp / AOTI_FILE, tuned=aoti_tuned)
        aoti_options = (dict(AOTI_TUNED_OPTIONS) if aoti_tuned else {}) if aoti else None
        manifest = _manifest(cfg, schema, bags, known, path, epoch, aoti_options)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return output


def _manifest(cfg: Any, schema: dict[str, Any], bags: Sequence[BagField], known: list[Optional[int]],
              checkpoint: Path, epoch: int, aoti_options: Optional[dict[str, Any]]) -> dict[str, Any]:
    """aoti_options: the Inductor options the AOTI package was compiled with; None: no package."""
    from .data.fingerprint import fingerprint

    fields = schema["fields"]
    inputs: list[dict[str, Any]] = [{"name": "ids", "dtype": "int64", "shape": ["batch", len(fields)],
                                     "columns": [f["name"] for f in fields]}]
    for b in bags:
        inputs += [{"name": f"{b.name}.values", "dtype": "int64", "shape": ["nnz"], "field": b.name},
                   {"name": f"{b.name}.offsets", "dtype": "int64", "shape": ["batch + 1"], "field": b.name}]

    def entry(f: dict[str, Any], n: Optional[int]) -> dict[str, Any]:
        keep = ("name", "kind", "codec", "bucket", "boundaries", "separator", "max_len", "pooling", "vocab_size")
        return {**{k: f[k] for k in keep if k in f}, "num_known": n}

    single = len(fields)
    return {
        "artifact_version": ARTIFACT_VERSION,
        "files": {"program": PROGRAM_FILE, "aoti_package": AOTI_FILE if aoti_options is not None else None,
                  "vocab_keys": KEYS_FILE, "vocab_offsets": OFFSETS_FILE},
        "aoti_inductor_options": aoti_options,
        "model": {"name": cfg.model.name, "trained_backend": cfg.model.backend, "exported_as": "reference",
                  "config": dataclasses.asdict(cfg.model), "checkpoint": str(checkpoint), "epoch": epoch},
        "inputs": inputs,
        "output": {"name": "probability", "dtype": "float32", "shape": ["batch"]},
        "ids": {"padding": 0, "oov": OOV_ID, "first_known": FIRST_KNOWN_ID,
                "out_of_range": "mapped to oov inside the program"},
        "fields": [entry(f, n) for f, n in zip(fields, known[:single])],
        "multi_valued_fields": [entry(f, n) for f, n in zip(schema.get("multi_valued_fields", []), known[single:])],
        "fingerprint": schema.get("fingerprint") or fingerprint(schema),
        "schema": schema_without_vocabularies(schema),
        "versions": _versions(),
    }


class ExportedModel:
    """An export folder opened for scoring (`predict --model`): the manifest, the vocabularies and
    the program. `torch.export.load` alone needs none of this class (docs/serving.md)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST_FILE
        if not manifest_path.is_file():
            raise InputError(f"--model {self.folder}: no {MANIFEST_FILE}; not an export folder "
                             "(write one with `tf4ctr-fast export`)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{manifest_path}: not readable JSON ({e})") from None
        if self.manifest.get("artifact_version") != ARTIFACT_VERSION:
            raise InputError(f"{manifest_path}: artifact version {self.manifest.get('artifact_version')!r} is not "
                             f"supported (this version reads {ARTIFACT_VERSION})")
        self.schema = self.manifest["schema"]
        self._program: Optional[nn.Module] = None

    def vocabularies(self) -> list[IntVocab]:
        """Every field's IntVocab, single-valued then multi-valued (InputError for generated fields)."""
        keys = np.load(self.folder / KEYS_FILE)
        offsets = np.load(self.folder / OFFSETS_FILE)
        entries = self.manifest["fields"] + self.manifest["multi_valued_fields"]
        out = []
        for j, f in enumerate(entries):
            if f["num_known"] is None:
                raise InputError(f"--model {self.folder}: field '{f['name']}' has no vocabulary (generated data "
                                 "has no raw values to encode)")
            out.append(IntVocab(keys[offsets[j]:offsets[j + 1]]))
        return out

    def program(self) -> nn.Module:
        if self._program is None:
            self._program = torch.export.load(str(self.folder / PROGRAM_FILE)).module()
        return self._program

    def predict(self, split: Any, batch_size: int) -> np.ndarray:
        """Probabilities of every row of a prepared split (.ids, .multi_valued), float64 like predict_proba."""
        program = self.program()
        names = [f["name"] for f in self.manifest["multi_valued_fields"]]
        n = len(split.ids)
        out = np.empty(n, dtype=np.float64)
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                args = [torch.from_numpy(np.asarray(split.ids[lo:hi], dtype=np.int64))]
                for name in names:
                    values, offsets = split.multi_valued[name]
                    first, last = int(offsets[lo]), int(offsets[hi])
                    args += [torch.from_numpy(np.asarray(values[first:last], dtype=np.int64)),
                             torch.from_numpy(np.asarray(offsets[lo:hi + 1], dtype=np.int64) - first)]
                out[lo:hi] = program(*args).numpy()
        return out

