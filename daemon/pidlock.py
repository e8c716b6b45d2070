"""One process per folder: an exclusive flock, held for as long as the process uses the folder.

The kernel drops an flock when its holder dies, `kill -9` included, so a crash never leaves a stale lock
for a user to delete by hand. The holder writes its pid into the file, so the refusal can say who it is.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class Held(RuntimeError):
    """Another process holds the lock: `pid`'s, or None when it has not written it yet."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by pid {pid or '?'}")
        self.pid = pid


def _pid(f: IO[str]) -> int | None:
    """The pid a holder wrote: none yet while it starts (it writes after taking the lock)."""
    f.seek(0)
    text = f.read().strip()
    return int(text) if text.isdigit() else None


def holder(path: Path) -> int | None:
    """The pid of the process that holds the lock, or None when nobody does (a shared lock, taken only
    to ask: it never writes, and never makes a starting holder think the folder taken for long)."""
    try:
        f = open(path)  # noqa: SIM115 - closed below, whichever way
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid(f)
    return None


def hold(path: Path) -> IO[str]:
    """The lock at `path`, held until the returned file is closed; `Held` if another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - the open file is the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid(f)
        f.close()
        raise Held(path, pid) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
