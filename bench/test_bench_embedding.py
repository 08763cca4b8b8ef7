"""SER embedding layer: the tables' whole part of a training step, engine (TorchRec/FBGEMM) vs the
reference (nn.Embedding), batch 4096, 39 Criteo-schema fields, total vocabulary swept by --bench-size.

  reference  layers.ssem.SER: lookup, whole-table L2 (FuxiCTR's regularizer), backward into dense
             [V, d] gradients, dense Adam over the whole tables (what the reference trainer does)
  engine     embedding.SERTables: one fused lookup, L2 over the rows the batch looks up, backward with
             FBGEMM's row-wise Adagrad applied inside it, to those rows only

The upstream gradient is a fixed random cotangent: loss = <e_s, g_s> + <e_c, g_c> + regularizer.
Parity first, per vocabulary: the same weights give the same (e_s, e_c), and the fused update equals
row-wise Adagrad under the reference's gradient (without the regularizers, which differ by design).
Useful bytes: gather read, pooled write and gradient read of [B, F*(d/2 + d)] floats, plus a read
and a write of each distinct row the batch touches.
"""
from __future__ import annotations

import pytest
import torch

from harness import (DENSE_LR, MODEL, SPARSE_EPS, SPARSE_LR, assert_fused_update, criteo_batch,
                     criteo_vocab_sizes, field_names, record, sync)
from tf4ctr_fast.embedding import SERTables, SERTablesConfig
from tf4ctr_fast.layers.embedding import embedding_l2
from tf4ctr_fast.layers.ssem import SER

DIM = MODEL.embedding_dim


class LayerCase:
    def __init__(self, vocab: int, batch: int, device: torch.device):
        self.vocab_sizes = criteo_vocab_sizes(vocab)
        self.ids, _ = criteo_batch(self.vocab_sizes, batch, device)
        names = field_names()
        torch.manual_seed(0)
        self.reference = SER(self.vocab_sizes, DIM).to(device)
        self.engine = SERTables(SERTablesConfig(field_names=names, vocab_sizes=self.vocab_sizes, dim=DIM,
                                                optimizer="rowwise_adagrad", lr=SPARSE_LR, eps=SPARSE_EPS,
                                                emb_reg=MODEL.emb_reg), device=device)
        # reference table -> the engine's table of the same field and kind
        self.twins = {f"{name}__{kind}": tables.tables[f].weight for f, name in enumerate(names)
                      for kind, tables in (("easy", self.reference.easy), ("hard", self.reference.hard))}
        weights = self.engine.table_weights()
        with torch.no_grad():
            for name, twin in self.twins.items():
                weights[name].copy_(twin)
        fields = len(names)
        self.g_s = torch.randn(batch, fields * DIM // 2, device=device)
        self.g_c = torch.randn(batch, fields * DIM, device=device)
        self.optimizer = torch.optim.Adam(self.reference.parameters(), lr=DENSE_LR)
        distinct_rows = sum(int(self.ids[:, f].unique().numel()) for f in range(fields))
        row_bytes = (DIM // 2 + DIM) * 4
        self.useful_bytes = 3 * batch * fields * row_bytes + 2 * distinct_rows * row_bytes

    def cotangent_loss(self, e_s, e_c):
        return (e_s * self.g_s).sum() + (e_c * self.g_c).sum()

    def assert_parity(self) -> None:
        """Run on the fresh case, before anything is timed: the engine's backward updates its tables."""
        (r_s, r_c), (e_s, e_c) = self.reference(self.ids), self.engine(self.ids)
        torch.testing.assert_close(e_s, r_s, rtol=1e-6, atol=0)
        torch.testing.assert_close(e_c, r_c, rtol=1e-6, atol=0)
        before = {k: w.detach().clone() for k, w in self.engine.table_weights().items()}
        self.cotangent_loss(e_s, e_c).backward()
        self.cotangent_loss(r_s, r_c).backward()
        assert_fused_update(before, self.engine.table_weights(),
                            {name: twin.grad for name, twin in self.twins.items()}, SPARSE_LR, SPARSE_EPS)
        self.reference.zero_grad(set_to_none=True)

    def step(self, path: str) -> None:
        if path == "reference":
            self.optimizer.zero_grad(set_to_none=True)
            e_s, e_c = self.reference(self.ids)
            loss = self.cotangent_loss(e_s, e_c) + embedding_l2(self.reference.embedding_tables(), MODEL.emb_reg)
            loss.backward()
            self.optimizer.step()
        else:
            e_s, e_c = self.engine(self.ids)
            (self.cotangent_loss(e_s, e_c) + self.engine.regularization()).backward()
        sync(self.ids.device)


@pytest.fixture(scope="module")
def layer(env, vocab) -> LayerCase:
    case = LayerCase(vocab, env.sizes.step_batch, env.device)
    case.assert_parity()
    return case


@pytest.mark.parametrize("path", ["reference", "engine"])
def test_ser_layer_step(benchmark, env, layer, vocab, path):
    batch = layer.ids.shape[0]
    benchmark.group = f"SER layer vocab {vocab:.1e} B={batch} {env.device.type}"
    benchmark.pedantic(layer.step, args=(path,), rounds=env.sizes.step_rounds, warmup_rounds=1, iterations=1)
    record(benchmark, env, bench="embedding_layer", case=f"vocab {vocab:.1e}", path=path, batch=batch,
           bytes_moved=layer.useful_bytes, vocab_total=sum(layer.vocab_sizes), fields=len(layer.vocab_sizes))
