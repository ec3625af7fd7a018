"""One run per output directory: a lock file that the operating system releases when its process dies.

Two runs writing into one directory interleave checkpoints and logs and ruin both. The lock is an
`fcntl.flock` on a file in that directory, so a run killed by any signal (or a lost machine's
process) leaves no live lock behind; the file also records the holder's pid, host and start time,
which is what a refused second run names. A forked child (a DataLoader worker) shares the lock, and
outlives a killed run by up to a few seconds (until it notices that its parent is gone): a lock whose
recorded holder is dead is therefore waited for, up to `ORPHAN_WAIT_S`, before it is refused. Whole-file locks only work across the processes of one
host on most network file systems, which is the case they are needed for.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..errors import MaskAEError, StorageError

logger = logging.getLogger(__name__)
ORPHAN_WAIT_S = 15.0  # torch's DataLoader workers check for a dead parent every 5 s


class RunLockedError(MaskAEError, RuntimeError):
    """Another live process is writing into the same output directory."""


class RunLock:
    """`with RunLock(path, "maskae train"):` holds the lock file `path` for the duration of the block."""

    def __init__(self, path: str | Path, command: str) -> None:
        self.path = Path(path)
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                if not _alive(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)  # the holder died; its children are about to let go
                    continue
                orphans = "" if _alive(holder) else ", which is gone, but a child process of it still holds the lock"
                raise RunLockedError(
                    f"{self.path.parent} is in use by {_describe(holder)}{orphans}; wait for that run to finish (or "
                    "stop it), or choose another output directory."
                ) from None
            # The file may have been unlinked by its previous holder between our open and our lock.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        previous = _read(fd)
        if previous:
            logger.warning("took over the lock %s left by %s, which is no longer running", self.path,
                           _describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Unlink while still holding the lock, so nobody can lock the old file after we let go of it."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def _open(self) -> int:
        folder = self.path.parent
        existing = next(path for path in (folder, *folder.parents) if path.exists())
        if not existing.is_dir():
            raise StorageError(f"{existing} is a file, not a directory; choose another output directory.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if error.errno in (errno.ENOTDIR, errno.EEXIST):
                raise StorageError(f"{folder} cannot be created: a file stands in its path ({error.strerror}); "
                                   "choose another output directory.") from None
            raise StorageError(f"cannot create {self.path} ({error.strerror}); choose an output directory you "
                               "can write to.") from None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _alive(holder: dict) -> bool:
    """Whether the recorded holder still runs (assumed so when it is on another host or unknown)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its pid yet)"
    return (f"{holder.get('command', 'another run')} (pid {holder.get('pid')} on {holder.get('host')}, "
            f"started {holder.get('started')})")
