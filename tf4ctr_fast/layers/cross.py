"""Explicit crossing of a flat input x_0 [B, D]: DCN's CrossNet, DCNv2's CrossNetV2 and its low-rank
mixture (CrossNetMix), and EDCN's bridge and regulation modules (FuxiCTR semantics)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

EDCN_BRIDGES = ("hadamard_product", "pointwise_addition", "concatenation", "attention_pooling")


class CrossInteraction(nn.Module):
    """One DCN cross: x_0 * (w^T x_i) + b (the caller adds the residual x_i)."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.weight = nn.Linear(input_dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(input_dim))

    def forward(self, x_0: Tensor, x_i: Tensor) -> Tensor:
        return self.weight(x_i) * x_0 + self.bias


class CrossNet(nn.Module):
    """DCN: x_{i+1} = x_i + x_0 * (w_i^T x_i) + b_i."""

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CrossInteraction(input_dim) for _ in range(num_layers))

    def forward(self, x_0: Tensor) -> Tensor:
        x_i = x_0
        for layer in self.layers:
            x_i = x_i + layer(x_0, x_i)
        return x_i


class CrossNetV2(nn.Module):
    """DCNv2: x_{i+1} = x_i + x_0 * (W_i x_i + b_i), full-rank W_i."""

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x_0: Tensor) -> Tensor:
        x_i = x_0
        for layer in self.layers:
            x_i = x_i + x_0 * layer(x_i)
        return x_i


class CrossNetMix(nn.Module):
    """DCNv2's low-rank mixture: per layer, K experts x_0 * (U_k tanh(C_k tanh(V_k^T x_i)) + b) mixed by
    a softmax over gates g_k(x_i) = w_k^T x_i, plus the residual x_i."""

    def __init__(self, input_dim: int, num_layers: int, low_rank: int, num_experts: int):
        super().__init__()

        def stacked(rows: int, cols: int) -> nn.ParameterList:
            return nn.ParameterList(nn.Parameter(nn.init.xavier_normal_(torch.empty(num_experts, rows, cols)))
                                    for _ in range(num_layers))

        self.u = stacked(input_dim, low_rank)
        self.v = stacked(input_dim, low_rank)
        self.c = stacked(low_rank, low_rank)
        self.gates = nn.ModuleList(nn.Linear(input_dim, 1, bias=False) for _ in range(num_experts))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(input_dim)) for _ in range(num_layers))

    def forward(self, x_0: Tensor) -> Tensor:
        x_i = x_0
        for u, v, c, bias in zip(self.u, self.v, self.c, self.bias):
            low = torch.tanh(torch.einsum("bd,kdr->bkr", x_i, v))            # V_k^T x_i, [B, K, r]
            low = torch.tanh(torch.einsum("bkr,ksr->bks", low, c))           # C_k ., [B, K, r]
            experts = x_0[:, None, :] * (torch.einsum("bkr,kdr->bkd", low, u) + bias)   # [B, K, D]
            weights = torch.softmax(torch.cat([gate(x_i) for gate in self.gates], dim=-1), dim=-1)   # [B, K]
            x_i = x_i + (experts * weights[:, :, None]).sum(dim=1)
        return x_i


class BridgeModule(nn.Module):
    """EDCN's bridge: fuses the cross and the deep stream of one layer into one [B, D] signal."""

    def __init__(self, hidden_dim: int, bridge_type: str):
        super().__init__()
        self.bridge_type = bridge_type
        if bridge_type == "concatenation":
            self.concat_pooling = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU())
        elif bridge_type == "attention_pooling":
            self.attention = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                                           nn.Linear(hidden_dim, hidden_dim, bias=False), nn.Softmax(dim=-1))

    def forward(self, cross: Tensor, deep: Tensor) -> Tensor:
        if self.bridge_type == "hadamard_product":
            return cross * deep
        if self.bridge_type == "pointwise_addition":
            return cross + deep
        if self.bridge_type == "concatenation":
            return self.concat_pooling(torch.cat([cross, deep], dim=-1))
        # FuxiCTR applies the same attention to both streams (its attention2 is built but never used).
        return self.attention(cross) * cross + self.attention(deep) * deep


class RegulationModule(nn.Module):
    """EDCN's regulation: two field-wise softmax gates (temperature tau) over x [B, F*d], one per stream."""

    def __init__(self, num_fields: int, embedding_dim: int, tau: float, batch_norm: bool):
        super().__init__()
        self.tau, self.embedding_dim = tau, embedding_dim
        self.g1 = nn.Parameter(torch.ones(num_fields))
        self.g2 = nn.Parameter(torch.ones(num_fields))
        self.bn1 = nn.BatchNorm1d(num_fields * embedding_dim) if batch_norm else None
        self.bn2 = nn.BatchNorm1d(num_fields * embedding_dim) if batch_norm else None

    def _gate(self, g: Tensor) -> Tensor:
        return torch.softmax(g / self.tau, dim=-1).repeat_interleave(self.embedding_dim)[None, :]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out1, out2 = self._gate(self.g1) * x, self._gate(self.g2) * x
        if self.bn1 is not None:
            out1, out2 = self.bn1(out1), self.bn2(out2)
        return out1, out2
