"""Run folders: one run at a time in a folder, and no run's artifacts replaced by accident.

A run holds an exclusive lock on RUN/run.lock (fcntl.flock; the file records the holder's pid) for
its whole life; a second run on the same folder stops at once naming that pid. The kernel drops the
lock with the process, even on SIGKILL, so a stale lock never blocks anyone. The lock file stays.

What the folder already holds decides whether a run may start there:
  - no run artifact: start;
  - a finished run (results.json): refused unless `overwrite`;
  - an unfinished run (log or checkpoint, no results.json): refused, with the two ways on:
    resume it (`tf4ctr-fast train --resume RUN`) or start over with `overwrite`.
`overwrite` removes only what a run writes (RUN_FILES, the sharded checkpoint folders RUN_DIRS of
multi-process runs, and the temp files of atomic writes a kill left behind), never other files in
the folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional

from ..config import RunConfig, apply_overrides
from ..errors import InputError
from . import plots
from .checkpoint import META_NAME, read_checkpoint, written_by_a_run

LOCK_NAME = "run.lock"
LOG_NAME = "log.jsonl"
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"              # the resumable checkpoint (trainer: periodic and at epoch ends)
RESULTS_NAME = "results.json"      # written last: its presence marks a finished run
BEST_SHARDED = "best.dcp"          # ... of a multi-process run: folders of every rank's shards
LAST_SHARDED = "last.dcp"
RUN_FILES = (RESULTS_NAME, LOG_NAME, BEST_NAME, LAST_NAME, *plots.PLOT_NAMES)
RUN_DIRS = (BEST_SHARDED, LAST_SHARDED)
# What a resume may change: how the run shows progress and checkpoints, not what it computes
# (train.num_threads only changes the order of CPU float sums; docs/runs.md), and the number of
# ranks of a multi-process run (its batches are the same; sums are ordered otherwise).
RESUME_KEYS = ("train.progress", "train.num_threads", "train.checkpoint_every_steps", "train.nproc")


def checkpoint_names(sharded: bool) -> tuple[str, str]:
    """(best, last) checkpoint names of a one-process run (files) or a multi-process one (folders)."""
    return (BEST_SHARDED, LAST_SHARDED) if sharded else (BEST_NAME, LAST_NAME)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{folder}: another run is using this folder (pid {holder}, holding "
                             f"{path}); wait for it to end or choose another train.out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)        # releases the lock


def _remove_leftover_temps(folder: Path) -> None:
    """The temp files of io_utils.atomic_file writes of run artifacts that a kill cut short."""
    for name in RUN_FILES:
        for tmp in folder.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def resume_hint(folder: Path) -> str:
    return f"tf4ctr-fast train --resume {folder}"


def last_checkpoint(folder: Path) -> Optional[Path]:
    """The resumable checkpoint in `folder`: last.pt, or last.dcp of a multi-process run; None if none."""
    if (folder / LAST_NAME).is_file():
        return folder / LAST_NAME
    if (folder / LAST_SHARDED / META_NAME).is_file():
        return folder / LAST_SHARDED
    return None


def _require_last(folder: Path, sharded: Optional[bool] = None) -> Path:
    """last_checkpoint(folder), which must exist; with `sharded` given, it must be of that kind."""
    path = last_checkpoint(folder)
    if path is None:
        raise InputError(f"{folder}: no {LAST_NAME} or {LAST_SHARDED} to resume from (the run stopped "
                         "before its first checkpoint); start it over with --overwrite")
    if sharded is not None and sharded != (path.name == LAST_SHARDED):
        how = ("a multi-process run's checkpoint: resume it on 2 or more ranks (train.nproc=N or torchrun)"
               if path.name == LAST_SHARDED else "a one-process run's checkpoint: resume it with train.nproc=1")
        raise InputError(f"{path}: {how}")
    return path


def resume_config(folder: Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The config of the run in `folder`, as saved in its last.pt (last.dcp), with train.out_dir set to
    `folder` (the run may have been started from another directory). `overrides` may set RESUME_KEYS
    only."""
    folder = Path(folder)
    path = _require_last(folder)
    data = read_checkpoint(path)["config"]
    apply_overrides(data, overrides, allowed=RESUME_KEYS)
    data["train"]["out_dir"] = str(folder)
    try:
        return RunConfig.from_dict(data)
    except InputError as e:
        raise InputError(f"{path}: saved config: {e}") from None


def _check(folder: Path, overwrite: bool, resume: bool, sharded: Optional[bool] = None) -> None:
    finished = (folder / RESULTS_NAME).exists()
    started = any((folder / name).exists() for name in (LOG_NAME, BEST_NAME, LAST_NAME, *RUN_DIRS))
    if resume:
        if finished:
            raise InputError(f"{folder}: the run there has finished ({RESULTS_NAME}); nothing to resume")
        _require_last(folder, sharded)
    elif finished and not overwrite:
        raise InputError(f"{folder}: holds a finished run ({RESULTS_NAME}); pass --overwrite to replace "
                         "it, or choose another train.out_dir")
    elif started and not overwrite:
        raise InputError(f"{folder}: holds an unfinished run (a log or checkpoint but no {RESULTS_NAME}); "
                         f"resume it with `{resume_hint(folder)}`, or pass --overwrite to start over")
    if overwrite and not resume:
        for name in RUN_DIRS:
            path = folder / name
            if os.path.lexists(path) and not written_by_a_run(path):
                raise InputError(f"{path}: is not a checkpoint folder a run wrote, so --overwrite leaves it "
                                 "alone; move it away")


def check_run(folder: Path, overwrite: bool = False, resume: bool = False) -> None:
    """open_run's refusals, early (before a long prepare), changing nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        if resume:
            _require_last(folder)
        return
    with _exclusive(folder):
        _check(folder, overwrite, resume)


@contextlib.contextmanager
def open_run(folder: Path, overwrite: bool = False, resume: bool = False,
             sharded: bool = False) -> Iterator[Path]:
    """Lock `folder` for a run and check what it holds (see the module doc); with `resume` it must
    hold an unfinished run with a last.pt (`sharded`: a last.dcp). Yields the folder, locked until
    the block ends."""
    folder = Path(folder)
    if resume:
        _require_last(folder, sharded)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder):
        _check(folder, overwrite, resume, sharded)
        if not resume:
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
            for name in RUN_DIRS:           # _check made sure they are checkpoint folders
                shutil.rmtree(folder / name, ignore_errors=True)
        _remove_leftover_temps(folder)
        yield folder
