"""The resident daemon: one path for every file, watch → decode → spectrogram → infer → index → API.

The index is the work queue: the watcher writes pending rows, a feeder thread hands due rows to the
pipeline, and the pipeline's sink writes tags back in batches. Anything that changes which models are
active (this daemon's API, or `vibrary models` run against the same home) is noticed within a second,
and files missing the new model's tags are re-queued; their spectrograms come from the cache.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import psutil

from . import atomic, config, dataset, features, pidlock, registry, training
from .cache import FEATURES_VERSION, SpectrogramCache
from .decode import UNSUPPORTED_ENCODING, VANISHED, why_not_read
from .events import (
    FILE_FAILED,
    FILE_REMOVED,
    FILE_TAGGED,
    MODEL_CHANGED,
    MODEL_INSTALLED,
    TRAINING_FINISHED,
    TRAINING_PROGRESS,
    Event,
    EventBus,
    StatusPublisher,
)
from .folders import FOLDER_UNREAD, UNNAMED, audio_files_under, readable_name, storable, warn
from .index import (
    NO_SUCH_PATH,
    NOT_INDEXED,
    NOT_STORED,
    WATCH_GONE,
    FileTags,
    Index,
    ModelRow,
    Result,
    damaged,
    damaged_said,
    within,
)
from .infer import Model, ModelError
from .pipeline import ActiveModel, Pipeline
from .spectrogram import SpectrogramParams, as_fed
from .watch import AT_WATCH_LIMIT, Watcher

log = logging.getLogger(__name__)


try:
    VERSION = importlib.metadata.version("vibrary")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"


class AlreadyRunning(RuntimeError):
    pass


class TrainingBusy(dataset.Busy):
    """A training job is already running: one at a time, a second would only halve the speed of both."""


CACHE_DAMAGED = (  # (the path, the error)
    "the spectrogram cache %s is damaged (%s): delete it while the daemon is stopped; its spectrograms are made"
    " again as files are read"
)
# why a daemon cannot go on (Daemon.ended_why)
HOME_GONE, INDEX_GONE, INDEX_DAMAGED = "its home is gone", "its index is gone", "its index is damaged"
SOCKET_GONE = "its socket is gone"  # (found by whoever runs it: clients/daemon_commands.py)
FORGET_RETRY_S = 60.0  # an abandoned Tag call's files that could not be dropped are tried again this much later
AWAY_RECOUNT_S = 60.0  # the files under missing watch folders are counted anew at least this often
UNNAMED_SHOWN = 100  # names not UTF-8 in a status (unnamed_count has them all)
ON_DEMAND_SWEEP_S = 60.0  # how often files tagged outside the watches are looked for (none watches them)
STALL_RETRY_S = 30.0  # how often a daemon whose index cannot be written tries again
UNUSED_S = 3600.0  # how often contents no file has are looked for, when idle
UNUSED_FIRST_S = 300.0  # the first time, this long after the daemon's start
UNUSED_KEEP_S = 30 * 86400.0  # how long one is kept with its tags: a drive unplugged for weeks, plugged in again
FORGET_MAX = 50_000  # contents forgotten at one time, at most (about 3 s): the feeder waits meanwhile
# How often the due files under watch folders not there now are parked (Index.park): a re-tag queues them again.
PARK_AGAIN_S = 30.0
FOLLOW_WAIT_S = 10.0  # how long a status waits for a change of the active models being followed (load, re-queue)
NO_MODEL = "no usable active model: `vibrary models list` lists them, `vibrary models activate NAME` picks one"
NO_MODEL_WAITS = f"{NO_MODEL}; files wait for one"
NO_MODEL_NOW = f"{NO_MODEL}; files added wait for one"  # (none waits now: "files wait" sent people looking)


def _size_and_time(path: str) -> tuple[int, int]:
    """As the index keeps them, to tell a file read as it is now; -1, -1 when it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, features.changed_at(st)


def load_models(index: Index, rows: Sequence | None = None) -> list[ActiveModel]:
    """onnxruntime sessions for the given model rows (default: those the daemon tags with); a model file that has
    gone bad is logged and skipped rather than stopping every other model. One thread each: the
    pipeline's workers already keep every core busy."""
    loaded = []
    for row in rows if rows is not None else index.tagging_models():
        try:
            loaded.append(ActiveModel(row.id, row.ref, Model(row.path, threads=1)))
        except ModelError as e:
            log.error("model %s cannot be used: %s", row.ref, e)
    return loaded


class Daemon:
    def __init__(self, home_dir: Path, settings: config.Settings | None = None) -> None:
        self.home = home_dir
        self.settings = settings or config.Settings.load(home_dir)
        self._lock_file = _lock_home(home_dir)
        # before any thread is made: Linux keeps a priority per thread, and a thread takes its maker's only
        # when it is made (lowered in start(), the workers and onnxruntime's threads ran at full priority)
        _lower_priority(self.settings.nice)
        self.started = time.time()
        self.index = Index(config.index_path(home_dir))
        self._index_inode = os.stat(self.index.path).st_ino  # (_stop_if_home_gone: one deleted or replaced)
        registry.ensure_models(self.index, home_dir)
        self.cache = SpectrogramCache(config.cache_path(home_dir), self.settings.cache_max_mb << 20)
        self.events = EventBus()
        self._active = {m.id: m.ref for m in self.index.tagging_models()}  # as followed: loaded, files re-queued
        self._installed = {m.id: m.ref for m in self.index.models()}  # every version: its events (_follow_models)
        self.pipeline = Pipeline(
            load_models(self.index),
            self._store,
            workers=self.settings.worker_count,
            batch_size=self.settings.batch_size,
            queue_size=self.settings.queue_size,
            store_min_score=self.settings.store_min_score,
            cache=self.cache,
            models_done=self.index.models_done,
            on_failing=self._model_failing,
        )
        self.pipeline.keep_aside(self._failing_before())
        self._unloaded = self._unloaded_files(self.index.tagging_models())
        self.watcher = Watcher(
            self.index,
            self.settings.settle_s,
            self._wake_feeder,
            self._removed,
            self.settings.rescan_hours * 3600,
            self._moved,
        )
        self._wake = threading.Event()
        self._follow_now = threading.Event()  # a status waits for a change of the active models: follow it now
        self._follows_begun = self._follows_ended = 0  # follows of the active models, begun and ended, however
        self._stop = threading.Event()
        self._in_flight: set[int] = set()
        self._held = False  # nothing to read but files under watch folders not there now (_note_held)
        # (the missing watch folders, when counted, their files): a status counts them once per change of the
        # folders, and a minute at most; nothing is read there meanwhile (500,000 files: 28 ms each status)
        self._away: tuple[list[str], float, int] = ([], 0.0, 0)
        self._in_flight_lock = threading.Lock()
        self._park_refused = ""  # why the index last refused to park files (Daemon._park), said once
        self._feeder = threading.Thread(target=self._feed, name="feeder", daemon=True)
        self._sweeper = threading.Thread(target=self._sweep_on_demand, name="on-demand-sweep", daemon=True)
        self._analyzed_at, self._analyzed_rows = -1e9, 0
        self._hand_over_error = ""  # the index's last refusal of a hand-over, said once
        # the first look UNUSED_FIRST_S after a start (once its scan is done: _forget_unused_contents waits for it);
        # an hour after each start, a daemon restarted more often (a laptop's, at every login) never looked
        self._unused_at = time.monotonic() - UNUSED_S + UNUSED_FIRST_S
        self._models_lock = threading.Lock()
        self._watches_lock = threading.Lock()  # the watcher and the index change together (add_watch)
        self._paused = threading.Event()
        self.ended = threading.Event()  # it cannot go on (its home deleted): whoever runs it stops it
        self.ended_why = ""  # why: HOME_GONE, INDEX_GONE, INDEX_DAMAGED
        self.stalled = ""  # why the index cannot be written now (a full disk), while files wait for it
        self._stalled_until = 0.0
        if config.paused_path(home_dir).exists():
            self._paused.set()
        self.status_events = StatusPublisher(self.events, self.status)
        self.training: training.Background | None = None
        self._training_lock = threading.Lock()
        self._datasets_lock = threading.Lock()
        self._dataset_changing = ""  # the dataset being built, edited or deleted now (under _training_lock)
        self._tag_lock = threading.Lock()
        self._tag_waits: Counter[str] = Counter()  # how many Tag calls wait for each file
        self._tag_new: set[str] = set()  # those of them that a Tag call put in the index: dropped if nobody waits
        self._to_forget: set[str] = set()  # those an abandoned call left, for the feeder to drop (_forget_unwatched)
        self._forget_from = 0.0  # (monotonic) a drop that failed is tried again a minute later, not every round

    def start(self) -> None:
        self._forget_install_leftovers()
        upgrade(self.index)
        self._forget_on_demand_leftovers()
        self.index.requeue_missing(self._loaded())
        self.watcher.start()
        self._feeder.start()
        self._sweeper.start()
        threading.Thread(target=self._read_late_starts, name="late-starts", daemon=True).start()
        self.status_events.start()
        self._resume_training()
        log.info("daemon started on %s with models %s", self.home, models_said(self.status()))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.watcher.stop()
        self._feeder.join()
        self._sweeper.join(timeout=5.0)  # (a network drive that hangs may hold it: it is a daemon thread)
        if self.training is not None and not self.training.finished:
            self.training.stop(timeout=15.0)  # its own trainer's job is suspended within 10 s
        self.status_events.stop()
        self.pipeline.close()
        self.index.close()
        log.info("daemon stopped")
        self._lock_file.close()

    # -- the feeder: pending rows → pipeline ---------------------------------------------------------
    def _stop_if_home_gone(self) -> None:
        """`rm -rf` of the home (a reset) left this daemon running on a deleted index, out of reach of every
        command (its socket gone with it), beside the next one `vibrary daemon` started: it stops, as a
        `vibrary daemon stop` would have stopped it."""
        try:  # its lock file unlinked: a home recreated since (`rm -rf` then `vibrary daemon`) is not its own
            gone = os.fstat(self._lock_file.fileno()).st_nlink == 0
        except OSError:  # (closed: stopping anyway)
            return
        if gone and not self.ended.is_set():
            log.error("the home %s is gone (deleted?): the daemon stops", self.home)
            self._end(HOME_GONE)
        try:  # the index deleted alone (or another put in its place): "no such table: files" at every write,
            # searches answered from the deleted file, and its files waited for good
            gone = os.stat(self.index.path).st_ino != self._index_inode
        except FileNotFoundError:
            gone = True
        except OSError:
            return
        if gone and not self.ended.is_set():
            log.error("the index %s is gone (deleted, or another in its place): the daemon stops", self.index.path)
            self._end(INDEX_GONE)

    def _end(self, why: str) -> None:
        self.ended_why = why
        self.ended.set()

    def _wake_feeder(self) -> None:
        self._wake.set()
        self.status_events.changed()

    def _feed(self) -> None:
        last_model_check = 0.0
        parked: list[str] = []  # the missing watch folders whose files were parked last (Index.park), and when
        parked_at = 0.0
        while not self._stop.is_set():
            try:
                if self._to_forget and time.monotonic() >= self._forget_from:
                    self._forget_unwatched()
                if self._follow_now.is_set() or time.monotonic() - last_model_check > 1.0:
                    self._follow_now.clear()
                    last_model_check = time.monotonic()
                    self._follow_models()
                    self._stop_if_home_gone()
                self._wake.clear()
                with self._in_flight_lock:
                    skip = set(self._in_flight)
                room = self.settings.queue_size - len(skip)
                if self.stalled:  # one file tries whether the index can be written again, not a queue's worth
                    room = min(room, 1 - len(skip))
                # paused, the index cannot be written, or no model to tag with: the watcher still records
                # changes; nothing is read (with no model, files were stored as read with no tags, and said
                # to be silent)
                paused = self._paused.is_set() or time.monotonic() < self._stalled_until or not self.pipeline.models
                now = time.time()
                hidden = sorted(self.watcher.missing)
                if hidden != parked or (hidden and time.monotonic() > parked_at + PARK_AGAIN_S):  # (a re-tag since)
                    parked, parked_at = self._park(hidden, parked, now), time.monotonic()
                jobs = self.index.due_jobs(room, skip, now, hidden) if room > 0 and not paused else []
                # none due but under missing watches, and none to come due elsewhere (a file settling or to be read
                # again: it moves in its time): nothing moves until a drive is back
                held = bool(hidden) and not paused and room > 0 and not jobs and not self._in_flight
                self._note_held(held and not self.index.any_pending(hidden, due_after=now))
                for job in jobs:
                    with self._in_flight_lock:
                        self._in_flight.add(job.id)
                    self.pipeline.submit(job)
                if jobs and len(jobs) == room:
                    continue
                if not jobs and not self._in_flight:
                    self._hand_over()
                    self._refresh_statistics()
                    self._forget_unused_contents()
                    if self.stalled and time.monotonic() >= self._stalled_until and not self.index.due_count(now):
                        self.stalled = ""  # nothing waits to be written any more (its files removed, say)
                        self.status_events.changed()
                next_due = self.index.next_due(after=now)  # due ones are in flight or wait for room: _store wakes us
                wait = 1.0 if next_due is None or paused else min(1.0, max(0.005, next_due - time.time()))
                self._wake.wait(wait)
            except sqlite3.DatabaseError as e:
                if damaged(e):  # as it ran: a traceback a second, every call failed raw (the cache's: _forget_unused)
                    log.error("%s; the daemon stops", damaged_said(self.index.path, e))
                    self._end(INDEX_DAMAGED)
                    return
                log.exception("feeder error; retrying")
                self._stop.wait(1.0)
            except Exception:
                log.exception("feeder error; retrying")
                self._stop.wait(1.0)

    def _park(self, hidden: list[str], parked: list[str], now: float) -> list[str]:
        """Park the due files under the watch folders not there now (Index.park), and make those of the folders
        parked before and there again due now, however they came back (at the inotify limit, a mount between two
        checks: watch() saw no return). The folders parked; the same when the index refused (a full disk: the
        feeder walks past them meanwhile, as it did before they were parked; said once)."""
        try:
            for folder in set(parked) - set(hidden):
                self.index.retry_now(folder)
            self.index.park(hidden, now)
        except sqlite3.Error as e:
            if str(e) != self._park_refused:
                log.warning("could not set aside the files under missing watch folders (%s); will retry", e)
            self._park_refused = str(e)
            return parked
        self._park_refused = ""
        return hidden

    def _hand_over(self, wait: bool = True) -> None:
        """A new version that has tagged the library takes over searches from the one before (Index.hand_over):
        when the feeder is idle, and at once when a version is activated (a rollback to a version that has
        tagged every file is instant). Only to a version loaded and tagging, under the models lock: one that could
        not be loaded, or whose files were not re-queued for it yet, has none waiting for it and took over at once.
        Without `wait`, not while a follow holds the lock (loading models: seconds); the follow hands over after."""
        took: list[ModelRow] = []
        try:
            if all(m.serving for m in self.index.active_models()):
                return  # (the common case, every second the feeder is idle: no lock taken)
            if not self._models_lock.acquire(timeout=-1 if wait else 0.1):
                return
            try:  # (followed: its files re-queued, which self._active says once they are)
                tagging = (self._active.keys() & set(self._loaded())) - self.pipeline.failing.keys()
                took = self.index.hand_over(tagging, sorted(self.watcher.missing))
                self._let_go_stand_ins(took)
            finally:
                self._models_lock.release()
        except sqlite3.Error as e:  # (a full or read-only disk: said once, not a traceback a second)
            if str(e) != self._hand_over_error:
                log.warning("searches go on reading the versions they read: the index cannot be written (%s)", e)
            self._hand_over_error = str(e)
        else:
            self._hand_over_error = ""
        for m in took:
            log.info("%s has tagged the library: searches read its tags now", m.ref)
            self.events.publish(Event(MODEL_CHANGED, model=m.ref))
            self.status_events.changed()

    def _let_go_stand_ins(self, took: Sequence[ModelRow]) -> None:
        """(With the models lock held.) The versions that stood in for those that `took` over are no longer run:
        only they, so that a model set aside stays so and nothing is re-queued, as a change of the active models
        would. When other models changed meanwhile (a terminal's `models deactivate`), a follow does it all."""
        now = {m.id: m.ref for m in self.index.tagging_models()}
        names = {m.name for m in took}
        stand_ins = {i for i in self._active.keys() - now.keys() if self._active[i].rpartition("@")[0] in names}
        if now.keys() != self._active.keys() - stand_ins:
            self._follow_now.set()
            return
        if not stand_ins:
            return
        self.pipeline.let_go(stand_ins)
        self._active = now
        self._unloaded = {i: stat for i, stat in self._unloaded.items() if i in now}
        with contextlib.suppress(OSError):
            self._save_failing()

    def _forget_unused_contents(self) -> None:
        """When idle, at most every UNUSED_S: contents no file has are noted so, and those no file has had for
        UNUSED_KEEP_S forgotten with their tags (note_unused says why). Not while files wait to be read (paused,
        stalled, not due yet: a pack moved across drives meanwhile is among them) or folders to be listed,
        but for those under watch folders not there now, whose files wait for them as long as a drive stays
        unplugged."""
        if time.monotonic() - self._unused_at < UNUSED_S:
            return
        self._unused_at = time.monotonic()
        waiting = self.watcher.scans_running or self.index.any_pending(sorted(self.watcher.missing))
        if self._paused.is_set() or self.stalled or waiting:
            return
        now = time.time()
        self.index.note_unused(now)
        if forgotten := self.index.forget_unused(now - UNUSED_KEEP_S, FORGET_MAX):
            try:
                freed = self.cache.forget(forgotten)
            except sqlite3.DatabaseError as e:  # the feeder's one call to the cache: its damage is no index's
                if not damaged(e):  # (it stopped a daemon whose index was whole, advising to move that aside)
                    raise
                log.error(CACHE_DAMAGED, self.cache.path, e)
                return
            log.info(
                "forgot %d contents no file has had for %g days, with their tags and %.1f MB of spectrograms",
                len(forgotten),
                UNUSED_KEEP_S / 86400,
                freed / 1e6,
            )

    def _refresh_statistics(self) -> None:
        """ANALYZE when idle and the index grew by a quarter since the last time (seconds on 1 M files)."""
        if time.monotonic() - self._analyzed_at < 60:
            return
        self._analyzed_at = time.monotonic()
        total = sum(self.index.counts().values())
        if total > 1000 and abs(total - self._analyzed_rows) > self._analyzed_rows // 4:
            self.index.analyze()
            self._analyzed_rows = total

    def _store(self, results: list[Result]) -> None:
        try:  # (whatever fails, the files are no longer in flight: kept so, the feeder skipped them for good)
            away = self._keep_under_gone_watches(results)
            written = self._write(results)
            for folder in away:  # (once stored: a check between would find nothing to read again yet)
                self.watcher.await_back(folder)
        except Exception as e:
            self._stall(e)  # they stay pending, said once in the log (the pipeline logged each batch again)
            self.status_events.changed()
            return
        else:
            if self.stalled:
                log.warning("the index can be written again: indexing goes on")
                self.stalled, self._stalled_until = "", 0.0  # fed at once, not after the rest of the pause
        finally:
            with self._in_flight_lock:
                self._in_flight.difference_update(r.job.id for r in results)
            self._wake.set()
        self._read_other_links([r for r in written if r.links > 1 and r.job.hash and r.hash != r.job.hash])
        for r in written if self.events.subscribers else ():
            if r.vanished:
                self._removed([r.job.path])
            elif r.retry_for or r.unchanged:  # waits to be read again, or read again as it was: no news
                continue
            elif r.error:
                self.events.publish(Event(FILE_FAILED, FileTags(r.job.path, "failed", r.error, [])))
            else:  # from the index: a copy of known content computed nothing, yet has tags
                self.events.publish(Event(FILE_TAGGED, next(self.index.file_tags([r.job.path]))))
        # after the files' own events: a front end that counted a failure by the status, and was looked at,
        # heard of the failure after it and showed it new again
        self.status_events.changed()

    def _read_other_links(self, rewritten: list[Result]) -> None:
        """Files rewritten in place that have hard links (a library deduplicated by `jdupes -L`): the other
        names of each are read again, as no event comes for them (they kept the old tags until a restart)."""
        for r in rewritten:
            try:
                named = self.index.paths_with_inode(r.inode, r.hash or b"")
                same = [p for p in named if p != r.job.path and _same(p, r.job.path)]
                if self.index.mark_pending([(p, time.time()) for p in same]):
                    self._wake.set()
            except (OSError, sqlite3.Error) as e:  # (the next start's scan finds them by their ctime)
                log.warning("could not look for other links of %s: %s", r.job.path, e)

    def _note_held(self, held: bool) -> None:
        """Whether nothing can be read now but files under watch folders not there now: the tray showed
        "indexing: 0 of 900 files" for as long as a drive stayed unplugged."""
        if held != self._held:
            self._held = held
            self.status_events.changed()

    def _keep_under_gone_watches(self, results: list[Result]) -> set[str]:
        """A file not found because its whole watch folder is gone (a drive unplugged while its files
        waited to be read; the watcher sees it within seconds) keeps its row, pending: it is read when the
        drive is back, not hashed again as a new file after being dropped. The watch folders it held files of."""
        gone = [r for r in results if r.vanished]
        if not gone:
            return set()
        away = [w for w in self.index.watches() if self.watcher.gone(w)]
        held = set()
        for r in gone:
            for w in away:
                if within(r.job.path, [w]):
                    r.vanished, r.retry_for, r.error = False, math.inf, WATCH_GONE  # for as long as it takes
                    held.add(w)
        return held

    def _stall(self, e: Exception) -> None:
        """Not even a failure could be stored: the index cannot be written (a full disk, a drive gone
        read-only). The files stay pending, and fed again at once they were decoded again and again, 125 %
        CPU and megabytes of log a minute, while `status` showed nothing: now they wait, status says why."""
        why = f"the index in {self.home} cannot be written ({e}); files wait, tried again every {STALL_RETRY_S:g} s"
        if not self.stalled:
            log.error("%s", why)
        self.stalled, self._stalled_until = why, time.monotonic() + STALL_RETRY_S

    def _unrecorded(self) -> str:
        """Why the changes in the watch folders cannot be written to the index now (a full disk: new files
        were not even counted as waiting, and status said nothing)."""
        if why := self.watcher.unwritable:
            return f"the index in {self.home} cannot be written ({why}); new and changed files wait to be noted"
        return ""

    def _write(self, results: list[Result]) -> list[Result]:
        """A batch in one transaction; when that fails, file by file, and a file whose tags cannot be
        stored is stored as failed with the reason (left pending, it would be fed again at once, forever).
        The index's own trouble (a full or read-only disk, a lock: SQLite's OperationalError) is no file's:
        raised, the files wait (_stall). Stored as failed, they stayed failed once the disk had room again."""
        try:
            return self.index.write_results(results, self.settings.store_min_score)
        except sqlite3.OperationalError:
            raise
        except Exception as e:
            if self.stalled:  # known, and said: not a traceback every 30 s
                log.warning("could not store a batch of %d files (%s)", len(results), e)
            else:
                log.exception("could not store a batch of %d files; storing them one by one", len(results))
        written = []
        for r in results:
            try:
                written += self.index.write_results([r], self.settings.store_min_score)
            except sqlite3.OperationalError:
                raise
            except Exception as e:
                r.error, r.tags = f"{NOT_STORED}{e}", {}
                written += self.index.write_results([r], self.settings.store_min_score)
        return written

    def _forget_install_leftovers(self) -> None:
        """Model files an install cut off left in models/ (a daemon killed during InstallModel or a training's
        install, a `models install` killed while it copied: up to 64 MB each), an hour old or more: nothing
        else removed them (a copy's `.part`, only another install of the same file)."""
        atomic.remove_stale(config.models_dir(self.home), ".upload-*.onnx", ".incoming-*.onnx", "*/*.onnx.*.part")

    def _forget_on_demand_leftovers(self) -> None:
        """Files tagged on demand outside every watch are looked at by nobody once answered: one deleted
        since stayed in searches for good (a DAW offered files it could not load), a file that was no audio
        stayed among the failures. At each start those are forgotten (the others stay, to answer the next
        Tag call from the cache)."""
        leftovers = [p for p, state in self.index.outside_watches() if state == "failed" or _deleted(p)]
        if leftovers:
            self._removed(self.index.remove_paths(leftovers))
            log.info("forgot %d files tagged on demand outside the watches (deleted, or not audio)", len(leftovers))

    def _read_late_starts(self) -> None:
        """The once-step of an index from before files were read from their first sound (forget_late_starts_once),
        in a thread of its own: it reads the whole spectrogram cache (seconds for 2 GB), which must not hold up
        the start; its files are read again, in the background, as a model's re-tag would."""
        try:
            params = []
            for row in self.index.models():
                with contextlib.suppress(ValueError, TypeError):  # (a model's own parameters: it is refused elsewhere)
                    params.append(SpectrogramParams.from_json(row.spectrogram))
            late = self.index.forget_late_starts_once(
                lambda versioned: self.cache.opening_silent(params, FEATURES_VERSION if versioned else 1)
            )
            if late:
                queued = self.index.requeue_missing(self._loaded())
                log.info("reading again %d files whose sound starts late, from their first sound", queued)
                self._wake_feeder()
        except Exception:  # (a locked or full index: the next start tries again)
            log.exception("could not look for files read before their first sound was")

    def _sweep_on_demand(self) -> None:
        """Between starts, once a minute, the files tagged on demand that were deleted (`_deleted`). In a
        thread of its own: a network drive that hangs must not hold up tagging."""
        while not self._stop.wait(ON_DEMAND_SWEEP_S):
            try:
                deleted = [p for p, _ in self.index.outside_watches() if _deleted(p)]
                if deleted:
                    self._removed(self.index.remove_paths(deleted))
            except Exception:  # (a locked or full index: the next minute tries again)
                log.exception("could not forget the deleted files tagged on demand")

    def _removed(self, paths: list[str]) -> None:
        self.status_events.changed()
        if len(paths) > self.events.queue_size:  # more than any reader could hold: said as lost at once
            self.events.lost(len(paths))
            return
        for p in paths:
            self.events.publish(Event(FILE_REMOVED, FileTags(p, "unknown", None, [])))

    def _moved(self, moved: list[tuple[str, str]]) -> None:
        """Files renamed or moved: each new path tagged or failed as it was, saying where from (a tray keeps a
        failure it had seen as seen), then the old one removed (a file moved over another replaced it: the count
        changed, and a broken one moved over a tagged one said nothing of it). A file not read yet is said when it
        is read (FILE_TAGGED of a file with no tags: a pending one had no news)."""
        self.status_events.changed()
        if 2 * len(moved) > self.events.queue_size:
            self.events.lost(2 * len(moved))
            return
        if self.events.subscribers:
            now = {f.path: f for f in self.index.file_tags([new for _, new in moved])}
            for old, new in moved:
                if (found := now.get(new)) is not None and found.state in ("indexed", "failed"):
                    kind = FILE_TAGGED if found.state == "indexed" else FILE_FAILED
                    self.events.publish(Event(kind, found, moved_from=old))
                self.events.publish(Event(FILE_REMOVED, FileTags(old, "unknown", None, [])))

    # -- models --------------------------------------------------------------------------------------
    def _follow_models(self) -> None:
        """Load the active models again when the active set changed, or when a model that could not be
        loaded has its file back (`vibrary models install` of the same file restores it)."""
        with self._models_lock:  # the feeder and the API both call this
            self._follows_begun += 1
            try:
                changed, now, queued = self._follow_models_held()
            finally:
                self._follows_ended = self._follows_begun
        if now is None:
            return
        log.info("active models now %s; %d files re-queued", list(now.values()), queued)
        for ref in changed:  # ListModels and Status say what each is now
            self.events.publish(Event(MODEL_CHANGED, model=ref))
        self._hand_over()
        self._wake.set()
        self.status_events.changed()

    def _follow_models_held(self) -> tuple[list[str], dict[int, str] | None, int]:
        """(With the models lock held.) The models changed, the active set now (None: no change) and the files
        re-queued."""
        self._follow_installs()
        active = self.index.tagging_models()
        now = {m.id: m.ref for m in active}
        if now == self._active and self._unloaded_files(active) == self._unloaded:  # (a file put back)
            return [], None, 0
        was, unloaded = self._active, self._unloaded
        self.pipeline.models = load_models(self.index, active)
        with contextlib.suppress(OSError):  # each model loaded has its chance again: none is aside
            self._save_failing()
        self._unloaded = self._unloaded_files(active)
        # each model activated, deactivated or removed, and each whose file came back or went away
        changed = [ref for i, ref in (was | now).items() if (i in now) != (i in was)]
        changed += [ref for i, ref in now.items() if i in was and (i in unloaded) != (i in self._unloaded)]
        queued = self.index.requeue_missing(self._loaded()) + self.index.requeue_model_failures()
        # once loaded and re-queued (a status meanwhile reads the models from the index, `following`): a
        # re-queue that failed (the index locked, its disk full) is tried again at the next follow
        self._active = now
        return changed, now, queued

    def _follow_installs(self) -> None:
        """MODEL_INSTALLED for each version installed, and MODEL_CHANGED for each removed, however it was
        (InstallModel, a training, `vibrary models install` or `remove` in a terminal): a front end following
        events heard only of activations, and of the installs of a training."""
        installed = {m.id: m.ref for m in self.index.models()}
        if installed == self._installed:
            return
        was, self._installed = self._installed, installed
        for i, ref in installed.items():
            if i not in was:
                self.events.publish(Event(MODEL_INSTALLED, model=ref))
        for i, ref in was.items():
            if i not in installed and i not in self._active:  # (an active one's removal is said as a change)
                self.events.publish(Event(MODEL_CHANGED, model=ref))

    def _model_failing(self, ref: str) -> None:
        """A model set aside for failing on every file it was given (pipeline.FAILS_AFTER): the files it failed
        before are read again, for the other models' tags; it stays aside until the active models change,
        a restart included. (On the batcher's thread: nothing here may fail its batch.)"""
        try:
            self._save_failing()
            queued = self.index.requeue_model_failures()
            log.info("%d files it failed read again for the other models", queued)
        except Exception:  # (a locked or full index: the next change of the active models requeues them)
            log.exception("could not read again the files %s failed", ref)
        self.events.publish(Event(MODEL_CHANGED, model=ref))
        self._wake.set()
        self.status_events.changed()

    def _save_failing(self) -> None:
        active = {m.id: m.ref for m in self.index.tagging_models()}
        config.save_failing(self.home, active, self.pipeline.failing)

    def _failing_before(self) -> dict[int, tuple[str, str]]:
        """The models set aside when the daemon last ran, when the active models are those they were set aside
        among (config.failing)."""
        try:
            return config.failing(self.home, {m.id: m.ref for m in self.index.tagging_models()})
        except ValueError as e:  # a damaged file: each gets its chance again
            log.warning("%s cannot be read (%s): models set aside are tried again", config.failing_path(self.home), e)
            return {}

    def _loaded(self) -> list[int]:
        """The active models that tag: a file lacking tags of one that could not be loaded was sent back to be
        read at every start and every model change, the whole library, and none came; its file back, it is
        loaded, and the files are sent back for it then."""
        return [m.id for m in self.pipeline.models]

    def _unloaded_files(self, active: Sequence[ModelRow]) -> dict[int, tuple[int, int, int] | None]:
        """The active models the pipeline could not load, with their files' stat (None: no file)."""
        loaded = {m.id for m in self.pipeline.models} | self.pipeline.failing.keys()  # (set aside, but loaded)
        return {m.id: _file_stat(m.path) for m in active if m.id not in loaded}

    def models_changed(self) -> None:
        """Called by the API after it changed the active set, so the switch is immediate (a rollback to a version
        that has tagged the library too, whether the feeder followed the change first or not)."""
        self._follow_models()
        self._hand_over()

    def wait_for_models_followed(self, wait: float) -> None:
        """For a status: a change of the active models that another process made in the index (`vibrary models
        activate`) is followed first, so the re-tag it starts is counted; a status in the middle of the follow
        counted no re-tag, and `models install && status --wait` ended at once, the library not re-tagged. The
        feeder follows it, now, and the status waits `wait` seconds at most: a status that loaded the models
        itself (seconds for a big one) ran past its caller's deadline, and a check of 2 s, `is_running`, failed."""
        if {m.id: m.ref for m in self.index.tagging_models()} == self._active and not self._models_lock.locked():
            return  # (the common case: nothing to follow, nobody following)
        until, begun = time.monotonic() + wait, self._follows_begun
        # a follow begun after this call, ended however it did (a failing one, waited for to the deadline,
        # made every status of the tray and `status --wait` take 10 s); none for a daemon stopping
        while self._follows_ended <= begun and time.monotonic() < until and not self._stop.is_set():
            self._follow_now.set()
            self._wake.set()
            time.sleep(0.02)

    # -- API helpers ---------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        missing = sorted(self.watcher.missing)
        with self.index.snapshot():  # one state of the queue: a re-tag queued between two reads had retagging
            counts = self.index.counts()  # above pending, and "pending - retagging" below 0 for a front end
            retagging, queue_depth = self.index.retagging(), self.index.due_count(time.time())
            retrying, retry_reason = self.index.retrying()
            away = self._count_away(missing)
        if not counts["pending"]:  # a re-tag just done: searches read its version before `status --wait` ends
            self._hand_over(wait=False)
        active = self.index.active_models()
        unusable = [m.ref for m in active if m.id in self._unloaded]  # tried, and could not be loaded
        failing = self.pipeline.failing
        models = [m.ref for m in active if m.ref not in unusable and m.id not in failing]
        # `vibrary models activate` writes the index, and the feeder follows within a second: a status meanwhile
        # listed the model active and said indexing waited for lack of one (`status --wait` gave up on it)
        following = {m.id: m.ref for m in self.index.tagging_models()} != self._active
        tagging = bool(models) if following else bool(self.pipeline.models)
        no_model = NO_MODEL_WAITS if counts["pending"] else NO_MODEL_NOW
        return {
            **counts,
            "models": models,
            "standing_in": [
                f"{m.ref} for {new.ref}"
                for m in self.index.serving_models()
                if not m.active
                for new in active
                if new.name == m.name
            ],
            "unusable_models": unusable,
            "failing_models": [f"{ref}: {error}" for ref, error in failing.values()],
            "retagging": retagging,
            "queue_depth": queue_depth,
            "watches": self.index.watches(),
            "missing_watches": missing,
            "away": min(away, counts["indexed"] + counts["pending"] + counts["failed"]),  # (a minute old at most)
            "unfollowed_links": self.watcher.unfollowed_links,
            "unnamed_files": (unnamed := self.watcher.unnamed)[:UNNAMED_SHOWN],  # sent 4 times a second
            "unnamed_count": len(unnamed),
            "unlisted_folders": self.watcher.unlisted,
            "unwatched_folders": self.watcher.over_limit,
            "scanning": self.watcher.scans_running,
            "retrying": retrying,
            "retry_reason": retry_reason,
            "waiting_for_watches": self._held and counts["pending"] > 0,
            "home": str(self.home),
            "paused": self.paused,
            "stalled": self.stalled or self._unrecorded() or ("" if tagging else no_model),
            "training": self.training.progress if self.training is not None else None,
            "uptime_s": time.time() - self.started,
            "version": VERSION,
            **self.pipeline.counters,
        }

    def _count_away(self, missing: list[str]) -> int:
        """The files under the missing watch folders (Status.away), counted again when they change."""
        folders, at, count = self._away
        if missing != folders or time.monotonic() - at > AWAY_RECOUNT_S:
            count = self.index.count_under(missing) if missing else 0
            self._away = (missing, time.monotonic(), count)
        return count

    def add_watch(self, folder: str) -> None:
        """Watched first, then kept: a folder that cannot be watched (OSError) is not added. At the inotify
        limit it is added all the same, and scanned until it can be watched (a library too big for the limit
        could not be watched at all). One change of watches at a time: a remove between the watcher's watch
        and the index's row left a watch listed that nothing observed."""
        with self._watches_lock:
            kept = folder in self.index.watches()  # added again: watched now if it can be (its limit raised)
            try:
                self.watcher.watch(folder)
                at_limit = 0
            except OSError as e:
                if e.errno not in AT_WATCH_LIMIT:
                    raise
                at_limit = e.errno
            try:
                if not kept:
                    self.index.add_watch(folder)
            except BaseException:  # (a full disk): not kept, so not watched either; it was, unlisted, unremovable
                self.watcher.unwatch(folder)
                raise
            if at_limit:
                self.watcher.at_limit(folder, why=at_limit)
        self.status_events.changed()

    def remove_watch(self, folder: str) -> bool:
        with self._watches_lock:
            self.watcher.unwatch(folder)
            removed = self.index.remove_watch(folder)
        if removed is None:
            return False
        self._removed(removed)  # a front end that keeps a list from the events kept them all
        return True

    # -- pause / resume ------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def set_paused(self, paused: bool) -> None:
        """Stop or restart handing files to the pipeline; files already in flight finish. The marker file
        is written first, so a daemon killed right after the call still comes back paused."""
        marker = config.paused_path(self.home)
        if paused:
            marker.touch()
            self._paused.set()
        else:
            marker.unlink(missing_ok=True)
            self._paused.clear()
        log.info("indexing %s", "paused" if paused else "resumed")
        self._wake.set()
        self.status_events.changed()

    def tag_now(
        self, paths: Sequence[str], deadline: float, wanted: Callable[[], bool] = lambda: True
    ) -> list[FileTags]:
        """Queue these files first and wait (until the deadline, while `wanted()` and not paused) for their
        results, from the models active now (a `vibrary models` change is otherwise followed within a second)."""
        self._follow_models()
        if not self.pipeline.models:  # the files would come back "indexed" with no tags, and stay so
            raise NoModel(NO_MODEL)

        def going(ahead: float = 0.0) -> bool:  # a folder as big as /usr takes a while: the caller may not wait for it
            # (and the answers, read and sent, must reach the caller before its deadline: 20 µs a file)
            return wanted() and time.time() + ahead + ANSWER_S_PER_FILE * len(files) < deadline

        absent = {p for p in paths if not os.path.lexists(p)}
        # under a watch folder not there now (a drive unplugged): never fed, so waited on until the deadline
        # (an hour: enough such calls took every server thread), and queued for good as files that may not
        # exist. Answered at once from the index, as a search would
        # (asked of every watch, not only of those the watcher's last check found missing: one gone in the
        # seconds since is missing as well)
        gone = {w for w in self.index.watches() if self.watcher.gone(w)}

        def found(path: str) -> list[str]:
            """A folder under such a watch folder is the files the index holds under it (found on the disk,
            it was no folder at all: "no such file or folder")."""
            if path not in absent or not within(path, gone):
                return [path]
            return [r.path for r in self.index.file_tags([path]) if r.state != "unknown"] or [path]

        files: list[str] = []
        unnamed: list[str] = []  # the index cannot hold them (the watcher leaves such names out too)
        unlisted: dict[str, str] = {}  # folders that cannot be listed: a call for one got no answer, status OK

        def cannot_list(folder: str, why: str) -> None:
            warn(folder, why)
            if os.path.isdir(folder):  # (not one deleted during the walk: nothing is left out)
                unlisted.setdefault(readable_name(folder), why)  # (a name not UTF-8 cannot go in an answer)

        for path in (f for p in expand(paths, going, on_error=cannot_list) for f in found(p)):
            (files if storable(path) else unnamed).append(path)
            if len(files) + len(unnamed) > TAG_MAX_FILES:  # (each is an answer too)
                raise TooManyFiles(f"more than {TAG_MAX_FILES} files: add the folder as a watch instead")
        # said as failures: a folder whose only files had such names was answered with nothing at all
        unnamed_tags = [FileTags(readable_name(p), "failed", UNNAMED, []) for p in unnamed]
        unnamed_tags += [FileTags(f, "failed", FOLDER_UNREAD.format(why), []) for f, why in unlisted.items()]
        if not going():
            raise TimeoutError(f"the deadline passed while finding the files ({len(files)} so far)")
        gone |= {w for w in self.index.watches() if self.watcher.gone(w)}  # (and those gone during a long walk)
        hidden = {p for p in files if within(p, gone)} if gone else set()
        # a file named that is no audio (a folder gives only audio), or a path that is not there and never was
        # indexed (`x.wav/child.wav`, a name too long): answered, not read; each was stored as a failure
        # (listed by ListFailed for good), and GetTags said "not an audio file" of the one Tag had failed
        unread = {p: why for p in files if (why := why_not_read(p))}
        never = self.index.file_tags(sorted(absent - hidden - unread.keys()))
        unread |= {r.path: NO_SUCH_PATH for r in never if r.state == "unknown"}
        unnamed_tags += [FileTags(p, "unknown", NO_SUCH_PATH if p in absent else why, []) for p, why in unread.items()]
        files = [p for p in files if p not in unread]
        if self.paused:  # files tagged already are answered as they are (a DAW's dropped file that is known)
            known = [_say_why_hidden(r, hidden) for r in self.index.file_tags(files)]
            untagged = [r.state in ("pending", "unknown") and r.error in (None, "", NOT_INDEXED) for r in known]
            done = [_say_why_missing(r, absent) for r, no in zip(known, untagged, strict=True) if not no]
            with self._tag_lock:
                self._answered({r.path for r in done})
            if any(untagged):  # (the others are answered before the error, as at a deadline)
                said = f"indexing is paused and {sum(untagged)} of these files are not tagged yet: resume it first"
                raise Paused(said, done + unnamed_tags)
            return done + unnamed_tags
        queued = [p for p in files if p not in hidden]
        with self._tag_lock:
            self._tag_waits.update(queued)
        abandoned: list[str] = []
        try:
            new = self.index.mark_asked([(p, *_size_and_time(p)) for p in queued])
            with self._tag_lock:  # (a retry of a call that is still waiting finds them known: it was this one)
                self._tag_new.update(new)
            self._wake.set()
            waiting, asked_again = queued, 0
            while True:
                began = time.monotonic()
                waiting = self.index.unread(waiting)
                polled = time.monotonic() - began  # (100,000 files: seconds) the next poll would end past the deadline
                if not waiting or self.paused or not going(polled):
                    results = [_say_why_hidden(r, hidden) for r in self.index.file_tags(files)]
                    waiting = [r.path for r in results if r.state == "pending" and not r.error]
                    # their watch folder removed meanwhile took their rows (a front end's RemoveWatch): asked
                    # again, as files of no watch (they were answered "not in the index")
                    # (not one under a watch folder not there now: never fed, it would be waited on to the deadline)
                    dropped = [r.path for r in results if r.state == "unknown" and r.error == NOT_INDEXED]
                    if dropped and asked_again < 3 and not self.paused and going():
                        asked_again += 1
                        new = self.index.mark_asked([(p, *_size_and_time(p)) for p in dropped])
                        with self._tag_lock:
                            self._tag_new.update(new)
                        self._wake.set()
                        waiting += dropped
                        continue
                    # the answer is the read that found them done: a Tag of one changed since queues it again; paused
                    # meanwhile as at a deadline: those not read are abandoned (dropped outside the watches)
                    if not waiting or self.paused or not going(polled):
                        abandoned = waiting
                        break
                # a poll of 100,000 files takes a while: waiting 4 times as long leaves the core to the workers (but
                # not past the deadline: the caller is answered just before its own, and a second late is too late)
                time.sleep(max(0.0, min(1.0, max(0.02, 4 * polled), deadline - polled - time.time())))
        finally:
            with self._tag_lock:
                self._tag_waits.subtract(queued)
                self._tag_waits = +self._tag_waits
                # new to the index with a Tag call and not read: the feeder drops them once no call waits for them,
                # beside the answer, which is due before the caller's deadline (a write may wait for the workers');
                # they stay new until then, so that a retry that comes meanwhile and is abandoned too drops them too
                self._to_forget.update(p for p in abandoned if p in self._tag_new)
                self._answered(set(queued) - set(abandoned))
        if abandoned:
            self._wake.set()
        return [_say_why_missing(r, absent) for r in results] + unnamed_tags

    def _forget_later(self, paths: set[str]) -> None:
        """Files _forget_unwatched could not drop now: tried again FORGET_RETRY_S later, not every round."""
        with self._tag_lock:
            self._to_forget |= paths
        self._forget_from = time.monotonic() + FORGET_RETRY_S

    def _answered(self, paths: set[str]) -> None:
        """Files a Tag call was answered with stay in the index, whoever else gives up on them (_forget_unwatched).
        Under _tag_lock."""
        self._tag_new -= paths
        self._to_forget -= paths

    def _forget_unwatched(self) -> None:
        """The files of abandoned Tag calls (a deadline, a cancel) that no watch holds, that no call waits for
        now and that are still not read: they were all read anyway and kept for good, 800 files for a call cut
        off after a second. The ones a watch holds stay queued: the daemon reads them in any case; a file read
        meanwhile stays (another call may have been answered with it). A file a call waits for is left to that
        call's end (abandoned too, it comes back here). Picked under the Tag calls' lock, dropped outside it (a Tag
        call is not held up by a write that waits for the workers'): a call for one in between finds its row gone
        and asks again (tag_now), or stays the one it is new to (below)."""
        with self._tag_lock:
            candidates, self._to_forget = self._to_forget, set()
        try:
            watches, unread = self.index.watches(), set(self.index.unread(sorted(candidates)))
        except BaseException:
            self._forget_later(candidates)  # (a passing error)
            raise
        with self._tag_lock:
            picked = sorted(
                p
                for p in candidates & unread & self._tag_new  # (not new any more: a call was answered with it)
                if not within(p, watches) and self._tag_waits[p] <= 0
            )
            self._tag_new -= {p for p in candidates if self._tag_waits[p] <= 0} - set(picked)  # read, or a watch's
        if not picked:
            return
        try:
            self.index.remove_paths(picked)
        except sqlite3.Error as e:  # a full disk: tried again a minute later
            log.warning("could not drop %d files of an abandoned Tag call: %s", len(picked), e)
            self._forget_later(set(picked))
            return
        with self._tag_lock:  # new still to a call that came meanwhile: its mark_asked may have found the row
            # before it went, and put it back as one it knew (abandoned in turn, it comes back here)
            self._tag_new -= {p for p in picked if self._tag_waits[p] <= 0}
        log.info("dropped %d files of a Tag call whose caller stopped waiting", len(picked))

    # -- your own tags: datasets and training --------------------------------------------------------
    def create_dataset(
        self,
        name: str,
        files: Sequence[tuple[str, str]],
        progress: Callable[[int], None],
        add: bool = False,
        restore: bool = False,
        replace: bool = False,
    ) -> dataset.Added:
        """Spectrograms of confirmed (path, tag) pairs, from the cache this daemon fills while indexing, as a
        new dataset, in place of one (`replace`), or (`add`) added to one."""
        examples = [dataset.example(path, tag) for path, tag in files]
        workers = self.settings.worker_count
        with self._changing(name):
            if add:
                return dataset.add(
                    self.home, name, examples, workers=workers, progress=progress, cache=self.cache, restore=restore
                )
            report = dataset.build(
                self.home, name, examples, workers=workers, progress=progress, cache=self.cache, replace=replace
            )
            return dataset.Added(report, report.manifest.clips, 0)

    def edit_dataset(self, name: str, **edits: Any) -> dataset.BuildReport:
        with self._changing(name):
            return dataset.edit(self.home, name, **edits)

    def delete_dataset(self, name: str) -> None:
        with self._changing(name):
            dataset.delete(self.home, name)

    @property
    def dataset_changing(self) -> str:
        """The dataset being built, edited or deleted now ("" when none)."""
        with self._training_lock:
            return self._dataset_changing

    @contextlib.contextmanager
    def _changing(self, name: str) -> Iterator[None]:
        """One dataset build or edit at a time (each takes every core), and none of the dataset a training
        reads: rewriting its shards would break the upload halfway or train on a mix of old and new labels.
        TrainingBusy instead; start_training likewise refuses the dataset named here while it changes. A
        second build or edit is refused, not held: an edit of another dataset hung, silent, for as long as a
        build of thousands of files took."""
        if not self._datasets_lock.acquire(blocking=False):
            busy = self._dataset_changing or "another dataset"
            raise dataset.Busy(f"dataset {busy!r} is being built or edited; try again when that is done")
        try:
            with self._training_lock:
                job = self.training
                if job is not None and not job.finished and job.progress.dataset == name:
                    raise TrainingBusy(f"dataset {name!r} is being trained on; wait for the training or cancel it")
                self._dataset_changing = name
            yield
        finally:
            with self._training_lock:
                self._dataset_changing = ""
            self._datasets_lock.release()

    def start_training(self, dataset_name: str, **kwargs: Any) -> training.Background:
        """Train in the background (indexing and the API go on meanwhile); TrainingBusy when a job runs."""
        dataset.load(self.home, dataset_name)  # FileNotFoundError now, not as a failed job later
        with self._training_lock:
            if (now := self.training) is not None and not now.finished:  # (a caller that left it: it goes on)
                then = (
                    "it is being cancelled: train once it has ended"
                    if now.cancel.is_set()
                    else "it goes on whoever follows it (Status.training and Events say how far it is, `vibrary"
                    " status` too); cancel it first to train another"
                )
                raise TrainingBusy(f"already training on dataset {now.progress.dataset!r}: {then}")
            if self._dataset_changing == dataset_name:
                raise TrainingBusy(f"dataset {dataset_name!r} is being built or edited; train it when that is done")
            # on record from the start: a daemon killed before the trainer has the job says so at its next start
            job = training.JobRecord(dataset_name, kwargs.get("name") or dataset_name, kwargs.get("trainer", "local"))
            job.save(config.training_path(self.home))
            return self._in_background(
                dataset_name, functools.partial(training.train, self.home, dataset_name, index=self.index, **kwargs)
            )

    def _resume_training(self) -> None:
        """A job that an earlier run of this daemon left to its trainer (its own trainer included: it goes on
        from its last epoch) is followed again and its model installed when it is done; a training cut off
        before a trainer had it ends as failed, saying why."""
        job = training.JobRecord.load(config.training_path(self.home))
        if job is None:
            config.training_path(self.home).unlink(missing_ok=True)  # (an unreadable one is in the log)
            return
        log.info("collecting training job %s on %s for dataset %s", job.job_id, job.trainer, job.dataset)
        with self._training_lock:
            self._in_background(job.dataset, functools.partial(training.resume, self.home, job, index=self.index))

    def _in_background(self, dataset_name: str, run: Callable[..., object]) -> training.Background:
        """`run` (train or resume) as this daemon's one training, on record (JobRecord) while it lasts."""
        record = config.training_path(self.home)

        def background(job: training.Background) -> None:
            def started(on_trainer: training.JobRecord) -> None:
                on_trainer.save(record)
                job.started = True

            def installed_first(p: training.TrainProgress) -> None:
                if p.state == "succeeded":  # whoever hears of success finds the new version at work (and
                    self.models_changed()  # MODEL_INSTALLED was published)
                job.update(p)

            left = False
            try:
                run(progress=installed_first, cancel=job.cancel, leave=job.leave, on_started=started)
            except training.Detached:
                left = True
                raise
            except training.TrainingError as e:
                # ended by the daemon's stop (no trainer had the job yet, an upload to the cloud cut off): said
                # to no front end, the servers stopping, and it read "cancelled" as if the user had. The record
                # stays: the next start says what became of it (as it does for a cloud job AWS refused to let be
                # followed for want of credentials)
                left = job.leave.is_set() or isinstance(e, training.KeptOnRecord)
                raise
            finally:
                if not left:
                    record.unlink(missing_ok=True)

        self.training = training.Background(dataset_name, background, self._training_event)
        return self.training

    def _training_event(self, progress: training.TrainProgress) -> None:
        kind = TRAINING_FINISHED if progress.state in training.FINISHED else TRAINING_PROGRESS
        self.events.publish(Event(kind, training=progress))
        self.status_events.changed()  # the status snapshot carries the training too
        if kind == TRAINING_FINISHED:
            log.info("training on %s %s %s", progress.dataset, progress.state, progress.error or progress.model)


def upgrade(index: Index) -> None:
    """The once-per-index steps, in the order of their numbers: each is skipped once a later one is done (one
    run out of its turn marked the others done, and an index from before them never had them)."""
    index.forget_silent_once()
    index.rehash_long_once(features.HEAD_BYTES)
    index.spell_tags_once()
    index.read_unsupported_once(UNSUPPORTED_ENCODING)
    index.forget_unheard_once(silence_guess)


def silence_guess(row: ModelRow) -> tuple[str, float] | None:
    """The best tag and score a model version gives a silent clip, as an older release stored for one; None
    for a model that cannot be run (its file gone, a built-in model of another release)."""
    try:
        model = Model(row.path, threads=1)
        params = model.info.params
        scores = model.predict(as_fed(np.zeros((params.channels, params.n_samples), np.float32), params)[None])[0]
    except Exception as e:  # (any: an upgrade step must not stop the daemon from starting)
        log.info("%s not run for its guess for silence: %s", row.ref, e)
        return None
    best = int(scores.argmax())
    return model.info.classes[best], float(scores[best])


class NoModel(RuntimeError):
    """Nothing to tag with: every model is inactive, or none of the active ones loads."""


class Paused(RuntimeError):
    """A Tag call while indexing is paused, for files not tagged yet; `done`: the answers for the others."""

    def __init__(self, message: str, done: Sequence[FileTags] = ()) -> None:
        super().__init__(message)
        self.done = list(done)


class TooManyFiles(ValueError):
    """More files than one Tag call should queue."""


ANSWER_S_PER_FILE = 20e-6  # reading a Tag call's results and sending them: 1.4 s for 100,000 files, measured
TAG_MAX_FILES = 100_000  # a Tag call queues at most this many: more is a library, which a watch keeps tagged


def models_said(status: dict[str, object]) -> str:
    """The active models of a status, and the versions standing in for them: the daemon's start listed the
    models it runs, a version standing in for a new one among them as if it were active."""
    active, standing_in = cast(list[str], status["models"]), cast(list[str], status["standing_in"])
    return (", ".join(active) or "none") + "".join(
        f"; {pair} until it has re-tagged the library" for pair in standing_in
    )


def expand(
    paths: Sequence[str],
    going: Callable[[], bool] = lambda: True,
    links: bool = False,
    seen: set[str] | None = None,
    on_error: Callable[[str, str], None] = warn,
    met: Callable[[str], object] = lambda f: None,
) -> Iterator[str]:
    """Files as given, folders replaced by the audio files under them, each file once however it is reached
    (`vibrary tag DIR ./DIR/x.wav` or a link to DIR tags x.wav once, as it is first named; `link/../x.wav` is
    the x.wav beside where the link leads; a link to a file is a file of its own), as they are found, until
    `going()` says to stop; a path that does not exist is kept so that its error is reported. `links`: links to
    folders under them are followed; `on_error(folder, reason)` for one that cannot be read (audio_files_under).
    `seen`: the files met by earlier calls, for a caller that expands its paths one at a time; `met(file)` for
    every file met, given before or not."""
    seen = set() if seen is None else seen
    for p in paths:
        for f in audio_files_under(p, on_error, going, links) if os.path.isdir(p) else [p]:
            met(f)
            # (a file's folder as it really is, the file by its own name: a link to a file is a file of its own,
            # as the index holds it, and a path that is not there keeps its name, to be said missing)
            if (key := os.path.join(os.path.realpath(os.path.dirname(f) or "."), os.path.basename(f))) not in seen:
                seen.add(key)
                yield f


# where removable drives are mounted (a drive unplugged takes its mount point with it, or leaves it empty)
DRIVE_ROOTS = ("/media", "/mnt", "/run/media", "/Volumes")


def _deleted(path: str) -> bool:
    """Whether a file tagged on demand is gone for good, not on a drive or share that is away. The nearest
    folder above it that is there tells: an empty one may be a mount point with nothing mounted (an fstab
    drive, a network share); one under DRIVE_ROOTS on the system's own disk is where a drive's mount point
    was. Anything else: deleted (with its pack folder, maybe)."""
    if os.path.lexists(path):
        return False
    there = os.path.dirname(path)
    while not os.path.isdir(there):
        there = os.path.dirname(there)
    try:
        with os.scandir(there) as entries:
            if next(entries, None) is None:
                return False
    except OSError:  # (cannot be listed: nothing to tell by)
        return False
    mount = there
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return not within(there, DRIVE_ROOTS) or within(mount, DRIVE_ROOTS)


def _say_why_hidden(found: FileTags, hidden: set[str]) -> FileTags:
    """A file under a watch folder not there now, as the index last knew it, and why it is not read now."""
    said = (None, NO_SUCH_PATH, NOT_INDEXED)  # (one never indexed: it is read once its folder is back, as the rest)
    if found.path not in hidden or found.state not in ("pending", "unknown") or found.error not in said:
        return found
    return FileTags(found.path, found.state, WATCH_GONE, found.tags, found.unfamiliar)


def _say_why_missing(found: FileTags, absent: set[str]) -> FileTags:
    """`absent`: the paths asked for that did not exist when asked; the others were there, then went."""
    if found.state == "unknown" and found.error != WATCH_GONE and not os.path.lexists(found.path):
        return FileTags(found.path, "unknown", NO_SUCH_PATH if found.path in absent else VANISHED, [])
    return found


def _lock_home(home_dir: Path) -> IO[str]:
    """One daemon per home: a second one would fight the first over the socket and the queue."""
    try:
        return pidlock.hold(config.lock_path(home_dir))
    except pidlock.Held as e:
        raise AlreadyRunning(_running(home_dir, e.pid)) from None


def _running(home_dir: Path, pid: int | None) -> str:
    return f"a daemon is already running for {home_dir} (pid {pid or '?'})"


def check_home_free(home_dir: Path) -> None:
    """AlreadyRunning when a daemon holds the home, asked before anything else is checked: a second `vibrary
    daemon --listen HOST:PORT` said its port was taken (by the first), not that one runs."""
    if (pid := pidlock.holder(config.lock_path(home_dir))) is not None:
        raise AlreadyRunning(_running(home_dir, pid))


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file (one inode number may be another drive's file)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _file_stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _lower_priority(nice: int) -> None:
    """Run below the user's DAW: CPU niceness and best-effort low I/O priority. `nice` 0 leaves both as
    they are (a daemon inside another program, a test, must not lower its host for good).

    Linux keeps both per thread, and a thread takes its maker's only when it is made: every thread there
    is now (numpy's BLAS pool starts at import) is lowered, and those made later follow this one."""
    if nice <= 0:
        return
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
    tasks = Path("/proc/self/task")
    threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]  # 0: the caller
    try:
        for tid in threads:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):  # a thread that ended
                os.setpriority(os.PRIO_PROCESS, tid, target)
                psutil.Process(tid or os.getpid()).ionice(psutil.IOPRIO_CLASS_BE, 7)
    except (OSError, AttributeError, ValueError, psutil.Error):
        log.info("could not lower the daemon's priority")
