"""What every benchmark of the suite shares: sizes, the device, Criteo-schema data, the engine /
reference model pair, the training step, the parity checks, and `record`, which puts each timing
beside its reference and its physical ceiling in the pytest-benchmark JSON (extra_info).

extra_info keys written by `record` (scripts/render_bench.py reads them):
  bench, case, path       which benchmark, which case of it, which implementation ("reference" is
                          the baseline of every case)
  device                  the device, in words
  batch, samples_per_s    samples per timed call, and batch / median seconds
  reference_median_s      the reference's median for the same case, this session
  speedup_vs_reference    reference median / this median (> 1: faster than the reference);
  speedup_vs_reference_min  the same with the minima (less sensitive to load from other processes)
  flops, achieved_flops_per_s, flops_vs_matmul      useful FLOPs per call, their rate, rate / the
                          measured fp32 matmul rate (Env.measure)
  bytes, achieved_bytes_per_s, bytes_vs_copy        useful bytes per call (the traffic the work
                          cannot avoid), their rate, rate / the measured copy bandwidth
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

warnings.filterwarnings("ignore", module="torchrec")
warnings.filterwarnings("ignore", module="fbgemm_gpu")

from tf4ctr_fast.config import ModelConfig, SyntheticConfig  # noqa: E402
from tf4ctr_fast.data.synthetic import synthesize  # noqa: E402
from tf4ctr_fast.models import build_model, reference_to_engine_state_dict  # noqa: E402
from tf4ctr_fast.train.precision import autocast  # noqa: E402


# ---- sizes -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """One preset of `--bench-size`. Rounds are pytest-benchmark's timed rounds (pedantic mode)."""

    name: str
    head_batch: int                  # twin head rows (H = 400)
    head_rounds: int
    step_batch: int                  # embedding layer, training step and epoch batch
    vocabs: tuple[int, ...]          # total vocabulary (all fields) swept by the layer and the step
    step_rounds: int
    infer_batches: tuple[int, ...]   # inference batch sizes
    infer_seconds: float             # timed seconds aimed at per (form, batch); 2..200 rounds
    epoch_rows: int                  # synthetic rows (80 % train)
    epoch_rounds: int


INFER_BATCHES = tuple(4**k for k in range(9))   # 1, 4, ..., 65536

SIZES = {
    # 2-core CPU: the whole suite in a few minutes.
    "small": Sizes("small", head_batch=16_384, head_rounds=5, step_batch=4096,
                   vocabs=(100_000, 1_000_000, 5_500_000), step_rounds=3,
                   infer_batches=INFER_BATCHES, infer_seconds=1.0,
                   epoch_rows=50_000, epoch_rounds=2),
    "medium": Sizes("medium", head_batch=65_536, head_rounds=7, step_batch=4096,
                    vocabs=(100_000, 1_000_000, 5_500_000), step_rounds=5,
                    infer_batches=INFER_BATCHES, infer_seconds=2.0,
                    epoch_rows=300_000, epoch_rounds=3),
    # a GPU: Criteo-sized vocabularies and epochs.
    "full": Sizes("full", head_batch=65_536, head_rounds=20, step_batch=4096,
                  vocabs=(100_000, 1_000_000, 5_500_000, 33_000_000), step_rounds=20,
                  infer_batches=INFER_BATCHES, infer_seconds=2.0,
                  epoch_rows=2_000_000, epoch_rounds=3),
}


# ---- device ----------------------------------------------------------------------------------------

def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def _best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass(frozen=True)
class Env:
    """The session's device, sizes and physical ceilings (conftest.py's `env` fixture)."""

    device: torch.device
    sizes: Sizes
    description: str
    copy_bytes_per_s: float      # a large tensor copy: bytes read + written per second
    matmul_flops_per_s: float    # a large fp32 matmul (TF32 off)

    @classmethod
    def measure(cls, device: torch.device, sizes: Sizes) -> "Env":
        """Best of 10 runs each: on a shared machine, what the hardware gives in its quieter moments."""
        cuda = device.type == "cuda"
        src = torch.ones(2**28 if cuda else 2**26, device=device)    # 1 GiB on a GPU, 256 MiB on a CPU
        dst = torch.empty_like(src)
        copy_s = _best_seconds(lambda: dst.copy_(src), device, repeats=10)
        n = 8192 if cuda else 2048
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            matmul_s = _best_seconds(lambda: a @ b, device, repeats=10)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return cls(device=device, sizes=sizes, description=describe(device),
                   copy_bytes_per_s=2 * src.numel() * src.element_size() / copy_s,
                   matmul_flops_per_s=2 * n**3 / matmul_s)

    def as_dict(self) -> dict:
        return {"device": self.description, "bench_size": self.sizes.name,
                "copy_bytes_per_s": self.copy_bytes_per_s, "matmul_flops_per_s": self.matmul_flops_per_s}


# ---- Criteo-schema data ----------------------------------------------------------------------------

NUM_INT, NUM_CAT, INT_VOCAB = 13, 26, 64


def criteo_vocab_sizes(total: int) -> list[int]:
    """13 bucketized integer fields of INT_VOCAB ids, then 26 categorical fields sharing the rest with
    1/rank weights (a few huge fields, many small ones, like Criteo's)."""
    rest = total - NUM_INT * INT_VOCAB
    weights = [1 / (k + 1) for k in range(NUM_CAT)]
    return [INT_VOCAB] * NUM_INT + [max(8, int(rest * w / sum(weights))) for w in weights]


def field_names() -> list[str]:
    return [f"I{i + 1}" for i in range(NUM_INT)] + [f"C{i + 1}" for i in range(NUM_CAT)]


def criteo_batch(vocab_sizes: Sequence[int], rows: int, device: torch.device,
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """(ids [rows, 39], labels [rows]) from the synthetic Criteo-schema generator (Zipf ids, planted
    click model) with these vocabulary sizes (each counts the padding and OOV ids)."""
    cfg = SyntheticConfig(rows=rows, int_vocab=vocab_sizes[0] - 2, split=[1.0, 0.0, 0.0])
    data = synthesize(cfg, seed, [v - 2 for v in vocab_sizes[NUM_INT:]])
    assert data.vocab_sizes == list(vocab_sizes)
    return torch.from_numpy(data.ids).long().to(device), torch.from_numpy(data.labels).to(device)


# ---- models and the training step -------------------------------------------------------------------

# The published Criteo_x4 settings (REFERENCE.md). Dropout is off so that the parity checks are
# deterministic; it is a few elementwise passes over [B, 400], the same for both paths.
MODEL = ModelConfig(embedding_dim=16, ssem="SER", dfm="WSF", mlp_s_hidden=[400, 400],
                    mlp_c_hidden=[400, 400, 400], batch_norm=True, net_dropout=0.0, emb_reg=1e-5)
DENSE_LR, SPARSE_LR, SPARSE_EPS, CLIP_NORM = 1e-3, 0.01, 1e-8, 10.0


def build_pair(vocab_sizes: Sequence[int], device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(reference, engine) TF4CTR with the same weights.

    reference: reference backend (nn.Embedding tables, whole-table L2, everything dense) and the
        op-by-op head.
    engine: TorchRec/FBGEMM SER tables (row-wise Adagrad fused into backward, L2 over the batch's
        rows) and the fused twin head (C++ on CPU, Triton on CUDA).
    Both have dense_parameters(): what Adam and the clipping cover.
    """
    torch.manual_seed(0)
    reference = build_model(dataclasses.replace(MODEL, head="reference"), vocab_sizes, device=device)
    names = field_names()
    engine = build_model(dataclasses.replace(MODEL, head="fused", backend="torchrec"), vocab_sizes,
                         field_names=names, sparse_optimizer="rowwise_adagrad", sparse_lr=SPARSE_LR,
                         sparse_eps=SPARSE_EPS, device=device)
    engine.load_state_dict(reference_to_engine_state_dict(reference.state_dict(), names))
    return reference, engine


def build_engine_adam(reference: nn.Module, vocab_sizes: Sequence[int], device: torch.device) -> nn.Module:
    """The engine with sparse optimizer "adam" (CPU: dense Adam's result by replaying the steps rows
    missed, docs/embedding.md "Sparse Adam"; its lr is the dense lr, as in the reference) and the
    weights of `reference`."""
    names = field_names()
    engine = build_model(dataclasses.replace(MODEL, head="fused", backend="torchrec"), vocab_sizes,
                         field_names=names, sparse_optimizer="adam", sparse_lr=DENSE_LR, sparse_eps=SPARSE_EPS,
                         device=device)
    engine.load_state_dict(reference_to_engine_state_dict(reference.state_dict(), names))
    return engine


def assert_adam_step_parity(reference: nn.Module, engine: nn.Module, ids: Tensor, y: Tensor) -> None:
    """One trainer step of each from the same weights (training_step: the reference's whole-table L2 and
    dense Adam over the tables; the engine's batch L2 and sparse Adam), then every table row compared
    after the engine caught them up (eval mode): what sparse optimizer "adam" promises. Without the
    gradient clipping: the reference's clips the table gradients too (a global norm over every
    parameter), the bench's engine step does not (the trainer's clip_and_step does,
    tests/test_sparse_adam.py), and at this batch's norm that rescales the reference's tiny table
    gradients, which Adam's eps makes visible. Mutates both."""
    training_step(reference, clip=False)(ids, y)
    training_step(engine, clip=False)(ids, y)
    reference.eval(), engine.eval()
    want = reference_to_engine_state_dict(reference.state_dict(), field_names())
    for name, got in engine.state_dict().items():
        if ".embedding_bags." not in name:
            continue
        # Adam's first step is lr * g / (|g| + eps): where a gradient entry is rounding noise (the
        # batch-norm amplification of _zero_by_construction reaches the embeddings too) the step is
        # noise on both sides. So: at most 0.1 % of the entries (and 2 in a small table) beyond 1e-4
        # (scaled), none beyond one step. A missed catch-up or another update rule moves most entries.
        off = int(((got - want[name]).abs() > 1e-4 * float(want[name].abs().max())).sum())
        assert off <= max(2, 1e-3 * got.numel()), f"table {name}: {off} of {got.numel()} entries differ"
        assert float((got - want[name]).abs().max()) <= DENSE_LR, f"table {name}: an entry differs by a step"
    reference.train(), engine.train()


def training_step(model: nn.Module, precision: str = "fp32", clip: bool = True) -> Callable[[Tensor, Tensor], None]:
    """step(ids, y): one trainer step, as tf4ctr_fast.train.trainer does it: loss + regularizer (the
    forward under train.precision's autocast), backward (fused tables update in here), clip the dense
    gradients' norm, Adam on the dense parameters; then a device sync, so that a timer around it sees
    the work done."""
    params = list(model.dense_parameters())
    optimizer = torch.optim.Adam(params, lr=DENSE_LR)

    def step(ids: Tensor, y: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, ids.device):
            loss = model.loss(ids, y)["loss"] + model.regularization()
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        sync(ids.device)
    return step


def linear_macs(model: nn.Module) -> int:
    """Multiply-adds per sample of the model's Linear layers (the MLPs, heads, fusion)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


# ---- parity ----------------------------------------------------------------------------------------

def assert_close_scaled(got: Tensor, want: Tensor, rtol: float, what: str) -> None:
    """Close relative to the largest entry of `want`: fp32 sums over thousands of rows in another
    order differ by that much, however small a single entry is."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.detach().abs().max()),
                               msg=lambda m: f"{what}: {m}")


def assert_fused_update(before: dict[str, Tensor], after: dict[str, Tensor], grads: dict[str, Tensor],
                        lr: float, eps: float) -> None:
    """Each fused table moved exactly as row-wise Adagrad from a zero state would move it under the
    reference's gradient: rows with a gradient by lr * g / (sqrt(mean(g^2)) + eps), others not at all."""
    for name, grad in grads.items():
        rows = grad.abs().sum(1) > 0
        g = grad[rows]
        want = torch.zeros_like(grad)
        want[rows] = -lr * g / (g.pow(2).mean(1, keepdim=True).sqrt() + eps)
        assert_close_scaled(after[name] - before[name], want, 1e-3, f"update of table {name}")


def _zero_by_construction(model: nn.Module) -> set[str]:
    """Biases of Linear layers followed by batch norm. Their gradient is zero by construction, so both
    paths hold only rounding noise there, and a large one: the first layers see embeddings of std 1e-4,
    whose tiny batch variance makes batch norm's backward scale its cancelling sums by ~1e4. Not
    compared."""
    return {f"{prefix}.{i}.bias" for prefix, seq in model.named_modules() if isinstance(seq, nn.Sequential)
            for i, (a, b) in enumerate(zip(seq, list(seq)[1:]))
            if isinstance(a, nn.Linear) and isinstance(b, nn.BatchNorm1d) and a.bias is not None}


def assert_step_parity(reference: nn.Module, engine: nn.Module, ids: Tensor, y: Tensor) -> None:
    """Engine vs reference on one batch, same weights, in training mode (batch-norm batch statistics):
    loss and logits, the gradient of every dense parameter (but _zero_by_construction), and the
    tables' update, which the engine applies inside backward (assert_fused_update). The loss is
    without the regularizer, which differs by design (whole tables vs the batch's rows, REFERENCE.md
    "Our decisions" 3). The engine must be fresh: this backward updates its tables."""
    reference.train(), engine.train()
    for model in (reference, engine):
        model.zero_grad(set_to_none=True)
    ref_out, eng_out = reference.loss(ids, y), engine.loss(ids, y)
    torch.testing.assert_close(eng_out["loss"], ref_out["loss"], rtol=1e-5, atol=0, msg=lambda m: f"loss: {m}")
    assert_close_scaled(eng_out["logit"], ref_out["logit"], 1e-5, "logits")

    names = field_names()
    before = {k: v.detach().clone() for k, v in engine.state_dict().items() if ".embedding_bags." in k}
    ref_out["loss"].backward()
    eng_out["loss"].backward()
    ref_grads = reference_to_engine_state_dict(
        {name: p.grad for name, p in reference.named_parameters()}, names)
    dense = {id(p) for p in engine.dense_parameters()}
    zero = _zero_by_construction(engine)
    for name, p in engine.named_parameters():
        if id(p) in dense and name not in zero:
            assert_close_scaled(p.grad, ref_grads[name], 1e-4, f"gradient of {name}")
    after = engine.state_dict()
    assert_fused_update(before, after, {k: ref_grads[k] for k in before}, SPARSE_LR, SPARSE_EPS)
    for model in (reference, engine):
        model.zero_grad(set_to_none=True)


# ---- recording -------------------------------------------------------------------------------------

_reference: dict[tuple[str, str], tuple[float, float]] = {}   # (bench, case) -> (median, min) seconds


def record(benchmark, env: Env, *, bench: str, case: str, path: str, batch: int,
           flops: Optional[float] = None, bytes_moved: Optional[float] = None, steps_per_call: int = 1,
           **extra) -> None:
    """Call after benchmark.pedantic: the ratio to this session's reference of the same case (the
    reference path must run first, as the tests' parametrization orders it), throughput, and the
    achieved FLOP/s and bytes/s against the session's measured ceilings. steps_per_call: how many of
    the case's steps (batches) one timed call holds; the ratio, throughput, FLOP/s and bytes/s are
    per step (the reference's calls hold one)."""
    info = benchmark.extra_info
    info.update(bench=bench, case=case, path=path, batch=batch, device=env.description, **extra)
    if steps_per_call != 1:
        info["steps_per_call"] = steps_per_call
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    stats = benchmark.stats.stats
    median, fastest = stats.median / steps_per_call, stats.min / steps_per_call
    info["samples_per_s"] = batch / median
    if path == "reference":
        assert steps_per_call == 1, "a reference call is one step: the ratios divide by its time"
        _reference[(bench, case)] = (median, fastest)
    elif (bench, case) in _reference:
        ref_median, ref_min = _reference[(bench, case)]
        info.update(reference_median_s=ref_median, speedup_vs_reference=ref_median / median,
                    speedup_vs_reference_min=ref_min / fastest)
    if flops is not None:
        info.update(flops=flops, achieved_flops_per_s=flops / median,
                    flops_vs_matmul=flops / median / env.matmul_flops_per_s)
    if bytes_moved is not None:
        info.update(bytes=bytes_moved, achieved_bytes_per_s=bytes_moved / median,
                    bytes_vs_copy=bytes_moved / median / env.copy_bytes_per_s)
