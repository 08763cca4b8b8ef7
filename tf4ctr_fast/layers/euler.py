"""EulerNet's Euler interaction layer (FuxiCTR model_zoo/EulerNet)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .dropout import Dropout


class EulerInteraction(nn.Module):
    """(r, p) [B, in_fields, d] -> (r, p) [B, out_fields, d], a complex vector per field as real part r
    and imaginary part p.

    Explicit part: in polar form (log modulus, phase), learnable orders mix the fields linearly, so
    back in Cartesian form each output field is a product of powers of the inputs. Implicit part: a
    Linear + ReLU on each of r and p. The output is their sum, optionally LayerNorm'ed per field.
    """

    def __init__(self, in_fields: int, out_fields: int, dim: int, layer_norm: bool,
                 explicit_dropout: float, implicit_dropout: float):
        super().__init__()
        self.dim = dim
        # EulerNet's two order initialisations: the identity when the width is kept, else a sharp
        # softmax over input fields (the authors note this choice matters for training).
        if in_fields == out_fields:
            orders = torch.eye(in_fields, out_fields)
        else:
            orders = torch.softmax(torch.randn(in_fields, out_fields) / 0.01, dim=0)
        self.orders = nn.Parameter(orders)
        self.implicit = nn.Linear(in_fields * dim, out_fields * dim)
        nn.init.xavier_uniform_(self.implicit.weight)
        self.bias_modulus = nn.Parameter(torch.randn(1, dim, out_fields) * 0.01)
        self.bias_phase = nn.Parameter(torch.randn(1, dim, out_fields) * 0.01)
        self.explicit_dropout = Dropout(explicit_dropout)
        self.implicit_dropout = Dropout(implicit_dropout)
        self.norm_r = nn.LayerNorm([dim]) if layer_norm else None
        self.norm_p = nn.LayerNorm([dim]) if layer_norm else None

    def forward(self, r: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        batch = r.shape[0]
        log_modulus = 0.5 * torch.log(r.pow(2) + p.pow(2) + 1e-8)
        phase = torch.atan2(p, r)
        log_modulus = self.explicit_dropout(log_modulus).transpose(-2, -1)      # [B, d, in_fields]
        phase = self.explicit_dropout(phase).transpose(-2, -1)
        modulus = torch.exp(log_modulus @ self.orders + self.bias_modulus).transpose(-2, -1)
        phase = (phase @ self.orders + self.bias_phase).transpose(-2, -1)      # [B, out_fields, d]

        def implicit(x: Tensor) -> Tensor:
            return torch.relu(self.implicit(self.implicit_dropout(x.reshape(batch, -1)))).view(batch, -1, self.dim)

        out_r = implicit(r) + modulus * torch.cos(phase)
        out_p = implicit(p) + modulus * torch.sin(phase)
        if self.norm_r is not None:
            out_r, out_p = self.norm_r(out_r), self.norm_p(out_p)
        return out_r, out_p
