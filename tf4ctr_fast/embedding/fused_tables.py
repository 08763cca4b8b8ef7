"""A model's field tables (every kind of every field, layers.embedding.FieldTables) as ONE TorchRec
EmbeddingBagCollection, trained by FBGEMM's fused table-batched embedding kernel (TBE).

Tables: f"{field}__{kind}" for every kind and field, kind-major in the model's kind order, fields in
input order (SER: f"{field}__easy" (d/2) then f"{field}__hard" (d)). Features: one KJT key per field,
named after the field, feeding all of its tables (the ids travel once; TorchRec names the outputs
f"{field}@{field}__{kind}"). So the pooled output is [kind 0 tables | kind 1 tables | ...], field-major:
exactly the reference layout of each kind's output.

FBGEMM stores rows in groups of 4 floats: a kind whose dim is not a multiple of 4 (the 1-wide
logistic-regression weights of FM, DeepFM, ...) is stored 4-aligned, its extra columns zero and never
read, so they get no gradient and stay zero (the row-wise optimizers' per-row state then averages over
the stored width: docs/embedding.md).

Two ways to run the same tables:
- `fused=True` (single process): torchrec's FusedEmbeddingBagCollection; the sparse optimizer step
  runs inside backward, only on the rows the batch touched. Its one TBE is fed directly (ids ->
  FieldBags -> indices/offsets, no KJT, no torchrec bookkeeping, FBGEMM's bounds check skipped because
  ours already ran), and the gradient of its output is assembled in one buffer (_SplitPooled): the
  same kernel calls on the same inputs as torchrec's forward, at a fraction of the per-step overhead.
- `fused=False`: a plain EmbeddingBagCollection, the module `tf4ctr_fast.distributed.shard_model`
  hands to DistributedModelParallel, which turns it into fused sharded TBEs.

All tables use SUM pooling in the kernel; mean-pooled fields are divided by their bag length here, so
one TBE serves every field and the output keeps field order (FBGEMM needs one TBE per pooling mode).

Regularizer: (lambda/2) * sum of ||row||^2 over the distinct rows the batch looks up (REFERENCE.md
"Our decisions" 3), computed from extra single-id bags in the same lookup (see
features.append_unique_rows). Chosen over FBGEMM weight decay because EXACT_SGD has none and Adam
only a decoupled form: this way every optimizer sees the same objective, and `regularization()` is a
real differentiable term like the reference's.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from ..errors import InputError
from ..features import ModelInput, check_bags, split_input
from ..layers.embedding import FieldTables, InputFields
from ..layers.init import init_embedding_table_
from .features import (FieldBags, append_unique_rows, check_ids, check_kjt, drop_padding, features_to_kjt,
                       field_bags_to_kjt, ids_to_field_bags, kjt_to_field_bags, row_offsets_for)
from .sparse_adam import AdamLookup, RowSparseAdam

OPTIMIZERS = ("rowwise_adagrad", "sgd", "adam", "lazy_adam")
# Run by our kernel (embedding/sparse_adam.py) on CPU, where FBGEMM's TBE has no Adam.
CPU_ADAMS = ("adam", "lazy_adam")
POOLINGS = ("sum", "mean")
# FBGEMM TBE stores rows in 4-float groups: each kind's stored width is its dim rounded up to this.
TBE_DIM_MULTIPLE = 4


def stored_dim(dim: int) -> int:
    return -(-dim // TBE_DIM_MULTIPLE) * TBE_DIM_MULTIPLE


@dataclass
class FusedTablesConfig:
    """What the tables are and how the fused kernel updates them.

    kinds: kind -> embedding dim, one table per kind and field (in this order).
    optimizer: "rowwise_adagrad" | "sgd" fused by FBGEMM everywhere; "adam" (dense Adam's result with
    the whole-table L2, embedding/sparse_adam.py) on CPU, one process; "lazy_adam" (Adam on the
    looked-up rows) ours on CPU, one process, FBGEMM's on CUDA. lr/eps go to the sparse optimizer;
    emb_reg is the lambda of the batch regularizer (and of the steps "adam" replays).
    pooling: per field "sum" (default) or "mean", used by multi-valued fields given as a KJT.
    """

    field_names: list[str]
    vocab_sizes: list[int]
    kinds: dict[str, int] = field(default_factory=dict)
    optimizer: str = "rowwise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    emb_reg: float = 0.0
    pooling: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if len(self.field_names) != len(self.vocab_sizes) or not self.field_names:
            raise InputError(f"fused tables: {len(self.field_names)} field names for "
                             f"{len(self.vocab_sizes)} vocabulary sizes")
        if len(set(self.field_names)) != len(self.field_names):
            raise InputError(f"fused tables: duplicate field names in {self.field_names}")
        bad = [(n, v) for n, v in zip(self.field_names, self.vocab_sizes) if v < 1]
        if bad:
            raise InputError(f"fused tables: field {bad[0][0]!r} has vocabulary size {bad[0][1]}, need >= 1")
        if not self.kinds or any(dim < 1 for dim in self.kinds.values()):
            raise InputError(f"fused tables: need at least one kind, each dim >= 1, got {self.kinds}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"fused tables: unknown sparse optimizer {self.optimizer!r} "
                             f"(known: {', '.join(OPTIMIZERS)})")
        if self.lr <= 0 or self.eps <= 0 or self.emb_reg < 0:
            raise InputError(f"fused tables: need lr > 0, eps > 0, emb_reg >= 0, got "
                             f"lr={self.lr}, eps={self.eps}, emb_reg={self.emb_reg}")
        for name, mode in self.pooling.items():
            if name not in self.field_names or mode not in POOLINGS:
                raise InputError(f"fused tables: pooling {name!r}: {mode!r} (fields: {self.field_names}; "
                                 f"modes: {', '.join(POOLINGS)})")

    def table_configs(self) -> list[EmbeddingBagConfig]:
        return [EmbeddingBagConfig(name=f"{name}__{kind}", embedding_dim=stored_dim(dim), num_embeddings=vocab,
                                   feature_names=[name], pooling=PoolingType.SUM)
                for kind, dim in self.kinds.items() for name, vocab in zip(self.field_names, self.vocab_sizes)]

    def fused_optimizer(self, device: torch.device) -> tuple[type, dict]:
        """(optimizer class, kwargs) in the form torchrec maps onto FBGEMM's fused optimizers, both for
        FusedEmbeddingBagCollection and for apply_optimizer_in_backward + DistributedModelParallel."""
        if self.optimizer == "sgd":
            return torch.optim.SGD, {"lr": self.lr}
        if self.optimizer == "rowwise_adagrad":
            return RowWiseAdagrad, {"lr": self.lr, "eps": self.eps}
        if self.optimizer == "lazy_adam" and device.type == "cuda":
            return torch.optim.Adam, {"lr": self.lr, "eps": self.eps}
        raise InputError(adam_unsupported(self.optimizer, device, sharded=True) or
                         f"sparse optimizer {self.optimizer!r} is not fused by FBGEMM on {device.type}")

    def runs_cpu_adam(self, device: torch.device) -> bool:
        """Whether our row-sparse Adam trains these tables (one process; FBGEMM holds the weights)."""
        reason = adam_unsupported(self.optimizer, device, sharded=False)
        if reason:
            raise InputError(reason)
        return self.optimizer in CPU_ADAMS and device.type == "cpu"


def adam_unsupported(optimizer: str, device: torch.device, sharded: bool) -> Optional[str]:
    """Why sparse optimizer `optimizer` cannot train tables on `device` (sharded: under
    DistributedModelParallel); None where it can. Ours run on CPU in one process, FBGEMM fuses
    "lazy_adam" on CUDA."""
    ours = device.type == "cpu" and not sharded
    if optimizer == "adam" and not ours:
        return ("sparse optimizer 'adam' (dense Adam's result, docs/embedding.md) runs on CPU in one process "
                f"only, not on {device.type} or sharded; use 'lazy_adam' (Adam on the looked-up rows), "
                "'rowwise_adagrad' or 'sgd'")
    if optimizer == "lazy_adam" and not (ours or device.type == "cuda"):
        return ("sparse optimizer 'lazy_adam' runs on CPU in one process only (FBGEMM's CPU kernel has no "
                "Adam), not sharded; use 'rowwise_adagrad' or 'sgd' with --nproc on CPU")
    return None


# train.sparse_lr when unset, by sparse optimizer; the Adam kinds take the dense lr (the reference's one
# Adam trains its tables at that lr).
DEFAULT_SPARSE_LR = {"rowwise_adagrad": 0.01, "sgd": 0.01}


def resolve_sparse(optimizer: str, lr: Optional[float], dense_lr: float, device: torch.device,
                   sharded: bool) -> tuple[str, float]:
    """(optimizer, lr) with optimizer "auto" and lr None made concrete: "auto" is "adam" where it runs
    (the sparse optimizer at parity with the reference backend), else "rowwise_adagrad"."""
    if optimizer == "auto":
        optimizer = "adam" if adam_unsupported("adam", device, sharded) is None else "rowwise_adagrad"
    return optimizer, (lr if lr is not None else DEFAULT_SPARSE_LR.get(optimizer, dense_lr))


class _SplitPooled(torch.autograd.Function):
    """pooled [B + R, sum of widths] -> (part per kind [B, width_k] ..., (lambda/2) * ||pooled[B:]||^2).

    The parts are views, the regularizer is the formula of REFERENCE.md "Our decisions" 3 on the R
    extra rows. The point is the backward: FBGEMM's backward takes the gradient of the whole
    [B + R, D] output, which autograd would assemble from nested splits with full-size cats (plus a
    few [R, D] temporaries for the regularizer); here each part is written once into one new buffer,
    the regularizer's part as lambda * row * upstream gradient, in the order autograd's pow/sum/mul
    backward computes it, so the result is bit for bit the same.
    """

    @staticmethod
    def forward(ctx, pooled: Tensor, batch: int, widths: tuple[int, ...], emb_reg: float):
        ctx.set_materialize_grads(False)   # an unused output's part is zero-filled, not materialised
        ctx.batch, ctx.widths, ctx.emb_reg = batch, widths, emb_reg
        extra = pooled[batch:]
        ctx.save_for_backward(extra)
        reg = (emb_reg / 2) * extra.pow(2).sum()
        return (*pooled[:batch].split(list(widths), dim=1), reg)

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):
        (extra,) = ctx.saved_tensors
        batch = ctx.batch
        grad = extra.new_empty(batch + extra.shape[0], extra.shape[1])
        for part, g in zip(grad[:batch].split(list(ctx.widths), dim=1), grads[:-1]):
            if g is None:
                part.zero_()
            else:
                part.copy_(g)
        g_reg = grads[-1]
        if g_reg is None:
            grad[batch:].zero_()
        else:
            # autograd: (g * lambda/2) * (2 * row); the factor 2 is exact in floating point.
            torch.mul(extra, (g_reg * (ctx.emb_reg / 2)) * 2, out=grad[batch:])
        return grad, None, None, None


@contextmanager
def _fbgemm_bounds_check_off(lookups: nn.Module):
    """Skip FBGEMM's own pass over the indices (bounds_check_indices) for one lookup whose ids and
    lengths were checked already (check_ids / check_kjt). Restored afterwards, so that a direct call
    of `FusedFieldTables.ebc` keeps FBGEMM's clamping of bad ids."""
    tbe = lookups._emb_module
    saved = tbe.bounds_check_mode_int
    tbe.bounds_check_mode_int = BoundsCheckMode.NONE.value
    try:
        yield
    finally:
        tbe.bounds_check_mode_int = saved


class FusedFieldTables(FieldTables):
    """forward(ids [B, F] | Features(ids, bags) | KeyedJaggedTensor) -> per kind [B, F * dim_k].

    With Features, ids [B, S] are the first S of cfg.field_names and the bags the rest (any order).

    `regularization()` returns the batch regularizer of the last forward run with grad enabled (zero
    otherwise); add it to the loss before backward, like the reference's whole-table term.
    """

    def __init__(self, cfg: FusedTablesConfig, fields: Optional[InputFields] = None,
                 device: Optional[torch.device] = None, fused: bool = True):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.kinds = dict(cfg.kinds)
        self.fields = fields or InputFields.of(cfg.vocab_sizes, cfg.field_names)
        device = torch.device(device or "cpu")
        tables = cfg.table_configs()
        cpu_adam = fused and cfg.runs_cpu_adam(device)   # our Adam (embedding/sparse_adam.py)
        # The plain EBC draws a default init from the global generator, the fused one does not: both
        # are built on a forked generator, so that a sharded run (fused=False) and a one-process run
        # start from the same weights (their own init below draws the same numbers).
        gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            if fused:
                # Our Adam keeps its own state: the TBE only stores the weights (its SGD never runs).
                optimizer, kwargs = (torch.optim.SGD, {"lr": cfg.lr}) if cpu_adam else cfg.fused_optimizer(device)
                self.ebc: nn.Module = FusedEmbeddingBagCollection(tables, optimizer, kwargs, device=device)
            else:
                self.ebc = EmbeddingBagCollection(tables, device=device)
        # Not a table init_fn: sharded modules would apply it per shard (zeroing each shard's row 0).
        for table in tables:
            weight = self.ebc.embedding_bags[table.name].weight
            init_embedding_table_(weight)
            with torch.no_grad():
                weight[:, self.kinds[table.name.rsplit("__", 1)[1]]:].zero_()   # 4-alignment columns
        num_fields = len(cfg.field_names)
        self._stored_widths = tuple(num_fields * stored_dim(dim) for dim in self.kinds.values())
        self.emb_reg = cfg.emb_reg
        # TorchRec names a pooled output f"{feature}@{table}" only when the feature feeds several tables.
        self._out_keys = [f"{n}@{t.name}" if len(self.kinds) > 1 else n for t in tables for n in t.feature_names]
        self._single_tbe = _holds_one_tbe_in_order(self.ebc, tables)
        self.register_buffer("_bounds", torch.tensor(cfg.vocab_sizes, device=device), persistent=False)
        self.register_buffer("_row_offsets", row_offsets_for(cfg.vocab_sizes, device), persistent=False)
        mean = torch.tensor([cfg.pooling.get(n, "sum") == "mean" for n in cfg.field_names], device=device)
        self.register_buffer("_mean_fields", mean, persistent=False)
        self._has_mean = bool(mean.any())
        self._reg: Optional[Tensor] = None
        self._adam: Optional[RowSparseAdam] = None
        if cpu_adam:
            if not self._single_tbe:
                raise InputError(f"sparse optimizer {cfg.optimizer!r}: torchrec did not put the tables in one TBE")
            self._adam = RowSparseAdam(self.ebc._emb_modules[0]._emb_module, cfg.lr, cfg.eps, cfg.emb_reg,
                                       replay=cfg.optimizer == "adam")
            self._adam_anchor = torch.empty(0, requires_grad=True)
            # Whoever reads the weights (checkpoints, export, conversions) reads them caught up.
            self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module._adam.catch_up())

    def train(self, mode: bool = True) -> "FusedFieldTables":
        """Eval mode catches every row up with the steps it owes (sparse optimizer "adam")."""
        if not mode and self._adam is not None:
            self._adam.catch_up()
        return super().train(mode)

    def to_kjt(self, features: Union[ModelInput, KeyedJaggedTensor]) -> KeyedJaggedTensor:
        """Checked KJT in field order without padding ids (InputError names any out-of-range id)."""
        return field_bags_to_kjt(self._field_bags(features), self.cfg.field_names)

    def _field_bags(self, features: Union[ModelInput, KeyedJaggedTensor]) -> FieldBags:
        """What to_kjt returns, as FieldBags (the fused lookup takes those, without a KJT)."""
        names = self.cfg.field_names
        if isinstance(features, KeyedJaggedTensor):
            return kjt_to_field_bags(drop_padding(check_kjt(features, names, self._bounds)))
        ids, bags = split_input(features)
        if not bags:
            return ids_to_field_bags(ids, names, self._bounds)
        num_single = len(names) - len(bags)
        check_ids(ids, names[:num_single], self._bounds[:num_single])
        check_bags(bags, names[num_single:], ids.shape[0])
        kjt = check_kjt(features_to_kjt(ids, names[:num_single], bags), names, self._bounds)
        return kjt_to_field_bags(drop_padding(kjt))

    def forward(self, features: Union[ModelInput, KeyedJaggedTensor]) -> tuple[Tensor, ...]:
        bags = self._field_bags(features)
        batch_lengths = bags.lengths
        with_reg = self.emb_reg > 0 and torch.is_grad_enabled()
        if with_reg:
            bags = append_unique_rows(bags, self._row_offsets)
        parts, self._reg = self._split(self._lookup(bags), batch_lengths.shape[1], with_reg)
        parts = [self._drop_alignment(part, dim) for part, dim in zip(parts, self.kinds.values())]
        if self._has_mean:
            divisor = self._mean_divisor(batch_lengths).to(parts[0].dtype)
            parts = [_divide_per_field(part, divisor) for part in parts]
        return tuple(parts)

    def _split(self, pooled: Tensor, batch: int, with_reg: bool) -> tuple[tuple[Tensor, ...], Optional[Tensor]]:
        """(part per kind, regularizer or None) of the pooled [batch + extra rows, sum of widths]."""
        if pooled.requires_grad or with_reg:
            *parts, reg = _SplitPooled.apply(pooled, batch, self._stored_widths, self.emb_reg)
            return tuple(parts), reg if with_reg else None
        # Inference: no extra rows, nothing to differentiate; plain views.
        return pooled.split(list(self._stored_widths), dim=1), None

    @staticmethod
    def _drop_alignment(part: Tensor, dim: int) -> Tensor:
        """[B, F * stored] -> [B, F * dim]: the columns a 4-aligned table stores beyond its dim go."""
        stored = stored_dim(dim)
        if stored == dim:
            return part
        return part.view(part.shape[0], -1, stored)[:, :, :dim].reshape(part.shape[0], -1)

    def _lookup(self, bags: FieldBags) -> Tensor:
        """Pooled sums [stride, sum of widths]: [kind 0 tables | kind 1 tables | ...], field-major."""
        if self._single_tbe and isinstance(self.ebc, FusedEmbeddingBagCollection):
            return self._fused_lookup(bags)
        return self._ordered(self.ebc(field_bags_to_kjt(bags, self.cfg.field_names)))

    # Eager under torch.compile: Dynamo would trace into FBGEMM's Python wrapper (and fail in its
    # cache-prefetch branch); the kernel is opaque anyway.
    @torch.compiler.disable
    def _fused_lookup(self, bags: FieldBags) -> Tensor:
        """The FusedEmbeddingBagCollection's lookup without its KJT bookkeeping: the same indices and
        offsets go straight to its one TBE (feature t of tables [kind 0 fields | kind 1 fields | ...]
        reads field t mod F), whose output already is the kind-major layout (torchrec would copy it
        once more).
        """
        lookups = self.ebc._emb_modules[0]
        indices, lengths = bags.values.to(torch.int32), bags.lengths.reshape(-1).to(torch.int32)
        copies = len(self.kinds)
        indices, lengths = torch.cat([indices] * copies), torch.cat([lengths] * copies)
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
        if self._adam is not None:
            return AdamLookup.apply(self._adam_anchor, self._adam, indices, offsets)
        with _fbgemm_bounds_check_off(lookups):
            return lookups(indices, offsets, None)

    def _ordered(self, kt: KeyedTensor) -> Tensor:
        """The pooled values kind-major; sharded lookups may return another order."""
        if kt.keys() == self._out_keys:
            return kt.values()
        return KeyedTensor.regroup([kt], [self._out_keys])[0]

    def _mean_divisor(self, bag_lengths: Tensor) -> Tensor:
        """[B, F]: the bag length (at least 1) for mean-pooled fields, 1 for summed ones."""
        return torch.where(self._mean_fields[:, None], bag_lengths.clamp(min=1), 1).t()

    def regularization(self) -> Tensor:
        if self._reg is None:
            return torch.zeros((), device=self._bounds.device)
        return self._reg

    def table_weights(self) -> dict[str, Tensor]:
        """Table name -> weight [vocab, stored dim] (live views of the kernel's storage when fused)."""
        return {t.name: self.ebc.embedding_bags[t.name].weight for t in self.cfg.table_configs()}

    def weights(self) -> list[Tensor]:
        return list(self.table_weights().values())

    def field_weights(self) -> dict[tuple[str, str], Tensor]:
        return {(kind, name): self.ebc.embedding_bags[f"{name}__{kind}"].weight[:, :dim]
                for kind, dim in self.kinds.items() for name in self.cfg.field_names}

    def sparse_parameters(self) -> list[nn.Parameter]:
        return list(self.ebc.parameters())

    def sparse_optimizer(self):
        """The fused optimizer's KeyedOptimizer, or our RowSparseAdam (set its param_groups' lr to change
        the table lr; the kernel picks it up on step()/zero_grad()). None for the unfused module."""
        if self._adam is not None:
            return self._adam
        return self.ebc.fused_optimizer() if isinstance(self.ebc, FusedEmbeddingBagCollection) else None


def _divide_per_field(pooled: Tensor, divisor: Tensor) -> Tensor:
    """pooled [B, F*d] / divisor [B, F], each field's d columns by its entry (mean pooling)."""
    batch, num_fields = divisor.shape
    return (pooled.view(batch, num_fields, -1) / divisor[:, :, None]).view(batch, -1)


def _holds_one_tbe_in_order(ebc: nn.Module, tables: list[EmbeddingBagConfig]) -> bool:
    """Whether `ebc` is a FusedEmbeddingBagCollection running all of `tables`, in this order, in ONE
    TBE (torchrec groups tables by pooling and data type; ours share both): then FusedFieldTables feeds that
    TBE directly. Checked against torchrec's internals once; any other layout takes the KJT path."""
    if not isinstance(ebc, FusedEmbeddingBagCollection):
        return False
    groups = list(getattr(ebc, "_key_to_tables", {}).values())
    lookups = getattr(ebc, "_emb_modules", [])
    return (len(groups) == 1 == len(lookups) and [t.name for t in groups[0]] == [t.name for t in tables]
            and all(len(t.feature_names) == 1 for t in tables) and hasattr(lookups[0], "_emb_module"))
