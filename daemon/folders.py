"""The one walk over the folders a user names, for tagging, tag suggestions and datasets alike.

Sorted, so every run sees files in the same order (reproducible datasets, stable output). Links to folders
are not followed for tagging, so a link loop cannot trap it; a dataset's folders and suggestions follow them
(`MyTags/kick` linked to a pack's `Kicks/` is how a producer gathers examples without copying them), each
folder walked once. A subfolder that cannot be read is reported, not skipped in silence: otherwise a
producer would never learn that part of the library was left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

from .decode import is_audio_path, is_junk_folder

log = logging.getLogger(__name__)


def indexed_path(path: str) -> str:
    """A path as the index holds it: absolute, links to folders on the way resolved, a file's own name as
    given. A watch folder added through a link is watched where it really is: inotify does not look
    through a link it is given, and files made at the top of such a folder went unseen until a restart."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def as_asked(path: str, asked: dict[str, str]) -> str:
    """An indexed path as the caller spelled it: `asked` maps each path asked, as the index spells it, to how it
    was asked (a link, `..`, a relative path), and a file under a folder asked is joined to that folder's
    spelling. A path under none of them is returned as it is."""
    up = path
    while up not in asked and os.path.dirname(up) != up:  # the nearest folder asked, walked up to
        up = os.path.dirname(up)
    if up not in asked:
        return path
    return asked[up] if up == path else os.path.join(asked[up], os.path.relpath(path, up))


def storable(path: str) -> bool:
    """Whether the index can hold this path: a name that is not UTF-8 (from an old archive) comes from the OS
    with its bytes escaped, and SQLite refuses it."""
    try:
        path.encode()
        return True
    except UnicodeEncodeError:
        return False


def readable_name(path: str) -> str:
    """A name that is not UTF-8 as people can read it (`Caf\\xe9 Tom.wav`), and as gRPC can carry it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


UNNAMED = "left out: its name is not valid UTF-8 (rename the file to tag it)"
FOLDER_UNREAD = "a folder that cannot be listed ({}): its files are left out"  # a Tag call's answer for it


def warn(folder: str, reason: str) -> None:
    log.warning("cannot read folder %s (%s): its files are left out", readable_name(folder), reason)


def audio_files_under(
    folder: str,
    on_error: Callable[[str, str], None] = warn,
    going: Callable[[], bool] = lambda: True,
    links: bool = False,
) -> Iterator[str]:
    """Every audio file under folder, by path; on_error(folder, reason) for each folder that cannot be read.
    The walk ends early, at a folder, once `going()` says so (a caller who stopped waiting for a big tree).
    `links`: links to folders are followed (a folder met twice, a loop, is walked once)."""

    def unreadable(e: OSError) -> None:
        on_error(str(e.filename), e.strerror or str(e))

    walked: set[str] = set()
    for dirpath, dirs, names in os.walk(folder, onerror=unreadable, followlinks=links):
        if not going():
            return
        if links:
            real = os.path.realpath(dirpath)
            if real in walked:
                dirs[:] = []
                continue
            walked.add(real)
        dirs[:] = sorted(d for d in dirs if not is_junk_folder(d))
        yield from (os.path.join(dirpath, n) for n in sorted(names) if is_audio_path(n))
