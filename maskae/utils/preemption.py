"""Stopping cleanly when a cluster or a user asks: SIGTERM (SLURM, Kubernetes, spot machines) and SIGINT
(Ctrl-C) set a flag that long loops read at safe points (after a training step, after an embedding
chunk); the loop then writes what resume needs and raises `Preempted`, which the CLI turns into one line
and exit status 128 + the signal (143 for SIGTERM, 130 for SIGINT). A second signal exits at once: what
is on disk is always whole, since checkpoints and chunks are written atomically."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: int | None = None


class Preempted(Exception):
    """A loop stopped at a safe point because a signal asked it to; `message` says how to continue."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def stop_requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _requested


@contextlib.contextmanager
def graceful_stop(command: str) -> Iterator[None]:
    """Catch SIGTERM and SIGINT for the duration (main thread only; elsewhere signals keep their defaults)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum: int, frame) -> None:
        global _requested
        if _requested is not None:
            sys.stderr.write(f"maskae {command}: {signal.Signals(signum).name} again: stopped at once; what is on "
                             "disk is whole, and --resume continues from the last checkpoint or chunk\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        _requested = signum

    previous = {signum: signal.signal(signum, ask) for signum in SIGNALS}
    _requested = None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested = None
