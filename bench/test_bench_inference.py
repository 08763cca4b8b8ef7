"""Inference of TF4CTR (logits, eval mode, no grad): throughput and latency for batch sizes 1 to
65536 (--bench-size), Criteo-schema ids, total vocabulary 1e6. Forms:

  reference  the reference model, eager (the baseline)
  eager      the engine model (TorchRec/FBGEMM tables), eager
  compiled   torch.compile(engine model, dynamic=True): Inductor, with graph breaks around TorchRec's
             KeyedJaggedTensor and the id bounds check. Compiled at batch 64 (compile_s, not timed);
             backed_size_oblivious keeps the batch size symbolic, so the other sizes reuse the
             graphs (a recompile, if any, falls in the untimed parity call).
  exported   torch.export of the engine's weights in the reference (nn.Embedding) layout
             (models.engine_to_reference_state_dict), with a dynamic batch dimension; run as
             ExportedProgram.module(). The engine model itself does not export: its ids -> KJT path
             (bounds check, padding drop) branches on data. export_s: the export's time.

Parity first, at every batch size, of every form against the eager reference (this call is also the
warm-up). Then each form is timed for about Sizes.infer_seconds (2 to 200 rounds): the median is the
latency, batch / median the throughput. Useful FLOPs: 2 per multiply-add of the Linear layers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import pytest
import torch
from torch import nn

from harness import (MODEL, assert_close_scaled, build_pair, criteo_batch, criteo_vocab_sizes, field_names,
                     linear_macs, record, sync)
from tf4ctr_fast.models import engine_to_reference_state_dict
from tf4ctr_fast.models import build_model

VOCAB = 1_000_000
FORMS = ("reference", "eager", "compiled", "exported")


@contextlib.contextmanager
def inference():
    """No autograd, and (for the compiled form) a dynamic batch size that does not specialize on 1."""
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        yield


class Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)["logit"]


@pytest.fixture(scope="module")
def forms(env):
    """form -> callable(ids) -> logits, plus the set-up times; built once for all batch sizes."""
    device = env.device
    vocab_sizes = criteo_vocab_sizes(VOCAB)
    reference, engine = build_pair(vocab_sizes, device)
    serving = build_model(dataclasses.replace(MODEL, head="reference"), vocab_sizes).to(device)
    serving.load_state_dict(engine_to_reference_state_dict(engine.state_dict(), field_names()))
    for model in (reference, engine, serving):
        model.eval()
    sample, _ = criteo_batch(vocab_sizes, 64, device, seed=1)
    setup = {}
    with inference():
        compiled = torch.compile(Logits(engine), dynamic=True)
        start = time.perf_counter()
        compiled(sample)
        sync(device)
        setup["compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
        batch = torch.export.Dim("batch", min=1, max=max(env.sizes.infer_batches))
        exported = torch.export.export(Logits(serving), (sample,), dynamic_shapes={"ids": {0: batch}}).module()
        setup["export_s"] = time.perf_counter() - start
        yield {"reference": Logits(reference), "eager": Logits(engine), "compiled": compiled,
               "exported": exported}, setup, linear_macs(reference), vocab_sizes


@pytest.fixture(scope="module")
def batch_ids(forms, env, infer_batch):
    """This batch size's ids, after every form matched the eager reference on them."""
    functions, _, _, vocab_sizes = forms
    ids, _ = criteo_batch(vocab_sizes, infer_batch, env.device, seed=infer_batch)
    with inference():
        want = functions["reference"](ids)
        for form in FORMS[1:]:
            assert_close_scaled(functions[form](ids), want, 1e-4, f"{form} logits at batch {infer_batch}")
    return ids


@pytest.mark.parametrize("form", FORMS)
def test_inference(benchmark, env, forms, batch_ids, infer_batch, form):
    functions, setup, macs, _ = forms
    fn = functions[form]

    def call():
        with inference():
            fn(batch_ids)
        sync(env.device)

    start = time.perf_counter()
    call()
    rounds = int(min(200, max(2, env.sizes.infer_seconds / (time.perf_counter() - start))))
    benchmark.group = f"inference B={infer_batch} {env.device.type}"
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=0, iterations=1)
    extra = {"compiled": {"compile_s": setup["compile_s"]}, "exported": {"export_s": setup["export_s"]}}
    record(benchmark, env, bench="inference", case=f"B={infer_batch}", path=form, batch=infer_batch,
           flops=2 * macs * infer_batch, vocab_total=VOCAB, **extra.get(form, {}))
    if benchmark.stats is not None:
        stats = benchmark.stats.stats
        benchmark.extra_info.update(latency_median_s=stats.median, latency_max_s=stats.max)
