"""Sample Selection Embedding Modules: ids [B, F] or Features -> (e_s, e_c), the inputs of the simple
and the complex encoder (REFERENCE.md "SSEM")."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..features import BagField, ModelInput
from .layers import FieldEmbeddings, MLPBlock, xavier_linear


class SSEM(nn.Module):
    """Common face of every SSEM: forward(ids [B, F] | Features) -> (e_s [B, simple_dim], e_c [B, complex_dim])."""

    simple_dim: int
    complex_dim: int

    def embedding_tables(self) -> list[nn.Parameter]:
        """The embedding weights the regularizer covers."""
        raise NotImplementedError


class SER(SSEM):
    """Two independent tables per field: easy (dim d/2) -> e_s, hard (dim d) -> e_c."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField] = ()):
        super().__init__()
        if dim % 2:
            raise InputError(f"config key 'model.embedding_dim': SER halves it for the easy tables, "
                             f"so it must be even, got {dim}")
        self.easy = FieldEmbeddings(vocab_sizes, dim // 2, bag_fields)
        self.hard = FieldEmbeddings(vocab_sizes, dim, bag_fields)
        self.simple_dim = self.easy.output_dim
        self.complex_dim = self.hard.output_dim

    def forward(self, x: ModelInput) -> tuple[Tensor, Tensor]:
        return self.easy(x), self.hard(x)

    def embedding_tables(self) -> list[nn.Parameter]:
        return self.easy.weights() + self.hard.weights()


class GM(SSEM):
    """One table; a per-sample gate g = sigmoid(MLP_g(e)) splits it: e_s = g*e, e_c = (1-g)*e."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, batch_norm: bool, dropout: float,
                 bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.embedding = FieldEmbeddings(vocab_sizes, dim, bag_fields)
        width = self.embedding.output_dim
        # max(1, .) only matters for toy sizes (F*d < 4), where the authors' F*d//4 would be 0 wide.
        self.gate_mlp = MLPBlock(width, [max(1, width // 4)], batch_norm, dropout)
        self.gate_out = xavier_linear(self.gate_mlp.output_dim, 1)
        self.simple_dim = self.complex_dim = width

    def forward(self, x: ModelInput) -> tuple[Tensor, Tensor]:
        e = self.embedding(x)
        g = torch.sigmoid(self.gate_out(self.gate_mlp(e)))  # [B, 1]
        return g * e, (1 - g) * e

    def embedding_tables(self) -> list[nn.Parameter]:
        return self.embedding.weights()


class MoE(SSEM):
    """MMoE over one table: 2 experts MLP(e; [F*d/2, F*d]), 2 softmax gates; gate 1 mixes the experts
    into e_s, gate 2 into e_c."""

    NUM_EXPERTS = 2

    def __init__(self, vocab_sizes: Sequence[int], dim: int, batch_norm: bool, dropout: float,
                 bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.embedding = FieldEmbeddings(vocab_sizes, dim, bag_fields)
        width = self.embedding.output_dim
        expert_hidden = [max(1, width // 2), width]
        self.experts = nn.ModuleList(
            MLPBlock(width, expert_hidden, batch_norm, dropout) for _ in range(self.NUM_EXPERTS))
        self.gates = nn.ModuleList(self._gate(width, batch_norm, dropout) for _ in range(2))
        self.simple_dim = self.complex_dim = width

    def _gate(self, width: int, batch_norm: bool, dropout: float) -> nn.Sequential:
        hidden = MLPBlock(width, [max(1, width // 4)], batch_norm, dropout)
        return nn.Sequential(hidden, xavier_linear(hidden.output_dim, self.NUM_EXPERTS))

    def forward(self, x: ModelInput) -> tuple[Tensor, Tensor]:
        e = self.embedding(x)
        experts = torch.stack([expert(e) for expert in self.experts], dim=1)  # [B, K, F*d]
        mixed = [(torch.softmax(gate(e), dim=-1).unsqueeze(-1) * experts).sum(dim=1) for gate in self.gates]
        return mixed[0], mixed[1]

    def embedding_tables(self) -> list[nn.Parameter]:
        return self.embedding.weights()


class Share(SSEM):
    """No selection: one table, both encoders see the same embeddings."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, bag_fields: Sequence[BagField] = ()):
        super().__init__()
        self.embedding = FieldEmbeddings(vocab_sizes, dim, bag_fields)
        self.simple_dim = self.complex_dim = self.embedding.output_dim

    def forward(self, x: ModelInput) -> tuple[Tensor, Tensor]:
        e = self.embedding(x)
        return e, e

    def embedding_tables(self) -> list[nn.Parameter]:
        return self.embedding.weights()


SSEM_NAMES = ("SER", "GM", "MoE", "share")


def build_ssem(name: str, vocab_sizes: Sequence[int], dim: int, batch_norm: bool, dropout: float,
               bag_fields: Sequence[BagField] = ()) -> SSEM:
    if name == "SER":
        return SER(vocab_sizes, dim, bag_fields)
    if name == "GM":
        return GM(vocab_sizes, dim, batch_norm, dropout, bag_fields)
    if name == "MoE":
        return MoE(vocab_sizes, dim, batch_norm, dropout, bag_fields)
    if name == "share":
        return Share(vocab_sizes, dim, bag_fields)
    raise InputError(f"config key 'model.ssem': unknown SSEM {name!r} (known: {', '.join(SSEM_NAMES)})")
