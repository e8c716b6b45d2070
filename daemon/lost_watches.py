"""Find the folders under the watch folders whose inotify watch watchdog lost, so that they are watched again.

watchdog (7.1.1) drops the watches of a folder moved out of a watch folder half a second after its move, by
its path then: with a folder above it renamed meanwhile it drops none, and when that folder, or the same
inode moved back in (which inotify gives the same watch number), goes later, it takes another folder's live
watch with it. Nothing under that folder reached the index until a restart.

The watcher works around it: a while after a folder moved into or out of a watch folder (MOVE_SETTLE_S), it
asks the kernel which inodes this process's inotify instances watch (/proc/self/fdinfo), walks the watch
folder for the folders not among them, and a folder found so by two checks in turn is lost: its watch folder
is watched anew and scanned (only scanned at the inotify limit, where a rewatch would fail). Where /proc
cannot say (not Linux, an observer that is no inotify one) the check does nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Collection

MOVE_SETTLE_S = 1.0  # watchdog drops the watches of a folder moved out 0.5 s after its move


def inotify_inodes() -> set[int] | None:
    """The inodes this process's inotify instances watch, as the kernel has them; None where /proc cannot say."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    inodes: set[int] = set()
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                inodes.update(int(ino, 16) for ino in _WATCHED.findall(f.read()))
        except OSError:  # (closed meanwhile)
            continue
    return inodes or None  # (none at all: an observer that is no inotify one, nothing to compare)


_WATCHED = re.compile(r"^inotify wd:[0-9a-f]+ ino:([0-9a-f]+)", re.M)  # (both in hex)


def unwatched_folders(root: str, watched: set[int], outermost: bool = True) -> set[str]:
    """The folders under root, root too (links not followed, as the observer follows none), that inotify does
    not watch: the outermost of each branch, or (`outermost` False) every one, the watches that watching root
    whole would add."""
    found: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                inner = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            inode = os.stat(folder).st_ino
        except OSError:  # gone, or cannot be listed (said in status): no watch to expect
            continue
        if inode not in watched:
            found.add(folder)
        if inode in watched or not outermost:
            stack += inner
    return found


def at_watch_limit(folder: str) -> bool:
    """Whether inotify refuses a watch on the folder for the user's limit (fs.inotify.max_user_watches, shared
    with every other program of theirs)."""
    return not room_for([folder])


def room_for(folders: Collection[str]) -> bool:
    """Whether inotify has a watch left for each of these folders at once: asked of watches of its own, made
    and dropped (a folder gone meanwhile needs none). True where there is no inotify to ask."""
    if not folders:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_CLOEXEC)
    except (OSError, AttributeError):
        return True
    if fd < 0:
        return ctypes.get_errno() != errno.EMFILE  # (the instances' limit: no rewatch either)
    try:
        for folder in folders:
            if libc.inotify_add_watch(fd, os.fsencode(folder), IN_ATTRIB) < 0 and ctypes.get_errno() == errno.ENOSPC:
                return False
        return True
    finally:
        os.close(fd)


def watched(folder: str) -> bool:
    """Whether this process's inotify watches the folder."""
    try:
        return os.stat(folder).st_ino in (inotify_inodes() or set())
    except OSError:
        return False


IN_ATTRIB = 0x4


class LostWatches:
    """The folders each watch folder's last check found unwatched. A folder found unwatched is lost only when
    found so again at the next check: one made by a copy still going on may not be watched yet (watchdog adds
    watches as it hears of new folders), and each of those was a rewatch."""

    def __init__(self) -> None:
        self._unwatched: dict[str, set[str]] = {}  # watch folder → its folders the last check found unwatched

    def check(self, root: str, unwatched: set[str]) -> set[str]:
        """The folders under root lost: found unwatched by this check (`unwatched`) and the one before. The
        others found unwatched are remembered for the next check; once some are lost, none are (root is watched
        anew or scanned)."""
        lost, self._unwatched[root] = unwatched & self._unwatched.get(root, set()), unwatched
        if lost:
            del self._unwatched[root]
        return lost
