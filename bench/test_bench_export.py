"""Serving latency and throughput of an exported TF4CTR (tf4ctr_fast/export.py, docs/serving.md): the
Criteo config's model (harness.MODEL: SER + WSF, embedding 16, MLPs [400, 400] / [400, 400, 400])
on Criteo-schema synthetic ids, vocabulary total VOCAB. Probabilities out, eval mode, no grad. Forms:

  eager      the engine model as `predict --checkpoint` runs it (TorchRec tables, fused twin head)
  reference  the same weights in the reference layout (nn.Embedding tables, op-by-op head), eager:
             what the export converts to (docs/serving.md, "TorchRec models")
  exported   model.pt2: torch.export.load(...).module()
  aoti       model_aoti.pt2 as docs/serving.md's loader serves it: the package's runner,
             torch._inductor.aoti_load_package(...).loader.run([ids])
  aoti_tuned the same package compiled with export --aoti-tuned (export.AOTI_TUNED_OPTIONS: freezing +
             max_autotune, for latency at small batches), called the same way
  aoti_tuned_wrapped  the tuned package called as the loaded object, aoti_load_package(...)(ids): the
             Python wrapper parses the program's input and output specs (JSON) on every call, which
             costs tens of microseconds at batch 1 (the difference to aoti_tuned)

Latency at batch 1, 16 and 256 (p50 and p99 of the timed rounds, in extra_info), throughput at 4096.
Parity first: every form equals the eager model on the batch (also the warm-up). speedup_vs_eager:
the eager form's median over this form's, same session. The AOTInductor compile (aoti_compile_s, a
minute or more on a CPU) and the export are set-up, not timed.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from harness import MODEL, build_pair, criteo_batch, criteo_vocab_sizes, field_names, record, sync
from tf4ctr_fast.config import RunConfig
from tf4ctr_fast.export import compile_aoti, export_program, serving_model_from

VOCAB = 100_000
FORMS = ("eager", "reference", "exported", "aoti", "aoti_tuned", "aoti_tuned_wrapped")
CASES = [(batch, form) for batch in (1, 16, 256, 4096) for form in FORMS]   # eager first per batch
_eager_median: dict[int, float] = {}


@pytest.fixture(scope="module")
def forms(env, tmp_path_factory):
    """form -> callable(ids) -> probabilities [B], and the set-up times."""
    if env.device.type != "cpu":
        pytest.skip("the export bench measures CPU serving")
    import torch._inductor

    vocab_sizes = criteo_vocab_sizes(VOCAB)
    reference, engine = build_pair(vocab_sizes, env.device)
    reference.eval(), engine.eval()
    schema = {"fields": [{"name": n, "vocab_size": v} for n, v in zip(field_names(), vocab_sizes)]}
    cfg = RunConfig(model=dataclasses.replace(MODEL, head="fused", backend="torchrec"))
    setup = {}
    start = time.perf_counter()
    serving = serving_model_from(engine, cfg, schema)
    program = export_program(serving, len(vocab_sizes), ())
    setup["export_s"] = time.perf_counter() - start
    packages = {}
    for form, tuned in (("aoti", False), ("aoti_tuned", True)):
        start = time.perf_counter()
        packages[form] = compile_aoti(program, tmp_path_factory.mktemp("export") / "model_aoti.pt2", tuned)
        setup[f"{form}_compile_s"] = time.perf_counter() - start
    loaded = {form: torch._inductor.aoti_load_package(str(path)) for form, path in packages.items()}
    return {"eager": lambda ids: torch.sigmoid(engine(ids)["logit"]),
            "reference": lambda ids: torch.sigmoid(reference(ids)["logit"]),
            "exported": program.module(),
            **{form: _runner_call(package) for form, package in loaded.items()},
            "aoti_tuned_wrapped": loaded["aoti_tuned"]}, setup, vocab_sizes


def _runner_call(package):
    run = package.loader.run
    return lambda ids: run([ids])[0]


@pytest.mark.parametrize("batch,form", CASES, ids=[f"B{b}-{f}" for b, f in CASES])
def test_export_serving(benchmark, env, forms, batch, form):
    functions, setup, vocab_sizes = forms
    ids, _ = criteo_batch(vocab_sizes, batch, env.device, seed=batch)
    fn = functions[form]
    with torch.no_grad():   # (not inference_mode: the fused TBE forward fails under it on CPU)
        torch.testing.assert_close(fn(ids), functions["eager"](ids), rtol=0, atol=1e-5)

    def call():
        with torch.no_grad():
            fn(ids)
        sync(env.device)

    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    rounds = int(min(2000 if batch <= 16 else 200, max(5, 1.0 / once)))
    benchmark.group = f"export serving B={batch} {env.device.type}"
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=min(20, rounds), iterations=1)
    record(benchmark, env, bench="export", case=f"B={batch}", path=form, batch=batch, vocab_total=VOCAB,
           **({"export_s": setup["export_s"]} if form == "exported" else {}),
           **({"aoti_compile_s": setup[f"{form}_compile_s"]} if f"{form}_compile_s" in setup else {}))
    if benchmark.stats is None:
        return
    stats = benchmark.stats.stats
    times = np.asarray(stats.data)
    benchmark.extra_info.update(latency_p50_s=float(np.percentile(times, 50)),
                                latency_p99_s=float(np.percentile(times, 99)))
    if form == "eager":
        _eager_median[batch] = stats.median
    elif batch in _eager_median:
        benchmark.extra_info["speedup_vs_eager"] = _eager_median[batch] / stats.median
