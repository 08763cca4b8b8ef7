"""AFN's logarithmic transformation layer (FuxiCTR AFN.logarithmic_net)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.exp_batch_norm import exp_batch_norm

# FuxiCTR clamps |e| at 1e-5 before the log ("better than 1e-7 suggested in the paper").
LOG_FLOOR = 1e-5


class LogarithmicTransformation(nn.Module):
    """emb [B, F, d] -> [B, neurons * d]: neuron j computes prod_i |e_i|^{w_ji} element-wise, as
    exp(sum_i w_ji log|e_i|), with BatchNorm on the logs (over fields) and on the outputs (over neurons).

    FuxiCTR's formulation (its op-by-op twin: reference/logarithmic.py) projects a transposed
    view and normalises [B, neurons, d] through that view (torch's strided BatchNorm, several times
    slower than its contiguous one). Here the projection is a plain 2-D product, `rows @ W.t()`, so
    autograd forms W's gradient as rows^T g (10x faster on one core than nn.Linear's g^T rows), and
    exp + BatchNorm + the transpose to [B, neurons, d] are one fused op in training
    (ops/exp_batch_norm.py; torch's ops elsewhere). bench/test_bench_logarithmic.py.
    """

    def __init__(self, num_fields: int, neurons: int):
        super().__init__()
        self.coefficients = nn.Linear(num_fields, neurons, bias=False)
        self.log_batch_norm = nn.BatchNorm1d(num_fields)
        self.exp_batch_norm = nn.BatchNorm1d(neurons)

    def forward(self, emb: Tensor) -> Tensor:
        batch, num_fields, dim = emb.shape
        log_emb = self.log_batch_norm(torch.log(emb.abs().clamp(min=LOG_FLOOR)))               # [B, F, d]
        rows = log_emb.transpose(1, 2).reshape(batch * dim, num_fields)                       # [B*d, F]
        cross = (rows @ self.coefficients.weight.t()).view(batch, dim, -1)                    # [B, d, N]
        return exp_batch_norm(cross, self.exp_batch_norm).flatten(start_dim=1)               # [B, N*d]
