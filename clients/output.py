"""What the command modules share: how a command says things (one JSON object per line with --json, a line
for people otherwise: `_out`), a file's line whichever command read the file (`_file_line`, `_human_file`),
the two errors `main` turns into an exit status, and `_index`, the home's index as the commands that need no
daemon open it. Kept apart so that `tag`, `tags` and `search` say a file in one shape, and every command fails alike."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Collection, Iterable
from typing import Any

from tqdm import tqdm
from vibrary.daemon import config, registry
from vibrary.daemon.folders import readable_name
from vibrary.daemon.index import HIT_SCORE, WATCH_GONE, Index, ModelRow
from vibrary.daemon.spectrogram import SILENT

from .errors import json_asked
from .tray_state import many

LOG_EVERY_S = 10.0  # how often long work writes a line of progress where no bar can show


class Bar(tqdm):
    """tqdm's bar on a terminal; where none can show (a log file, a script's pipe) a line every LOG_EVERY_S
    instead ("spectrograms: 1,200 of 20,000 files done"): `dataset create` of a big pack, `tag` of a folder
    and `status --wait` said nothing there until they ended."""

    def __init__(self, total: int | None, desc: str, unit: str = "file") -> None:
        super().__init__(total=total, unit=unit, disable=None, file=sys.stderr, desc=desc)
        self.said_as, self._said_at = (desc, unit), time.monotonic()

    def update(self, n: float | None = 1) -> bool | None:
        if not self.disable:
            return super().update(n)
        self.n += n or 0
        self.log()
        return None

    def log(self) -> None:
        """Its line, once LOG_EVERY_S has passed since the last (called by update, or by whoever sets n)."""
        if self.disable and time.monotonic() - self._said_at >= LOG_EVERY_S:
            self._said_at = time.monotonic()
            desc, unit = self.said_as
            print(f"{desc}: {int(self.n):,} of {many(int(self.total or 0), unit)} done", file=sys.stderr, flush=True)


class CommandError(Exception):
    """The command failed; str() is printed and the exit status is 1."""


class UsageError(CommandError):
    """The command line asks for something that cannot make sense; exit status 2, as argparse's own."""


def _out(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    print(json.dumps(obj) if args.json else human, flush=True)


# what a file read fine with no tags is (`note` in its line): silent, or, in the index, heard by no active model
SILENT_TAGS = f"no tags: {SILENT}"
NO_MODEL = "no model is active (`vibrary models activate NAME`)"
NO_MODEL_TAGS = f"no tags: {NO_MODEL}"
NOT_READ_YET = "not read yet (pending)"
# a pending file's tags are its last reading's (it changed since, or a model re-tags the library): `tags` says so, since
# a file overwritten with a kick while indexing was paused showed the flute it had been, as any tagged file
READ_AGAIN = "to be read again: a model re-tags the library, or the file changed"

UNUSABLE = (
    "its file is missing or damaged: `vibrary models install` the same file again restores it, its tags kept"
    " (or `vibrary models remove {ref}`)"
)
FAILING = (
    "it failed on every file it was given, which the other models tag: `vibrary models deactivate {ref}`, "
    "or activate a version that works"
)


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
    line: dict[str, Any] = {
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
    elif state == "pending" and not line["tags"] and not error:  # `"tags": []` alone read as a file with none
        line["note"] = NOT_READ_YET
    if state == "pending" and line["tags"]:  # its last reading's tags (`note` says why a file has none)
        line["pending"] = True
    return line


_CONTROL = {**{c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))}, 9: "\\t", 10: "\\n", 13: "\\r"}
# in bash's $'…' the character's UTF-8 bytes (U+0085 is c2 85): \x85 is a byte of its own, and \u0085 is the
# character in a UTF-8 locale only (a cron job's or an ssh session's C locale pasted it as text)
_QUOTED = {**_CONTROL, **{c: "".join(f"\\x{b:02x}" for b in chr(c).encode()) for c in range(128, 160)}}
_CONTROL_BUT_LINES = {c: said for c, said in _CONTROL.items() if c != 10}


def terminal_safe(message: str) -> str:
    """A message as a terminal may print it: its control characters escaped (a folder named with an escape
    sequence, quoted by an error, recoloured the terminal or set its title), its line breaks kept."""
    return message.translate(_CONTROL_BUT_LINES)


def _shown(path: str) -> str:
    """A file name as a person reads it on one line: a byte that is not UTF-8 (an old archive's name) as `\\xe9`,
    as the daemon sends such names; one with a newline or tab, which file systems allow, quoted as bash's $'…'
    would (`$'two\\nlines.wav'`), its backslashes doubled there, so that it reads as no name with a backslash
    and an n (`--json` keeps the name as it is)."""
    if not any(ord(c) in _CONTROL for c in path):
        return readable_name(path)
    quoted = readable_name(path.replace("\\", "\\\\").replace("'", "\\'")).translate(_QUOTED)
    return f"$'{quoted}'"


def _human_file(line: dict[str, Any], state: str = "indexed", again: str = "") -> str:
    """`state`: the index's (pending, indexed …); a file `vibrary tag` read here is indexed. `again`: said after the
    tags of a pending file (`tags`; a search says how many there are once, on stderr)."""
    if line["error"] and state == "pending":  # a reason that passes (no file handles left), or a drive away
        again = "" if line["error"] == WATCH_GONE else " again"  # (one never read yet waited "again")
        return f"{_shown(line['path'])}: waits to be read{again} ({line['error']})"
    if line["error"]:
        return f"{_shown(line['path'])}: ERROR {line['error']}"
    by_model: dict[str, list[str]] = {}
    for t in line["tags"]:  # "dark? 0.91": a guess, the file sounds like none of the model's examples
        by_model.setdefault(t["model"], []).append(f"{t['tag']}{'?' if t['unfamiliar'] else ''} {t['score']:.2f}")
    again = f" ({again})" if again and by_model and state == "pending" else ""
    if by_model and line.get("note"):  # (`tag`: a model that failed on it, the others' tags shown)
        again += f" ({line['note']})"
    if len(by_model) > 1:  # each model's tags apart: two models can give the same tag
        return (
            f"{_shown(line['path'])}: "
            + "; ".join(f"{model}: {', '.join(tags)}" for model, tags in by_model.items())
            + again
        )
    none = f"({state if state == 'pending' else line.get('note') or state})"  # one not read yet has none either
    return f"{_shown(line['path'])}: {', '.join(next(iter(by_model.values()), [none]))}{again}"


def _print_files(args: argparse.Namespace, files: Iterable[Any], no_tags: str = SILENT_TAGS, again: str = "") -> int:
    n = 0
    for f in files:
        unfamiliar = {t.model for t in f.tags if t.unfamiliar}
        tags = ((t.model, t.tag, t.score) for t in f.tags)
        line = _file_line(f.path, tags, f.error, unfamiliar, f.state, no_tags)
        _out(args, line, _human_file(line, f.state, again))
        n += 1
    return n


def _index() -> tuple[Index, Any]:
    home_dir = config.home()
    index = Index(config.index_path(home_dir))
    registry.ensure_models(index, home_dir)
    return index, home_dir


class Terminated(KeyboardInterrupt):
    """A `kill`, a `timeout` or a closed terminal (SIGTERM, SIGHUP): the command ends as at a Ctrl-C, cleaning up
    on its way out, and exits 128 + the signal's number as a shell reports it. (It ended at once, its files in
    flight cut off, and a script reading `--json` had no last line.)"""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated ({signal.Signals(signum).name})")
        self.status = 128 + signum


def flush_both() -> None:
    """What was printed, out before an `os._exit` (which skips the interpreter's own flush); a stream gone
    (its reader left, or closed) is no matter then."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


PAIR_S = 1.0  # a closed terminal sends SIGHUP and SIGTERM together: one ending, not two
_ended_at: list[float] = []  # when the first ending signal came


def terminated(signum: int, frame: object) -> None:
    """The first ending signal ends the command as a Ctrl-C does; a second one that is not the first's pair ends
    the process at once: a clean-up that hangs (a read of a stalled network drive) held it for good, every
    later signal ignored (and ignored by the programs it started)."""
    if not _ended_at:
        _ended_at.append(time.monotonic())
        raise Terminated(signum)
    if time.monotonic() - _ended_at[0] < PAIR_S:
        return
    flush_both()
    if json_asked(sys.argv[1:]):  # its last line, as every ending has (straight to the file: a print cut short)
        ended = {"error": f"terminated ({signal.Signals(signum).name})", "exit_status": 128 + signum}
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), (json.dumps(ended) + "\n").encode())
    os._exit(128 + signum)


def changed_tags(was: ModelRow, now: ModelRow) -> tuple[dict[str, object], str]:
    """How the tags of `now`, a version taking `was`'s place, differ from it: for --json, and in words (empty
    when they are the same). A search for a tag the version before had found nothing, and nothing said why."""
    gone, new = sorted(set(was.classes) - set(now.classes)), sorted(set(now.classes) - set(was.classes))
    if not gone and not new:
        return {}, ""
    said = "; ".join(f"{what} {', '.join(tags)}" for what, tags in (("gone:", gone), ("new:", new)) if tags)
    return {"since": was.ref, "gone": gone, "new": new}, f"its tags are not {was.ref}'s: {said}"
