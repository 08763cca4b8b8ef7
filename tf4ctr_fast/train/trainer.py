"""The training loop, following FuxiCTR's protocol exactly (REFERENCE.md "Training protocol").

Per batch: loss = model.loss(ids, y)["loss"] + model.regularization(); backward; clip the global
gradient norm; Adam step. Per epoch: evaluate valid; an epoch whose monitor does not reach
best + 1e-6 multiplies the lr by lr_decay (floor min_lr) and counts toward patience, an improving
one resets the count and saves the best checkpoint. At the end the best weights are reloaded and
valid and test evaluated.

Output folder (cfg.resolved_out_dir()): log.jsonl, best.pt, learning_curves.png, difficulty.png,
results.json (written last: its presence marks a finished run).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import RunConfig
from ..data.loader import DeviceBatchLoader
from ..errors import InputError
from ..io_utils import atomic_file
from . import plots
from .checkpoint import _build_model, restore_weights, save_checkpoint
from .metrics import auc, difficulty_counts, gauc, logloss
from .runlog import RunLog, environment, to_jsonable

logger = logging.getLogger(__name__)

MONITORS = ("auc", "auc+gauc", "logloss")
MIN_DELTA = 1e-6                # FuxiCTR's min_delta for checkpoint_and_earlystop
CHECKPOINT_NAME = "best.pt"
RESULTS_NAME = "results.json"      # written last: its presence marks a finished run
PROGRESS_EVERY = 20             # steps between loss read-outs (each one syncs the device)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"config key 'train.device': unknown device {name!r} "
                         "(use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"config key 'train.device': {name!r} requested but CUDA is not available")
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
def _predict(model: nn.Module, loader: DeviceBatchLoader) -> np.ndarray:
    """sigmoid(logit) for every row in loader order, in eval mode; one device->host copy at the end."""
    was_training = model.training
    model.eval()
    try:
        probs = [torch.sigmoid(model(ids)["logit"].float()) for ids, _ in loader]
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(probs).cpu().numpy()


@dataclass
class _IdsOnly:
    ids: np.ndarray
    labels: np.ndarray      # placeholder: the loader always yields labels


def predict_proba(model: nn.Module, data: Any, batch_size: int,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Click probabilities for a split (anything with .ids) or an int ids array [N, F]."""
    if not hasattr(data, "ids"):
        ids = np.asarray(data)
        data = _IdsOnly(ids, np.zeros(len(ids), dtype=np.float32))
    return _predict(model, DeviceBatchLoader(data, batch_size, device))


def evaluate(model: nn.Module, split: Any, batch_size: int, device: str | torch.device = "cpu",
             with_group: bool = False, name: str = "eval") -> dict[str, Any]:
    """{"auc", "gauc" (with_group), "logloss", "n"} of the model on one split."""
    group = _group_of(split, name) if with_group else None
    p = _predict(model, DeviceBatchLoader(split, batch_size, device))
    return _metrics(np.asarray(split.labels), p, group)


def _check_config(cfg: RunConfig, data: Any) -> None:
    tc = cfg.train
    if tc.monitor not in MONITORS:
        raise InputError(f"config key 'train.monitor': {tc.monitor!r} is not one of {', '.join(MONITORS)}")
    if tc.monitor == "auc+gauc" and not data.group_field:
        raise InputError("config key 'train.monitor': 'auc+gauc' needs a dataset with a group field "
                         "(dataset.group_field)")
    for key in ("batch_size", "eval_batch_size", "epochs"):
        if getattr(tc, key) < 1:
            raise InputError(f"config key 'train.{key}': must be >= 1, got {getattr(tc, key)}")
    if tc.max_steps_per_epoch is not None and tc.max_steps_per_epoch < 1:
        raise InputError(f"config key 'train.max_steps_per_epoch': must be >= 1 or null, "
                         f"got {tc.max_steps_per_epoch}")
    t = tc.difficulty_thresholds
    if len(t) != 2 or not 0.0 <= t[0] <= t[1] <= 1.0:
        raise InputError(f"config key 'train.difficulty_thresholds': expected [t0, t1] with "
                         f"0 <= t0 <= t1 <= 1, got {t}")
    for name in ("train", "valid"):
        if not data.has_split(name):
            raise InputError(f"the prepared dataset has no '{name}' split (training needs train and valid)")


def _schema_summary(data: Any, splits: dict[str, Any]) -> dict[str, Any]:
    return {"fields": list(data.field_names), "vocab_sizes": list(data.vocab_sizes),
            "group_field": data.group_field,
            "rows": {name: int(s.num_rows) for name, s in splits.items()}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DeviceBatchLoader,
                 cfg: RunConfig, epoch: int) -> dict[str, Any]:
    """One pass over the training batches (capped by max_steps_per_epoch); loss stays on the device."""
    tc = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    steps_total = len(loader) if tc.max_steps_per_epoch is None else min(len(loader), tc.max_steps_per_epoch)
    bar = tqdm(itertools.islice(loader, steps_total), total=steps_total, desc=f"epoch {epoch}",
               disable=not (tc.progress and sys.stderr.isatty()), leave=False, dynamic_ncols=True)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    steps = samples = 0
    _sync(loader.device)
    start = time.perf_counter()
    for ids, y in bar:
        optimizer.zero_grad()
        loss = model.loss(ids, y)["loss"] + model.regularization()
        loss.backward()
        nn.utils.clip_grad_norm_(params, tc.clip_norm)
        optimizer.step()
        loss_sum += loss.detach()
        steps += 1
        samples += y.shape[0]
        if not bar.disable and steps % PROGRESS_EVERY == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    _sync(loader.device)
    seconds = time.perf_counter() - start
    bar.close()
    train_loss = loss_sum.item() / max(steps, 1)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training diverged: mean train loss is {train_loss} in epoch {epoch} "
                                 f"(lr {optimizer.param_groups[0]['lr']:g})")
    return {"train_loss": train_loss, "steps": steps, "train_samples": samples,
            "train_time_s": seconds, "train_samples_per_s": samples / seconds if seconds > 0 else None}


def train(cfg: RunConfig, data: Any, model: Optional[nn.Module] = None) -> dict[str, Any]:
    """Train on data.split("train"), select on valid, report best-checkpoint valid/test metrics."""
    run_start = time.perf_counter()
    tc = cfg.train
    _check_config(cfg, data)
    seed_everything(tc.seed)
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    if model is None:
        model = _build_model(cfg.model, list(data.vocab_sizes))
    model.to(device)

    splits = {name: data.split(name) for name in ("train", "valid", "test") if data.has_split(name)}
    valid = splits["valid"]
    valid_y = np.asarray(valid.labels)
    valid_group = _group_of(valid, "valid") if data.group_field else None
    train_loader = DeviceBatchLoader(splits["train"], tc.batch_size, device, shuffle=True, seed=tc.seed)
    valid_loader = DeviceBatchLoader(valid, tc.eval_batch_size, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    plateau = Plateau(patience=tc.patience)

    out_dir = cfg.resolved_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME
    # A previous run's artifacts would pass for this run's if it stops early.
    for name in (RESULTS_NAME, CHECKPOINT_NAME, *plots.PLOT_NAMES):
        (out_dir / name).unlink(missing_ok=True)
    records: list[dict[str, Any]] = []
    best_epoch = None
    train_samples = 0
    train_seconds = 0.0

    with RunLog(out_dir / "log.jsonl") as log:
        log.write("params", config=cfg.to_dict(), schema_summary=_schema_summary(data, splits),
                  env=environment(device))
        for epoch in range(1, tc.epochs + 1):
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            stats = _train_epoch(model, optimizer, train_loader, cfg, epoch)
            train_samples += stats["train_samples"]
            train_seconds += stats["train_time_s"]

            eval_start = time.perf_counter()
            p = _predict(model, valid_loader)
            metrics = _metrics(valid_y, p, valid_group)
            difficulty = difficulty_counts(valid_y, p, tc.difficulty_thresholds)
            eval_seconds = time.perf_counter() - eval_start
            value = monitor_value(metrics, tc.monitor)
            if math.isnan(value):
                raise InputError(f"config key 'train.monitor': {tc.monitor!r} is undefined on the valid "
                                 "split (it needs both classes, within at least one group for gAUC)")
            improved = plateau.update(value)
            if improved:
                best_epoch = epoch
                save_checkpoint(ckpt_path, model, cfg, data.schema, epoch, metrics)
            else:
                for group in optimizer.param_groups:
                    group["lr"] = max(group["lr"] * tc.lr_decay, tc.min_lr)

            record = {"epoch": epoch, "lr": lr, **stats, "valid": metrics, "eval_time_s": eval_seconds,
                      "monitor": value, "improved": improved, "best_monitor": plateau.best,
                      "best_epoch": best_epoch, "bad_epochs": plateau.bad_epochs,
                      "lr_next": optimizer.param_groups[0]["lr"], "difficulty": difficulty,
                      "difficulty_thresholds": list(tc.difficulty_thresholds)}
            record = to_jsonable(record)
            record["epoch_time_s"] = time.perf_counter() - epoch_start
            records.append(record)
            log.write("epoch", **record)
            logger.info("epoch %d: train loss %.6f, valid %s, monitor %.6f%s, %.0f samples/s, %.1fs",
                        epoch, stats["train_loss"],
                        " ".join(f"{k} {v:.6f}" for k, v in metrics.items() if k != "n"),
                        value, " (best)" if improved else f" (lr -> {record['lr_next']:g})",
                        stats["train_samples_per_s"] or 0.0, record["epoch_time_s"])
            if plateau.should_stop:
                logger.info("early stop after epoch %d (no improvement for %d epochs)", epoch, tc.patience)
                break

        # once, not per epoch: drawing costs ~0.5 s, and the log holds all it needs (plots.write_plots)
        plots.write_plots(records, out_dir)
        restore_weights(ckpt_path, model)
        result = {
            "valid": _metrics(valid_y, _predict(model, valid_loader), valid_group),
            "test": (evaluate(model, splits["test"], tc.eval_batch_size, device,
                              with_group=bool(data.group_field), name="test")
                     if "test" in splits else None),
            "best_epoch": best_epoch,
            "epochs": len(records),
            "monitor": tc.monitor,
            "best_monitor": plateau.best,
            "wall_time_s": time.perf_counter() - run_start,
            "train_samples_per_s": train_samples / train_seconds if train_seconds > 0 else None,
            "out_dir": str(out_dir),
            "checkpoint": str(ckpt_path),
        }
        result = to_jsonable(result)
        log.write("result", **result)
        with atomic_file(out_dir / RESULTS_NAME) as tmp:
            tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
