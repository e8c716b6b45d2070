"""The commands that run the daemon or ask it how it is: `daemon` (in the foreground, or `daemon stop`),
`watch`, `status` (and `status --wait`), `pause`/`resume` and `tray`. `on_signals`, written for the daemon, is
here too: `train` and `trainer serve` stop on a kill or a closed terminal the same way."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vibrary.daemon import config
from vibrary.daemon.cloud import ENDING_SIGNALS
from vibrary.daemon.folders import indexed_path
from vibrary.daemon.rpc import is_loopback
from vibrary.proto import daemon_pb2 as pb

from .client import Client, DaemonCannotStart, DaemonNotAnswering, DaemonNotRunning
from .output import _CONTROL, FAILING, UNUSABLE, Bar, CommandError, _out, _shown, terminal_safe
from .tray_state import looking_for_files, many, nested_watch, retagging, stand_ins


# -- vibrary daemon ------------------------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    from vibrary.daemon.server import check_listening, serve
    from vibrary.daemon.service import (
        HOME_GONE,
        INDEX_DAMAGED,
        INDEX_GONE,
        SOCKET_GONE,
        AlreadyRunning,
        Daemon,
        check_home_free,
        models_said,
    )

    if args.action == "stop":  # a mistyped VIBRARY_HOME is no daemon to stop, and no home to make
        return _stop_daemon(args, config.home(create=False))
    home_dir = config.home()
    logging.raiseExceptions = False  # a log that cannot be written (a full disk) must not print a traceback a line
    try:
        handlers = [_terminal_log(), _file_log(home_dir)]
    except OSError as e:  # ("[Errno 30] Read-only file system: …/daemon.log")
        raise CommandError(config.disk_trouble(str(home_dir)) or str(e)) from None
    for handler in handlers:
        handler.setFormatter(_OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=handlers)
    try:
        settings = config.Settings.load(home_dir)
    except (ValueError, OSError) as e:  # (a config.json that is a folder, unreadable)
        raise _not_started(e, home_dir) from None
    if args.workers is not None:
        settings.workers = args.workers
    stop = threading.Event()
    heard: list[str] = []

    def stopping(signum: int, frame: object) -> None:
        heard.append(signal.Signals(signum).name)
        stop.set()

    # before anything starts: a signal between the socket's opening and the handlers ended it unlogged
    on_signals(stopping, *ENDING_SIGNALS)
    token = args.token or os.environ.get("VIBRARY_TOKEN", "")
    try:
        check_home_free(home_dir)
        check_listening(str(config.socket_path(home_dir)), args.listen, token)
        daemon = Daemon(home_dir, settings)
    except (AlreadyRunning, ValueError, OSError) as e:
        raise _not_started(e, home_dir) from None
    daemon.start()
    try:
        servers, listening = serve(daemon, str(config.socket_path(home_dir)), args.listen, token)
    except ValueError as e:
        daemon.stop()
        raise _not_started(e, home_dir) from None
    if args.listen and not is_loopback(args.listen):
        logging.getLogger("vibrary.daemon").warning(
            "the API on %s is not encrypted: the token and your library's paths cross the network in the clear;"
            " on a network you do not trust, listen on 127.0.0.1 and reach it through `ssh -L`",
            listening,
        )
    now = daemon.status()  # the active models, as status says them (the pipeline's: a version standing in too)
    serving = {"serving": str(config.socket_path(home_dir)), "listen": listening or None, "pid": os.getpid()}
    if args.json:  # a script that starts a daemon knows from this line that it answers
        said = {"home": str(home_dir), "models": now["models"], "standing_in": now["standing_in"]}
        print(json.dumps({**serving, **said}), flush=True)
    print(f"vibrary daemon serving {home_dir} (models: {models_said(now)})", file=sys.stderr, flush=True)
    socket = config.socket_path(home_dir)
    while not stop.wait(0.5):  # a timeout, so a signal delivered to another thread is still seen
        if daemon.ended.is_set():
            heard.append(daemon.ended_why)
            break
        if _gone(socket):  # deleted (a cleanup of the home): out of every command's reach, "starting, busy or
            # hung" for good; stopped (failed: a supervisor starts it again), `vibrary daemon` starts one that answers
            if _gone(home_dir):  # (`rm -rf` of the home takes the socket first: said as what it is)
                heard.append(HOME_GONE)
                break
            logging.getLogger("vibrary.daemon").error("its socket %s is gone (deleted?): the daemon stops", socket)
            heard.append(SOCKET_GONE)
            break
    logging.getLogger("vibrary.daemon").info("daemon stopping (%s)", heard[0] if heard else "asked")  # a stop said why
    daemon.events.close()  # front ends' Events streams end with OK, not cut off when the grace runs out
    for stopped in [s.stop(grace=2) for s in servers]:  # both at once: in turn, each took its whole grace
        stopped.wait()
    daemon.stop()
    if heard and heard[0] in (INDEX_GONE, INDEX_DAMAGED, SOCKET_GONE):  # failed: a supervisor starts it again
        raise CommandError(f"the daemon stopped: {heard[0]}")
    return 0


def _gone(path: Path) -> bool:
    """Whether a path is not there (an error looking at it, a network home's moment, is no answer)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _not_started(e: Exception, home_dir: Path) -> CommandError:
    """Why the daemon would not start, in its log file as well: one started in the background (by the tray,
    at login) has no terminal to say it in. The terminal hears it once, as the command's error. A disk error
    says which disk and what is wrong with it ("[Errno 28] No space left on device" named neither)."""
    said = (isinstance(e, OSError) and config.disk_trouble(str(home_dir))) or str(e)
    logging.getLogger("vibrary.daemon").error("not started: %s", said, extra={"file_only": True})
    return CommandError(said)


LOG_MOST_BYTES, LOGS_KEPT = 10_000_000, 2  # daemon.log, and daemon.log.1 and .2 before it: 30 MB at most


def _file_log(home_dir: Path) -> logging.Handler:
    """The daemon's log file, rotated: a daemon that runs for months, paused around every DAW session or
    switching models from a script, wrote to it for ever."""
    return _ReopenedLog(config.log_path(home_dir), maxBytes=LOG_MOST_BYTES, backupCount=LOGS_KEPT)


class _ReopenedLog(logging.handlers.RotatingFileHandler):
    """Opened anew when its file was deleted or moved away under it (a cleanup of the home, a log tool): the
    daemon wrote on to the deleted file, out of everyone's sight, until it stopped."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None:
            try:
                named, written = os.stat(self.baseFilename), os.fstat(self.stream.fileno())
                gone = (named.st_dev, named.st_ino) != (written.st_dev, written.st_ino)
            except OSError:
                gone = True
            if gone:
                self.stream.close()
                self.stream = None  # (opened again by emit, as after a rotation)
        super().emit(record)


class _OneLine(logging.Formatter):
    """Each message on one line, its control characters escaped (a traceback after it stays as it is): a
    link named with a newline and a log line's shape wrote a forged line ("… daemon stopped") into the log,
    and escape sequences in names reached the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_CONTROL)


def _terminal_log() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: not getattr(record, "file_only", False))
    return handler


def on_signals(handler: Callable[[int, Any], None], *signals: signal.Signals) -> None:
    """Handle these signals, except those the process was started to ignore: `nohup vibrary train &`
    must outlive its terminal, and a handler put in place of the ignoring undid that."""
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


def _stop_daemon(args: argparse.Namespace, home_dir: Path) -> int:
    """SIGTERM to the daemon that holds this home's lock, as Ctrl-C in its terminal would; waits until it
    has let go (a training of its own is suspended on the way out, to go on at the next start). One suspended
    (^Z, SIGSTOP) is continued to hear it: it waited 60 s, and said only that the daemon had not stopped."""
    import psutil
    from vibrary.daemon import pidlock

    pid = pidlock.holder(config.lock_path(home_dir))
    if pid is None:
        raise CommandError(f"no daemon is running for {home_dir}")
    os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.Error, OSError):
        if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while pidlock.holder(config.lock_path(home_dir)) == pid:
        if time.monotonic() > deadline:
            raise CommandError(f"the daemon (pid {pid}) has not stopped after 60 s")
        time.sleep(0.2)
    _out(args, {"stopped": pid, "home": str(home_dir)}, f"stopped the daemon (pid {pid}) of {home_dir}")
    return 0


# -- commands that talk to the daemon -------------------------------------------------------------------------
def cmd_watch(args: argparse.Namespace) -> int:
    with Client() as c:
        folder = indexed_path(args.dir) if args.action != "list" else ""  # as the daemon will hold it
        if args.action == "add":
            watches = c.watches()  # (said once added: `watch add /` said "holds 2 watch folders", then was refused)
            c.add_watch(args.dir)
            _say_of_added(folder, watches)
        elif args.action == "remove":
            c.remove_watch(args.dir)
        found = c.watch_list()
    paths, missing, unwatched = list(found.paths), list(found.missing), list(found.unwatched)
    lines = [
        f"{_shown(p)}  (missing: moved, renamed or unmounted? {MISSING_FIX})"
        if p in missing
        else f"{_shown(p)}  ({OVER_LIMIT}: {OVER_LIMIT_FIX})"
        if p in unwatched
        else _shown(p)
        for p in paths
    ]
    human = "\n".join(lines) or "(no watch folders)"
    if args.action != "list":  # the folders left alone read as the one just removed
        said = _shown(folder)  # as held (`./w/rel/.`, `x//`: as typed)
        done = "removed" if args.action == "remove" else "watched already:" if folder in watches else "added"
        human = f"{done} {said}; watch folders now:\n{human}"  # (one watched already was said "added" again)
    _out(args, {"watches": paths, "missing": missing, "unwatched": unwatched}, human)
    return 0


OVER_LIMIT = "not watched whole, an inotify limit (fs.inotify.max_user_watches or max_user_instances) reached"
OVER_LIMIT_FIX = (  # (which one, the daemon's log says; both raised, the advice holds either way)
    "changes in them are found by a scan every few minutes, not at once; raise the limits to watch them whole:"
    " `printf 'fs.inotify.max_user_watches=524288\\nfs.inotify.max_user_instances=1024\\n' | sudo tee"
    " /etc/sysctl.d/90-inotify.conf && sudo sysctl --system`"
)
MISSING_FIX = (
    "`vibrary watch add` it where it is now (not inside another watch folder: that one indexes it already), then"
    " `vibrary watch remove` the old path: no file is analysed again (deleted: `vibrary watch remove` it)"
)


def _say_of_added(folder: str, watches: list[str]) -> None:
    """What a producer should know of a folder just watched: inside another watch or holding some (harmless,
    but one more to remove), or not readable (it was added without a word, and nothing indexed)."""
    if nested := nested_watch(folder, watches):
        print(terminal_safe(f"vibrary: {nested}"), file=sys.stderr)
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except PermissionError as e:
        print(
            f"vibrary: {folder} cannot be listed ({e.strerror}): its files are indexed once it can be",
            file=sys.stderr,
        )
    except OSError:  # gone since, or a daemon elsewhere (TCP) whose folders these are: the daemon says so
        pass


def cmd_status(args: argparse.Namespace) -> int:
    with Client() as c:
        s = _once_up(c) if args.wait else c.status()
        if args.wait:
            _wait_idle(c, s.pending)
            s = c.status()
        # which ones, and why: the count alone sends people looking (the newest 5; with --failed, all of them)
        newest = c.failed(limit=s.failed if args.failed else NEWEST_FAILURES) if s.failed else []
    obj = {
        "indexed": s.indexed,
        "pending": s.pending,
        "retagging": s.retagging,  # of the pending, those read before: searchable by the tags they had
        "failed": s.failed,
        "models": [ref.partition("@")[0] for ref in s.models],  # names, as shared/interfaces.md has them
        "model_versions": list(s.models),  # NAME@VERSION
        "unusable_models": list(s.unusable_models),  # active, but their file is missing or damaged
        "failing_models": list(s.failing_models),  # "NAME@V: error": set aside, they failed on every file
        "standing_in": list(s.standing_in),  # "NAME@OLD for NAME@NEW": searches read the older one's tags meanwhile
        "queue_depth": s.queue_depth,
        "watches": list(s.watches),
        "missing_watches": list(s.missing_watches),  # not there now: renamed, moved or unmounted
        "away": s.away,  # of indexed, pending and failed: the files under missing_watches
        "unfollowed_links": [{"path": x.path, "target": x.target} for x in s.unfollowed_links],
        "unnamed_files": list(s.unnamed_files),  # names not UTF-8: left out until renamed (the first 100)
        "unnamed_count": s.unnamed_count,
        "home": s.home,
        "paused": s.paused,
        "stalled": s.stalled,  # why indexing waits: the index cannot be written (a full disk)
        "retrying": s.retrying,  # pending files read again a minute after a passing error (no file handles)
        "retry_reason": s.retry_reason,
        "unlisted_folders": list(s.unlisted_folders),  # cannot be listed: their files are not indexed
        "unwatched_folders": list(s.unwatched_folders),  # the inotify limit: changes found by scans only
        "scanning": s.scanning,  # folders being listed now: files found there are not pending yet
        "waiting_for_watches": s.waiting_for_watches,  # nothing can be read but files under missing_watches
        # since the daemon started: read from audio, from cached spectrograms, content already tagged
        "decoded": s.decoded,
        "from_cache": s.from_cache,
        "reused": s.reused,
    }
    again = retagging(s)
    human = (
        f"indexed {s.indexed}, pending {s.pending}{again}, failed {s.failed}{' (paused)' if s.paused else ''}\n"
        f"models: {', '.join(s.models) or 'none'}\nwatching: {', '.join(map(_shown, s.watches)) or 'nothing'}\n"
        # (counts of work, not of files: each re-tag for a model activated counts again)
        f"work since the daemon started: {s.decoded:,} read from audio, {s.from_cache:,} from cached spectrograms, "
        f"{s.reused:,} known by their content (each re-tag counts again)"
    )
    if s.scanning:
        human += f"\n{looking_for_files(s.scanning)}"
    if s.stalled:
        human += f"\nINDEXING WAITS: {s.stalled}"
    if s.unlisted_folders:
        human += "\nfolders that cannot be listed, their files not indexed (read within seconds once fixed):"
        human += "".join(f"\n  {_shown(folder)}" for folder in s.unlisted_folders[:5])
        human += f"\n  … and {len(s.unlisted_folders) - 5} more" if len(s.unlisted_folders) > 5 else ""
    if s.unwatched_folders:
        human += f"\n{OVER_LIMIT}: " + ", ".join(map(_shown, s.unwatched_folders)) + f"\n  {OVER_LIMIT_FIX}"
    if s.retrying:
        human += f"\nwaiting to be read again: {many(s.retrying)} ({s.retry_reason})"
    for old, new in stand_ins(s):
        human += f"\nsearches read {old}'s tags until {new} has re-tagged the library"
    for ref in s.unusable_models:
        human += f"\nmodel {ref} tags nothing: {UNUSABLE.format(ref=ref)}"
    for failing in s.failing_models:
        ref, _, error = failing.partition(": ")
        human += f"\nmodel {ref} tags nothing: {FAILING.format(ref=ref)} ({error})"
    if s.missing_watches:
        human += "\nmissing watch folders (moved, renamed or unmounted?): " + ", ".join(map(_shown, s.missing_watches))
        if s.away:  # (a folder moved into another watch: its files counted twice, failures listed twice, unsaid)
            human += f"\n  {many(s.away)} of the counts above are under them (as last seen; searches leave them out)"
        if s.waiting_for_watches:  # (the pending count alone said nothing of why it did not move)
            human += f"\n  the {many(s.pending)} pending wait for them: read once they are back"
        human += f"\n  {MISSING_FIX}"
    if s.unfollowed_links:
        human += "\nlinked folders, not followed (their files are not indexed; add where they lead as watches):"
        for x in s.unfollowed_links:
            target = _shown(x.target)
            command = target if target.startswith("$'") else shlex.quote(x.target)  # (pasted as one path)
            human += f"\n  {_shown(x.path)} → {target}: vibrary watch add {command}"
    if s.unnamed_count:
        human += f"\nleft out, their names are not valid UTF-8 (rename them to index them): {s.unnamed_count}"
        human += "".join(f"\n  {_shown(name)}" for name in s.unnamed_files[:5])
        human += f"\n  … and {s.unnamed_count - 5} more" if s.unnamed_count > 5 else ""
    if newest:
        obj["recent_failures"] = [{"path": f.path, "error": f.error} for f in newest]
        human += "\nfailures:" if args.failed else "\nnewest failures:"
        human += "".join(f"\n  {_shown(f.path)}: {f.error}" for f in newest)
        if s.failed > len(newest):  # (5 of 10 said, the others nowhere but in `tags` of the whole library)
            human += f"\n  … and {s.failed - len(newest)} more (`vibrary status --failed` lists them all)"
    if s.HasField("training"):  # the daemon's latest training job (Train RPC), running or how it ended
        from .tray_state import TRAINING_ACTIVE, training_line

        t = s.training
        state = pb.TrainProgress.State.Name(t.state).lower()
        obj["training"] = {
            "dataset": t.dataset,
            "state": state,
            "model": t.model,
            "epoch": t.epoch,
            "epochs": t.epochs,
            "val_accuracy": round(t.val_accuracy, 4),
            "accuracy_of": t.accuracy_of,  # once installed
            "error": t.error,
            "message": t.message,  # what it waits for (queued, the trainer out of reach), or its phase
        }
        line = training_line(t)
        if t.state not in TRAINING_ACTIVE:
            # ("training mine: cancelled (training cancelled)" read as running, beside a `vibrary train` that was)
            line = f"the daemon's last training ({t.model or t.dataset}): {state}"
        human += f"\n{line}{f' ({t.error})' if t.error and t.error != f'training {state}' else ''}"
    _out(args, obj, human)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause or resume indexing; the watcher keeps recording changes, so nothing is lost meanwhile. A second
    pause said "indexing paused" again, as if it had been running."""
    with Client() as c:
        was = c.status().paused
        s = c.pause() if args.command == "pause" else c.resume()
    state = {(True, True): "was paused already", (False, False): "was not paused"}.get((was, s.paused), "")
    state = state or ("paused" if s.paused else "resumed")
    _out(args, {"paused": s.paused, "pending": s.pending}, f"indexing {state} ({many(s.pending)} pending)")
    return 0


def cmd_tray(args: argparse.Namespace) -> int:
    try:  # first: without it, a producer who mended the display was told of it next
        from .tray import run
    except ImportError as e:
        raise CommandError(f"the tray needs PySide6: in Vibrary's clone, pip install -e '.[tray]' ({e})") from None
    graphical = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    if sys.platform not in ("darwin", "win32") and not any(os.environ.get(v) for v in graphical):
        # Qt would abort the process without a word a user could act on
        raise CommandError("the tray needs a graphical session: DISPLAY and WAYLAND_DISPLAY are unset")
    config.unix_target(config.socket_path(config.home()))  # a home no daemon can listen in: said here, once
    return run()


NEWEST_FAILURES = 5  # the failed files `status` lists (`--failed`: all of them)
BACK_S = 60.0  # how long `status --wait` waits for a daemon that stopped to come back (a restart, an upgrade)
STUCK_S = 10.0  # how long nothing moves, a watch folder missing, before `status --wait` says so and ends
START_S = 5.0  # how long `status --wait` waits for a daemon to take its home (`vibrary daemon &` just typed)


def _once_up(c: Client) -> pb.Status:
    """The status of a daemon that holds its home but does not answer yet, once it does, BACK_S at most: one just
    started opens its socket once every folder is watched (seconds for a big library), and `vibrary daemon &
    vibrary status --wait` failed at once. Once such a daemon was seen, one restarted meanwhile is waited for too."""
    since, starting = time.monotonic(), False
    while True:
        try:
            return c.status()
        except DaemonNotRunning as e:  # (DaemonNotAnswering among them)
            if not starting and isinstance(e, DaemonNotAnswering):
                starting = True
                print(f"vibrary: waiting up to {BACK_S:.0f} s for the daemon to answer ({e})", file=sys.stderr)
            waited = time.monotonic() - since  # (none holds the home yet: one just started may be loading Python)
            if waited > BACK_S or (not starting and waited > START_S) or isinstance(e, DaemonCannotStart):
                raise
            time.sleep(0.5)


def _wait_idle(c: Client, pending: int) -> None:
    """Progress bar until nothing is pending or being listed. A daemon that stops meanwhile is waited for a while: one
    restarted (by its start-at-login unit, after an upgrade) ended an hour's wait with "no daemon". Files
    under a watch folder not there now (a drive unplugged) wait for it: when nothing else moves for
    STUCK_S, that is said and the wait ends (it waited for ever)."""
    bar = Bar(total=pending, desc="indexing")
    first = c.status()
    done_before = first.indexed + first.failed  # a failed file is done too: the bar stopped short of them
    gone_since = None
    moved_at, last = time.monotonic(), (-1, -1)
    said_listing = said_retrying = False
    while True:
        try:
            s = c.status()
        except DaemonNotRunning as e:
            if isinstance(e, DaemonCannotStart):  # (its home's disk went read-only: none will come back there)
                bar.close()
                raise
            if gone_since is None:
                gone_since = time.monotonic()
                bar.write(f"the daemon stopped; waiting up to {BACK_S:.0f} s for it to start again", file=sys.stderr)
            if time.monotonic() - gone_since > BACK_S:
                bar.close()
                raise
            time.sleep(1.0)
            continue
        gone_since = None
        done = s.indexed + s.failed
        done_before = min(done_before, done)  # files removed meanwhile (a re-tag, a watch removed): never below 0
        bar.total = max(bar.total or 0, s.pending + (done - done_before))
        bar.n = done - done_before
        bar.refresh()
        bar.log()
        if s.pending == 0 and s.scanning == 0:  # (a folder still being listed may yet hold new files)
            if s.stalled and not s.models:  # every file read, none tagged: a search next would find nothing
                bar.close()
                raise CommandError(f"nothing is tagged while no model is active: {s.stalled}")
            break
        if (s.pending, done) != last:
            moved_at, last = time.monotonic(), (s.pending, done)
        elif s.pending == 0 and not said_listing and time.monotonic() - moved_at > STUCK_S:
            said_listing = True  # a big or slow drive (a NAS) takes a while; one that hangs, for ever
            bar.write(
                f"still {looking_for_files(s.scanning)}; Ctrl-C stops waiting",
                file=sys.stderr,
            )
        elif s.retrying and s.retrying == s.pending and not said_retrying and time.monotonic() - moved_at > STUCK_S:
            said_retrying = True  # each waits a minute between tries, up to an hour: the wait said nothing
            bar.write(
                f"{many(s.retrying)} to be read again in a minute: {s.retry_reason}; Ctrl-C stops waiting",
                file=sys.stderr,
            )
        elif s.missing_watches and s.pending > s.retrying and time.monotonic() - moved_at > STUCK_S:
            # (files waiting a minute after a passing error move on their own: not given up on)
            bar.close()
            raise CommandError(
                f"indexing waits with {many(s.pending)} pending, none read for {STUCK_S:.0f} s: watch folders not"
                f" there now ({', '.join(s.missing_watches)}) keep their files pending until they are back"
            )
        if s.paused:  # it would wait for ever
            bar.close()
            raise CommandError(f"indexing is paused with {many(s.pending)} pending: `vibrary resume` goes on")
        if s.stalled:  # no model to tag with, a full disk: it waits for the user too
            bar.close()
            raise CommandError(f"indexing waits with {many(s.pending)} pending: {s.stalled}")
        time.sleep(0.25)
    bar.close()
