"""Op-by-op twin of layers/logarithmic.py: FuxiCTR 2.3's AFN.logarithmic_net as it is written there
(the projection over a transposed view, BatchNorm over the strided [B, neurons, d] result), run with a
LogarithmicTransformation's modules."""
from __future__ import annotations

import torch
from torch import Tensor

from ..layers.logarithmic import LOG_FLOOR, LogarithmicTransformation


def logarithmic_net(layer: LogarithmicTransformation, emb: Tensor) -> Tensor:
    emb = torch.clamp(torch.abs(emb), min=LOG_FLOOR)
    log_emb = layer.log_batch_norm(torch.log(emb))
    out = layer.coefficients(log_emb.transpose(2, 1)).transpose(1, 2)
    return torch.flatten(layer.exp_batch_norm(torch.exp(out)), start_dim=1)
