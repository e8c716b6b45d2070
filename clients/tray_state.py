"""What the tray shows, as a pure function of what the daemon said.

No Qt in here: the tray feeds every Event and Status it receives through `apply` / `with_status` and
draws whatever `view` returns, so the decisions (which icon, what the tooltip says, which menu entries
are enabled, when to notify) are tested with plain proto messages and no display.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vibrary.daemon.index import within
from vibrary.proto import daemon_pb2 as pb
from vibrary.trainer.options import FITTING, LOST_TRAINER

TP = pb.TrainProgress
TRAINING_ACTIVE = frozenset({TP.UPLOADING, TP.WAITING, TP.TRAINING, TP.INSTALLING})
_TRAINING_VERB = {TP.UPLOADING: "uploading", TP.WAITING: "waiting for the trainer", TP.INSTALLING: "installing"}


class Icon(str, enum.Enum):
    NOT_RUNNING = "not_running"
    IDLE = "idle"
    INDEXING = "indexing"
    TRAINING = "training"
    PAUSED = "paused"
    ERROR = "error"


@dataclass(frozen=True)
class MenuItem:
    """One menu entry: `action` names what a click does ("" for none, "-" for a separator)."""

    action: str
    text: str = ""
    enabled: bool = True
    children: tuple[MenuItem, ...] = ()


SEPARATOR = MenuItem("-")


@dataclass(frozen=True)
class View:
    icon: Icon
    progress: float | None  # 0..1, drawn as a ring on the indexing and training icons
    tooltip: str
    menu: tuple[MenuItem, ...]


@dataclass(frozen=True)
class Notice:
    """A desktop notification."""

    title: str
    text: str
    warning: bool = False


FAILED_KEPT = 1000  # paths of new failures kept, at most: beyond, the count says it


@dataclass(frozen=True)
class TrayState:
    running: bool = False
    status: pb.Status | None = None
    training: pb.TrainProgress | None = None  # the newest training news, from Status or an event
    batch_base: int = -1  # indexed + failed when the current run of work began; -1: no work pending
    failed_seen: int = 0  # failures the user has already looked at (Recent errors)
    # files failed since then, by their FILE_FAILED events: one mended and another failed between two
    # snapshots left the count as it was, and the new failure unseen
    failed_since: frozenset[str] = frozenset()
    recent_errors: tuple[tuple[str, str], ...] = ()  # (path, why), newest first
    # the failures listed when the user looked: a FILE_FAILED event of one, arriving after the status that
    # counted it (and after the look), is no new failure (it showed red again)
    looked_at: frozenset[str] = frozenset()
    # why a daemon that is there does not answer (suspended, or following refused: too many front ends); "":
    # none runs. "Daemon not running" and Start daemon were offered of one running, which then would not start
    unanswered: str = ""


# -- transitions -------------------------------------------------------------------------------------
def with_status(state: TrayState, status: pb.Status, heard_all: bool = True) -> TrayState:
    """A fresh snapshot (the Events stream's first message, STATUS_CHANGED, or an RPC's reply). `heard_all`:
    False when events were lost before it (failed_since knows nothing of them)."""
    finished = status.indexed + status.failed
    if status.pending == 0:
        base = -1
    elif state.batch_base < 0 or state.status is None:
        base = finished  # work just began: "done of queued" counts from here
    else:
        base = min(state.batch_base, finished)  # files removed meanwhile never make progress negative
    training = status.training if status.HasField("training") else state.training
    # failures fixed or removed since they were seen: the next ones are new (it stayed idle for as many). Only
    # once at rest: a failed file read again (a Tag call, a change) is out of the count while it is, and
    # failing again as before is nothing new (a new failure meanwhile is in failed_since, by its event); but
    # at once when what happened meanwhile was not heard (connected now, events lost): the count is all there is
    unheard = not heard_all or state.status is None
    seen = min(state.failed_seen, status.failed) if status.pending == 0 or unheard else state.failed_seen
    return replace(
        state, running=True, status=status, batch_base=base, training=training, failed_seen=seen, unanswered=""
    )


def disconnected(state: TrayState, why: str = "") -> TrayState:
    """No daemon answers; `why`, when one is there (TrayState.unanswered). (The files failed since the user
    looked are forgotten: what happened to them meanwhile was not heard; the count of failures says what is
    new from here on.)"""
    return replace(state, running=False, status=None, batch_base=-1, failed_since=frozenset(), unanswered=why)


def apply(state: TrayState, event: pb.Event) -> tuple[TrayState, list[Notice]]:
    """One event from the daemon's stream → the new state and the notifications it deserves."""
    kind = event.kind
    if kind == pb.Event.EVENTS_LOST:  # the status is where things stand; what was lost may have mended files
        return with_status(replace(state, failed_since=frozenset()), event.status, heard_all=False), []
    if kind == pb.Event.STATUS_CHANGED:
        return with_status(state, event.status), []
    if kind == pb.Event.TRAINING_PROGRESS:
        return replace(state, training=event.training), []
    if kind == pb.Event.TRAINING_FINISHED:
        return replace(state, training=event.training), [_training_notice(event.training)]
    if kind == pb.Event.FILE_FAILED and event.moved_from:  # a failure renamed: new or seen as it was
        path, was = event.file.path, event.moved_from
        failed_since = state.failed_since | ({path} if was in state.failed_since else set())
        return replace(
            state, failed_since=failed_since, looked_at=state.looked_at | ({path} if was in state.looked_at else set())
        ), []
    if kind == pb.Event.FILE_FAILED and event.file.path in state.looked_at:
        return state, []
    if kind == pb.Event.FILE_FAILED and len(state.failed_since) < FAILED_KEPT:
        return replace(state, failed_since=state.failed_since | {event.file.path}), []
    if kind in (pb.Event.FILE_TAGGED, pb.Event.FILE_REMOVED):  # mended, or gone: a failure of it again is new
        path = event.file.path
        return replace(state, failed_since=state.failed_since - {path}, looked_at=state.looked_at - {path}), []
    if kind == pb.Event.MODEL_INSTALLED:
        # (any install: one from a terminal kept inactive does not tag the library, as "tags it now" said)
        return state, [Notice("Model installed", f"{event.model} is installed.")]
    return state, []


def with_errors(state: TrayState, failed: list[pb.FileTags]) -> TrayState:
    """Recent errors, newest first. When they are every file failed now, a new failure not among them is
    mended: renamed first (a move of a failed file says only that its old path is gone) and then mended, it stayed
    new until the user looked."""
    since = state.failed_since
    if state.status is not None and len(failed) >= state.status.failed:
        since = since & {f.path for f in failed}
    return replace(state, recent_errors=tuple((f.path, f.error) for f in failed), failed_since=since)


def errors_seen(state: TrayState) -> TrayState:
    """The user opened Recent errors: the error icon goes until something new fails. The list may be newer
    than the status (a snapshot of the daemon's counts taken as the file failed, sent after its event): the
    failures listed were seen even when the status does not count them yet."""
    seen = max(state.status.failed, len(state.recent_errors)) if state.status else state.failed_seen
    looked = frozenset(path for path, _ in state.recent_errors)
    return replace(state, failed_seen=seen, failed_since=frozenset(), looked_at=looked)


def _training_notice(t: pb.TrainProgress) -> Notice:
    name = t.model or t.dataset or "your model"
    if t.state == TP.SUCCEEDED:
        # "training clips (none held out)" for a small dataset: its figure is no validation accuracy
        of = t.accuracy_of or "held-out clips"
        accuracy = f", right on {t.val_accuracy:.0%} of the {of}" if t.val_accuracy else ""
        return Notice("Training finished", f"{name} is trained and installed{accuracy}.")
    if t.state == TP.CANCELLED:
        return Notice("Training cancelled", f"Training of {name} was cancelled.")
    return Notice("Training failed", f"Training of {name} failed: {t.error or 'no reason given'}", warning=True)


# -- what is shown -----------------------------------------------------------------------------------
def indexing_progress(state: TrayState) -> tuple[int, int] | None:
    """(done, queued) of the current run of work, or None when nothing is pending."""
    s = state.status
    if s is None or s.pending == 0 or state.batch_base < 0:
        return None
    done = max(0, s.indexed + s.failed - state.batch_base)
    return done, done + s.pending


def training_line(t: pb.TrainProgress) -> str:
    name = t.model or t.dataset
    if t.state == TP.TRAINING and t.message == FITTING:
        return f"training {name}: fitting the tags the base model knows"
    if t.state == TP.TRAINING:
        line = f"training {name}: epoch {t.epoch} of {t.epochs}" if t.epochs else f"training {name}"
        if t.val_accuracy:
            line += f", accuracy {t.val_accuracy:.0%}"
        if t.message.startswith(LOST_TRAINER):  # "epoch 4 of 600" alone, for minutes, read as frozen
            line += f"; {t.message}"
        return line
    if t.state == TP.WAITING and t.message:  # queued behind another's job, or the trainer out of reach
        return f"training {name}: {t.message}"
    if t.state == TP.UPLOADING and t.upload_bytes:
        return f"training {name}: uploading {t.uploaded_bytes * 100 // t.upload_bytes}%"
    return f"training {name}: {_TRAINING_VERB.get(t.state, TP.State.Name(t.state).lower())}"


def _training_progress(t: pb.TrainProgress) -> float | None:
    if t.state == TP.INSTALLING:  # (after the last epoch: a whole ring)
        return 1.0
    if t.state == TP.TRAINING and t.epochs:
        return min(1.0, t.epoch / t.epochs)
    if t.state == TP.UPLOADING and t.upload_bytes:
        return min(1.0, t.uploaded_bytes / t.upload_bytes)
    return None


def nested_watch(folder: str, watches: Sequence[str]) -> str:
    """What to say of a watch folder just added inside another or holding some ("" when neither): harmless, but
    one more to remove, said alike by `vibrary watch add` and the tray's *Add watch folder…*."""
    covering = [w for w in watches if w != folder and within(folder, [w])]
    inside = [w for w in watches if w != folder and within(w, [folder])]
    if covering:
        return f"{folder} is inside {covering[0]}, watched already; added all the same"
    if inside:
        held = f"{folder} holds {many(len(inside), 'watch folder')} already ({', '.join(inside)})"
        return f"{held}: each file is indexed once; `vibrary watch remove` them if you like"
    return ""


def many(n: int, noun: str = "file") -> str:
    """ "1 file", "2 files": said alike by the tray and the CLI ("1 new files could not be read")."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def looking_for_files(scanning: int) -> str:
    """A status's folders being listed, said alike by the tray and `vibrary status`."""
    return f"looking for new files ({scanning} folder{'s' if scanning != 1 else ''} being listed)"


def view(state: TrayState) -> View:
    s = state.status
    if not state.running or s is None:
        said = f"daemon not answering: {state.unanswered}" if state.unanswered else "daemon not running"
        # the menu's first line says what, up to the reason's first colon; the tooltip says why and what to do
        # (the whole reason, a socket's path and a remedy, made the menu as wide as the screen)
        reason = state.unanswered.split(": ")[0].split(" at /")[0]  # (a socket's path too)
        gist = said.split(": ")[0] + (f": {reason}" if reason else "")
        return View(Icon.NOT_RUNNING, None, f"Vibrary: {said}", _menu(state, gist[:1].upper() + gist[1:]))
    training = _training(state)
    progress = indexing_progress(state)
    new_failures = max(s.failed - state.failed_seen, len(state.failed_since))
    if training is not None:  # (a ring drawn whole before the first epoch read as a training done)
        icon, ring, headline = Icon.TRAINING, _training_progress(training) or 0.0, training_line(training)
    elif s.stalled:  # the index cannot be written (a full disk): nothing else matters until it can. No model
        # to tag with (all deactivated) is the user's own doing, waiting as a pause does, not a fault shown red
        # (an active model whose file is missing or damaged is no doing of the user's: red)
        faulty = s.models or s.unusable_models or s.failing_models
        icon, ring, headline = Icon.ERROR if faulty else Icon.PAUSED, None, f"indexing waits: {s.stalled}"
    elif s.paused:
        waiting = f" ({many(s.pending)} waiting)" if s.pending else ""
        icon, ring, headline = Icon.PAUSED, None, f"indexing paused{waiting}"
    elif new_failures > 0 and (s.waiting_for_watches or progress is None):  # (a drive out for days hid them)
        icon, ring, headline = Icon.ERROR, None, f"{many(new_failures, 'new file')} could not be read"
    elif s.waiting_for_watches:  # a drive unplugged mid-indexing: "indexing: 120 of 1,494 files" for as long
        folders = ", ".join(s.missing_watches)
        icon, ring, headline = Icon.PAUSED, None, f"waiting for {folders} ({many(s.pending)} pending)"
    elif progress is not None:
        done, queued = progress
        doing = "re-tagging" if s.retagging >= s.pending else "indexing"  # (a library searchable meanwhile)
        icon, ring, headline = Icon.INDEXING, done / queued, f"{doing}: {done} of {queued} files"
    elif s.scanning:  # a big library's listing (at a start, a watch added) finds no file for a while
        icon, ring, headline = Icon.IDLE, None, looking_for_files(s.scanning)
    else:
        icon, ring, headline = Icon.IDLE, None, "idle"
    lines = [f"Vibrary: {headline}", f"{s.indexed} indexed, {s.pending} pending{retagging(s)}, {s.failed} failed"]
    if training is not None and (s.paused or progress is not None):
        done_queued = f"indexing: {progress[0]} of {progress[1]} files" if progress else ""
        lines.append("indexing paused" if s.paused else done_queued)
    elif state.training is not None and state.training.state == TP.FAILED:
        lines.append(f"last training failed: {state.training.error or 'no reason given'}")
    if s.missing_watches:  # their files wait, pending: "indexing: 0 of 900" said nothing of why
        away = f" ({many(s.away)} of the counts, left out of searches)" if s.away else ""  # (said waiting, idle)
        lines.append(f"watch folders not there now: {', '.join(s.missing_watches)}{away}")
    if s.unwatched_folders:  # (new samples there are found minutes late, by a scan: `vibrary status` says why)
        lines.append(f"watched by scans only (the inotify limit): {', '.join(s.unwatched_folders)}")
    lines.append(f"models: {', '.join(_models(s)) or 'none active'}")
    lines += [f"searches read {old}'s tags until {new} has re-tagged the library" for old, new in stand_ins(s)]
    headline = lines[0].removeprefix("Vibrary: ")  # (capitalize() lowered the rest: "training darkpads")
    return View(icon, ring, "\n".join(lines), _menu(state, headline[:1].upper() + headline[1:]))


def stand_ins(status: pb.Status) -> list[tuple[str, str]]:
    """(old, new) of each version standing in for a new one: the status says them as "NAME@OLD for NAME@NEW"."""
    return [(old, new) for old, _, new in (pair.partition(" for ") for pair in status.standing_in)]


def retagging(status: pb.Status) -> str:
    """What of the pending files a re-tag holds: "0 indexed, 152 pending" read as a library wiped."""
    return f" ({status.retagging} tagged before, being re-tagged)" if status.retagging else ""


def _models(s: pb.Status) -> list[str]:
    """The active models, those that cannot tag (their file missing or damaged) said so: one left out read as
    none active, and `vibrary models activate` would not help."""
    unusable = [f"{m} (its file is missing or damaged)" for m in s.unusable_models]
    return [*s.models, *unusable, *(f"{m.partition(': ')[0]} (fails on audio)" for m in s.failing_models)]


def _shown_of(state: TrayState) -> str:
    """How many failures Recent errors lists, of how many: "(10)" read as all of them beside "300 new files"."""
    shown, failed = len(state.recent_errors), state.status.failed if state.status else 0
    return f"{shown} of {failed:,}" if failed > shown else str(shown)


def _training(state: TrayState) -> pb.TrainProgress | None:
    """The daemon's training, while it runs."""
    return state.training if state.training is not None and state.training.state in TRAINING_ACTIVE else None


def _cancellable(state: TrayState) -> bool:
    training = _training(state)
    return training is not None and training.state != TP.INSTALLING


def _menu(state: TrayState, headline: str) -> tuple[MenuItem, ...]:
    s = state.status
    up = state.running and s is not None
    paused = bool(s and s.paused)
    errors = tuple(
        MenuItem(f"error:{path}", f"{os.path.basename(path)}: {why}") for path, why in state.recent_errors
    ) or (MenuItem("", "(none)", enabled=False),)
    models = tuple(MenuItem("", m, enabled=False) for m in (_models(s) if s else ())) or (
        MenuItem("", "(none)", enabled=False),
    )
    return (
        MenuItem("", headline, enabled=False),
        SEPARATOR,
        MenuItem("resume" if paused else "pause", "Resume indexing" if paused else "Pause indexing", enabled=up),
        MenuItem("add_watch", "Add watch folder…", enabled=up),
        MenuItem("search", "Search tags…", enabled=up),
        MenuItem("open_home", "Open library folder"),
        MenuItem("errors", f"Recent errors ({_shown_of(state)})", enabled=up, children=errors),
        MenuItem("models", "Active models", enabled=up, children=models),
        # (a front end's training, its trainer out of reach perhaps, ran on with no way to stop it here; always
        # listed: the tray's menu is built once, its items updated in place. Not while installing: seconds)
        MenuItem("cancel_training", "Cancel training…", enabled=up and _cancellable(state)),
        SEPARATOR,
        MenuItem("start_daemon", "Start daemon", enabled=not state.running and not state.unanswered),
        MenuItem("quit", "Quit"),
    )
