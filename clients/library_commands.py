"""The commands on what the library holds and which models tag it: `tag` (files read here, no daemon),
`search`, `tags`, `counts` (answered by the daemon) and `models` (on the home's index directly)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vibrary.daemon import config, registry
from vibrary.daemon.folders import UNNAMED, as_asked, indexed_path, storable, warn
from vibrary.daemon.index import HIT_SCORE, NO_SUCH_PATH, Index, Job, ModelRow, Result, within
from vibrary.daemon.infer import ModelError
from vibrary.daemon.modelref import parse_ref
from vibrary.proto import daemon_pb2 as pb

from .client import Client
from .errors import VibraryError
from .output import (
    FAILING,
    NO_MODEL,
    NO_MODEL_TAGS,
    READ_AGAIN,
    SILENT_TAGS,
    UNUSABLE,
    Bar,
    CommandError,
    UsageError,
    _file_line,
    _human_file,
    _index,
    _out,
    _print_files,
    changed_tags,
    terminal_safe,
)
from .query import (
    OPERATORS,
    QueryError,
    join_tags,
    joined_as,
    parse_query,
    respell,
    spelled_as,
    synonyms,
    unknown_tags,
    unquoted,
)
from .tray_state import many, stand_ins

NO_AUDIO_HERE = "no audio files in this folder"  # (a folder's line of `vibrary tag`)
CANNOT_READ = "no audio files read: it, or a folder in it, cannot be read"


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
    # every model asked for by name, or at least one active one: `--model mine --model demo` with mine damaged
    # tagged with demo alone, exit 0, mine's tags missing from every line unsaid
    unloaded = [row for row in rows if row.id not in {m.id for m in models}]
    if unloaded and (args.model or not models):  # ("activate one" of a model that was active, its file gone)
        why = "; ".join(
            f"{row.ref}: {'it could not be loaded' if registry.usable(row) else 'its file is missing or damaged'}"
            for row in unloaded
        )
        which = f"{many(len(unloaded), 'model')} asked for cannot be used" if models else "no usable model"
        raise CommandError(f"{which} ({why}): `vibrary models list` says how to mend it")
    if not models:
        raise CommandError("no usable model: activate one with `vibrary models activate NAME`")
    names = {m.id: m.ref.split("@")[0] for m in models}
    if len(set(names.values())) < len(names):  # `--model mine@1 --model mine@3`: told apart by version
        names = {m.id: m.ref for m in models}
    settings = config.Settings.load(home_dir)
    absent = {p for p in args.paths if not os.path.lexists(p)}  # a typo is not a file "deleted or moved"
    # a linked folder in DIR is followed, as a link given is: its files were left out without a word (the
    # daemon's watches do not follow links, and say so; this reads the files once, and watches nothing)
    # the files to tag and, in their places, the lines of the folders that hold none: such a folder got no line,
    # and beside other paths not a word (a script could not tell it from one not asked for); one whose files
    # were named before it has its lines there
    order: list[str | dict[str, Any]] = []
    seen: set[str] = set()
    for p in args.paths:
        unread: list[str] = []
        audio: list[str] = []  # the first audio file met in it, named before or not (by a link, another spelling)

        def unreadable(folder: str, why: str, unread: list[str] = unread) -> None:
            warn(folder, why)
            unread.append(why)

        found = list(expand([p], links=True, seen=seen, on_error=unreadable, met=lambda f, a=audio: a or a.append(f)))
        if not found and os.path.isdir(p) and not audio:
            order.append(_file_line(p, [], f"{CANNOT_READ} ({unread[0]})" if unread else NO_AUDIO_HERE))
        order.extend(found)
    files = [f for f in order if isinstance(f, str)]
    if not files:
        print(terminal_safe(f"vibrary: no audio files in {', '.join(args.paths)}"), file=sys.stderr)
    bar = Bar(total=len(files), desc="tagging")
    lock = threading.Lock()
    reader_gone = threading.Event()  # `vibrary tag --json DIR | head`: it has all it wants
    unwritten: list[OSError] = []  # stdout could not be written (a full disk): the lines were lost, exit 0
    # files are read in parallel and come back in any order: each is said in the order given (a script pairs
    # its paths with the lines, or compares two runs), held until those before it are done
    done: dict[int, dict] = {n: line for n, line in enumerate(order) if isinstance(line, dict)}
    said = 0
    # files submitted beyond those said, at most: one slow file (a stalled network drive) held every line
    # after it in memory, said nothing meanwhile, and `| head` went unnoticed until it came
    ahead = threading.Condition(lock)
    window = 4 * settings.queue_size

    def say_ready() -> None:
        """The lines done, as far as the next one not done (the caller holds the lock)."""
        nonlocal said
        while said in done and not reader_gone.is_set():
            line = done.pop(said)
            said += 1
            bar.clear()
            try:
                _out(args, line, _human_file(line))
            except BrokenPipeError:  # (in a pipeline thread: it was a traceback per batch, and "pending")
                reader_gone.set()  # main() says it, once the pipeline has stopped
            except OSError as e:  # (`> tags.jsonl` on a full disk: caught by the pipeline, it was exit 0)
                unwritten.append(e)
                reader_gone.set()
        ahead.notify_all()

    def sink(results: list[Result]) -> None:
        with lock:
            for r in results:
                tags = [(names[mid], t, s) for mid, ranked in r.tags.items() for t, s in ranked[: args.top]]
                tags.sort(key=lambda x: -x[2])
                error = NO_SUCH_PATH if r.vanished and r.job.path in absent else r.error
                done[r.job.id] = line = _file_line(r.job.path, tags, error, {names[mid] for mid in r.unfamiliar})
                if r.model_errors:  # the other models' tags kept: said beside them (or beside why it has none)
                    failed = "; ".join(r.model_errors.values())
                    line["note"] = f"{line['note']}; {failed}" if line.get("note") else failed
                bar.update(1)
            say_ready()

    pipeline = Pipeline(
        models,
        sink,
        workers=settings.worker_count,
        batch_size=settings.batch_size,
        queue_size=settings.queue_size,
        store_min_score=settings.store_min_score,
        on_failing=lambda ref: bar.write(
            f"vibrary: model {ref} failed on every file it was given: set aside, the others tag the files", sys.stderr
        ),
        fail_files=False,
    )
    with lock:  # (folders with no audio before the first file)
        say_ready()
    try:
        for n, path in enumerate(order):
            if not isinstance(path, str):
                continue
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
    if unwritten:
        raise CommandError(f"could not write the results: {unwritten[0].strerror or unwritten[0]}")
    if reader_gone.is_set():
        raise BrokenPipeError
    return 0


# -- commands that talk to the daemon -------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> int:
    # usage errors said before any daemon is asked: of the words as they are, and as they would be split (the
    # query itself is read once the models say which words are tags with spaces, below)
    _parsed(args.query)
    tags, left_out = _parsed([part for w in args.query for part in _as_words(w, lambda _: False)])
    if not tags and not left_out and not args.under:  # (`search " "`, a blank "$TAG": it listed the library)
        raise UsageError("give at least one tag to search for")
    with Client() as c:
        models = c.models()
        # (a version standing in for the active one is searched as well: hand_over)
        known = {t for m in models if (m.active or m.serving) and (args.model or "") in ("", m.name) for t in m.classes}
        table = synonyms(config.home(create=False))
        spelled = {tag for m in models for tag in m.classes}

        def is_tag(text: str) -> bool:  # a model's tag ("hi hat"), or a spelling of an active model's ("hi hats")
            return config.tag_key(text) in spelled or spelled_as(config.tag_key(text), known, table) is not None

        groups, excluded = _parsed(_query_words(args.query, is_tag, joined_as(known, table)))
        groups, excluded, respelled = respell(groups, excluded, known, table)
        n = _print_files(
            args,
            c.search(
                groups, excluded, args.min_score, args.under or "", args.model or "", args.limit, bool(args.limit)
            ),
        )
        unknown = unknown_tags(known, groups, excluded, args.model or "", _inactive(models, args.model))
        if n == 0 and args.under and not os.path.isdir(args.under):  # a typo, as scripts must tell from no match
            if unknown:  # (a typo in the query too: said, without "0 files", which it is not)
                print(f"vibrary{unknown}", file=sys.stderr)
            with contextlib.suppress(VibraryError):  # a folder of a drive unplugged is no typo: said which
                _say_missing(c, [args.under])
            raise CommandError(f"no folder {args.under} (--under)")
        if not args.json or unknown:  # (stderr is the human's with --json too: a typo was silent there)
            print(f"{many(n)}{unknown}", file=sys.stderr)
        # words typed apart, each a tag, searched as one tag with spaces: said, as a respelling is (`search punchy
        # kicks` found the tag "punchy kicks", where the producer meant punchy AND kicks); not words quoted together
        typed = {config.tag_key(q) for q in args.query}
        wanted = dict.fromkeys(w for g in groups for w in g)
        joined = [w for w in wanted if " " in w and all(x in typed and x in known for x in w.split())]
        if joined:
            each = " AND ".join(joined[0].split())
            said = ", ".join(repr(w) for w in joined)
            print(f"vibrary: searched {said} as one tag (`vibrary search {each}` for each word)", file=sys.stderr)
        # a word a model of one's own has as a tag, that the synonyms read as another tag searched: `search hh` found
        # only a model's hh once one was trained, not the demo's hihat it found before, unsaid
        # (not when that tag is searched too: `search hh OR hihat` was advised itself)
        spells = {w: table.tag_of(w) for w in wanted if w in known}
        for w, t in ((w, t) for w, t in spells.items() if t in known and t not in wanted):
            also = f"`vibrary search {w} OR {t}` finds both"
            print(f"vibrary: {w!r} is a tag of its own to a model, not the {t!r} it spells ({also})", file=sys.stderr)
        if respelled:  # `search hh` found nothing, though `synonyms list` says hh is hihat
            said = ", ".join(f"{w!r} as {t!r}" for w, t in sorted(respelled.items()))
            print(f"vibrary: searched {said}, the tag{'s' if len(respelled) > 1 else ''} it spells", file=sys.stderr)
        with contextlib.suppress(VibraryError):  # the results are out: a note not had is no failure of theirs
            if n == 0 and not unknown and args.min_score is None and groups:
                _say_unfamiliar(c, groups, excluded, args)
            _say_missing(c, [args.under] if args.under else [])
            _say_unfinished(c.status())
    return 0


def _trained(row: ModelRow, obj: dict[str, Any]) -> str:
    """What a version of the user's training measured, into `obj` and said (the built-in model's figures are in
    docs/demo-model.md; one installed from elsewhere has none)."""
    from vibrary.daemon.training import measured

    summary = {} if row.builtin else registry.training_summary(row)
    accuracy, of = measured(summary)
    if not summary or math.isnan(accuracy):
        return ""
    obj.update(accuracy=round(accuracy, 4), accuracy_of=of, train_clips=summary.get("train_clips"))
    return f"; trained on {summary.get('train_clips', '?')} clips, {accuracy:.0%} right on {of.split(' (')[0]}"


def _remove_all(args: argparse.Namespace, index: Index, home_dir: Path, name: str) -> int:
    """Every version of a model, the active one last: removed first, it activated the one before, for a moment."""
    rows = sorted((m for m in index.models() if m.name == name), key=lambda m: (m.active, m.version))
    try:
        for row in rows:
            registry.remove(index, home_dir, row)
    except ModelError as e:
        raise CommandError(str(e)) from None
    refs = [row.ref for row in rows]
    _out(args, {"model": name, "action": "remove", "versions": [r.version for r in rows]}, f"removed {', '.join(refs)}")
    return 0


def _say_unfinished(s: pb.Status) -> None:
    """A search while files wait to be read finds a part of what it will: after a model was installed or
    activated, "103 files" of 1,103, and "0 files" while paused, unsaid."""
    paused = "; indexing is paused (`vibrary resume`)" if s.paused else ""
    if new := s.pending - s.retagging:
        print(f"vibrary: {many(new)} not tagged yet{paused}: results may be incomplete until they are", file=sys.stderr)
    if s.retagging and s.standing_in:  # a new version: the one before it answers for it, none missing
        instead = "; ".join(f"{old}'s tags answer for {new}'s" for old, new in stand_ins(s))
        print(f"vibrary: {many(s.retagging)} being re-tagged{paused}: until they are, {instead}", file=sys.stderr)
    elif s.retagging:  # a model changed (its tags are missing, the others' found) or the files did (theirs all)
        print(
            f"vibrary: {many(s.retagging)} being re-tagged, a model or the files changed{paused}: some of their tags"
            " may be missing from the results until they are",
            file=sys.stderr,
        )


GUESSES_COUNTED = 1000


def _say_unfamiliar(c: Client, groups: list[list[str]], excluded: list[str], args: argparse.Namespace) -> None:
    """A tag just trained found nothing, bare "0 files", where its model scored files high but found them unlike
    its examples (docs/familiarity.md): such guesses are kept, marked '?', and found by a score asked for."""
    found = c.search(groups, excluded, HIT_SCORE, args.under or "", args.model or "", GUESSES_COUNTED + 1)
    guessed = sum(1 for _ in found)
    if guessed:
        over = "over " if guessed > GUESSES_COUNTED else ""
        guessed = min(guessed, GUESSES_COUNTED)
        print(
            f"vibrary: {over}{many(guessed)} scored {HIT_SCORE:g} or more but {'sounds' if guessed == 1 else 'sound'}"
            " unlike the examples the model"
            f" learned from (shown with '?'): --min-score {HIT_SCORE:g} lists them",
            file=sys.stderr,
        )


def _parsed(words: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    try:
        return parse_query(words)
    except QueryError as e:
        raise UsageError(str(e)) from None


def _as_words(word: str, is_tag: Callable[[str], bool]) -> list[str]:
    """A quoted word as the query's words: a tag with spaces ("hi hat", or a spelling of one: "hi hats") whole,
    also left out or among alternatives ("-hi hat", "NOT hi hat", "kick OR hi hat": NOT and OR are their own
    words; "NOT hi hat" was read as a tag "not hi hat", "kick OR hi hat" as kick OR hi, and hat); alternatives
    joined by '|' whole when each is a tag or one word ("hi hat|mid" was "hi", then "hat|mid"); any other,
    its words. A quoted tag that has an operator word in it (a model's "rock and roll") whole."""
    if " " in word.strip() and is_tag(unquoted(word.strip().removeprefix("-"))):  # (it was rock AND roll)
        return [word.strip()]
    alternatives = [a.strip() for a in word.strip().split("|")]
    if len(alternatives) > 1:
        return ["|".join(alternatives)] if all(is_tag(a) or len(a.split()) <= 1 for a in alternatives) else word.split()
    found: list[str] = []
    run: list[str] = []  # the words since the last operator: one tag, or words each

    def end_run() -> None:
        phrase = " ".join(run)
        found.extend([phrase] if len(run) > 1 and is_tag(phrase.lstrip("-")) else run)
        run.clear()

    for w in word.split():
        if w.lower() in OPERATORS:
            end_run()
            found.append(w)
        else:
            run.append(w)
    end_run()
    return found


def _query_words(words: Sequence[str], is_tag: Callable[[str], bool], is_class: Callable[[str], bool]) -> list[str]:
    """The query's words: a quoted one as `_as_words` reads it, and unquoted words that spell a model's tag with
    spaces as that tag (`search lead synth`, a dataset's folder `Lead Synth/`), as `Client.search` reads them;
    not through synonyms, which made `bass synth` one word, the bass."""
    return join_tags([part for w in words for part in _as_words(w, is_tag)], is_class)


def cmd_counts(args: argparse.Namespace) -> int:
    with Client() as c:
        counts = list(c.counts(args.model))
        for n in counts:
            _out(args, {"model": n.model, "tag": n.tag, "files": n.files}, f"{n.files:8d}  {n.tag}  ({n.model})")
        models = c.models() if args.model or not counts else []
        if args.model and (inactive := _inactive(models, args.model)):  # it printed nothing
            print(f"vibrary: {inactive}", file=sys.stderr)
        elif not counts and not any(m.active for m in models):  # (it sent people to --min-score, which finds none)
            print(f"vibrary: {NO_MODEL}", file=sys.stderr)
        elif not counts and c.status().indexed:  # (nothing at all, as of no model of that name)
            of = f" of {args.model}" if args.model else ""
            print(
                f"vibrary: no file has a tag{of} that searches find: a model's tags of files that sound unlike its"
                f" examples are guesses (`vibrary search TAG --min-score {HIT_SCORE:g}` lists them)",
                file=sys.stderr,
            )
        elif not counts:
            print("vibrary: no file has a tag yet (`vibrary status` says what is indexed)", file=sys.stderr)
        _say_missing(c)
    return 0


def _inactive(models: Sequence[pb.Model], name: str | None) -> str:
    """What to say of a model asked for by name that is installed and not active ("" when none is so): the index
    holds only the active models' tags."""
    if not name or any(m.active for m in models if m.name == name):
        return ""
    return f"model {name} is not active (`vibrary models activate {name}` tags the library with it)"


def _say_missing(c: Client, unders: Sequence[str] = (), kept: bool = False) -> None:
    """Files under a watch folder not there now are left out of searches and counts (a DAW cannot load them):
    with a drive unplugged, `search kick` said "0 files" and `counts` nothing, as of an empty library. `kept`:
    `tags` shows them, as the index last had them (it showed them as if they were there)."""
    asked = [indexed_path(os.path.expanduser(u)) for u in unders]  # as watches are held: links resolved
    missing = [m for m in c.watch_list().missing if not asked or any(within(u, [m]) or within(m, [u]) for u in asked)]
    if missing:
        said = "their tags as the index last had them" if kept else "left out"
        print(
            terminal_safe(
                f"vibrary: not there now, {said}: the files under {', '.join(missing)}"
                " (a drive unplugged, a folder moved? `vibrary status` says more)"
            ),
            file=sys.stderr,
        )


def cmd_tags(args: argparse.Namespace) -> int:
    with Client() as c:
        # the index answers with the active models' tags: with none active, no file has any
        idle = not any(m.active for m in c.models())
        # a name that is not UTF-8 (an old archive's) is in no index: said for it, the others asked (one such
        # path given failed the whole command, the lines of the good ones with it)
        unnamed = [p for p in args.paths if not storable(p)]
        for p in unnamed:
            _out(args, line := _file_line(p, [], UNNAMED), _human_file(line))
        asked = [p for p in args.paths if p not in unnamed]
        if asked:
            _print_files(args, _as_given(c.tags(asked), asked), NO_MODEL_TAGS if idle else SILENT_TAGS, READ_AGAIN)
        _say_missing(c, args.paths, kept=True)
    return 0


def _as_given(files: Iterable[pb.FileTags], paths: Sequence[str]) -> Iterator[pb.FileTags]:
    """The files' paths as `tag` says them, as given or joined to the folder given (the index holds them
    absolute, links to folders resolved): a script comparing `tag` and `tags` lines, "the same shape", found
    no path in both."""
    given: dict[str, str] = {}
    for p in paths:  # (the daemon answers each as asked, absolute: an older one as the index spells it)
        for spelled in (os.path.abspath(p), indexed_path(p)):
            given.setdefault(spelled, p)  # (the first spelling of one path given twice, as `tag` says it)
    for f in files:
        f.path = as_asked(f.path, given)
        yield f


# -- models: on the home's index directly; a running daemon follows within a second ------------------------
def cmd_models(args: argparse.Namespace) -> int:
    index, home_dir = _index()
    if args.action == "list":
        aside: dict[int, tuple[str, str]] = {}
        with contextlib.suppress(ValueError):  # (the daemon's: a model it set aside for failing on every file)
            aside = config.failing(home_dir, {m.id: m.ref for m in index.tagging_models()})  # (as the daemon saves it)
        for m in index.models():
            obj = {
                "model": m.name,  # as every other line names a model (install, activate, train, tag)
                "name": m.name,  # kept: scripts read it
                "version": m.version,
                "active": m.active,
                "builtin": m.builtin,
                "classes": list(m.classes),
                "path": m.path,
                "serving": m.serving,
            }
            obj["usable"] = registry.usable(m)
            broken = "" if obj["usable"] else f"  ({UNUSABLE.format(ref=m.ref)})"
            if m.serving and not m.active:
                broken += "  (searches read its tags until the active version has tagged the library)"
            if m.active and aside.get(m.id, ("",))[0] == m.ref:  # listed active, and tagging nothing
                obj["failing"] = aside[m.id][1]
                broken = f"  (set aside: {FAILING.format(ref=m.ref)})"
            # when, and what its training measured: versions of the same tags told apart (which to go back to)
            obj["installed_at"] = when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.installed))
            trained = _trained(m, obj)
            line = f"{'*' if m.active else ' '} {m.ref:24} {len(m.classes):3} classes  {m.path}{broken}"
            _out(args, obj, f"{line}\n    installed {when}{trained}; tags: {', '.join(m.classes)}")
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
        # (`active` as it is: the same file installed again --inactive leaves its version as it was)
        obj = {"model": row.name, "version": row.version, "classes": list(row.classes), "active": row.active}
        obj["installed"] = row.id not in known  # False: the same file was installed already, as this version
        said = "installed" if obj["installed"] else "already installed as"
        human = f"{said} {row.ref} ({len(row.classes)} classes)"
        if was is not None and not args.inactive:
            obj["deactivated"] = was.ref
            human += f"; active now in place of {was.ref} (`vibrary models activate {was.ref}` goes back)"
        kin = was or next((m for m in reversed(before) if m.name == row.name and m.id != row.id), None)
        if kin is not None and not set(kin.classes) & set(row.classes):  # a version of another tag family?
            tags = ", ".join(kin.classes[:5]) + ("…" if len(kin.classes) > 5 else "")
            then = "once activated, " if args.inactive else ""
            print(
                f"vibrary: {row.ref} shares no tag with {kin.ref} ({tags}): {then}a version of"
                f" {row.name} replaces its tags; another model name (--name) keeps both",
                file=sys.stderr,
            )
        _out(args, obj, human)
        return 0
    try:
        name, version = parse_ref(args.ref)
    except ValueError as e:
        raise CommandError(str(e.args[0])) from None
    if args.action == "remove" and args.all and version:  # (a usage error whether that version exists or not)
        raise UsageError(f"--all removes every version of a model: give NAME, not {args.ref}")
    try:
        row = index.model(name, version, active_first=args.action != "remove")
    except (KeyError, ValueError) as e:
        raise CommandError(str(e.args[0])) from None
    if args.action == "remove" and args.all:  # one command a version, each activating the one before
        return _remove_all(args, index, home_dir, name)
    if args.action == "remove":
        try:
            successor = registry.remove(index, home_dir, row)
        except ModelError as e:
            raise CommandError(str(e)) from None
        instead = {"activated": successor.ref} if successor else {}
        obj = {"model": row.name, "version": row.version, "action": "remove", **instead}
        human = f"removed {row.ref}" + (f"; {successor.ref} is active instead" if successor else "")
        changed, said = changed_tags(row, successor) if successor else ({}, "")
        if changed:  # (a version of other tags took its place, unsaid: the library's tags changed family)
            obj["tags_changed"] = changed
            human += f", and {said}"
        elif row.active and not successor:
            human += f": no version of {row.name} tags the library now"
        _out(args, obj, human)
        return 0
    active = args.action == "activate"
    obj = {"model": row.name, "version": row.version, "action": args.action, "changed": row.active != active}
    if not active and not row.active:  # a second `deactivate NAME` said "deactivated NAME@3" again
        _out(args, obj, f"{row.ref} was not active" if version else f"nothing of {row.name} was active")
        return 0
    if active and row.active:  # likewise a second `activate`
        _out(args, obj, f"{row.ref} was already active")
        return 0
    try:
        index.set_active(row, active)
    except KeyError as e:  # removed by another command since it was read
        raise CommandError(str(e.args[0])) from None
    _out(args, obj, f"{args.action}d {row.ref}")
    return 0
