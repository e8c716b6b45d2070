"""`vibrary tray`: a system-tray icon that shows what the daemon is doing, through its gRPC API only.

The daemon's Events stream is followed in a background thread (it opens with a status snapshot and then
sends STATUS_CHANGED a few times a second at most, so nothing here polls); every message crosses to the
GUI thread as a Qt signal and goes through the pure state logic in tray_state.py. While no daemon
answers, the tray watches the home folder for the socket to appear (QFileSystemWatcher: inotify,
FSEvents or ReadDirectoryChangesW, whichever the platform has) with a slow back-off as a fallback, and
offers to start one. Only Qt and the standard library are used, so macOS and Windows work the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from PySide6.QtCore import QFileSystemWatcher, QObject, QPoint, QRectF, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QAction, QBrush, QColor, QDesktopServices, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QFileDialog,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)
from vibrary.daemon import atomic, config
from vibrary.daemon.folders import indexed_path
from vibrary.proto import daemon_pb2 as pb

from . import tray_state as ts
from .client import Client, ClientClosed, DaemonError, DaemonNotAnswering, DaemonNotRunning
from .daemon_commands import on_signals
from .query import QueryError, joined_as, parse_query, respell, synonyms, unknown_tags

log = logging.getLogger(__name__)

COLORS = {
    ts.Icon.IDLE: "#2e9b57",
    ts.Icon.INDEXING: "#2f7fd8",
    ts.Icon.TRAINING: "#8e44ad",
    ts.Icon.PAUSED: "#d99a16",
    ts.Icon.ERROR: "#d0342c",
    ts.Icon.NOT_RUNNING: "#8a8a8a",
}
T = TypeVar("T")
RECENT_ERRORS = 10  # how many failures the menu lists
SEEN_FILE = "tray.json"  # in the home: the failures the user has looked at
STARTING_S = 30.0  # a daemon started from the menu that does not answer yet is starting, not hung, this long
CALL_TIMEOUT_S = 5.0  # menu actions: the daemon answers these at once, or not at all
# a watch added lists every folder under it first (4 s for 100,000 on a local disk, more on a NAS): it timed out
# at 5 s and said "Deadline Exceeded" of a watch the daemon went on to add
ADD_WATCH_TIMEOUT_S = 300.0
FOLLOW_KEEPALIVE_MS = (10_000, 5_000)  # how soon a daemon that stopped answering shows as not running


# -- the icon ------------------------------------------------------------------------------------------
def draw_icon(icon: ts.Icon, progress: float | None, size: int = 64) -> QPixmap:
    """A coloured disc per state, with a white glyph; indexing and training carry a progress ring."""
    pm = QPixmap(size, size)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    colour = QColor(COLORS[icon])
    m = size * 0.06
    disc = QRectF(m, m, size - 2 * m, size - 2 * m)
    white = QColor("white")
    if icon == ts.Icon.NOT_RUNNING:  # hollow: nothing is there
        p.setPen(QPen(colour, size * 0.1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(disc.adjusted(size * 0.05, size * 0.05, -size * 0.05, -size * 0.05))
        p.drawLine(QPoint(int(size * 0.3), int(size * 0.7)), QPoint(int(size * 0.7), int(size * 0.3)))
        p.end()
        return pm
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QBrush(colour))
    p.drawEllipse(disc)
    c = size / 2
    if icon == ts.Icon.PAUSED:
        p.setBrush(QBrush(white))
        for x in (c - size * 0.15, c + size * 0.05):
            p.drawRect(QRectF(x, size * 0.3, size * 0.1, size * 0.4))
    elif icon == ts.Icon.ERROR:
        p.setBrush(QBrush(white))
        p.drawRect(QRectF(c - size * 0.05, size * 0.22, size * 0.1, size * 0.36))
        p.drawEllipse(QRectF(c - size * 0.06, size * 0.64, size * 0.12, size * 0.12))
    elif icon == ts.Icon.IDLE:  # a check mark
        p.setPen(QPen(white, size * 0.1, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        p.drawPolyline([QPoint(int(size * 0.3), int(size * 0.52)), QPoint(int(size * 0.45), int(size * 0.67))])
        p.drawPolyline([QPoint(int(size * 0.45), int(size * 0.67)), QPoint(int(size * 0.72), int(size * 0.36))])
    else:  # indexing / training: a ring, filled as far as the work has come
        ring = disc.adjusted(size * 0.2, size * 0.2, -size * 0.2, -size * 0.2)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor(255, 255, 255, 90), size * 0.1))
        p.drawEllipse(ring)
        p.setPen(QPen(white, size * 0.1, Qt.PenStyle.SolidLine, Qt.PenCapStyle.FlatCap))
        span = 360 if progress is None else max(0.05, progress) * 360
        p.drawArc(ring, 90 * 16, -int(span * 16))
    p.end()
    return pm


# -- the daemon, followed in a background thread ----------------------------------------------------------
class DaemonLink(QObject):
    """Follows one home's daemon: every Event, and `down` whenever no daemon answers. Signals are emitted
    from the background thread; Qt queues them to the receiver's (GUI) thread."""

    received = Signal(object)  # pb.Event
    errors = Signal(object)  # list[pb.FileTags], newest first
    down = Signal(str)  # why a daemon that is there does not answer; "": none runs

    def __init__(self, home: Path, max_backoff_s: float = 10.0) -> None:
        super().__init__()
        self.home = home
        self._max_backoff = max_backoff_s
        self._delay = 0.5  # before the next try to connect; doubles while nobody answers
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._thread = threading.Thread(target=self._run, name="tray-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        with self._lock:
            if self._client is not None:
                self._client.close()  # cancels the stream the thread is blocked on
        self._thread.join(timeout=10)

    def poke(self) -> None:
        """Something changed in the home folder: the daemon's socket may just have appeared."""
        self._poke.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            # a daemon suspended (^Z in its terminal) or hung showed idle, green, for as long as it was
            client = Client(home_dir=self.home, timeout=CALL_TIMEOUT_S, keepalive_ms=FOLLOW_KEEPALIVE_MS)
            with self._lock:
                if self._stop.is_set():  # stop() ran since the loop's check: it could not close this one
                    client.close()
                    return
                self._client = client
            why = ""  # not running, or stopped under us, or the tray quitting as it asked for recent errors
            try:
                self._follow(client)
            except (DaemonError, DaemonNotAnswering) as e:  # there, and suspended (its pings unanswered), hung,
                why = str(e)  # or refusing one more follower
            except (DaemonNotRunning, ClientClosed):
                pass
            except Exception:
                log.exception("unexpected error on the daemon's event stream")
            finally:
                with self._lock:
                    self._client = None
                client.close()
            if self._stop.is_set():
                return
            self.down.emit(why)
            poked = self._poke.wait(self._delay)
            self._poke.clear()
            self._delay = 0.5 if poked else min(self._delay * 2, self._max_backoff)

    def _follow(self, client: Client) -> None:
        """Recent errors are asked for again at a status whose count of failures changed, or that follows a
        file's failure (one mended and one failed leave the count as it was): at most as often as the daemon
        sends its status, four times a second, however many files fail."""
        failed, owed = -1, False
        for e in client.events():
            self._delay = 0.5  # connected: if it goes away, look again soon
            self.received.emit(e)
            owed = owed or e.kind == pb.Event.FILE_FAILED
            if e.kind in (pb.Event.STATUS_CHANGED, pb.Event.EVENTS_LOST) and (owed or e.status.failed != failed):
                failed, owed = e.status.failed, False
                self.errors.emit(client.failed(RECENT_ERRORS))


def _failures_seen(home: Path) -> int:
    """How many failures the user had looked at when a tray last showed Recent errors (0: none kept)."""
    try:
        return int(json.loads((home / SEEN_FILE).read_text())["failed_seen"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# -- the tray ----------------------------------------------------------------------------------------------
class Tray(QObject):
    """The icon, its menu and its notifications; `view` is what is shown now."""

    changed = Signal(object)  # ts.View, after every change of what is shown
    notified = Signal(object)  # ts.Notice, after every notification
    _replied = Signal(object)  # what to do on the GUI thread with a menu action's answer (_call)

    def __init__(self, home: Path | None = None) -> None:
        super().__init__()
        self.home = home or config.home()
        self.state = ts.TrayState(failed_seen=_failures_seen(self.home))
        self._seen_kept = self.state.failed_seen
        self.view = ts.view(self.state)
        self.started_daemon: subprocess.Popen[bytes] | None = None
        self._log_before = 0  # the size of the daemon's log when the tray started one
        self._started_at = 0.0  # when (time.monotonic())
        self.icon = QSystemTrayIcon()
        self.menu = QMenu()
        self.icon.setContextMenu(self.menu)
        self._actions: list[QAction] = []
        self._submenus: dict[int, tuple[QMenu, tuple[ts.MenuItem, ...]]] = {}
        self._icons: dict[tuple[ts.Icon, int], QIcon] = {}
        self._dialogs: list[QWidget] = []
        # menu actions ask the daemon here, one at a time in the order clicked: on the GUI thread, a daemon
        # suspended or busy froze the whole tray for as long as a call waited
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tray-call")
        self._asking: Client | None = None  # the client of the call being made, if any
        self._stopping = False
        self._replied.connect(lambda then: then())
        self.link = DaemonLink(self.home)
        self.link.received.connect(self._on_event)
        self.link.errors.connect(self._on_errors)
        self.link.down.connect(self._on_down)
        self._home_watch = QFileSystemWatcher([str(self.home)])
        self._home_watch.directoryChanged.connect(lambda _: self.link.poke())
        self._show(self.view)

    def start(self) -> None:
        self.icon.show()
        self.link.start()

    def stop(self) -> None:
        self.link.stop()
        self._stopping = True
        self._calls.shutdown(wait=False, cancel_futures=True)
        if (asking := self._asking) is not None:
            asking.close()
        self.icon.hide()

    # -- state in ----------------------------------------------------------------------------------------
    def set_state(self, state: ts.TrayState) -> None:
        """Show this state (the daemon link calls it with what the daemon said; scripts may too)."""
        self.state = state
        self._keep_seen()
        new = ts.view(state)
        if new != self.view:
            self.view = new
            self._show(new)
            self.changed.emit(new)

    def _on_event(self, event: pb.Event) -> None:
        state, notices = ts.apply(self.state, event)
        self.set_state(state)
        for n in notices:
            self.notify(n)

    def _on_errors(self, failed: list[pb.FileTags]) -> None:
        self.set_state(ts.with_errors(self.state, failed))

    def _on_down(self, why: str) -> None:
        proc = self.started_daemon
        if why and proc is not None and proc.poll() is None and time.monotonic() - self._started_at < STARTING_S:
            # ("does not answer … starting, busy or hung; … stop it (`kill 15431`)" of the daemon just started here)
            why = "it is starting (started from this menu a moment ago)"
        if self.state.running or self.state.status is not None or why != self.state.unanswered:
            self.set_state(ts.disconnected(self.state, why))
        if proc is not None and proc.poll() not in (None, 0):
            self.started_daemon = None
            log = config.log_path(self.home)
            why = _last_line(log, self._log_before) or "it wrote no reason in its log"
            if proc.returncode < 0:  # no last word: its log's last line was any old one ("training … succeeded")
                why = _ended_by(-proc.returncode)
            self.notify(ts.Notice("Daemon stopped", f"It exited with {proc.returncode}: {why} (see {log})", True))

    def notify(self, notice: ts.Notice) -> None:
        kind = QSystemTrayIcon.MessageIcon.Warning if notice.warning else QSystemTrayIcon.MessageIcon.Information
        self.icon.showMessage(notice.title, notice.text, kind, 8000)
        self.notified.emit(notice)

    # -- state out ---------------------------------------------------------------------------------------
    def _show(self, v: ts.View) -> None:
        self.icon.setIcon(self._icon(v.icon, v.progress))
        self.icon.setToolTip(v.tooltip)
        if not self._actions:
            self._build_menu(v.menu)
        for n, (action, item) in enumerate(zip(self._actions, v.menu, strict=True)):
            action.setText(item.text)
            action.setEnabled(item.enabled)
            action.setData(item.action)
            if n in self._submenus and self._submenus[n][1] != item.children:
                self._fill(self._submenus[n][0], item.children)
                self._submenus[n] = (self._submenus[n][0], item.children)

    def _icon(self, icon: ts.Icon, progress: float | None) -> QIcon:
        step = -1 if progress is None else round(progress * 24)
        key = (icon, step)
        if key not in self._icons:
            qicon = QIcon()
            for size in (16, 22, 32, 64):
                qicon.addPixmap(draw_icon(icon, None if step < 0 else step / 24, size))
            self._icons[key] = qicon
        return self._icons[key]

    def _build_menu(self, items: tuple[ts.MenuItem, ...]) -> None:
        """The entries are fixed; _show updates their text and state in place, so an open menu never
        flickers while indexing progresses."""
        for n, item in enumerate(items):
            if item.action == "-":
                action = self.menu.addSeparator()
            elif item.children:
                sub = QMenu(item.text, self.menu)
                action = self.menu.addMenu(sub)
                self._submenus[n] = (sub, ())
                if item.action == "errors":
                    sub.aboutToShow.connect(self._errors_looked_at)
            else:
                action = self.menu.addAction(item.text)
                action.triggered.connect(lambda _=False, a=action: self.do(str(a.data())))
            self._actions.append(action)

    def _errors_looked_at(self) -> None:
        self.set_state(ts.errors_seen(self.state))

    def _keep_seen(self) -> None:
        """The failures looked at, kept in the home so that a tray started again (at every login) does not
        show them as new; and kept as they are mended too: lowered in memory only, a failure after them was
        shown green by the next login's tray."""
        if self.state.failed_seen == self._seen_kept:
            return
        self._seen_kept = self.state.failed_seen  # (tried once: a home not writable warned 4 times a second)
        try:
            atomic.write(self.home / SEEN_FILE, json.dumps({"failed_seen": self.state.failed_seen}))
        except OSError as e:
            log.warning("could not keep the failures seen in %s: %s", self.home / SEEN_FILE, e)

    def _fill(self, menu: QMenu, children: tuple[ts.MenuItem, ...]) -> None:
        menu.clear()
        for child in children:
            action = menu.addAction(child.text)
            action.setEnabled(child.enabled)
            action.setData(child.action)
            action.triggered.connect(lambda _=False, a=action: self.do(str(a.data())))

    # -- actions -----------------------------------------------------------------------------------------
    def do(self, action: str) -> None:
        """What a menu click does; tests and scripts call it directly."""
        handlers: dict[str, Callable[[], object]] = {
            "pause": lambda: self._call(lambda c: c.pause(), self._answered_status),
            "resume": lambda: self._call(lambda c: c.resume(), self._answered_status),
            "cancel_training": self.cancel_training,
            "add_watch": self.add_watch,
            "search": self.open_search,
            "open_home": lambda: open_folder(self.home),
            "start_daemon": self.start_daemon,
            "quit": QApplication.quit,
        }
        if action.startswith("error:"):
            open_folder(Path(action.removeprefix("error:")).parent)
        elif action in handlers:
            handlers[action]()

    def _call(
        self, call: Callable[[Client], T], then: Callable[[T], object] = lambda _: None, timeout: float = CALL_TIMEOUT_S
    ) -> None:
        """Ask the daemon off the GUI thread; `then` gets the answer on it, a failure is notified."""

        def ask() -> None:
            try:
                with Client(home_dir=self.home, timeout=timeout) as c:
                    self._asking = c  # closed by stop(): a quit waited for a call of minutes (a big watch added)
                    if self._stopping:  # (stopped as this call began: nobody closed it)
                        return
                    answer = call(c)
            except ClientClosed:
                return
            except (DaemonNotRunning, DaemonError) as e:
                notice = ts.Notice("Vibrary", str(e), warning=True)
                self._replied.emit(lambda: self.notify(notice))
                return
            except Exception:  # (in a future nobody reads, it was lost without a word)
                log.exception("a menu action's call to the daemon failed")
                return
            finally:
                self._asking = None
            self._replied.emit(lambda: then(answer))

        self._calls.submit(ask)

    def _answered_status(self, status: pb.Status) -> None:
        self.set_state(ts.with_status(self.state, status))

    def cancel_training(self) -> None:
        """Asked first: a misclick ended hours of training, or its cloud instance."""
        asked = QMessageBox.question(None, "Cancel training", "Cancel the training the daemon runs?")
        if asked == QMessageBox.StandardButton.Yes:
            self._call(lambda c: c.cancel_training())

    def add_watch(self, folder: str = "") -> None:
        folder = folder or QFileDialog.getExistingDirectory(None, "Add a watch folder", str(Path.home()))
        if folder:  # the daemon's next status event shows it; one that does not answer is said in seconds, not
            # minutes (its connection waits as long as the call), the clicks after it waiting meanwhile
            def added(watches: list[str]) -> None:  # (a nested watch, which the CLI tells of, was added unsaid)
                nested = ts.nested_watch(indexed_path(folder), watches)
                self.notify(ts.Notice("Watch folder added", nested or f"{folder} is watched and indexed", bool(nested)))

            def add(c: Client) -> list[str]:
                c.status(CALL_TIMEOUT_S)
                watches = c.watches()
                c.add_watch(folder)
                return watches

            self._call(add, added, timeout=ADD_WATCH_TIMEOUT_S)

    def open_search(self) -> SearchDialog:
        dialog = SearchDialog(self.home)
        self._dialogs = [d for d in self._dialogs if d.isVisible()] + [dialog]
        dialog.show()
        dialog.raise_()
        return dialog

    def start_daemon(self) -> None:
        """`vibrary daemon` for this home, detached so it outlives the tray; its log is in the home."""
        if self.state.running or (self.started_daemon is not None and self.started_daemon.poll() is None):
            return  # a second click while the first daemon starts up would only start one that exits at once
        env = {**os.environ, "VIBRARY_HOME": str(self.home)}
        detach: dict[str, object] = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS}  # type: ignore[attr-defined]
            if sys.platform == "win32"
            else {"start_new_session": True}
        )
        log = config.log_path(self.home)
        self._log_before = log.stat().st_size if log.exists() else 0  # what an earlier daemon wrote: not its reason
        self._started_at = time.monotonic()
        self.started_daemon = subprocess.Popen(
            [sys.executable, "-m", "vibrary.clients.cli", "daemon"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # (what it says is in its log)
            **detach,  # type: ignore[call-overload]
        )
        self.link.poke()


def _ended_by(signum: int) -> str:
    """Why a daemon ended by a signal ended, as far as the signal tells (a real-time one has no name)."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"ended by signal {signum}: no reason of its own"
    if name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGABRT", "SIGFPE"):  # (native code: a decoder, onnxruntime)
        return f"crashed ({name}): no reason of its own"
    return f"ended by {name} (a kill, or the system out of memory): no reason of its own"


def _last_line(log: Path, since: int = 0) -> str:
    """The reason a daemon gave as it ended: the message of the last line it wrote in its log past `since`
    (the tray said "see daemon.log", where a daemon that never started, for a bad config.json, wrote nothing)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].split(": ", 1)[-1] if lines else ""  # (after the time, level and logger)


def open_folder(path: Path) -> None:
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))


class _Answers(QObject):
    """Carries a search's answer from its thread to the GUI thread. One for the process, never destroyed:
    a thread that held its dialog (or a QObject of it) could be the last to let go of one closed meanwhile,
    and a Qt object destroyed off the GUI thread is undefined behaviour."""

    done = Signal(object)  # (a weak reference to the dialog, the search's number, its files or an error line)

    def __init__(self) -> None:
        super().__init__()
        self.done.connect(self._deliver)  # a method of this GUI-thread object: queued, run on the GUI thread

    @Slot(object)
    def _deliver(self, answer: tuple[weakref.ref[SearchDialog], int, list[pb.FileTags | str]]) -> None:
        dialog = answer[0]()
        if dialog is not None:  # (closed and gone meanwhile: nobody to show it to)
            dialog.show_answer(answer[1], answer[2])


_answers: _Answers | None = None  # made by the first search, on the GUI thread


def _search(home: Path, dialog: weakref.ref[SearchDialog], asked: int, text: str) -> None:
    """A search, in a thread of its own; its answer goes through `_answers`. Words that spell a tag with spaces
    (`lead synth`) are that tag, and a synonym (hh) its tag, as `vibrary search` reads them. A word no model
    tags is said above what was found, as the CLI says it: `kick -snre` found kicks and hid the typo."""
    found: list[pb.FileTags | str]
    try:
        with Client(home_dir=home, timeout=CALL_TIMEOUT_S) as c:
            known = {tag for m in c.models() if m.active or m.serving for tag in m.classes}
            table = synonyms(home)
            all_of, none_of, _ = respell(*parse_query(text, joined_as(known, table)), known, table)
            found = list(c.search(all_of, none_of, limit=SearchDialog.LIMIT, best_first=True, timeout=CALL_TIMEOUT_S))
            if unknown := unknown_tags(known, all_of, none_of, ""):  # (a typo with no match is no sound either)
                first = "the first " if len(found) >= SearchDialog.LIMIT else ""  # (not "500 files" of thousands)
                found.insert(0, f"{first}{ts.many(len(found))} found{unknown}" if found else f"no files match{unknown}")
    except Exception as e:  # (any: a thread that dies leaves "searching…" for ever)
        found = [f"error: {e}"]
    assert _answers is not None
    _answers.done.emit((dialog, asked, found))


class SearchDialog(QDialog):
    """Type a query as for `vibrary search` (kick -acoustic snare|clap); double-click shows the file. The
    daemon is asked in a thread of its own: a slow answer (a best-first search of a big library, a busy
    daemon) froze the icon and its menu for up to the call's deadline."""

    LIMIT = 500
    SEARCHING = "searching…"

    def __init__(self, home: Path) -> None:
        super().__init__()
        self.home = home
        self._asked = 0  # the newest search's number: an older one's answer, come late, is not shown
        self.setWindowTitle("Vibrary: search tags")
        self.resize(640, 420)
        self.query = QLineEdit(placeholderText="kick -acoustic snare|clap")
        self.results = QListWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.query)
        layout.addWidget(self.results)
        self.query.returnPressed.connect(self.search)
        self.results.itemDoubleClicked.connect(self._open)

    def _open(self, item: QListWidgetItem) -> None:
        """A found file's folder; a line that is no file ("searching…", "no files match", an error) opens
        nothing (Path(None) raised in the Qt slot)."""
        path = item.data(Qt.ItemDataRole.UserRole)
        if path:
            open_folder(Path(path).parent)

    def search(self) -> None:
        self.results.clear()
        try:
            all_of, none_of = parse_query(self.query.text())
            if not all_of and not none_of:  # the daemon would list the whole library
                raise QueryError("type a tag to search for, e.g. kick -acoustic snare|clap")
        except QueryError as e:  # a Qt slot must not raise: say it here
            self.results.addItem(f"error: {e}")
            return
        global _answers
        if _answers is None:
            _answers = _Answers()
        self._asked += 1
        self.results.addItem(self.SEARCHING)
        args = (self.home, weakref.ref(self), self._asked, self.query.text())  # (read again there, tags known)
        threading.Thread(target=_search, args=args, daemon=True).start()

    def show_answer(self, asked: int, found: list[pb.FileTags | str]) -> None:
        """(On the GUI thread.) A text is a line of its own: an error, or what the search could not read."""
        if asked != self._asked:
            return
        self.results.clear()
        for f in found:
            if isinstance(f, str):
                self.results.addItem(f)
                continue
            # a guess ("dark? 1.00": the file sounds like none of its model's examples) after the rest
            shown = sorted(f.tags, key=lambda t: t.unfamiliar)[:3]  # (stable: best first, as the daemon sends them)
            tags = ", ".join(f"{t.tag}{'?' if t.unfamiliar else ''} {t.score:.2f}" for t in shown)
            item = QListWidgetItem(f"{f.path}    {tags}")
            item.setData(Qt.ItemDataRole.UserRole, f.path)
            self.results.addItem(item)
        if not found:
            self.results.addItem("no files match")


def run() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)  # closing the search dialog must not end the tray
    if not QSystemTrayIcon.isSystemTrayAvailable():
        print("vibrary tray: this desktop shows no system tray now; the icon appears when one starts", file=sys.stderr)
    tray = Tray()
    tray.start()
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    # a logout's SIGTERM and a closed terminal's SIGHUP end it as Ctrl-C does (the command line's own ending
    # raised inside a Qt slot, where it was printed and lost, and left both ignored: only SIGKILL ended it)
    on_signals(lambda *_: app.quit(), signal.SIGTERM, signal.SIGHUP)
    pulse = QTimer()  # lets Python run its signal handlers while Qt's loop waits
    pulse.start(500)
    pulse.timeout.connect(lambda: None)
    try:
        return int(app.exec())
    finally:
        tray.stop()
