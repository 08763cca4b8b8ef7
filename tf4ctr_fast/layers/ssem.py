"""Sample Selection Embedding Modules: ids [B, F] or Features -> (e_s, e_c), the inputs of the simple
and the complex encoder (REFERENCE.md "SSEM").

Every SSEM has `output_dims` (simple_dim, complex_dim) and gets its tables from a `make_tables(kinds)`
callable (layers.embedding.build_field_tables bound to the model's fields and backend), so each runs on
either embedding backend. SER's tables ARE the SSEM: {"easy": d/2, "hard": d} -> (e_s, e_c).

extra_kinds (build_ssem): more table kinds looked up in the same tables, for encoders that read the ids
themselves (a twin model's LR / FM first-order weights): the SSEM then returns (e_s, e_c, *extras), one
[B, F * dim] per extra kind in the order given. Without them it returns (e_s, e_c) and its tables and
state-dict keys are those of a plain TF4CTR.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..features import BagField, ModelInput
from .embedding import DenseFieldTables, FieldTables, InputFields
from .init import xavier_linear
from .mlp import MLPBlock

MakeTables = Callable[[dict[str, int]], FieldTables]


def _dense_tables(vocab_sizes: Sequence[int], bag_fields: Sequence[BagField]) -> MakeTables:
    """make_tables for the reference backend without regularizer (the standalone SSEM classes)."""
    return lambda kinds: DenseFieldTables(InputFields.of(vocab_sizes, bags=bag_fields), kinds, emb_reg=0.0)


def ser_kinds(dim: int) -> dict[str, int]:
    if dim % 2:
        raise InputError(f"config key 'model.embedding_dim': SER halves it for the easy tables, "
                         f"so it must be even, got {dim}")
    return {"easy": dim // 2, "hard": dim}


class SER(DenseFieldTables):
    """SER on the reference backend, standalone: two tables per field, easy (dim d/2) -> e_s, hard
    (dim d) -> e_c. (Models build SER through build_ssem, on either backend.)"""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField] = ()):
        super().__init__(InputFields.of(vocab_sizes, bags=bag_fields), ser_kinds(dim), emb_reg=0.0)

    @property
    def simple_dim(self) -> int:
        return self.output_dims[0]

    @property
    def complex_dim(self) -> int:
        return self.output_dims[1]

    def embedding_tables(self) -> list[nn.Parameter]:
        return self.weights()


class SingleTableSSEM(nn.Module):
    """An SSEM over one embedding of dim d per field (GM, MoE, share)."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField],
                 make_tables: Optional[MakeTables], extra_kinds: Optional[dict[str, int]] = None):
        super().__init__()
        self.embedding = (make_tables or _dense_tables(vocab_sizes, bag_fields))({"embedding": dim,
                                                                                  **(extra_kinds or {})})
        self.width = self.embedding.output_dims[0]

    @property
    def output_dims(self) -> tuple[int, int]:
        return self.simple_dim, self.complex_dim

    def embed(self, x: ModelInput) -> Tensor:
        return self.lookup(x)[0]

    def lookup(self, x: ModelInput) -> tuple[Tensor, tuple[Tensor, ...]]:
        """(the embedding e, the extra kinds' lookups)."""
        e, *extras = self.embedding(x)
        return e, tuple(extras)

    def embedding_tables(self) -> list[Tensor]:
        return self.embedding.weights()


class GM(SingleTableSSEM):
    """One table; a per-sample gate g = sigmoid(MLP_g(e)) splits it: e_s = g*e, e_c = (1-g)*e."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, batch_norm: bool, dropout: float,
                 bag_fields: Sequence[BagField] = (), make_tables: Optional[MakeTables] = None,
                 extra_kinds: Optional[dict[str, int]] = None):
        super().__init__(vocab_sizes, dim, bag_fields, make_tables, extra_kinds)
        # max(1, .) only matters for toy sizes (F*d < 4), where the authors' F*d//4 would be 0 wide.
        self.gate_mlp = MLPBlock(self.width, [max(1, self.width // 4)], batch_norm, dropout)
        self.gate_out = xavier_linear(self.gate_mlp.output_dim, 1)
        self.simple_dim = self.complex_dim = self.width

    def forward(self, x: ModelInput) -> tuple[Tensor, ...]:
        e, extras = self.lookup(x)
        g = torch.sigmoid(self.gate_out(self.gate_mlp(e)))  # [B, 1]
        return g * e, (1 - g) * e, *extras


class MoE(SingleTableSSEM):
    """MMoE over one table: 2 experts MLP(e; [F*d/2, F*d]), 2 softmax gates; gate 1 mixes the experts
    into e_s, gate 2 into e_c."""

    NUM_EXPERTS = 2

    def __init__(self, vocab_sizes: Sequence[int], dim: int, batch_norm: bool, dropout: float,
                 bag_fields: Sequence[BagField] = (), make_tables: Optional[MakeTables] = None,
                 extra_kinds: Optional[dict[str, int]] = None):
        super().__init__(vocab_sizes, dim, bag_fields, make_tables, extra_kinds)
        width = self.width
        expert_hidden = [max(1, width // 2), width]
        self.experts = nn.ModuleList(
            MLPBlock(width, expert_hidden, batch_norm, dropout) for _ in range(self.NUM_EXPERTS))
        self.gates = nn.ModuleList(self._gate(width, batch_norm, dropout) for _ in range(2))
        self.simple_dim = self.complex_dim = width

    def _gate(self, width: int, batch_norm: bool, dropout: float) -> nn.Sequential:
        hidden = MLPBlock(width, [max(1, width // 4)], batch_norm, dropout)
        return nn.Sequential(hidden, xavier_linear(hidden.output_dim, self.NUM_EXPERTS))

    def forward(self, x: ModelInput) -> tuple[Tensor, ...]:
        e, extras = self.lookup(x)
        experts = torch.stack([expert(e) for expert in self.experts], dim=1)  # [B, K, F*d]
        mixed = [(torch.softmax(gate(e), dim=-1).unsqueeze(-1) * experts).sum(dim=1) for gate in self.gates]
        return mixed[0], mixed[1], *extras


class Share(SingleTableSSEM):
    """No selection: one table, both encoders see the same embeddings."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField] = (),
                 make_tables: Optional[MakeTables] = None, extra_kinds: Optional[dict[str, int]] = None):
        super().__init__(vocab_sizes, dim, bag_fields, make_tables, extra_kinds)
        self.simple_dim = self.complex_dim = self.width

    def forward(self, x: ModelInput) -> tuple[Tensor, ...]:
        e, extras = self.lookup(x)
        return e, e, *extras


SSEM_NAMES = ("SER", "GM", "MoE", "share")


def build_ssem(name: str, vocab_sizes: Sequence[int], dim: int, batch_norm: bool, dropout: float,
               bag_fields: Sequence[BagField] = (), make_tables: Optional[MakeTables] = None,
               extra_kinds: Optional[dict[str, int]] = None) -> nn.Module:
    """The SSEM `name`; its tables from make_tables (default: reference backend, no regularizer), with
    the extra table kinds of the module docstring."""
    make_tables = make_tables or _dense_tables(vocab_sizes, bag_fields)
    extra_kinds = dict(extra_kinds or {})
    if name == "SER":
        return make_tables({**ser_kinds(dim), **extra_kinds})
    if name == "GM":
        return GM(vocab_sizes, dim, batch_norm, dropout, bag_fields, make_tables, extra_kinds)
    if name == "MoE":
        return MoE(vocab_sizes, dim, batch_norm, dropout, bag_fields, make_tables, extra_kinds)
    if name == "share":
        return Share(vocab_sizes, dim, bag_fields, make_tables, extra_kinds)
    raise InputError(f"config key 'model.params.ssem' (or legacy 'model.ssem'): unknown SSEM {name!r} "
                     f"(known: {', '.join(SSEM_NAMES)})")
