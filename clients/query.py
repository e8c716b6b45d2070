"""The search words people type, `kick -acoustic snare|clap`, as the API's groups: shared by the CLI, the
tray's search box and scripts (`Client.search("kick -acoustic")`), so the three read a query alike."""

from __future__ import annotations

import difflib
import functools
import logging
import re
import shlex
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from vibrary.daemon.config import tag_key
from vibrary.daemon.suggest import Synonyms

from .errors import BadArgument


class QueryError(BadArgument):
    """A query that cannot make sense (`kick OR`, `NOT`); str() says why."""


def unquoted(tag: str) -> str:
    """`"snare"` → snare: quoted for a shell twice, or by a front end; no tag holds a quote."""
    return tag.strip("\"'")


def _words(text: str) -> list[str]:
    """A query typed as one line (the tray's box, `Client.search`): its words, a tag with spaces in double
    quotes as one (`"hi hat"`, `-"hi hat"`), as the shell gives them to the CLI; an apostrophe is a letter."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.quotes, lexer.escape, lexer.commenters = True, '"', "", ""  # `#808`, `C#m`
    try:
        return list(lexer)
    except ValueError:
        raise QueryError(f"{text}: a double quote is not closed") from None


OPERATORS = frozenset({"or", "and", "not"})  # a query's own words, as `_as_words` and `join_tags` meet them
MOST_TAG_WORDS = 8  # words of a tag with spaces that unquoted words are joined into
LONGEST_QUERY = 10_000  # characters: a paste of a megabyte took shlex 50 s to split, the daemon 0.02 s to refuse


def join_tags(words: Sequence[str], is_tag: Callable[[str], bool]) -> list[str]:
    """Words between operators, each longest run of them that spells a tag with spaces (also left out: `-hi
    hat`) as one word: `lead synth` for a model's tag "lead synth", which read as lead AND synth. A word left
    out that is a tag itself stays one (`-bass synth` is synth without bass, beside a tag "bass synth": it
    left out the phrase and found basses; `-"bass synth"` leaves that out)."""
    found: list[str] = []
    start = 0
    while start < len(words):
        stop = start  # the plain words from here, as many as a tag may have (every end was tried: cubic time)
        alone = words[start].startswith("-") and is_tag(words[start][1:])
        while not alone and stop < len(words) and stop - start < MOST_TAG_WORDS and _plain(words[stop]):
            stop += 1
        end = next((e for e in range(stop, start + 1, -1) if is_tag(" ".join(words[start:e]).lstrip("-"))), start + 1)
        found.append(" ".join(words[start:end]))
        start = end
    return found


def _plain(word: str) -> bool:
    """A word that may be part of a tag with spaces: no operator, no alternatives, no tag already whole."""
    return word.lower() not in OPERATORS and "|" not in word and " " not in word


def parse_query(
    words: str | Sequence[str], is_tag: Callable[[str], bool] | None = None
) -> tuple[list[list[str]], list[str]]:
    """`kick -acoustic snare|clap` or `snare OR clap NOT acoustic` → (AND of OR-groups, excluded tags):
    AND of words (AND itself may be said), '-' or NOT negates, OR / '|' alternates (a '|' alone or at a
    word's edge too: `snare | clap`, `snare |clap`); tags in lower case, as they are stored. `is_tag`: whether
    words with spaces are a tag, for unquoted words that spell one (`join_tags`)."""
    if isinstance(words, str) and len(words) > LONGEST_QUERY:
        raise QueryError(f"a query of {len(words):,} characters: {LONGEST_QUERY:,} at most")
    groups: list[list[str]] = []
    excluded: list[str] = []
    join_next = negate_next = and_next = after_excluded = False
    said = _words(words) if isinstance(words, str) else list(words)
    for quoted in join_tags(said, is_tag) if is_tag is not None else said:
        word = unquoted(quoted)
        if not word:
            continue
        if "(" in word or ")" in word:  # searched as tags, they matched nothing, silently
            raise QueryError(f"{word}: no parentheses; OR binds first: `kick|snare dark` is (kick or snare) and dark")
        if word == "-":
            raise QueryError("'-' alone: write it against the tag to leave out (`-snare`)")
        if word.upper() == "OR" or set(word) == {"|"}:
            if not groups or join_next or negate_next or and_next:
                raise QueryError("OR needs a tag on each side")
            if after_excluded:  # `kick -snare OR hihat` is no OR of kick and hihat either
                raise QueryError("OR needs a tag on each side, not an excluded one")
            join_next = True
            continue
        if word.upper() == "AND":  # what a word already means: said, it must stand between two
            if not (groups or excluded) or join_next or negate_next or and_next:
                raise QueryError("AND needs a tag on each side")
            and_next = True
            continue
        if word.upper() == "NOT":
            if negate_next:
                raise QueryError("NOT NOT: say NOT once, before the tag to leave out")
            negate_next = True
            continue
        and_next = False
        if negate_next or (word.startswith("-") and len(word) > 1):
            if join_next:  # `kick OR -snare hihat` is no OR of kick and hihat
                raise QueryError("OR needs a tag on each side, not an excluded one")
            tag = word[0 if negate_next else 1 :]
            if tag.startswith("-") and negate_next:
                raise QueryError(f"NOT {word}: NOT and '-' both leave a tag out; use one of them")
            if tag.startswith("-"):  # `--kick` left out a tag "-kick" that none is: every file matched
                raise QueryError(f"{word}: one '-' leaves a tag out ({word[1:]})")
            if "|" in tag:
                raise QueryError(f"{word}: leave tags out one at a time ({' '.join('-' + t for t in tag.split('|'))})")
            excluded.append(tag_key(unquoted(tag)))
            negate_next, after_excluded = False, True
            continue
        after_excluded = False
        alternatives = [tag_key(unquoted(w)) for w in word.split("|") if unquoted(w)]
        if join_next or word.startswith("|"):
            if not groups:
                raise QueryError("OR needs a tag on each side")
            groups[-1].extend(alternatives)
        else:
            groups.append(alternatives)
        join_next = word.endswith("|")
    if join_next:
        raise QueryError("OR needs a tag on each side")
    if negate_next:
        raise QueryError("NOT needs a tag after it")
    if and_next:
        raise QueryError("AND needs a tag on each side")
    return groups, excluded


def synonyms(home_dir: Path | None) -> Synonyms:
    """The home's table of spellings (`vibrary synonyms`), the built-in one when the user's cannot be read (said:
    a damaged file's aliases found nothing, and `search` said only that no model tags them)."""
    try:
        return Synonyms.load(home_dir)
    except (OSError, ValueError) as e:
        logging.getLogger(__name__).warning(
            "vibrary: your synonyms cannot be read (%s): the built-in ones are used; `vibrary synonyms list` says more",
            e,
        )
        return Synonyms.load(None)


_JOINS = re.compile(r"[\s_-]+")  # what a tag's words are joined by: spaces, underscores, hyphens


@functools.lru_cache(maxsize=4096)
def _compact(text: str) -> str:
    """A tag's letters, however its words are joined: `gritty sound`, gritty-sound, gritty_sound and grittysound
    alike, lofi808 and lofi-808 (nothing else is dropped: c# is no c)."""
    return _JOINS.sub("", tag_key(text))


def _forms(word: str) -> set[str]:
    """The compact tags a word may spell: itself, its singular, its plural. Plurals of words of three letters
    or more only, and -es only after the letters that take it (as, des and tomes are no plurals of a, d, tom;
    bras none of brass)."""
    c = _compact(word)
    forms = {c} if c else set()
    if len(c) >= 3:
        if c.endswith("es") and c[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
            forms.add(c[:-2])
        elif c.endswith("s") and not c.endswith("ss"):
            forms.add(c[:-1])
        if not c.endswith("s"):
            forms.add(c + "s")
    return forms


def joined_as(known: Collection[str], table: Synonyms | None = None) -> Callable[[str], bool]:
    """Whether words are one of these tags, however joined: for `join_tags`, so that `search gritty sound`
    finds a tag gritty-sound, as a rename or a label of the API spells one, in the CLI, the tray and
    `Client.search` alike; or, given the table, one of the user's own aliases of words (`synonyms add "big
    room" kick`: `search big room` was big AND room, where "hi hat" was found unquoted), however joined too
    (big-room), unless each of its words is a tag (`dark kick`: `search dark kick` stays dark AND kick). Not the
    built-in ones: `search bass synth` is bass AND synth, not the alias of the bass it is to the table."""
    spelled = {_compact(t) for t in known}
    mine = {
        _compact(alias)
        for alias, _, builtin in (table.pairs() if table is not None else [])
        if not builtin and len(words := _JOINS.split(alias.strip())) > 1 and not all(w in known for w in words)
    }
    return lambda text: not _forms(text).isdisjoint(spelled) or _compact(text) in mine


def spelled_as(word: str, known: set[str], table: Synonyms | None) -> str | None:
    """The tag among `known` (the active models') that a word no model tags spells or is an alias of (`hh`,
    `BD`, `hi hats`): `search hh` said "no active model tags 'hh'" of what `synonyms list` calls hihat. Also a
    tag of the same words otherwise joined or a plural of it (`gritty sound` of a tag gritty-sound, `leads` of
    lead, which the table reads as a synth), and the one tag of the models
    that is an alias of the table's tag the word is (`clean`, `distortion`: a model's dry, distorted), where the
    search found nothing and advised clap; not a word the table reads as another's (lead and pad are both
    synth to it: `lead` found pads), nor a tag of several the models have (`percussion` was conga). `table`
    None: the words alone (Client.search, which leaves synonyms to its caller)."""
    if word in known:
        return None
    tag = table.tag_of(word) if table is not None else None
    if tag in known:  # (before the words: the user's `synonyms add string guitar` was searched as strings)
        return tag
    forms = _forms(word)
    same = sorted(k for k in known if _compact(k) in forms)
    if same or tag is None or table is None:
        return same[0] if same else None
    if tag != tag_key(word):  # an alias of a tag no model has: the models' aliases of it are no spelling of it
        return None
    kin = [k for k in sorted(known) if table.tag_of(k) == tag]
    return kin[0] if len(kin) == 1 else None


def respell(
    groups: list[list[str]], excluded: list[str], known: set[str], table: Synonyms | None
) -> tuple[list[list[str]], list[str], dict[str, str]]:
    """The query with each such word as its tag, and {word: tag} of those respelled."""
    said = {w: t for w in {*excluded, *(w for g in groups for w in g)} if (t := spelled_as(w, known, table))}
    return [[said.get(w, w) for w in g] for g in groups], [said.get(w, w) for w in excluded], said


def unknown_tags(known: set[str], groups: list[list[str]], excluded: list[str], model: str, inactive: str = "") -> str:
    """Words no active model tags (a typo, or an inactive model's word), said whatever was found: a typo in
    an OR arm (`kick OR kikc`) or an excluded word (`kick -m`) changed nothing, silently. The active models'
    classes answer it from their metadata (`known`); counting the tags in use reads the whole index.
    `inactive`: what to say of a --model that is installed and not active."""
    # (a word excluded is said as the tag it names: "no tag '-trashy'" of `NOT trashy`, whose tag is trashy)
    unknown = list(dict.fromkeys(w for w in [*(w for g in groups for w in g), *excluded] if w not in known))
    if inactive:  # it said "model fx has no tag 'dry'" of a model whose tag dry is
        return f": {inactive}"
    if not unknown:
        return ""
    close = {w: difflib.get_close_matches(w, known, n=1) for w in unknown}
    said = ", ".join(f"{w!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for w, m in close.items())
    who = f"model {model} has no tag" if model else "no active model tags"  # `--model mine kick`: demo has it
    return f": {who} {said}; `vibrary models list` shows their tags"
