"""The commands that make the labelled examples your own tags are trained on: `dataset` (create, add, edit,
`suggest` tags from names and metadata) and `synonyms` (how vendors spell your tags)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import shlex
import sqlite3
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm
from vibrary.daemon import config
from vibrary.daemon.index import Index

from .output import Bar, CommandError, _out, _shown, terminal_safe
from .tray_state import many


def _size(n: int) -> str:
    """A pack of one-shots uploads a few hundred kB, which "0.0 MB" would hide."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


_LEFT_OUT = {
    "unreadable": "unreadable",
    "silent": "silent",
    "duplicate": "the same sound as another",
    "untagged": "with no tag suggested",  # --labels suggest: never read
}
NO_TAG = "no tag suggested"
NO_TAG_WAYS = "add a synonym (`vibrary synonyms add`), or put the file in a folder named by its tag"


def _no_tag(s: Any, table: Any) -> str:
    """Why a file has no suggestion (NO_TAG), and the way to one: its names held only words for how a sound is (loop,
    drums, dark), which are a tag once the user's own synonyms name them (`synonyms add drum drums`); it said
    only "add a synonym" of a word the table has."""
    if not s.alternatives:
        return NO_TAG_WAYS
    if any(table.is_class(tag) for tag in s.alternatives):  # `Kicks & Snares/Take 01`: which of them, unsaid
        return f"its names name more than one sound ({', '.join(s.alternatives)}): rename it, or relabel it"
    from vibrary.daemon.suggest import LOOP

    # what it is rather than its form: `Loops/Drum Loop 140` says loop, then drums
    first = next((tag for tag in s.alternatives if tag != LOOP), s.alternatives[0])
    return (
        f"its names say only how it sounds ({', '.join(s.alternatives)}):"
        f" `vibrary synonyms add {first} {first}` makes {first} a tag of yours"
    )


def _sure_to_delete(home_dir: Path, name: str) -> bool:
    """Asked on a terminal (a script is not asked): `dataset delete` took a dataset's confirmed tags and every
    edit made to them at once, without a word. True off a terminal."""
    from vibrary.daemon import dataset

    if sys.stdin is None or not sys.stdin.isatty() or name not in dataset.names(home_dir):  # (none: delete says so)
        return True
    try:
        manifest = dataset.load(home_dir, name)[0]
        what = f"{many(manifest.clips, 'clip')} in {len(manifest.classes)} tags, with its edits"
    except (ValueError, OSError):  # damaged: deleted all the same, once asked
        what = "damaged"
    print(
        f"delete dataset {name} ({what}; your audio files are not touched)? [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _why_left_out(kinds: dict[str, int]) -> str:
    return ", ".join(f"{n} {_LEFT_OUT[kind]}" for kind, n in kinds.items() if n)


def _dataset_line(
    name: str, report: Any, untagged: Sequence[str] = (), made_now: bool = True
) -> tuple[dict[str, Any], str]:
    """`untagged`: the files --labels suggest had no tag for, left out before the build (counted with the
    others: "2 files left out" followed five "skipped" lines). `made_now` False (an add, show, an edit): the
    files left out are those of the build that made it ("4 files left out" under an add's "nothing added: 37
    new files left out" read as two counts of one thing)."""
    from vibrary.daemon.advice import MORE

    manifest, failed = report.manifest, len(report.failed) + len(untagged)
    left_out = {**report.left_out, "untagged": len(untagged)} if untagged else report.left_out
    obj = {
        "dataset": name,
        "classes": manifest.classes,
        "clips": manifest.clips,
        "per_class": report.per_class,
        "audio_bytes": report.audio_bytes,
        "upload_bytes": manifest.size,
        "ratio": round(report.ratio, 1),
        "failed": failed,  # every file left out; why, counted:
        "left_out": left_out,
        "left_out_files": [  # (stderr names a few)
            *({"path": path, "error": why} for path, why in report.failed),
            *({"path": path, "error": NO_TAG} for path in untagged),
        ],
        "advice": report.advice,
    }
    why = _why_left_out(left_out)
    human = (
        f"dataset {name}: {many(manifest.clips, 'clip')} in {len(manifest.classes)} classes "
        f"({', '.join(f'{c} {n}' for c, n in report.per_class.items())})\n"
        f"audio {_size(report.audio_bytes)} → upload {_size(manifest.size)} "
        f"({report.ratio:.0f}× smaller, spectrograms only)"
        + (f"\n{many(failed)} left out{'' if made_now else ' when it was made'} ({why})" if failed else "")
        + (f"\n{report.advice}" if report.advice else "")
        + (f"\nmore examples: `vibrary dataset add {name} DIR...`" if MORE in report.advice else "")
    )
    return obj, human


def _synonyms() -> Any:
    from vibrary.daemon.suggest import Synonyms

    return Synonyms.load(config.home())


def _suggestions(dirs: Sequence[str], table: Any = None) -> list[Any]:
    """`table`: the synonym table, when the caller reads it too (it is loaded otherwise)."""
    from vibrary.daemon.suggest import suggest

    try:
        found = suggest(dirs, _synonyms() if table is None else table)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    if not found:  # rather than print nothing at all (a README given read "no audio files under README.txt")
        from vibrary.daemon.decode import why_not_read

        files = [p for p in dirs if os.path.isfile(p)]
        said = [f"{p}: {why_not_read(p) or 'not read'}" for p in files]
        if folders := [p for p in dirs if p not in files]:
            said.insert(0, f"no audio files under {', '.join(folders)}")
        raise CommandError("; ".join(said))
    return found


def cmd_suggest(args: argparse.Namespace) -> int:
    """Every file's suggestion as a JSON line; for people, each tag with its count and a few examples."""
    table = _synonyms()
    found = _suggestions(args.dirs, table)
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
        # the reasons most files have, with their counts, and an example of each: the first in the alphabet was
        # said ("filename 'SM101_wobbly_synth'" of 36 files, 32 of them tagged by their folders) beside others
        because: dict[str, list[Any]] = {}
        for s in files:
            because.setdefault(f"{s.source} {s.raw!r}", []).append(s)
        reasons = sorted(because.items(), key=lambda kv: -len(kv[1]))  # (stable: ties in the files' order)
        named = ", ".join(f"{why} ({len(of)})" if len(reasons) > 1 else why for why, of in reasons[:3])
        print(f"{tag:16} {many(len(files)):>11}, from {named}{' …' if len(reasons) > 3 else ''}")
        shown = [of[0] for _, of in reasons[:3]]
        for s in shown + [s for s in files if s not in shown][: 3 - len(shown)]:
            print(f"{'':16}   e.g. {_shown(s.path)}")
        passed = Counter(alt for s in files for alt in s.alternatives)  # a pack name or mood that lost: check
        if passed:
            print(f"{'':16}   also named: {', '.join(f'{alt} ({many(n)})' for alt, n in passed.most_common(5))}")
    missing = by_tag.get("", [])
    if missing:
        print(f"no suggestion for {many(len(missing))}:")
        for s in missing[:20]:  # (it listed the paths alone: which words were passed over, and the way on, unsaid)
            print(f"  {_shown(s.path)}: {_no_tag(s, table)}")
        if len(missing) > 20:
            print(f"  … and {len(missing) - 20} more (`vibrary dataset suggest --json` lists every file)")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from vibrary.daemon import dataset

    home_dir = config.home()
    if args.action == "list":
        names = dataset.names(home_dir)
        if not names:  # (it printed nothing at all)
            print("vibrary: no datasets yet: `vibrary dataset create NAME DIR` makes one", file=sys.stderr)
        for name in names:
            try:
                manifest, _ = dataset.load(home_dir, name)
            except (ValueError, OSError) as e:  # one broken dataset must not hide the others
                print(f"vibrary: dataset {name} cannot be read: {e}", file=sys.stderr)
                continue
            _out(
                args,
                {"dataset": name, "clips": manifest.clips, "classes": manifest.classes},
                f"{name}: {many(manifest.clips, 'clip')}, {len(manifest.classes)} classes",
            )
        return 0
    if args.action == "suggest":
        return cmd_suggest(args)
    try:
        untagged: list[str] = []
        if args.action in ("create", "add"):
            report, added, unread = _create(args, home_dir, untagged)
        elif args.action == "show":
            report = dataset.load_report(home_dir, args.name)
            _say_skipped(report.failed, 5)
        elif args.action == "delete":
            if not args.yes and not _sure_to_delete(home_dir, args.name):
                raise CommandError(f"dataset {args.name} kept")
            dataset.delete(home_dir, args.name)
            _out(args, {"dataset": args.name, "action": "delete"}, f"deleted dataset {args.name}")
            return 0
        else:
            before = dataset.load(home_dir, args.name)[0].classes
            report = dataset.edit(home_dir, args.name, **_edits(args))
            if args.action == "rename" and len(report.per_class) < len(before):  # `--help` said so; the output not
                print(f"vibrary: {args.old} merged into {args.new}, a tag the dataset had already", file=sys.stderr)
            typed = {"rename": getattr(args, "new", ""), "merge": getattr(args, "into", "")}.get(args.action, "")
            made = sorted(set(report.per_class) - set(before))  # ("a/b" became a-b, unsaid)
            if args.action == "relabel" and not args.tag:  # (only the counts said it)
                print(f"vibrary: {args.path} dropped from dataset {args.name}", file=sys.stderr)
            if typed and made and made != [typed]:
                print(f"vibrary: {typed!r} is spelled {made[0]} as a tag", file=sys.stderr)
            # a typo of a tag it has (brigth) is a new tag of one file: said, as rename and drop refuse one
            relabelled = made if args.action == "relabel" else []
            if relabelled and (near := difflib.get_close_matches(relabelled[0], before, n=1, cutoff=0.8)):
                print(f"vibrary: {made[0]} is a new tag of this one file; did you mean {near[0]}?", file=sys.stderr)
    except (FileNotFoundError, dataset.Busy) as e:
        raise CommandError(str(e)) from None
    # (an add's report is the whole dataset's: this run's untagged files are not among its counts)
    made_now = args.action == "create"
    obj, human = _dataset_line(args.name, report, untagged if made_now else (), made_now)
    if args.action == "add":  # this add's own (left_out_files are the whole dataset's, earlier builds' too)
        obj["added"] = added
        obj["not_added"] = [{"path": path, "error": why} for path, why in unread]
        human = f"added {many(added, 'clip')} to dataset {args.name}\n{human}"
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


def _examples(args: argparse.Namespace, untagged: list[str]) -> list[Any]:
    """The labelled files under args.dirs, by folder names or by suggestion (--labels); those a suggestion
    has no tag for go into `untagged`."""
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
                "or inside another tag's (if the folders right under it are your tags, give --labels top; for a "
                "vendor's library, --labels suggest reads the names):",
                file=sys.stderr,
            )
            _say_few([f"  {line}" for line in spread], 5)
        return found
    table = _synonyms()
    found = _suggestions(args.dirs, table)
    for s in found:
        if not s.tag:
            untagged.append(s.path)
            print(f"skipped {_shown(s.path)}: {NO_TAG}: {_no_tag(s, table)}", file=sys.stderr)
    _say_mixed({s.tag for s in found if s.tag}, table)
    return [dataset.example(s.path, s.tag) for s in found if s.tag]


def _say_mixed(tags: set[str], table: Any) -> None:
    """Suggestions that mix effects (reverb) with sounds (kick, fx): a model gives each file one tag, so a
    reverb kick is taught as either, and the tags the demo model knows train as new (an effects library's
    suggestions came out as 13 classes of both, and the trained model knew none of them, unsaid)."""
    effects = sorted(tags & table.effects)
    sounds = sorted(t for t in tags - table.effects if table.rank(t) == 0)
    if effects and sounds:
        print(
            f"vibrary: these tags mix effects ({', '.join(effects[:4])}) with sounds ({', '.join(sounds[:4])}):"
            " each file gets one tag, so keep one kind (`vibrary dataset relabel`/`drop`), or for a library sorted"
            " by effect use the folders (--labels folders)",
            file=sys.stderr,
        )


def _say_loose(loose: Sequence[str]) -> None:
    """Files lying in a DIR itself, beside its tag folders, have no tag: said, with the way out, since a
    producer who puts new examples in `MyTags/dark/` and adds that folder means them to be dark."""
    if not loose:
        return
    print(
        f"vibrary: left out {many(len(loose))} lying directly in a folder given, not in a tag folder inside it "
        "(give the folder above, or use --labels suggest):",
        file=sys.stderr,
    )
    _say_few([f"  {path}" for path in loose], 5)


def _say_skipped(failed: Sequence[tuple[str, str]], most: int | None = None) -> None:
    """The files a build could not read, and why: every one as `create` or `add` meets them; a few in
    `dataset show`, whose "N files could not be read" named none."""
    _say_few([f"skipped {path}: {error}" for path, error in failed], most)


def _say_few(lines: Sequence[str], most: int | None = None) -> None:
    """Lines on stderr: all of them, or the first `most` and how many more (a name's control characters escaped:
    a folder named with an escape sequence reached the terminal)."""
    for line in lines[:most]:
        print(terminal_safe(line), file=sys.stderr)
    if most is not None and len(lines) > most:
        print(f"  … and {len(lines) - most} more", file=sys.stderr)


def _in_use(name: str, e: Any) -> CommandError:
    """A create of a name in use (dataset.Exists), with the ways on: a damaged dataset takes nothing added."""
    adds = "" if e.damaged else f"`vibrary dataset add {name} DIR` adds to it, "
    return CommandError(f"{e}: {adds}--replace builds it anew from these files only, or give another name")


def _create(args: argparse.Namespace, home_dir: Path, untagged: list[str]) -> tuple[Any, int, list[tuple[str, str]]]:
    """The dataset built (create) or grown (add), how many clips that added, and the files it left out."""
    from vibrary.daemon import dataset

    replaced = 0  # said once it is: "replacing" was said of a dataset a refused build then kept
    if args.action == "add":  # ("no dataset", before any file is looked at)
        made_by = dataset.how_labelled(home_dir, args.name)
        if args.labels is None and made_by not in ("", "folders"):  # (its `suggest` files came back as folders')
            print(f"vibrary: labelled as {args.name} was made: --labels {made_by}", file=sys.stderr)
        args.labels = args.labels or made_by or "folders"
    else:
        args.labels = args.labels or "folders"
        dataset.check_no_case_twin(home_dir, args.name)  # (and by the build: the API's creates)
        if args.replace:
            with contextlib.suppress(FileNotFoundError, ValueError):
                replaced = dataset.load(home_dir, args.name)[0].clips
        else:  # (it was replaced, its edits lost, and said only afterwards)
            try:
                dataset.check_absent(home_dir, args.name)
            except dataset.Exists as e:
                raise _in_use(args.name, e) from None
    examples = _examples(args, untagged)
    if untagged and not examples:  # (the build's own words are for folders: "put examples in one folder per tag")
        raise CommandError(f"no file has a tag suggested ({many(len(untagged))} skipped): {NO_TAG_WAYS}")
    config.Settings.load(home_dir)  # a bad config.json stops the build: said before "replacing", not after
    bar = Bar(total=len(examples), desc="spectrograms")
    notes: list[str] = []  # an add's, said after the files it skipped (said before them, "nothing added" was lost)
    try:
        if args.action == "create":
            try:  # (checked again under its lock: another command may have made it meanwhile)
                report = dataset.build(
                    home_dir, args.name, examples, progress=bar.update, replace=args.replace, labelled_by=args.labels
                )
            except dataset.Exists as e:
                raise _in_use(args.name, e) from None
            added, unread = report.manifest.clips, report.failed
            if replaced:
                before = f"{many(replaced, 'clip')} before, and any edits made to it"
                tqdm.write(f"vibrary: replaced dataset {args.name} ({before})", file=sys.stderr)
        else:  # only this add's failures: a file an earlier build could not read, elsewhere, is not news
            grown = dataset.add(home_dir, args.name, examples, progress=bar.update, restore=args.restore)
            report, added, unread = grown.report, grown.added, grown.unread
            if not added and unread:  # "could not be read" of a copy of a file in it sent people looking for damage
                why = _why_left_out(dataset.left_out(unread))
                notes.append(f"vibrary: nothing added: {many(len(unread), 'new file')} left out ({why})")
            elif not added:
                notes.append(f"vibrary: nothing to add: {args.name} has these files already")
            if grown.left_out:
                notes.append(
                    f"left out {many(grown.left_out)} that edits had removed from {args.name} (or their tags); "
                    "--restore adds them again"
                )
    finally:
        bar.close()
    copies = {kind for kind, n in dataset.left_out(unread).items() if n} == {"duplicate"}  # a few said of copies
    _say_skipped(unread, 5 if copies and not added else None)
    for note in notes:
        print(note, file=sys.stderr)
    return report, added, list(unread)


def _meant_instead(tag: str, alias: str, table: Any) -> str | None:
    """The tag a new alias's tag may have been meant as: one the table spells it as (`perc` is percussion), or
    one of its tags it is a typo of (kik, kick); None for a tag of its own (no alias leads to it, no installed
    model tags it), far from them all (shaker is no phaser, crash no bitcrush: difflib's 0.6 said they were)."""
    tags = {t for other, t, _ in table.pairs() if other != alias}
    home_dir = config.home()
    if config.index_path(home_dir).exists():  # a tag the user trained is their own (the alias is saved already)
        with (
            contextlib.suppress(sqlite3.Error, OSError, ValueError),
            contextlib.closing(Index(config.index_path(home_dir))) as index,
        ):
            tags |= {c for m in index.models() for c in m.classes}
    if tag in tags:
        return None
    spelled = table.tag_of(tag)
    if spelled is not None and spelled != tag:
        return str(spelled)
    near = difflib.get_close_matches(tag, sorted(tags), n=1, cutoff=0.8)
    return near[0] if near else None


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
    asked = args.alias.strip().lower() if args.action == "add" else ""
    if args.action == "add":
        meant = {alias: (tag, builtin) for alias, tag, builtin in table.pairs()}.get(asked)
        table.add(config.home(), [(args.alias, args.tag)])
        table = _synonyms()
        now = {alias: tag for alias, tag, _ in table.pairs()}.get(asked)
        if meant is not None and meant[0] != now:  # `synonyms add BD snare` took bd from kick without a word
            whose = "the built-in table's" if meant[1] else "yours"
            print(f"vibrary: {asked} meant {meant[0]} ({whose}); it means {now} now", file=sys.stderr)
        if now is not None and (near := _meant_instead(now, asked, table)):
            # (`synonyms add bd kik` made a tag kik of every kick drum, beside the table's kick, unsaid)
            print(
                f"vibrary: {now} is a new tag, no other alias leads to it; did you mean {near}? "
                f"(`vibrary synonyms add {shlex.quote(asked)} {shlex.quote(near)}`)",
                file=sys.stderr,
            )
    for alias, tag, builtin in table.pairs():
        if asked and alias != asked:
            continue
        _out(
            args,
            {"alias": alias, "tag": tag, "builtin": builtin},
            f"{alias:20} → {tag}{'' if builtin else '  (yours)'}",
        )
    return 0
