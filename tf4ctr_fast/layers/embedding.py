"""Field embedding: a model's per-field tables behind one interface, on either backend.

A model asks for its tables by kind, e.g. {"embedding": 16} (DNN) or {"lr": 1, "embedding": 16}
(DeepFM: a logistic-regression weight and a deep embedding per field), and gets a `FieldTables`:

    tables(x) -> tuple, per kind in the order asked: [B, num_fields * dim] (fields side by side:
                 single-valued fields first, then each multi-valued field's pooled bag)
    tables.regularization()     -> the embedding L2 term to add to the loss
    tables.sparse_optimizer()   -> the fused optimizer of the tables (None: the torch optimizer trains them)
    tables.sparse_parameters()  -> the parameters that optimizer owns (excluded from the dense optimizer)
    tables.field_weights()      -> {(kind, field name): [vocab, dim] weight}, backend-neutral (weight copies)

Backends (model.backend):
- "reference": `DenseFieldTables`, nn.Embedding / nn.EmbeddingBag per field and kind, trained by the
  dense optimizer, whole-table L2 (the paper's protocol). State-dict layout: one kind puts the tables
  directly in the module (`tables.i`, `bags.j`), several put one `FieldEmbeddings` per kind under the
  kind's name (`<kind>.tables.i`): the layouts of every checkpoint written before the model zoo.
- "torchrec": `tf4ctr_fast.embedding.FusedFieldTables`, every kind of every field in ONE TorchRec
  EmbeddingBagCollection, updated inside backward by FBGEMM's fused optimizer, L2 on the looked-up rows.
- "auto" (the config's default): `auto_backend` picks one of the two.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..features import BagField, ModelInput, check_bags, split_input
from .init import PADDING_ID, init_embedding_table_

BACKENDS = ("reference", "torchrec")

# The models whose torchrec backend, with the sparse optimizer "adam", measured at parity with the
# reference backend on Frappe (test AUC at least the reference's minus 0.0005, logloss at most its plus
# 0.005; docs/results.md "Sparse adam": TF4CTR and DNN over three seeds, AFN+ over two, the others at
# one seed; TF4CTR-WideDeep as the paper's Table VIII runs it, ssem share).
# Not (yet): xDeepFM (below over its seeds: docs/results.md), DLF (0.0009 below at its seed), TF4CTR-DLF
# (not run on the engine).
ENGINE_AT_PARITY = frozenset({"TF4CTR", "DNN", "LR", "FM", "WideDeep", "DeepFM", "DCN", "DCNv2", "AutoInt",
                              "EDCN", "EulerNet", "FinalMLP", "DualMLP", "AFN",
                              "TF4CTR-DeepFM", "TF4CTR-xDeepFM", "TF4CTR-WideDeep"})


def auto_backend(model_name: str, device: Optional[torch.device | str], sparse_optimizer: str, *,
                 sharded: bool = False) -> str:
    """What model.backend "auto" stands for: "torchrec" where it trains like the reference backend (a
    model of ENGINE_AT_PARITY, on the CPU, with sparse_optimizer "adam", or "auto", which is adam there;
    torchrec installed) and where only it runs (sharded: several processes); "reference" elsewhere."""
    if sharded:
        return "torchrec"
    installed = all(importlib.util.find_spec(name) is not None for name in ("torchrec", "fbgemm_gpu"))
    if model_name not in ENGINE_AT_PARITY or sparse_optimizer not in ("auto", "adam") or not installed:
        return "reference"
    # Where sparse adam runs is fused_tables' rule (imported here: it loads torchrec, installed and about
    # to be used).
    from ..embedding.fused_tables import adam_unsupported

    on = torch.device(device if device is not None else "cpu")
    return "reference" if adam_unsupported("adam", on, sharded=False) else "torchrec"


@dataclass(frozen=True)
class InputFields:
    """The fields a model is built over: single-valued (names, vocabulary sizes) in input order, then the
    multi-valued ones (tf4ctr_fast.features)."""

    names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    bags: tuple[BagField, ...] = ()

    @classmethod
    def of(cls, vocab_sizes: Sequence[int], names: Optional[Sequence[str]] = None,
           bags: Sequence[BagField] = ()) -> "InputFields":
        names = list(names) if names is not None else [f"f{i}" for i in range(len(vocab_sizes))]
        if len(names) != len(vocab_sizes):
            raise InputError(f"{len(names)} field names for {len(vocab_sizes)} vocabulary sizes")
        return cls(tuple(names), tuple(int(v) for v in vocab_sizes), tuple(bags))

    @property
    def num_fields(self) -> int:
        return len(self.names) + len(self.bags)

    @property
    def all_names(self) -> list[str]:
        return list(self.names) + [b.name for b in self.bags]


@dataclass(frozen=True)
class TableSettings:
    """How a model's tables are stored and trained: model.backend, and for "torchrec" the fused
    optimizer (train.sparse_*). fused=False: plain TorchRec tables for DistributedModelParallel to shard
    and fuse, or for inference."""

    backend: str = "reference"
    emb_reg: float = 0.0
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.01
    sparse_eps: float = 1e-8
    device: Optional[torch.device] = None
    fused: bool = True


class FieldTables(nn.Module):
    """The interface of the module docstring; `kinds` maps each kind to its embedding dim."""

    kinds: dict[str, int]
    fields: InputFields

    @property
    def output_dims(self) -> tuple[int, ...]:
        """Width of each kind's output: num_fields * dim."""
        return tuple(self.fields.num_fields * dim for dim in self.kinds.values())

    def regularization(self) -> Tensor:
        raise NotImplementedError

    def sparse_optimizer(self) -> Optional[Any]:
        return None

    def sparse_parameters(self) -> list[nn.Parameter]:
        return []

    def field_weights(self) -> dict[tuple[str, str], Tensor]:
        raise NotImplementedError

    def weights(self) -> list[Tensor]:
        """Every table's weight (what the L2 covers)."""
        raise NotImplementedError


class FieldEmbeddings(nn.Module):
    """One table per field: ids [B, F] (or Features with bags of the multi-valued fields) -> the field
    embeddings side by side, [B, (F + M) * dim], single-valued fields first, then each multi-valued
    field's pooled bag (tf4ctr_fast.features)."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField] = ()):
        super().__init__()
        _add_tables(self, vocab_sizes, dim, bag_fields)
        self.bag_fields = list(bag_fields)
        self.num_fields = len(vocab_sizes)
        self.dim = dim
        self.output_dim = (self.num_fields + len(self.bag_fields)) * dim

    def forward(self, x: ModelInput) -> Tensor:
        return _look_up(self, x, self.num_fields, self.bag_fields)

    def weights(self) -> list[nn.Parameter]:
        return [table.weight for table in [*self.tables, *self.bags]]


def _add_tables(module: nn.Module, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField]) -> None:
    """Register `tables` (nn.Embedding per single-valued field) and `bags` (nn.EmbeddingBag per
    multi-valued field) on module, initialised like FuxiCTR's."""
    module.tables = nn.ModuleList(nn.Embedding(v, dim, padding_idx=PADDING_ID) for v in vocab_sizes)
    # include_last_offset: the loaders' offsets are [B + 1], row i = values[offsets[i]:offsets[i + 1]].
    module.bags = nn.ModuleList(nn.EmbeddingBag(f.vocab_size, dim, mode=f.pooling, padding_idx=PADDING_ID,
                                                include_last_offset=True) for f in bag_fields)
    for table in [*module.tables, *module.bags]:
        init_embedding_table_(table.weight)


def _look_up(module: nn.Module, x: ModelInput, num_single: int, bag_fields: Sequence[BagField]) -> Tensor:
    """The `tables` / `bags` of module (see _add_tables) applied to x, side by side."""
    ids, bags = split_input(x)
    if ids.dim() != 2 or ids.shape[1] != num_single:
        raise ValueError(f"ids must be [batch, {num_single}], got {list(ids.shape)}")
    check_bags(bags, [f.name for f in bag_fields], ids.shape[0])
    pooled = [table(*bags[f.name]) for f, table in zip(bag_fields, module.bags)]
    return torch.cat([table(ids[:, f]) for f, table in enumerate(module.tables)] + pooled, dim=-1)


class DenseFieldTables(FieldTables):
    """The "reference" backend: plain tables trained by the dense optimizer, whole-table L2
    (emb_reg / 2) * sum ||W||^2 (FuxiCTR's embedding_regularizer)."""

    def __init__(self, fields: InputFields, kinds: dict[str, int], emb_reg: float):
        super().__init__()
        self.fields, self.kinds, self.emb_reg = fields, dict(kinds), emb_reg
        if len(kinds) == 1:
            _add_tables(self, fields.vocab_sizes, next(iter(kinds.values())), fields.bags)
        else:
            for kind, dim in kinds.items():
                self.add_module(kind, FieldEmbeddings(fields.vocab_sizes, dim, fields.bags))

    def _per_kind(self) -> list[nn.Module]:
        """The module holding each kind's `tables` / `bags`, in kind order."""
        return [self] if len(self.kinds) == 1 else [getattr(self, kind) for kind in self.kinds]

    def forward(self, x: ModelInput) -> tuple[Tensor, ...]:
        return tuple(_look_up(m, x, len(self.fields.names), self.fields.bags) for m in self._per_kind())

    def weights(self) -> list[nn.Parameter]:
        return [t.weight for m in self._per_kind() for t in [*m.tables, *m.bags]]

    def regularization(self) -> Tensor:
        return embedding_l2(self.weights(), self.emb_reg)

    def field_weights(self) -> dict[tuple[str, str], Tensor]:
        names = self.fields.all_names
        return {(kind, name): table.weight for kind, m in zip(self.kinds, self._per_kind())
                for name, table in zip(names, [*m.tables, *m.bags])}


def embedding_l2(tables: Iterable[Tensor], emb_reg: float) -> Tensor:
    """(emb_reg / 2) * sum of squared L2 norms over whole tables (FuxiCTR's embedding_regularizer)."""
    return (emb_reg / 2) * sum(w.pow(2).sum() for w in tables)


def build_field_tables(fields: InputFields, kinds: dict[str, int], settings: TableSettings) -> FieldTables:
    """The tables of `kinds` over `fields` on settings.backend."""
    if settings.backend == "reference":
        return DenseFieldTables(fields, kinds, settings.emb_reg).to(settings.device)
    if settings.backend == "torchrec":
        # Imported only here: the reference backend never loads torchrec / fbgemm.
        from ..embedding import FusedFieldTables, FusedTablesConfig

        cfg = FusedTablesConfig(field_names=fields.all_names,
                                vocab_sizes=list(fields.vocab_sizes) + [b.vocab_size for b in fields.bags],
                                kinds=dict(kinds), optimizer=settings.sparse_optimizer, lr=settings.sparse_lr,
                                eps=settings.sparse_eps, emb_reg=settings.emb_reg,
                                pooling={b.name: b.pooling for b in fields.bags})
        return FusedFieldTables(cfg, fields, device=settings.device, fused=settings.fused)
    raise InputError(f"config key 'model.backend': {settings.backend!r} is not one of {', '.join(BACKENDS)}")
