"""Atomic artifact writes: a crash or Ctrl-C never leaves a file or folder that looks complete."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the artifact should not be
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, check_replaceable: Callable[[Path], None]) -> Iterator[Path]:
    """Yield a temp folder beside `path` (temp_dir_beside); on success it replaces `path` whole, on
    error it is removed.

    Something already at `path` is replaced only if `check_replaceable(path)` returns (it raises when
    that thing is not the caller's to replace); it is checked on entry and again just before the
    swap, and removed only once the new folder is complete.
    """
    path = Path(path)
    if os.path.lexists(path):
        check_replaceable(path)
    with temp_dir_beside(path, ".tmp") as tmp:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the finished folder should not be
        yield tmp
        if os.path.lexists(path):
            check_replaceable(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)


@contextlib.contextmanager
def temp_dir_beside(path: str | os.PathLike, suffix: str) -> Iterator[Path]:
    """A scratch folder `.<name>.<host>.<pid>.<random><suffix>` beside `path` (same file system, so it
    can be moved into place), removed on leaving the block, also on error or Ctrl-C.

    A kill -9 skips that removal: so each call first removes the scratch folders of `path` and
    `suffix` made on this host by processes that are gone, and only those (a live process's
    folder, e.g. a concurrent run's, is left alone).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{socket.gethostname()}."
    for entry in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and entry.is_dir() and not entry.is_symlink() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=suffix, dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when atomic_dir moved it into place


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
