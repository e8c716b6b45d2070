"""Files replaced whole. A crash or a power cut while one is written must leave the previous version (or no
file), never a short one under its final name: a trained model that no longer loads, a dataset's labels cut
in half, a config the daemon refuses, a trainer's checkpoint that cannot be resumed. A rename alone does
not promise that: ext4 may keep the rename and lose the data written before it, so the data are handed to
the disk (fsync) before the rename, and the rename before the writer goes on (the folder's fsync). (On
macOS fsync leaves the data in the drive's cache; F_FULLFSYNC would flush that too, at a far higher cost.)
Each write has a `.part` of its own: two writers of one file (two `trainer token add`, two installs of one
model) shared one, and the first to finish published the other's half-written file. A process killed
mid-write leaves its `.part`, removed by a later write of the same file once it is an hour old."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes a read while copying
STALE_S = 3600.0  # a `.part` this old belongs to a write that was cut off


@contextlib.contextmanager
def writing(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into; it becomes `path` when the block ends without an error.
    `mode` (before the umask) is for files only their owner may read, such as a token's."""
    _sweep(path)
    part = path.with_name(f"{path.name}.{secrets.token_hex(6)}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # (O_EXCL: a link planted there is not followed)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _rename(part, path)
    except OSError as e:
        part.unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:  # a full disk's "No space left on device" named none
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _sweep(path: Path) -> None:
    """The `.part`s of writes of `path` cut off an hour ago or more (and the one of an older version's write)."""
    with contextlib.suppress(OSError):
        path.with_name(f"{path.name}.part").unlink(missing_ok=True)
    remove_stale(path.parent, f"{glob.escape(path.name)}.*.part")


def remove_stale(folder: Path, *patterns: str) -> None:
    """The files of `folder` matching these patterns left by a write cut off STALE_S ago or more (a younger
    one may be another process's, still being written)."""
    for pattern in patterns:
        with contextlib.suppress(OSError):
            for old in folder.glob(pattern):
                with contextlib.suppress(OSError):
                    if time.time() - old.lstat().st_mtime > STALE_S:
                        old.unlink()


def write(path: Path, data: bytes | str, mode: int = 0o666) -> None:
    with writing(path, mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def copy(source: Path, target: Path) -> None:
    """A read error names the source (writing() names its own errors after the target)."""
    with open(source, "rb") as read, writing(target) as f:
        while True:
            try:
                chunk = read.read(CHUNK)
            except OSError as e:  # EIO of a failing drive: a file named nowhere, or named as the target
                raise OSError(e.errno, e.strerror, str(source)) from e
            if not chunk:
                return
            f.write(chunk)


def publish(part: Path, path: Path) -> None:
    """Rename a file written elsewhere (a shard that arrived chunk by chunk) to `path`, durably."""
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    _rename(part, path)


def _rename(part: Path, path: Path) -> None:
    os.replace(part, path)
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (a platform without that) keeps the rename unsynced
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse a folder's fsync: nothing more to do
            os.fsync(folder)
    finally:
        os.close(folder)
