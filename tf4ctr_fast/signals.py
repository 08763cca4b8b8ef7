"""SIGTERM (what schedulers send before a kill) handled like Ctrl-C, and signals deferred to a safe point.

Outside training a signal interrupts at once: SIGINT raises KeyboardInterrupt as usual, SIGTERM
raises Interrupted, a KeyboardInterrupt, so the same cleanup runs (atomic_file removes its temp file)
and the CLI exits 128 + the signal number (130, 143). Inside a training epoch (`deferred`) the first
signal only sets a flag: the loop finishes the step in progress, writes a resumable checkpoint and
then raises Interrupted itself; a second signal interrupts at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `checkpoint`: the resumable checkpoint written first, if any."""

    def __init__(self, signum: int, checkpoint: Optional[str] = None, where: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint, self.where = signum, checkpoint, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(e: KeyboardInterrupt) -> int:
    return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block SIGTERM raises Interrupted in the main thread, as SIGINT raises
    KeyboardInterrupt (the CLI's commands run in one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Deferral:
    """`pending`: the signal received inside the block (None: none yet)."""

    pending: Optional[int] = None

    def _handle(self, signum: int, _frame) -> None:
        if self.pending is not None:
            raise Interrupted(signum)       # the second one: stop now
        self.pending = signum


@contextlib.contextmanager
def deferred() -> Iterator[Deferral]:
    """SIGINT and SIGTERM set `.pending` instead of raising, until the block ends. Signal handlers can
    only be installed from the main thread; elsewhere the signals keep their handlers."""
    deferral = Deferral()
    if threading.current_thread() is not threading.main_thread():
        yield deferral
        return
    previous = {s: signal.signal(s, deferral._handle) for s in HANDLED}
    try:
        yield deferral
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if deferral.pending is not None:    # it came after the block's last look at `pending`: stop now
        raise Interrupted(deferral.pending)
