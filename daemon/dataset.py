"""Build and edit a labelled dataset on this machine: audio files in, spectrogram shards out.

With `--labels folders` each file's label is its immediate parent folder under the given DIR (the layout
sample packs already use: `Drums/Kick/…`, `Drums/Snare/…`); with `suggest` (or labels confirmed through
the API) the labels come from `suggest.py`. Spectrograms come from the same decode and log-mel code the
daemon tags with, through the home's content-addressed cache, so a model trained on them is fed exactly
what it learned from and files the daemon has already indexed are not decoded again. Only the 8-bit
spectrograms, the labels and anonymous folder ids go into the shards: no audio, no paths.

Next to the shards, `labels.json` keeps the confirmed label of every file in shard row order, and the
manifest of those shards. Editing a
dataset (rename, merge, drop a tag, relabel or drop a file) re-packs the spectrograms already in the
shards under the new labels: nothing is decoded or even read from the source files again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, config, shards, suggest
from .advice import advise
from .cache import SpectrogramCache
from .config import LONGEST_TAG, check_name
from .decode import DecodeError, is_junk_folder
from .features import fingerprint, read
from .folders import audio_files_under, storable, warn
from .spectrogram import SILENT, SpectrogramParams, heard_in, quantize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    path: str
    label: str
    group: str


@dataclass(frozen=True)
class Row:
    """One clip of a dataset: where it came from (kept on this machine only) and its label."""

    path: str
    label: str
    group: str
    audio_bytes: int
    content: str = ""  # its content hash (hex) when read: a later add knows the same sound without reading it


SILENT_FILE = "silent: "  # (the reasons a file is left out that are no failure to read it)
SAME_SOUND = "the same sound as "


def left_out(failed: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Why files were left out, counted: a copy of another file is nothing to mend, an unreadable one is."""
    kinds = Counter(
        "duplicate" if why.startswith(SAME_SOUND) else "silent" if why.startswith(SILENT_FILE) else "unreadable"
        for _, why in failed
    )
    return {kind: kinds[kind] for kind in ("unreadable", "silent", "duplicate")}


@dataclass
class BuildReport:
    manifest: shards.Manifest
    audio_bytes: int
    failed: list[tuple[str, str]]
    per_class: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.audio_bytes / max(1, self.manifest.size)

    @property
    def advice(self) -> str:
        return advise(self.per_class, dataset=self.manifest.name)

    @property
    def left_out(self) -> dict[str, int]:
        return left_out(self.failed)


@dataclass
class Edits:
    """What `add` must respect: what the edits of a dataset removed or renamed, and how its files were labelled."""

    renamed: dict[str, str] = field(default_factory=dict)  # a tag renamed or merged away → what it is now; "" dropped
    removed: list[str] = field(default_factory=list)  # files an edit took out (relabelled '', or their tag dropped)
    labelled_by: str = ""  # how `dataset create` labelled them (folders, top, suggest): an add does alike


@dataclass
class Added:
    report: BuildReport
    added: int  # clips that joined the dataset
    left_out: int  # files an earlier edit removed, or whose tag it dropped
    # the files of this add that could not be read (report.failed holds every build's, still unread)
    unread: list[tuple[str, str]] = field(default_factory=list)


def label(text: str) -> str:
    """A label as stored, the way suggestions spell tags (`Claps & Snaps` → claps-snaps): a label with a
    space or a `|` could never be searched for, since the query language splits at them."""
    if not text.strip():
        raise ValueError("empty tag")
    if len(text) > LONGEST_TAG:
        raise ValueError(f"tag {text[:40]!r}… of {len(text)} characters: {LONGEST_TAG} at most")
    return suggest.clean_tag(text)


_FOLDER_MARKS = frozenset(" _-.&+#'")  # besides letters and digits, what a folder's name may keep as its tag


def folder_label(name: str) -> str:
    """A tag folder's name as its label: as written, but for case (tags are searched without it) and runs of
    spaces, so that a script that names its folders after its labels finds them in `tag`'s output
    (`pitch_shift/` was the tag pitch-shift, `hi hat/` hi-hat); as `label` spells it where it could not be
    searched for as written (parentheses, a quote, a `|`, a word that is OR AND NOT or starts with '-': `Rock and
    Roll/` was a tag the query `rock and roll` read as rock AND roll)."""
    tag = " ".join(config.tag_key(name).split())
    words = tag.split(" ")
    if (
        tag[:1].isalnum()
        and tag[-1] != "'"
        and all(c.isalnum() or c in _FOLDER_MARKS for c in tag)
        and not any(w in config.QUERY_WORDS or w.startswith("-") for w in words)
        and len(tag) <= LONGEST_TAG
    ):
        return tag
    return label(name)


def _spelled(tag: str) -> str:
    """A tag as `label` spells it, or as it is when nothing of it is left to spell."""
    try:
        return label(tag)
    except ValueError:
        return tag


NO_AUDIO = "no audio files found: put examples in one folder per tag (DIR/<tag>/*.wav)"


def _as_held(tag: str, tags: Iterable[str]) -> str:
    """A tag as a dataset with these tags spells it: labels of older versions kept their spaces ("hi hat"),
    and "hi-hat", "Hi_Hat" or "hihat" name that same tag. A tag held as given is that tag (one longer than
    LONGEST_TAG, from before the limit, can still be dropped or renamed). A new tag is spelled as a folder of
    that name would be (`rename punchy "very punchy"` gave very-punchy, where a `Very Punchy/` folder gives
    very punchy)."""
    if tag in tags:
        return tag
    wanted = label(tag)
    held = sorted(tags)
    same = next((t for t in held if _spelled(t) == wanted), None)
    alike = next((t for t in held if _spelled(t).replace("-", "") == wanted.replace("-", "")), None)
    return same or alike or folder_label(tag)


def _one(tag: str) -> str:
    """A tag without its separators and a plural's s (pads, pad; not bass)."""
    word = tag.replace("-", "")
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _in_dataset(tag: str, tags: set[str], table: suggest.Synonyms) -> str:
    """A tag the dataset has, however spelled (plurals too); else as the synonym table spells it: `relabel …
    "Hi Hat"` gives hihat, the tag suggestions give, rather than a class hi-hat beside it, and a second pack's
    `Kicks/` added joins the `kick` the suggestions gave the first (it became a class `kicks` beside it)."""
    held = _as_held(tag, tags)
    spelling = table.spelling(tag)  # (a tag of the table, or the user's own words, spelled as a folder spells them)
    if held in tags or (spelling == label(tag) and spelling not in table.find(tag)):
        return held
    return _as_held(spelling, tags)  # (`relabel … "One Shot"` gives the table's one-shot, not one shot)


def _joining(tag: str, tags: set[str], table: suggest.Synonyms) -> str:
    """The tag a folder's files join when added (`dataset add`): as the dataset spells it, else the one held
    tag of one word that the suggestions read as the sound the folder plainly names (`hats` held, a second
    pack's `Hi Hats/`: both hihat), else as given, a new tag (as `dataset create` would name it). A folder
    that names a kind of it (`Open Hat/`, `Rimshot/`) is a tag of its own."""
    spelled = _in_dataset(tag, tags, table)
    if spelled in tags:
        return spelled
    plural = next((t for t in sorted(tags) if _one(_spelled(t)) == _one(label(tag))), None)
    if plural is not None:  # `Pad/` beside pads (an edit's `Kick` for kicks is a rename, not the same tag)
        return plural
    sound = table.find(tag)
    if len(sound) != 1 or table.spelling(tag) != sound[0]:
        return tag
    same = [t for t in sorted(tags) if "-" not in _spelled(t) and table.find(t) == sound]  # (one word: not open hat)
    return same[0] if len(same) == 1 else tag


def _synonyms(home_dir: Path) -> suggest.Synonyms:
    try:
        return suggest.Synonyms.load(home_dir)
    except ValueError:  # the user's synonyms.json is broken: the built-in spellings still hold
        return suggest.Synonyms.load(None)


def example(path: str, tag: str) -> Example:
    """A file with a confirmed label; its group is its folder (validation holds out whole folders)."""
    path = os.path.abspath(path)
    return Example(path, label(tag), shards.group_id(os.path.dirname(path)))


def examples_from_folders(
    dirs: Sequence[str],
    loose: list[str] | None = None,
    top: bool = False,
    spread: list[str] | None = None,
    empty: list[str] | None = None,
) -> list[Example]:
    """Every audio file under DIR/<label>/…: label = its parent folder's name (`top`: the name of the folder
    right under DIR), group = its own folder. Files lying in a DIR itself have no tag folder and are left
    out; `loose`, when given, receives them, so that the caller can say so (`dataset add mytags MyTags/dark`
    said "has these files already" of new files put in dark/ itself, and built datasets one file short
    without a word). `spread` receives a line for each tag whose folders lie under several folders of a DIR
    (`punchy/kicks/`, `soft/kicks/`): a pack dropped into each tag folder, whose own folders replaced the
    tags without a word, where `top` keeps them; and one for each folder inside a tag folder of the same sound
    (`kick/Vengeance Kicks Vol 2/`): a pack dropped into it, that became a tag of its own. `empty` receives
    the folders right under a DIR that hold no audio file: tags meant, that the dataset went without unsaid."""
    found: list[Example] = []
    written: dict[str, set[str]] = {}  # each label → its folders' names as folder_label has them
    loose = [] if loose is None else loose
    # each tag → the folders right under each DIR that its files lie in (two packs given, each with its own
    # `FX/Chorus/`, were said to spread chorus over several folders, and --labels top advised)
    firsts: dict[tuple[str, str], set[str]] = {}
    inside: dict[str, set[str]] = {}  # each tag of a deeper folder → the folders right under a DIR it lies in
    holding: set[str] = set()  # the folders right under a DIR that hold files themselves: tag folders
    # (inside and holding by DIR/folder: packA's `kick/` is not packB's; shown by the folder's name)
    used: set[str] = set()  # the folders right under a DIR that hold an audio file, at any depth
    unlisted: set[str] = set()  # folders that could not be read (said so): not empty, for all one knows

    def unreadable(folder: str, reason: str) -> None:
        unlisted.add(os.path.normpath(folder))
        warn(folder, reason)

    for root in dirs:
        if not os.path.isdir(root):
            if os.path.exists(root):  # a file names no tag: its label would be whatever folder it is in
                raise ValueError(f"{root} is not a folder: give folders of DIR/<tag>/ files, or use --labels suggest")
            raise FileNotFoundError(f"no such folder: {root}")
        base = os.path.normpath(root)
        for path in audio_files_under(root, unreadable, links=True):
            folder = os.path.normpath(os.path.dirname(path))
            if folder == base:  # loose in DIR itself: no folder names its tag
                loose.append(path)
                continue
            first, *deeper = os.path.relpath(folder, base).split(os.sep)
            used.add(os.path.join(base, first))
            tag_folder = os.path.join(base, first) if top else folder
            if not storable(os.path.basename(tag_folder)):  # a model's classes must be UTF-8, as its file is
                if tag_folder not in unlisted:
                    unreadable(tag_folder, "its name is not valid UTF-8, so it cannot be a tag: rename it to use it")
                continue
            found.append(example(path, os.path.basename(tag_folder)))
            written.setdefault(found[-1].label, set()).add(folder_label(os.path.basename(tag_folder)))
            firsts.setdefault((found[-1].label, base), set()).add(first)
            if deeper:
                inside.setdefault(found[-1].label, set()).add(os.path.join(base, first))
            else:
                holding.add(os.path.join(base, first))
    if empty is not None:
        empty += [
            path
            for base in dict.fromkeys(os.path.normpath(root) for root in dirs)
            for path in sorted(os.path.join(base, e.name) for e in _subfolders(base))
            if path not in used and path not in unlisted
        ]
    if loose and not found:  # "no audio files found" sent people looking for files that were there
        # (most often the folder given is one tag's own, `lib/Dark Pads` for `lib`: the advice to sort them was wrong)
        raise ValueError(
            f"the {len(loose)} audio files lie loose in {', '.join(dirs)}: where that is one tag's folder, give the"
            f" folder above it{_above(dirs)}, whose folders are the tags; else put them in one folder per tag"
            " (DIR/<tag>/…), or use --labels suggest to tag them from their names"
        )
    taken = {e.path for e in found}  # a file loose in one DIR and in a tag folder of another given is not left out
    loose[:] = [path for path in loose if os.path.abspath(path) not in taken]
    # a label as its folders write it, where they write it one way (`Hi Hat/` beside `hi-hat/`: as label spells it)
    as_written = {tag: names.pop() for tag, names in written.items() if len(names) == 1}
    found = [dataclasses.replace(e, label=as_written.get(e.label, e.label)) for e in found]
    if spread is not None:
        spread += [
            f"{as_written.get(tag, tag)}: under {', '.join(sorted(f + '/' for f in where))}"
            for (tag, _), where in firsts.items()
            if len(where) > 1
        ]
        # `kick/Vengeance Kicks Vol 2/`: a pack of the tag folder's own sound dropped into it became a tag of its
        # own, silently, and so did `bright/more/`, a folder that names no sound (not `Drums/kick/` beside
        # `Drums/crash.wav`: a tag of its own, rightly)
        table = suggest.Synonyms.load(None)
        spread += [
            f"{as_written.get(tag, tag)}: inside {name}/, a tag folder" + (" of that sound" if sound else "")
            for tag, where in inside.items()
            for name in sorted(os.path.basename(f) for f in where & holding)
            if tag != label(name) and (not (sound := table.find(tag)) or table.find(name) == sound)
        ]
    return found


def _above(folders: Sequence[str]) -> str:
    """The folders above these, said as ` (here FOLDER, …)`, to add as folders of tag folders; "" when one is the
    whole disk or a folder right under its root (`/Samples`), never a folder to hand to a dataset."""
    parents = dict.fromkeys(os.path.dirname(os.path.abspath(f)) for f in folders)
    named = [shlex.quote(p) for p in parents if len(Path(p).parts) > 2]  # (`//Samples` is right under the root)
    return f" (here {', '.join(named)})" if named and len(named) == len(parents) else ""


def _subfolders(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries if e.is_dir() and not is_junk_folder(e.name) and not e.name.startswith(".")]
    except OSError:  # (its files were walked, or their folder's error said already)
        return []


def dataset_dir(home_dir: Path, name: str) -> Path:
    return home_dir / "datasets" / name


class Busy(RuntimeError):
    """A training reads the dataset, or another command changes it, right now."""


class Unlabelled(FileNotFoundError):
    """A dataset made before datasets kept their labels (`labels.json`): nothing can be added to it or edited in it,
    and that is no file the disk failed to write (a create with `add` said so)."""


class Exists(FileExistsError):
    """A create of a dataset that is there: replacing it loses its clips and every edit made to it, so only a
    caller that says so replaces it. `damaged`: one that cannot be read (nothing can be added to it)."""

    def __init__(self, text: str, damaged: bool) -> None:
        super().__init__(text)
        self.damaged = damaged


def check_absent(home_dir: Path, name: str) -> None:
    """Exists when `name` holds a dataset (a damaged one too: it may be mended by hand)."""
    check_name(name)  # (a bad name is a ValueError of its own, not a damaged dataset)
    try:
        clips = load(home_dir, name)[0].clips
    except FileNotFoundError:
        return
    except ValueError:
        clips = -1
    held = "damaged" if clips < 0 else f"{clips} clip{'s' * (clips != 1)}"
    raise Exists(f"dataset {name!r} exists ({held}, and any edits made to it)", damaged=clips < 0)


@contextlib.contextmanager
def _held(home_dir: Path, name: str, change: bool) -> Iterator[None]:
    """An flock beside the dataset's folder (delete removes the folder), across processes: the daemon's
    trainings and edits, `vibrary train` and `vibrary dataset` all take it. Trainings share it; a change
    needs it alone, so no edit rewrites shards under an upload, whichever process does what. The lock file of a
    name that holds no dataset as the lock is let go (deleted, or never made) is removed, so a lock taken on a
    file that is no longer there is taken again."""
    check_name(name)
    path = _lock_path(home_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a") as f:
            try:
                fcntl.flock(f, (fcntl.LOCK_EX if change else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(
                    f"dataset {name!r} is being trained on or changed by another command; wait for it or cancel it"
                ) from None
            try:
                same = os.path.samestat(os.fstat(f.fileno()), path.stat())
            except FileNotFoundError:
                same = False
            if same:
                try:
                    yield
                finally:  # (held still: a name with no dataset, deleted or never made, leaves no lock file)
                    if not dataset_dir(home_dir, name).exists():
                        with contextlib.suppress(OSError):
                            path.unlink()
                return


def _lock_path(home_dir: Path, name: str) -> Path:
    return home_dir / "datasets" / f".{name}.lock"


def reading(home_dir: Path, name: str) -> contextlib.AbstractContextManager[None]:
    """Held by a training for as long as it may read the dataset."""
    return _held(home_dir, name, change=False)


def open_cache(home_dir: Path) -> SpectrogramCache:
    return SpectrogramCache(config.cache_path(home_dir), config.Settings.load(home_dir).cache_max_mb << 20)


def _once_each(examples: Sequence[Example]) -> list[Example]:
    """A file listed twice (two overlapping folders) is one example; with two different tags it is a
    mistake to say, not a coin to toss: a later relabel could only ever change one of the two rows."""
    seen: dict[str, Example] = {}
    for ex in examples:
        if ex.path in seen and seen[ex.path].label != ex.label:
            raise ValueError(f"{ex.path} is tagged both {seen[ex.path].label!r} and {ex.label!r}: keep one")
        seen.setdefault(ex.path, ex)
    return list(seen.values())


def build(
    home_dir: Path,
    name: str,
    examples: Sequence[Example],
    params: SpectrogramParams | None = None,
    workers: int = 0,
    progress: Callable[[int], None] = lambda n: None,
    cache: SpectrogramCache | None = None,
    replace: bool = True,
    labelled_by: str = "",
) -> BuildReport:
    """Compute every example's spectrogram (from the home's cache when it has them) and write the
    dataset's shards, labels and manifest. Without `replace`, a dataset `name` that exists is Exists, checked
    under its lock: a check before it let another command's build finish between, then be replaced."""
    check_no_case_twin(home_dir, name)
    with _held(home_dir, name, change=True):
        if not replace:
            check_absent(home_dir, name)
        return _build(home_dir, name, examples, params, workers, progress, cache, labelled_by)


def _build(
    home_dir: Path,
    name: str,
    examples: Sequence[Example],
    params: SpectrogramParams | None,
    workers: int,
    progress: Callable[[int], None],
    cache: SpectrogramCache | None,
    labelled_by: str,
) -> BuildReport:
    params = params or SpectrogramParams()
    if not examples:
        raise ValueError(NO_AUDIO)
    given, examples = len(examples), _once_each(examples)
    progress(given - len(examples))  # a file given twice (a folder and one inside it) is done once: the bar ends full
    tags = sorted({ex.label for ex in examples})
    if len(tags) == 1:  # said now, not after decoding every file (the shards' own check would, at the end)
        raise ValueError(f"all {len(examples)} files are tagged {tags[0]!r}; a model needs at least 2 tags")
    codes, rows, failed = _spectrograms(examples, params, workers, progress, cache or open_cache(home_dir))
    return _write(home_dir, name, params, codes, rows, failed, Edits(labelled_by=labelled_by), unread=failed)


def _spectrograms(
    examples: Sequence[Example],
    params: SpectrogramParams,
    workers: int,
    progress: Callable[[int], None],
    cache: SpectrogramCache,
    held: Sequence[Row] = (),
    held_codes: np.ndarray | None = None,  # (the codes of `held`, in its order)
) -> tuple[np.ndarray, list[Row], list[tuple[str, str]]]:
    """Each example's 8-bit spectrogram and row, in order, and the files left out and why: unreadable,
    silent, or the same sound as a file before it or one `held` already (a pack copied to another drive and
    added again was in the dataset twice, the same clip on both sides of the validation split; a copy under
    another tag taught the model two answers for one sound)."""

    caching = [True]  # until a write to the cache fails (a full disk): each failure recounted the whole cache

    def one(ex: Example) -> tuple[np.ndarray, int, bytes] | str:
        try:
            # (its size, as read: the file may be deleted once it is decoded)
            hashed, found, fresh = read(ex.path, lambda hashed: [params], cache)
            try:
                if caching[0]:
                    cache.put_many(fresh)
            except sqlite3.OperationalError:  # a cache costs speed, never the build
                caching[0] = False
            if not heard_in(found[params]):  # nothing to learn from: a model would learn silence as the tag
                return f"{SILENT_FILE}{SILENT}"
            return quantize(found[params], params), hashed.size, hashed.hash
        except DecodeError as e:
            return str(e)

    seen = _contents(held)
    # the same audio in other bytes (a pack shipped as WAV and as AIFF, or FLAC): the same spectrogram
    held_sounds = [_sound(code) for code in held_codes] if held_codes is not None else []
    heard = {sound: (r.path, r.label) for r, sound in reversed(list(zip(held, held_sounds, strict=True)))}
    codes, rows, failed = [], [], []
    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
    try:
        for ex, out in zip(examples, pool.map(one, examples), strict=True):
            progress(1)
            if isinstance(out, str):
                failed.append((ex.path, out))
                continue
            code, size, content = out
            first = seen.setdefault(content, (ex.path, ex.label))
            if first[0] == ex.path:
                first = seen[content] = heard.setdefault(_sound(code), first)  # (a byte copy of it: as it is)
            if first[0] != ex.path:
                tagged = f", tagged {first[1]}" if first[1] != ex.label else ""
                failed.append((ex.path, f"{SAME_SOUND}{first[0]}{tagged}"))
                continue
            codes.append(code)
            rows.append(Row(ex.path, ex.label, ex.group, size, content.hex()))
    finally:  # a progress that raised (the caller went away) leaves the files not started undecoded
        pool.shutdown(cancel_futures=True)
    return (np.stack(codes) if codes else np.zeros((0, *params.shape), np.uint8)), rows, failed


def _sound(code: np.ndarray) -> bytes:
    """What a clip sounds like to a model: its 8-bit spectrogram, hashed."""
    return hashlib.blake2b(code.tobytes(), digest_size=16).digest()


def _contents(rows: Sequence[Row]) -> dict[bytes, tuple[str, str]]:
    """Each row's content → its path and tag: as recorded, or (a row written before contents were kept) its
    file's head hashed again, when the file is still there."""
    found: dict[bytes, tuple[str, str]] = {}
    for r in rows:
        with contextlib.suppress(DecodeError):
            found.setdefault(bytes.fromhex(r.content) if r.content else fingerprint(r.path).hash, (r.path, r.label))
    return found


def add(
    home_dir: Path,
    name: str,
    examples: Sequence[Example],
    workers: int = 0,
    progress: Callable[[int], None] = lambda n: None,
    cache: SpectrogramCache | None = None,
    restore: bool = False,
) -> Added:
    """More examples for an existing dataset: only files it has not seen are decoded, with the dataset's own
    spectrogram parameters, and its edits stay, so the folders it was made from can be added again once
    they hold more files. A file already in the dataset keeps its tag (a relabel stands); a file or a tag
    an edit removed stays out, unless `restore`: then it joins again, and the edit that took it out no
    longer holds for it (a dropped tag could only come back by making the dataset anew, every other edit
    lost); a tag renamed or merged away names what it became (a second pack's `Kicks/` joins the `kick`
    that the first pack's `Kicks/` was renamed to). A file rewritten since it was read (a sample bounced
    again under its name) is read again, its tag kept: it trained on its old sound."""
    with _held(home_dir, name, change=True):
        held = _stored(home_dir, name)
        if not examples:
            raise ValueError(NO_AUDIO)
        known = {os.path.normpath(r.path): r for r in held.rows}
        replaced: set[str] = set()
        removed = set(held.edits.removed)
        tags, table = {r.label for r in held.rows}, _synonyms(home_dir)
        spelled: dict[str, str] = {}  # each tag's spelling in the dataset, worked out once, not once a file
        new, left_out = [], 0
        renamed, restored = dict(held.edits.renamed), set()  # (the edits that no longer hold, with `restore`)
        # a tag an edit renamed or dropped, however a folder spells it now (`Lead Synth/` is lead synth, and the
        # edit may be of lead-synth, as a folder's name was spelled before, or as another folder spells it)
        edited = {_spelled(old): old for old in held.edits.renamed}
        old_of: dict[str, str] = {}
        for ex in _once_each(examples):
            path = os.path.normpath(ex.path)
            if ex.label not in old_of:  # (a tag the dataset holds as spelled is that tag: an older one held two)
                by_spelling = edited.get(_spelled(ex.label), "") if ex.label not in tags else ""
                old_of[ex.label] = ex.label if ex.label in held.edits.renamed else by_spelling
            old = old_of[ex.label]
            tag = held.edits.renamed[old] if old else ex.label
            dropped_as = tag if tag != old and held.edits.renamed.get(tag) == "" else ""  # renamed, then dropped
            tag = "" if dropped_as else tag
            if path in known:
                if _rewritten(ex.path, known[path].content):
                    replaced.add(path)
                    new.append(Example(ex.path, known[path].label, known[path].group))
                continue
            if (path in removed or not tag) and not restore:  # removed by an edit, or its tag was dropped
                left_out += 1
                continue
            if restore:  # back as given, the edit undone for it: later adds take it as well
                if not tag:  # its tag was dropped (by the name a rename gave it: back under that name)
                    tag = dropped_as or ex.label
                    renamed.pop(dropped_as or old, None)
                restored.add(path)
            if tag not in spelled:
                spelled[tag] = _joining(tag, tags, table)
            new.append(Example(ex.path, spelled[tag], ex.group))
        progress(len(examples) - len(new))  # the files it has, or left out: done, as far as progress goes
        if not new:  # a folder added again with nothing new in it: no error, the dataset as it is
            return Added(_report(held.manifest, held.rows, held.failed), 0, left_out)

        def without(paths: set[str]) -> tuple[list[Row], np.ndarray]:
            kept = np.array([os.path.normpath(r.path) not in paths for r in held.rows], bool)
            return [r for r, k in zip(held.rows, kept, strict=True) if k], held.codes[kept]

        rows, codes = without(replaced)
        more, added, unread = _spectrograms(
            new, held.params, workers, progress, cache or open_cache(home_dir), rows, codes
        )
        # a rewritten file that cannot be read now (a bounce half written, or silent) keeps the clip it gave, and
        # its tag: it left the dataset, and came back under its folder's tag once it could be read
        # (not one now a copy of another file: it has no sound of its own to keep, as it was left out before)
        unreadable = {os.path.normpath(p) for p, why in unread if not why.startswith(SAME_SOUND)} & replaced
        if unreadable:
            replaced -= unreadable
            rows, codes = without(replaced)
        if not added and not replaced:  # the dataset as it was: a show listed the files of an add that failed
            return Added(_report(held.manifest, held.rows, held.failed), 0, left_out, unread)
        retried = {os.path.normpath(ex.path) for ex in new} - unreadable
        failed = [f for f in held.failed if os.path.normpath(f[0]) not in retried] + [
            f for f in unread if os.path.normpath(f[0]) not in unreadable
        ]
        codes = np.concatenate([codes, more])
        kept = [p for p in held.edits.removed if os.path.normpath(p) not in restored]
        edits = Edits(renamed, kept, held.edits.labelled_by)
        report = _write(home_dir, name, held.params, codes, rows + added, failed, edits, unread)
        return Added(report, len(added), left_out, unread)


def _rewritten(path: str, content: str) -> bool:
    """Whether a file of the dataset holds another sound than when it was read (its content hash, recorded
    then); not when it cannot be read now (it keeps the clip it gave) or a row of an older version has none."""
    if not content:
        return False
    try:
        return fingerprint(path).hash.hex() != content
    except DecodeError:
        return False


def _write(
    home_dir: Path,
    name: str,
    params: SpectrogramParams,
    codes: np.ndarray,
    rows: Sequence[Row],
    failed: Sequence[tuple[str, str]],
    edits: Edits | None = None,
    unread: Sequence[tuple[str, str]] = (),
) -> BuildReport:
    """New shards first (content-addressed: the old ones stay), then `labels.json`, which holds the manifest
    too and so is the one commit point: a crash before it leaves the dataset as it was, a crash after it
    the new one. `manifest.json` is a copy for people and older versions; unused shards go last."""
    classes = sorted({r.label for r in rows})
    labels = np.array([classes.index(r.label) for r in rows], dtype=np.int64)
    manifest, blobs = shards.write(name, classes, params, codes, labels, [r.group for r in rows])
    try:
        manifest.check()  # before anything is written: a bad edit leaves the dataset as it was
    except shards.ShardError as e:  # `unread`: the files this build or add could not read
        if not unread:
            raise
        path, why = unread[0]  # "is empty" said nothing of the files that could not be read
        raise shards.ShardError(f"{e}: {len(unread)} of its files were left out, such as {path} ({why})") from None
    folder = dataset_dir(home_dir, name)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    for digest, blob in blobs.items():
        shard = folder / "shards" / f"{digest}.npz"
        if not (shard.exists() and shard.stat().st_size == len(blob)):  # named by its content: the same bytes
            atomic.write(shard, blob)
    record = {
        "files": [r.__dict__ for r in rows],
        "failed": [list(f) for f in failed],
        **(edits or Edits()).__dict__,
        "manifest": manifest.to_json(),
    }
    atomic.write(folder / "labels.json", json.dumps(record))
    atomic.write(folder / "manifest.json", manifest.to_json())
    for stale in (folder / "shards").glob("*.npz*"):  # (and the part of one a killed build was writing)
        if stale.name != f"{stale.stem}.npz" or stale.stem not in blobs:
            stale.unlink()
    return _report(manifest, rows, failed)


def _report(manifest: shards.Manifest, rows: Sequence[Row], failed: Sequence[tuple[str, str]]) -> BuildReport:
    per_class = dict(sorted(Counter(r.label for r in rows).items()))
    return BuildReport(manifest, sum(r.audio_bytes for r in rows), [(p, e) for p, e in failed], per_class)


def _damaged(name: str, what: str) -> ValueError:
    return ValueError(
        f"dataset {name!r} is damaged ({what}): create it again (`vibrary dataset create {name} DIR... --replace`) "
        f"or delete it (`vibrary dataset delete {name}`)"
    )


def _labels(path: Path, name: str) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(name, f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise _damaged(name, f"{path} holds no object")
    return raw


def _record(home_dir: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """`labels.json` and what it holds."""
    path = dataset_dir(home_dir, name) / "labels.json"
    if not path.exists():
        made = f"dataset {name!r} was made before datasets could be edited"
        raise Unlabelled(f"{made}; create it again (--replace)")
    return path, _labels(path, name)


def _rows(home_dir: Path, name: str) -> tuple[list[Row], list[tuple[str, str]]]:
    return _rows_in(*_record(home_dir, name), name)


def _rows_in(path: Path, raw: dict[str, Any], name: str) -> tuple[list[Row], list[tuple[str, str]]]:
    known = {f.name for f in dataclasses.fields(Row)}  # a later release's fields are left to it: the release before
    try:  # this one read a row with `content` as damaged, and advised deleting the dataset
        return [Row(**{k: v for k, v in r.items() if k in known}) for r in raw["files"]], [
            (str(p), str(e)) for p, e in raw["failed"]
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # (a row that is no object: AttributeError)
        raise _damaged(name, f"{path}: {e!r}") from None


@dataclass
class _Stored:
    """A dataset as an edit or an addition starts from."""

    manifest: shards.Manifest
    rows: list[Row]
    failed: list[tuple[str, str]]
    codes: np.ndarray  # rows' spectrograms, in order
    edits: Edits

    @property
    def params(self) -> SpectrogramParams:
        return self.manifest.params


def _stored(home_dir: Path, name: str) -> _Stored:
    manifest, shard_dir = load(home_dir, name)
    path, raw = _record(home_dir, name)  # read once, for the rows and the edits alike
    rows, failed = _rows_in(path, raw, name)
    codes = _codes(manifest, shard_dir, name)
    if len(codes) != len(rows):
        raise shards.ShardError(f"dataset {name!r}: shards and labels disagree; create it again (--replace)")
    renamed, removed = raw.get("renamed", {}), raw.get("removed", [])
    if not (isinstance(renamed, dict) and isinstance(removed, list)):
        raise _damaged(name, "labels.json: 'renamed' or 'removed' is not what it should be")
    edits = Edits({str(k): str(v) for k, v in renamed.items()}, [str(p) for p in removed], labelled_by(raw))
    return _Stored(manifest, rows, failed, codes, edits)


def _codes(manifest: shards.Manifest, shard_dir: Path, name: str) -> np.ndarray:
    """Every clip's spectrogram codes, from shards that are there and whole."""
    arrays = []
    for s in manifest.shards:
        try:
            data = (shard_dir / f"{s.sha256}.npz").read_bytes()
            if hashlib.sha256(data).hexdigest() != s.sha256:
                raise shards.ShardError("its bytes are not the ones recorded")
            arrays.append(shards.unpack(data, manifest.params, len(manifest.classes))[0])
        except (OSError, shards.ShardError) as e:
            raise _damaged(name, f"shard {s.sha256[:12]}: {e}") from None
    return np.concatenate(arrays)


def load_report(home_dir: Path, name: str) -> BuildReport:
    """What `build` found, as it recorded it: the shards need not be read again."""
    manifest, _ = load(home_dir, name)
    rows, failed = _rows(home_dir, name)
    return _report(manifest, rows, failed)


def load(home_dir: Path, name: str) -> tuple[shards.Manifest, Path]:
    check_name(name)
    folder = dataset_dir(home_dir, name)
    committed = folder / "labels.json"
    try:
        if committed.exists():
            text = _labels(committed, name).get("manifest")
            if isinstance(text, str) and text:  # the manifest of these labels, whatever a crash left in manifest.json
                return shards.Manifest.from_json(text), folder / "shards"
        if not (folder / "manifest.json").exists():
            raise _no_dataset(home_dir, name)
        return shards.Manifest.from_json((folder / "manifest.json").read_text()), folder / "shards"
    except (shards.ShardError, UnicodeDecodeError) as e:
        raise _damaged(name, str(e)) from None


def _no_dataset(home_dir: Path, name: str, to_create: bool = True) -> FileNotFoundError:
    """A typo (`train mytag` for mytags) was told to create a dataset of that name: the nearest name there
    is comes first, and only with none near is creating one the way on."""
    near = difflib.get_close_matches(name, names(home_dir), n=1)
    if near:
        return FileNotFoundError(f"no dataset {name!r}; did you mean {near[0]!r}? (`vibrary dataset list`)")
    create = f"; create it with `vibrary dataset create {name} DIR...`" if to_create else ""
    return FileNotFoundError(f"no dataset {name!r}{create}")


def names(home_dir: Path) -> list[str]:
    """The datasets, as `load` finds them (one whose build was cut between its last two renames too, which
    `show` and `train` took and the list hid); not a deleted one's remains (`.deleted-…`)."""
    folder = home_dir / "datasets"
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and _is_dataset(p))


def check_no_case_twin(home_dir: Path, name: str) -> None:
    """`drums` beside `Drums` is two datasets here and one folder on macOS's and Windows' disks, where
    creating it replaced Drums' confirmed labels under another name. (A home that holds both already, from
    before, can still replace either.)"""
    held = names(home_dir)
    twin = next((n for n in held if n != name and n.casefold() == name.casefold()), None)
    if twin is not None and name not in held:
        raise ValueError(
            f"dataset {twin!r} exists, and names that differ only in case are one folder on macOS and Windows:"
            f" use {twin!r} (--replace replaces it), or another name"
        )


def _is_dataset(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("manifest.json", "labels.json"))


def delete(home_dir: Path, name: str) -> None:
    """Remove the dataset, damaged or not (a damaged one is what most needs deleting): moved aside at once,
    then removed (a kill during the removal left half a dataset, listed and trainable). The remains of a
    removal cut short are removed with the next."""
    check_name(name)
    folder = dataset_dir(home_dir, name)
    if not _is_dataset(folder):
        raise _no_dataset(home_dir, name, to_create=False)
    with _held(home_dir, name, change=True):
        if folder.is_symlink():  # a dataset kept elsewhere: the home's link to it goes, not the folder it names
            folder.unlink()
        else:
            folder.rename(folder.with_name(f".deleted-{name}-{os.getpid()}-{time.monotonic_ns()}"))
    for remains in folder.parent.glob(".deleted-*"):
        try:
            shutil.rmtree(remains)
        except OSError as e:  # (it is out of every list already: only its disk is not given back yet)
            log.warning("could not remove %s: %s", remains, e)


def labelled_by(raw: dict[str, Any]) -> str:
    """How a dataset's record says its files were labelled: "" when not by `dataset create` (the API's
    confirmed labels, a dataset made before it was recorded)."""
    return str(raw.get("labelled_by") or "")


def how_labelled(home_dir: Path, name: str) -> str:
    load(home_dir, name)
    return labelled_by(_record(home_dir, name)[1])


def labelled_files(home_dir: Path, name: str) -> list[tuple[str, str]]:
    """(path, label) of every clip, as confirmed."""
    load(home_dir, name)
    return [(r.path, r.label) for r in _rows(home_dir, name)[0]]


def edit(
    home_dir: Path,
    name: str,
    rename: Iterable[tuple[str, str]] = (),
    drop: Iterable[str] = (),
    relabel: Iterable[tuple[str, str]] = (),
) -> BuildReport:
    """Rename tags (onto an existing tag: a merge), drop tags, relabel files (an empty tag drops the file),
    in that order; then re-pack the shards' own spectrograms. ValueError, and nothing changed, when an
    edit names a tag or file the dataset lacks or leaves fewer than two tags."""
    with _held(home_dir, name, change=True):
        return _edit(home_dir, name, rename, drop, relabel)


def _edit(
    home_dir: Path,
    name: str,
    rename: Iterable[tuple[str, str]],
    drop: Iterable[str],
    relabel: Iterable[tuple[str, str]],
) -> BuildReport:
    held = _stored(home_dir, name)
    rows = held.rows
    mapping = {r.label: r.label for r in rows}  # each original tag → what the edits so far made of it

    def existing(tag: str) -> str:
        """Each edit sees the ones before it: rename a→b then b→c is fine, dropping a renamed-away a is not."""
        tags = set(mapping.values()) - {""}
        if (spelled := as_held(tag)) in tags:
            return spelled
        # (the tags it would have: `rename kick kick2, drop kick` listed kick2, a tag it never had, as its own)
        then = "; its tags"
        if any(k != v for k, v in mapping.items()):
            then = " once the edits before this one are made (nothing was changed); its tags then"
        raise ValueError(f"no tag {tag!r} in dataset {name!r}{then}: {', '.join(sorted(tags))}")

    def as_held(tag: str) -> str:
        return _in_dataset(tag, set(mapping.values()) - {""}, table)

    table = _synonyms(home_dir)
    done: dict[str, str] = {}
    same: list[str] = []  # renames onto the tag itself: part of a merge (`merge a b --into A`), or all there is
    for old, new in rename:
        if done.get(_spelled(old)) == as_held(new):  # `merge noisy Noisy --into hiss`: one tag, named twice
            continue
        typed, new = new, as_held(new)
        done[_spelled(old)] = new
        old = existing(old)
        if new == old:
            same.append(f"{typed!r} is {old!r} as this dataset spells it: nothing to rename")
        mapping = {k: (new if v == old else v) for k, v in mapping.items()}
    if same and len(same) == len(done):  # `rename kick kicks`: the same tag, which was a silent no-op
        raise ValueError(same[0])
    renamed = dict(mapping)
    dropped: set[str] = set()
    for t in drop:
        if _spelled(t) in dropped:  # `drop wobble Wobble`: one tag, named twice
            continue
        t = existing(t)
        dropped.add(_spelled(t))
        mapping = {k: ("" if v == t else v) for k, v in mapping.items()}
    labels = [mapping[r.label] for r in rows]
    where = {os.path.normpath(r.path): i for i, r in enumerate(rows)}
    real: dict[str, int] = {}  # (the rows by where their links lead, looked up once a path given needs it)
    for path, tag in relabel:
        i = where.get(os.path.normpath(os.path.abspath(path)))
        if i is None:  # given through a link to the dataset's folder (or made through one): "not in dataset"
            real = real or {os.path.realpath(r.path): n for n, r in enumerate(rows)}
            i = real.get(os.path.realpath(path))
        if i is None:
            left = {os.path.normpath(p): why for p, why in held.failed}
            why = left.get(os.path.normpath(os.path.abspath(path))) or left.get(os.path.realpath(path))
            if why:  # (a copy of another clip: `add` it, the advice, left it out again)
                then = (
                    "relabel that file instead"
                    if why.startswith(SAME_SOUND)
                    else f"`vibrary dataset add {name}` its folder again once it can be read"
                )
                raise ValueError(f"{path} is not in dataset {name!r}: it was left out, {why}; {then}")
            # (a file left out, or relabelled "" once: `add` takes folders of tag folders, and the file's own
            # folder was refused as files lying loose: the command said is the one that works)
            by_edit = os.path.abspath(path) in {os.path.abspath(p) for p in held.edits.removed}
            above = _above([os.path.dirname(os.path.abspath(path))])
            raise ValueError(
                f"{path} is not in dataset {name!r}: "
                + (
                    f"an edit removed it; `vibrary dataset add --restore {name} DIR` brings it back, with every file"
                    " and tag an edit removed under DIR"
                    if by_edit
                    else f"`vibrary dataset add {name} DIR` adds it"
                )
                + f", DIR the folder of tag folders it is in{above}; then relabel it"
            )
        labels[i] = as_held(tag) if tag else ""  # ("  " is no tag, as rename says: it dropped the file unsaid)
    keep = [i for i, t in enumerate(labels) if t]
    kept = [dataclasses.replace(rows[i], label=labels[i]) for i in keep]
    live = {labels[i] for i in keep}
    if len(live) < 2:  # (the shards' own refusal, "has 1 class", read as if the edit had been made)
        tags = f"only {', '.join(sorted(live))}" if live else "no tag"
        raise ValueError(f"not done: dataset {name!r} would be left with {tags}; a model needs at least 2 tags")
    removed = held.edits.removed + [rows[i].path for i, t in enumerate(labels) if not t]
    # renames, then drops, as two edits would be: `rename dark moody` and `drop moody` in one call is restored as
    # moody, as in two calls (it was stored as dark dropped)
    after = _renamed(held.edits.renamed, renamed, set(renamed.values()))
    drops = {now: "" if _spelled(now) in dropped else now for now in renamed.values()}
    edits = Edits(_renamed(after, drops, live), removed, held.edits.labelled_by)
    return _write(home_dir, name, held.params, held.codes[keep], kept, held.failed, edits)


def _renamed(before: dict[str, str], mapping: dict[str, str], live: set[str]) -> dict[str, str]:
    """What `add` should make of each tag that is gone after an edit: what it was renamed or merged into (the
    next pack spells its folders as the last one did; followed along later renames), or "" when it was
    dropped (`mapping` says "" only of drops: a tag its files were relabelled away from is not dropped). A
    tag renamed to one dropped later still names it (`add --restore` brings its files back under it: `dark`,
    renamed `moody`, then dropped, came back as `dark`). A tag that is in use again means itself; one renamed to a
    dropped tag whose name is in use again is dropped (`rename c b` after `drop b`: a's files are not c's sound)."""
    renamed = {old: now if mapping.get(now, now) == "" else mapping.get(now, now) for old, now in before.items()}
    renamed.update((old, now) for old, now in mapping.items() if now != old)
    gone = {old for old, now in before.items() if now == ""}  # dropped before this edit
    return {old: "" if now in gone and now in live else now for old, now in renamed.items() if old not in live}
