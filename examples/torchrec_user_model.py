"""A user's own TorchRec model built from tf4ctr_fast parts (docs/embedding.md):

- input: a KeyedJaggedTensor with two single-valued fields and a multi-valued, mean-pooled "genres";
- tf4ctr_fast.embedding.SERTables: the SER easy/hard tables as one EmbeddingBagCollection, updated by
  FBGEMM's fused row-wise Adagrad inside backward;
- the user's own encoders: an MLP on e_s, a TorchRec LowRankCrossNet + MLP on e_c;
- the TF4CTR head from tf4ctr_fast.reference: auxiliary logits, a DFM, the Twin Focus loss.

Run it: `python examples/torchrec_user_model.py` (trains a few hundred steps on synthetic clicks).
To shard it across processes, build SERTables(..., fused=False), call
torchrec.optim.apply_optimizer_in_backward on its parameters and wrap the model in
DistributedModelParallel; tf4ctr_fast.distributed.shard_model does exactly that for the engine model.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tf4ctr_fast.embedding import SERTables, SERTablesConfig
from tf4ctr_fast.reference.dfm import build_dfm
from tf4ctr_fast.layers.init import xavier_linear
from tf4ctr_fast.layers.mlp import MLPBlock
from tf4ctr_fast.reference.loss import total_loss

FIELDS = ["user", "item", "genres"]
VOCAB = [1000, 500, 20]
MAX_GENRES = 3


class UserTwinModel(nn.Module):
    """SER tables -> (user's simple encoder, user's complex encoder) -> TF4CTR head."""

    def __init__(self, tables: SERTables, hidden: int = 64, dfm: str = "WSF",
                 alpha: float = 0.35, c: float = 0.9, gamma: float = 1.0):
        super().__init__()
        self.tables = tables
        self.simple = MLPBlock(tables.simple_dim, [hidden], batch_norm=False, dropout=0.0)
        self.complex = nn.Sequential(
            LowRankCrossNet(tables.complex_dim, num_layers=2, low_rank=8),
            MLPBlock(tables.complex_dim, [hidden, hidden], batch_norm=False, dropout=0.0))
        self.head_s = xavier_linear(hidden, 1)
        self.head_c = xavier_linear(hidden, 1)
        self.dfm = build_dfm(dfm, hidden, hidden)
        self.alpha, self.c, self.gamma = alpha, c, gamma

    def forward(self, features: KeyedJaggedTensor, y: Optional[Tensor] = None) -> dict[str, Tensor]:
        e_s, e_c = self.tables(features)
        h_s, h_c = self.simple(e_s), self.complex(e_c)
        z_s, z_c = self.head_s(h_s).squeeze(-1), self.head_c(h_c).squeeze(-1)
        out = {"logit": self.dfm(h_s, h_c, z_s, z_c), "z_s": z_s, "z_c": z_c}
        if y is not None:
            out["loss"] = (total_loss(out["logit"], z_s, z_c, y, self.alpha, self.c, self.gamma)
                           + self.tables.regularization())
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        fused = set(map(id, self.tables.parameters()))
        return [p for p in self.parameters() if id(p) not in fused]


def synthetic_batch(batch: int, gen: torch.Generator) -> tuple[KeyedJaggedTensor, Tensor]:
    """Clicks driven by a user x item interaction and by the genres; ids 0 are padding."""
    user = torch.randint(1, VOCAB[0], (batch,), generator=gen)
    item = torch.randint(1, VOCAB[1], (batch,), generator=gen)
    n_genres = torch.randint(0, MAX_GENRES + 1, (batch,), generator=gen)
    genres = torch.randint(1, VOCAB[2], (int(n_genres.sum()),), generator=gen)
    first_genre = torch.zeros(batch, dtype=torch.long)
    has = n_genres > 0
    first_genre[has] = genres[torch.cumsum(n_genres, 0)[has] - n_genres[has]]
    p = torch.sigmoid(2.0 * (((user % 7) == (item % 7)).float() - 0.5) + 0.1 * (first_genre % 5 - 2))
    y = torch.bernoulli(p, generator=gen)
    kjt = KeyedJaggedTensor(
        keys=FIELDS,
        values=torch.cat([user, item, genres]),
        lengths=torch.cat([torch.ones(2 * batch, dtype=torch.int32), n_genres.int()]))
    return kjt, y


def build(seed: int = 0) -> UserTwinModel:
    torch.manual_seed(seed)
    tables = SERTables(SERTablesConfig(field_names=FIELDS, vocab_sizes=VOCAB, dim=16,
                                       optimizer="rowwise_adagrad", lr=0.05, emb_reg=1e-4,
                                       pooling={"genres": "mean"}))
    return UserTwinModel(tables)


def train(model: UserTwinModel, steps: int, batch: int = 512, seed: int = 1) -> list[float]:
    """Dense parameters: torch Adam. Tables: updated inside backward by the fused kernel."""
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        features, y = synthetic_batch(batch, gen)
        dense_opt.zero_grad()
        loss = model(features, y)["loss"]
        loss.backward()
        dense_opt.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    history = train(build(), steps=300)
    print(f"loss: first 20 steps {sum(history[:20]) / 20:.4f}, last 20 steps {sum(history[-20:]) / 20:.4f}")
