"""The engine's TF4CTR: the reference TwinModel (encoders, heads, DFM, loss) with its SSEM swapped for
the TorchRec/FBGEMM SER tables (tf4ctr_fast.embedding).

Same contract as reference/models.py (model(x), model.loss(x, y), model.regularization(); x is ids,
tf4ctr_fast.features.Features or a KeyedJaggedTensor), plus:
    model.dense_parameters()   # what the trainer's torch optimizer updates (not the fused tables)
    model.sparse_optimizer()   # torchrec KeyedOptimizer of the fused tables (lr changes go here); None
                               # for the reference backend, whose tables the torch optimizer updates
"""
from __future__ import annotations

import re
import types
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..embedding import SERTables, SERTablesConfig
from ..errors import InputError
from ..features import BagField
from ..reference.models import TwinModel, build_model, check_model_config

BACKENDS = ("torchrec", "reference")


class EngineTwinModel(TwinModel):
    """TF4CTR (SER + any DFM, Twin Focus loss) on fused TorchRec tables. The regularizer is the batch
    form (REFERENCE.md "Our decisions" 3), returned by regularization() after each forward."""

    def __init__(self, cfg: ModelConfig, tables: SERTablesConfig, device: Optional[torch.device] = None,
                 fused: bool = True):
        # TwinModel sizes its encoders from the field count and dim only, so it is built over 1-row
        # placeholder tables, which the TorchRec tables then replace.
        super().__init__(cfg, [1] * len(tables.vocab_sizes), "SER", cfg.dfm, twin_focus=True)
        self.ssem = SERTables(tables, device=device, fused=fused)
        self.to(device)

    def forward(self, x, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        """x: ids [B, F], Features or a KeyedJaggedTensor; with labels the dict also holds "loss".
        Wrapped in DistributedModelParallel, call the wrapper (dmp(x, y)): DDP averages gradients only
        for what runs through its forward."""
        return self.head(*self.encode(x), y=y)

    def loss(self, x, y: Tensor) -> dict[str, Tensor]:
        out = self(x, y)
        return {"loss": out["loss"], "logit": out["logit"]}

    def regularization(self) -> Tensor:
        return self.ssem.regularization()

    def dense_parameters(self) -> list[nn.Parameter]:
        tables = {id(p) for p in self.ssem.parameters()}
        return [p for p in self.parameters() if id(p) not in tables]

    def sparse_optimizer(self):
        return self.ssem.sparse_optimizer()


def build_engine_model(model_cfg: ModelConfig, vocab_sizes: Sequence[int], backend: str = "torchrec", *,
                       field_names: Optional[Sequence[str]] = None, sparse_optimizer: str = "rowwise_adagrad",
                       sparse_lr: float = 0.01, sparse_eps: float = 1e-8,
                       bag_fields: Sequence[BagField] = (), device: Optional[torch.device] = None,
                       sharded: bool = False) -> nn.Module:
    """The model the trainer runs.

    backend "reference": reference.models.build_model (whole-table regularizer, every parameter dense).
    backend "torchrec": EngineTwinModel; only TF4CTR with SSEM "SER" (the issue's scope). `sharded=True`
    leaves the tables unfused for tf4ctr_fast.distributed.shard_model to shard and fuse. bag_fields:
    the multi-valued fields (their tables follow the single-valued fields' in both backends).
    """
    if backend == "reference":
        model = build_model(model_cfg, list(vocab_sizes), bag_fields).to(device)
        # The reference models have no fused tables: every parameter belongs to the torch optimizer.
        model.dense_parameters = types.MethodType(lambda self: list(self.parameters()), model)
        model.sparse_optimizer = types.MethodType(lambda self: None, model)
        return model
    if backend != "torchrec":
        raise InputError(f"embedding backend {backend!r} is unknown (known: {', '.join(BACKENDS)})")
    check_model_config(model_cfg)
    if model_cfg.name != "TF4CTR" or model_cfg.ssem != "SER":
        raise InputError(f"config key 'model.backend': torchrec builds TF4CTR with ssem SER, got model {model_cfg.name!r} "
                         f"with ssem {model_cfg.ssem!r}; use the reference backend for the others")
    names = list(field_names) if field_names is not None else [f"f{i}" for i in range(len(vocab_sizes))]
    tables = SERTablesConfig(field_names=names + [f.name for f in bag_fields],
                             vocab_sizes=list(vocab_sizes) + [f.vocab_size for f in bag_fields],
                             dim=model_cfg.embedding_dim, optimizer=sparse_optimizer, lr=sparse_lr,
                             eps=sparse_eps, emb_reg=model_cfg.emb_reg,
                             pooling={f.name: f.pooling for f in bag_fields})
    return EngineTwinModel(model_cfg, tables, device=device, fused=not sharded)


_REFERENCE_SER_KEY = re.compile(r"^ssem\.(easy|hard)\.(tables|bags)\.(\d+)\.weight$")
_ENGINE_SER_KEY = re.compile(r"^ssem\.ebc\.embedding_bags\.(.+)__(easy|hard)\.weight$")


def reference_to_engine_state_dict(state: dict[str, Tensor], field_names: Sequence[str],
                                   bag_names: Sequence[str] = ()) -> dict[str, Tensor]:
    """A reference TF4CTR/SER state dict with the engine's keys (tables renamed, everything else kept).
    field_names: the single-valued fields; bag_names: the multi-valued ones (reference `bags.j`)."""
    names = {"tables": list(field_names), "bags": list(bag_names)}
    out = {}
    for key, value in state.items():
        m = _REFERENCE_SER_KEY.match(key)
        out[f"ssem.ebc.embedding_bags.{names[m[2]][int(m[3])]}__{m[1]}.weight" if m else key] = value
    return out


def engine_to_reference_state_dict(state: dict[str, Tensor], field_names: Sequence[str],
                                   bag_names: Sequence[str] = ()) -> dict[str, Tensor]:
    """The inverse of reference_to_engine_state_dict: evaluate or fine-tune an engine run with the
    reference implementation."""
    where = {name: f"tables.{i}" for i, name in enumerate(field_names)}
    where.update({name: f"bags.{j}" for j, name in enumerate(bag_names)})
    out = {}
    for key, value in state.items():
        m = _ENGINE_SER_KEY.match(key)
        out[f"ssem.{m[2]}.{where[m[1]]}.weight" if m else key] = value
    return out
