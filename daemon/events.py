"""In-process publish/subscribe for the Events stream: every front end gets its own bounded queue.

A subscriber that stops reading loses events instead of growing the daemon's memory.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .index import FileTags

FILE_TAGGED = "file_tagged"
FILE_FAILED = "file_failed"
FILE_REMOVED = "file_removed"
MODEL_CHANGED = "model_changed"
TRAINING_PROGRESS = "training_progress"
TRAINING_FINISHED = "training_finished"  # succeeded, failed or cancelled: see the event's training state
MODEL_INSTALLED = "model_installed"


@dataclass(frozen=True)
class Event:
    kind: str
    file: FileTags | None = None
    model: str = ""
    training: Any = None  # training.TrainProgress, for TRAINING_* events
    time: float = field(default_factory=time.time)


class EventBus:
    def __init__(self, per_subscriber: int = 10_000) -> None:
        self._subscribers: set[queue.Queue[Event]] = set()
        self._lock = threading.Lock()
        self._size = per_subscriber

    def subscribe(self) -> queue.Queue[Event]:
        q: queue.Queue[Event] = queue.Queue(self._size)
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue[Event]) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            with contextlib.suppress(queue.Full):  # a stalled front end must not stall tagging
                q.put_nowait(event)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
