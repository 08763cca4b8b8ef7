"""The model registry and the ONE factory that training, evaluation and checkpoint loading use.

    @register("DeepFM", DeepFMParams)
    class DeepFM(CTRModel): ...

    build_model(cfg.model, vocab_sizes, bag_fields, field_names=..., sparse_optimizer=..., device=...)

`model.name` picks the class, `model.params` is checked against its parameter dataclass (an unknown
key, a wrong type or a bad value raises InputError naming the key), the shared keys (model.*) are
checked here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch

from ..config import LEGACY_MODEL_KEYS, ModelConfig, from_mapping
from ..errors import InputError
from ..features import BagField
from ..layers.embedding import BACKENDS, InputFields, TableSettings, auto_backend
from ..losses import LOSSES, CTRLoss, build_loss, loss_rules_rows
from .base import CTRModel, ModelParams, ModelParts

HEAD_NAMES = ("reference", "fused")

_MODELS: dict[str, type[CTRModel]] = {}


def register(name: str, params: type[ModelParams]) -> Callable[[type[CTRModel]], type[CTRModel]]:
    """Class decorator: the model `name`, configured by the dataclass `params`."""

    def add(cls: type[CTRModel]) -> type[CTRModel]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.name, cls.Params = name, params
        _MODELS[name] = cls
        return cls

    return add


def model_names() -> list[str]:
    return list(_MODELS)


def model_class(name: str) -> type[CTRModel]:
    if name not in _MODELS:
        raise InputError(f"config key 'model.name': unknown model {name!r} (known: {', '.join(_MODELS)})")
    return _MODELS[name]


def resolve_params(cfg: ModelConfig) -> ModelParams:
    """The model's parameters: model.params, plus the legacy top-level keys its dataclass has."""
    cls = model_class(cfg.name).Params
    fields = {f.name for f in dataclasses.fields(cls)}
    data: dict[str, Any] = dict(cfg.params)
    where = {key: f"model.params.{key}" for key in data}
    for key in LEGACY_MODEL_KEYS:
        value = getattr(cfg, key)
        if value is None or key not in fields:
            continue
        if key in data:
            raise InputError(f"config keys 'model.{key}' and 'model.params.{key}' are both set; keep one")
        data[key], where[key] = value, f"model.{key}"
    params = from_mapping(cls, data, "model.params")

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise InputError(f"config key '{where.get(key, f'model.params.{key}')}': {what}, "
                             f"got {getattr(params, key)!r}")

    params.check(require)
    params.check_with_shared(cfg, require)
    return params


def _shared_rules(cfg: ModelConfig, require: Callable[[bool, str, str], None]) -> None:
    require(cfg.embedding_dim >= 1, "embedding_dim", "must be at least 1")
    require(0 <= cfg.net_dropout < 1, "net_dropout", "must be in [0, 1)")
    require(cfg.emb_reg >= 0, "emb_reg", "must be >= 0")
    require(cfg.head in HEAD_NAMES, "head", f"must be one of {', '.join(HEAD_NAMES)}")
    require(cfg.backend in ("auto", *BACKENDS), "backend", f"must be one of auto, {', '.join(BACKENDS)}")
    require(cfg.loss is None or cfg.loss in LOSSES, "loss",
            f"must be one of {', '.join(LOSSES)}, or unset: the model's own (twin_focus for TF4CTR*, else bce)")


def check_shared_keys(cfg: ModelConfig) -> None:
    """Range checks of the keys every model shares; each error names its config key."""

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise InputError(f"config key 'model.{key}': {what}, got {getattr(cfg, key)!r}")

    _shared_rules(cfg, require)


def model_rules_table() -> str:
    """The model section's rules as the markdown table of docs/config.md: the shared keys, then each
    registered model's parameters. Read off the checks themselves (each run on the defaults with a
    `require` that notes every rule it is asked), so the table cannot drift from the code; a rule that
    applies only in some structures (e.g. DCNv2's) is listed when the defaults reach it."""
    rows = ["| key | model | rule | default |", "|---|---|---|---|"]

    def noted(into: list) -> Callable[[bool, str, str], None]:
        return lambda ok, key, what: into.append((key, what)) if (key, what) not in into else None

    shared: list[tuple[str, str]] = []
    defaults = ModelConfig()
    _shared_rules(defaults, noted(shared))
    rows += [f"| `model.{key}` | all | {what} | `{getattr(defaults, key)!r}` |" for key, what in shared]
    for name, cls in _MODELS.items():
        params, rules = cls.Params(), []
        params.check(noted(rules))
        rows += [f"| `model.params.{key}` | {name} | {what} | `{getattr(params, key)!r}` |" for key, what in rules]
    rows += loss_rules_rows()
    return "\n".join(rows) + "\n"


def resolve_loss(cfg: ModelConfig) -> CTRLoss:
    """model.loss (the model's default_loss when unset) with model.loss_params, checked."""
    cls = model_class(cfg.name)
    return build_loss(cfg.loss or cls.default_loss, cfg.loss_params, twin_model=cls.twin, model_name=cfg.name)


def check_model_config(cfg: ModelConfig) -> ModelParams:
    """Everything about model.* that can be checked without data; returns the resolved parameters."""
    model_class(cfg.name)
    check_shared_keys(cfg)
    params = resolve_params(cfg)
    resolve_loss(cfg)
    return params


def resolved_model_config(cfg: ModelConfig) -> ModelConfig:
    """cfg with every parameter of its model under `params` (defaults filled in, legacy keys moved
    there, the ones the model does not have dropped) and its loss named: what the run log and
    checkpoints record."""
    params = check_model_config(cfg)
    loss = resolve_loss(cfg)
    return dataclasses.replace(cfg, params=dataclasses.asdict(params), loss=loss.name,
                               loss_params=dataclasses.asdict(loss.params),
                               **{key: None for key in LEGACY_MODEL_KEYS})


def build_model(cfg: ModelConfig, vocab_sizes: Sequence[int], bag_fields: Sequence[BagField] = (), *,
                field_names: Optional[Sequence[str]] = None, sparse_optimizer: str = "rowwise_adagrad",
                sparse_lr: float = 0.01, sparse_eps: float = 1e-8, device: Optional[torch.device] = None,
                fused: bool = True) -> CTRModel:
    """The model named by cfg.name over these fields, its tables on cfg.backend ("auto":
    layers.embedding.auto_backend for this device and sparse_optimizer: with the default
    "rowwise_adagrad" that is the reference backend).

    vocab_sizes / field_names: the single-valued fields; bag_fields: the multi-valued ones (their
    tables follow). sparse_*: the fused optimizer of the torchrec backend (train.sparse_*). fused=False
    gives the torchrec backend plain tables: what distributed.shard_model shards and fuses, and what
    inference uses. The reference backend ignores both.
    """
    params = check_model_config(cfg)
    if cfg.backend == "auto":
        cfg = dataclasses.replace(cfg, backend=auto_backend(cfg.name, device, sparse_optimizer))
    settings = TableSettings(backend=cfg.backend, emb_reg=cfg.emb_reg, sparse_optimizer=sparse_optimizer,
                             sparse_lr=sparse_lr, sparse_eps=sparse_eps,
                             device=torch.device(device) if device is not None else None, fused=fused)
    parts = ModelParts(cfg, InputFields.of(vocab_sizes, field_names, bag_fields), settings)
    model = model_class(cfg.name)(params, parts)
    model.use_loss(resolve_loss(cfg))
    return model.to(settings.device)
