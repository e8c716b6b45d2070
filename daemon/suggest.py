"""Tag suggestions for folders of examples, from the names and metadata vendors already gave them.

Sample packs spell one sound a dozen ways (`BD_01`, `Kick Hard`, `KCK`, `Kicks/`, an ID3 genre of "Bass
Drum"), so every text is split into words (at `_ - .` spaces, camelCase and digits; numbering dropped),
lower-cased, and matched against a synonym table (a camelCase word also as written, `BDrum` as bdrum, and
a known word starting a word in capitals on its own, `SNAREROLL`), longest phrase first and with a plural
s/es dropped when that is what makes it known. The table ships in `builtin/synonyms.json` (`{"tag":
["alias", ...]}`); the user's `$VIBRARY_HOME/synonyms.json` has the same shape and wins on conflicts. A
tag the user adds is a known word from then on, which is how their own vocabulary ("wobble", "my-snares")
takes part.

Which tag a file gets: every text is read, nearest first: the file's own folder, the file name, its embedded
title, the folders above it up to and including the one the user named, then the rest of the embedded metadata
(genre, comment, description, keywords). A sound (kick, pad) beats a descriptor (mood, timbre, processing:
"Acoustic Kick", "Vintage Drums/Snare_01" → the kick, the snare), which beats a weak word (what form a file
has: loop, one-shot, drums); among equals the nearest text wins (a `Kicks/` folder over a file named
`Snare_01`, the title over a pack's folder), and within one text the last word (the head noun ends English
names), but a word for the part a sound plays (lead, pluck, pad, stab, sub, keys) only when no other sound is
named beside it: `Guitar Lead` is a guitar, `Lead 01` a synth, and a folder named for a part (`Keys/`,
`Stabs/`) gives way to the instrument a file names (`Organ_Chord`), but for pads (a `String Pad` is a
synth's). A name that starts with a vocal is a vocal, whatever its lyric says (`Vox_Drop_The_Bass`; but
`Vocoder Bass` is a bass); one that says what a loop lacks (`No Kick`) does not name that sound. Packs name
themselves after genres, so a genre (Drum & Bass, Future Bass, any "X House") is no word at all, and a genre
field counts only when all it says is a sound ("Bass Drum", not "Bass Music"). A text saying drums (`Drums/`,
`Drum_Loop`, `Top Loop`) keeps a farther folder's or field's other instruments out: `Bass Pack/Drums/Loop 03`
is a drum loop, not a bass. A folder naming two sounds (`Kicks & Snares/`) decides nothing itself: the file's
name or metadata says which of them, and a folder that names a sound only by its part (`808/`, the sub-bass)
gives way to a drum a file names (`808 Kick`); a drum machine's folder (`Roland TR-808/`) says drums. A
descriptor or a weak word says how a sound is, not what it is: alone it is no tag (`Loops/Drum Loop 1`, a
genre field of "Electronic"), only an alternative, unless the user's own table has that tag (they asked for
loops as a class), or a library is sorted by effect: the nearest folder naming only effects inside a folder of
effects (`FX/Reverb/Kick 01`, `MyFX/Dry/take1`) names the file's effect (`_sorted_by_effect`). A file no text
names takes its own folder's name when that folder holds at least two such files and its name has no known
word: its words joined by '-', a plural s dropped (the user's own tag that nobody put in the table yet:
`Wobbles/` → wobble); or when the name is one mood and nothing else (`MyTags/dark/`: one folder per mood is
how a user teaches moods); never a catch-all (`Misc/`, `New Folder/`), a pack (`Odyssey Sample Pack/`) or a
number (`Vol 3/`). Every other known tag found for the file is reported as an alternative, so a reviewer sees
what was passed over. (A dataset of moods or other descriptors keeps `dataset create`'s default `--labels
folders`: its folder names are the labels as written.)

Numbers are words only inside an alias that has them (`808 kick` → kick; `808` alone is the sub-bass that
modern packs mean by it, a role word beside a named drum): a number of one or two digits is numbering, and
an alias of one letter would match every note name, so neither is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mutagen

from . import atomic
from .config import QUERY_WORDS
from .decode import is_audio_path
from .folders import audio_files_under

BUILTIN = Path(__file__).parent / "builtin" / "synonyms.json"
USER_FILE = "synonyms.json"
LOOP = "loop"  # the form tag of a file that repeats: a loop's "hard" is its character, not a velocity layer
LONGEST = 100  # characters of a user's alias or tag
MOST_ALIASES = 20_000  # aliases in the user's table, and given at once, at most
_RUN = re.compile(r"[^\W_]+")  # letters and digits of any script: Bässe, Señal, 大鼓
# an ordinal is one word (`Snare_3rd_Layer`: no rd, a ride), then letters, or digits
_LETTERS_OR_DIGITS = re.compile(r"\d+(?:st|nd|rd|th)(?![^\W\d_])|[^\W\d_]+|\d+", re.IGNORECASE)
_HEX = re.compile(r"(?=.*\d)(?=.*[a-fA-F])[\da-fA-F]{8,}")  # 000003BD; not BD0010 (a TR-808 sample name)
# metadata fields worth reading, in the order they are trusted: a title names the sound, a comment rambles
_ID3 = {"TIT2": "title", "TCON": "genre", "TIT1": "grouping", "COMM": "comment"}
_RIFF_INFO = {b"INAM": "title", b"IGNR": "genre", b"ISBJ": "subject", b"IKEY": "keywords", b"ICMT": "comment"}
_COMMENT_KEYS = ("title", "genre", "grouping", "keywords", "subject", "comment", "description")
_MP4 = {"\xa9nam": "title", "\xa9gen": "genre", "\xa9grp": "grouping", "\xa9cmt": "comment", "desc": "description"}
_FIELD_ORDER = (*_COMMENT_KEYS, "bext")


def tokens(text: str) -> list[str]:
    """`OpenHH_02-hard.wav` → ['open', 'hh', '02', 'hard', 'wav']: split at separators, camelCase and
    digits, lower-cased; composed first (a name zipped on a Mac spells ä as a + ◌̈, which split it)."""
    return [t.lower() for t in _written(text)]


def _written(text: str) -> list[str]:
    """The tokens as written: `OH_05` is a hat and `Oh Yeah` a lyric."""
    return [t for run in _runs(text) for t in run]


# `Bass & Drums`, `Bass+Drums`: two sounds, read as `Bass and Drums` is (`bass drums` was the alias of a kick);
# not `R&B` or `D&B`, one name
_AMPERSAND = re.compile(r"(?<=\w\w)\s*[&+]\s*(?=\w\w)")


def _runs(text: str) -> list[list[str]]:
    """The tokens of each run of letters (or of digits), as written: `BDrum` is b + drum but also bdrum. A
    hexadecimal number (`000003BD` of iTunes' loudness comment) is no word, nor its BD a kick."""
    text = _AMPERSAND.sub(" and ", unicodedata.normalize("NFC", text))
    parts = (p for run in _RUN.findall(text) if not _HEX.fullmatch(run) for p in _LETTERS_OR_DIGITS.findall(run))
    return [[p] if p.isdigit() else _camel(p) for p in parts]


def _camel(word: str) -> list[str]:
    """`KickDrüm` → Kick, Drüm; `HHOpen` → HH, Open; `MIDIFile` → MIDI, File."""
    parts, start = [], 0
    for i in range(1, len(word)):
        before, here, after = word[i - 1], word[i], word[i + 1 : i + 2]
        if here.isupper() and (before.islower() or (before.isupper() and after.islower())):
            parts.append(word[start:i])
            start = i
    return [*parts, word[start:]]


def words(text: str) -> list[str]:
    """The tokens without numbering: `Kick_01` → ['kick']."""
    return [t for t in tokens(text) if not t.isdigit()]


def clean_tag(text: str) -> str:
    """A tag as stored: lower case words joined by '-'; ValueError when nothing is left."""
    tag = "-".join(w.lower() for w in _RUN.findall(unicodedata.normalize("NFC", text)))
    if not tag:
        raise ValueError(f"tag {text!r}: use letters and digits (words are joined by '-')")
    if tag in QUERY_WORDS:  # a model trained on it would be refused at its install, after the training
        raise ValueError(f"tag {text!r}: OR, AND and NOT are words of a search; give the tag another name")
    return tag


def _key(alias: str) -> tuple[str, ...]:
    """An alias as the tokens it matches; () for one that would match noise (a lone letter: every note
    name "B" or "C"; a lone number of one or two digits: numbering; nothing at all). A number of three
    digits or more names a machine as often as it counts (808, 909, 303)."""
    key = tuple(tokens(alias))
    if not key or (len(key) == 1 and (len(key[0]) < 2 or (key[0].isdigit() and len(key[0]) < 3))):
        return ()
    return key


class NoSuchAlias(ValueError):
    """An alias to remove that no table has."""


@dataclass(frozen=True)
class _Match:
    tag: str  # "" for an ignored phrase (a genre)
    start: int  # the tokens it covers
    end: int
    key: tuple[str, ...] = ()  # the alias it matched


@dataclass
class Synonyms:
    """alias → tag, the built-in table overlaid by the user's."""

    builtin: dict[str, list[str]]
    user: dict[str, list[str]] = field(default_factory=dict)
    weak: frozenset[str] = frozenset()
    descriptors: frozenset[str] = frozenset()
    effects: frozenset[str] = frozenset()  # descriptors that are what a file is under a folder of fx
    ignored: frozenset[tuple[str, ...]] = frozenset()  # genres: "Drum & Bass" is no drum and no bass
    families: dict[str, frozenset[str]] = field(default_factory=dict)  # drums → kick, snare, …
    containers: frozenset[str] = frozenset()  # samples, pack, vol: folders that hold, not name, sounds
    loose_containers: frozenset[str] = frozenset()  # misc, new, free: so only alone or last (not New Wave)
    articulations: frozenset[str] = frozenset()  # open, roll: may follow a sound in capitals (HIHATOPEN)
    roles: frozenset[tuple[str, ...]] = frozenset()  # lead, pad, sub: the part a sound plays
    ambiguous: frozenset[tuple[str, ...]] = frozenset()  # oh, ride: lyrics too
    removed: list[str] = field(default_factory=list)  # built-in aliases the user took out

    def __post_init__(self) -> None:
        self._found: dict[tuple[str, bool], list[str]] = {}  # find()'s answers (the table changed: none)
        self._phrases: dict[tuple[str, ...], str] = {}
        removed = {_key(alias) for alias in self.removed}
        for table in (self.builtin, self.user):  # the user's table last: it wins
            for tag, aliases in table.items():
                for alias in (tag, *aliases):
                    key = _key(alias)
                    if key and not (table is self.builtin and key in removed):
                        self._phrases[key] = tag
                        self._phrases[("".join(key),)] = tag  # "bass drum" also as "bassdrum"
        mine = {_key(alias) for aliases in self.user.values() for alias in aliases}
        self._roles = self.roles - mine  # an alias the user gave a tag means that tag, whatever is beside it
        self._ambiguous = self.ambiguous - mine
        self._played = {(w,) for w in self.articulations} - mine
        self._drums = {tag for family, members in self.families.items() for tag in (family, *members)}
        self._longest = max(map(len, [*self._phrases, *self.ignored]), default=1)  # however long the user's
        starts = {k[0] for k in self._phrases if len(k) == 1 and len(k[0]) > 3 and k[0].isalpha()}
        self._starts = sorted(starts, key=len, reverse=True)  # HIHATOPEN: the longest known word first

    @classmethod
    def load(cls, home_dir: Path | None) -> Synonyms:
        raw = json.loads(BUILTIN.read_text())
        builtin = {k: list(v) for k, v in raw.items() if not k.startswith("_")}
        user: dict[str, list[str]] = {}
        removed: list[str] = []
        path = home_dir / USER_FILE if home_dir else None
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text())
                if not isinstance(loaded, dict):
                    raise TypeError(f"not an object but {type(loaded).__name__}")
                removed = _aliases(loaded.pop("_removed", []))
                user = {clean_tag(k): _aliases(v) for k, v in loaded.items()}
            except (ValueError, TypeError, AttributeError) as e:
                raise ValueError(f'{path}: expected {{"tag": ["alias", ...]}} ({e})') from None
        return cls(
            builtin,
            user,
            frozenset(raw.get("_weak", ())),
            frozenset(raw.get("_descriptors", ())),
            frozenset(raw.get("_effects", ())),
            frozenset(tuple(tokens(phrase)) for phrase in raw.get("_ignored", ())),
            {tag: frozenset(members) for tag, members in raw.get("_families", {}).items()},
            frozenset(raw.get("_containers", ())),
            frozenset(raw.get("_loose_containers", ())),
            frozenset(raw.get("_articulations", ())),
            frozenset(_key(alias) for alias in raw.get("_roles", ())),
            frozenset(_key(alias) for alias in raw.get("_ambiguous", ())),
            removed,
        )

    @property
    def tags(self) -> set[str]:
        return set(self._phrases.values())

    def spelling(self, text: str) -> str:
        """A tag the user typed, as the table spells it when it is one of its tags written another way
        (`Hi Hat`, `hi-hats` → hihat), so that an edit does not start a class beside the suggested one;
        an alias stays the user's word (renaming synth to "lead" is a choice, not a misspelling)."""
        tag = clean_tag(text)
        compact = tag.replace("-", "")
        return next((t for t in sorted(self.tags) if compact in _spellings(t)), tag)

    def pairs(self) -> list[tuple[str, str, bool]]:
        """(alias, tag, builtin) for every alias, the user's overriding the built-in ones."""
        user = {(a.lower(), t) for t, aliases in self.user.items() for a in aliases}
        hidden = {a for a, _ in user} | {a.lower() for a in self.removed}
        builtin = {(a.lower(), t) for t, aliases in self.builtin.items() for a in aliases if a not in hidden}
        return sorted([(a, t, True) for a, t in builtin] + [(a, t, False) for a, t in user], key=lambda x: (x[1], x[0]))

    def add(self, home_dir: Path, pairs: Iterable[tuple[str, str]]) -> None:
        """Add alias → tag pairs to the user's table (saved atomically). An alias the user already gave
        another tag moves to this one; ValueError, and nothing changed, when any pair is bad."""
        checked = [(alias.strip(), clean_tag(tag)) for alias, tag in pairs]
        if len(checked) > MOST_ALIASES:  # (each was a pass over the whole table: 100,000 took a core for minutes)
            raise ValueError(f"{len(checked):,} aliases at once; {MOST_ALIASES:,} at most")
        for alias, tag in checked:
            if not alias:
                raise ValueError("an alias is empty")
            if max(len(alias), len(tag)) > LONGEST or not alias.isprintable():  # stored, listed on every call
                raise ValueError(f"alias {alias[:40]!r} → {tag[:40]!r}: {LONGEST} printable characters at most")
            if not _key(alias):
                raise ValueError(
                    f"alias {alias!r} would match noise (a lone letter is a note name, a number of one or "
                    "two digits is numbering): give a word of two letters or more, or a number of three digits"
                )
            if alias.lower() in _spellings(tag):  # (a descriptor's or weak word's own word makes it a tag of theirs)
                if not self.rank(tag):  # a sound's is read as it anyway: listed, and then not removable
                    raise ValueError(f"{alias!r} is the tag {tag!r} itself, which is always read as that tag")
            elif (named := clean_tag(alias)) in self.tags:  # `add kick snare`: every kick suggested as a snare
                raise ValueError(
                    f"{alias!r} is a tag of its own ({named}): an alias is another word for a tag; to tag those"
                    f" files {tag!r}, relabel them in the dataset (`vibrary dataset rename NAME {named} {tag}`)"
                )
        latest = {alias.lower(): (alias, tag) for alias, tag in checked}  # (one alias given twice: the last tag)
        with self._editing(home_dir):
            staying = sum(a.lower() not in latest for aliases in self.user.values() for a in aliases)
            if staying + len(latest) > MOST_ALIASES:  # (checked before any change)
                raise ValueError(f"the table would hold {staying + len(latest):,} aliases; {MOST_ALIASES:,} at most")
            self._forget(latest)
            for alias, tag in latest.values():
                self.user.setdefault(tag, []).append(alias)

    def shipped(self) -> dict[str, str]:
        """Each built-in alias → its tag, as the built-in table has them (whatever the user's table masks)."""
        return {alias.lower(): tag for tag, aliases in self.builtin.items() for alias in aliases}

    def remove(self, home_dir: Path, aliases: Iterable[str]) -> list[tuple[str, str, bool]]:
        """Take aliases out: the user's own from their table, a built-in one by masking it there (a lyric
        read as a drum, a vendor's word that means something else in this library). The (alias, tag,
        builtin) pairs removed; ValueError, and nothing changed, for an alias no table has."""
        wanted = [alias.strip().lower() for alias in aliases]
        builtin = self.shipped()
        with self._editing(home_dir):
            pairs = {alias: (alias, tag, builtin) for alias, tag, builtin in self.pairs()}
            for alias in wanted:
                if alias not in pairs:
                    raise NoSuchAlias(f"no alias {alias!r}: `vibrary synonyms list` shows them")
                # (one word: removed, it read as the tag still; but a descriptor's own, which made it a tag)
                if alias in _spellings(tag := pairs[alias][1]) and not self.rank(tag):
                    raise ValueError(f"{alias!r} is the tag {tag!r} itself, which is always read as that tag")
            # its plural or singular for the same tag goes too: words are read with a plural s dropped, so
            # `Pads/` was still read through `pad` after `remove pads`, and the removal seemed to do nothing
            wanted += [
                other
                for alias in wanted
                for other in (alias + "s", alias + "es", alias.removesuffix("s"), alias.removesuffix("es"))
                if other != alias and other in pairs and pairs[other][1] == pairs[alias][1]
            ]
            self._forget(wanted)
            self.removed += [alias for alias in dict.fromkeys(wanted) if alias in builtin]  # (one that overrode it)
        return [pairs[alias] for alias in dict.fromkeys(wanted)]

    def _forget(self, aliases: Iterable[str]) -> None:
        gone = {alias.lower() for alias in aliases}
        self.user = {t: [a for a in held if a.lower() not in gone] for t, held in self.user.items()}
        self.removed = [a for a in self.removed if a.lower() not in gone]

    @contextlib.contextmanager
    def _editing(self, home_dir: Path) -> Iterator[None]:
        """Change the user's table as saved now, under an flock that every edit takes, then save it: the
        daemon (AddSynonyms) and `vibrary synonyms` each loaded, changed and saved the file, so two edits at
        once (two terminals, a script beside the CLI) kept only the last one's."""
        home_dir.mkdir(parents=True, exist_ok=True)
        with open(home_dir / f"{USER_FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write of a small file
            saved = Synonyms.load(home_dir)
            self.user, self.removed = saved.user, saved.removed
            yield
            self._save(home_dir)

    def _save(self, home_dir: Path) -> None:
        """The user's table, written atomically."""
        self.user = {t: a for t, a in self.user.items() if a}
        saved: dict[str, list[str]] = {**self.user, **({"_removed": self.removed} if self.removed else {})}
        atomic.write(home_dir / USER_FILE, json.dumps(saved, indent=1, sort_keys=True))
        self.__post_init__()

    def find(self, text: str, drums: bool = False) -> list[str]:
        """The known tags in a text, in order of appearance, longest phrases first; a role word (lead, sub)
        only when no other sound is named beside it: `Guitar Lead` is a guitar, `Kick_Sub_Layer` a kick;
        a word of lyrics too (oh, ride) only in capitals, alone, or where drums are named (here or, said
        by `drums`, in the file's folder). Kept for the next files: a folder's names are read for each."""
        found = self._found.get((text, drums))
        if found is None:
            if len(self._found) > 10_000:
                self._found.clear()
            found = self._found[(text, drums)] = self._find(text, drums)
        return list(found)

    def _find(self, text: str, drums: bool) -> list[str]:
        runs = _runs(text)
        written = [t for run in runs for t in run]
        found = [m for m in self._scan([w.lower() for w in written], runs) if m.tag]
        drums = drums or any(m.tag in self._drums and m.key not in self._ambiguous for m in found)
        words = sum(not w.isdigit() for w in written)
        found = [
            m
            for m in found
            if m.key not in self._ambiguous
            or drums
            or all(w.isupper() for w in written[m.start : m.end])
            or words == m.end - m.start
        ]
        if found and found[0].tag == "vocals" and _voice(found[0].key):  # `SM101_Vox_Drop_The_Bass`: a lyric
            found = [m for m in found if self.rank(m.tag) or m.tag == "vocals"]
        named = any(self.rank(m.tag) == 0 and m.key not in self._roles for m in found)
        # `Kick-Hard`, `Snare_Soft`: after a drum, how it was hit (a velocity layer), no mood; but a pad's
        # `Soft` or a `Kick Hard Loop` are the sound's character
        hit = not any(m.tag == LOOP for m in found)
        after = min(
            (m.end for m in found if hit and m.tag in self._drums and self.rank(m.tag) == 0), default=len(written)
        )
        return list(
            dict.fromkeys(
                m.tag
                for m in found
                if not (named and m.key in self._roles)
                and not (m.start >= after and self.rank(m.tag) == 1 and m.key in self._played)
            )
        )

    def names_only_tags(self, text: str) -> bool:
        """Whether every word of a text is part of a known tag's name, or numbering: a category folder
        (`One Shots/`, `Drum Loops/`), not a pack's name (`Phat Beats/`)."""
        return self._named(text, sounds=False)[1]

    def by_role(self, text: str, tag: str) -> bool:
        """Whether a text names `tag` only by the part it plays (`808/`: the sub-bass of modern packs, but
        a folder over `808 Kick`)."""
        runs = _runs(text)
        found = [m for m in self._scan([t.lower() for run in runs for t in run], runs) if m.tag == tag]
        return bool(found) and all(m.key in self._roles for m in found)

    def _scan(self, ws: list[str], runs: Sequence[Sequence[str]] = ()) -> list[_Match]:
        found: list[_Match] = []
        whole, at = {}, 0  # where a camelCase run starts: its tokens and what they make written as one
        for run in runs:
            whole[at] = (len(run), "".join(run).lower(), len(run) == 1 and run[0].isupper())
            at += len(run)
        i = 0
        while i < len(ws):
            length, joined, capitals = whole.get(i, (1, ws[i], False))
            key = self._lookup((joined,)) if length > 1 else None
            if key is not None:  # BDrum: as written, bdrum
                found.append(_Match(self._phrases[key], i, i + length, key))
                i += length
                continue
            for n in range(min(self._longest, len(ws) - i), 0, -1):
                phrase = tuple(ws[i : i + n])
                key = self._lookup(phrase)
                if key is not None:
                    found.append(_Match(self._phrases[key], i, i + n, key))
                elif self._is_genre(phrase):
                    found.append(_Match("", i, i + n))  # consumed, so that "Piano House" is not read as piano
                else:
                    continue
                i += n
                break
            else:
                if capitals:
                    found.extend(_Match(self._phrases[k], i, i + 1, k) for k in self._leading(ws[i]))
                i += 1
        return found

    def _leading(self, word: str) -> list[tuple[str, ...]]:
        """The known word that starts a word in capitals when the rest is a known word too or how it is
        played: HIHATOPEN → hihat, SNAREROLL → snare; not the names in capitals artists and packs give
        (KICKSTARTER, GRANDSON, ORGANISM), nor where too little is left over to be a word (ORGANIC)."""
        for start in self._starts:
            if word.startswith(start) and len(word) - len(start) > 2:
                rest = word[len(start) :]
                known = self._lookup((rest,))
                if known or rest in self.articulations or rest.removesuffix("s") in self.articulations:
                    return [(start,), *([known] if known else [])]
        return []

    def _is_genre(self, phrase: tuple[str, ...]) -> bool:
        return phrase in self.ignored or (len(phrase) == 2 and phrase[1] == "house")  # deep, tech, piano house…

    def only_sounds(self, text: str) -> bool:
        """Whether every word of a text is part of a sound's name: a genre field of "Bass Drum" or "Clap"
        names the sound, one of "Bass Music" or "Electronic" the style of the pack."""
        found, named = self._named(text, sounds=True)
        return found and named

    def _named(self, text: str, sounds: bool) -> tuple[bool, bool]:
        """(whether the text has a known word, whether every word but numbering is part of a tag's name: a
        sound's, with `sounds`)."""
        ws = tokens(text)
        matches = self._scan(ws)
        covered = {i for m in matches if m.tag and not (sounds and self.rank(m.tag)) for i in range(m.start, m.end)}
        return bool(matches), all(i in covered or w.isdigit() for i, w in enumerate(ws))

    def _lookup(self, phrase: tuple[str, ...]) -> tuple[str, ...] | None:
        """The table's key for a phrase, or for it without a plural s."""
        if phrase in self._phrases:
            return phrase
        last = phrase[-1]
        for cut in ("es", "s"):  # plurals: crashes → crash, claps → clap; but hates is no hat
            stem = last[: -len(cut)]
            if last.endswith(cut) and len(stem) > 1 and (cut == "s" or stem.endswith(("s", "x", "z", "ch", "sh"))):
                key = (*phrase[:-1], stem)
                if key in self._phrases:
                    return key
        return None

    def tag_of(self, phrase: str) -> str | None:
        """The tag a whole phrase spells or is an alias of (`hh`, `hi hats`, `BD` → hihat, hihat, kick), or None."""
        key = _key(phrase)
        found = self._lookup(key) if key else None
        return self._phrases[found] if found else None

    def pick(self, tags: Sequence[str]) -> str | None:
        """The tag a text stands for: its last sound word, else its last descriptor, else its last weak word."""
        if not tags:
            return None
        best = min(self.rank(t) for t in tags)
        return [t for t in tags if self.rank(t) == best][-1]

    def is_drum(self, tag: str) -> bool:
        return tag in self._drums

    def is_class(self, tag: str) -> bool:
        """Whether a tag can be a file's tag: a descriptor or weak word (dark, loop) only when the user's own
        table names it, since a class "loop" holds kicks, basses and pianos alike."""
        return self.rank(tag) == 0 or tag in self.user

    def rank(self, tag: str) -> int:
        return 2 if tag in self.weak else 1 if tag in self.descriptors else 0


@dataclass(frozen=True)
class Suggestion:
    path: str
    tag: str  # "" when nothing was found
    source: str  # folder | filename | metadata | ""
    raw: str  # the text it came from, as written
    alternatives: tuple[str, ...] = ()


def _spellings(tag: str) -> tuple[str, ...]:
    compact = tag.replace("-", "")
    return compact, compact + "s", compact + "es"


def _aliases(value: object) -> list[str]:
    """A hand-edited `"kick": "bd"` would otherwise be iterated into the aliases 'b' and 'd'."""
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise TypeError(f"aliases must be a list of strings, not {value!r}")
    return value


def metadata(path: str) -> list[tuple[str, str]]:
    """(field, text) pairs embedded in the file, most trusted first; [] when there are none or the file
    cannot be parsed (a suggestion is a hint: an odd tag block must not stop a dataset)."""
    found: list[tuple[str, str]] = []
    if not os.path.isfile(path):  # a named pipe blocks its reader until a writer comes: maybe for ever
        return found
    try:
        audio = mutagen.File(path)
    except Exception:  # mutagen raises its own error per format, and OSError
        audio = None
    tags = getattr(audio, "tags", None)
    if tags is not None:
        if hasattr(tags, "getall"):  # ID3, in MP3, WAV, AIFF
            for frame_id, name in _ID3.items():
                for frame in tags.getall(frame_id):
                    if getattr(frame, "desc", "").startswith("iTun"):  # iTunNORM, iTunSMPB: numbers, not words
                        continue
                    found.extend((name, str(t)) for t in frame.text if str(t).strip())
        elif hasattr(tags, "items"):  # Vorbis comments (FLAC, Ogg) and MP4 atoms
            for key, values in tags.items():
                name = _MP4.get(key, key.lower())
                if name in _COMMENT_KEYS:
                    found.extend((name, str(v)) for v in (values if isinstance(values, list) else [values]))
    if path.lower().endswith((".wav", ".wave", ".bwf")):
        found.extend(_riff_text(path))
    return sorted(found, key=lambda f: _FIELD_ORDER.index(f[0]))


def _riff_text(path: str) -> list[tuple[str, str]]:
    """RIFF INFO fields and the BWF `bext` description, which mutagen does not read."""
    found = []
    try:
        with open(path, "rb") as f:
            if f.read(12)[8:12] != b"WAVE":
                return []
            while header := f.read(8):
                if len(header) < 8:
                    break
                chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk_id == b"bext":
                    found.append(("bext", _text(f.read(min(size, 256)))))
                    f.seek(size - min(size, 256) + (size & 1), 1)
                elif chunk_id == b"LIST" and size >= 4 and f.read(4) == b"INFO":
                    body = f.read(min(size - 4, 1 << 20))  # a size claiming 4 GB must not reserve it
                    at = 0
                    while at + 8 <= len(body):
                        sub, length = body[at : at + 4], struct.unpack("<I", body[at + 4 : at + 8])[0]
                        if sub in _RIFF_INFO:
                            found.append((_RIFF_INFO[sub], _text(body[at + 8 : at + 8 + length])))
                        at += 8 + length + (length & 1)
                    f.seek(size - 4 - len(body) + (size & 1), 1)
                else:
                    f.seek(size + (size & 1) - (4 if chunk_id == b"LIST" and size >= 4 else 0), 1)
    except (OSError, struct.error):
        return found
    return [(k, v) for k, v in found if v]


def _text(raw: bytes) -> str:
    """A RIFF field's text: UTF-8, or else the Windows code page its editors write (`Grosse caisse étouffée`
    came out with two '�'), or UTF-16 after its byte-order mark (a "Snare" read as nothing, cut at its first
    zero byte)."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # (a field's padding byte after it is no half of a character)
        return raw[: len(raw) // 2 * 2].decode("utf-16", errors="replace").split("\0", 1)[0].strip()
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return text.decode("cp1252", errors="replace").strip()


def audio_files(paths: Sequence[str], going: Callable[[], bool] = lambda: True) -> list[tuple[str, str]]:
    """(file, the root it was found under): folders recursively, audio files as given (a glob's `.asd`, `._`
    or README were suggested a kick as a folder's never are), sorted; a file once, under the first path given
    that holds it (`lib2 lib2/PackA` would otherwise list PackA twice). The walk ends early once `going()`
    says so."""
    out: dict[str, tuple[str, str]] = {}
    for p in paths:
        if os.path.isdir(p):
            found = [(f, p) for f in audio_files_under(p, going=going, links=True)]
        elif os.path.exists(p):
            found = [(p, os.path.dirname(os.path.abspath(p)))] if is_audio_path(p) else []
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
        for f, root in found:
            out.setdefault(os.path.normcase(os.path.abspath(f)), (f, root))
    return list(out.values())


def _folders(path: str, root: str) -> list[str]:
    """Folder names from the file's own up to and including the root's, nearest first (`.` and a bare
    file name stand for the folders they are in)."""
    root = os.path.abspath(root)
    rel = os.path.relpath(os.path.dirname(os.path.abspath(path)), root)
    parts = [] if rel == "." else rel.split(os.sep)
    return [*reversed(parts), os.path.basename(root)]


def _texts(path: str, root: str) -> list[tuple[bool, str, str, str]]:
    """(names the file itself, source, raw, text to read) for every text of a file, nearest first: a
    file's own folder, name and title say what it is; the folders above and the other fields say what
    pack it came from."""
    own, *above = _folders(path, root)
    fields = [(k, f"{k}: {_shown(v)}", _without_addresses(_head(v))) for k, v in metadata(path)]
    texts = [(True, "folder", own, own)]
    name = os.path.splitext(os.path.basename(path))[0]
    texts.append((True, "filename", name, name))
    texts.extend((True, "metadata", raw, text) for k, raw, text in fields if k == "title")
    texts.extend((False, "folder", folder, folder) for folder in above)
    texts.extend((False, "metadata", raw, text) for k, raw, text in fields if k != "title")
    return texts


FX = "fx"  # the tag of sound effects, which a folder of effects names too
FX_WORDS = frozenset({"fx", "effect", "effects"})  # a folder of effects (not sfx, risers, foley: sounds)

_ADDRESS = re.compile(r"://|www\.|.\.(?:com|org|net|io|co|uk|de|fr|info|me)\b", re.IGNORECASE)


def _without_addresses(text: str) -> str:
    """A field's words but its web addresses ("Downloaded from www.freesounds.org": its .org was an organ),
    word by word: one pattern over the whole field backtracked over every long run without a space, and a
    40 kB comment of one word took 12 s, a 3 MB one hours, the daemon's every call waiting on it."""
    return " ".join(word for word in text.split() if not _ADDRESS.search(word))


SHOWN_CHARS = 120
READ_CHARS = 2000  # of a field, the words read for a tag: a tag is a word or two, not a 2 MB comment's last line


def _head(value: str) -> str:
    """A field's first READ_CHARS, whole words: every word of a 2 MB comment was looked up, 14 s for one file
    (its tag is in its first words; a tagger's field is shorter than this)."""
    if len(value) <= READ_CHARS:
        return value
    words = value[:READ_CHARS].rsplit(None, 1)  # (none but spaces: [], and an IndexError failed the whole call)
    return words[0] if len(words) == 2 else value[:READ_CHARS].strip()


def _shown(value: str) -> str:
    """A field as the suggestion quotes it: a 2 MB comment was printed whole, and sent whole over the API."""
    return value if len(value) <= SHOWN_CHARS else value[: SHOWN_CHARS - 1] + "…"


def _choose(
    texts: list[tuple[bool, str, str, str]], synonyms: Synonyms
) -> tuple[tuple[str, str, str] | None, list[str]]:
    """The tag, where it came from and the text it came from (None when no text names one), and every
    known tag of every text."""
    best: tuple[str, str, str] | None = None
    by_role = False  # best is a role word only (808, lead): a sound the file's own texts name beats it
    tags: list[str] = []
    families: list[frozenset[str]] = []  # a nearer "Drums" keeps a farther "Bass Pack" out
    drums = any(synonyms.is_drum(t) for own, _, _, text in texts if own for t in synonyms.find(text))
    for own, source, raw, text in texts:
        here = synonyms.find(text, drums)
        # a form in a pack's name above (loop, one-shot) is the pack's, not this file's: every one-shot of
        # `Phat Beats/` was "also named: loop", and a mood folder inside it (`Phat Beats/dark/`) gave no mood;
        # a category folder above (`One Shots/Snares/`) says the file's form
        pack = not own and not synonyms.names_only_tags(text)
        tags.extend(t for t in here if not pack or synonyms.rank(t) < 2 or t in synonyms.families)
        if raw.startswith("genre: ") and not synonyms.only_sounds(text):
            continue
        if not own:
            here = [t for t in here if synonyms.rank(t) or all(t in family for family in families)]
        sounds = frozenset(t for t in here if synonyms.rank(t) == 0)
        if source == "folder" and len(sounds) > 1:  # `Kicks & Snares/`: the file's own name says which
            families.append(sounds)
            continue
        tag = synonyms.pick([t for t in here if synonyms.is_class(t)])
        if tag is None:
            pass
        elif best is None or synonyms.rank(tag) < synonyms.rank(best[0]):
            best, by_role = (tag, source, raw), synonyms.by_role(text, tag)
        elif own and by_role and (synonyms.is_drum(tag) or not _says_pad(best[2])) and not synonyms.by_role(text, tag):
            # `808/808 Kick`: a kick; `Keys/Organ_Chord`: an organ (but `Pads/String Pad` a synth's pad)
            best, by_role = (tag, source, raw), False
        families.extend(synonyms.families[t] for t in here if t in synonyms.families)
    return _sorted_by_effect(texts, synonyms) or best, tags


def _sorted_by_effect(texts: list[tuple[bool, str, str, str]], synonyms: Synonyms) -> tuple[str, str, str] | None:
    """The effect a library sorted by effect files a file under: the nearest folder naming nothing but effects
    (`Reverb/`, `Dry/`, `Reverb FX/`), in a folder of effects (`FX/`, `MyFX/`, `Effects/`, `FX Pack/`) or being
    one, with no folder naming something else between (`FX/Drums/Distortion/Kick 01` is a kick). Whatever
    sound the file names: `FX/Reverb/Kick Reverb 01` is a reverb (every file of `FX/Reverb/` and `FX/Delay/`
    was "fx", or the sound its name said: 56 of 83 files of such a library). Not under a pack of sounds' effects
    (`Drum FX/`, `Vocal FX/`, `Sound FX/`): those are sounds, as risers, foley or atmospheres are."""
    folders = [(raw, text) for _, source, raw, text in texts if source == "folder"]  # nearest first
    for k, (raw, text) in enumerate(folders):
        found = synonyms.find(text)
        effects = [t for t in found if t in synonyms.effects]
        if not effects or not _only_effects(text, synonyms) or not synonyms.names_only_tags(text):
            if found:  # a folder of sounds (`Kicks/`, `Vocals/`, `Reverse Cymbals/`), or of effects with none named
                return None
            continue  # a folder of no known word (`Long Tails/`, `Hall/`): the one above says
        for _, above in folders[k:]:
            if _of_effects(above, synonyms):
                return effects[-1], "folder", raw
            if above != text and synonyms.find(above):  # a folder of something else on the way
                return None
        return None
    return None


def _of_effects(text: str, synonyms: Synonyms) -> bool:
    """Whether a folder holds effects, not sounds: `FX/`, `My FX/`, `Effects/`, `Reverb FX/`; not `Drum FX/`,
    `Sound FX/` (sounds that are effects)."""
    ws = set(words(text))
    return bool(FX_WORDS & ws) and "sound" not in ws and _only_effects(text, synonyms)


def _only_effects(text: str, synonyms: Synonyms) -> bool:
    """Whether a text and each of its words name effects and fx alone (`Clean Hits/` names one-shots too)."""
    allowed = synonyms.effects | {FX}
    return all(set(synonyms.find(t)) <= allowed for t in [text, *words(text)])


def _voice(key: tuple[str, ...]) -> bool:
    """Whether an alias names a voice (vox, vocal chop, a cappella): the sounds a name gives after it are its
    lyric. (A vocoder, a choir or a chant named before a sound is how that sound is made.)"""
    return key[0] in ("vox", "vocal", "vocals", "acapella", "acappella", "accapella") or key[:2] == ("a", "cappella")


def _says_pad(text: str) -> bool:
    return any(w in ("pad", "pads") for w in words(text))


def suggest(paths: Sequence[str], synonyms: Synonyms, going: Callable[[], bool] = lambda: True) -> list[Suggestion]:
    """A suggestion for every audio file under the given folders and files (rules in the module doc);
    TimeoutError once `going()` says to stop (a caller who stopped waiting for a big library)."""
    files = audio_files(paths, going)
    chosen: list[tuple[str, str, str] | None] = []
    found: list[list[str]] = []
    for path, root in files:
        if not going():
            raise TimeoutError(f"stopped after {len(chosen)} of {len(files)} files: the caller stopped waiting")
        best, tags = _choose(_texts(path, root), synonyms)
        chosen.append(best)
        found.append(tags)
    unnamed = Counter(os.path.dirname(path) for (path, _), best in zip(files, chosen, strict=True) if best is None)
    out = []
    for (path, root), best, tags in zip(files, chosen, found, strict=True):
        tag, source, raw = best or _recurring(path, root, unnamed, synonyms, tags) or ("", "", "")
        out.append(Suggestion(path, tag, source, raw, tuple(t for t in dict.fromkeys(tags) if t != tag)))
    return out


def _holds(ws: list[str], synonyms: Synonyms) -> bool:
    """Whether a folder's words name a container, not sounds: a pack's word anywhere (`Odyssey Sample
    Pack (WAV)`, `Sample Magic`), a catch-all word last or alone (`Misc`, `New Folder`, `Vol 3`); `New
    Wave` is the user's word."""

    def holding(w: str, kind: frozenset[str]) -> bool:
        return w in kind or w.removesuffix("s") in kind

    every = synonyms.containers | synonyms.loose_containers
    return (
        any(holding(w, synonyms.containers) for w in ws)
        or holding(ws[-1], every)
        or all(holding(w, every) or w.isdigit() or _TEMPO_OR_KEY.fullmatch(w) for w in ws)
    )


# plurals of words that end in -che, -sse, -xe: an -es after ch, sh, x, ss or zz is the plural's but for these
_KEEP_E = frozenset(
    {"avalanches", "headaches", "aches", "niches", "caches", "crevasses", "impasses", "axes", "tranches"}
    | {"moustaches", "quiches", "cliches", "clichés", "creches", "finesses", "lacrosses", "posses"}
)
_IES = frozenset({"melodies", "harmonies", "bodies", "stories", "memories", "symphonies", "frequencies", "energies"})
# a folder of loops sorted by tempo or key (`120 BPM/`, `Am/`, `Key of C/`, `F# Minor/`) names no sound: as a tag
# every loop of that tempo was `bpm`, whatever it played
_TEMPO_OR_KEY = re.compile(
    r"bpm|key|of|scale|major|minor|maj|min|(?!fm$)[a-g](b|s|sharp|flat)?(m|maj|min|major|minor)?"
)


def _recurring(
    path: str, root: str, unnamed: Counter[str], synonyms: Synonyms, heard: Sequence[str]
) -> tuple[str, str, str] | None:
    """The folder's own name as the tag, for the user's words nobody put in the table (`Wobbles/`), when it
    holds two files or more that nothing names; not a name with a known word in it (`Loops/`), which said
    what it had to say already, nor a catch-all or a pack (`Misc/`, `Odyssey Sample Pack/`) or a number
    (`Vol 3/`), except a mood's alias (`airy/`). But a folder named by one mood gives it to files that say
    nothing else (`heard`: the tags their texts name), even alone: one folder per mood is how a user teaches
    moods (`MyTags/dark/`, the README's example), while a pack's `Drum Loops/Wet/Loop 01` is a loop, no mood,
    and `Dark Pads/` pads."""
    name = _folders(path, root)[0]
    ws = [w for w in words(name) if len(w) > 1]  # `808s/` is no folder of "s"
    if not ws or _holds(ws, synonyms):
        return None
    known = synonyms.find(name)
    if known:
        mood = known[0]
        if len(known) > 1 or mood not in synonyms.descriptors or not set(heard) <= {mood}:
            return None
        if clean_tag(name).replace("-", "") in _spellings(mood):
            return mood, "folder", name
        # a mood's alias (`airy/` of airy_01, airy_02: bright's) is the user's word, as an unknown one is; the
        # mood itself is not what they asked for, nor always one (`Analog/` is warm's)
    if unnamed[os.path.dirname(path)] < 2:
        return None
    if ws[-1] in _IES:
        ws[-1] = ws[-1][:-3] + "y"  # a folder of melodies holds a melody each (but movies a movie)
    elif ws[-1].endswith(("ches", "shes", "xes", "sses", "zzes")) and ws[-1] not in _KEEP_E:
        ws[-1] = ws[-1][:-2]  # a folder of glitches holds a glitch each (it held a "glitche")
    elif len(ws[-1]) > 3 and ws[-1].endswith("s") and not ws[-1].endswith(("ss", "us", "is")):
        ws[-1] = ws[-1][:-1]  # a folder of wobbles holds a wobble each
    return clean_tag(" ".join(ws)), "folder", name
