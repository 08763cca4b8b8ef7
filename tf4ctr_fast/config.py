"""Typed run configs: YAML files with `dataset`, `model` and `train` sections, `a.b=c` overrides.

Every key is a dataclass field, so an unknown or mistyped key stops the run with a message that names
it, and the full resolved config is what the run log records first.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import InputError


def folder_name(value: str, key: str) -> str:
    """`value`, checked to name one folder inside its parent (data_prepared/, runs/): a name that is
    empty, '.', '..' or holds a path separator would put the folder elsewhere, or make the parent
    itself the folder that a prepare replaces."""
    if value in ("", ".", "..") or any(c in value for c in "/\\\0"):
        raise InputError(f"config key '{key}': {value!r} is not a plain folder name (it must not be empty, "
                         "'.' or '..', nor hold '/' or '\\'); dataset.prepared_dir and train.out_dir "
                         "take paths")
    return value


def folder_path(value: str, key: str) -> Path:
    """`value` as a path, checked to end in a folder name: '.', '..' or '/' would make a folder that
    holds other things (the current folder, its parent) the one a command writes and replaces."""
    path = Path(value)
    if path.name in ("", ".."):
        raise InputError(f"config key '{key}': {value!r} names an existing parent folder, not a folder of "
                         f"its own; give a path ending in a new folder's name, e.g. {value.rstrip('/') or '.'}/mine")
    return path


@dataclass
class SyntheticConfig:
    """Synthetic data with Criteo's schema (13 bucketized integer fields + 26 categorical)."""

    rows: int = 300_000
    num_int_fields: int = 13
    num_cat_fields: int = 26
    int_vocab: int = 64            # buckets per integer field
    cat_vocab: int = 10_000        # ids per categorical field (Criteo after min-count 10: ~5.5M in all)
    cat_vocab_sizes: list[int] = field(default_factory=list)  # per categorical field; overrides cat_vocab
    zipf_a: float = 1.2            # id frequency ~ rank^-a
    hard_fraction: float = 0.3     # share of samples whose click depends on pairwise interactions
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])

    def split_bounds(self) -> list[tuple[int, int]]:
        """(first row, end row) of train, valid and test."""
        cuts = [round(sum(self.split[:i + 1]) / sum(self.split) * self.rows) for i in range(len(self.split))]
        cuts[-1] = self.rows
        return list(zip([0, *cuts[:-1]], cuts))


@dataclass
class DatasetConfig:
    name: str = "synthetic_criteo"
    format: str = "synthetic"      # "synthetic" | "csv_ids" | "criteo" | "csv" | "libfm" (docs/data.md)
    schema: Optional[str] = None   # YAML column schema, required by "csv" and "libfm" (docs/data.md)
    prepared_dir: str = ""         # default: data_prepared/<name>
    train: Optional[str] = None    # raw files (csv_ids): comma-separated, header row, integer ids
    valid: Optional[str] = None
    test: Optional[str] = None
    label: str = "label"
    fields: Optional[list[str]] = None    # default: every column but the label
    group_field: Optional[str] = None     # for gAUC; its raw value is kept per row
    keep_columns: list[str] = field(default_factory=list)  # raw columns that `predict` writes back
    min_count: int = 2
    seed: int = 2023
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def resolved_prepared_dir(self) -> Path:
        if self.prepared_dir:
            return folder_path(self.prepared_dir, "dataset.prepared_dir")
        return Path("data_prepared") / folder_name(self.name, "dataset.name")


@dataclass
class ModelConfig:
    """The keys every model shares; each model's own keys go under `params` (a mapping checked against
    that model's parameter dataclass, tf4ctr_fast.models: unknown keys are named there).

    The TF4CTR / DualMLP / DNN keys that predate the model zoo (ssem ... vf_tau below) are still read
    at this level: each one that is set is moved into `params` for a model that has a parameter of that
    name and ignored by the others, as before (docs/ARCHITECTURE.md "Model zoo").
    """

    name: str = "TF4CTR"           # a registered model: tf4ctr_fast.models.model_names()
    embedding_dim: int = 16
    batch_norm: bool = True
    net_dropout: float = 0.2
    # Defaults: the published Criteo_x4 settings (REFERENCE.md), matching the default synthetic
    # Criteo-schema dataset; configs/ sets each real dataset's own values.
    emb_reg: float = 1e-5
    # "fused": logits, DFM, BCE + Twin Focus loss and all their gradients as one op (C++ on CPU, Triton
    # on CUDA; VF keeps the op-by-op path); "reference": the op-by-op PyTorch head. TF4CTR and DualMLP
    # only: the other models have no twin head.
    head: str = "fused"
    # Where the embedding tables live and how they are trained (REFERENCE.md "Our decisions" 3):
    # "reference": plain nn.Embedding tables, trained by the dense Adam with the whole-table L2 (the
    #   paper's protocol). "torchrec": every field table of the model in one TorchRec
    #   EmbeddingBagCollection updated inside backward by FBGEMM's fused sparse optimizer
    #   (train.sparse_optimizer), with the L2 over the rows each batch looks up (docs/embedding.md).
    # "auto": torchrec where it has measured at parity with the reference (sparse adam: CPU, one
    #   process; the models of layers.embedding.ENGINE_AT_PARITY) or where only it runs (train.nproc > 1),
    #   else reference; the trainer resolves it before the run starts (trainer.resolve_backend), so the
    #   run's log and checkpoints name the backend that trained it.
    backend: str = "auto"     # "auto" | "reference" | "torchrec"
    params: dict[str, Any] = field(default_factory=dict)
    # The CTR loss (tf4ctr_fast.losses: bce, focal, rce, twin_focus); None: the model's own default (bce,
    # twin_focus for TF4CTR and its plug-in presets). Its parameters: loss_params (focal: alpha, gamma;
    # rce: alpha), checked against the loss's dataclass.
    loss: Optional[str] = None
    loss_params: dict[str, Any] = field(default_factory=dict)
    # Legacy aliases of model parameters (None: not set; see the class docstring).
    ssem: Optional[str] = None
    dfm: Optional[str] = None
    mlp_s_hidden: Optional[list[int]] = None
    mlp_c_hidden: Optional[list[int]] = None
    dnn_hidden: Optional[list[int]] = None
    alpha: Optional[float] = None
    c: Optional[float] = None
    gamma: Optional[float] = None
    vf_tau: Optional[float] = None


LEGACY_MODEL_KEYS = ("ssem", "dfm", "mlp_s_hidden", "mlp_c_hidden", "dnn_hidden", "alpha", "c", "gamma", "vf_tau")


@dataclass
class TrainConfig:
    batch_size: int = 4096
    eval_batch_size: int = 65_536
    epochs: int = 3                # the demo's "short while"; real runs set 100 and rely on early stopping
    max_steps_per_epoch: Optional[int] = None   # cap for short demos
    lr: float = 1e-3
    clip_norm: float = 10.0
    lr_decay: float = 0.1
    min_lr: float = 1e-6
    patience: int = 2
    # non-improving epochs in a row before each lr cut: 1 = the paper's (FuxiCTR's) protocol, which cuts
    # after any single noisy epoch; 2 cuts only after two (then raise patience above it, or the run
    # stops when it would cut)
    lr_decay_patience: int = 1
    monitor: str = "auc"           # "auc" | "auc+gauc" | "logloss" (minimized)
    seed: int = 2023
    # the seed of the train batches' order; null: train.seed, the one the weights are drawn with too
    # (FuxiCTR draws its order from the global generator after the weights: another stream)
    shuffle_seed: Optional[int] = None
    # the order the initial weights are drawn in from train.seed: "project" (each layer as it is built)
    # or "fuxictr" (FuxiCTR's: every table's and Linear's torch default init, then its reset, so a model
    # built in FuxiCTR's order starts from FuxiCTR's very weights at the same seed; DNN on the reference
    # backend only, the model checked bit for bit; layers/init.py draw_in_fuxictr_order_)
    init_order: str = "project"
    device: str = "auto"           # "auto" | "cpu" | "cuda"
    # the training forward: "fp32" | "bf16" (autocast; weights, optimizer, loss and metrics stay
    # float32) | "auto" (bf16 where the device runs it fast); train/precision.py
    precision: str = "fp32"
    num_threads: int = 0           # per process; 0: torch's default (divided between train.nproc processes)
    out_dir: str = ""              # default: runs/<dataset>_<model>_<backend>_<head>[_<loss>]_seed<seed>
    difficulty_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.6])
    progress: bool = True
    # "auto": each split on the device (CUDA memory, or RAM on CPU) when it takes at most half of the
    # free memory, else streamed from disk in prefetched chunks; "device" / "streaming" force one.
    loader: str = "auto"
    # model.backend "torchrec" only: the fused optimizer of the embedding tables. Adam (lr above) still
    # trains every other parameter. "rowwise_adagrad" | "sgd": FBGEMM's, on CPU and CUDA, sharded too;
    # "adam": ours, CPU, one process, the reference's dense Adam with the whole-table L2 replayed on the
    # looked-up rows (docs/embedding.md "Sparse Adam"); "lazy_adam": Adam on the looked-up rows only
    # (ours on CPU, one process; FBGEMM's on CUDA); "auto" (default): "adam" where it runs (the one at
    # parity with the reference, docs/results.md "Sparse adam"), else "rowwise_adagrad".
    # sparse_lr: None (default) = lr for adam and lazy_adam, 0.01 for rowwise_adagrad and sgd (row-wise
    # Adagrad wants a larger lr than Adam: 0.01-0.05). The run's log and checkpoints hold the resolved
    # pair (trainer.resolve_sparse_optimizer). The plateau decay (lr_decay, min_lr) applies to it too.
    sparse_optimizer: str = "auto"
    sparse_lr: Optional[float] = None
    sparse_eps: float = 1e-8
    # Local data-parallel processes (model.backend "torchrec" only): each takes a slice of every batch,
    # the tables are sharded across them. One GPU per process when CUDA is available, else gloo on CPU.
    nproc: int = 1
    sharding: str = "table_wise"   # "table_wise" | "column_wise" | "row_wise" (CUDA only)
    # last.pt, the resumable checkpoint (docs/runs.md), is written at every epoch end and, within an
    # epoch: null (default) once a minute of training has passed since the last one and 50 times as
    # long as that one took to write (so mid-epoch writes cost <= 2% of the time, and a kill loses
    # about a minute of work, more for models whose checkpoint takes over 1.2 s to write); N >= 1:
    # every N steps of an epoch. 0: none (only on SIGTERM / Ctrl-C). Multi-process runs write last.dcp
    # by the same rule (the ranks agree on the step; docs/distributed.md).
    checkpoint_every_steps: Optional[int] = None
    # Stop a run whose mean train loss in an epoch (read every 20 steps and at its end) exceeds this
    # multiple of the first epoch's; 0 disables. A non-finite loss or gradient norm always stops it.
    divergence_factor: float = 100.0


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def resolved_out_dir(self) -> Path:
        """train.out_dir, or runs/<dataset>_<model>_<backend>_<head>[_<loss>]_seed<seed>: every key that
        changes what a run learns has its part, so that runs differing in one never share a folder
        (the loss only when it is not the model's own: those runs keep the folders they had before
        model.loss existed)."""
        if self.train.out_dir:
            return folder_path(self.train.out_dir, "train.out_dir")
        backend = self.model.backend
        if backend == "auto":      # the one the run takes, as train() resolves it
            from .train.trainer import resolve_backend, resolve_device  # lazy: the trainer imports this module

            backend = resolve_backend(self, resolve_device(self.train.device)).model.backend
        parts = {"dataset.name": self.dataset.name, "model.name": self.model.name,
                 "model.backend": backend, "model.head": self.model.head}
        from .models import model_class  # lazy: the models import this module

        if self.model.loss and self.model.loss != model_class(self.model.name).default_loss:
            parts["model.loss"] = self.model.loss
        name = "_".join(folder_name(value, key) for key, value in parts.items())
        return Path("runs") / f"{name}_seed{self.train.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, data)


# PyYAML follows YAML 1.1, where an exponent needs a dot in the mantissa: 1e-6 loads as a string.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the annotated type; the error names the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}': expected a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.match(value):
            value = float(value)
        if not isinstance(value, float):
            raise InputError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"config key '{key}': expected a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(f"config key '{key}': expected a string, got {value!r}")
    return value


def from_mapping(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from a mapping, every value type-checked; an unknown or
    mistyped key raises InputError naming it as f"{prefix}.{key}"."""
    return _from_dict(cls, data, prefix)


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise InputError(f"config key '{key}' is unknown (known here: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"config key '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...],
                    allowed: Optional[tuple[str, ...]] = None) -> None:
    """Set each `a.b=value` (the value parsed as YAML) in the config mapping `data`; `allowed`: the
    only keys that may be set (None: any). Messages name the override as given on the command line."""
    for item in overrides:
        where = f"command-line override '{item}': "
        if "=" not in item:
            raise InputError(f"{where}expected key=value, e.g. train.lr=0.001")
        key, raw = item.split("=", 1)
        key = key.strip()
        if allowed is not None and key not in allowed:
            raise InputError(f"{where}only {', '.join(allowed)} may be set here")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML: the type check says what was expected
        try:
            _set_path(data, key, value)
        except InputError as e:
            raise InputError(f"{where}{e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- YAML file <- `a.b=value` overrides (values parsed as YAML).

    A message about a key that an override set blames that override (the last one, if several set
    it), any other the file: a typo on the command line is not reported as the YAML file's.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"{p}: expected a mapping with dataset/model/train sections")
    apply_overrides(data, overrides)
    try:
        cfg = _from_dict(RunConfig, data)
        check_ranges(cfg.dataset, "dataset")
        check_ranges(cfg.train, "train")
        # The model's own keys (model.params) are checked against its parameter dataclass now, so a
        # bad one is named before any data is read; the resolved config lists them all.
        from .models import resolved_model_config

        cfg.model = resolved_model_config(cfg.model)
    except InputError as e:
        raise InputError(f"{_blame(str(e), path, overrides)}{e}") from None
    return cfg


def _blame(message: str, path: Any, overrides: list[str] | tuple[str, ...]) -> str:
    """'command-line override ...: ' when the key the message names (or a section above or below it)
    was set by an override, or else another key it mentions (train.min_lr above train.lr); else
    '<file>: ' ('' without a file)."""
    named = re.search(r"config key '([^'\[]+)", message)
    given = [(item.split("=", 1)[0].strip(), item) for item in reversed(overrides)]
    if named:
        key = named.group(1)
        for k, item in given:
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return f"command-line override '{item}': "
    for k, item in given:
        if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message):
            return f"command-line override '{item}': "
    return f"{path}: " if path is not None else ""


# ---------------------------------------------------------------------------------------------
# Allowed values of every numeric key of the dataset and train sections: one table, checked by
# check_ranges and printed into docs/config.md (tests/test_bad_inputs.py keeps the two equal).


@dataclass(frozen=True)
class Range:
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False           # low itself excluded
    why: str = ""

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)   # False for NaN

    def __str__(self) -> str:
        low = _number(self.low)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'(' if self.low_open else '['}{low}, {_number(self.high)}]"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_SEED = Range(0, 2**32 - 1, why="numpy's seed range")
RANGES: dict[str, Range] = {
    "dataset.min_count": Range(1, why="values seen fewer times map to OOV"),
    "dataset.seed": _SEED,
    "dataset.synthetic.rows": Range(1, why="and enough that every split gets rows"),
    "dataset.synthetic.num_int_fields": Range(0, why="at least one field in all"),
    "dataset.synthetic.num_cat_fields": Range(0, why="at least one field in all"),
    "dataset.synthetic.int_vocab": Range(1),
    "dataset.synthetic.cat_vocab": Range(1),
    "dataset.synthetic.cat_vocab_sizes": Range(1, why="each entry"),
    "dataset.synthetic.zipf_a": Range(0),
    "dataset.synthetic.hard_fraction": Range(0, 1),
    "dataset.synthetic.split": Range(0, 1, why="three fractions summing to 1 (within 1e-6)"),
    "train.batch_size": Range(1),
    "train.eval_batch_size": Range(1),
    "train.epochs": Range(1),
    "train.max_steps_per_epoch": Range(1, why="or null: whole epochs"),
    "train.lr": Range(0, 1, low_open=True, why="Adam steps by about lr per weight: larger only diverges"),
    "train.clip_norm": Range(0, low_open=True, why="the largest gradient norm kept"),
    "train.lr_decay": Range(0, 1, low_open=True, why="the factor of each lr cut; 1: no decay"),
    "train.min_lr": Range(0, why="and at most train.lr"),
    "train.patience": Range(1, why="non-improving epochs before the run stops"),
    "train.lr_decay_patience": Range(1),
    "train.seed": _SEED,
    "train.shuffle_seed": Range(0, 2**32 - 1, why="or null: train.seed"),
    "train.num_threads": Range(0, why="0: torch's default"),
    "train.difficulty_thresholds": Range(0, 1, why="[t0, t1] with t0 <= t1"),
    "train.sparse_lr": Range(0, 10, low_open=True),
    "train.sparse_eps": Range(0, 1, low_open=True),
    "train.nproc": Range(1),
    "train.checkpoint_every_steps": Range(0, why="or null; 0: a last.pt only on a stop signal"),
    "train.divergence_factor": Range(0, why="0: no divergence check; else above 1"),
}


def check_ranges(section: Any, prefix: str) -> None:
    """InputError naming the key unless every numeric value of `section` (a DatasetConfig or
    TrainConfig, nested sections included) lies in its RANGES entry; then the checks that tie two
    keys together."""
    for f in dataclasses.fields(section):
        key, value = f"{prefix}.{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, key)
        elif key in RANGES and value is not None:
            for i, v in enumerate(value) if isinstance(value, list) else [(None, value)]:
                if not RANGES[key].holds(v):
                    name = key if i is None else f"{key}[{i}]"
                    why = f" ({RANGES[key].why})" if RANGES[key].why else ""
                    raise InputError(f"config key '{name}': must be {RANGES[key]}{why}, got {v!r}")
    if prefix == "train":
        if section.min_lr > section.lr:
            raise InputError(f"config key 'train.min_lr': {section.min_lr!r} is above train.lr "
                             f"({section.lr!r}); the lr decays down to min_lr")
        if 0 < section.divergence_factor <= 1:
            raise InputError(f"config key 'train.divergence_factor': must be > 1, or 0 to disable, "
                             f"got {section.divergence_factor!r}")
        t = section.difficulty_thresholds
        if len(t) != 2 or t[0] > t[1]:
            raise InputError(f"config key 'train.difficulty_thresholds': expected [t0, t1] with t0 <= t1, "
                             f"got {t}")
    if prefix == "dataset.synthetic":
        _check_synthetic_split(section)


def _check_synthetic_split(cfg: SyntheticConfig) -> None:
    key = "config key 'dataset.synthetic"
    if cfg.num_int_fields + cfg.num_cat_fields < 1:
        raise InputError(f"{key}.num_cat_fields': no fields at all (num_int_fields and num_cat_fields are both 0)")
    if len(cfg.split) != 3 or abs(sum(cfg.split) - 1) > 1e-6:
        raise InputError(f"{key}.split': expected 3 fractions (train, valid, test) summing to 1, got {cfg.split}")
    if cfg.split[0] == 0:
        raise InputError(f"{key}.split': the train split would be empty, got {cfg.split}")
    # A split given a share but no rows would make a folder that looks complete and cannot be used.
    for name, share, (lo, hi) in zip(("train", "valid", "test"), cfg.split, cfg.split_bounds()):
        if share > 0 and hi == lo:
            raise InputError(f"{key}.rows': {cfg.rows} rows leave the {name} split empty "
                             f"(dataset.synthetic.split {cfg.split}); every split given a share needs rows")


def ranges_table() -> str:
    """RANGES as the markdown table of docs/config.md."""
    defaults = dataclasses.asdict(RunConfig())
    rows = ["| key | allowed | default | note |", "|---|---|---|---|"]
    for key, r in RANGES.items():
        node: Any = defaults
        for part in key.split("."):
            node = node[part]
        rows.append(f"| `{key}` | {r} | `{json.dumps(node)}` | {r.why} |")
    return "\n".join(rows) + "\n"
