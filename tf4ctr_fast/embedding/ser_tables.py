"""SER's dual tables (REFERENCE.md "SSEM": easy d/2 -> e_s, hard d -> e_c) as ONE TorchRec
EmbeddingBagCollection, trained by FBGEMM's fused table-batched embedding kernel (TBE).

Tables: f"{field}__easy" (dim d/2) and f"{field}__hard" (dim d) for every field, easy tables first, in
field order. Features: one KJT key per field, named after the field, feeding both of its tables (the
ids travel once; TorchRec names the outputs f"{field}@{field}__easy" / "__hard"). So the pooled output
is [easy tables | hard tables], field-major: exactly the reference layout of (e_s, e_c).

Two ways to run the same tables:
- `fused=True` (single process): torchrec's FusedEmbeddingBagCollection; the sparse optimizer step
  runs inside backward, only on the rows the batch touched.
- `fused=False`: a plain EmbeddingBagCollection, the module `tf4ctr_fast.distributed.shard_model`
  hands to DistributedModelParallel, which turns it into fused sharded TBEs.

All tables use SUM pooling in the kernel; mean-pooled fields are divided by their bag length here, so
one TBE serves every field and the output keeps field order (FBGEMM needs one TBE per pooling mode).

Regularizer: (lambda/2) * sum of ||row||^2 over the distinct rows the batch looks up (REFERENCE.md
"Our decisions" 3), computed from extra single-id bags in the same lookup (see
features.append_unique_row_bags). Chosen over FBGEMM weight decay because EXACT_SGD has none and Adam
only a decoupled form: this way every optimizer sees the same objective, and `regularization()` is a
real differentiable term like the reference's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from ..errors import InputError
from ..reference.layers import init_embedding_table_
from ..reference.ssem import SSEM
from ..features import ModelInput, check_bags, split_input
from .features import append_unique_row_bags, check_ids, check_kjt, drop_padding, features_to_kjt, ids_to_kjt

OPTIMIZERS = ("rowwise_adagrad", "sgd", "adam")
POOLINGS = ("sum", "mean")
# FBGEMM TBE stores rows in 4-float groups, so both d/2 and d must be multiples of 4.
TBE_DIM_MULTIPLE = 4


@dataclass
class SERTablesConfig:
    """What the tables are and how the fused kernel updates them.

    optimizer: "rowwise_adagrad" | "sgd" fused everywhere; "adam" only on CUDA (FBGEMM's CPU TBE has
    no Adam). lr/eps go to the fused optimizer; emb_reg is the lambda of the batch regularizer.
    pooling: per field "sum" (default) or "mean", used by multi-valued fields given as a KJT.
    """

    field_names: list[str]
    vocab_sizes: list[int]
    dim: int = 16
    optimizer: str = "rowwise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    emb_reg: float = 0.0
    pooling: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if len(self.field_names) != len(self.vocab_sizes) or not self.field_names:
            raise InputError(f"SER tables: {len(self.field_names)} field names for "
                             f"{len(self.vocab_sizes)} vocabulary sizes")
        if len(set(self.field_names)) != len(self.field_names):
            raise InputError(f"SER tables: duplicate field names in {self.field_names}")
        bad = [(n, v) for n, v in zip(self.field_names, self.vocab_sizes) if v < 1]
        if bad:
            raise InputError(f"SER tables: field {bad[0][0]!r} has vocabulary size {bad[0][1]}, need >= 1")
        if self.dim % (2 * TBE_DIM_MULTIPLE):
            raise InputError(f"config key 'model.embedding_dim': the TorchRec backend needs a multiple of "
                             f"{2 * TBE_DIM_MULTIPLE} (FBGEMM rows are groups of 4 floats and SER halves "
                             f"the dim), got {self.dim}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"SER tables: unknown sparse optimizer {self.optimizer!r} "
                             f"(known: {', '.join(OPTIMIZERS)})")
        if self.lr <= 0 or self.eps <= 0 or self.emb_reg < 0:
            raise InputError(f"SER tables: need lr > 0, eps > 0, emb_reg >= 0, got "
                             f"lr={self.lr}, eps={self.eps}, emb_reg={self.emb_reg}")
        for name, mode in self.pooling.items():
            if name not in self.field_names or mode not in POOLINGS:
                raise InputError(f"SER tables: pooling {name!r}: {mode!r} (fields: {self.field_names}; "
                                 f"modes: {', '.join(POOLINGS)})")

    def table_configs(self) -> list[EmbeddingBagConfig]:
        def table(name: str, vocab: int, dim: int, kind: str) -> EmbeddingBagConfig:
            return EmbeddingBagConfig(name=f"{name}__{kind}", embedding_dim=dim, num_embeddings=vocab,
                                      feature_names=[name], pooling=PoolingType.SUM)

        return ([table(n, v, self.dim // 2, "easy") for n, v in zip(self.field_names, self.vocab_sizes)]
                + [table(n, v, self.dim, "hard") for n, v in zip(self.field_names, self.vocab_sizes)])

    def fused_optimizer(self, device: torch.device) -> tuple[type, dict]:
        """(optimizer class, kwargs) in the form torchrec maps onto FBGEMM's fused optimizers, both for
        FusedEmbeddingBagCollection and for apply_optimizer_in_backward + DistributedModelParallel."""
        if self.optimizer == "sgd":
            return torch.optim.SGD, {"lr": self.lr}
        if self.optimizer == "rowwise_adagrad":
            return RowWiseAdagrad, {"lr": self.lr, "eps": self.eps}
        if device.type != "cuda":
            raise InputError("sparse optimizer 'adam' is fused by FBGEMM on CUDA only; on CPU use "
                             "'rowwise_adagrad' or 'sgd'")
        return torch.optim.Adam, {"lr": self.lr, "eps": self.eps}


class SERTables(SSEM):
    """forward(ids [B, F] | Features(ids, bags) | KeyedJaggedTensor) -> (e_s [B, F*d/2], e_c [B, F*d]).

    With Features, ids [B, S] are the first S of cfg.field_names and the bags the rest (any order).

    `regularization()` returns the batch regularizer of the last forward run with grad enabled (zero
    otherwise); add it to the loss before backward, like the reference's whole-table term.
    """

    def __init__(self, cfg: SERTablesConfig, device: Optional[torch.device] = None, fused: bool = True):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        device = torch.device(device or "cpu")
        tables = cfg.table_configs()
        if fused:
            optimizer, kwargs = cfg.fused_optimizer(device)
            self.ebc: nn.Module = FusedEmbeddingBagCollection(tables, optimizer, kwargs, device=device)
        else:
            self.ebc = EmbeddingBagCollection(tables, device=device)
        # Not a table init_fn: sharded modules would apply it per shard (zeroing each shard's row 0).
        for table in tables:
            init_embedding_table_(self.ebc.embedding_bags[table.name].weight)
        num_fields = len(cfg.field_names)
        self.simple_dim = num_fields * cfg.dim // 2
        self.complex_dim = num_fields * cfg.dim
        self.emb_reg = cfg.emb_reg
        self._out_keys = [f"{n}@{t.name}" for t in tables for n in t.feature_names]
        self.register_buffer("_bounds", torch.tensor(cfg.vocab_sizes, device=device), persistent=False)
        offsets = torch.tensor([0] + list(cfg.vocab_sizes), device=device).cumsum(0)
        self.register_buffer("_row_offsets", offsets, persistent=False)
        mean = torch.tensor([cfg.pooling.get(n, "sum") == "mean" for n in cfg.field_names], device=device)
        self.register_buffer("_mean_fields", mean, persistent=False)
        self._has_mean = bool(mean.any())
        self._reg: Optional[Tensor] = None

    def to_kjt(self, features: Union[ModelInput, KeyedJaggedTensor]) -> KeyedJaggedTensor:
        """Checked KJT in field order without padding ids (InputError names any out-of-range id)."""
        names = self.cfg.field_names
        if isinstance(features, KeyedJaggedTensor):
            return drop_padding(check_kjt(features, names, self._bounds))
        ids, bags = split_input(features)
        num_single = len(names) - len(bags)
        check_ids(ids, names[:num_single], self._bounds[:num_single])
        if not bags:
            return ids_to_kjt(ids, names)
        check_bags(bags, names[num_single:], ids.shape[0])
        return drop_padding(check_kjt(features_to_kjt(ids, names[:num_single], bags), names, self._bounds))

    def forward(self, features: Union[ModelInput, KeyedJaggedTensor]) -> tuple[Tensor, Tensor]:
        kjt = self.to_kjt(features)
        batch = kjt.stride()
        with_reg = self.emb_reg > 0 and torch.is_grad_enabled()
        bag_lengths = kjt.lengths().view(len(self.cfg.field_names), batch) if self._has_mean else None
        if with_reg:
            kjt = append_unique_row_bags(kjt, self._row_offsets)
        pooled = self._ordered(self.ebc(kjt))
        # split, not slicing: each slice's backward would materialise a zero gradient of the full size.
        main, extra = pooled.split([batch, pooled.shape[0] - batch])
        self._reg = (self.emb_reg / 2) * extra.pow(2).sum() if with_reg else None
        if bag_lengths is not None:
            main = self._mean_pool(main, bag_lengths)
        e_s, e_c = main.split([self.simple_dim, self.complex_dim], dim=1)
        return e_s, e_c

    def _ordered(self, kt: KeyedTensor) -> Tensor:
        """The pooled values as [easy tables | hard tables]; sharded lookups may return another order."""
        if kt.keys() == self._out_keys:
            return kt.values()
        return KeyedTensor.regroup([kt], [self._out_keys])[0]

    def _mean_pool(self, summed: Tensor, bag_lengths: Tensor) -> Tensor:
        num_fields, batch = bag_lengths.shape
        divisor = torch.where(self._mean_fields[:, None], bag_lengths.clamp(min=1), 1).t().to(summed.dtype)
        half = self.cfg.dim // 2
        e_s = summed[:, :self.simple_dim].view(batch, num_fields, half) / divisor[:, :, None]
        e_c = summed[:, self.simple_dim:].view(batch, num_fields, self.cfg.dim) / divisor[:, :, None]
        return torch.cat([e_s.reshape(batch, -1), e_c.reshape(batch, -1)], dim=1)

    def regularization(self) -> Tensor:
        if self._reg is None:
            return torch.zeros((), device=self._bounds.device)
        return self._reg

    def table_weights(self) -> dict[str, Tensor]:
        """Table name -> weight [vocab, dim] (live views of the kernel's storage when fused)."""
        return {t.name: self.ebc.embedding_bags[t.name].weight for t in self.cfg.table_configs()}

    def embedding_tables(self) -> list[Tensor]:
        return list(self.table_weights().values())

    def sparse_optimizer(self):
        """The fused optimizer's KeyedOptimizer (set its param_groups' lr to change the table lr; the
        kernel picks it up on step()/zero_grad()). None for the unfused module."""
        return self.ebc.fused_optimizer() if isinstance(self.ebc, FusedEmbeddingBagCollection) else None
