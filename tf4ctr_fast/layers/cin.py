"""xDeepFM's Compressed Interaction Network (FuxiCTR's CompressedInteractionNet)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn


class CompressedInteractionNet(nn.Module):
    """emb [B, F, d] -> [B, output_dim]. Layer k: the outer product of x_0 and x_{k-1} along fields
    ([B, F * H_{k-1}, d]) compressed by a 1x1 convolution to H_k feature maps; each layer's maps are
    sum-pooled over d, and the pooled vectors of all layers feed one Linear. output_dim None: no Linear,
    the pooled vectors are the output (width sum(hidden_units); the CIN body a twin model encodes with)."""

    def __init__(self, num_fields: int, hidden_units: Sequence[int], output_dim: Optional[int] = 1):
        super().__init__()
        widths = [num_fields, *hidden_units]
        self.layers = nn.ModuleList(nn.Conv1d(num_fields * before, after, kernel_size=1)
                                    for before, after in zip(widths[:-1], widths[1:]))
        self.fc = nn.Linear(sum(hidden_units), output_dim) if output_dim is not None else nn.Identity()
        self.output_dim = output_dim if output_dim is not None else sum(hidden_units)

    def forward(self, emb: Tensor) -> Tensor:
        batch, _, dim = emb.shape
        x_i, pooled = emb, []
        for conv in self.layers:
            outer = torch.einsum("bhd,bmd->bhmd", emb, x_i).reshape(batch, -1, dim)
            x_i = conv(outer)
            pooled.append(x_i.sum(dim=-1))
        return self.fc(torch.cat(pooled, dim=-1))
