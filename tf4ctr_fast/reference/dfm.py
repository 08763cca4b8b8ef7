"""Dynamic Fusion Modules: forward(h_s, h_c, z_s, z_c) -> fused logit z [B] (REFERENCE.md "DFM").

h_s [B, Hs] and h_c [B, Hc] are the encoder outputs, z_s and z_c [B] the auxiliary logits the model's
own heads computed from them. Each module returns only the fused logit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..layers.init import xavier_linear


class WSF(nn.Module):
    """Weighted sum: z = a_s*z_s + a_c*z_c, learnable scalars starting at 0.5, unconstrained."""

    def __init__(self) -> None:
        super().__init__()
        self.a_s = nn.Parameter(torch.tensor(0.5))
        self.a_c = nn.Parameter(torch.tensor(0.5))

    def forward(self, h_s: Tensor, h_c: Tensor, z_s: Tensor, z_c: Tensor) -> Tensor:
        return self.a_s * z_s + self.a_c * z_c


class VF(nn.Module):
    """Voting: per-sample weights p = softmax over (pi_s, pi_c), pi = Linear(h, 1) per branch;
    z = p_s*z_s + p_c*z_c.

    Training samples p with soft Gumbel noise (as the authors do); evaluation takes softmax(pi / tau)
    without noise so predictions are reproducible (REFERENCE.md "Our decisions" 1).
    """

    def __init__(self, hs_dim: int, hc_dim: int, tau: float):
        super().__init__()
        self.pi_s = xavier_linear(hs_dim, 1, bias=False)
        self.pi_c = xavier_linear(hc_dim, 1, bias=False)
        self.tau = tau

    def forward(self, h_s: Tensor, h_c: Tensor, z_s: Tensor, z_c: Tensor) -> Tensor:
        pi = torch.cat([self.pi_s(h_s), self.pi_c(h_c)], dim=-1)  # [B, 2]
        if self.training:
            p = F.gumbel_softmax(pi, tau=self.tau, hard=False, dim=-1)
        else:
            p = torch.softmax(pi / self.tau, dim=-1)
        return p[:, 0] * z_s + p[:, 1] * z_c


class CF(nn.Module):
    """Concatenation: its own head over [h_s ; h_c]; z_s and z_c only feed the Twin Focus loss."""

    def __init__(self, hs_dim: int, hc_dim: int):
        super().__init__()
        self.fc = xavier_linear(hs_dim + hc_dim, 1)

    def forward(self, h_s: Tensor, h_c: Tensor, z_s: Tensor, z_c: Tensor) -> Tensor:
        return self.fc(torch.cat([h_s, h_c], dim=-1)).squeeze(-1)


class MoEF(nn.Module):
    """Mixture of 2 linear experts over [h_s ; h_c]: z = sum_k softmax(gate)_k * m_k."""

    def __init__(self, hs_dim: int, hc_dim: int):
        super().__init__()
        self.gate = xavier_linear(hs_dim + hc_dim, 2)
        self.experts = xavier_linear(hs_dim + hc_dim, 2)

    def forward(self, h_s: Tensor, h_c: Tensor, z_s: Tensor, z_c: Tensor) -> Tensor:
        h = torch.cat([h_s, h_c], dim=-1)
        return (torch.softmax(self.gate(h), dim=-1) * self.experts(h)).sum(dim=-1)


class SumFusion(nn.Module):
    """No fusion module (DualMLP): z = z_s + z_c."""

    def forward(self, h_s: Tensor, h_c: Tensor, z_s: Tensor, z_c: Tensor) -> Tensor:
        return z_s + z_c


DFM_NAMES = ("WSF", "VF", "CF", "MoEF", "sum")


def build_dfm(name: str, hs_dim: int, hc_dim: int, vf_tau: float = 0.8) -> nn.Module:
    if name == "WSF":
        return WSF()
    if name == "VF":
        return VF(hs_dim, hc_dim, vf_tau)
    if name == "CF":
        return CF(hs_dim, hc_dim)
    if name == "MoEF":
        return MoEF(hs_dim, hc_dim)
    if name == "sum":
        return SumFusion()
    raise InputError(f"config key 'model.dfm': unknown DFM {name!r} (known: {', '.join(DFM_NAMES)})")
