"""The tray against a real daemon process: its icon, tooltip and menu follow what the daemon does.

Qt runs offscreen (QT_QPA_PLATFORM=offscreen, set here), where no system tray exists
(QSystemTrayIcon.isSystemTrayAvailable() is False): the QSystemTrayIcon object still holds its icon,
tooltip and menu, and those are what is checked, along with the pixels of the icon drawn for each state.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any Qt import: no display is needed or used
try:
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication, QMenu
except ImportError as e:  # the [tray] extra is optional
    pytest.skip(f"PySide6 is not installed (pip install -e '.[tray]'): {e}", allow_module_level=True)

from vibrary.clients import tray_state as ts
from vibrary.clients.tray import COLORS, SearchDialog, Tray, draw_icon
from vibrary.daemon import config
from vibrary.daemon.server import NO_TRAINING
from vibrary.daemon.suggest import Synonyms
from vibrary.proto import daemon_pb2 as pb

from tests.conftest import DaemonProcess, home_held, start_daemon, suspend, wait_for
from tests.synth import write_tone


@pytest.fixture(scope="module")
def qapp() -> QApplication:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    return app


@pytest.fixture
def tray(qapp: QApplication, model_home: Path) -> Iterator[Tray]:
    t = Tray(model_home)
    t.start()
    yield t
    t.stop()
    if t.started_daemon is not None and t.started_daemon.poll() is None:
        t.started_daemon.terminate()
        t.started_daemon.wait(timeout=30)


def wait_view(tray: Tray, ok: Callable[[ts.View], bool], timeout: float = 30.0) -> ts.View:
    """Run Qt's event loop until the tray shows what `ok` wants; fail with what it shows instead."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok(tray.view):
            return tray.view
        QTest.qWait(20)
    raise AssertionError(f"the tray still shows {tray.view.icon}: {tray.view.tooltip!r}")


def wait_notices(notices: list[ts.Notice], n: int, timeout: float = 30.0) -> None:
    """Run Qt's event loop until n notices have come (or the time is up: the test's assert says what came)."""
    end = time.monotonic() + timeout
    while len(notices) < n and time.monotonic() < end:
        QTest.qWait(20)


def showing(icon: ts.Icon, text: str = "") -> Callable[[ts.View], bool]:
    return lambda v: v.icon == icon and text in v.tooltip


def drop(folder: Path, names: list[str]) -> list[str]:
    """Tones written elsewhere and moved in all at once, as a file manager would."""
    staging = folder.parent / "staging"
    staged = [write_tone(staging / n, 200.0 * (i + 1), seconds=2.0) for i, n in enumerate(names)]
    for src in staged:
        shutil.move(src, folder / src.name)
    return [str(folder / n) for n in names]


def answer(dialog: SearchDialog, timeout: float = 30.0) -> list[str]:
    """Search, and run Qt's event loop until the answer is shown (it is asked in a thread: the GUI stays
    live meanwhile); the lines shown."""
    dialog.search()
    end = time.monotonic() + timeout

    def shown() -> list[str]:
        return [dialog.results.item(n).text() for n in range(dialog.results.count())]

    while shown() == [SearchDialog.SEARCHING] and time.monotonic() < end:
        QTest.qWait(20)
    return shown()


def menu_texts(menu: QMenu) -> dict[str, bool]:
    return {a.text(): a.isEnabled() for a in menu.actions() if a.text()}


def icon_colour(tray: Tray) -> str:
    """The colour at the top of the disc of the icon the tray shows now."""
    image = tray.icon.icon().pixmap(64, 64).toImage()
    return str(image.pixelColor(32, 8).name())


def test_tray_icon_and_tooltip_follow_the_daemon(tray: Tray, model_home: Path, tmp_path: Path) -> None:
    assert tray.view.icon == ts.Icon.NOT_RUNNING  # nothing started yet
    seen: list[ts.View] = []
    tray.changed.connect(seen.append)
    # a file still being written waits until its writer closes it (or this long): that holds the daemon
    # in "indexing" for exactly as long as this test wants
    config.Settings(settle_s=60).save(model_home)
    d: DaemonProcess = start_daemon(model_home)
    try:
        v = wait_view(tray, showing(ts.Icon.IDLE))
        assert v.tooltip.splitlines()[:2] == ["Vibrary: idle", "0 indexed, 0 pending, 0 failed"]
        assert tray.icon.toolTip() == v.tooltip and icon_colour(tray) == COLORS[ts.Icon.IDLE]
        assert menu_texts(tray.menu)["Start daemon"] is False

        library = tmp_path / "library"
        library.mkdir()
        tray.add_watch(str(library))  # what the folder picker does with the chosen folder
        wave = write_tone(tmp_path / "held.wav", 440.0).read_bytes()
        with open(library / "held.wav", "wb") as held:  # a copy still in progress
            held.write(wave)
            held.flush()
            v = wait_view(tray, showing(ts.Icon.INDEXING, "indexing: 0 of 1 files"))
            assert v.progress == 0.0 and icon_colour(tray) == COLORS[ts.Icon.INDEXING]
            drop(library, [f"a{i}.wav" for i in range(5)])
            wait_view(tray, showing(ts.Icon.INDEXING, "indexing: 5 of 6 files\n5 indexed, 1 pending, 0 failed"))
        wait_view(tray, showing(ts.Icon.IDLE, "6 indexed, 0 pending, 0 failed"))

        search = tray.open_search()
        search.query.setText("low|mid|high -nosuchtag")  # (the typo was said only when nothing matched)
        said, *lines = answer(search)
        assert said == "6 files found: no active model tags 'nosuchtag'; `vibrary models list` shows their tags"
        found = {line.split()[0] for line in lines}
        assert found == {str(library / n) for n in ["held.wav", *(f"a{i}.wav" for i in range(5))]}
        search.query.setText("low|mid|high")
        assert sorted(answer(search)) == sorted(lines)
        search.query.setText("nosuchtag")  # (said "no files match", as of a library with no such sound)
        typo = "no files match: no active model tags 'nosuchtag'; `vibrary models list` shows their tags"
        assert answer(search) == [typo]
        search.query.setText("hihg")
        assert "no active model tags 'hihg' (did you mean 'high'?)" in answer(search)[0]
        Synonyms.load(model_home).add(model_home, [("middle", "mid")])  # `vibrary synonyms add middle mid`
        search.query.setText("mid")
        mids = answer(search)
        search.query.setText("middle")  # a spelling of a tag finds it, as `vibrary search` reads it
        assert answer(search) == mids != ["no files match"]
        search.close()

        (library / "broken.wav").touch()  # an empty file cannot be read
        wait_view(tray, showing(ts.Icon.ERROR, "1 new file could not be read"))
        assert icon_colour(tray) == COLORS[ts.Icon.ERROR]
        wait_view(tray, lambda v: any(i.text == "Recent errors (1)" for i in v.menu))
        errors = next(a.menu() for a in tray.menu.actions() if a.text() == "Recent errors (1)")
        assert list(menu_texts(errors)) == ["broken.wav: empty file (0 bytes)"]
        errors.popup(tray.menu.pos())  # looking at them acknowledges them
        errors.hide()
        wait_view(tray, showing(ts.Icon.IDLE, "6 indexed, 0 pending, 1 failed"))

        tray.do("pause")  # asked off the GUI thread: shown once the daemon answers
        wait_view(tray, showing(ts.Icon.PAUSED))
        assert icon_colour(tray) == COLORS[ts.Icon.PAUSED]
        assert menu_texts(tray.menu)["Resume indexing"] is True
        drop(library, [f"b{i}.wav" for i in range(4)])
        wait_view(tray, showing(ts.Icon.PAUSED, "indexing paused (4 files waiting)"))

        tray.do("resume")
        wait_view(tray, lambda v: v.icon != ts.Icon.PAUSED)
        assert menu_texts(tray.menu)["Pause indexing"] is True
        wait_view(tray, showing(ts.Icon.IDLE, "10 indexed, 0 pending, 1 failed"))
        shown = [v.icon for v in seen]  # every change of what was shown, in order
        assert shown.index(ts.Icon.INDEXING) < shown.index(ts.Icon.ERROR) < shown.index(ts.Icon.PAUSED)

        d.stop(signal.SIGKILL)
        wait_view(tray, showing(ts.Icon.NOT_RUNNING, "daemon not running"))  # (its lock let go as it died)
        assert icon_colour(tray) == COLORS[ts.Icon.NOT_RUNNING]
        assert menu_texts(tray.menu)["Start daemon"] is True and menu_texts(tray.menu)["Pause indexing"] is False

        config.Settings(settle_s=0.2).save(model_home)  # the failed file is tried again at start-up
        d = start_daemon(model_home)  # started elsewhere: the tray sees its socket appear
        wait_view(tray, showing(ts.Icon.IDLE, "10 indexed, 0 pending, 1 failed"))
        again = Tray(model_home)  # the next login's tray: the failure was looked at already
        again.start()
        try:
            wait_view(again, showing(ts.Icon.IDLE, "10 indexed, 0 pending, 1 failed"))
        finally:
            again.stop()
        (library / "broken.wav").unlink()  # mended; then another fails, and is shown new at the next login too
        wait_view(tray, showing(ts.Icon.IDLE, "10 indexed, 0 pending, 0 failed"))
        (library / "other.wav").touch()
        wait_view(tray, showing(ts.Icon.ERROR, "1 new file could not be read"))
        again = Tray(model_home)
        again.start()
        try:
            wait_view(again, showing(ts.Icon.ERROR, "1 new file could not be read"))
        finally:
            again.stop()
    finally:
        d.stop()


def test_a_daemon_that_stops_answering_shows_as_not_running(tray: Tray, model_home: Path) -> None:
    """A daemon suspended (^Z in its terminal) or hung: the event stream waited on it silent, and the tray
    showed it idle, green, for as long as it was. Pings unanswered end the stream; it comes back after."""
    d = start_daemon(model_home)
    try:
        wait_view(tray, showing(ts.Icon.IDLE))
        suspend(d.proc.pid)
        try:
            notices: list[ts.Notice] = []
            tray.notified.connect(notices.append)
            tray.do("pause")  # the menu's action waited on the GUI thread, the tray frozen meanwhile
            assert notices == []
            wait_notices(notices, 1)
            assert [n.warning for n in notices] == [True], notices  # (it timed out)
            wait_view(tray, showing(ts.Icon.NOT_RUNNING, f"(pid {d.proc.pid}) is suspended"), timeout=45)
            assert menu_texts(tray.menu)["Start daemon"] is False  # one more would not start beside it
        finally:
            d.proc.send_signal(signal.SIGCONT)
        wait_view(tray, showing(ts.Icon.IDLE), timeout=45)
        suspend(d.proc.pid)
        try:
            said = len(notices)
            tray.add_watch(str(model_home))  # (a watch may take minutes: its connection waited as long)
            wait_notices(notices, said + 1, timeout=20)
            assert "is suspended" in notices[-1].text, notices
            tray.add_watch(str(model_home))  # and a quit while a call waits for it
            wait_for(lambda: any(t.name.startswith("tray-call") for t in threading.enumerate()))
            tray.stop()
            wait_for(lambda: not any(t.name.startswith("tray-call") for t in threading.enumerate()), timeout=3)
        finally:
            d.proc.send_signal(signal.SIGCONT)
    finally:
        d.stop()


def test_a_daemon_that_holds_the_home_and_does_not_answer_is_not_offered_a_twin(tray: Tray, model_home: Path) -> None:
    """One starting or hung showed "daemon not running" and offered to start one, which would be refused."""
    wait_view(tray, showing(ts.Icon.NOT_RUNNING))
    assert menu_texts(tray.menu)["Start daemon"] is True
    with home_held(model_home) as pid:
        tray.link.poke()
        wait_view(tray, showing(ts.Icon.NOT_RUNNING, f"daemon not answering: the daemon (pid {pid}) does not answer"))
        assert menu_texts(tray.menu)["Start daemon"] is False
    tray.link.poke()
    wait_view(tray, showing(ts.Icon.NOT_RUNNING, "daemon not running"))
    assert menu_texts(tray.menu)["Start daemon"] is True


def test_cancel_training_from_the_tray_asks_first_then_the_daemon(
    tray: Tray, model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The menu's Cancel training, once confirmed, is the daemon's CancelTraining (here none runs: the daemon's
    answer is said). The item is there whether a training runs or not: the menu is built once, and an item
    that came and went with a training shifted every item after it (Quit started a daemon)."""
    from PySide6.QtWidgets import QMessageBox

    d = start_daemon(model_home)
    try:
        wait_view(tray, showing(ts.Icon.IDLE))
        texts = list(menu_texts(tray.menu))
        for state in (pb.TrainProgress.TRAINING, pb.TrainProgress.SUCCEEDED):
            tray.set_state(replace(tray.state, training=pb.TrainProgress(state=state, dataset="mine")))
            assert list(menu_texts(tray.menu))[1:] == texts[1:] and texts[-1] == "Quit"  # (the headline says it)
            assert menu_texts(tray.menu)["Cancel training…"] is (state == pb.TrainProgress.TRAINING)
        notices: list[ts.Notice] = []
        tray.notified.connect(notices.append)
        answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
        monkeypatch.setattr(QMessageBox, "question", lambda *_: answers.pop(0))
        tray.do("cancel_training")  # not confirmed: nothing asked of the daemon
        tray.do("cancel_training")
        wait_notices(notices, 1)
        assert [(n.text, n.warning) for n in notices] == [(NO_TRAINING, True)] and answers == []
    finally:
        d.stop()


def test_start_daemon_from_the_tray(tray: Tray, model_home: Path) -> None:
    wait_view(tray, showing(ts.Icon.NOT_RUNNING))
    tray.do("start_daemon")
    first = tray.started_daemon
    tray.do("start_daemon")  # clicked again before the first one answers
    assert tray.started_daemon is first
    v = wait_view(tray, showing(ts.Icon.IDLE), timeout=60)
    assert "models: bands@1" in v.tooltip
    assert tray.started_daemon is not None
    tray.started_daemon.terminate()
    assert tray.started_daemon.wait(timeout=30) == 0
    wait_view(tray, showing(ts.Icon.NOT_RUNNING))


def test_a_daemon_ended_by_a_signal_is_said_so_not_by_its_logs_last_line(tray: Tray, model_home: Path) -> None:
    """`kill -9` of a daemon the tray started: the notice gave its log's last line, of any time before ("training
    on keys succeeded"), as the reason; a real-time signal, which has no name, raised and lost the notice."""
    import subprocess
    import sys

    config.log_path(model_home).write_text("2026-12-07 12:00:00 INFO vibrary.daemon: training on keys succeeded\n")
    tray._log_before = 0
    notices: list[ts.Notice] = []
    tray.notified.connect(notices.append)
    for sig, said in (
        (signal.SIGKILL, "ended by SIGKILL"),
        (signal.SIGSEGV, "crashed (SIGSEGV)"),
        (signal.SIGRTMIN + 2, ""),
    ):
        with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as child:
            child.send_signal(sig)
            child.wait(timeout=30)
            tray.started_daemon = child
            tray._on_down("")
        said = said or f"ended by signal {int(signal.SIGRTMIN) + 2}"
        assert notices[-1].title == "Daemon stopped" and said in notices[-1].text, notices[-1].text
        assert "training on keys" not in notices[-1].text


def test_a_daemon_just_started_from_the_menu_is_starting_not_hung(tray: Tray) -> None:
    """Every start from the menu showed "daemon not answering: the daemon (pid N) does not answer … starting,
    busy or hung; … stop it (`kill N`)" for a moment: advice to kill the daemon the tray had just started."""
    import subprocess
    import sys

    hung = "the daemon (pid 7) does not answer: it is starting, busy or hung; stop it (`kill 7`)"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as starting:
        try:
            tray.started_daemon, tray._started_at = starting, time.monotonic()
            tray._on_down(hung)
            assert "it is starting (started from this menu a moment ago)" in ts.view(tray.state).tooltip
            tray._started_at -= 60  # long since: not answering is said as it is
            tray._on_down(hung)
            assert "kill 7" in ts.view(tray.state).tooltip
        finally:
            starting.kill()
            tray.started_daemon = None


def test_a_daemon_the_tray_cannot_start_says_why(tray: Tray, model_home: Path) -> None:
    """Its stderr went nowhere, and the notice said "see daemon.log", where a daemon that never started
    writes nothing."""
    notices: list[ts.Notice] = []
    tray.notified.connect(notices.append)
    wait_view(tray, showing(ts.Icon.NOT_RUNNING))
    for config_json, why in (('{"workerz": 2}', "unknown settings ['workerz']"), (None, "Is a directory")):
        if config_json is None:  # not JSON at all: a folder (an OSError, logged too, not an earlier line)
            (model_home / "config.json").unlink()
            (model_home / "config.json").mkdir()
        else:
            (model_home / "config.json").write_text(config_json)
        notices.clear()
        tray.do("start_daemon")
        end = time.monotonic() + 60
        while not notices and time.monotonic() < end:
            QTest.qWait(50)
        assert [n.title for n in notices] == ["Daemon stopped"] and notices[0].warning
        assert why in notices[0].text, notices[0].text


def test_every_state_has_its_own_icon(qapp: QApplication) -> None:
    images = {icon: draw_icon(icon, 0.5, 32).toImage() for icon in ts.Icon}
    distinct = {bytes(img.constBits()) for img in images.values()}
    assert len(distinct) == len(ts.Icon)
    half, full = draw_icon(ts.Icon.INDEXING, 0.5, 32).toImage(), draw_icon(ts.Icon.INDEXING, 1.0, 32).toImage()
    assert bytes(half.constBits()) != bytes(full.constBits())


def test_training_and_installed_models_notify(tray: Tray, model_home: Path, tmp_path: Path) -> None:
    """Events as the daemon sends them, through the same signal the event stream uses."""
    notices: list[ts.Notice] = []
    tray.notified.connect(notices.append)
    d = start_daemon(model_home)
    try:
        wait_view(tray, showing(ts.Icon.IDLE))
        training = pb.TrainProgress(state=pb.TrainProgress.TRAINING, dataset="mytags", epoch=2, epochs=8)
        tray.link.received.emit(pb.Event(kind=pb.Event.TRAINING_PROGRESS, training=training))
        v = wait_view(tray, showing(ts.Icon.TRAINING, "training mytags: epoch 2 of 8"))
        assert v.progress == 0.25 and icon_colour(tray) == COLORS[ts.Icon.TRAINING]
        done = pb.TrainProgress(state=pb.TrainProgress.SUCCEEDED, dataset="mytags", model="mytags@1")
        tray.link.received.emit(pb.Event(kind=pb.Event.TRAINING_FINISHED, training=done))
        tray.link.received.emit(pb.Event(kind=pb.Event.MODEL_INSTALLED, model="mytags@1"))
        wait_view(tray, showing(ts.Icon.IDLE))
        assert [n.title for n in notices] == ["Training finished", "Model installed"]

        tray.add_watch(str(tmp_path / "missing"))  # a folder gone since it was picked
        wait_notices(notices, 3)  # (asked off the GUI thread)
        assert notices[-1].warning and "no such folder" in notices[-1].text
        (tmp_path / "lib" / "drums").mkdir(parents=True)
        tray.add_watch(str(tmp_path / "lib"))
        wait_notices(notices, 4)
        assert (notices[-1].title, notices[-1].warning) == ("Watch folder added", False)
        tray.add_watch(str(tmp_path / "lib" / "drums"))  # inside it: the CLI said so, the tray nothing at all
        wait_notices(notices, 5)
        assert notices[-1].warning and f"{tmp_path / 'lib' / 'drums'} is inside {tmp_path / 'lib'}" in notices[-1].text
    finally:
        d.stop()


def test_a_search_waiting_for_the_daemon_leaves_the_tray_live(qapp: QApplication, model_home: Path) -> None:
    """Asked on the GUI thread, a slow answer froze the icon and its menu for up to the call's deadline; here
    the daemon is suspended (^Z), and says so once the deadline passes."""
    import os
    import signal

    from vibrary.daemon import config, pidlock

    d = start_daemon(model_home)
    pid = pidlock.holder(config.lock_path(model_home))
    assert pid is not None
    dialog = SearchDialog(model_home)
    suspend(pid)
    try:
        dialog.query.setText("low")
        dialog.search()  # returns at once
        assert [dialog.results.item(n).text() for n in range(dialog.results.count())] == [SearchDialog.SEARCHING]
        [said] = answer(dialog)
        assert said == f"error: the daemon (pid {pid}) is suspended: `kill -CONT {pid}` resumes it"
    finally:
        os.kill(pid, signal.SIGCONT)
        dialog.close()
        d.stop()


def test_search_dialog_says_what_is_wrong_instead_of_searching(
    qapp: QApplication, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialog = SearchDialog(home)

    def results(query: str) -> list[str]:
        dialog.query.setText(query)
        return answer(dialog)

    assert results("OR kick") == ["error: OR needs a tag on each side"]
    assert results("   ") == ["error: type a tag to search for, e.g. kick -acoustic snare|clap"]
    [no_daemon] = results("kick")
    assert no_daemon.startswith("error: no daemon answers")
    raised: list[object] = []  # (what a Qt slot raises reaches sys.excepthook, not the caller)
    monkeypatch.setattr(sys, "excepthook", lambda *exc: raised.append(exc))
    dialog.results.itemDoubleClicked.emit(dialog.results.item(0))  # no file: nothing to open
    assert raised == []
    guess = pb.Tag(model="moods", tag="dark", score=1.0, unfamiliar=True)  # shown first, as a plain tag
    dialog.show_answer(dialog._asked, [pb.FileTags(path="/k.wav", tags=[guess, pb.Tag(model="demo", tag="kick")])])
    assert dialog.results.item(0).text() == "/k.wav    kick 0.00, dark? 1.00"
    dialog.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_the_tray_ends_on_a_logout_or_a_closed_terminal(home: Path, sig: int) -> None:
    """A logout's SIGTERM, a closed terminal's SIGHUP: the tray went on (the signal lost in a Qt slot) with both
    ignored from then on, and passed that on to a daemon it started, which `vibrary daemon stop` then could not
    stop. It quits, and cleanly."""
    env = {**os.environ, "VIBRARY_HOME": str(home), "QT_QPA_PLATFORM": "offscreen"}
    command = [sys.executable, "-m", "vibrary.clients.cli", "tray"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            time.sleep(3)  # (started: Qt's loop runs, but on a busy machine it may still be loading)
            assert proc.poll() is None
            proc.send_signal(sig)
            assert proc.wait(timeout=20) in (0, 128 + sig)  # quit (or, still loading, ended as any command is)
        finally:
            proc.kill()
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
