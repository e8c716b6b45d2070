"""Disk the trainer gives back: finished jobs and shards that nobody needs any more.

Every training leaves a job folder (the model and its plots) and every upload leaves shards, so a trainer
that runs for months, or the daemon's own trainer beside a library that keeps changing, would fill its
disk. Only what can be had again cheaply, or is no longer wanted, goes:

- a finished job whose result its caller has collected (downloaded) a day ago: the day covers a daemon
  that crashed while installing the model and downloads it again at its next start;
- a finished job nobody collected, a month after it ended: a daemon switched off for longer finds it gone
  and says so ("no job"), and the training is run again from the dataset it kept;
- a shard that no unfinished job trains on and nobody has uploaded, asked about or trained on for a week
  (a client that wants it again uploads it again: `MissingShards` says which), and an upload abandoned as
  a `.part` file for as long.

The daemon's datasets are never touched: the trainer's shards are copies of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path

DAY = 86400.0
COLLECTED_DAYS = 1.0
UNCOLLECTED_DAYS = 30.0
SHARD_DAYS = 7.0
COLLECTED = "collected"  # the marker a download of a job's result leaves in its folder


def _age(path: Path) -> float:
    return (time.time() - path.stat().st_mtime) / DAY


def mark_collected(out: Path) -> None:
    (out / COLLECTED).touch()


def job_expired(out: Path, record: str) -> bool:
    """Whether a finished job's folder may go (its record's time is when it ended)."""
    try:
        if (out / COLLECTED).exists():
            return _age(out / COLLECTED) > COLLECTED_DAYS
        return _age(out / record) > UNCOLLECTED_DAYS
    except FileNotFoundError:
        return False


def remove_job(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)


def touch(path: Path) -> None:
    """The shard at `path` was wanted now: it stays another SHARD_DAYS."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def prune_shards(folder: Path, needed: Collection[str], suffixes: Collection[str] = (".npz", ".part")) -> int:
    """Remove the files in `folder` (shards; kept checkpoints, by `suffixes`) that are stale and not
    `needed` (by name); the bytes freed."""
    freed = 0
    for path in folder.glob("*"):
        if path.suffix not in suffixes or path.stem in needed:
            continue
        try:
            if _age(path) > SHARD_DAYS:
                size = path.stat().st_size
                path.unlink()
                freed += size
        except FileNotFoundError:
            continue  # (an upload finished or another prune got there first)
    return freed
