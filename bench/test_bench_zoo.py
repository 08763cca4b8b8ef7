"""The training step of every registered model on both embedding backends, Criteo-schema data, batch
4096, total vocabulary 1e5 and 5.5e6 (the 1e6 middle point only at --bench-size medium or full), and a
paper Table IX-style figure: each model's step time relative to DNN's on the same backend and
vocabulary (extra_info "vs_dnn"; DNN runs first).

  reference  the model on nn.Embedding tables: dense Adam over whole tables, whole-table L2
  torchrec   the same model on one fused TorchRec/FBGEMM EmbeddingBagCollection (row-wise Adagrad in
             backward, L2 on the looked-up rows), Adam on the dense part

Each model's own defaults (FuxiCTR 2.3's model_config.yaml values, docs/models.md) with embedding_dim
16 and DNN parts [400, 400, 400]; head "fused" for the twin models. The step is the trainer's
(harness.training_step). No parity check here: tests/test_model_zoo.py holds the backends' parity
for every model; this file only times.
"""
from __future__ import annotations

import pytest

from harness import criteo_batch, criteo_vocab_sizes, field_names, record, training_step
from tf4ctr_fast.config import ModelConfig
from tf4ctr_fast.models import build_model, model_names

MODELS = ["DNN"] + [m for m in model_names() if m != "DNN"]     # DNN first: the others' yardstick
BACKENDS = ("reference", "torchrec")
_dnn_median: dict[tuple[str, int], float] = {}


def _config(name: str, backend: str) -> ModelConfig:
    return ModelConfig(name=name, backend=backend, embedding_dim=16, net_dropout=0.0, emb_reg=1e-5,
                       head="fused", batch_norm=True)


@pytest.fixture(scope="module")
def zoo_batch(env, vocab):
    vocab_sizes = criteo_vocab_sizes(vocab)
    return vocab_sizes, criteo_batch(vocab_sizes, env.sizes.step_batch, env.device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_zoo_training_step(benchmark, env, zoo_batch, vocab, name, backend):
    if vocab not in (min(env.sizes.vocabs), 5_500_000) and env.sizes.name == "small":
        pytest.skip("small size: vocabularies 1e5 and 5.5e6 only")
    vocab_sizes, (ids, y) = zoo_batch
    model = build_model(_config(name, backend), vocab_sizes, field_names=field_names(), device=env.device)
    step = training_step(model)
    benchmark.group = f"zoo training step vocab {vocab:.1e} B={ids.shape[0]} {backend} {env.device.type}"
    benchmark.pedantic(step, args=(ids, y), rounds=env.sizes.step_rounds, warmup_rounds=1, iterations=1)
    # "reference" is the record() baseline of every case: here the DNN of the same backend
    record(benchmark, env, bench="zoo_train_step", case=f"{backend} vocab {vocab:.1e}",
           path="reference" if name == "DNN" else name, batch=ids.shape[0], model=name, backend=backend)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    if name == "DNN":
        _dnn_median[(backend, vocab)] = median
    elif median is not None and (backend, vocab) in _dnn_median:
        benchmark.extra_info["vs_dnn"] = median / _dnn_median[(backend, vocab)]
