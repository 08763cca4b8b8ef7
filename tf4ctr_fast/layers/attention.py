"""AutoInt's multi-head self-attention over fields (FuxiCTR's MultiHeadSelfAttention)."""
from __future__ import annotations

from torch import Tensor, nn

from .dropout import Dropout


class MultiHeadSelfAttention(nn.Module):
    """x [B, F, input_dim] -> [B, F, attention_dim]: per head softmax(Q K^T [/ sqrt(head_dim)]) V, heads
    concatenated, + residual (projected when the widths differ), optional LayerNorm, then ReLU."""

    def __init__(self, input_dim: int, attention_dim: int, num_heads: int, dropout: float,
                 use_residual: bool, use_scale: bool, layer_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, attention_dim // num_heads
        self.scale = self.head_dim ** 0.5 if use_scale else None
        self.w_q = nn.Linear(input_dim, attention_dim, bias=False)
        self.w_k = nn.Linear(input_dim, attention_dim, bias=False)
        self.w_v = nn.Linear(input_dim, attention_dim, bias=False)
        self.use_residual = use_residual
        self.w_res = (nn.Linear(input_dim, attention_dim, bias=False)
                      if use_residual and input_dim != attention_dim else None)
        self.dropout = Dropout(dropout) if dropout > 0 else None
        self.layer_norm = nn.LayerNorm(attention_dim) if layer_norm else None

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)   # [B, h, F, hd]

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = self._heads(self.w_q(x)), self._heads(self.w_k(x)), self._heads(self.w_v(x))
        scores = query @ key.transpose(-1, -2)
        if self.scale:
            scores = scores / self.scale
        attention = scores.softmax(dim=-1)
        if self.dropout is not None:
            attention = self.dropout(attention)
        out = (attention @ value).transpose(1, 2).reshape(x.shape[0], -1, self.num_heads * self.head_dim)
        if self.use_residual:
            out = out + (self.w_res(x) if self.w_res is not None else x)
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return out.relu()
