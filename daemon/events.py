"""In-process publish/subscribe for the Events stream: every front end gets its own bounded queue.

A subscriber that stops reading loses events instead of growing the daemon's memory, and is told so
(EVENTS_LOST): a front end that keeps a list from the events would otherwise show it wrong, unsaid.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .index import FileTags

log = logging.getLogger(__name__)

FILE_TAGGED = "file_tagged"
FILE_FAILED = "file_failed"
FILE_REMOVED = "file_removed"
MODEL_CHANGED = "model_changed"
STATUS_CHANGED = "status_changed"
TRAINING_PROGRESS = "training_progress"
TRAINING_FINISHED = "training_finished"  # succeeded, failed or cancelled: see the event's training state
MODEL_INSTALLED = "model_installed"
EVENTS_LOST = "events_lost"  # in place of everything a slow reader had queued and missed


@dataclass(frozen=True)
class Event:
    kind: str
    file: FileTags | None = None
    model: str = ""
    training: Any = None  # training.TrainProgress, for TRAINING_* events
    time: float = field(default_factory=time.time)
    status: dict[str, object] | None = None  # STATUS_CHANGED: the daemon's status() at that moment
    lost: int = 0  # EVENTS_LOST: how many
    moved_from: str = ""  # FILE_TAGGED, FILE_FAILED of a file renamed or moved: its path before


class Feed(queue.Queue["Event | None"]):
    """One subscriber's events, None at its end, and how many were dropped since it last read."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.lost = 0

    def drop(self, n: int = 1) -> None:
        """`n` events not queued: said as EVENTS_LOST at the next read."""
        with self.mutex:
            self.lost += n

    def next(self) -> Event | None:
        """The next event; after a loss, EVENTS_LOST in place of everything queued (what the reader reloads
        on seeing it covers those; an event published meanwhile may come after it and be counted again)."""
        while True:
            event = self.get()
            with self.mutex:
                lost, self.lost = self.lost, 0
            if event is None:
                return None
            if lost:
                break
            if event.kind != EVENTS_LOST:  # (one that is, with nothing lost: the wake-up of a loss said already)
                return event
        queued: list[Event | None] = [event]
        with contextlib.suppress(queue.Empty):
            while True:
                queued.append(self.get_nowait())
        if None in queued:
            self.put_nowait(None)  # (emptied: room for it)
        lost += sum(e is not None and e.kind != EVENTS_LOST for e in queued)  # (EVENTS_LOST: a wake-up)
        return Event(EVENTS_LOST, lost=lost)


class Crowded(RuntimeError):
    """As many feeds as may be open are."""


class EventBus:
    def __init__(self, per_subscriber: int = 10_000) -> None:
        self._subscribers: set[Feed] = set()
        self._lock = threading.Lock()
        self.queue_size = per_subscriber
        self.closed = threading.Event()  # the daemon is stopping: streams end, cleanly

    def close(self) -> None:
        self.closed.set()
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            self.end(q)

    def subscribe(self, most: int = 0) -> Feed:
        """A feed of the events from now on; Crowded when `most` (0: any number) feeds are open already, checked
        and taken at once (a burst of Events calls each saw room, and all were let in)."""
        q = Feed(self.queue_size)
        with self._lock:
            if most and len(self._subscribers) >= most:
                raise Crowded(f"{most} front ends follow events already: close one")
            self._subscribers.add(q)
        if self.closed.is_set():
            self.end(q)
        return q

    def end(self, q: Feed) -> None:
        """Wake its reader to end: a front end gone, or the daemon stopping. A reader blocks on its feed
        until then (it polled 4 times a second, for as long as a tray ran)."""
        with contextlib.suppress(queue.Empty):
            if q.full():
                q.get_nowait()  # (the end matters more than the oldest event)
        with contextlib.suppress(queue.Full):
            q.put_nowait(None)

    def unsubscribe(self, q: Feed) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            try:
                q.put_nowait(event)
            except queue.Full:  # a stalled front end must not stall tagging
                q.drop()

    def lost(self, n: int) -> None:
        """`n` events that no subscriber is sent (a watch of a million files removed): each hears
        EVENTS_LOST, which costs nothing per event."""
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            q.drop(n)
            with contextlib.suppress(queue.Full):  # wakes a reader that waits (a full feed wakes it anyway)
                q.put_nowait(Event(EVENTS_LOST))

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class StatusPublisher:
    """Publishes STATUS_CHANGED snapshots so front ends never poll, throttled to one per `interval`.

    `changed()` is cheap and may be called on every file; a thread publishes at once after a quiet
    spell (leading edge) and once more `interval` later if anything changed meanwhile (trailing edge),
    so the last snapshot always shows where the daemon came to rest (e.g. idle, nothing pending). A
    snapshot equal to the last one published (uptime aside) is not sent again, and nothing is computed
    while no front end listens. Counting a huge index is not free (about 80 ms for a million files), so
    the pause between snapshots also grows to keep their cost under 1/COST_SHARE of one core.
    """

    VOLATILE = frozenset({"uptime_s"})
    COST_SHARE = 20

    def __init__(self, bus: EventBus, snapshot: Callable[[], dict[str, object]], interval: float = 0.25) -> None:
        self._bus = bus
        self._snapshot = snapshot
        self._interval = interval
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join()

    def changed(self) -> None:
        self._dirty.set()

    def _run(self) -> None:
        last: dict[str, object] | None = None
        while True:
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            if not self._bus.subscribers:
                last = None  # whoever subscribes next gets a snapshot from the Events call itself
                continue
            started = time.monotonic()
            try:
                snap = self._snapshot()
            except Exception:  # a status that cannot be read now is read again on the next change
                log.exception("status snapshot failed")
                continue
            key = {k: v for k, v in snap.items() if k not in self.VOLATILE}
            if key != last:
                last = key
                self._bus.publish(Event(STATUS_CHANGED, status=snap))
            cost = time.monotonic() - started
            if self._stop.wait(max(self._interval, cost * self.COST_SHARE)):
                return
