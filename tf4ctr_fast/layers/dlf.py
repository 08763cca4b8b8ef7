"""DLF's layers (arXiv 2505.19182; the authors' DLF_layers.py is the contract, docs/models.md "DLF").

Every block maps a token matrix [B, n, d] to a token matrix; a DLF layer concatenates the blocks'
tokens and adds a token-mixed residual:

    E(l+1) = LayerNorm_d([FMB(E) ; RLI(E, E(1)) ; LCB(E) (; NAF(E))] + W_res E)

    TokenMixing   W ∈ R^{n_in x n_out}: out[:, j] = Σ_i W[i, j] E[:, i]   (LCB, W_res, the x0 projection)
    FMB           P = E (Eᵀ W_f) [n, rank] -> flatten -> LayerNorm -> MLP -> [n_out, d]
    RLI (x0 block) the same with E(1), token-mixed to n tokens, as the left factor: P = E(1) (Eᵀ W_f)
    NAF tokens    multi-head self-attention (no 1/sqrt scaling) -> flatten d-major -> LayerNorm -> MLP
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .dropout import Dropout
from .init import reset_linear_layers_
from .mlp import MLPBlock


def _kaiming_uniform_parameter(*shape: int) -> nn.Parameter:
    # Their blocks' own init (nn.init.kaiming_uniform_ with its defaults, fan_in = shape[1]); their
    # model's xavier reset touches only nn.Linear, so these keep it.
    weight = nn.Parameter(torch.empty(shape))
    nn.init.kaiming_uniform_(weight)
    return weight


class TokenMixing(nn.Module):
    """[B, n_in, d] -> [B, n_out, d], a learned linear combination of the tokens (no bias)."""

    def __init__(self, num_in: int, num_out: int):
        super().__init__()
        self.weight = _kaiming_uniform_parameter(num_in, num_out)

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.einsum("bid,io->bod", tokens, self.weight)


class FactorizationMachineBlock(nn.Module):
    """DLF's FM block: [B, n_in, d] -> [B, n_out, d] through the rank-`rank` interactions
    P = left (Eᵀ W_f); left is E itself (FMB) or the layer's view of E(1) (RLI, the x0 block)."""

    def __init__(self, num_in: int, num_out: int, dim: int, rank: int, hidden_units: Sequence[int],
                 batch_norm: bool, dropout: float):
        super().__init__()
        self.num_out, self.dim = num_out, dim
        self.weight = _kaiming_uniform_parameter(num_in, rank)
        self.norm = nn.LayerNorm(num_in * rank)
        self.mlp = MLPBlock(num_in * rank, hidden_units, batch_norm, dropout, output_dim=num_out * dim)

    def forward(self, tokens: Tensor, left: Optional[Tensor] = None) -> Tensor:
        projected = torch.einsum("bid,ir->bdr", tokens, self.weight)               # Eᵀ W_f: [B, d, rank]
        interactions = torch.bmm(tokens if left is None else left, projected)      # [B, n_in, rank]
        out = self.mlp(self.norm(interactions.flatten(start_dim=1)))
        return out.view(-1, self.num_out, self.dim)


class AttentionTokens(nn.Module):
    """NAF's attention tokens: [B, n_in, d] -> [B, n_out, d]. Per head softmax(Q Kᵀ) V without the
    1/sqrt(head_dim) scaling (their use_scale passes a bool that divides by True), heads concatenated,
    then flattened d-major ([B, d, n_in] as they transpose before the reshape), LayerNorm, MLP to
    n_out * d, read back d-major."""

    def __init__(self, num_in: int, num_out: int, dim: int, num_heads: int, hidden_units: Sequence[int],
                 batch_norm: bool, dropout: float):
        super().__init__()
        self.num_out, self.dim = num_out, dim
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.attention_dropout = Dropout(dropout) if dropout > 0 else None
        self.norm = nn.LayerNorm(num_in * dim)
        self.mlp = MLPBlock(num_in * dim, hidden_units, batch_norm, dropout, output_dim=num_out * dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)   # [B, h, n, hd]

    def forward(self, tokens: Tensor) -> Tensor:
        batch = tokens.shape[0]
        query, key, value = self._heads(self.w_q(tokens)), self._heads(self.w_k(tokens)), self._heads(self.w_v(tokens))
        attention = (query @ key.transpose(-1, -2)).softmax(dim=-1)
        if self.attention_dropout is not None:
            attention = self.attention_dropout(attention)
        out = (attention @ value).transpose(1, 2).reshape(batch, -1, self.dim)    # [B, n_in, d]
        out = self.mlp(self.norm(out.transpose(1, 2).reshape(batch, -1)))
        return out.view(batch, self.dim, self.num_out).transpose(1, 2)


class DLFLayer(nn.Module):
    """One DLF layer: [B, n_in, d] (and E(1) [B, F, d]) -> [B, n_out, d], n_out = 2·fmb + lcb + att
    tokens in that order (FMB, RLI, LCB, NAF; attention_tokens 0: no NAF). attention_input_tokens None:
    NAF attends over every input token (their DLF_att_cross); a count k: over the input's last k tokens,
    the previous layer's attention tokens (DLF_att_self's intent, docs/models.md)."""

    def __init__(self, num_fields: int, num_in: int, dim: int, lcb_tokens: int, fmb_tokens: int,
                 attention_tokens: int, rank: int, hidden_units: Sequence[int], batch_norm: bool, dropout: float,
                 num_heads: int = 1, attention_input_tokens: Optional[int] = None):
        super().__init__()
        self.num_out = 2 * fmb_tokens + lcb_tokens + attention_tokens

        def fm_block() -> FactorizationMachineBlock:
            return FactorizationMachineBlock(num_in, fmb_tokens, dim, rank, hidden_units, batch_norm, dropout)

        self.fmb, self.fmb_x0 = fm_block(), fm_block()
        self.lcb = TokenMixing(num_in, lcb_tokens)
        self.attention_input_tokens = attention_input_tokens
        self.att = (AttentionTokens(attention_input_tokens or num_in, attention_tokens, dim, num_heads, hidden_units,
                                    batch_norm, dropout) if attention_tokens else None)
        self.norm = nn.LayerNorm(dim)
        self.residual_projection = TokenMixing(num_in, self.num_out) if num_in != self.num_out else None
        self.x0_projection = TokenMixing(num_fields, num_in) if num_fields != num_in else None

    def forward(self, tokens: Tensor, x0: Tensor) -> Tensor:
        if self.x0_projection is not None:
            x0 = self.x0_projection(x0)
        blocks = [self.fmb(tokens), self.fmb_x0(tokens, left=x0), self.lcb(tokens)]
        if self.att is not None:
            attended = tokens if self.attention_input_tokens is None else tokens[:, -self.attention_input_tokens:]
            blocks.append(self.att(attended))
        residual = tokens if self.residual_projection is None else self.residual_projection(tokens)
        return self.norm(torch.cat(blocks, dim=1) + residual)


class DLFStack(nn.Module):
    """DLF's network between the field embeddings and its head: [B, F, d] field tokens -> the last
    layer's tokens flattened, [B, output_dim], output_dim = (2·fmb + lcb + att)·d. `attention`: "none"
    (their DLF), "cross" (DLF_att_cross, `attention_tokens` per layer), "self" (DLF_att_self: one
    attention token per field; after the first layer over the previous layer's attention tokens).
    Any model with field embeddings can use it as an encoder (DLF's `body`)."""

    def __init__(self, num_fields: int, dim: int, num_layers: int, lcb_tokens: int, fmb_tokens: int,
                 attention: str, attention_tokens: int, rank: int, num_heads: int, hidden_units: Sequence[int],
                 batch_norm: bool, dropout: float):
        super().__init__()
        att = {"none": 0, "cross": attention_tokens, "self": num_fields}[attention]
        layers, num_in = [], num_fields
        for i in range(num_layers):
            attention_input = att if attention == "self" and i > 0 else None
            layers.append(DLFLayer(num_fields, num_in, dim, lcb_tokens, fmb_tokens, att, rank, hidden_units,
                                   batch_norm, dropout, num_heads, attention_input))
            num_in = layers[-1].num_out
        self.layers = nn.ModuleList(layers)
        self.output_dim = num_in * dim
        reset_linear_layers_(self)      # their model's xavier reset of every Linear (Q, K, V included)

    def forward(self, fields: Tensor) -> Tensor:
        tokens = fields
        for layer in self.layers:
            tokens = layer(tokens, fields)
        return tokens.flatten(start_dim=1)
