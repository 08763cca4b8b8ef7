"""SER's dual tables (REFERENCE.md "SSEM": easy d/2 -> e_s, hard d -> e_c) on the fused TorchRec tables:
FusedFieldTables with the kinds {"easy": d/2, "hard": d}, for use outside the model zoo
(examples/torchrec_user_model.py). TF4CTR builds the same tables through layers.ssem.build_ssem."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import InputError
from .fused_tables import TBE_DIM_MULTIPLE, FusedFieldTables, FusedTablesConfig


@dataclass
class SERTablesConfig:
    """The SER tables of these fields; the other keys as in FusedTablesConfig."""

    field_names: list[str]
    vocab_sizes: list[int]
    dim: int = 16
    optimizer: str = "rowwise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    emb_reg: float = 0.0
    pooling: dict[str, str] = field(default_factory=dict)

    def fused_tables_config(self) -> FusedTablesConfig:
        if self.dim % (2 * TBE_DIM_MULTIPLE):
            # Both halves 4-aligned: no stored padding in the tables a user's own model reads.
            raise InputError(f"config key 'model.embedding_dim': SER tables need a multiple of "
                             f"{2 * TBE_DIM_MULTIPLE} (FBGEMM rows are groups of 4 floats and SER halves "
                             f"the dim), got {self.dim}")
        return FusedTablesConfig(self.field_names, self.vocab_sizes, {"easy": self.dim // 2, "hard": self.dim},
                                 self.optimizer, self.lr, self.eps, self.emb_reg, dict(self.pooling))


class SERTables(FusedFieldTables):
    """forward(ids [B, F] | Features | KeyedJaggedTensor) -> (e_s [B, F*d/2], e_c [B, F*d])."""

    def __init__(self, cfg: SERTablesConfig, device: Optional[torch.device] = None, fused: bool = True):
        super().__init__(cfg.fused_tables_config(), device=device, fused=fused)
        self.simple_dim, self.complex_dim = self.output_dims

    def embedding_tables(self) -> list[torch.Tensor]:
        return self.weights()
