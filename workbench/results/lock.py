"""One writer per result folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock``, which names its holder.

The kernel releases a flock when its holder's process ends, however it ends (``kill -9`` included), so
holding the lock proves that no other writer is alive: only then may a writer delete temporary files
left in the folder. The lock file itself stays (deleting it would let two processes lock two different
files of the same name); its content, the holder's pid, host, command and start time, only serves the
message a refused writer prints. Local file systems only: network file systems may not honour flock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import FolderInUseError

LOCK_FILE = ".lock"


def _holder_text() -> str:
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name  # python -m workbench
    command = " ".join([name, *sys.argv[1:]])
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command[:300],
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S")})


def lock_holder(folder) -> dict:
    """What the lock file of ``folder`` says about its last holder ({} if nothing readable)."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


class FolderLock:
    """An exclusive, non-blocking writer's lock on ``folder`` (a context manager); FolderInUseError if another process holds it."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise FolderInUseError naming the process that holds it."""
        if self._fd is not None:
            return self
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(self._busy_message()) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text().encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go of the lock (the kernel also does this when the process ends)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _busy_message(self) -> str:
        holder = {}
        for _ in range(20):  # the holder writes its name just after locking: give it a moment
            holder = lock_holder(self.folder)
            if holder.get("pid"):
                break
            time.sleep(0.01)
        pid = holder.get("pid", "?")
        where = "" if holder.get("host") in (None, socket.gethostname()) else f" on {holder['host']}"
        command = f", `{holder['command']}`" if holder.get("command") else ""
        since = f", since {holder['since']}" if holder.get("since") else ""
        return (f"{self.folder} is being written by another process (pid {pid}{where}{command}{since}): wait until "
                f"it ends or stop it (kill {pid}), then run again with --resume; or choose another --out")

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
