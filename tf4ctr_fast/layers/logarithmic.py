"""AFN's logarithmic transformation layer (FuxiCTR AFN.logarithmic_net)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

# FuxiCTR clamps |e| at 1e-5 before the log ("better than 1e-7 suggested in the paper").
LOG_FLOOR = 1e-5


class LogarithmicTransformation(nn.Module):
    """emb [B, F, d] -> [B, neurons * d]: neuron j computes prod_i |e_i|^{w_ji} element-wise, as
    exp(sum_i w_ji log|e_i|), with BatchNorm on the logs (over fields) and on the outputs (over neurons)."""

    def __init__(self, num_fields: int, neurons: int):
        super().__init__()
        self.coefficients = nn.Linear(num_fields, neurons, bias=False)
        self.log_batch_norm = nn.BatchNorm1d(num_fields)
        self.exp_batch_norm = nn.BatchNorm1d(neurons)

    def forward(self, emb: Tensor) -> Tensor:
        log_emb = self.log_batch_norm(torch.log(emb.abs().clamp(min=LOG_FLOOR)))          # [B, F, d]
        cross = torch.exp(self.coefficients(log_emb.transpose(1, 2)).transpose(1, 2))   # [B, neurons, d]
        return self.exp_batch_norm(cross).flatten(start_dim=1)
