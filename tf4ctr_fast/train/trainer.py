"""The training loop, following FuxiCTR's protocol exactly (REFERENCE.md "Training protocol").

Per batch: loss = model.loss(x, y)["loss"] + model.regularization(); backward; clip the global
gradient norm; Adam step. Per epoch: evaluate valid; an epoch whose monitor does not reach
best + 1e-6 counts toward patience, and each train.lr_decay_patience-th of them in a row (1: every
one, the paper's protocol) multiplies the lr by lr_decay (floor min_lr); an improving
one resets the count and saves the best checkpoint. At the end the best weights are reloaded and
valid and test evaluated.

Fused embedding tables (model.backend "torchrec"): the tables are updated inside backward by their
own sparse optimizer (train.sparse_optimizer, lr train.sparse_lr), so Adam and the clipping cover the
dense parameters only, the plateau decay also lowers the tables' lr, and checkpoints carry the sparse
optimizer's state. The regularizer then covers the rows each batch looks up (REFERENCE.md "Our
decisions" 3).

One loop (`_fit`) serves both ways of running:
- one process (train.nproc 1): the model trains here (`_Local`);
- train.nproc N > 1 (torchrec backend): `train` launches N local processes (or torchrun started
  them), each running `train_distributed_rank`: the tables are sharded across the ranks
  (DistributedModelParallel), every rank takes its slice of each batch, trains and scores it; rank 0
  computes the metrics from all ranks' scores and logs; the checkpoints are sharded (every rank
  writes its shards: checkpoint.save_sharded), and the final valid/test figures are scored on the
  shards too, with best.dcp loaded back (`_Sharded`). No rank ever holds a whole table.

Batches come from data.streaming.choose_loader (train.loader): the whole split on the device when it
fits, else streamed; x is ids [B, F], or features.Features(ids, bags) when the dataset has
multi-valued fields.

Output folder (cfg.resolved_out_dir(), locked for the run: runfolder.py): log.jsonl, best.pt, last.pt
(resumable: weights, optimizers, plateau, position in the epoch, random number generators; written
every train.checkpoint_every_steps and at epoch ends), or best.dcp and last.dcp (sharded folders) for
multi-process runs, learning_curves.png,
difficulty.png, results.json (written last: its presence marks a finished run). docs/runs.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import RunConfig, check_ranges
from ..data.rank_slices import RankSliceLoader
from ..data.streaming import LOADERS, choose_loader
from ..errors import InputError, RankLost
from ..features import ModelInput, bag_fields_of
from ..io_utils import atomic_file
from ..layers.embedding import auto_backend
from ..layers.init import FUXICTR_ORDER_CHECKED, INIT_ORDERS, draw_in_fuxictr_order_
from ..signals import Deferral, Interrupted, deferred
from ..torchrun import launched, rank0_first
from . import plots
from .checkpoint import (_build_model, load_sharded, read_checkpoint, restore_weights, save_checkpoint,
                         save_sharded, sparse_optimizer_of)
from .metrics import auc, difficulty_counts, gauc, logloss
from .precision import autocast, resolve_precision
from .runfolder import (LAST_SHARDED, LOG_NAME, RESULTS_NAME, checkpoint_names, last_checkpoint, open_run,
                        resume_hint)
from .runlog import RunLog, environment, to_jsonable

logger = logging.getLogger(__name__)

MONITORS = ("auc", "auc+gauc", "logloss")
MIN_DELTA = 1e-6                # FuxiCTR's min_delta for checkpoint_and_earlystop
PROGRESS_EVERY = 20             # steps between loss read-outs (each one syncs the device)
# train.checkpoint_every_steps null: last.pt at most every CHECKPOINT_MIN_INTERVAL_S of work, and
# its writes at most CHECKPOINT_COST_SHARE of the time (docs/runs.md)
CHECKPOINT_MIN_INTERVAL_S = 60.0
CHECKPOINT_COST_SHARE = 0.02


@dataclass
class Plateau:
    """FuxiCTR's checkpoint_and_earlystop bookkeeping, for a monitor that is maximized.

    An epoch improves when value >= best + min_delta (FuxiCTR's test, negated). Unlike FuxiCTR,
    a nan value never counts as an improvement.
    """

    patience: int
    min_delta: float = MIN_DELTA
    best: float = -math.inf
    bad_epochs: int = 0

    def update(self, value: float) -> bool:
        improved = value >= self.best + self.min_delta
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)     # also seeds every CUDA device


def resolve_device(name: str, where: str = "config key 'train.device'") -> torch.device:
    """auto -> CUDA when available, else CPU; `where` names the setting in error messages."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"{where}: unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{where}: {name!r} requested but CUDA is not available")
    return device


def monitor_value(metrics: dict[str, float], monitor: str) -> float:
    """The maximized quantity: auc, auc + gauc, or -logloss."""
    if monitor == "auc":
        return metrics["auc"]
    if monitor == "auc+gauc":
        return metrics["auc"] + metrics["gauc"]
    return -metrics["logloss"]


def _metrics(y: np.ndarray, p: np.ndarray, group: Optional[np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {"auc": auc(y, p)}
    if group is not None:
        out["gauc"] = gauc(y, p, group)
    out["logloss"] = logloss(y, p)
    out["n"] = int(len(y))
    return out


def _group_of(split: Any, name: str) -> np.ndarray:
    if split.group is None:
        raise InputError(f"split '{name}' has no group column (needed for gAUC); "
                         "re-prepare the data with dataset.group_field set")
    return np.asarray(split.group)


@torch.no_grad()
def _predict(model: nn.Module, loader: Any) -> np.ndarray:
    """sigmoid(logit) for every row in loader order, in eval mode; one device->host copy at the end."""
    was_training = model.training
    model.eval()
    try:
        probs = [torch.sigmoid(model(x)["logit"].float()) for x, _ in loader]
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(probs).cpu().numpy()


@dataclass
class _IdsOnly:
    ids: np.ndarray
    labels: np.ndarray      # placeholder: the loader always yields labels


def predict_proba(model: nn.Module, data: Any, batch_size: int, device: str | torch.device = "cpu",
                  loader: str = "auto") -> np.ndarray:
    """Click probabilities for a split (anything with .ids, .labels, optionally .multi_valued) or an
    int ids array [N, F]. loader: see train.loader."""
    if not hasattr(data, "ids"):
        ids = np.asarray(data)
        data = _IdsOnly(ids, np.zeros(len(ids), dtype=np.float32))
    return _predict(model, choose_loader(data, device, batch_size, kind=loader))


def evaluate(model: nn.Module, split: Any, batch_size: int, device: str | torch.device = "cpu",
             with_group: bool = False, name: str = "eval", loader: str = "auto") -> dict[str, Any]:
    """{"auc", "gauc" (with_group), "logloss", "n"} of the model on one split."""
    group = _group_of(split, name) if with_group else None
    p = predict_proba(model, split, batch_size, device, loader)
    return _metrics(np.asarray(split.labels), p, group)


def _check_config(cfg: RunConfig, data: Any, device: torch.device) -> None:
    tc = cfg.train
    if tc.monitor not in MONITORS:
        raise InputError(f"config key 'train.monitor': {tc.monitor!r} is not one of {', '.join(MONITORS)}")
    if tc.monitor == "auc+gauc" and not data.group_field:
        raise InputError("config key 'train.monitor': 'auc+gauc' needs a dataset with a group field "
                         "(dataset.group_field)")
    check_ranges(tc, "train")  # load_config checked them too; train() may get a config built in code
    resolve_precision(tc.precision, device)       # an unknown name stops the run before any work
    if tc.loader not in LOADERS:
        raise InputError(f"config key 'train.loader': {tc.loader!r} is not one of {', '.join(LOADERS)}")
    if tc.init_order not in INIT_ORDERS:
        raise InputError(f"config key 'train.init_order': {tc.init_order!r} is not one of {', '.join(INIT_ORDERS)}")
    if tc.init_order == "fuxictr" and (cfg.model.name, cfg.model.backend) != FUXICTR_ORDER_CHECKED:
        raise InputError("config key 'train.init_order': 'fuxictr' is checked bit for bit against FuxiCTR for "
                         f"model.name {FUXICTR_ORDER_CHECKED[0]!r} on model.backend {FUXICTR_ORDER_CHECKED[1]!r} "
                         f"only (other models build their layers in other orders), got {cfg.model.name!r} on "
                         f"{cfg.model.backend!r}")
    if cfg.model.backend == "torchrec":
        _check_torchrec_config(cfg, device)
    elif tc.nproc > 1:
        raise InputError(f"config key 'train.nproc': {tc.nproc} processes need model.backend 'torchrec' "
                         f"(the reference backend trains in one process), got {cfg.model.backend!r}")
    for name in ("train", "valid"):
        if not data.has_split(name):
            raise InputError(f"the prepared dataset has no '{name}' split (training needs train and valid)")
    if "auc" in tc.monitor:
        labels = np.asarray(data.split("valid").labels)
        if labels.min() == labels.max():   # the data's fault, not the monitor's: say so before training
            raise InputError(f"{getattr(data, 'path', 'the dataset')}: the valid split has only one class (all {len(labels):,} labels "
                             f"are {labels[0]:g}), so its AUC (train.monitor {tc.monitor!r}) is undefined; "
                             "check the label column and the split")


def resolve_backend(cfg: RunConfig, device: torch.device, model: Optional[nn.Module] = None) -> RunConfig:
    """cfg with model.backend "auto" made concrete for `device` (layers.embedding.auto_backend); with
    train.init_order "fuxictr", which is checked on the reference backend only, a one-process run keeps
    the reference backend. A model handed to train() says it itself: "torchrec" when it has fused
    tables (a sparse optimizer), else "reference"."""
    tc = cfg.train
    if cfg.model.backend != "auto":
        return cfg
    sharded = tc.nproc > 1 or launched() is not None
    if model is not None:
        fused = callable(getattr(model, "sparse_optimizer", None)) and model.sparse_optimizer() is not None
        backend = "torchrec" if fused else "reference"
    elif tc.init_order == "fuxictr" and not sharded:
        backend = "reference"
    else:
        backend = auto_backend(cfg.model.name, device, tc.sparse_optimizer, sharded=sharded)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backend=backend))


def _tables_description(cfg: RunConfig) -> str:
    """One console line on how the embedding tables train (model.backend "auto" is resolved by now)."""
    if cfg.model.backend == "reference":
        return "reference backend (dense Adam over whole tables, whole-table L2)"
    return (f"{cfg.model.backend} backend, sparse optimizer {cfg.train.sparse_optimizer}, "
            f"sparse_lr {cfg.train.sparse_lr}")


def resolve_sparse_optimizer(cfg: RunConfig, device: torch.device) -> RunConfig:
    """cfg with train.sparse_optimizer "auto" and train.sparse_lr None made concrete for `device`
    (fused_tables.resolve_sparse); the same cfg for the reference backend, whose tables have no sparse
    optimizer. An unknown name is left for _check_torchrec_config to refuse."""
    tc = cfg.train
    if cfg.model.backend != "torchrec" or (tc.sparse_optimizer != "auto" and tc.sparse_lr is not None):
        return cfg
    from ..embedding.fused_tables import resolve_sparse    # (reference runs never load torchrec)

    name, lr = resolve_sparse(tc.sparse_optimizer, tc.sparse_lr, tc.lr, device,
                              sharded=tc.nproc > 1 or launched() is not None)
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, sparse_optimizer=name, sparse_lr=lr))


def _check_torchrec_config(cfg: RunConfig, device: torch.device) -> None:
    """The sparse-optimizer and multi-process keys, checked before any process starts."""
    # Imported here: reference runs never load torchrec/fbgemm.
    from ..distributed import SHARDINGS
    from ..embedding import OPTIMIZERS
    from ..embedding.fused_tables import adam_unsupported

    tc = cfg.train
    if tc.sparse_optimizer not in OPTIMIZERS:
        raise InputError(f"config key 'train.sparse_optimizer': {tc.sparse_optimizer!r} is not one of "
                         f"{', '.join(OPTIMIZERS)}")
    reason = adam_unsupported(tc.sparse_optimizer, device, sharded=tc.nproc > 1)
    if reason:
        raise InputError(f"config key 'train.sparse_optimizer': {reason}")
    if tc.sharding not in SHARDINGS:
        raise InputError(f"config key 'train.sharding': {tc.sharding!r} is not one of {', '.join(SHARDINGS)}")
    if tc.nproc == 1:
        return
    if tc.sharding == "row_wise" and device.type != "cuda":
        raise InputError("config key 'train.sharding': 'row_wise' needs CUDA; on CPU use 'table_wise' "
                         "or 'column_wise'")
    launch = launched()     # under torchrun: the ranks on this machine
    local = launch.local_world_size if launch else tc.nproc
    if device.type == "cuda" and local > torch.cuda.device_count():
        raise InputError(f"config key 'train.nproc': {local} processes on this machine need as many GPUs, "
                         f"{torch.cuda.device_count()} available")


def _schema_summary(data: Any, splits: dict[str, Any]) -> dict[str, Any]:
    bags = getattr(data, "multi_valued_fields", [])   # in-memory datasets have none
    return {"fields": list(data.field_names), "vocab_sizes": list(data.vocab_sizes),
            "multi_valued_fields": [{k: f.get(k) for k in ("name", "vocab_size", "max_len", "pooling")}
                                    for f in bags],
            "group_field": data.group_field,
            "rows": {name: int(s.num_rows) for name, s in splits.items()}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dense_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What Adam and the clipping cover: model.dense_parameters() when the model has fused tables
    (they get no .grad), else every parameter."""
    getter = getattr(model, "dense_parameters", None)
    params = getter() if getter is not None else model.parameters()
    return [p for p in params if p.requires_grad]


class _Local:
    """The whole model trains in this process; it is also the model that is evaluated and saved."""

    is_main = True
    world = 1

    def __init__(self, model: nn.Module):
        self.main_model = model
        self.dense_params = _dense_parameters(model)
        self.sparse_optimizer = sparse_optimizer_of(model)
        # Sparse adam (embedding/sparse_adam.py) clips its tables' gradient with the dense ones, like the
        # reference's global norm: it keeps each batch's table gradient until clip_gradients.
        self._clips_tables = callable(getattr(self.sparse_optimizer, "clip_and_step", None))
        if self._clips_tables:
            self.sparse_optimizer.deferred = True

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm (the tables' too where the sparse optimizer can); its value."""
        if self._clips_tables:
            return self.sparse_optimizer.clip_and_step(self.dense_params, max_norm)
        return nn.utils.clip_grad_norm_(self.dense_params, max_norm)

    def train_mode(self) -> None:
        self.main_model.train()

    def make_loader(self, split: Any, device: torch.device, batch_size: int, shuffle: bool = False,
                    seed: int = 0, kind: str = "auto") -> Any:
        """The split's batches (train.loader `kind`: kept on the device, or streamed)."""
        return choose_loader(split, device, batch_size, shuffle=shuffle, seed=seed, kind=kind)

    @staticmethod
    def batch_rows(loader: Any, y: torch.Tensor) -> int:
        """Rows of the batch just trained on."""
        return y.shape[0]

    def loss(self, x: ModelInput, y: torch.Tensor) -> torch.Tensor:
        return self.main_model.loss(x, y)["loss"] + self.main_model.regularization()

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks (here: one)."""
        return value

    def from_main(self, value: float) -> float:
        """The main process's `value`, on every rank (here: the only one)."""
        return value

    def agree(self, stopping: bool, due: bool, ask: bool) -> tuple[bool, bool]:
        """(stop, checkpoint) now: here, what this process says."""
        return stopping, due

    def predict(self, loader: Any) -> np.ndarray:
        """Probabilities of every row of the loader, in its order."""
        return _predict(self.main_model, loader)

    def save(self, path: Path, cfg: RunConfig, schema: dict, epoch: int, metrics: dict,
             extra: Optional[dict[str, Any]] = None, rank_state: Optional[dict[str, Any]] = None) -> None:
        save_checkpoint(path, self.main_model, cfg, schema, epoch, metrics, extra={**(extra or {}), **(rank_state or {})})

    def load(self, path: Path) -> dict[str, Any]:
        """The checkpoint's weights (and sparse optimizer state) into the model; its payload."""
        return restore_weights(path, self.main_model)


class _Sharded:
    """One rank of a multi-process run: it trains, scores (predict) and checkpoints (save, load) its
    shards; rank 0 also gets every rank's scores. Every method but train_mode and loss is a
    collective: all ranks call it in the same order."""

    def __init__(self, dmp: nn.Module, rank: int, world: int, device: torch.device):
        self.dmp = dmp
        self.rank, self.world, self.device = rank, world, device
        self.is_main = rank == 0
        self.dense_params = _dense_parameters(dmp.module)
        self.sparse_optimizer = dmp.fused_optimizer
        from ..embedding import FusedFieldTables
        tables = [f"{name}." for name, m in dmp.module.named_modules() if isinstance(m, FusedFieldTables)]
        self._dense_buffers = [b for name, b in dmp.module.named_buffers()
                               if not any(name.startswith(t) for t in tables)]

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip the dense gradients' global norm (the fused tables' gradients were consumed in backward)."""
        return nn.utils.clip_grad_norm_(self.dense_params, max_norm)

    def train_mode(self) -> None:
        self.dmp.train()

    def make_loader(self, split: Any, device: torch.device, batch_size: int, shuffle: bool = False,
                    seed: int = 0, kind: str = "auto") -> RankSliceLoader:
        """This rank's slices of the split's batches, read from its memmapped columns (train.loader
        does not apply: no rank holds the split)."""
        return RankSliceLoader(split, batch_size, self.rank, self.world, device, shuffle=shuffle, seed=seed)

    @staticmethod
    def batch_rows(loader: RankSliceLoader, y: torch.Tensor) -> int:
        """Rows of the batch just trained on, every rank's slice together."""
        return loader.global_rows

    def loss(self, x: ModelInput, y: torch.Tensor) -> torch.Tensor:
        # x, y: this rank's slice of the global batch (RankSliceLoader). Call the wrapper, not
        # dmp.module.loss: DDP averages the gradients only of what runs through its forward.
        return self.dmp(x, y)["loss"] + self.dmp.module.regularization()

    @torch.no_grad()
    def _rank0_buffers(self) -> None:
        # BatchNorm's running statistics: TorchRec's DDP does not broadcast buffers, so each rank has
        # its own; scores and checkpoints use rank 0's
        for buffer in self._dense_buffers:
            dist.broadcast(buffer, src=0)

    def agree(self, stopping: bool, due: bool, ask: bool) -> tuple[bool, bool]:
        """(stop, checkpoint) now, the same on every rank: each is true when any rank says so, asked
        where `ask` (the same steps on every rank: every PROGRESS_EVERY steps, the epoch's last and
        the scheduled checkpoints; one small all-reduce) and false elsewhere (a signal waits that
        long at most)."""
        if not ask:
            return False, False
        flags = torch.tensor([int(stopping), int(due)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    @torch.no_grad()
    def predict(self, loader: Any) -> Optional[np.ndarray]:
        """Every rank scores its slice of each batch (a RankSliceLoader's) with the sharded model (no
        table is gathered); rank 0 gets the probabilities of every row in loader order, the others
        None. Collective."""
        self._rank0_buffers()
        was_training = self.dmp.training
        self.dmp.eval()
        parts = []
        try:
            for x, _ in loader:     # (a slice may be empty: a batch with fewer rows than ranks)
                parts.append(torch.sigmoid(self.dmp(x)["logit"].float()).cpu().numpy())
        finally:
            self.dmp.train(was_training)
        gathered = [None] * self.world if self.is_main else None
        dist.gather_object(parts, gathered, dst=0)
        if not self.is_main:
            return None
        rows = [p for batch in zip(*gathered) for p in batch]    # batch by batch, rank by rank
        return np.concatenate(rows) if rows else np.zeros(0, dtype=np.float32)

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world

    def from_main(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.item()

    def save(self, path: Path, cfg: RunConfig, schema: dict, epoch: int, metrics: dict,
             extra: Optional[dict[str, Any]] = None, rank_state: Optional[dict[str, Any]] = None) -> None:
        self._rank0_buffers()       # DCP writes the replicated tensors from one rank: make them equal
        save_sharded(path, self.dmp, self.sparse_optimizer, cfg, schema, epoch, metrics, extra, rank_state)

    def load(self, path: Path) -> dict[str, Any]:
        """The sharded checkpoint's weights and sparse optimizer state into the shards; its payload
        (with this rank's saved generators as "rng")."""
        return load_sharded(path, self.dmp, self.sparse_optimizer)


@dataclass
class _RunState:
    """Where a run stands between two training steps: what last.pt holds beside the weights, the
    optimizers and the random number generators, so that a resumed run goes on exactly as if it had
    never stopped. The epoch fields (step .. loader_state) describe the epoch in progress."""

    plateau: Plateau
    epoch: int = 1                      # the epoch in progress (1-based)
    step: int = 0                       # its batches consumed so far
    steps_trained: int = 0              # ... and trained on (see _train_epoch)
    samples: int = 0
    seconds: float = 0.0                # its training time so far
    loss_sum: Optional[torch.Tensor] = None     # float64, on the device: the sum of its step losses
    loader_state: dict[str, Any] = field(default_factory=dict)  # the train loader's, at its start
    best_epoch: Optional[int] = None
    first_train_loss: Optional[float] = None   # epoch 1's, the divergence test's yardstick
    records: list[dict[str, Any]] = field(default_factory=list)  # main process: one per finished epoch
    train_samples: int = 0              # over the finished epochs
    train_seconds: float = 0.0
    wall_s: float = 0.0                 # the run's wall time at the last checkpoint

    def start_epoch(self, loader: Any) -> None:
        self.step = self.steps_trained = self.samples = 0
        self.seconds = 0.0
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
        self.loader_state = loader.state_dict()     # before the epoch draws its order

    def end_epoch(self, stats: dict[str, Any], record: Optional[dict[str, Any]], loader: Any) -> None:
        if self.first_train_loss is None:
            self.first_train_loss = stats["train_loss"]
        if record is not None:
            self.records.append(record)
        self.train_samples += self.samples
        self.train_seconds += self.seconds
        self.epoch += 1
        self.start_epoch(loader)

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], device: torch.device) -> "_RunState":
        fields = dict(payload)
        fields["plateau"] = Plateau(**fields["plateau"])
        fields["loss_sum"] = fields["loss_sum"].to(device)
        return cls(**fields)


def _rng_state() -> dict[str, Any]:
    """Every random number generator training may draw from, as tensors and lists (checkpoints load
    with weights_only=True)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt), gauss],
            "numpy": [keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _LastCheckpoint:
    """Writes the resumable checkpoint (last.pt; last.dcp, a collective, on sharded runs): at every
    epoch end and within an epoch when `due` (train.checkpoint_every_steps; 0: neither), and when a
    signal asks for a stop. `log`: the main process's (None on the other ranks)."""

    def __init__(self, path: Path, replica: _Local | _Sharded, optimizer: torch.optim.Optimizer, loader: Any,
                 cfg: RunConfig, schema: dict, log: Optional[RunLog], run_start: float):
        self.path, self.replica, self.optimizer, self.loader = path, replica, optimizer, loader
        self.cfg, self.schema, self.log, self.run_start = cfg, schema, log, run_start
        self.every = cfg.train.checkpoint_every_steps
        self.last_time = time.perf_counter()
        self.write_s = 0.0
        self.saved_at: Optional[str] = None    # where the run stood at the last.pt now on disk
        self.writes, self.total_write_s = 0, 0.0    # this process's, for the run's own cost report

    @property
    def periodic(self) -> bool:
        return self.every != 0

    def scheduled(self, step: int) -> bool:
        """A checkpoint by step count (train.checkpoint_every_steps set): the same steps on every rank."""
        return self.every is not None and self.every > 0 and step % self.every == 0

    def due(self, step: int) -> bool:
        if self.every is not None:
            return self.every > 0 and step % self.every == 0
        waited = time.perf_counter() - self.last_time
        return waited >= max(CHECKPOINT_MIN_INTERVAL_S, self.write_s / CHECKPOINT_COST_SHARE)

    def save(self, run: _RunState) -> None:
        start = time.perf_counter()
        run.wall_s = start - self.run_start
        sparse = self.replica.sparse_optimizer
        position = run.to_payload()
        # the loss so far, the same on every rank (its mean over them): a rank's own sum would be
        # every rank's after a resume (meta.pt is rank 0's); the epoch's mean over ranks is unchanged
        position["loss_sum"] = self.replica.mean_over_ranks(run.loss_sum)
        state = {"run": position, "optimizer_state": self.optimizer.state_dict(),
                 "sparse_lr": [g["lr"] for g in sparse.param_groups] if sparse is not None else None,
                 "loader_kind": self.loader.kind, "log_records": self.log.records if self.log else []}
        self.replica.save(self.path, self.cfg, self.schema, run.epoch,
                          run.records[-1]["valid"] if run.records else {}, extra=state,
                          rank_state={"rng": _rng_state()})
        self.last_time = time.perf_counter()
        self.write_s = self.last_time - start
        self.saved_at = _position(run.epoch, run.step)
        self.writes += 1
        self.total_write_s += self.write_s


def _position(epoch: int, step: int) -> str:
    return f"epoch {epoch} after step {step}"


def _check_divergence(run: _RunState, loss_sum: float, norm_sum: float, cfg: RunConfig, lr: float,
                      last: Optional[_LastCheckpoint]) -> None:
    """Stop a run whose loss or gradient norm went non-finite, or whose mean loss in this epoch so far
    exceeds train.divergence_factor times epoch 1's, keeping the checkpoints it has."""
    factor, first = cfg.train.divergence_factor, run.first_train_loss
    mean = loss_sum / max(run.steps_trained, 1)
    if not (math.isfinite(loss_sum) and math.isfinite(norm_sum)):
        problem = "the loss or the gradient norm is not finite"
    elif factor > 0 and first is not None and mean > factor * first:
        problem = (f"its mean train loss {mean:.4g} is over train.divergence_factor {factor:g} times "
                   f"epoch 1's {first:.4g}")
    else:
        return
    kept = (f"the last good checkpoint {last.path} ({last.saved_at}) is kept"
            if last is not None and last.saved_at else "no resumable checkpoint was written")
    raise InputError(f"training diverged in epoch {run.epoch} by step {run.step}: {problem} "
                     f"(train.lr {lr:g}); {kept}; lower train.lr and start over with --overwrite")


def _train_epoch(replica: _Local | _Sharded, optimizer: torch.optim.Optimizer, loader: Any,
                 cfg: RunConfig, run: _RunState, last: Optional[_LastCheckpoint],
                 precision: str = "fp32") -> dict[str, Any]:
    """Epoch run.epoch from its batch run.step to its end (capped by max_steps_per_epoch), adding into
    `run`. The loss stays on the device but for a read-out every PROGRESS_EVERY steps (one process;
    it also checks for divergence) and at the end. `last` writes the resumable checkpoint when due,
    and when SIGINT/SIGTERM arrive: after the step in progress, then Interrupted is raised.
    train_loss is the mean over steps (and ranks) of the step loss; samples count whole batches."""
    tc = cfg.train
    steps_total = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch)
    # islice skips the batches a resumed epoch already trained on (the loader state restored at the
    # epoch's start makes them the same batches)
    bar = tqdm(itertools.islice(loader, run.step, steps_total), total=steps_total, initial=run.step,
               desc=f"epoch {run.epoch}", leave=False, dynamic_ncols=True,
               disable=not (replica.is_main and tc.progress and sys.stderr.isatty()))
    replica.train_mode()
    norm_sum = torch.zeros((), dtype=torch.float64, device=loader.device)  # non-finite once any is

    def sums() -> list[float]:      # one device sync
        return torch.stack([run.loss_sum, norm_sum]).tolist()

    _sync(loader.device)
    clock = time.perf_counter() - run.seconds
    with deferred() if last is not None else contextlib.nullcontext(Deferral()) as stop:
        for x, y in bar:
            run.step += 1
            optimizer.zero_grad()
            with autocast(precision, loader.device):
                loss = replica.loss(x, y)
            loss.backward()                 # fused tables take their sparse optimizer step in here
            norm_sum += replica.clip_gradients(tc.clip_norm)    # (or here: sparse adam, clipped with the rest)
            optimizer.step()
            run.loss_sum += loss.detach()
            run.steps_trained += 1
            run.samples += replica.batch_rows(loader, y)
            if replica.world == 1 and run.steps_trained % PROGRESS_EVERY == 0:
                loss_sum, norms = sums()
                _check_divergence(run, loss_sum, norms, cfg, _lr(optimizer), last)
                bar.set_postfix(loss=f"{loss_sum / run.steps_trained:.4f}")
            stopping, saving = replica.agree(
                bool(stop.pending), run.step < steps_total and last.due(run.step),
                ask=run.step % PROGRESS_EVERY == 0 or run.step == steps_total or last.scheduled(run.step)
            ) if last else (False, False)
            if stopping or saving:
                run.seconds = time.perf_counter() - clock
                if replica.world == 1:      # (a rank's own loss is not the run's: the epoch end checks it)
                    _check_divergence(run, *sums(), cfg, _lr(optimizer), last)   # keep the last good one
                last.save(run)
                if stopping:    # (a rank that saved for another rank's signal stops with it)
                    raise Interrupted(stop.pending or signal.SIGTERM, str(last.path), last.saved_at)
    _sync(loader.device)
    run.seconds = time.perf_counter() - clock
    bar.close()
    loss_sum = replica.mean_over_ranks(run.loss_sum).item()
    _check_divergence(run, loss_sum, norm_sum.item(), cfg, _lr(optimizer), last)
    return {"train_loss": loss_sum / max(run.steps_trained, 1), "steps": run.steps_trained,
            "train_samples": run.samples, "train_time_s": run.seconds,
            "train_samples_per_s": run.samples / run.seconds if run.seconds > 0 else None}


def _lr(optimizer: Any) -> Optional[float]:
    return optimizer.param_groups[0]["lr"] if optimizer is not None else None


def _set_sparse_lrs(sparse: Any, lrs: list[float]) -> None:
    for group, lr in zip(sparse.param_groups, lrs):
        group["lr"] = lr
    # The fused kernels read their lr from param_groups on step(); no update happens here (that ran
    # in backward).
    sparse.step()


def _decay_lr(optimizer: torch.optim.Optimizer, sparse: Any, factor: float, floor: float) -> None:
    """lr *= factor (floor `floor`) for Adam and, when there are fused tables, their optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = max(group["lr"] * factor, floor)
    if sparse is not None:
        _set_sparse_lrs(sparse, [max(group["lr"] * factor, floor) for group in sparse.param_groups])


def oversubscription(threads: int, load: float, cores: int) -> Optional[str]:
    """A warning when `threads` torch threads would share the cores with a load average `load`: torch's
    threads wait on each other at every parallel region, so a second thread on a busy core makes a step
    several times slower than one thread (measured 5x on the 2-core box of DEVELOPERS.md)."""
    if threads > 1 and load + threads > cores + 0.5:
        return (f"{threads} torch threads on {cores} cores with a load average of {load:.1f} from other "
                "processes: the threads will wait on each other (up to 5x slower); set train.num_threads=1 "
                "(or fewer) while the machine is busy")
    return None


def warn_if_oversubscribed(device: torch.device) -> None:
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return
    message = oversubscription(torch.get_num_threads(), os.getloadavg()[0], os.cpu_count() or 1)
    if message:
        logger.warning("warning: %s", message)


def train(cfg: RunConfig, data: Any, model: Optional[nn.Module] = None, *, overwrite: bool = False,
          resume: bool = False) -> dict[str, Any]:
    """Train on data.split("train"), select on valid, report best-checkpoint valid/test metrics.
    With train.nproc > 1 the run happens in that many local processes (`model` must then be None).

    The run folder (train.out_dir) is locked for the run; a run already there is replaced only with
    `overwrite`, or continued from its last.pt with `resume` (cfg: that run's own,
    runfolder.resume_config). See runfolder.py."""
    device = resolve_device(cfg.train.device)
    cfg = resolve_sparse_optimizer(resolve_backend(cfg, device, model), device)
    tc = cfg.train
    _check_config(cfg, data, device)
    if launched():
        if model is not None:
            raise ValueError("train(model=...) runs in one process, not under torchrun")
        return _train_launched_rank(cfg, data, overwrite, resume)
    with open_run(cfg.resolved_out_dir(), overwrite=overwrite, resume=resume, sharded=tc.nproc > 1):
        if tc.nproc > 1:
            if model is not None:
                raise ValueError("train(model=...) runs in one process; leave train.nproc at 1")
            return _train_multiprocess(cfg, data, resume)
        seed_everything(tc.seed)
        if tc.num_threads > 0:
            torch.set_num_threads(tc.num_threads)
        warn_if_oversubscribed(device)
        if model is None:
            model = _build_model(cfg, data.field_names, data.vocab_sizes, device,
                                 bag_fields=bag_fields_of(data.schema))
            if tc.init_order == "fuxictr":
                seed_everything(tc.seed)
                draw_in_fuxictr_order_(model)
        model.to(device)
        return _fit(cfg, data, _Local(model), device, resume)


def _train_multiprocess(cfg: RunConfig, data: Any, resume: bool) -> dict[str, Any]:
    from torch.multiprocessing import ProcessRaisedException

    from ..distributed import launch

    from torch.multiprocessing import ProcessExitedException

    try:
        launch(cfg.train.nproc, train_distributed_rank, cfg, data,
               logging.getLogger("tf4ctr_fast").getEffectiveLevel(), resume)
    except ProcessRaisedException as e:
        # A rank's exception arrives as its traceback text; bad input comes back as an InputError.
        last = str(e).strip().splitlines()[-1]
        for kind in (InputError, RankLost):
            prefix = f"{kind.__module__}.{kind.__qualname__}: "
            if last.startswith(prefix):
                raise kind(last[len(prefix):]) from None
        raise
    except KeyboardInterrupt as e:          # Ctrl-C or SIGTERM here (the ranks stop on theirs)
        raise _naming_sharded_checkpoint(e, cfg.resolved_out_dir()) from None
    except ProcessExitedException as e:     # a rank killed (signal) or gone without an exception
        how = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
        raise RankLost(f"rank {e.error_index} of {cfg.train.nproc} ended ({how}), so the run stopped; "
                       f"{_way_on(cfg.resolved_out_dir())}") from None
    return json.loads((cfg.resolved_out_dir() / RESULTS_NAME).read_text())


def _way_on(out_dir: Path) -> str:
    last = last_checkpoint(out_dir)
    if last is not None:
        return f"{last} is kept: continue the run with `{resume_hint(out_dir)}`"
    return "it had written no resumable checkpoint: start it over with --overwrite"


def _naming_sharded_checkpoint(e: KeyboardInterrupt, out_dir: Path) -> KeyboardInterrupt:
    """The interrupt, naming the run's last.dcp (the last one the ranks finished) when there is one."""
    last = out_dir / LAST_SHARDED
    try:
        run = read_checkpoint(last)["run"]
    except (InputError, KeyError):
        return e
    return Interrupted(getattr(e, "signum", signal.SIGINT), str(last), _position(run["epoch"], run["step"]))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _lost_peer(e: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (gloo: its connection closed)."""
    text = str(e)
    return isinstance(e, dist.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _train_launched_rank(cfg: RunConfig, data: Any, overwrite: bool, resume: bool) -> Optional[dict[str, Any]]:
    """This process's rank of a torchrun launch (the process group is joined already): rank 0 holds
    the run folder's lock for the whole run, as a one-process run does, and returns the result."""
    with contextlib.ExitStack() as stack:
        rank0_first(lambda: stack.enter_context(open_run(cfg.resolved_out_dir(), overwrite=overwrite,
                                                         resume=resume, sharded=True)))
        train_distributed_rank(cfg, data, logging.getLogger("tf4ctr_fast").getEffectiveLevel(), resume)
    if dist.get_rank() != 0:
        return None
    return json.loads((cfg.resolved_out_dir() / RESULTS_NAME).read_text())


def train_distributed_rank(cfg: RunConfig, data: Any, log_level: int = logging.INFO, resume: bool = False) -> None:
    """One of the train.nproc processes `train` launches (tf4ctr_fast.distributed.launch) or torchrun
    started; the config was checked before launch. `resume`: from the run folder's last.dcp."""
    from ..distributed import init_distributed, shard_model

    rank, world, device = init_distributed(device=cfg.train.device)
    # Rank 0 reports at the launching process's level, in the CLI's format; the other ranks only warn.
    # force: the imports have already given this fresh process a root handler of their own.
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("tf4ctr_fast").setLevel(log_level if rank == 0 else logging.WARNING)
    tc = cfg.train
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)       # per process (launch splits the default otherwise)
    fields = (list(data.field_names), list(data.vocab_sizes), device)
    bags = bag_fields_of(data.schema)
    seed_everything(tc.seed)        # the same seed everywhere: the same initial weights on every rank
    model = _build_model(cfg, *fields, fused=False, bag_fields=bags)   # shard_model fuses the shards
    dmp = shard_model(model, tc.sharding, device)
    try:
        _fit(cfg, data, _Sharded(dmp, rank, world, device), device, resume)
    except RuntimeError as e:
        if not _lost_peer(e) or isinstance(e, RankLost):
            raise
        raise RankLost(f"rank {rank} of {world}: another rank of the run is gone ({_first_line(e)}), so the "
                       f"run stopped; {_way_on(cfg.resolved_out_dir())}") from None


def _resume(path: Path, best: Path, payload: dict[str, Any], replica: _Local | _Sharded,
            optimizer: torch.optim.Optimizer, loader: Any, cfg: RunConfig, schema: dict) -> _RunState:
    """Load last.pt's training state (its weights are loaded already) into the fresh optimizers and
    loader, and make best.pt agree with it (the same for last.dcp and best.dcp); the random number
    generators are set last, by the caller."""
    if "run" not in payload:
        raise InputError(f"{path}: not a resumable checkpoint (no training state)")
    optimizer.load_state_dict(payload["optimizer_state"])
    if replica.sparse_optimizer is not None:
        _set_sparse_lrs(replica.sparse_optimizer, payload["sparse_lr"])
    run = _RunState.from_payload(payload["run"], loader.device)
    loader.load_state_dict(run.loader_state)
    # best.pt must hold run.best_epoch's weights. It does not only when the run was killed between
    # writing last.pt at the end of its best epoch and writing best.pt (in that order): last.pt then
    # holds those very weights. (Rank 0 looks; a sharded save is every rank's.)
    holds = replica.from_main(float(run.best_epoch is None or (best.exists() and
                                                               read_checkpoint(best)["epoch"] == run.best_epoch)))
    if not holds:
        if (run.epoch, run.step) != (run.best_epoch + 1, 0):
            raise InputError(f"{best}: does not hold epoch {run.best_epoch}, the best one by {path}; "
                             "start the run over with --overwrite")
        replica.save(best, cfg, schema, run.best_epoch, run.records[-1]["valid"])
    return run


def _naming_checkpoint(e: KeyboardInterrupt, last: Optional[_LastCheckpoint]) -> KeyboardInterrupt:
    """The interrupt, naming the last.pt a resume would start from (the CLI says how)."""
    if isinstance(e, Interrupted) and e.checkpoint or last is None or last.saved_at is None:
        return e
    return Interrupted(getattr(e, "signum", signal.SIGINT), str(last.path), last.saved_at)


def _fit(cfg: RunConfig, data: Any, replica: _Local | _Sharded, device: torch.device,
         resume: bool = False) -> Optional[dict[str, Any]]:
    """The FuxiCTR loop over a _Local or _Sharded replica. Every rank runs it in step and takes the
    same decisions (rank 0's monitor value is broadcast); only the main process evaluates, logs,
    checkpoints and returns the result (None elsewhere); checkpoints are every rank's (sharded).
    `resume`: continue from the run folder's last.pt (last.dcp: sharded)."""
    tc = cfg.train
    main = replica.is_main
    splits = {name: data.split(name) for name in ("train", "valid", "test") if data.has_split(name)}
    out_dir = cfg.resolved_out_dir()
    best_path, last_path = (out_dir / name for name in checkpoint_names(sharded=replica.world > 1))
    payload = replica.load(last_path) if resume else None
    order_seed = tc.seed if tc.shuffle_seed is None else tc.shuffle_seed
    train_loader = replica.make_loader(splits["train"], device, tc.batch_size, shuffle=True, seed=order_seed,
                                       kind=payload["loader_kind"] if resume else tc.loader)  # the same batches
    optimizer = torch.optim.Adam(replica.dense_params, lr=tc.lr)
    sparse = replica.sparse_optimizer
    if resume:
        run = _resume(last_path, best_path, payload, replica, optimizer, train_loader, cfg, data.schema)
    else:
        run = _RunState(Plateau(patience=tc.patience))
        run.start_epoch(train_loader)
    run_start = time.perf_counter() - run.wall_s
    # the training forward's arithmetic; evaluation always runs in float32 (the monitor decides the lr)
    precision, precision_why = resolve_precision(tc.precision, device)

    valid = splits["valid"]
    valid_loader = replica.make_loader(valid, device, tc.eval_batch_size, kind=tc.loader)   # every rank scores
    if main:
        valid_y = np.asarray(valid.labels)
        valid_group = _group_of(valid, "valid") if data.group_field else None
    log_file = RunLog(out_dir / LOG_NAME, keep=payload["log_records"] if resume else None) if main else None

    with log_file or contextlib.nullcontext() as log:
        if main:
            loaders = {"train": type(train_loader).__name__, "valid": type(valid_loader).__name__}
            if resume:
                log.write("resumed", epoch=run.epoch, step=run.step, env=environment(device))
                logger.info("resuming %s at %s", out_dir, _position(run.epoch, run.step))
            else:
                log.write("params", config=cfg.to_dict(), schema_summary=_schema_summary(data, splits),
                          env=environment(device), loaders=loaders, precision=precision)
            logger.info("tables: %s", _tables_description(cfg))
            logger.info("precision: %s (%s)", precision, precision_why)
            logger.info("loaders: %s", ", ".join(f"{k} {v}" for k, v in loaders.items()))
        last = _LastCheckpoint(last_path, replica, optimizer, train_loader, cfg, data.schema, log, run_start)
        if resume:
            last.saved_at = _position(run.epoch, run.step)
            if payload["rng"] is not None:
                _set_rng_state(payload["rng"])      # last: nothing may draw from them before training
            else:   # a rank the checkpoint's (smaller) world did not have: its dropout masks start afresh
                seed_everything(tc.seed + 7919 * (getattr(replica, "rank", 0) + 1) + run.epoch)
                logger.warning("rank %d: %s has no random state for this rank (written by %s ranks); "
                               "its generators start afresh", replica.rank, last_path, payload.get("world_size"))
        try:
            while run.epoch <= tc.epochs and not run.plateau.should_stop:
                epoch = run.epoch
                epoch_start = time.perf_counter()
                lr, sparse_lr = _lr(optimizer), _lr(sparse)
                stats = _train_epoch(replica, optimizer, train_loader, cfg, run, last, precision)

                value = math.nan
                eval_start = time.perf_counter()
                p = replica.predict(valid_loader)       # a collective on sharded replicas
                if main:
                    metrics = _metrics(valid_y, p, valid_group)
                    difficulty = difficulty_counts(valid_y, p, tc.difficulty_thresholds)
                    eval_seconds = time.perf_counter() - eval_start
                    value = monitor_value(metrics, tc.monitor)
                value = replica.from_main(value)        # every rank takes rank 0's decisions
                if math.isnan(value):
                    raise InputError(f"config key 'train.monitor': {tc.monitor!r} is undefined on the valid "
                                     "split (it needs both classes, within at least one group for gAUC)")
                improved = run.plateau.update(value)
                if improved:
                    run.best_epoch = epoch
                elif run.plateau.bad_epochs % tc.lr_decay_patience == 0:
                    _decay_lr(optimizer, sparse, tc.lr_decay, tc.min_lr)

                record = None
                if main:
                    record = {"epoch": epoch, "lr": lr, "sparse_lr": sparse_lr, **stats, "valid": metrics,
                              "eval_time_s": eval_seconds, "monitor": value, "improved": improved,
                              "best_monitor": run.plateau.best, "best_epoch": run.best_epoch,
                              "bad_epochs": run.plateau.bad_epochs, "lr_next": _lr(optimizer),
                              "sparse_lr_next": _lr(sparse), "difficulty": difficulty,
                              "difficulty_thresholds": list(tc.difficulty_thresholds)}
                    record = to_jsonable(record)
                    record["epoch_time_s"] = time.perf_counter() - epoch_start
                    log.write("epoch", **record)
                    logger.info("epoch %d: train loss %.6f, valid %s, monitor %.6f%s, %.0f samples/s, %.1fs",
                                epoch, stats["train_loss"],
                                " ".join(f"{k} {v:.6f}" for k, v in metrics.items() if k != "n"),
                                value, " (best)" if improved else f" (lr -> {record['lr_next']:g})",
                                stats["train_samples_per_s"] or 0.0, record["epoch_time_s"])
                run.end_epoch(stats, record, train_loader)
                # last.pt before best.pt: see _resume
                if last is not None and last.periodic:
                    last.save(run)
                if improved:        # (a collective on sharded replicas)
                    replica.save(best_path, cfg, data.schema, epoch, metrics if main else {})
                if run.plateau.should_stop and main:
                    logger.info("early stop after epoch %d (no improvement for %d epochs)", epoch, tc.patience)
        except KeyboardInterrupt as e:
            raise _naming_checkpoint(e, last) from None
        # the best weights back, scored where they are (on the shards: collectives)
        replica.load(best_path)
        p_valid = replica.predict(valid_loader)
        p_test = (replica.predict(replica.make_loader(splits["test"], device, tc.eval_batch_size, kind=tc.loader))
                  if "test" in splits else None)
        if not main:
            return None

        # once, not per epoch: drawing costs ~0.5 s, and the log holds all it needs (plots.write_plots)
        plots.write_plots(run.records, out_dir)
        result = {
            "valid": _metrics(valid_y, p_valid, valid_group),
            "test": (_metrics(np.asarray(splits["test"].labels), p_test,
                              _group_of(splits["test"], "test") if data.group_field else None)
                     if "test" in splits else None),
            "best_epoch": run.best_epoch,
            "epochs": len(run.records),
            "monitor": tc.monitor,
            "best_monitor": run.plateau.best,
            "wall_time_s": time.perf_counter() - run_start,
            "train_samples_per_s": run.train_samples / run.train_seconds if run.train_seconds > 0 else None,
            "out_dir": str(out_dir),
            "checkpoint": str(best_path),
        }
        # what the resumable checkpoints cost this process (rank 0): the train.checkpoint_every_steps
        # claim (<= 2 % at the default) checked on every run, independent of the machine's load
        train_s = run.train_seconds or math.nan
        result.update(last_checkpoint_writes=last.writes, last_checkpoint_write_s=last.total_write_s,
                      last_checkpoint_share_of_train_time=last.total_write_s / train_s)
        result = to_jsonable(result)
        log.write("result", **result)
        with atomic_file(out_dir / RESULTS_NAME) as tmp:
            tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
