"""SER's dual tables (REFERENCE.md "SSEM": easy d/2 -> e_s, hard d -> e_c) on the fused TorchRec tables:
FusedFieldTables with the kinds {"easy": d/2, "hard": d}, for use outside the model zoo
(examples/torchrec_user_model.py). TF4CTR builds the same tables through layers.ssem.build_ssem."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from .fused_tables import TBE_DIM_MULTIPLE, FusedFieldTables, FusedTablesConfig


@dataclass
class SERTablesConfig(FusedTablesConfig):
    """FusedTablesConfig whose kinds follow from `dim` (set them through dim, not kinds)."""

    dim: int = 16

    def __post_init__(self) -> None:
        if self.dim % (2 * TBE_DIM_MULTIPLE):
            # Both halves 4-aligned: no stored alignment columns in the tables a user's model reads.
            raise InputError(f"config key 'model.embedding_dim': SER tables need a multiple of "
                             f"{2 * TBE_DIM_MULTIPLE} (FBGEMM rows are groups of 4 floats and SER halves "
                             f"the dim), got {self.dim}")
        self.kinds = {"easy": self.dim // 2, "hard": self.dim}


class SERTables(FusedFieldTables):
    """forward(ids [B, F] | Features | KeyedJaggedTensor) -> (e_s [B, F*d/2], e_c [B, F*d])."""

    def __init__(self, cfg: SERTablesConfig, device: Optional[torch.device] = None, fused: bool = True):
        super().__init__(cfg, device=device, fused=fused)
        self.simple_dim, self.complex_dim = self.output_dims

    def embedding_tables(self) -> list[torch.Tensor]:
        return self.weights()
