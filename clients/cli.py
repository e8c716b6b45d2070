"""`vibrary`: the command line (contract in shared/interfaces.md).

Every command takes --json: one JSON object per line on stdout, human text and progress bars on stderr.
Exit status 0 on success (per-file errors are reported in the output), 1 when the command itself fails,
2 for usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import itertools
import json
import logging
import os
import shlex
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tqdm import tqdm
from vibrary.daemon import config, registry
from vibrary.daemon.cloud import ENDING_SIGNALS
from vibrary.daemon.folders import indexed_path
from vibrary.daemon.index import HIT_SCORE, NO_SUCH_PATH, Index, Job, Result, under
from vibrary.daemon.infer import ModelError
from vibrary.daemon.modelref import parse_ref
from vibrary.daemon.spectrogram import SILENT
from vibrary.proto import daemon_pb2 as pb

from .client import Client, DaemonError, DaemonNotRunning
from .query import QueryError, parse_query
from .tray_state import looking_for_files


class CommandError(Exception):
    """The command failed; str() is printed and the exit status is 1."""


class UsageError(CommandError):
    """The command line asks for something that cannot make sense; exit status 2, as argparse's own."""


def _out(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    print(json.dumps(obj) if args.json else human, flush=True)


# what a file read fine with no tags is (`note` in its line): silent, or, in the index, heard by no active model
SILENT_TAGS = f"no tags: {SILENT}"
NO_MODEL_TAGS = "no tags: no model is active (`vibrary models activate NAME`)"


def _file_line(
    path: str,
    tags: Iterable[tuple[str, str, float]],
    error: str | None,
    unfamiliar: Collection[str] = (),
    state: str = "indexed",
    no_tags: str = SILENT_TAGS,
) -> dict[str, Any]:
    """A file's line; `unfamiliar`: the models that find it like none of their examples (their tags are
    guesses, which searches leave out). A file read fine with no tags at all is silent (or no model is active:
    `no_tags`): its line says so in `note`, where a script reading `"tags": [], "error": null` could not tell
    it from a file not read yet."""
    tags = list(tags)
    best: dict[str, int] = {}  # each model's best tag, by its place: the first of a tie, as the index has it
    for i, (m, _, s) in enumerate(tags):
        if m not in best or s > tags[best[m]][2]:
            best[m] = i
    line = {
        "path": path,
        "tags": [
            # hit: the file has this tag, as a search finds it by default (its model's best, or a score of at
            # least 0.5; a guess of a model that finds the file unfamiliar is none): a script that checked
            # "no result carries the tag I excluded" read the low scores kept beside the hits as matches
            {
                "model": m,
                "tag": t,
                "score": round(float(s), 4),
                "unfamiliar": m in unfamiliar,
                "hit": m not in unfamiliar and (i == best[m] or s >= HIT_SCORE),
            }
            for i, (m, t, s) in enumerate(tags)
        ],
        "error": error or None,
    }
    if state == "indexed" and not line["tags"] and not error:
        line["note"] = no_tags
    return line


_CONTROL = {**{c: f"\\x{c:02x}" for c in (*range(32), 127)}, 9: "\\t", 10: "\\n", 13: "\\r"}


def _shown(path: str) -> str:
    """A file name as a person reads it on one line: a newline or tab in a name, which file systems allow,
    is written as `\\n`, `\\t` (`--json` keeps the name as it is)."""
    return path.translate(_CONTROL)


def _human_file(line: dict[str, Any], state: str = "indexed") -> str:
    """`state`: the index's (pending, indexed …); a file `vibrary tag` read here is indexed."""
    if line["error"] and state == "pending":  # a reason that passes (no file handles left)
        return f"{_shown(line['path'])}: waits to be read again ({line['error']})"
    if line["error"]:
        return f"{_shown(line['path'])}: ERROR {line['error']}"
    by_model: dict[str, list[str]] = {}
    for t in line["tags"]:  # "dark? 0.91": a guess, the file sounds like none of the model's examples
        by_model.setdefault(t["model"], []).append(f"{t['tag']}{'?' if t['unfamiliar'] else ''} {t['score']:.2f}")
    if len(by_model) > 1:  # each model's tags apart: two models can give the same tag
        return f"{_shown(line['path'])}: " + "; ".join(
            f"{model}: {', '.join(tags)}" for model, tags in by_model.items()
        )
    none = f"({line.get('note') or state})"  # one not read yet has no tags either
    return f"{_shown(line['path'])}: {', '.join(next(iter(by_model.values()), [none]))}"


def _index() -> tuple[Index, Any]:
    home_dir = config.home()
    index = Index(config.index_path(home_dir))
    registry.ensure_builtin(index, home_dir)
    return index, home_dir


# -- vibrary tag: right here, no daemon ------------------------------------------------------------------
def cmd_tag(args: argparse.Namespace) -> int:
    from vibrary.daemon.pipeline import Pipeline
    from vibrary.daemon.service import expand, load_models

    index, home_dir = _index()
    if args.model:
        try:
            rows = [index.model(*parse_ref(ref), active_first=True) for ref in args.model]
        except (KeyError, ValueError) as e:
            raise CommandError(str(e.args[0])) from None
    else:
        rows = index.active_models()
    models = load_models(index, rows)
    if not models:
        raise CommandError("no usable model: activate one with `vibrary models activate NAME`")
    names = {m.id: m.ref.split("@")[0] for m in models}
    settings = config.Settings.load(home_dir)
    absent = {p for p in args.paths if not os.path.lexists(p)}  # a typo is not a file "deleted or moved"
    files = list(expand(args.paths))
    if not files:
        print(f"vibrary: no audio files in {', '.join(args.paths)}", file=sys.stderr)
    bar = tqdm(total=len(files), unit="file", disable=None, file=sys.stderr)
    lock = threading.Lock()
    reader_gone = threading.Event()  # `vibrary tag --json DIR | head`: it has all it wants
    # files are read in parallel and come back in any order: each is said in the order given (a script pairs
    # its paths with the lines, or compares two runs), held until those before it are done
    done: dict[int, dict] = {}
    said = 0
    # files submitted beyond those said, at most: one slow file (a stalled network drive) held every line
    # after it in memory, said nothing meanwhile, and `| head` went unnoticed until it came
    ahead = threading.Condition(lock)
    window = 4 * settings.queue_size

    def sink(results: list[Result]) -> None:
        nonlocal said
        with lock:
            for r in results:
                tags = [(names[mid], t, s) for mid, ranked in r.tags.items() for t, s in ranked[: args.top]]
                tags.sort(key=lambda x: -x[2])
                error = NO_SUCH_PATH if r.vanished and r.job.path in absent else r.error
                done[r.job.id] = _file_line(r.job.path, tags, error, {names[mid] for mid in r.unfamiliar})
                bar.update(1)
            while said in done and not reader_gone.is_set():
                line = done.pop(said)
                said += 1
                bar.clear()
                try:
                    _out(args, line, _human_file(line))
                except BrokenPipeError:  # (in a pipeline thread: it was a traceback per batch, and "pending")
                    reader_gone.set()  # main() says it, once the pipeline has stopped
            ahead.notify_all()

    pipeline = Pipeline(
        models,
        sink,
        workers=settings.worker_count,
        batch_size=settings.batch_size,
        queue_size=settings.queue_size,
        store_min_score=settings.store_min_score,
    )
    try:
        for n, path in enumerate(files):
            with ahead:
                while n - said >= window and not reader_gone.is_set():
                    ahead.wait(0.5)  # (a timeout: Ctrl-C is heard meanwhile)
            if reader_gone.is_set():
                break
            pipeline.submit(Job(n, path, 0, -1, -1, None))
        pipeline.wait_idle()
    except KeyboardInterrupt:  # the threads still in onnxruntime at the exit aborted the process (134, not 130)
        pipeline.close(drop_queued=True)
        raise
    pipeline.close()
    bar.close()
    if reader_gone.is_set():
        raise BrokenPipeError
    return 0


# -- vibrary daemon ------------------------------------------------------------------------------------------
def cmd_daemon(args: argparse.Namespace) -> int:
    from vibrary.daemon.server import check_listening, serve
    from vibrary.daemon.service import AlreadyRunning, Daemon

    os.umask(0o077)
    if args.action == "stop":  # a mistyped VIBRARY_HOME is no daemon to stop, and no home to make
        return _stop_daemon(args, config.home(create=False))
    home_dir = config.home()
    logging.raiseExceptions = False  # a log that cannot be written (a full disk) must not print a traceback a line
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[_terminal_log(), logging.FileHandler(config.log_path(home_dir))],
    )
    try:
        settings = config.Settings.load(home_dir)
    except (ValueError, OSError) as e:  # (a config.json that is a folder, unreadable)
        raise _not_started(e) from None
    if args.workers is not None:
        settings.workers = args.workers
    stop = threading.Event()
    heard: list[str] = []

    def stopping(signum: int, frame: object) -> None:
        heard.append(signal.Signals(signum).name)
        stop.set()

    # before anything starts: a signal between the socket's opening and the handlers ended it unlogged
    on_signals(stopping, *ENDING)
    token = args.token or os.environ.get("VIBRARY_TOKEN", "")
    try:
        check_listening(str(config.socket_path(home_dir)), args.listen, token)
        daemon = Daemon(home_dir, settings)
    except (AlreadyRunning, ValueError, OSError) as e:
        raise _not_started(e) from None
    daemon.start()
    try:
        servers = serve(daemon, str(config.socket_path(home_dir)), args.listen, token)
    except ValueError as e:
        daemon.stop()
        raise _not_started(e) from None
    models = [m.ref for m in daemon.pipeline.models]
    serving = {"serving": str(config.socket_path(home_dir)), "listen": args.listen or None, "pid": os.getpid()}
    if args.json:  # a script that starts a daemon knows from this line that it answers
        print(json.dumps({**serving, "home": str(home_dir), "models": models}), flush=True)
    print(f"vibrary daemon serving {home_dir} (models: {', '.join(models) or 'none'})", file=sys.stderr, flush=True)
    while not stop.wait(0.5):  # a timeout, so a signal delivered to another thread is still seen
        if daemon.ended.is_set():
            heard.append("its home is gone")
            break
    logging.getLogger("vibrary.daemon").info("daemon stopping (%s)", heard[0] if heard else "asked")  # a stop said why
    daemon.events.close()  # front ends' Events streams end with OK, not cut off when the grace runs out
    for stopped in [s.stop(grace=2) for s in servers]:  # both at once: in turn, each took its whole grace
        stopped.wait()
    daemon.stop()
    return 0


ENDING = ENDING_SIGNALS  # a kill, a closed terminal, Ctrl-C


def _not_started(e: Exception) -> CommandError:
    """Why the daemon would not start, in its log file as well: one started in the background (by the tray,
    at login) has no terminal to say it in. The terminal hears it once, as the command's error."""
    logging.getLogger("vibrary.daemon").error("not started: %s", e, extra={"file_only": True})
    return CommandError(str(e))


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
    has let go (a training of its own is suspended on the way out, to go on at the next start)."""
    from vibrary.daemon import pidlock

    pid = pidlock.holder(config.lock_path(home_dir))
    if pid is None:
        raise CommandError(f"no daemon is running for {home_dir}")
    os.kill(pid, signal.SIGTERM)
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
        if args.action != "list":
            folder = indexed_path(args.dir)  # as the daemon will hold it
            watches = c.watches()
            covering = [w for w in watches if folder.startswith(under(w)[0])]
            inside = [w for w in watches if w.startswith(under(folder)[0])]
            if args.action == "add" and os.path.isdir(folder):  # harmless, but one more to remove
                if covering:
                    print(
                        f"vibrary: {folder} is inside {covering[0]}, watched already; added all the same",
                        file=sys.stderr,
                    )
                elif inside:
                    said = f"vibrary: {folder} holds {_many(len(inside), 'watch folder')} already ({', '.join(inside)})"
                    print(
                        f"{said}: each file is indexed once; `vibrary watch remove` them if you like", file=sys.stderr
                    )
            (c.add_watch if args.action == "add" else c.remove_watch)(args.dir)
        found = c.watch_list()
    paths, missing = list(found.paths), list(found.missing)
    lines = [f"{p}  (missing: moved, renamed or unmounted? {MISSING_FIX})" if p in missing else p for p in paths]
    _out(args, {"watches": paths, "missing": missing}, "\n".join(lines) or "(no watch folders)")
    return 0


UNUSABLE = "its file is missing or damaged: `vibrary models remove {ref}`, then install it again"
MISSING_FIX = (
    "`vibrary watch add` it where it is now, then `vibrary watch remove` the old path: no file is analysed again"
)


def cmd_status(args: argparse.Namespace) -> int:
    with Client() as c:
        s = c.status()
        if args.wait:
            _wait_idle(c, s.pending)
            s = c.status()
        newest = c.failed(limit=5) if s.failed else []  # which ones, and why: the count alone sends people looking
    obj = {
        "indexed": s.indexed,
        "pending": s.pending,
        "failed": s.failed,
        "models": [ref.partition("@")[0] for ref in s.models],  # names, as shared/interfaces.md has them
        "model_versions": list(s.models),  # NAME@VERSION
        "unusable_models": list(s.unusable_models),  # active, but their file is missing or damaged
        "queue_depth": s.queue_depth,
        "watches": list(s.watches),
        "missing_watches": list(s.missing_watches),  # not there now: renamed, moved or unmounted
        "unfollowed_links": [{"path": x.path, "target": x.target} for x in s.unfollowed_links],
        "unnamed_files": list(s.unnamed_files),  # names not UTF-8: left out until renamed (the first 100)
        "unnamed_count": s.unnamed_count,
        "home": s.home,
        "paused": s.paused,
        "stalled": s.stalled,  # why indexing waits: the index cannot be written (a full disk)
        "retrying": s.retrying,  # pending files read again a minute after a passing error (no file handles)
        "retry_reason": s.retry_reason,
        "unlisted_folders": list(s.unlisted_folders),  # cannot be listed: their files are not indexed
        "scanning": s.scanning,  # folders being listed now: files found there are not pending yet
        # since the daemon started: read from audio, from cached spectrograms, content already tagged
        "decoded": s.decoded,
        "from_cache": s.from_cache,
        "reused": s.reused,
    }
    human = (
        f"indexed {s.indexed}, pending {s.pending}, failed {s.failed}{' (paused)' if s.paused else ''}\n"
        f"models: {', '.join(s.models) or 'none'}\nwatching: {', '.join(s.watches) or 'nothing'}\n"
        f"since it started: {s.decoded} decoded, {s.from_cache} from cached spectrograms, {s.reused} already tagged"
    )
    if s.scanning:
        human += f"\n{looking_for_files(s.scanning)}"
    if s.stalled:
        human += f"\nINDEXING WAITS: {s.stalled}"
    if s.unlisted_folders:
        human += "\nfolders that cannot be listed, their files not indexed (read within seconds once fixed):"
        human += "".join(f"\n  {_shown(folder)}" for folder in s.unlisted_folders[:5])
        human += f"\n  … and {len(s.unlisted_folders) - 5} more" if len(s.unlisted_folders) > 5 else ""
    if s.retrying:
        human += f"\nwaiting to be read again: {_many(s.retrying)} ({s.retry_reason})"
    for ref in s.unusable_models:
        human += f"\nmodel {ref} tags nothing: {UNUSABLE.format(ref=ref)}"
    if s.missing_watches:
        human += "\nmissing watch folders (moved, renamed or unmounted?): " + ", ".join(s.missing_watches)
        human += f"\n  {MISSING_FIX}"
    if s.unfollowed_links:
        human += "\nlinked folders, not followed (their files are not indexed; add where they lead as watches):"
        for x in s.unfollowed_links:
            human += f"\n  {x.path} → {x.target}: vibrary watch add {shlex.quote(x.target)}"
    if s.unnamed_count:
        human += f"\nleft out, their names are not valid UTF-8 (rename them to index them): {s.unnamed_count}"
        human += "".join(f"\n  {_shown(name)}" for name in s.unnamed_files[:5])
        human += f"\n  … and {s.unnamed_count - 5} more" if s.unnamed_count > 5 else ""
    if newest:
        obj["recent_failures"] = [{"path": f.path, "error": f.error} for f in newest]
        human += "\nnewest failures:" + "".join(f"\n  {_shown(f.path)}: {f.error}" for f in newest)
    if s.HasField("training"):  # the daemon's latest training job (Train RPC), running or how it ended
        from .tray_state import training_line

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
        }
        human += f"\n{training_line(t)}{f' ({t.error})' if t.error else ''}"
    _out(args, obj, human)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause or resume indexing; the watcher keeps recording changes, so nothing is lost meanwhile."""
    with Client() as c:
        s = c.pause() if args.command == "pause" else c.resume()
    state = "paused" if s.paused else "resumed"
    _out(args, {"paused": s.paused, "pending": s.pending}, f"indexing {state} ({_many(s.pending)} pending)")
    return 0


def cmd_tray(args: argparse.Namespace) -> int:
    graphical = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    if sys.platform not in ("darwin", "win32") and not any(os.environ.get(v) for v in graphical):
        # Qt would abort the process without a word a user could act on
        raise CommandError("the tray needs a graphical session: DISPLAY and WAYLAND_DISPLAY are unset")
    config.unix_target(config.socket_path(config.home()))  # a home no daemon can listen in: said here, once
    try:
        from .tray import run
    except ImportError as e:
        raise CommandError(f"the tray needs PySide6: in Vibrary's clone, pip install -e '.[tray]' ({e})") from None
    return run()


BACK_S = 60.0  # how long `status --wait` waits for a daemon that stopped to come back (a restart, an upgrade)
STUCK_S = 10.0  # how long nothing moves, a watch folder missing, before `status --wait` says so and ends


def _wait_idle(c: Client, pending: int) -> None:
    """Progress bar until nothing is pending or being listed. A daemon that stops meanwhile is waited for a while: one
    restarted (by its start-at-login unit, after an upgrade) ended an hour's wait with "no daemon". Files
    under a watch folder not there now (a drive unplugged) wait for it: when nothing else moves for
    STUCK_S, that is said and the wait ends (it waited for ever)."""
    bar = tqdm(total=pending, unit="file", disable=None, file=sys.stderr, desc="indexing")
    first = c.status()
    done_before = first.indexed + first.failed  # a failed file is done too: the bar stopped short of them
    gone_since = None
    moved_at, last = time.monotonic(), (-1, -1)
    said_listing = False
    while True:
        try:
            s = c.status()
        except DaemonNotRunning:
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
        if s.pending == 0 and s.scanning == 0:  # (a folder still being listed may yet hold new files)
            break
        if (s.pending, done) != last:
            moved_at, last = time.monotonic(), (s.pending, done)
        elif s.pending == 0 and not said_listing and time.monotonic() - moved_at > STUCK_S:
            said_listing = True  # a big or slow drive (a NAS) takes a while; one that hangs, for ever
            bar.write(
                f"still {looking_for_files(s.scanning)}; Ctrl-C stops waiting",
                file=sys.stderr,
            )
        elif s.missing_watches and s.pending > s.retrying and time.monotonic() - moved_at > STUCK_S:
            # (files waiting a minute after a passing error move on their own: not given up on)
            bar.close()
            raise CommandError(
                f"indexing waits with {_many(s.pending)} pending, none read for {STUCK_S:.0f} s: watch folders not"
                f" there now ({', '.join(s.missing_watches)}) keep their files pending until they are back"
            )
        if s.paused:  # it would wait for ever
            bar.close()
            raise CommandError(f"indexing is paused with {_many(s.pending)} pending: `vibrary resume` goes on")
        if s.stalled:  # no model to tag with, a full disk: it waits for the user too
            bar.close()
            raise CommandError(f"indexing waits with {_many(s.pending)} pending: {s.stalled}")
        time.sleep(0.25)
    bar.close()


SEARCH_VALUE_OPTIONS = ("--limit", "--min-score", "--under", "--model")


def _takes_value(word: str) -> bool:
    """A search option given its value as the next word: its name, or a prefix of one alone (argparse takes
    `--lim 5` for `--limit 5`, and it was read as a flag: `kick` became the limit)."""
    if not word.startswith("--") or "=" in word:
        return False
    return word in SEARCH_VALUE_OPTIONS or len([o for o in SEARCH_VALUE_OPTIONS if o.startswith(word)]) == 1


def _exclusions_as_words(argv: list[str]) -> list[str]:
    """`vibrary search kick -acoustic`: argparse takes `-acoustic` for an option it does not know (and
    `-hihat` for -h with a value), so a search's `-TAG` words become `NOT TAG` before it parses them. Its
    options go first, for argparse takes query words only in one run (`kick --limit 20 -dark` was refused),
    and global options may come before `search` (`vibrary --json search kick -tom`)."""
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))
    if argv[at : at + 1] != ["search"]:
        return argv
    options: list[str] = []
    words: list[str] = []
    rest = iter(argv[at + 1 :])
    for word in rest:
        if _takes_value(word):  # with its value, whatever it looks like: `--limit -1`, argparse says why
            options += [word, *itertools.islice(rest, 1)]
        elif word.startswith("--") or word == "-h":
            options.append(word)
        elif word.startswith("-") and len(word) > 1:
            words += ["NOT", word[1:]]
        else:
            words.append(word)
    return [*argv[:at], "search", *options, *words]


def _print_files(args: argparse.Namespace, files: Iterable[Any], no_tags: str = SILENT_TAGS) -> int:
    n = 0
    for f in files:
        unfamiliar = {t.model for t in f.tags if t.unfamiliar}
        tags = ((t.model, t.tag, t.score) for t in f.tags)
        line = _file_line(f.path, tags, f.error, unfamiliar, f.state, no_tags)
        _out(args, line, _human_file(line, f.state))
        n += 1
    return n


def cmd_search(args: argparse.Namespace) -> int:
    words = args.query
    if any(w.split() != [w] for w in words):  # quoted, as people quote `snare|clap` for the shell: its words,
        with Client() as c:  # unless a model's tag is spelled so ("hi hat")
            spelled = {tag for m in c.models() for tag in m.classes}
        words = [part for w in words for part in _as_words(w, spelled)]
    try:
        groups, excluded = parse_query(words)
    except QueryError as e:
        raise UsageError(str(e)) from None
    if not groups and not excluded and not args.under:
        raise UsageError("give at least one tag to search for")
    with Client() as c:
        n = _print_files(
            args,
            c.search(groups, excluded, args.min_score, args.under or "", args.model or "", args.limit, best_first=True),
        )
        unknown = _unknown_tags(c, groups, excluded, args.model or "", n)
        if not args.json or unknown:  # (stderr is the human's with --json too: a typo was silent there)
            print(f"{_many(n)}{unknown}", file=sys.stderr)
        if n == 0 and args.under and not os.path.isdir(args.under):
            print(f"vibrary: no folder {args.under} (--under)", file=sys.stderr)
    return 0


def _as_words(word: str, tags: set[str]) -> list[str]:
    """A quoted word as the query's words: a tag as a model spells it ("hi hat") whole, or left out ("-hi hat",
    "NOT hi hat": NOT its own word, it was read as a tag "not hi hat"); alternatives whole when each is a tag
    or one word ("hi hat|mid" was "hi", then "hat|mid"); any other, its words."""
    word = word.strip()
    if word[:4].lower() == "not " and config.tag_key(word[4:]) in tags:
        return ["NOT", word[4:].strip()]
    if config.tag_key(word.lstrip("-")) in tags:
        return [word]
    alternatives = [a.strip() for a in word.split("|")]
    if len(alternatives) > 1 and all(config.tag_key(a) in tags or len(a.split()) <= 1 for a in alternatives):
        return ["|".join(alternatives)]
    return word.split()


def _unknown_tags(c: Client, groups: list[list[str]], excluded: list[str], model: str, found: int) -> str:
    """Words no active model tags (a typo, or an inactive model's word), said whatever was found: a typo in
    an OR arm (`kick OR kikc`) or an excluded word (`kick -m`) changed nothing, silently. The active models'
    classes answer it from their metadata; counting the tags in use reads the whole index."""
    known = {tag for m in c.models() if m.active and model in ("", m.name) for tag in m.classes}
    unknown = [w for g in groups for w in g if w not in known] + [f"-{w}" for w in excluded if w not in known]
    if not unknown:
        return ""
    close = {w: difflib.get_close_matches(w.lstrip("-"), known, n=1) for w in unknown}
    said = ", ".join(f"{w!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for w, m in close.items())
    who = f"model {model} has no tag" if model else "no active model tags"  # `--model mine kick`: demo has it
    return f": {who} {said}; `vibrary models list` shows their tags"


def cmd_counts(args: argparse.Namespace) -> int:
    with Client() as c:
        for n in c.counts(args.model):
            _out(args, {"model": n.model, "tag": n.tag, "files": n.files}, f"{n.files:8d}  {n.tag}  ({n.model})")
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    with Client() as c:
        # the index answers with the active models' tags: with none active, no file has any
        idle = not any(m.active for m in c.models())
        _print_files(args, _as_given(c.tags(args.paths), args.paths), NO_MODEL_TAGS if idle else SILENT_TAGS)
    return 0


def _as_given(files: Iterable[pb.FileTags], paths: Sequence[str]) -> Iterator[pb.FileTags]:
    """The files' paths as `tag` says them, as given or joined to the folder given (the index holds them
    absolute, links to folders resolved): a script comparing `tag` and `tags` lines, "the same shape", found
    no path in both."""
    given: dict[str, str] = {}
    for p in paths:
        given.setdefault(indexed_path(p), p)  # (the first spelling of one path given twice, as `tag` says it)
    for f in files:
        up = f.path
        while up not in given and os.path.dirname(up) != up:  # the nearest folder given, walked up to
            up = os.path.dirname(up)
        if up in given:
            f.path = given[up] if up == f.path else os.path.join(given[up], os.path.relpath(f.path, up))
        yield f


# -- models: on the home's index directly; a running daemon follows within a second ------------------------
def cmd_models(args: argparse.Namespace) -> int:
    index, home_dir = _index()
    if args.action == "list":
        for m in index.models():
            obj = {
                "model": m.name,  # as every other line names a model (install, activate, train, tag)
                "name": m.name,  # kept: scripts read it
                "version": m.version,
                "active": m.active,
                "builtin": m.builtin,
                "classes": list(m.classes),
                "path": m.path,
            }
            obj["usable"] = registry.usable(m)
            broken = "" if obj["usable"] else f"  ({UNUSABLE.format(ref=m.ref)})"
            line = f"{'*' if m.active else ' '} {m.ref:24} {len(m.classes):3} classes  {m.path}{broken}"
            _out(args, obj, f"{line}\n    tags: {', '.join(m.classes)}")  # what a search can ask for
        return 0
    if args.action == "install":
        before = index.models()
        try:
            row = registry.install(index, home_dir, args.ref, args.name or "", active=not args.inactive)
        except (ModelError, OSError) as e:
            raise CommandError(str(e)) from None
        known = {m.id for m in before}
        # a rollback undone by installing a newer file again said only "already installed": say what changes
        was = next((m for m in before if m.active and m.name == row.name and m.id != row.id), None)
        obj = {"model": row.name, "version": row.version, "classes": list(row.classes), "active": not args.inactive}
        obj["installed"] = row.id not in known  # False: the same file was installed already, as this version
        said = "installed" if obj["installed"] else "already installed as"
        human = f"{said} {row.ref} ({len(row.classes)} classes)"
        if was is not None and not args.inactive:
            obj["deactivated"] = was.ref
            human += f"; active now in place of {was.ref} (`vibrary models activate {was.ref}` goes back)"
        _out(args, obj, human)
        return 0
    try:
        name, version = parse_ref(args.ref)
        row = index.model(name, version, active_first=args.action == "deactivate")
    except (KeyError, ValueError) as e:
        raise CommandError(str(e.args[0])) from None
    if args.action == "remove":
        try:
            successor = registry.remove(index, row)
        except ModelError as e:
            raise CommandError(str(e)) from None
        instead = {"activated": successor.ref} if successor else {}
        obj = {"model": row.name, "version": row.version, "action": "remove", **instead}
        _out(args, obj, f"removed {row.ref}" + (f"; {successor.ref} is active instead" if successor else ""))
        return 0
    active = args.action == "activate"
    obj = {"model": row.name, "version": row.version, "action": args.action, "changed": row.active != active}
    if not active and not row.active:  # a second `deactivate NAME` said "deactivated NAME@3" again
        _out(args, obj, f"{row.ref} was not active" if version else f"nothing of {row.name} was active")
        return 0
    if active and row.active:  # likewise a second `activate`
        _out(args, obj, f"{row.ref} was already active")
        return 0
    index.set_active(row, active)
    _out(args, obj, f"{args.action}d {row.ref}")
    return 0


# -- datasets and training -------------------------------------------------------------------------------------
def _size(n: int) -> str:
    """A pack of one-shots uploads a few hundred kB, which "0.0 MB" would hide."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


_LEFT_OUT = {"unreadable": "unreadable", "silent": "silent", "duplicate": "the same sound as another"}


def _dataset_line(name: str, report: Any) -> tuple[dict[str, Any], str]:
    from vibrary.daemon.advice import MORE

    manifest, failed = report.manifest, len(report.failed)
    obj = {
        "dataset": name,
        "classes": manifest.classes,
        "clips": manifest.clips,
        "per_class": report.per_class,
        "audio_bytes": report.audio_bytes,
        "upload_bytes": manifest.size,
        "ratio": round(report.ratio, 1),
        "failed": failed,  # every file left out; why, counted:
        "left_out": report.left_out,
        "left_out_files": [{"path": path, "error": why} for path, why in report.failed],  # (stderr names a few)
        "advice": report.advice,
    }
    why = ", ".join(f"{n} {_LEFT_OUT[kind]}" for kind, n in report.left_out.items() if n)
    human = (
        f"dataset {name}: {_many(manifest.clips, 'clip')} in {len(manifest.classes)} classes "
        f"({', '.join(f'{c} {n}' for c, n in report.per_class.items())})\n"
        f"audio {_size(report.audio_bytes)} → upload {_size(manifest.size)} "
        f"({report.ratio:.0f}× smaller, spectrograms only)"
        + (f"\n{_many(failed)} left out ({why})" if failed else "")
        + (f"\n{report.advice}" if report.advice else "")
        + (f"\nmore examples: `vibrary dataset add {name} DIR...`" if MORE in report.advice else "")
    )
    return obj, human


def _synonyms() -> Any:
    from vibrary.daemon.suggest import Synonyms

    return Synonyms.load(config.home())


def _suggestions(dirs: Sequence[str]) -> list[Any]:
    from vibrary.daemon.suggest import suggest

    try:
        found = suggest(dirs, _synonyms())
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    if not found:  # rather than print nothing at all
        raise CommandError(f"no audio files under {', '.join(dirs)}")
    return found


def _many(n: int, noun: str = "file") -> str:
    """ "1 file", "2 files": people read it (stderr, human lines), scripts read the numbers in --json."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_suggest(args: argparse.Namespace) -> int:
    """Every file's suggestion as a JSON line; for people, each tag with its count and a few examples."""
    found = _suggestions(args.dirs)
    by_tag: dict[str, list[Any]] = {}
    for s in found:
        by_tag.setdefault(s.tag, []).append(s)
        if args.json:
            obj = {"path": s.path, "tag": s.tag, "source": s.source, "raw": s.raw, "alternatives": list(s.alternatives)}
            print(json.dumps(obj), flush=True)
    if args.json:
        return 0
    for tag, files in sorted(by_tag.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if not tag:
            continue
        sources = sorted({f"{s.source} {s.raw!r}" for s in files})
        print(f"{tag:16} {_many(len(files)):>11}, from {', '.join(sources[:3])}{' …' if len(sources) > 3 else ''}")
        for s in files[:3]:
            print(f"{'':16}   e.g. {_shown(s.path)}")
        passed = Counter(alt for s in files for alt in s.alternatives)  # a pack name or mood that lost: check
        if passed:
            print(f"{'':16}   also named: {', '.join(f'{alt} ({_many(n)})' for alt, n in passed.most_common(5))}")
    missing = by_tag.get("", [])
    if missing:
        print(f"no suggestion for {_many(len(missing))}:")
        for s in missing[:20]:
            print(f"  {_shown(s.path)}")
        if len(missing) > 20:
            print(f"  … and {len(missing) - 20} more")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from vibrary.daemon import dataset

    home_dir = config.home()
    if args.action == "list":
        for name in dataset.names(home_dir):
            try:
                manifest, _ = dataset.load(home_dir, name)
            except (ValueError, OSError) as e:  # one broken dataset must not hide the others
                print(f"vibrary: dataset {name} cannot be read: {e}", file=sys.stderr)
                continue
            _out(
                args,
                {"dataset": name, "clips": manifest.clips, "classes": manifest.classes},
                f"{name}: {_many(manifest.clips, 'clip')}, {len(manifest.classes)} classes",
            )
        return 0
    if args.action == "suggest":
        return cmd_suggest(args)
    try:
        if args.action in ("create", "add"):
            report, added = _create(args, home_dir)
        elif args.action == "show":
            report = dataset.load_report(home_dir, args.name)
            _say_skipped(report.failed, 5)
        elif args.action == "delete":
            dataset.delete(home_dir, args.name)
            _out(args, {"dataset": args.name, "action": "delete"}, f"deleted dataset {args.name}")
            return 0
        else:
            before = len(dataset.load(home_dir, args.name)[0].classes)
            report = dataset.edit(home_dir, args.name, **_edits(args))
            if args.action == "rename" and len(report.per_class) < before:  # `--help` said so; the output did not
                print(f"vibrary: {args.old} merged into {args.new}, a tag the dataset had already", file=sys.stderr)
    except (FileNotFoundError, dataset.Busy) as e:
        raise CommandError(str(e)) from None
    obj, human = _dataset_line(args.name, report)
    if args.action == "add":
        obj["added"] = added
        human = f"added {_many(added, 'clip')} to dataset {args.name}\n{human}"
    _out(args, obj, human)
    return 0


def _edits(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "rename":
        return {"rename": [(args.old, args.new)]}
    if args.action == "merge":
        return {"rename": [(tag, args.into) for tag in args.tags if tag != args.into]}
    if args.action == "drop":
        return {"drop": args.tags}
    return {"relabel": [(args.path, args.tag)]}


def _examples(args: argparse.Namespace) -> list[Any]:
    """The labelled files under args.dirs, by folder names or by suggestion (--labels)."""
    from vibrary.daemon import dataset

    if args.labels in ("folders", "top"):
        loose: list[str] = []
        spread: list[str] = []
        empty: list[str] = []
        found = dataset.examples_from_folders(args.dirs, loose, args.labels == "top", spread, empty)
        if empty:  # a tag meant, that the dataset went without unsaid
            print("vibrary: no audio files in these folders, so no tag from them:", file=sys.stderr)
            _say_few([f"  {folder}/" for folder in empty], 5)
        if args.action == "add":  # the ones it holds already were not left out of it
            held = {os.path.normpath(path) for path, _ in dataset.labelled_files(config.home(), args.name)}
            loose = [path for path in loose if os.path.normpath(os.path.abspath(path)) not in held]
        _say_loose(loose)
        if spread and args.labels == "folders":
            print(
                "vibrary: each file's own folder names its tag, and these tags' folders lie under several folders, "
                "or inside another tag's (if the folders right under it are your tags, give --labels top):",
                file=sys.stderr,
            )
            _say_few([f"  {line}" for line in spread], 5)
        return found
    found = _suggestions(args.dirs)
    for s in found:
        if not s.tag:
            print(
                f"skipped {_shown(s.path)}: no tag suggested (add a synonym, or put it in a tag folder)",
                file=sys.stderr,
            )
    return [dataset.example(s.path, s.tag) for s in found if s.tag]


def _say_loose(loose: Sequence[str]) -> None:
    """Files lying in a DIR itself, beside its tag folders, have no tag: said, with the way out, since a
    producer who puts new examples in `MyTags/dark/` and adds that folder means them to be dark."""
    if not loose:
        return
    print(
        f"vibrary: left out {_many(len(loose))} lying directly in a folder given, not in a tag folder inside it "
        "(give the folder above, or use --labels suggest):",
        file=sys.stderr,
    )
    _say_few([f"  {path}" for path in loose], 5)


def _say_skipped(failed: Sequence[tuple[str, str]], most: int | None = None) -> None:
    """The files a build could not read, and why: every one as `create` or `add` meets them; a few in
    `dataset show`, whose "N files could not be read" named none."""
    _say_few([f"skipped {path}: {error}" for path, error in failed], most)


def _say_few(lines: Sequence[str], most: int | None = None) -> None:
    """Lines on stderr: all of them, or the first `most` and how many more."""
    for line in lines[:most]:
        print(line, file=sys.stderr)
    if most is not None and len(lines) > most:
        print(f"  … and {len(lines) - most} more", file=sys.stderr)


def _create(args: argparse.Namespace, home_dir: Path) -> tuple[Any, int]:
    """The dataset built (create) or grown (add), and how many clips that added."""
    from vibrary.daemon import dataset

    if args.action == "add":
        dataset.load(home_dir, args.name)  # "no dataset", before any file is looked at
    examples = _examples(args)
    config.Settings.load(home_dir)  # a bad config.json stops the build: said before "replacing", not after
    if args.action == "create":
        with contextlib.suppress(FileNotFoundError, ValueError):
            before, _ = dataset.load(home_dir, args.name)
            said = f"vibrary: replacing dataset {args.name} ({_many(before.clips, 'clip')}, and any edits made to it)"
            print(said, file=sys.stderr)
    bar = tqdm(total=len(examples), unit="file", disable=None, file=sys.stderr, desc="spectrograms")
    try:
        if args.action == "create":
            report = dataset.build(home_dir, args.name, examples, progress=bar.update)
            added, unread = report.manifest.clips, report.failed
        else:  # only this add's failures: a file an earlier build could not read, elsewhere, is not news
            grown = dataset.add(home_dir, args.name, examples, progress=bar.update, restore=args.restore)
            report, added, unread = grown.report, grown.added, grown.unread
            if not added and unread:  # (said of files that could not be read, it sent people looking elsewhere)
                print(
                    f"vibrary: nothing added: the {_many(len(unread), 'new file')} could not be read", file=sys.stderr
                )
            elif not added:
                print(f"vibrary: nothing to add: {args.name} has these files already", file=sys.stderr)
            if grown.left_out:
                said = (
                    f"left out {_many(grown.left_out)} that edits had removed from {args.name} (or their tags); "
                    "--restore adds them again"
                )
                print(said, file=sys.stderr)
    finally:
        bar.close()
    _say_skipped(unread)
    return report, added


def cmd_synonyms(args: argparse.Namespace) -> int:
    table = _synonyms()
    if args.action == "remove":
        shipped = table.shipped()
        for alias, tag, builtin in table.remove(config.home(), args.aliases):
            obj = {"alias": alias, "tag": tag, "builtin": builtin, "removed": True}
            said = "; `synonyms add` gives it back" if builtin else ""
            if not builtin and alias in shipped:  # yours overrode the built-in one: both go, and it must be said
                obj["builtin_removed"] = shipped[alias]
                said = f"; the built-in {alias} → {shipped[alias]} too: `vibrary synonyms add {alias} {shipped[alias]}`"
            _out(args, obj, f"{alias:20} ✗ {tag}  (removed{said})")
        return 0
    if args.action == "add":
        meant = {alias: (tag, builtin) for alias, tag, builtin in table.pairs()}.get(args.alias.strip().lower())
        table.add(config.home(), [(args.alias, args.tag)])
        table = _synonyms()
        now = {alias: tag for alias, tag, _ in table.pairs()}.get(args.alias.strip().lower())
        if meant is not None and meant[0] != now:  # `synonyms add BD snare` took bd from kick without a word
            whose = "the built-in table's" if meant[1] else "yours"
            print(
                f"vibrary: {args.alias.strip().lower()} meant {meant[0]} ({whose}); it means {now} now", file=sys.stderr
            )
    for alias, tag, builtin in table.pairs():
        if args.action == "add" and alias != args.alias.strip().lower():
            continue
        _out(
            args,
            {"alias": alias, "tag": tag, "builtin": builtin},
            f"{alias:20} → {tag}{'' if builtin else '  (yours)'}",
        )
    return 0


LOST_SAID_EVERY_S = 30.0  # how often `vibrary train` says the trainer is still out of reach


def cmd_train(args: argparse.Namespace) -> int:
    from vibrary.daemon.training import LOST_TRAINER, OWN_CLIPS, TrainingError, TrainProgress, check_request, train

    options = {"epochs": args.epochs, "seed": args.seed, "known_pull": 0 if args.as_new else None}
    try:  # `--name "My Model"`, `--trainer lcoal`: refused as argparse refuses (exit 2), before any advice
        _, _, checked = check_request(args.trainer, args.base, args.name, options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    index, home_dir = _index()
    if args.name:  # as mistyped as any other option: a usage error, before any advice
        try:
            registry.check_not_builtin(index, args.name)
        except ModelError as e:
            raise UsageError(f"{e} (`--name NAME`)") from None
    bars: dict[str, tqdm] = {}
    said = ""
    states: set[str] = set()  # the states seen
    started: list[str] = []  # the job, once a trainer has it: waiting for a busy trainer or uploading, none

    logged = {"epoch": 0, "upload": -1}  # epoch 0 of a fit from known rows says "loss 0.000" of nothing yet

    def log_lines(p: TrainProgress) -> None:
        """A line per epoch and per quarter of the upload where no bar can show (a log file, a script's
        pipe): a training of hours said nothing there until it ended."""
        if p.state in ("uploading", "waiting") and p.upload_bytes:  # (the last quarter comes as it waits)
            quarter = 4 * p.uploaded_bytes // p.upload_bytes
            if quarter > logged["upload"]:
                logged["upload"] = quarter
                print(f"upload {p.uploaded_bytes:,} of {p.upload_bytes:,} bytes", file=sys.stderr, flush=True)
        elif p.state == "training" and p.epochs and p.epoch > logged["epoch"]:
            logged["epoch"] = p.epoch
            print(f"epoch {p.epoch}/{p.epochs}: loss {p.loss:.3f}", file=sys.stderr, flush=True)

    said_at = 0.0

    def progress(p: TrainProgress) -> None:
        nonlocal said, said_at
        if p.resumed_from_epoch and "resumed" not in states:  # the bar stood at epoch 12 of a new command
            states.add("resumed")
            tqdm.write(
                f"going on from epoch {p.resumed_from_epoch} of {p.epochs}, where an earlier run of this training"
                " stopped",
                file=sys.stderr,
            )
        states.add(p.state)
        lost = p.message.startswith(LOST_TRAINER)
        news = p.state == "waiting" or lost  # queued, or the trainer out of reach
        # out of reach, the message counts the seconds: it was a new line every second or two
        again = lost and said.startswith(LOST_TRAINER) and time.monotonic() - said_at < LOST_SAID_EVERY_S
        if news and p.message != said and not again:
            said, said_at = p.message, time.monotonic()
            tqdm.write(p.message, file=sys.stderr)
        if not sys.stderr.isatty():
            log_lines(p)
        elif p.state == "uploading":
            if "upload" not in bars:
                bars["upload"] = tqdm(
                    total=p.upload_bytes, unit="B", unit_scale=True, disable=None, file=sys.stderr, desc="upload"
                )
            bars["upload"].n = p.uploaded_bytes
            bars["upload"].refresh()
        elif p.state == "training":
            upload = bars.get("upload")
            if upload is not None and upload.n != upload.total:  # the trainer had the rest: it stood at 0 %
                upload.n = upload.total or 0
                upload.refresh()
            if "train" not in bars:
                bars["train"] = tqdm(total=None, unit="epoch", disable=None, file=sys.stderr, desc="training")
            bar = bars["train"]
            if p.epochs:  # 0 while it exports: the bar stays where training ended
                bar.total, bar.n = p.epochs, p.epoch
            # a dataset too small to hold clips out has no validation: "val acc 0.00" read as a failure
            held_out = f" val acc {p.val_accuracy:.2f}" if p.val_accuracy else ""
            bar.set_postfix_str(f"loss {p.loss:.3f}{held_out}")

    def interrupted(signum: int, frame: object) -> None:
        # a closed terminal or a `kill` ends the job as Ctrl-C does (they ended the process at once, a cloud
        # instance running); a second one (a closed terminal sends two) must not cut the clean-up short
        for sig in ENDING:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    on_signals(interrupted, *ENDING)
    with contextlib.suppress(FileNotFoundError, ValueError):  # train() says what is wrong with the dataset
        from vibrary.daemon import dataset
        from vibrary.daemon.advice import advise

        # before minutes of waiting; tags the demo knows are advised as they will train, not with --as-new or none
        per_class = dataset.load_report(home_dir, args.dataset).per_class
        print(advise(per_class, base=args.base, pull=0 if args.as_new else None), file=sys.stderr)
    try:
        trained = train(
            home_dir,
            args.dataset,
            index=index,
            name=args.name,
            trainer=args.trainer,
            base=args.base,
            options=options,
            token=args.token or os.environ.get("VIBRARY_TRAINER_TOKEN", ""),
            confirm=confirm_cost(args),
            progress=progress,
            on_started=lambda job: started.append(job.job_id),
        )
    except TrainingError as e:
        raise CommandError(str(e)) from None
    except KeyboardInterrupt:  # Ctrl-C, a closed terminal, a kill (interrupted): still 130, no longer unsaid
        if "installing" in states:  # trained: kept where `vibrary models install` takes it from
            ended = f"its trained model is kept in {home_dir / 'uninstalled'} (`vibrary models install` installs it)"
        elif args.trainer == "cloud":  # (a job id on record once an instance is launched)
            ended = "its cloud instance is terminated" if started else "nothing was launched"
        elif started:  # (the trainer keeps its checkpoint: "cancelled" alone read as all of it lost)
            ended = "its job on the trainer is cancelled; the same command goes on from its last finished epoch"
        elif "uploading" in states:  # "its job ... is cancelled" of a job never started
            ended = "nothing was started on the trainer (what was uploaded stays there for the next try)"
        else:  # waiting for a trainer busy with another's training
            ended = "nothing was started on the trainer"
        tqdm.write(f"vibrary: training cancelled; {ended}", file=sys.stderr)
        raise
    finally:
        for bar in bars.values():
            bar.close()
    row = trained.row
    nothing_held_out = trained.accuracy_of == OWN_CLIPS
    accuracy = trained.val_accuracy
    obj = {
        "model": row.name,
        "version": row.version,
        "classes": list(row.classes),
        # a number, as shared/interfaces.md has it (null broke scripts that read it as one); when no clip was
        # held out, the accuracy on the clips it learned from, and `accuracy_of` says so
        "val_accuracy": round(accuracy, 4),
        "accuracy_of": trained.accuracy_of,
        "val_clips": trained.summary.get("val_clips"),
        "seconds": round(trained.seconds, 1),
        "plots": trained.plots,
        "summary": trained.summary,
    }
    human = f"installed and activated {row.ref}: validation accuracy {trained.val_accuracy:.1%}"
    if nothing_held_out:
        human = (
            f"installed and activated {row.ref}: every clip trained it, none was left to validate on "
            f"(right on {accuracy:.0%} of its own training clips)"
        )
    stopped = _what_the_progress_did_not_say(trained.summary, checked, row.classes)
    human += f"\n{stopped}" if stopped else ""
    earlier = [m for m in index.models() if m.name == row.name and m.version < row.version]
    was = max(earlier, key=lambda m: m.version, default=None)
    if was is not None and set(was.classes) != set(row.classes):  # a search for a tag it had found nothing
        gone, new = sorted(set(was.classes) - set(row.classes)), sorted(set(row.classes) - set(was.classes))
        obj["tags_changed"] = {"since": was.ref, "gone": gone, "new": new}
        human += f"\nits tags are not {was.ref}'s: " + "; ".join(
            f"{what} {', '.join(tags)}" for what, tags in (("gone:", gone), ("new:", new)) if tags
        )
        human += f" (`vibrary models activate {was.ref}` goes back)"
    _out(args, obj, human + f"\nplots: {', '.join(trained.plots)}")
    return 0


def _what_the_progress_did_not_say(summary: dict[str, Any], options: str, tags: Sequence[str]) -> str:
    """Why a training ended before the epochs it was given, or "": "epoch 6/30" and then "done" read as a
    training cut short. It stops once accuracy on the held-out clips has not improved for `patience` epochs,
    and keeps the best epoch's weights, not the last's; a dataset of tags the base knows runs no epoch."""
    from vibrary.daemon.training import known_said
    from vibrary.trainer.options import TrainConfig

    if fitted := known_said(summary, tags):
        return fitted
    run, best = summary.get("epochs_run", 0), summary.get("best_epoch", 0)  # an older trainer: neither
    config = TrainConfig.from_dict(json.loads(options))
    if not run or not best or run >= config.epochs:
        return ""
    return (
        f"stopped early after epoch {run} of {config.epochs}: validation accuracy had not improved for "
        f"{run - best} epochs (patience {config.patience}); kept the weights of epoch {best}, its best"
    )


def cmd_trainer(args: argparse.Namespace) -> int:
    data = Path(args.data) if getattr(args, "data", "") else config.home() / "trainer"
    if args.action == "token":
        return _trainer_token(args, data)
    if args.action == "health":
        return _trainer_health(args)
    try:
        if args.action == "run-s3":
            from vibrary.trainer.s3job import run_job
        else:
            from vibrary.trainer.service import TrainerBusy, serve
    except ImportError as e:
        raise CommandError(
            f"the trainer needs PyTorch ({e.name} is missing): in Vibrary's clone, pip install -e '.[trainer]'"
        ) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.action == "run-s3":
        return run_job(args.url)
    token = args.token or os.environ.get("VIBRARY_TRAINER_TOKEN", "")
    cert, key = (Path(p).read_bytes() if p else None for p in (args.tls_cert, args.tls_key))
    try:
        serving = serve(data, args.listen, token, cert, key)
    except TrainerBusy as e:
        raise CommandError(f"{e}: stop that one first, or give this one its own folder (--data)") from None
    tls = " over TLS" if cert else ""
    if args.json:  # a script that starts a trainer knows from this line that it answers, and on which port
        said = {"serving": serving.port, "tls": bool(cert), "data": str(data), "pid": os.getpid()}
        print(json.dumps(said), flush=True)
    print(f"vibrary trainer serving on port {serving.port}{tls} (data in {data})", file=sys.stderr, flush=True)
    stop = threading.Event()
    on_signals(lambda *_: stop.set(), *ENDING)  # as the daemon: a closed terminal stops it cleanly too
    while not stop.wait(0.5):
        pass
    serving.stop(grace=2)  # a job in training goes on from its last epoch at the next start
    return 0


def _trainer_token(args: argparse.Namespace, data: Path) -> int:
    from vibrary.trainer import tenants

    if args.token_action == "add":
        token = tenants.add_token(data, args.user)
        _out(args, {"user": args.user, "token": token}, f"token for {args.user} (shown once, stored hashed):\n{token}")
    elif args.token_action == "remove":
        if not tenants.remove_token(data, args.user):
            raise CommandError(f"no token for user {args.user!r}")
        _out(args, {"user": args.user, "removed": True}, f"removed the token of {args.user}")
    else:
        users = tenants.list_users(data)
        _out(args, {"users": users}, "\n".join(users) or "(no users: the trainer is open on loopback only)")
    return 0


def _trainer_health(args: argparse.Namespace) -> int:
    """Exit 0 when the trainer at --target says SERVING: the container's HEALTHCHECK."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .trainer_client import open_channel

    ca = args.tls_ca or os.environ.get("VIBRARY_TRAINER_CA") or os.environ.get("VIBRARY_TRAINER_TLS_CERT") or None
    with open_channel(args.target, ca, args.server_name) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as e:
            raise CommandError(f"trainer at {args.target}: {e.code().name} {e.details()}") from None
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    _out(args, {"target": args.target, "status": status}, f"{args.target}: {status}")
    return 0 if serving else 1


def confirm_cost(args: argparse.Namespace) -> Callable[[str], bool]:
    """What `vibrary train --trainer cloud` asks before anything is launched: yes with --yes, else the
    user's answer on a terminal; a script without --yes launches nothing. The estimate itself is shown by
    the training's progress (it was printed twice)."""

    def confirm(text: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            print("not launching: no terminal to ask on (pass --yes to accept the cost)", file=sys.stderr)
            return False
        print("launch? [y/N] ", end="", file=sys.stderr, flush=True)  # (input() prompts on stdout: into --json)
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    return confirm


# -- argument parsing -------------------------------------------------------------------------------------------
def _workers(text: str) -> int:
    n = _count(text)
    if n > config.MOST["workers"]:
        raise argparse.ArgumentTypeError(f"{n}: give {config.MOST['workers']} or fewer")
    return n


def _score(text: str) -> float:
    try:
        score = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= score <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: scores lie between 0 and 1")
    return score


def _parsed_ref(text: str) -> tuple[str, int]:
    """A name no model can have (`--model 'a b'`) is a mistake in the command (exit 2), not a model missing."""
    try:
        name, version = parse_ref(text)
        config.check_name(name, "model")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, version


def _model_ref(text: str) -> str:
    """NAME or NAME@VERSION, checked before anything starts (exit 2)."""
    _parsed_ref(text)
    return text


def _path(text: str) -> str:
    """A path given: an empty one (an unset variable, `vibrary watch add "$SAMPLES"`) read as the current
    folder, and `watch add` indexed whatever that was."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?)")
    return os.path.expanduser(text)  # `--under=~/Samples`: the shell leaves a ~ after = as it is


def _dataset_name(text: str) -> str:
    """A name that can be no dataset is a usage error (exit 2) before anything is read: `dataset create a/b
    DIR` walked all of DIR first, then failed (exit 1)."""
    try:
        config.check_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _model_name(text: str) -> str:
    """A model's name: the index holds the tags of each model's active version only, so no @VERSION."""
    if not text:  # argparse passes the default through here too
        return text
    name, _ = _parsed_ref(text)
    if "@" in text:
        raise argparse.ArgumentTypeError(f"{text}: give a model name without @VERSION (tags are its active version's)")
    return name


def _new_model_name(text: str) -> str:
    """A name to install a model under, refused as `train --name` refuses one (exit 2) before anything is read."""
    if text:  # (argparse passes the default through here too)
        try:
            config.check_name(text, "model")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


MOST = 2**31 - 1  # the largest count an option takes


def _count(text: str) -> int:
    """A whole number of at least 1, refused by argparse (exit 2, a usage line) before anything starts."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give 1 or more")
    if n > MOST:  # the API's 32-bit field: "Value out of range" from protobuf, exit 1
        raise argparse.ArgumentTypeError(f"{n}: give at most {MOST:,}")
    return n


class _BadArguments(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse's own, but for a mistake it catches (`--limit 0`, an unknown command): said as every other
    failure is, and with --json also as a JSON line on stdout, where a script had nothing to read. (Its
    subcommands' parsers are of this class too: argparse makes them so.)"""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise _BadArguments(f"{message} (`{self.prog} --help` says more)")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a --json given before a subcommand (`vibrary models --json list`) is not reset by the
    # subcommand's own default; main() sets False when none was given
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine output: one JSON object per line"
    )
    parser = _Parser(prog="vibrary", description="Tag your sample library by your own tags.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tag", parents=[common], help="tag files and folders now, without the daemon")
    p.add_argument("paths", nargs="+", metavar="PATH", type=_path)
    p.add_argument(
        "--model",
        action="append",
        type=_model_ref,
        metavar="NAME[@VERSION]",
        help="use this model: its active version (else its newest), or VERSION (repeatable)",
    )
    p.add_argument("--top", type=_count, default=3, metavar="K", help="at most K tags per model (default 3)")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("daemon", parents=[common], help="run the daemon in the foreground; `daemon stop` stops it")
    p.add_argument("action", nargs="?", choices=["stop"], help="stop the daemon running for this home")
    p.add_argument("--listen", default="", metavar="HOST:PORT", help="also serve on TCP (needs a token)")
    p.add_argument("--token", default="", help="token TCP clients must send (default $VIBRARY_TOKEN)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="decode threads (default: config.json's workers, else one per core)",
    )
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("watch", parents=[common], help="manage the daemon's watch folders")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("add", "watch a folder"), ("remove", "stop watching a folder")):
        a = actions.add_parser(action, parents=[common], help=text)
        a.add_argument("dir", metavar="DIR", type=_path)
    actions.add_parser("list", parents=[common], help="the watched folders")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", parents=[common], help="what the daemon is doing")
    p.add_argument("--wait", action="store_true", help="show progress until nothing is pending or being listed")
    p.set_defaults(func=cmd_status)

    for name, text in (("pause", "pause indexing (changes are still recorded)"), ("resume", "resume indexing")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.set_defaults(func=cmd_pause)

    p = sub.add_parser("tray", parents=[common], help="the system-tray status icon (needs the [tray] extra)")
    p.set_defaults(func=cmd_tray)

    p = sub.add_parser(
        "search",
        parents=[common],
        help="find files by tag: kick -acoustic snare|clap",
        description="Find files by tag. Every tag given must match; snare|clap (or snare OR clap) either one;"
        ' -acoustic (or NOT acoustic) leaves files with that tag out; quote a tag with spaces ("hi hat").'
        " Surest first with --limit.",
    )
    p.add_argument(
        "query", nargs="*", metavar="QUERY", help="tags: kick snare|clap -acoustic (AND, OR and NOT may be written)"
    )
    p.add_argument(
        "--min-score",
        type=_score,
        default=None,
        help="only tags scoring at least this, even a model's guesses for a file unlike its examples"
        " (default: the tags that hit)",
    )
    p.add_argument("--under", default=None, metavar="DIR", type=_path, help="only files under this folder")
    p.add_argument("--model", type=_model_name, default="", help="only tags from this model")
    p.add_argument("--limit", type=_count, default=0, help="at most this many files, the surest first")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("tags", parents=[common], help="what the index holds for these files")
    p.add_argument("paths", nargs="+", metavar="PATH", type=_path)
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("counts", parents=[common], help="how many files carry each tag")
    p.add_argument("--model", type=_model_name, default="", help="only this model's tags")
    p.set_defaults(func=cmd_counts)

    p = sub.add_parser("models", parents=[common], help="list, install, activate, deactivate, remove models")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="installed models; * marks the active ones")
    a = actions.add_parser("install", parents=[common], help="install an ONNX model file as a new version")
    a.add_argument("ref", metavar="FILE.onnx")
    a.add_argument("--name", default="", type=_new_model_name, help="install under this name")
    a.add_argument("--inactive", action="store_true", help="install without activating")
    for action, which in (("activate", "newest"), ("deactivate", "active"), ("remove", "newest")):
        a = actions.add_parser(action, parents=[common], help=f"{action} NAME (its {which} version) or NAME@VERSION")
        a.add_argument("ref", type=_model_ref, metavar="NAME[@VERSION]")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("dataset", parents=[common], help="labelled examples for training your own tags")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (
        ("create", "spectrograms of labelled audio files, stored here"),
        ("add", "more labelled files for a dataset (only they are decoded; its edits stay)"),
    ):
        a = actions.add_parser(action, parents=[common], help=text)
        a.add_argument("name", metavar="NAME", type=_dataset_name)
        a.add_argument("dirs", nargs="+", metavar="DIR", type=_path)
        a.add_argument(
            "--labels",
            choices=["folders", "top", "suggest"],
            default="folders",
            help="folders: each file's own folder names its tag (DIR/.../<tag>/*); top: the folder right under DIR "
            "does (DIR/<tag>/.../*); suggest: from folder names, file names and metadata (see `dataset suggest`)",
        )
        if action == "add":
            a.add_argument(
                "--restore",
                action="store_true",
                help="files and tags that edits removed (drop, relabel '') join again, and stay in",
            )
    a = actions.add_parser("suggest", parents=[common], help="suggested tags for files, from names and metadata")
    a.add_argument("dirs", nargs="+", metavar="DIR", type=_path)
    a = actions.add_parser("rename", parents=[common], help="rename a tag (to an existing tag: a merge)")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("old", metavar="OLD")
    a.add_argument("new", metavar="NEW")
    a = actions.add_parser("merge", parents=[common], help="merge tags into one")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("tags", nargs="+", metavar="TAG")
    a.add_argument("--into", required=True, metavar="TAG")
    a = actions.add_parser("drop", parents=[common], help="drop tags and their files from the dataset")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("tags", nargs="+", metavar="TAG")
    a = actions.add_parser("relabel", parents=[common], help="give one file another tag ('' drops it)")
    a.add_argument("name", metavar="NAME", type=_dataset_name)
    a.add_argument("path", metavar="PATH", type=_path)
    a.add_argument("tag", metavar="TAG")
    for action, text in (
        ("show", "classes, counts, upload size and advice on a dataset"),
        ("delete", "delete a dataset"),
    ):
        a = actions.add_parser(action, parents=[common], help=text)
        a.add_argument("name", metavar="NAME", type=_dataset_name)
    actions.add_parser("list", parents=[common], help="the datasets in this home")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("synonyms", parents=[common], help="how vendors spell your tags: BD → kick")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="every alias and its tag")
    a = actions.add_parser("add", parents=[common], help="one more alias for a tag (a new tag is fine)")
    a.add_argument("alias", metavar="ALIAS")
    a.add_argument("tag", metavar="TAG")
    a = actions.add_parser("remove", parents=[common], help="take out an alias, your own or a built-in one")
    a.add_argument("aliases", nargs="+", metavar="ALIAS")
    p.set_defaults(func=cmd_synonyms)

    p = sub.add_parser("train", parents=[common], help="train a model on a dataset, then install and activate it")
    p.add_argument("dataset", metavar="DATASET", type=_dataset_name)
    p.add_argument("--name", default="", help="model name (default: the dataset's)")
    p.add_argument("--trainer", default="local", metavar="local|HOST:PORT|cloud", help="where to train (default: here)")
    p.add_argument("--token", default="", help="token of a remote trainer (default $VIBRARY_TRAINER_TOKEN)")
    p.add_argument(
        "--base", choices=["demo", "none"], default="demo", help="demo (transfer from the built-in model) or none"
    )
    p.add_argument(
        "--epochs",
        type=_count,
        default=None,
        help="at most this many epochs (default 20 from the demo model, 40 with --base none; fewer once "
        "validation stops improving)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--as-new",
        action="store_true",
        help="train tags the demo model already knows (kick, snare, piano…, reverb, delay…) as new ones, over epochs, "
        "instead of fitting what it knows of them to your clips",
    )
    p.add_argument("--yes", action="store_true", help="cloud: accept the cost estimate without asking")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("trainer", parents=[common], help="the training service")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("serve", parents=[common], help="run the trainer service in the foreground")
    a.add_argument("--listen", default="127.0.0.1:7878", metavar="HOST:PORT", help="default 127.0.0.1:7878")
    a.add_argument("--token", default="", help="required on anything but loopback (default $VIBRARY_TRAINER_TOKEN)")
    a.add_argument("--data", default="", help="where shards and jobs are kept (default $VIBRARY_HOME/trainer)")
    a.add_argument("--tls-cert", default=os.environ.get("VIBRARY_TRAINER_TLS_CERT", ""), metavar="PEM")
    a.add_argument("--tls-key", default=os.environ.get("VIBRARY_TRAINER_TLS_KEY", ""), metavar="PEM")
    a = actions.add_parser("token", parents=[common], help="per-user tokens of this trainer (stored hashed)")
    a.add_argument("--data", default="", help="the trainer's data folder (default $VIBRARY_HOME/trainer)")
    data = _Parser(add_help=False)  # --data after the action too (`token add --data DIR bob`), as before it
    data.add_argument("--data", default=argparse.SUPPRESS, help="the trainer's data folder")
    tokens = a.add_subparsers(dest="token_action", required=True)
    for action, what in (("add", "a new token for USER, printed once"), ("remove", "USER's token and jobs stop")):
        tokens.add_parser(action, parents=[common, data], help=what).add_argument("user")
    tokens.add_parser("list", parents=[common, data], help="users with a token")
    a = actions.add_parser("health", parents=[common], help="exit 0 when the trainer at --target is serving")
    a.add_argument("--target", default="127.0.0.1:7878", metavar="HOST:PORT", help="default 127.0.0.1:7878")
    a.add_argument("--tls-ca", default="", metavar="PEM", help="default $VIBRARY_TRAINER_CA or the served cert")
    a.add_argument(
        "--server-name",
        default="",
        help="name the certificate is for (default: $VIBRARY_TRAINER_TLS_NAME, or the target's host)",
    )
    a.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    a = actions.add_parser("run-s3", parents=[common], help="run one cloud training job: s3://BUCKET/jobs/ID/job.json")
    a.add_argument("url", metavar="S3_URL")
    p.set_defaults(func=cmd_trainer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = _exclusions_as_words(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(words)
    except _BadArguments as e:
        json_asked = any(len(w) > 2 and "--json".startswith(w) for w in words)  # (--js: argparse's abbreviation)
        return _failed(argparse.Namespace(json=json_asked), str(e), 2)
    args.json = getattr(args, "json", False)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `vibrary search kick | head`: the reader has all it wants, which is no error to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one when Python flushes at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a writer cut short
    except UsageError as e:
        return _failed(args, str(e), 2)
    except UnicodeEncodeError as e:  # a path from an old archive, passed on to the daemon or the index
        name = e.object if isinstance(e.object, str) else ""
        return _failed(args, f"{os.fsencode(name)!r} is not valid UTF-8: rename it to use it here")
    except (CommandError, DaemonNotRunning, DaemonError, ModelError, ValueError, OSError) as e:
        return _failed(args, str(e))
    except sqlite3.OperationalError as e:  # locked by another process, a full disk: not damage
        return _failed(args, f"{config.home()}: {e}")
    except sqlite3.DatabaseError as e:  # damage found mid-query; opening says more (index.IndexDamaged)
        return _failed(args, f"{config.home()}: a database there is damaged ({e})")
    except KeyboardInterrupt:  # each command has cleaned up on its way out
        if args.json:  # a script reading stdout has its line, as for any other ending
            with contextlib.suppress(OSError, ValueError):
                print(json.dumps({"error": "interrupted", "exit_status": 130}))
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        # not through the interpreter's finalisation: a thread of onnxruntime's still at work there aborted
        # the process (134, "terminate called without an active exception") instead of exiting 130
        os._exit(130)


def _failed(args: argparse.Namespace, why: str, status: int = 1) -> int:
    """The command failed: said on stderr, and with --json also as one object on stdout, so that a script
    reading stdout has a line to read (it had none)."""
    print(f"vibrary: {why}", file=sys.stderr)
    if args.json:
        with contextlib.suppress(OSError):
            print(json.dumps({"error": why, "exit_status": status}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
