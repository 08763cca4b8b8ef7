"""The CTR loss and the Twin Focus loss exactly as the authors code them: BCE on probabilities
(PyTorch clamps log at -100), no detach anywhere (REFERENCE.md "Twin Focus loss").

These functions are the parity targets of the fused head kernels; keep names and signatures.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor


def full_precision(*tensors: Tensor) -> tuple[Tensor, ...]:
    """bf16/fp16 logits (a forward under train.precision bf16) as float32: the loss is always taken in
    float32 (autocast refuses probability-space BCE on CUDA, and bf16's 8 bits would round away the
    loss differences the training compares); float32/float64 inputs stay as they are."""
    return tuple(t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in tensors)


def no_autocast(t: Tensor):
    return torch.autocast(t.device.type, enabled=False) if torch.is_autocast_enabled(t.device.type) \
        else contextlib.nullcontext()


def bce_prob(p: Tensor, y: Tensor) -> Tensor:
    """Per-sample binary cross-entropy of probabilities p against labels y, [B]."""
    return F.binary_cross_entropy(p, y, reduction="none")


def prob_of_label(p: Tensor, y: Tensor) -> Tensor:
    """p_t: the probability the model gives the true label (negatives use the same form)."""
    return y * p + (1 - y) * (1 - p)


def twin_focus_loss(p_s: Tensor, p_c: Tensor, y: Tensor, alpha: float, c: float, gamma: float) -> Tensor:
    """alpha * mean bce(p_s)*(c + p_t_s)^gamma + (1-alpha) * mean bce(p_c)*((2-c) - p_t_c)^gamma.

    The simple branch up-weights samples it already gets right, the complex branch those it gets wrong.
    """
    simple = (bce_prob(p_s, y) * (c + prob_of_label(p_s, y)) ** gamma).mean()
    complex_ = (bce_prob(p_c, y) * ((2 - c) - prob_of_label(p_c, y)) ** gamma).mean()
    return alpha * simple + (1 - alpha) * complex_


def logloss(logit: Tensor, y: Tensor) -> Tensor:
    """Mean BCE of sigmoid(logit): the CTR loss every model trains on."""
    with no_autocast(logit):
        logit, y = full_precision(logit, y)
        return bce_prob(torch.sigmoid(logit), y).mean()


def total_loss(logit: Tensor, z_s: Tensor, z_c: Tensor, y: Tensor, alpha: float, c: float, gamma: float,
               twin_focus: bool = True) -> Tensor:
    """CTR loss on the fused logit, plus the Twin Focus loss on the auxiliary logits when enabled.
    No regularizer: the trainer adds model.regularization()."""
    with no_autocast(logit):
        logit, z_s, z_c, y = full_precision(logit, z_s, z_c, y)
        loss = logloss(logit, y)
        if twin_focus:
            loss = loss + twin_focus_loss(torch.sigmoid(z_s), torch.sigmoid(z_c), y, alpha, c, gamma)
        return loss
