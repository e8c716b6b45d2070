"""The tray's decisions, fed with the daemon's own proto messages: no display, no Qt needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from vibrary.clients import tray_state as ts
from vibrary.proto import daemon_pb2 as pb

from tests.conftest import vibrary

TP = pb.TrainProgress


def status(
    indexed: int = 0,
    pending: int = 0,
    failed: int = 0,
    paused: bool = False,
    models: tuple[str, ...] = ("bands@1",),
    **kw: object,
) -> pb.Status:
    return pb.Status(indexed=indexed, pending=pending, failed=failed, paused=paused, models=models, **kw)


def changed(**kw: object) -> pb.Event:
    return pb.Event(kind=pb.Event.STATUS_CHANGED, status=status(**kw))  # type: ignore[arg-type]


def feed(state: ts.TrayState, *events: pb.Event) -> tuple[ts.TrayState, list[ts.Notice]]:
    notices: list[ts.Notice] = []
    for e in events:
        state, new = ts.apply(state, e)
        notices += new
    return state, notices


def menu(v: ts.View) -> dict[str, ts.MenuItem]:
    return {item.action: item for item in v.menu if item.action not in ("", "-")}


def test_not_running_offers_only_to_start_the_daemon() -> None:
    v = ts.view(ts.TrayState())
    assert (v.icon, v.tooltip) == (ts.Icon.NOT_RUNNING, "Vibrary: daemon not running")
    enabled = {a for a, item in menu(v).items() if item.enabled}
    assert enabled == {"start_daemon", "open_home", "quit"}
    up, _ = feed(ts.TrayState(), changed())
    assert not menu(ts.view(up))["start_daemon"].enabled and menu(ts.view(up))["pause"].enabled
    assert ts.view(ts.disconnected(up)).icon == ts.Icon.NOT_RUNNING
    # one there that does not answer: said why, and no Start daemon (one more would not start beside it)
    why = "the daemon (pid 7) is suspended: `kill -CONT 7` resumes it"
    v = ts.view(ts.disconnected(up, why))
    assert (v.icon, v.tooltip) == (ts.Icon.NOT_RUNNING, f"Vibrary: daemon not answering: {why}")
    # the menu's line up to the reason's first colon (its remedy, and a socket's path, made it screen-wide)
    assert not menu(v)["start_daemon"].enabled
    assert v.menu[0].text == "Daemon not answering: the daemon (pid 7) is suspended"
    assert ts.view(feed(ts.disconnected(up, why), changed())[0]).icon == ts.Icon.IDLE  # back: forgotten


def test_indexing_counts_done_of_queued_from_when_the_work_began() -> None:
    state, _ = feed(ts.TrayState(), changed(indexed=10))
    v = ts.view(state)
    assert v.icon == ts.Icon.IDLE and v.tooltip.splitlines()[:2] == ["Vibrary: idle", "10 indexed, 0 pending, 0 failed"]

    state, _ = feed(state, changed(indexed=10, pending=5))
    v = ts.view(state)
    assert (v.icon, v.progress, v.tooltip.splitlines()[0]) == (ts.Icon.INDEXING, 0.0, "Vibrary: indexing: 0 of 5 files")
    state, _ = feed(state, changed(indexed=12, failed=1, pending=2))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: indexing: 3 of 5 files"
    retag, _ = feed(ts.TrayState(), changed(indexed=10), changed(indexed=7, pending=3, retagging=3))  # a model
    assert ts.view(retag).tooltip.splitlines()[0] == "Vibrary: re-tagging: 0 of 3 files"  # (found meanwhile)
    # "7 indexed, 3 pending" read as a library unindexed; the version standing in for the new one is said
    retag, _ = feed(retag, changed(indexed=7, pending=3, retagging=3, standing_in=["moods@17 for moods@18"]))
    lines = ts.view(retag).tooltip.splitlines()
    assert lines[1] == "7 indexed, 3 pending (3 tagged before, being re-tagged), 0 failed"
    assert "searches read moods@17's tags until moods@18 has re-tagged the library" in lines
    assert ts.view(state).progress == 0.6
    state, _ = feed(state, changed(indexed=12, failed=1, pending=4))  # more files dropped meanwhile
    assert ts.indexing_progress(state) == (3, 7)
    state, _ = feed(state, changed(indexed=13, failed=1, pending=0))
    assert ts.view(state).icon == ts.Icon.ERROR  # one file failed during the run
    state = ts.errors_seen(state)
    assert ts.view(state).icon == ts.Icon.IDLE
    state, _ = feed(state, changed(indexed=13, failed=1, pending=2))  # a new run counts from zero
    assert ts.indexing_progress(state) == (0, 2)
    assert ts.view(state).tooltip.endswith("models: bands@1")
    state, _ = feed(state, changed(indexed=15, failed=0, pending=0))  # the failed file mended, read fine
    assert ts.view(state).icon == ts.Icon.IDLE
    state, _ = feed(state, changed(indexed=15, failed=1, pending=0))  # another fails: new, though one was seen
    assert ts.view(state).icon == ts.Icon.ERROR


def test_folders_being_listed_are_said_while_nothing_else_is_going_on() -> None:
    state, _ = feed(ts.TrayState(), changed(indexed=3, scanning=2))
    v = ts.view(state)
    assert (v.icon, v.tooltip.splitlines()[0]) == (
        ts.Icon.IDLE,
        "Vibrary: looking for new files (2 folders being listed)",
    )
    state, _ = feed(state, changed(indexed=3, pending=4, scanning=2))  # what they found is said instead
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: indexing: 0 of 4 files"
    state, _ = feed(state, changed(indexed=7))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: idle"


def test_events_lost_bring_the_status_they_carry() -> None:
    """A tray too slow for its events is told so, with the status as it stands: it shows that."""
    state, _ = feed(ts.TrayState(), changed(indexed=3, pending=4))
    lost = pb.Event(kind=pb.Event.EVENTS_LOST, lost=5000, status=status(indexed=5000, pending=0))
    state, notices = feed(state, lost)
    shown = ts.view(state).tooltip.splitlines()[:2]
    assert notices == [] and shown == ["Vibrary: idle", "5000 indexed, 0 pending, 0 failed"]


def test_files_waiting_for_a_drive_say_which_folder_they_wait_for() -> None:
    state, _ = feed(ts.TrayState(), changed(indexed=3), changed(indexed=3, pending=900, missing_watches=["/media/x"]))
    lines = ts.view(state).tooltip.splitlines()
    assert lines[0] == "Vibrary: indexing: 0 of 900 files" and "watch folders not there now: /media/x" in lines
    state, _ = feed(state, changed(indexed=903, missing_watches=["/media/x"], away=40))  # nothing waits: said so
    lines = ts.view(state).tooltip.splitlines()
    assert (
        lines[0] == "Vibrary: idle"
        and "watch folders not there now: /media/x (40 files of the counts, left out of searches)" in lines
    )


def test_new_failures_show_while_files_wait_for_an_unplugged_drive() -> None:
    """A drive out for days kept the amber "waiting for /media/x" up, and files that failed meanwhile never
    turned the icon red (`vibrary status` listed them)."""
    gone = {"missing_watches": ["/media/x"], "waiting_for_watches": True}
    state, _ = feed(
        ts.TrayState(), changed(indexed=3, pending=12, **gone), changed(indexed=3, pending=12, failed=2, **gone)
    )
    v = ts.view(state)
    assert (v.icon, v.tooltip.splitlines()[0]) == (ts.Icon.ERROR, "Vibrary: 2 new files could not be read")


def test_a_training_not_yet_at_its_first_epoch_draws_an_empty_ring() -> None:
    """Loading, or waiting for the trainer, the ring was drawn whole, as a training at its last epoch is."""
    for t in (TP(state=TP.WAITING, dataset="keys"), TP(state=TP.TRAINING, dataset="keys", message="loading")):
        state, _ = feed(ts.TrayState(), changed(indexed=1, training=t))
        assert (ts.view(state).icon, ts.view(state).progress) == (ts.Icon.TRAINING, 0.0)
    installing = TP(state=TP.INSTALLING, dataset="keys", epoch=10, epochs=10)  # after the last epoch: whole
    assert ts.view(feed(ts.TrayState(), changed(indexed=1, training=installing))[0]).progress == 1.0


def test_a_drive_unplugged_mid_indexing_shows_as_waiting_for_it_not_indexing() -> None:
    """The daemon can read nothing but files under the missing folder: the blue "indexing: 0 of 4 files"
    ring stood for as long as the drive stayed unplugged."""
    gone = {"missing_watches": ["/media/x"], "waiting_for_watches": True}
    state, _ = feed(ts.TrayState(), changed(indexed=3, pending=5), changed(indexed=4, pending=4, **gone))
    v = ts.view(state)
    assert (v.icon, v.progress, v.tooltip.splitlines()[0]) == (
        ts.Icon.PAUSED,
        None,
        "Vibrary: waiting for /media/x (4 files pending)",
    )
    assert v.menu[0].text == "Waiting for /media/x (4 files pending)"  # (its case kept: it was lowered)
    state, _ = feed(state, changed(indexed=4, pending=1, paused=True))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: indexing paused (1 file waiting)"


def test_recent_errors_say_how_many_of_all_they_list() -> None:
    failed = [pb.FileTags(path=f"/lib/{i}.wav", error="x") for i in range(10)]
    state = ts.with_errors(feed(ts.TrayState(), changed(indexed=5, failed=300))[0], failed)
    assert menu(ts.view(state))["errors"].text == "Recent errors (10 of 300)"
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 300 new files could not be read"


def test_paused_shows_what_waits_and_offers_resume() -> None:
    state, _ = feed(ts.TrayState(), changed(indexed=3, pending=4, paused=True))
    v = ts.view(state)
    assert (v.icon, v.tooltip.splitlines()[0]) == (ts.Icon.PAUSED, "Vibrary: indexing paused (4 files waiting)")
    assert "pause" not in menu(v) and menu(v)["resume"].text == "Resume indexing"
    state = ts.with_status(state, status(indexed=3, pending=4))  # the reply to Resume
    v = ts.view(state)
    assert v.icon == ts.Icon.INDEXING and menu(v)["pause"].text == "Pause indexing"


def test_an_index_that_cannot_be_written_shows_as_an_error_with_why() -> None:
    why = "the index in /h cannot be written (database or disk is full); files wait, tried again every 30 s"
    state, _ = feed(ts.TrayState(), changed(indexed=3, pending=4, stalled=why))
    v = ts.view(state)
    assert (v.icon, v.tooltip.splitlines()[0]) == (ts.Icon.ERROR, f"Vibrary: indexing waits: {why}")
    no_model = "no usable active model; files wait for one"  # every model deactivated: a choice, not a fault
    state, _ = feed(ts.TrayState(), changed(indexed=3, pending=4, stalled=no_model, models=()))
    v = ts.view(state)
    assert (v.icon, v.tooltip.splitlines()[0]) == (ts.Icon.PAUSED, f"Vibrary: indexing waits: {no_model}")
    broken = changed(indexed=3, pending=4, stalled=no_model, models=(), unusable_models=["mine@2"])
    v = ts.view(feed(ts.TrayState(), broken)[0])  # active, its file damaged: a fault, and named
    assert v.icon == ts.Icon.ERROR and v.tooltip.splitlines()[-1] == "models: mine@2 (its file is missing or damaged)"
    assert [c.text for c in menu(v)["models"].children] == ["mine@2 (its file is missing or damaged)"]


def test_failures_listed_before_the_status_counts_them_were_seen() -> None:
    """The daemon's status snapshot may be taken as a file fails and sent after the failure's event: the
    tray lists the failure (asked for at that status) while the status still counts none. Looked at then, a
    status that counts it next is no new failure."""
    broken = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/c.wav", error="truncated"))
    state, _ = feed(ts.TrayState(), changed(indexed=6), broken, changed(indexed=6))
    state = ts.with_errors(state, [broken.file])
    assert ts.view(state).icon == ts.Icon.ERROR
    state = ts.errors_seen(state)
    assert ts.view(state).icon == ts.Icon.IDLE
    state, _ = feed(state, changed(indexed=6, failed=1))
    assert ts.view(state).icon == ts.Icon.IDLE
    state, _ = feed(state, changed(indexed=6, failed=2))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 1 new file could not be read"


def test_a_failure_looked_at_and_read_again_to_fail_as_before_is_not_new() -> None:
    """A failed file is read again when a plugin asks for its tags (or it changes): out of the count while it
    is, back when it fails as before. The dip lowered what was seen, and the same failure showed as new."""
    broken = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/c.wav", error="truncated"))
    state, _ = feed(ts.TrayState(), changed(indexed=6, failed=1))
    state = ts.errors_seen(ts.with_errors(state, [broken.file]))
    state, _ = feed(state, changed(indexed=6, failed=0, pending=1), broken, changed(indexed=6, failed=1))
    assert ts.view(state).icon == ts.Icon.IDLE
    other = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/d.wav", error="truncated"))
    state, _ = feed(state, changed(indexed=6, failed=1, pending=2), other, changed(indexed=6, failed=2))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 1 new file could not be read"

    # but what was not heard leaves the count alone to say: ten seen, mended while a pack is indexed, and
    # three new failures among events lost, or while the tray was not connected
    for unheard in ("lost", "reconnected"):
        state = ts.errors_seen(ts.with_status(ts.TrayState(), status(indexed=6, failed=10)))
        if unheard == "lost":
            state, _ = feed(state, pb.Event(kind=pb.Event.EVENTS_LOST, lost=9, status=status(failed=0, pending=500)))
        else:
            state, _ = feed(ts.disconnected(state), changed(failed=0, pending=500))
        state, _ = feed(state, pb.Event(kind=pb.Event.EVENTS_LOST, lost=9, status=status(failed=3, pending=400)))
        state, _ = feed(state, changed(indexed=500, failed=3))
        assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 3 new files could not be read", unheard


def test_new_failures_show_as_error_until_looked_at() -> None:
    state, _ = feed(ts.TrayState(), changed(indexed=5, failed=2))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 2 new files could not be read"
    failed = [pb.FileTags(path="/lib/b.wav", error="empty file (0 bytes)"), pb.FileTags(path="/lib/a.wav", error="x")]
    state = ts.with_errors(state, failed)
    errors = menu(ts.view(state))["errors"]
    assert errors.text == "Recent errors (2)"
    assert [(c.action, c.text) for c in errors.children] == [
        ("error:/lib/b.wav", "b.wav: empty file (0 bytes)"),
        ("error:/lib/a.wav", "a.wav: x"),
    ]
    state = ts.errors_seen(state)
    assert ts.view(state).icon == ts.Icon.IDLE
    late = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/b.wav", error="empty file (0 bytes)"))
    assert ts.view(feed(state, late)[0]).icon == ts.Icon.IDLE  # its event after the status that counted it
    state, _ = feed(state, changed(indexed=5, failed=3))
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 1 new file could not be read"
    state = ts.errors_seen(state)
    mended = pb.Event(kind=pb.Event.FILE_TAGGED, file=pb.FileTags(path="/lib/a.wav", state="indexed"))
    broken = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/c.wav", error="truncated"))
    for event in (mended, broken, broken, changed(indexed=6, failed=3)):  # one mended, one failed: 3 as before
        state, _ = feed(state, event)
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 1 new file could not be read"
    fixed = pb.Event(kind=pb.Event.FILE_TAGGED, file=pb.FileTags(path="/lib/c.wav", state="indexed"))
    state, _ = feed(state, fixed)  # and mended in its turn before anyone looked
    state, _ = feed(state, changed(indexed=7, failed=2))
    assert ts.view(state).icon == ts.Icon.IDLE
    for lost_news in (pb.Event(kind=pb.Event.EVENTS_LOST, lost=9, status=status(indexed=7, failed=2)), None):
        state, _ = feed(state, broken)  # failed, then mended in events the tray never heard
        state = ts.disconnected(state) if lost_news is None else feed(state, lost_news)[0]
        state = ts.with_status(state, status(indexed=8, failed=2))
        assert ts.view(state).icon == ts.Icon.IDLE  # the count says what is new from there
    state, _ = feed(state, broken)  # failed, then renamed (no event) and mended under its new name
    renamed = pb.Event(kind=pb.Event.FILE_TAGGED, file=pb.FileTags(path="/lib/c (1).wav", state="indexed"))
    state, _ = feed(state, renamed, changed(indexed=9, failed=2))
    assert ts.view(state).icon == ts.Icon.ERROR  # (nothing says yet that c.wav is mended)
    still = [pb.FileTags(path="/lib/b.wav", error="empty file (0 bytes)"), pb.FileTags(path="/lib/x.wav", error="x")]
    state = ts.with_errors(state, still)  # the two failures left, c.wav not among them
    assert ts.view(state).icon == ts.Icon.IDLE


def test_training_progress_finish_and_install_notifications() -> None:
    state, _ = feed(ts.TrayState(), changed(indexed=5, pending=3))
    progress = TP(state=TP.TRAINING, dataset="mytags", epoch=3, epochs=10, val_accuracy=0.5)
    state, notices = feed(state, pb.Event(kind=pb.Event.TRAINING_PROGRESS, training=progress))
    v = ts.view(state)
    assert notices == [] and (v.icon, v.progress) == (ts.Icon.TRAINING, 0.3)
    lines = v.tooltip.splitlines()
    assert lines[0] == "Vibrary: training mytags: epoch 3 of 10, accuracy 50%"
    assert menu(v)["cancel_training"].enabled  # a front end's training had no way to be stopped here
    installing = feed(state, changed(indexed=5, training=TP(state=TP.INSTALLING, dataset="mytags")))[0]
    assert not menu(ts.view(installing))["cancel_training"].enabled  # seconds, past undoing
    fit = ts.training_line(TP(state=TP.TRAINING, dataset="fx", epoch=1, epochs=1, message="fitting"))
    assert fit == "training fx: fitting the tags the base model knows"  # not "epoch 1 of 1" of one fit
    lost = "lost the trainer 40 s ago (connection refused); reconnecting to job 5e1"  # "epoch 4 of 600" read as frozen
    assert ts.training_line(TP(state=TP.TRAINING, dataset="x", epoch=4, epochs=600, message=lost)).endswith(f"; {lost}")
    queued = TP(state=TP.WAITING, dataset="x", message="queued: the trainer runs one training at a time")
    assert ts.training_line(queued) == "training x: queued: the trainer runs one training at a time"
    assert lines[2] == "indexing: 0 of 3 files"  # indexing goes on, and is still told

    done = TP(state=TP.SUCCEEDED, dataset="mytags", model="mytags@2", val_accuracy=0.875)
    state, notices = feed(
        state,
        pb.Event(kind=pb.Event.TRAINING_FINISHED, training=done),
        pb.Event(kind=pb.Event.MODEL_INSTALLED, model="mytags@2"),
        changed(indexed=8),
    )
    assert notices == [
        ts.Notice("Training finished", "mytags@2 is trained and installed, right on 88% of the held-out clips."),
        ts.Notice("Model installed", "mytags@2 is installed."),
    ]
    assert ts.view(state).icon == ts.Icon.IDLE and not menu(ts.view(state))["cancel_training"].enabled

    failed = TP(state=TP.FAILED, dataset="mytags", error="trainer unreachable")
    state, notices = feed(state, pb.Event(kind=pb.Event.TRAINING_FINISHED, training=failed))
    assert notices == [ts.Notice("Training failed", "Training of mytags failed: trainer unreachable", warning=True)]
    assert "last training failed: trainer unreachable" in ts.view(state).tooltip


def test_training_in_the_status_snapshot_is_shown_too() -> None:
    uploading = TP(state=TP.UPLOADING, dataset="moods", uploaded_bytes=50, upload_bytes=200)
    state, _ = feed(ts.TrayState(), changed(indexed=1, training=uploading))
    v = ts.view(state)
    assert (v.icon, v.progress) == (ts.Icon.TRAINING, 0.25)
    assert v.tooltip.splitlines()[0] == "Vibrary: training moods: uploading 25%"
    waiting = TP(state=TP.WAITING, dataset="moods")
    state, _ = feed(state, changed(indexed=1, paused=True, training=waiting))
    lines = ts.view(state).tooltip.splitlines()
    assert lines[0::2] == ["Vibrary: training moods: waiting for the trainer", "indexing paused"]
    state, _ = feed(state, changed(indexed=1, training=TP(state=TP.CANCELLED, dataset="moods")))
    assert ts.view(state).icon == ts.Icon.IDLE  # cancelled: no longer shown as training


def test_tray_without_a_graphical_session_says_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    proc = vibrary("tray", home=home, check=False)
    assert proc.returncode == 1 and "needs a graphical session" in proc.stderr


def test_tray_without_pyside6_says_so_first(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the [tray] extra (and a display) it said only that there was no display: mended, the next try
    said PySide6 was missing."""
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "PySide6.py").write_text("raise ImportError('No module named PySide6')\n")  # as if not installed
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = vibrary("tray", home=home, check=False)
    assert proc.returncode == 1 and "the tray needs PySide6" in proc.stderr, proc.stderr


def test_a_failure_renamed_stays_as_it_was_seen_or_new() -> None:
    """A renamed folder of failures the user had looked at came back as new ones (each new path a failure
    never seen), or said nothing of them: a failure moved is said with where it was, and keeps how it was seen."""
    seen = pb.FileTags(path="/lib/Pack/a.wav", error="truncated")
    state = ts.errors_seen(ts.with_errors(feed(ts.TrayState(), changed(indexed=6, failed=1))[0], [seen]))
    moved = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/Pack 2/a.wav", error="truncated"))
    moved.moved_from = seen.path
    gone = pb.Event(kind=pb.Event.FILE_REMOVED, file=pb.FileTags(path=seen.path))
    state, _ = feed(state, moved, gone, changed(indexed=6, failed=1))
    assert ts.view(state).icon == ts.Icon.IDLE and state.looked_at == {"/lib/Pack 2/a.wav"}
    new = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/b.wav", error="x"))
    state, _ = feed(state, new, changed(indexed=6, failed=2))
    moved = pb.Event(kind=pb.Event.FILE_FAILED, file=pb.FileTags(path="/lib/c.wav", error="x"), moved_from="/lib/b.wav")
    state, _ = feed(state, moved, pb.Event(kind=pb.Event.FILE_REMOVED, file=pb.FileTags(path="/lib/b.wav")))
    assert state.failed_since == {"/lib/c.wav"}  # new still, under its new name
    assert ts.view(state).tooltip.splitlines()[0] == "Vibrary: 1 new file could not be read"
