"""Keep the index in step with the watched folders: live filesystem events plus a reconciling scan.

Events only record *what* changed (a pending row with a due time); the workers do the reading. A file is
due at once when its writer closes it, and until then `WRITER_OPEN_S` after its last write (`settle_s` where
the system reports no closes), so a file still being copied is not read half-written. The scan at start-up
(and when a folder appears) finds what changed while the daemon was down: new or changed files go pending,
vanished ones are dropped, and a file that was moved keeps its tags because its content hash is known.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shlex
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from . import lost_watches
from .decode import (
    BROKEN_LINK,
    NO_PERMISSION,
    DecodeError,
    check_readable,
    in_junk_folder,
    is_audio_path,
    is_junk_folder,
)
from .features import changed_at
from .folders import indexed_path, readable_name, storable
from .index import Index, under, within

log = logging.getLogger(__name__)
# watchdog warns on stderr each time a folder it already follows is registered again during a copy: noise
warnings.filterwarnings("ignore", message="Callback with id .* already exists", category=RuntimeWarning)

# A file written to and not closed since waits this long after its last write, not settle_s: a copy stalled on a
# slow network drive, or a recorder between buffers, pauses longer than settle_s with the file open, and was read
# at each pause (failed "truncated", or tagged from half its sound) and again at each later one and the close.
# So does a file made empty (its first write may stall too). A scan, which sees no writer, waits settle_s.
WRITER_OPEN_S = 30.0

# The events `_handle` acts on. Asking inotify for these alone matters: by default it also reports every
# open and every close-without-write, and the daemon opens each file it reads several times, so the
# observer threads spent a fifth of the daemon's CPU turning its own reads into events it then ignored.
EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileAttribEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    DirCreatedEvent,
    DirAttribEvent,
    EventsLostEvent,
]


class Watcher(FileSystemEventHandler):
    def __init__(
        self,
        index: Index,
        settle_s: float,
        on_pending: Callable[[], None],
        on_removed: Callable[[list[str]], None],
        rescan_s: float = 0.0,
        on_moved: Callable[[list[tuple[str, str]]], None] = lambda moved: None,
    ) -> None:
        """`on_pending`: files may be due, or the missing watch folders changed (either changes the daemon's
        status). `on_moved`: (old, new) paths of the files renamed or moved inside the library, tags and all.
        `rescan_s`: how often every watch is scanned again (0: at start only). Some changes send no event: a
        linked file whose target is edited outside the watches, events lost to a race the observer cannot see;
        a scan finds them by their size, time and inode, and reads nothing else."""
        self.index = index
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self._on_pending = on_pending
        self._on_removed = on_removed
        self._on_moved = on_moved
        self._observer = _observer()
        # how long a file written to, and not closed since, waits: closed, it is due at once
        self._open_s = max(settle_s, WRITER_OPEN_S) if _reports_closes(self._observer) else settle_s
        self._watches: dict[str, ObservedWatch] = {}
        self._inner: frozenset[str] = frozenset()  # watch folders inside another one observed (_note_watches)
        self._identity: dict[str, tuple[int, int] | None] = {}  # each watch folder's device and inode
        self._missing: set[str] = set()
        self._awaited: set[str] = set()  # watch folders found gone as their files were read (await_back)
        self._links: dict[str, str] = {}  # links to folders met under the watches → where they point
        self._unnamed: set[str] = set()  # paths whose names are not UTF-8, said once
        self._unlisted: dict[str, str] = {}  # folders under the watches that could not be listed → why
        self.unwritable = ""  # why changes cannot be written to the index now (a full disk), while they cannot
        self._mounts: set[str] = set()  # watch folders that were mount points when watched
        # both of them, and the mount points, as `_note_waiting` last saw them
        self._waiting: frozenset[str] = frozenset()
        self._mount_points: frozenset[str] = frozenset()
        self._buffer: dict[str, float] = {}
        self._lock = threading.RLock()
        self._scheduling = threading.Lock()  # one watch() or unwatch() at a time, taken before _lock
        self._stop = threading.Event()
        self._events = threading.Event()  # set when an event is buffered: the flusher sleeps until then
        self._flusher = threading.Thread(target=self._flush_loop, name="watch-flush", daemon=True)
        self.scans_running = 0
        # watch folder → folders made or moved in under it, to scan in turn by one thread a watch folder (while
        # it is in _folders_scanning): a network drive whose listing hangs holds up only its own
        self._folders: dict[str, dict[str, bool]] = {}  # (… and whether a renamed one is only to be checked)
        self._folders_scanning: set[str] = set()
        self._rescanning: set[str] = set()  # watch folders being scanned again (rescan) …
        self._rescan_again: set[str] = set()  # … and those to scan once more when that scan is done
        self._unheard: set[str] = set()  # watch folders with an event or a scan the index refused: scanned again
        self._moved_across: dict[str, float] = {}  # watch folder → when a folder last moved into or out of it
        self._unwatched = lost_watches.LostWatches()  # what the last checks found unwatched
        # watch folders that inotify cannot watch whole at its limit (fs.inotify.max_user_watches), not at all
        # when they could not be scheduled (_poll_over_limit)
        self._over_limit: dict[str, _AtLimit] = {}
        self._checking = False  # (a check's thread runs)

    def start(self) -> None:
        self._observer.start()
        self._flusher.start()
        for folder in self.index.watches():
            try:
                self.watch(folder)
            except OSError as e:  # the inotify limit, reached since: the other folders are watched
                self._not_watched(folder, e)

    def _not_watched(self, folder: str, e: OSError) -> None:
        """A watch folder that could not be scheduled. At the inotify limit it is scanned now and every few
        minutes, said in status, and watched once the limit allows (it was retried silently every 5 s, never
        scanned: files added or changed while the daemon was down, or since, were never indexed). Otherwise
        (another error) it is tried again every few seconds, as a folder not there."""
        if e.errno in AT_WATCH_LIMIT:
            self.at_limit(folder, why=e.errno)
            return
        log.error("cannot watch %s (%s); it is tried again every few seconds", folder, e)
        with self._lock:
            self._missing.add(folder)
            self._note_waiting()

    def at_limit(self, folder: str, observed: bool = False, why: int = errno.ENOSPC) -> None:
        """A watch folder with folders inotify does not watch for its limit: scanned now, and again by
        _poll_over_limit until they can be watched. `observed`: only if it is observed still (not removed
        since the caller looked); `why`: the errno inotify gave, which names the limit to raise."""
        mount = os.path.ismount(folder)  # (not under the lock: a hung mount would hold it)
        with self._lock:
            if observed and folder not in self._watches:
                return
            self._missing.discard(folder)  # (a folder back, its drive mounted, that could not be watched)
            if mount:  # its drive unmounted later must not read as its files deleted (`gone`)
                self._mounts.add(folder)
            self._note_waiting()
            if folder in self._over_limit:
                return
            self._over_limit[folder] = _AtLimit(time.monotonic() + LIMIT_POLL_S, time.monotonic() + LIMIT_POLL_S)
        log.warning(
            "%s is not watched whole: %s; changes in it are found by a scan every few minutes, until the limit is"
            " raised",
            folder,
            AT_LIMIT_SAID.get(why, AT_LIMIT_SAID[errno.ENOSPC]),
        )
        self.rescan(folder)

    def _poll_over_limit(self) -> None:
        """Each watch folder at the inotify limit, when due: watched whole once inotify has room for every
        folder it lacks (the user raised the limit, another program freed some), else scanned, at most once
        per LIMIT_POLL_SCANS times its last scan's length (a library of millions takes a while to list)."""
        now = time.monotonic()
        with self._lock:
            due = [folder for folder, state in self._over_limit.items() if state.scan_at <= now]
        for folder in due:
            gone = self.gone(folder)  # (not under the lock: a hung mount would hold it)
            with self._lock:
                state = self._over_limit.get(folder)
                if state is None:  # unwatched meanwhile
                    continue
                if gone and folder not in self._watches:  # its files wait for it (a scan found them all gone)
                    del self._over_limit[folder]
                    self._missing.add(folder)
                    self._note_waiting()
                    continue
            # tried whole only with room for every folder it lacks: the try unschedules what is watched first,
            # and a watch folder missing a few folders was left with none
            if now >= state.try_at and lost_watches.room_for(
                lost_watches.unwatched_folders(folder, lost_watches.inotify_inodes() or set(), outermost=False)
            ):
                if self._watched_whole(folder):
                    continue
                # (room, but another program took it meanwhile): each try walks the whole tree
                state.try_every = min(2 * state.try_every, LIMIT_RETRY_MOST_S)
                state.try_at = now + state.try_every
            state.scan_at = now + max(LIMIT_POLL_S, LIMIT_POLL_SCANS * state.scan_took)
            with self._lock:
                scanning = folder in self._rescanning  # (a long scan not over: not asked again at its end)
            if not scanning:
                self.rescan(folder)

    def _watched_whole(self, folder: str) -> bool:
        """Try to watch a folder at the inotify limit whole; False, quietly, while the limit still does not
        allow it (it logged twice, walked the tree and scanned it at every poll)."""
        with self._lock:
            scheduled = folder in self._watches
        try:
            if scheduled:
                self._rewatch(folder)
            else:
                self.watch(folder, over_limit=True)  # (which says so, before a status can read it as watched)
        except OSError as e:
            if e.errno in AT_WATCH_LIMIT:
                return False
            with self._lock:
                self._over_limit.pop(folder, None)
            self._not_watched(folder, e)
            return True
        if scheduled:
            log.info(WHOLE_NOW, folder)  # (said before a status reads it, without the lock, as not over the limit)
            with self._lock:
                self._over_limit.pop(folder, None)
            self.rescan(folder)  # (what changed meanwhile; watch() scans a folder it schedules)
        return True

    @property
    def over_limit(self) -> list[str]:
        """Watch folders inotify does not watch whole (its limit): changes there are found by scans only."""
        return sorted(self._over_limit)  # (a copy, without the lock: _status_copies)

    def stop(self) -> None:
        self._stop.set()
        self._events.set()
        self._observer.stop()
        self._observer.join()
        self._flusher.join()
        try:
            self.flush()
        except Exception as e:  # a full or locked index at shutdown must not stop the daemon's own shutdown
            log.warning("could not record the last file events (%s); the next start's scan finds them", e)

    # -- watch folders -------------------------------------------------------------------------------
    def follow_link(self, folder: str) -> str:
        """Where a watch folder that is a link leads, the watch and its rows moved there (packs moved to
        another drive and linked back; a watch added through a link by an older version): watched at the
        link, its files came under the link's path, live changes were missed, and `vibrary tags` (which
        resolves links) found none of them. Any other folder as it is."""
        real = indexed_path(folder) if os.path.isdir(folder) else folder
        if real != folder:
            self._on_moved(self.index.move(folder, real))  # rows first: forgetting the watch forgets its rows
            self.index.retry_now(real)  # (those parked while the link led nowhere: watch() sees no return of it)
            self.index.remove_watch(folder)
            self.index.add_watch(real)
            with self._lock:
                self._missing.discard(folder)
                self._note_waiting()
            log.info("watch folder %s is a link: watching %s, where it leads", folder, real)
        return real

    def watch(self, folder: str, over_limit: bool = False, missing: bool = False) -> None:
        """Observe the folder and reconcile it in the background; a folder that is not there (a drive
        not mounted) keeps its index rows and is picked up when it appears. `over_limit`, `missing`: only if it
        is still one at the inotify limit, or missing (not removed since a check looked at it: a folder removed
        as its drive came back was watched again, its files indexed under no watch). Its disk is looked at
        outside self._lock, which the observer's thread takes to record an event: a hung mount held it, and
        every event of every watch with it (self._scheduling keeps other watches and unwatches out meanwhile)."""
        with self._scheduling:
            if missing:  # (as asked: a link found missing is followed to where it leads, not missing itself)
                with self._lock:
                    if folder not in self._missing:
                        return
            folder = self.follow_link(folder)
            with self._lock:
                if folder in self._watches or (over_limit and folder not in self._over_limit):
                    return
            if not os.path.isdir(folder):
                with self._lock:
                    if folder not in self._missing:  # said once, not at every retry
                        log.warning("watch folder %s is missing; its index entries are kept", folder)
                    self._missing.add(folder)
                    self._note_waiting()
                return
            watch = self._schedule(folder)  # OSError: no change (scheduling waits for the observer's own lock)
            mount, identity = os.path.ismount(folder), _identity(folder)
            with self._lock:
                self._watches[folder] = watch
                self._note_watches()
                if mount:
                    self._mounts.add(folder)
                came_back = folder in self._missing
                self._missing.discard(folder)
                if over_limit and folder in self._over_limit:  # said first: a status reads it without the lock
                    log.info(WHOLE_NOW, folder)
                self._over_limit.pop(folder, None)
                self._note_waiting()
                self._identity[folder] = identity
                covered = folder in self._inner
        if came_back and self.index.retry_now(folder):  # files that waited for it, not a minute more
            self._on_pending()
        if not covered:  # (the scan of the folder it is in covers it, or has done so)
            self._scan_in_background(folder)

    def await_back(self, folder: str) -> None:
        """A watch folder found gone as its files were read: they are read again once it is there. (It may be
        back before a check saw it go, a folder renamed and renamed back: they waited a minute, said to wait
        for a folder that was there.)"""
        with self._lock:
            self._awaited.add(folder)

    def _retry_awaited(self) -> None:
        with self._lock:
            awaited = self._awaited - self._missing  # (a missing one is read again by watch() when back)
        back = {f for f in awaited if not self.gone(f)}  # (not under the lock: a hung mount would hold it)
        with self._lock:
            self._awaited -= back
        for folder in sorted(back):
            if self.index.retry_now(folder):
                self._on_pending()

    def unwatch(self, folder: str) -> None:
        """Stop observing; a scan of the folder still running stops at its next directory, and events
        buffered for it are dropped, so nothing under it comes back after the index forgets it."""
        with self._scheduling:
            with self._lock:
                self._missing.discard(folder)
                self._awaited.discard(folder)
                self._over_limit.pop(folder, None)
                self._identity.pop(folder, None)
                watch = self._watches.pop(folder, None)
                self._note_watches()
                self._mounts.discard(folder)
                self._note_waiting()
                self._buffer = {p: due for p, due in self._buffer.items() if self._watched(p)}
            if watch is not None:
                self._observer.unschedule(watch)

    def _lost(self, folder: str) -> None:
        """A watch folder deleted or moved away: its observer is dead, so it is watched again when a folder
        is back at its path (as for a drive not mounted)."""
        with self._lock:
            watch = self._watches.pop(folder, None)
            if watch is None:
                return
            self._note_watches()
            self._over_limit.pop(folder, None)  # (watched again when back, at the limit or not)
            self._missing.add(folder)
            self._note_waiting()
        log.warning("watch folder %s is gone; watching for it to come back", folder)
        with contextlib.suppress(Exception):  # its emitter may have ended itself already
            self._observer.unschedule(watch)

    def _watched(self, path: str) -> bool:
        """Whether path is a watch folder or under one (call with the lock held), scanned if not observed."""
        return within(path, self._watches) or within(path, self._over_limit)

    def _note_watches(self) -> None:
        """(With the lock held, after a change to the observed folders.) A pack watched inside a library already
        watched (the CLI warns and adds it) has an observer of its own, which reports every change under it a
        second time: the second of a rename's two moves found no row under the old name and read the file
        again. Its events are dropped while the folder it is in is observed (read without the lock by each)."""
        self._inner = frozenset(f for f in self._watches if within(f, [w for w in self._watches if w != f]))

    def _note_waiting(self) -> None:
        """(With the lock held, after a change to the missing watches or the mount points.) Read without the
        lock by `missing`: every Search, CountTags and Tag asks it, and the lock is held while events are
        written to the index (a second or more after a copy of thousands of files)."""
        self._waiting = frozenset(self._missing | self._mounts)
        self._mount_points = frozenset(self._mounts)

    @property
    def missing(self) -> set[str]:
        """Watch folders not there now (one that is there but could not be watched, at the inotify limit,
        is retried as well, but is not missing), a drive's mount point with the drive unmounted among them."""
        return {folder for folder in self._waiting if self.gone(folder)}

    def gone(self, folder: str) -> bool:
        """Whether a watch folder is not there, or is the mount point of a drive not mounted now: an fstab
        mount point stays, empty, and a scan of it found the whole drive's files gone and forgot them all."""
        return not os.path.isdir(folder) or (folder in self._mount_points and not os.path.ismount(folder))

    @property
    def unfollowed_links(self) -> list[tuple[str, str]]:
        """(link, target) of each link to a folder under a watch whose target no watch covers: its files are
        not indexed, and a producer who keeps packs on another drive, linked into the library, must be told."""
        watched = self._status_copies()
        return sorted(
            (link, target)
            for link, target in list(self._links.items())
            if within(link, watched) and not (within(target, watched) or _loop(link, target)) and os.path.islink(link)
        )

    @property
    def unnamed(self) -> list[str]:
        """Files and folders under the watches left out because their names are not UTF-8 (the index cannot
        hold them), as people can read them (`Caf\\xe9 Tom.wav`); said in status, not only in the log: one
        unzipped from a Windows-made pack could never be found, and nothing said why. Renamed or deleted
        ones, and ones no watch holds any more, are forgotten."""
        watched = self._status_copies()
        names = sorted(self._unnamed)
        gone = {p for p in names if not (os.path.lexists(p) and within(p, watched))}
        if gone and self._lock.acquire(blocking=False):  # (forgotten at the next status when the lock is busy)
            try:
                self._unnamed -= gone
            finally:
                self._lock.release()
        return [readable_name(p) for p in names if p not in gone]

    def _status_copies(self) -> list[str]:
        """The folders watched, observed or scanned (_watched's), copied without the lock: the status reads
        under here take no lock, which a flush holds while the index waits up to a minute for another program
        (a sqlite3 shell) to let it go: every status waited as long. A copy of a dict or a set of strings is
        made whole under the GIL, so a change meanwhile makes it old, never half-made."""
        over_limit = list(self._over_limit)  # (first: watch() adds to _watches, then takes from _over_limit)
        return [*list(self._watches), *over_limit]

    @property
    def unlisted(self) -> list[str]:
        """Folders under the watches whose files are not indexed because they cannot be listed (no
        permission, a name too long), with why: said in status, not only in the log."""
        watched = self._status_copies()
        return sorted(f"{folder} ({why})" for folder, why in list(self._unlisted.items()) if within(folder, watched))

    def _list_again(self) -> None:
        """Folders that could not be listed, listable now (their permissions fixed): their watch folders are
        watched anew and scanned, each once. No event says so (inotify could not watch them either), and they
        waited for a restart or the next rescan, hours away."""
        with self._lock:
            folders = list(self._unlisted)
        roots: set[str] = set()
        for folder in folders:
            try:
                with os.scandir(folder):
                    listable = True
            except OSError as e:
                there = e.errno not in (errno.ENOENT, errno.ENOTDIR)  # (isdir() is False for a path too long)
                if there and (e.errno != errno.ENAMETOOLONG or _deep_folder_there(folder)):
                    continue  # (still not)
                listable = False
            with self._lock:  # listable now, or gone: nothing to say any more
                self._unlisted.pop(folder, None)
                if listable:
                    roots.update(w for w in self._watches if within(folder, [w]))
        for root in sorted(roots):
            log.info("a folder in %s can be listed now: watching and scanning it again", root)
            self._watch_anew(root)

    def _watch_anew(self, root: str) -> None:
        try:
            self._rewatch(root)
        except OSError as e:  # (the inotify limit): scanned until it can be watched
            self._not_watched(root, e)
            return
        self.rescan(root)  # (what changed while it was watched anew, too)

    def _check_watched(self) -> None:
        """Watch folders in which a folder moved in or out are watched anew and scanned when a folder in them
        has lost its inotify watch (a watchdog bug: daemon/lost_watches.py). Looked for on a thread of its own
        (a walk of a big library held up the flusher)."""
        now = time.monotonic()
        with self._lock:
            due = [root for root, at in self._moved_across.items() if now - at >= lost_watches.MOVE_SETTLE_S]
            if not due or self._checking:
                return
            for root in due:
                del self._moved_across[root]
            self._checking = True
        try:
            self._thread(functools.partial(self._find_lost_watches, due), "watch-check")
        except RuntimeError:  # (can't start new thread): the next check tries again
            with self._lock:
                self._checking = False
                for root in due:
                    self._moved_across.setdefault(root, now)

    def _find_lost_watches(self, roots: list[str]) -> None:
        try:
            watched = lost_watches.inotify_inodes()
            if watched is None:  # (not Linux: no inotify)
                return
            for root in roots:
                unwatched = lost_watches.unwatched_folders(root, watched) if root in self._watches else set()
                lost = self._unwatched.check(root, unwatched)
                if unwatched and not lost:
                    with self._lock:  # looked at again at the next check
                        self._moved_across.setdefault(root, 0.0)
                if not lost:
                    continue
                if lost_watches.at_watch_limit(min(lost)):  # a rewatch would fail, and drop the whole watch folder
                    self.at_limit(root, observed=True)  # (unless removed during the walk)
                    continue
                log.warning("%s is not watched any more: watching and scanning %s again", min(lost), root)
                self._watch_anew(root)
        except Exception:  # a check that fails must not leave _checking set: no check would come again
            log.exception("could not check the watches")
        finally:
            with self._lock:
                self._checking = False

    def _readable_again(self) -> None:
        """Broken links whose targets are there again (their drive mounted, their pack moved back), and files
        the daemon may read now (its user put in their group, a share's rights changed on its server), are
        read: no event comes for either, the file itself unchanged, and they stayed failed for good."""
        for path in self.index.failed_with(BROKEN_LINK):
            if os.path.exists(path):
                self._mark(path, time.time())
        for path in self.index.failed_with(NO_PERMISSION):
            if _readable(path):
                self._mark(path, time.time())
        with self._lock:  # links deleted, or no watch's any more: a library relinked for months kept them all
            unwatched = {link for link in self._links if not self._watched(link)}
            held = [link for link in self._links if link not in unwatched]
        gone = unwatched | {link for link in held if not os.path.islink(link)}  # (no stat under the lock:
        with self._lock:  # a hung mount would hold up every event)
            for link in gone:
                self._links.pop(link, None)

    def _rewatch(self, root: str) -> None:
        """Observe a watch folder anew: a folder inside it that could not be listed when it was scheduled got
        no inotify watch of its own, and a file added to it once fixed sent no event."""
        with self._scheduling:
            with self._lock:
                old = self._watches.get(root)
            if old is None:
                return
            with contextlib.suppress(KeyError):  # (gone meanwhile: `_lost` takes no _scheduling)
                self._observer.unschedule(old)
            try:
                watch = self._schedule(root)
            except OSError:  # (the inotify limit): unobserved now, not listed as observed (an unwatch met it)
                with self._lock:
                    self._watches.pop(root, None)
                    self._note_watches()  # (a watch folder inside it is observed on its own meanwhile)
                raise
            with self._lock:
                self._watches[root] = watch

    def _schedule(self, root: str) -> ObservedWatch:
        """(Not under self._lock: scheduling waits for the observer's own lock, which its thread holds while it
        hands an event on, and handing one on takes self._lock.)"""
        return self._observer.schedule(_Outermost(self, root), root, recursive=True, event_filter=EVENTS)

    def _linked(self, link: str) -> None:
        """Note a link to a folder: links are not followed, so that a loop cannot trap a scan or the observer."""
        target = os.path.realpath(link)
        if not (self._storable(link) and storable(target)):
            return
        with self._lock:
            if self._links.get(link) == target:
                return
            self._links[link] = target
            if self._watched(target) or _loop(link, target):
                return
        if within(target, self.index.watches()):  # one registered after this one's scan began (at a start)
            return
        log.warning("%s links to %s, not followed: vibrary watch add %s indexes it", link, target, shlex.quote(target))

    def _storable(self, path: str) -> bool:
        """Whether the index can hold this path. A name that is not UTF-8 (unpacked from an old archive)
        comes from the OS with its bytes escaped, and SQLite refuses to store it: one such file used to
        stop every later event from being recorded, and a scan at its folder. It is left out and said once."""
        if storable(path):
            return True
        with self._lock:
            said = path in self._unnamed
            if not said and len(self._unnamed) < UNNAMED_MOST:
                self._unnamed.add(path)
        if not said:
            log.warning("%r is left out: its name is not valid UTF-8; rename it to index it", os.fsencode(path))
        return False

    # -- events --------------------------------------------------------------------------------------
    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except sqlite3.Error as e:  # a deletion or a move is written at once, not buffered: one the index refused
            # (locked, a full disk) was lost, and a deleted sample was found by searches until a rescan, hours later
            log.warning("could not record %r (%s): its watch folder is scanned again in a moment", event, e)
            with self._lock:
                self._unheard.update(w for w in self._watches if within(os.fsdecode(event.src_path), [w]))
        except Exception:  # the observer thread must survive anything a filesystem throws at it
            log.exception("could not handle %r", event)

    def _handle(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:  # watchdog's own walk of a folder moved or made: the move or scan covers it
            return
        src = os.fsdecode(event.src_path)
        if isinstance(event, EventsLostEvent):  # the kernel's queue overflowed (a busy disk, a starved daemon)
            log.warning("file events under %s were lost (inotify's queue overflowed): scanning it again", src)
            self.rescan(src)  # (they were lost for good, and the files waited for a restart)
        elif isinstance(event, FileCreatedEvent) and not is_audio_path(src) and _links_to_folder(src):
            self._linked(src)  # inotify does not flag a link as a folder: watchdog calls it a file
        elif isinstance(event, FileCreatedEvent):  # (empty: a copy whose first write is still to come, or stalls)
            self._mark(src, time.time() + (self._open_s if _empty(src) else self.settle_s))
        elif isinstance(event, FileModifiedEvent):
            self._mark(src, time.time() + self._open_s)
        elif isinstance(event, FileClosedEvent):
            self._mark(src, time.time())
        elif isinstance(event, FileAttribEvent):
            self._mark(src, time.time(), postpone=False)  # a chmod after a copy is no reason to wait
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self._remove(src)
            if src in self._watches:
                self._lost(src)
        elif isinstance(event, (FileMovedEvent, DirMovedEvent)):
            self._move(src, os.fsdecode(event.dest_path), event.is_directory)
        elif isinstance(event, DirCreatedEvent) and not os.path.islink(src):
            self._scan_folder(src)  # a folder moved in arrives as one event for all its files
            self._made_at_limit(src)
        elif isinstance(event, DirAttribEvent) and not os.path.islink(src):
            # a chmod of a folder: its files failed "permission denied" and stayed failed once it was fixed
            self._scan_folder(src)

    def _made_at_limit(self, folder: str) -> None:
        """A folder made at the inotify limit is not watched (watchdog logs it, and goes on): what came into it
        later was never indexed, even once the limit was raised. Its watch folder is scanned until it can be
        watched whole."""
        with self._lock:  # the outermost watch folder: the one whose observer reports what happens here
            roots = [up for up in _upwards(folder) if up in self._watches]
            root = roots[-1] if roots else None
            if root is None or root in self._over_limit:
                return
        # (a watch of its own, the one check asks for, is refused at the last free watch, or with inotify's
        # instances used up, though watchdog's instance watches the folder: so the kernel is asked too)
        if lost_watches.at_watch_limit(folder) and not lost_watches.watched(folder):
            self.at_limit(root, observed=True)

    def _mark(self, path: str, due: float, postpone: bool = True) -> None:
        if is_audio_path(path) and self._storable(path):
            with self._lock:
                if not self._watched(path):  # an event that was on its way when the folder was unwatched
                    return
                if postpone or path not in self._buffer:
                    self._buffer[path] = due
                    self._events.set()

    def _remove(self, path: str) -> None:
        if not path or not storable(path):  # nothing, or a name never in the index
            return
        with self._lock:
            self.flush()  # (an event of it still buffered would bring it back)
        self._remove_all([path])

    def _move(self, src: str, dst: str, is_dir: bool) -> None:
        if is_dir and not (src and dst):  # into or out of the watched folders: see _check_watched
            with self._lock:
                root = next((w for w in self._watches if within(src or dst, [w])), None)
                if root is not None:
                    self._moved_across[root] = time.monotonic()
        if dst and (not self._storable(dst) or in_junk_folder(dst if is_dir else os.path.dirname(dst))):
            dst = ""  # a name the index cannot hold, or into the trash: as good as moved away
        if src and not storable(src):
            src = ""  # was never in the index: as good as moved in
        if not dst:  # moved out of the watched folders: gone, as far as the library is concerned
            if src:  # "" would name every path there is
                self._remove(src)
            return
        if not is_dir and _links_to_folder(dst):  # `ln -sfn`, or a link moved in: inotify calls it a file
            self._linked(dst)
            return
        if not src:  # moved in from outside the watched folders: a rename is atomic, the file is complete
            if is_dir and not os.path.islink(dst):
                self._scan_folder(dst)
            else:
                self._mark(dst, time.time())
            return
        with self._lock:
            self.flush()
            waited = is_dir and self._waits(src)  # renamed before its scan: its files are not in the index yet
            moved = self.index.move(src, dst) if is_dir or is_audio_path(dst) else []
            if not is_dir and not moved:
                # unknown under its old name: a downloader's .part file, or a file staged elsewhere
                self._mark(dst, time.time())
            if not is_dir and not is_audio_path(dst):
                self._remove(src)
        # (a front end following events heard nothing of a rename, and later of a removal of a path new to it)
        if moved:
            self._on_moved(moved)
        if _exchanged(src, dst):  # each heard as a move onto the other, which gave one the other's rows and
            # dropped the second: both read again (by their content: no audio decoded again)
            if is_dir:
                self._scan_folder(src)
                self._scan_folder(dst)
            elif is_audio_path(src) and is_audio_path(dst):
                self._mark(src, time.time())
                self._mark(dst, time.time())
            return
        # A folder's files moved with their rows, but not all of them need have one: a folder renamed before
        # its scan, or a file written just before (read under its old path, it "vanished" and its row was
        # dropped before this move was heard: a pack unzipped and renamed at once lost files). Looked for by
        # name, without a stat: a scan would hash again every file renamed since it was read (its ctime).
        if is_dir and not os.path.islink(dst):
            self._scan_folder(dst, check=not waited)

    def flush(self) -> None:
        with self._lock:
            if not self._buffer:
                return
            items = list(self._buffer.items())
            self.index.mark_pending(items)  # raises with the events still buffered: the next flush retries
            self._buffer.clear()  # under the lock: nothing was buffered meanwhile
        self._on_pending()

    def _flush_loop(self) -> None:
        """Asleep until an event is buffered or the 5-s check of the watch folders is due (it woke every 20 ms,
        which a laptop's battery pays for); then 20 ms more, so that a burst of events is one write. While
        writing fails (a locked, full or deleted index), ever less often, up to every 5 s, and each distinct
        error logged once: it was 50 tracebacks a second."""
        last_check = last_scan = last_links = time.monotonic()
        said_missing: set[str] = set()
        failures, said = 0, ""
        while True:
            if not failures:  # (a failed write keeps its events buffered: retried after the pause below)
                self._events.wait(max(0.0, CHECK_S - (time.monotonic() - last_check)))
            if self._stop.wait(min(5.0, 0.02 * 2**failures)):
                return
            self._events.clear()  # before the flush: an event buffered during it wakes the next round
            try:
                self.flush()
                if time.monotonic() - last_check >= CHECK_S:
                    last_check = time.monotonic()
                    with self._lock:
                        unheard, self._unheard = self._unheard, set()
                    for folder in unheard:
                        self.rescan(folder)
                    for folder in list(self._watches):
                        if _identity(folder) != self._identity.get(folder) or os.path.islink(folder):
                            self._lost(folder)  # renamed or moved away (maybe another, or a link, in its place):
                            # inotify is silent; a link to the very folder moved has its identity
                    with self._lock:
                        retried = sorted(self._missing)
                    for folder in retried:
                        try:
                            self.watch(folder, missing=True)
                        except OSError as e:  # (another error: said once, when it was found missing)
                            if e.errno in AT_WATCH_LIMIT:  # back, but at the inotify limit
                                self.at_limit(folder, why=e.errno)
                    self._retry_awaited()
                    self._list_again()
                    self._check_watched()
                    self._poll_over_limit()
                    self._scan_folders_in_turn()  # (its thread could not be started at the time)
                    if (missing := self.missing) != said_missing:  # gone or back: Status.missing_watches
                        said_missing = missing  # changed, and a front end that follows events is told
                        self._on_pending()
                    if time.monotonic() - last_links >= LINKS_S:
                        last_links = time.monotonic()
                        self._readable_again()
                    if self.rescan_s and time.monotonic() - last_scan > self.rescan_s and not self.scans_running:
                        last_scan = time.monotonic()
                        for folder in set(self._watches) - self._inner:
                            self.rescan(folder)
                failures, said = 0, ""
                if self.unwritable:
                    self.unwritable = ""
                    self._on_pending()
            except sqlite3.OperationalError as e:  # (a full disk): said in status, and once in the log
                failures = min(failures + 1, 8)
                if str(e) != self.unwritable:
                    self.unwritable = str(e)
                    log.warning("could not write changes in the watch folders to the index (%s); will retry", e)
                    self._on_pending()
            except Exception as e:
                failures = min(failures + 1, 8)
                if repr(e) != said:
                    said = repr(e)
                    log.exception("could not write watch events to the index; will retry")

    # -- reconcile -----------------------------------------------------------------------------------
    def rescan(self, folder: str) -> None:
        """Scan a watch folder again, once at a time: an overflow says so for every watch at once, and
        overflows come in bursts; one more scan after the running one covers every change meanwhile."""
        with self._lock:
            if folder in self._rescanning:
                self._rescan_again.add(folder)
                return
            self._rescanning.add(folder)

        def scan_until_settled() -> None:
            try:
                while True:
                    self._scan_safely(folder)
                    with self._lock:
                        if folder not in self._rescan_again:
                            self._rescanning.discard(folder)
                            return
                        self._rescan_again.discard(folder)
                        self._scans_started(1)  # (the next _scan_safely takes it off)
            finally:
                with self._lock:
                    self._rescanning.discard(folder)

        self._scan_thread(scan_until_settled, "rescan", folder, rescanning=True)

    def _scan_in_background(self, folder: str) -> None:
        if in_junk_folder(folder) or not self._storable(folder):
            return
        self._scan_thread(lambda: self._scan_safely(folder), "scan", folder)

    def _scan_thread(self, scan: Callable[[], None], name: str, folder: str, rescanning: bool = False) -> None:
        """A scan counted as running (Status.scanning) until it ends. One whose thread cannot start (a limit
        on threads) waits with the new folders, whose scans are started again at every check until one can
        be: counted as running, it kept `status --wait` waiting and the periodic rescans off for good, and a
        watch folder back from a drive unplugged was watched but never scanned."""
        with self._lock:
            self._scans_started(1)
        try:
            self._thread(scan, name)
        except RuntimeError as e:
            with self._lock:
                self._scans_done(1)
                if rescanning:
                    self._rescanning.discard(folder)
            log.warning("could not start a scan of %s (%s); trying again soon", folder, e)
            self._scan_folder(folder)

    def _scan_folder(self, folder: str, check: bool = False) -> None:
        """A folder made, moved in or opened up (chmod) under a watch, scanned in turn with the others of its
        watch folder by one thread: with a thread each, unpacking a pack of 3,000 folders started 3,000
        threads at once, and a folder whose thread could not start (a limit on threads) had its files missed
        until the next start. One inside a folder still waiting its turn is left to that one's scan. `check`:
        a folder renamed, scanned only if it holds an audio file the index has no row for, looked at in its
        turn (a walk of a big pack on the observer's thread held up every event meanwhile)."""
        if in_junk_folder(folder) or not self._storable(folder):
            return
        with self._lock:
            root = next((up for up in _upwards(folder) if up in self._watches), None)
            if root is None:  # unwatched meanwhile
                return
            waiting = self._folders.setdefault(root, {})
            if folder in waiting:
                waiting[folder] = check and waiting[folder]  # (a scan asked is more than a check)
                return
            if any(up in waiting and not waiting[up] for up in _upwards(folder)):
                return
            waiting[folder] = check
            self._scans_started(1)
        self._scan_folders_in_turn()

    def _waits(self, folder: str) -> bool:
        """(With the lock held.) Whether the folder, or one above it, waits for its scan."""
        return any(up in waiting for waiting in self._folders.values() for up in _upwards(folder))

    def _scan_folders_in_turn(self) -> None:
        with self._lock:
            idle = [root for root, waiting in self._folders.items() if waiting and root not in self._folders_scanning]
            self._folders_scanning.update(idle)
        for root in idle:
            try:
                self._thread(functools.partial(self._scan_folders, root), "scan-folders")
            except RuntimeError as e:  # can't start new thread: the flusher's next check tries again
                with self._lock:
                    self._folders_scanning.discard(root)
                log.warning("could not start a scan of new folders under %s (%s); trying again soon", root, e)

    def _scan_folders(self, root: str) -> None:
        while True:
            with self._lock:
                waiting = self._folders.get(root, {})
                if not waiting or self._stop.is_set():  # (stopping: the next start's scan finds them)
                    self._scans_done(len(waiting))
                    self._folders.pop(root, None)
                    self._folders_scanning.discard(root)
                    return
                folder, check = next(iter(waiting.items()))
                del waiting[folder]
            if os.path.isdir(folder) and not (check and self._all_known(folder)):
                self._scan_safely(folder)
            else:  # moved away or deleted while it waited (its move or deletion was handled as such), or a
                # renamed one whose files the index all has
                with self._lock:
                    self._scans_done(1)

    def _all_known(self, folder: str) -> bool:
        """Whether the index has a row for every audio file under folder (by name: no stat, no hash) and every
        folder in it could be listed (the rows of one that cannot are kept, its files unknown)."""
        unlisted: list[OSError] = []
        try:
            for dirpath, dirs, names in os.walk(folder, onerror=unlisted.append):
                dirs[:] = [d for d in dirs if not is_junk_folder(d) and storable(os.path.join(dirpath, d))]  # as scan()
                here = {os.path.join(dirpath, n) for n in names if is_audio_path(n)}
                if {f for f in here if storable(f)} - self.index.files_in_dir(dirpath).keys():
                    return False
        except Exception as e:  # (a locked index): scanned, rather than its thread ended and scans_running kept
            log.warning("could not check %s (%s): scanning it", folder, e)
            return False
        return not unlisted

    def _thread(self, work: Callable[[], None], name: str) -> None:
        """A scan's own thread, whose index connection is closed when it ends: a copy that made 500 folders
        left 500 threads' connections open (SQLite files, until the garbage collector came by), and at a
        limit of 256 open files (macOS's) thousands of files failed with "Too many open files"."""

        def run() -> None:
            try:
                work()
            finally:
                self.index.close()  # this thread's

        threading.Thread(target=run, name=name, daemon=True).start()

    def _scan_safely(self, folder: str) -> None:
        try:
            self.scan(folder)
        except sqlite3.OperationalError as e:  # (locked, a full disk): scanned again at a later check
            log.warning("scan of %s could not write the index (%s): it is scanned again in a moment", folder, e)
            with self._lock:
                self._unheard.add(folder)
        except Exception:
            log.exception("scan of %s failed", folder)
        finally:
            with self._lock:
                self._scans_done(1)

    def _scans_started(self, n: int) -> None:
        """(With the lock held.) The first scan's start, as the last one's end, is said to followers: a count
        that went 1 → 0 → 1 (a rescan asked again, a scan whose thread could not start) said only its 0."""
        self.scans_running += n
        if n and self.scans_running == n:
            self._on_pending()

    def _scans_done(self, n: int) -> None:
        """(With the lock held.) The status counts the scans running (`Status.scanning`): the last one's end
        changes it, though it found nothing (`vibrary status --wait` waits for it; followers are told)."""
        self.scans_running -= n
        if n and not self.scans_running:
            self._on_pending()

    def scan(self, folder: str) -> None:
        """Bring the index in line with what is on disk under folder, one directory at a time (memory
        stays flat on a library of millions of files). Each directory's index rows are read *before* it
        is listed, so a file that arrives meanwhile is never mistaken for one that vanished. Symbolic
        links to folders are not followed, so a link loop cannot trap the scan; they are noted, to be reported."""
        visited: set[str] = set()
        unlisted: list[str] = []  # by this scan: what is under them is not known to be gone
        stable = _stable_inodes()
        started = time.monotonic()
        stack = [folder]
        while stack:
            directory = stack.pop()
            with self._lock:
                if not self._watched(directory):
                    return  # unwatched meanwhile
            known = self.index.files_in_dir(directory)
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):  # gone since: not visited, its rows go below
                continue
            except OSError as e:
                unlisted.append(directory)
                with self._lock:
                    self._unlisted[directory] = e.strerror or str(e)
                log.warning("cannot list %s (%s); its index entries are kept", directory, e.strerror)
                continue
            if directory == folder and self.gone(folder):  # its files are not gone: their drive is
                log.warning("watch folder %s: its drive is not mounted; its index entries are kept", folder)
                return
            visited.add(directory)
            now = time.time()
            changed: list[tuple[str, float, int, int, int]] = []
            first_inodes: list[tuple[int, str]] = []  # rows of an index from before inodes were kept
            for entry in entries:
                if not self._storable(entry.path):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if not is_junk_folder(entry.name):
                        stack.append(entry.path)
                    continue
                if entry.is_symlink() and _links_to_folder(entry.path):
                    self._linked(entry.path)
                    continue
                if not is_audio_path(entry.name):
                    continue
                try:
                    st = os.stat(entry.path)
                    stamp = changed_at(st)
                    current, inode = (st.st_size, stamp), st.st_ino if stable(st.st_dev) else -1
                    fresh = now - stamp / 1e9 > self.settle_s
                except FileNotFoundError:
                    if not os.path.islink(entry.path):
                        continue  # gone since the listing; its own event says where to
                    current, inode, fresh = (-1, -1), -1, True  # its target gone: read, it says so (failed)
                except OSError:
                    current, inode, fresh = (-1, -1), -1, True  # the worker will record why it cannot be read
                size, mtime_ns, known_inode, state = known.pop(entry.path, (None, None, None, None))
                # a name given another file while the daemon was down (renumbered one-shots of one length,
                # unpacked with one mtime) keeps size and mtime: the inode tells (-1: not known, or made up)
                other_file = -1 not in (known_inode, inode) and known_inode != inode
                if state != "pending" and ((size, mtime_ns) != current or other_file):
                    changed.append((entry.path, now if fresh else now + self.settle_s, *current, inode))
                elif state == "indexed" and known_inode == -1 and inode != -1:
                    first_inodes.append((inode, entry.path))
            if first_inodes:
                self.index.set_inodes(first_inodes)
            if changed:
                with self._lock:
                    if not self._watched(directory):
                        return
                    self.index.mark_found(changed)
                self._on_pending()
            vanished = [path for path in known if not os.path.exists(path)]  # not back since the listing (a
            if vanished:  # move out and back in arrives as two events, the first up to half a second late)
                self._remove_all(vanished)
        if self.gone(folder):  # its drive went during the scan: its files are not gone
            return
        for gone in set(self.index.dirs_under(folder)) - visited:
            if within(gone, unlisted):  # a pack unpacked by root with mode 700: its files are kept, said in status
                continue
            # a link is never walked, so never kept; nor is what an older version indexed in junk (__MACOSX, a trash)
            if _not_a_folder(gone) or os.path.islink(gone) or in_junk_folder(gone):
                self._remove_all(list(self.index.files_in_dir(gone)))
        with self._lock:
            if (polled := self._over_limit.get(folder)) is not None:  # how often it may be scanned for what
                polled.scan_took = time.monotonic() - started  # no event says

    def _remove_all(self, paths: list[str]) -> None:
        with self._lock:
            removed = self.index.remove_paths(paths)
        if removed:
            self._on_removed(removed)


class _Outermost(FileSystemEventHandler):
    """The events of one watch folder's observer, handed on unless the folder is inside another one observed,
    whose observer reports them too."""

    def __init__(self, watcher: Watcher, folder: str) -> None:
        self.watcher, self.folder = watcher, folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self.folder not in self.watcher._inner:
            self.watcher.on_any_event(event)


def _upwards(path: str) -> Iterator[str]:
    """The path, then each folder above it."""
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _loop(link: str, target: str) -> bool:
    """A link to a folder it is in (`up -> ..`): there is nothing more to index there."""
    return link.startswith(under(target)[0])


def _not_a_folder(path: str) -> bool:
    """Whether path is known to be no folder now: gone, or a file in its place. A folder that cannot be looked
    at (permission denied on the way, a network drive's timeout) is not: os.path.isdir says False for it too,
    and its files were forgotten."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def _deep_folder_there(path: str) -> bool:
    """Whether a folder whose path is too long to name at once (past PATH_MAX) is there, walked down to one
    folder at a time (O_PATH: a folder on the way that may be searched but not read is no gap). Only a name
    not there is gone; another error (no permission, a drive's) leaves it as it was."""
    flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY
    fd = os.open("/", flags)
    try:
        for part in filter(None, path.split(os.sep)):
            inner = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = inner
        return True
    except OSError as e:
        return e.errno not in (errno.ENOENT, errno.ENOTDIR)
    finally:
        os.close(fd)


def _exchanged(src: str, dst: str) -> bool:
    """Whether a move left another file at its source: the two names exchanged (`mv --exchange`). Not a
    rename in case only on a drive that ignores case (exFAT, vfat), where the old spelling opens the same
    file: taken for an exchange, the file was indexed twice."""
    try:
        return not os.path.samestat(os.lstat(src), os.lstat(dst))
    except OSError:  # (the source gone: a rename, as nearly always)
        return False


def _links_to_folder(path: str) -> bool:
    return os.path.islink(path) and os.path.isdir(path)


MOUNTINFO = "/proc/self/mountinfo"
MADE_UP_INODES = {"vfat", "msdos", "exfat", "fat", "umsdos"}  # numbered at each mount: no way to know a file


UNNAMED_MOST = 1000  # names not UTF-8 remembered (each status checks they are still there)
AT_WATCH_LIMIT = (errno.ENOSPC, errno.EMFILE)  # inotify's watches, or its instances, used up (the user's limits)
AT_LIMIT_SAID = {  # (the daemon's watches share one instance: EMFILE is the lack of that one)
    errno.ENOSPC: "the inotify watches limit (fs.inotify.max_user_watches) is reached",
    errno.EMFILE: "no inotify instance could be made (fs.inotify.max_user_instances, or the open files limit, is"
    " reached)",
}
CHECK_S = 5.0  # how often watch folders are checked for a move, a comeback or a due rescan
# a watch folder not watched whole at the inotify limit is scanned every LIMIT_POLL_S, or less often when its
# scan is long: at most once per LIMIT_POLL_SCANS times its last scan's length (a twentieth of a core)
LIMIT_POLL_S = 60.0
WHOLE_NOW = "the inotify limit allows more watches now: %s is watched whole"
LIMIT_POLL_SCANS = 20
LIMIT_RETRY_MOST_S = 3600.0  # tried whole at twice the interval after each failure, up to this
LINKS_S = 60.0  # how often the targets of broken links, and unreadable files, are looked at again


@dataclass
class _AtLimit:
    """A watch folder that inotify does not watch whole, for its limit."""

    scan_at: float  # when it is next scanned for what no event says
    try_at: float  # when it is next tried whole, and how often
    try_every: float = LIMIT_POLL_S
    scan_took: float = 0.0  # how long its last scan took


def _readable(path: str) -> bool:
    """Whether it opens now: os.access said yes where the open still failed (a share's ACLs behind its mode
    bits, an AppArmor rule), and the file was read and failed again every minute."""
    try:
        check_readable(path)
    except DecodeError:
        return False
    return True


def _stable_inodes() -> Callable[[int], bool]:
    """Whether a device's inode numbers name its files across mounts. Linux's FAT and exFAT number them
    from a counter as files are looked up, so after a reboot a drive's files swap numbers: trusting them
    would read a whole sample drive again at every start. Elsewhere (and without /proc) they are trusted."""
    made_up: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path(MOUNTINFO).read_text().splitlines():
            fields = line.split()
            if "-" in fields and fields[fields.index("-") + 1] in MADE_UP_INODES:
                major, minor = fields[2].split(":")
                made_up.add(os.makedev(int(major), int(minor)))
    return lambda dev: dev not in made_up


def _identity(folder: str) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _empty(path: str) -> bool:
    """An empty file (a named pipe, which no writer closes, is no file: it was left pending for WRITER_OPEN_S)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _reports_closes(observer: BaseObserver) -> bool:
    """Whether a writer's close is an event here (inotify's IN_CLOSE_WRITE): macOS's and Windows' observers
    have none, and a file written to there waits settle_s, not for a close that never comes."""
    return type(observer).__name__ == "InotifyObserver"


def _observer() -> BaseObserver:
    """inotify can report a file moved in from outside as a move (a finished file), not as a creation."""
    try:
        return Observer(generate_full_events=True)  # type: ignore[call-arg]
    except TypeError:  # macOS and Windows observers have no such option
        return Observer()
