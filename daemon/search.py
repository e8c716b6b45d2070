"""How a Query becomes rows: which plan reads the fewest index entries for it, and the SQL that plan runs.

Apart from index.py because the plans change for reasons of their own (a new index shape, a benchmark that
finds a cheaper walk) and are read, tested and timed on their own, while the index (the store and the work
queue) reads whole without them. The dependency runs one way: planning needs the index (its connection, the
files per tag it keeps fresh with ANALYZE, and `_with_tags`, `under`, `_outside`, `_pages`, which its own
reads share), and the index needs nothing of queries. Hence `search(index, query)` and not a delegating
`index.search(query)`: that one line would have index.py import this module back, a cycle.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from .config import tag_key
from .index import FAILED, FileTags, Index, _outside, _pages, under

# An AND of two posting lists is merged unless they hold more than this many times the shorter one's
# entries: a merge reads both lists, a probe (several times dearer per entry) only the shorter one.
MERGE_MAX_RATIO = 8

# A best-first search for N files walks its tag's files from the top score until it has checked this many
# times N of them; matches rarer than that are all found the usual way and sorted (_best_first).
RANK_WALK = 10

ROW = "f.path, f.content_id, f.state, f.error"  # a matching file's row, as Index._with_tags reads it


@dataclass(frozen=True)
class Query:
    all_of: Sequence[Sequence[str]] = ()  # AND of OR-groups
    none_of: Sequence[str] = ()
    min_score: float = 0.0  # 0: the default (best tag of each model, or score >= HIT_SCORE); ANY_STORED_SCORE: all
    path_prefix: str = ""
    model: str = ""
    limit: int = 0
    best_first: bool = False  # the surest matches first (_best_first; without a limit, all of them sorted)
    # folders whose files are left out: watch folders not there now (moved, unmounted), whose files stay
    # indexed under paths that cannot be opened (a moved pack, watched again where it is, came up twice)
    hidden: Sequence[str] = ()


def search(index: Index, q: Query, page: int = 200) -> Iterator[FileTags]:
    """Files matching the query, streamed a page at a time, in whatever order is cheapest; with
    `best_first`, the surest matches first (without a limit it was ignored, though the API said otherwise)."""
    models = [m for m in index.serving_models() if not q.model or m.name == q.model]
    if not models:
        return
    model_ids = [m.id for m in models]
    groups: list[list[int]] = []
    for words in filter(None, q.all_of):
        ids = [t for t in (_lookup_tag(index, w) for w in words) if t is not None]
        if not ids:
            return  # a tag nobody has: nothing can match
        groups.append(ids)
    excluded = [t for t in (_lookup_tag(index, x) for x in q.none_of) if t is not None]
    if q.best_first and groups:
        rows = (_best_first if q.limit > 0 else _all_sorted)(index, groups, excluded, model_ids, q)
        yield from index._with_tags(rows, model_ids)
        return
    for chunk in _matching(index, groups, excluded, model_ids, q, page):
        yield from index._with_tags(chunk, model_ids)


def _matching(
    index: Index, groups: list[list[int]], excluded: list[int], model_ids: list[int], q: Query, page: int = 200
) -> Iterator[list[tuple]]:
    """Pages of (path, content_id, state, error) rows of the matching files.

    No statement stays open between pages. Read as one left open, a stream held its SQLite snapshot for as
    long as its client took to read it (a plugin paging as the user scrolls, a stream nobody reads held by
    gRPC's flow control), and no checkpoint passes a reader's snapshot: under one such stream the WAL grew
    from 3.4 to 17 MB in five rounds of a re-tag. So the first page's ids are read (a LIMIT of its size: it
    comes as soon as it did, not once every match is known, half a second for 300,000), then, once it is out,
    the ids of the rest, whole (8 bytes a file); the rows of each page are a read of their own. A file changed
    between the reads shows as it is now, and one failed or gone since is left out."""
    first = replace(q, limit=min(q.limit, page) if q.limit else page)
    ids = array("q", (row[0] for row in _found(index, groups, excluded, model_ids, first, "f.id")))
    if len(ids) == first.limit and q.limit != first.limit:  # more to come: the rest, read once the first is out
        shown: set[str] = set()
        for rows in _rows(index, ids, page):
            shown.update(row[0] for row in rows)
            yield rows
        seen = set(ids)
        rest = (r[0] for r in _found(index, groups, excluded, model_ids, q, "f.id") if r[0] not in seen)
        # a file of the first page written again since has another id: left out by its path, and a limit's room
        # for it read past (the limit's last match went missing)
        left = q.limit - len(shown) if q.limit else None
        ids = array("q", itertools.islice(rest, None if left is None else left + len(shown)))
        for rows in _rows(index, ids, page):
            rows = [row for row in rows if row[0] not in shown][:left]
            if left is not None:
                left -= len(rows)
            if rows:
                yield rows
        return
    yield from _rows(index, ids, page)


def _rows(index: Index, ids: array, page: int) -> Iterator[list[tuple]]:
    """Pages of the rows of these files, each page a read of its own."""
    conn = index.conn()
    for start in range(0, len(ids), page):
        chunk = ids[start : start + page]
        sql = f"""SELECT path, content_id, state, error FROM files WHERE id IN ({",".join("?" * len(chunk))})
                  AND state != '{FAILED}' AND content_id IS NOT NULL"""
        rows = conn.execute(sql, chunk.tolist()).fetchall()
        if rows:
            yield rows


def _found(
    index: Index, groups: list[list[int]], excluded: list[int], model_ids: list[int], q: Query, columns: str = ROW
) -> Iterator[tuple]:
    """The matching files' `columns`, read by the cheapest plan, in one statement or in steps: for a caller
    that reads them all at once."""
    postings = _postings_to_merge(index, groups, model_ids) if q.min_score <= 0 and not q.path_prefix else None
    if postings == []:
        return  # an AND group whose tags no active model has given to any file
    if postings:
        yield from _merged(index, postings, excluded, model_ids, q, columns)
        return
    sql, args = _search_sql(_rarest_first(index, groups), excluded, model_ids, q, columns=columns)
    yield from index.conn().execute(sql, args)


def _best_first(
    index: Index, groups: list[list[int]], excluded: list[int], model_ids: list[int], q: Query
) -> list[tuple]:
    """The `q.limit` surest matches, by their best score among the first group's tags.

    The first group's files are walked down from the top score (the `tags_score` index) and checked
    against the rest of the query a page at a time: a few pages when most of them match. After
    RANK_WALK × limit files without enough matches, matches are rare: finding all of them the
    usual way and sorting them is cheaper than walking on; so it is from the start for a folder that
    holds no more files than that."""
    budget = RANK_WALK * q.limit
    if q.path_prefix and _files_under(index, q.path_prefix, budget + 1) <= budget:
        return _all_sorted(index, groups, excluded, model_ids, q)  # a folder this small: all of it
    walks = [_by_score(index, tag, model_ids, q.min_score) for tag in groups[0]]
    contents = (cid for _, cid in heapq.merge(*walks, key=lambda row: -row[0]))
    seen: set[int] = set()
    best: list[tuple] = []
    size = 64
    while len(best) < q.limit:
        if len(seen) >= budget:
            return _all_sorted(index, groups, excluded, model_ids, q)
        candidates = list(itertools.islice(contents, size))
        if not candidates:
            break
        batch = [cid for cid in dict.fromkeys(candidates) if cid not in seen]  # a content under two tags
        seen.update(batch)
        if batch:
            sql, args = _search_sql(groups[1:], excluded, model_ids, replace(q, limit=0), among=batch)
            place = {cid: n for n, cid in enumerate(batch)}
            best += sorted(index.conn().execute(sql, args), key=lambda row: (place[row[1]], row[0]))
        size = min(4096, size * 2)  # few matches among the candidates: bigger steps
    return best[: q.limit]


def _all_sorted(
    index: Index, groups: list[list[int]], excluded: list[int], model_ids: list[int], q: Query
) -> list[tuple]:
    found = list(_found(index, groups, excluded, model_ids, replace(q, limit=0)))
    scores = _lead_scores(index, groups[0], model_ids, sorted({row[1] for row in found}), q.min_score)
    return sorted(found, key=lambda row: (-scores.get(row[1], 0.0), row[0]))[: q.limit or None]


def _files_under(index: Index, folder: str, most: int) -> int:
    """How many files the index holds under the folder, counted up to `most`."""
    lo, hi = under(folder)
    sql = "SELECT count(*) FROM (SELECT 1 FROM files WHERE path >= ? AND path < ? LIMIT ?)"
    return int(index.conn().execute(sql, (lo, hi, most)).fetchone()[0])


def _by_score(index: Index, tag_id: int, model_ids: list[int], min_score: float) -> Iterator[tuple[float, int]]:
    """(score, content) of one tag's files, best first."""
    kept, score = _counted("", min_score)
    return index.conn().execute(
        f"""SELECT score, content_id FROM tags WHERE tag_id = ? AND model_id IN ({",".join("?" * len(model_ids))})
            AND {kept} ORDER BY score DESC""",
        (tag_id, *model_ids, *score),
    )


def _lead_scores(
    index: Index, tag_ids: list[int], model_ids: list[int], content_ids: list[int], min_score: float
) -> dict[int, float]:
    """Each content's best score among these tags, 500 contents a statement (SQLite's variable limit), of
    the rows that count as _by_score's do: a score stored and not counted (another model's guess) ranked a
    file first when a small folder or a long walk sorted them here, and not otherwise."""
    scores: dict[int, float] = {}
    kept, score = _counted("", min_score)
    for page in _pages(content_ids):
        rows = index.conn().execute(
            f"""SELECT content_id, max(score) FROM tags WHERE content_id IN ({",".join("?" * len(page))})
                AND tag_id IN ({",".join("?" * len(tag_ids))}) AND model_id IN ({",".join("?" * len(model_ids))})
                AND {kept} GROUP BY content_id""",
            (*page, *tag_ids, *model_ids, *score),
        )
        scores.update(rows)
    return scores


def _merged(
    index: Index,
    postings: list[tuple[int, int]],
    excluded: list[int],
    model_ids: list[int],
    q: Query,
    columns: str,
) -> Iterator[tuple]:
    """The `columns` of the files whose contents are in every posting list, in content order.

    SQLite merges the INTERSECT only as a statement of its own (in a subquery it builds a temporary
    B-tree of the whole first list instead), so contents come from that statement a few hundred at a
    time and their files from a second one.
    """
    arms = " INTERSECT ".join(
        "SELECT content_id FROM tags WHERE tag_id = ? AND model_id = ? AND hit = 1" for _ in postings
    )
    contents = index.conn().execute(f"{arms} ORDER BY 1", [x for posting in postings for x in posting])
    wanted, size = q.limit or None, max(64, q.limit)
    while wanted is None or wanted > 0:
        ids = [r[0] for r in contents.fetchmany(size)]
        if not ids:
            return
        size = min(4096, size * 2)  # few results per content so far: take bigger steps
        sql, args = _search_sql([], excluded, model_ids, replace(q, limit=wanted or 0), among=ids, columns=columns)
        rows = index.conn().execute(sql, args).fetchall()
        if wanted is not None:
            wanted -= len(rows)
        yield from rows


def _postings_to_merge(index: Index, groups: list[list[int]], model_ids: list[int]) -> list[tuple[int, int]] | None:
    """The (tag, model) posting lists to intersect by merging, one per AND group; None where probing
    is the better plan, and [] when some group has no files at all.

    The default plan reads the rarest group's files and probes each for the other groups: cheap when
    most of them match, but two tags of one softmax model seldom meet, so it probed thousands of
    files (a B-tree descent each) per match. Merging walks the sorted posting lists side by side
    instead, at a fraction of a probe's cost per entry; it loses only when one list is much longer
    than the other (it reads both to the end of the shorter), and needs each group to be a single
    list (one tag of one model): several lists would have to be merged and sorted first.
    """
    if len(groups) < 2:
        return None
    chosen: list[tuple[int, int]] = []
    for group in groups:
        lists = [(t, m) for t in group for m in model_ids if _has_hits(index, t, m)]
        if not lists:
            return []
        if len(lists) > 1:
            return None
        chosen.append(lists[0])
    hits = index._hits if index._hits is not None else index._count_hits()
    sizes = [hits.get(t, 0) for t, _ in chosen]
    if sum(sizes) > MERGE_MAX_RATIO * max(1, min(sizes)):
        return None
    return chosen


def _rarest_first(index: Index, groups: list[list[int]]) -> list[list[int]]:
    """An AND query is driven by its first group and probes the others: starting from the rarest
    group reads the fewest rows (two common tags that seldom meet cost 10× more the other way)."""
    if len(groups) < 2:
        return groups
    hits = index._hits if index._hits is not None else index._count_hits()
    return sorted(groups, key=lambda g: sum(hits.get(t, 0) for t in g))


def _has_hits(index: Index, tag_id: int, model_id: int) -> bool:
    row = index.conn().execute(
        "SELECT 1 FROM tags WHERE tag_id = ? AND model_id = ? AND hit = 1 LIMIT 1", (tag_id, model_id)
    )
    return row.fetchone() is not None


def _lookup_tag(index: Index, tag: str) -> int | None:
    row = index.conn().execute("SELECT id FROM vocab WHERE tag = ?", (tag_key(tag),)).fetchone()
    return None if row is None else int(row[0])


def _counted(prefix: str, min_score: float) -> tuple[str, list[object]]:
    """The condition on a tags row (its columns named with `prefix`) that counts for a search: with a score
    asked for, any stored score from it up; without, the tags that hit."""
    return (f"{prefix}score >= ?", [min_score]) if min_score > 0 else (f"{prefix}hit = 1", [])


def _search_sql(
    groups: list[list[int]],
    excluded: list[int],
    model_ids: list[int],
    q: Query,
    among: Sequence[int] = (),
    columns: str = ROW,
) -> tuple[str, list[object]]:
    """Drive the query from the first tag group's index, probe the others by primary key; or, given
    contents `among`, look only at their files and probe every group."""
    args: list[object] = []

    def match(alias: str, tag_ids: list[int], min_score: float = q.min_score) -> str:
        kept, score = _counted(f"{alias}.", min_score)
        args.extend([*tag_ids, *model_ids, *score])
        return (
            f"{alias}.tag_id IN ({','.join('?' * len(tag_ids))}) "
            f"AND {alias}.model_id IN ({','.join('?' * len(model_ids))}) AND {kept}"
        )

    where: list[str] = [f"f.state != '{FAILED}' AND f.content_id IS NOT NULL"]  # read, and not failed since
    if groups and not among:
        source, key = "tags t0 JOIN files f ON f.content_id = t0.content_id", "t0.content_id"
        where.append(match("t0", groups[0]))
        probed = groups[1:]  # probed on t0, before any files row is read
    else:
        source, key, probed = "files f", "f.content_id", groups
        if among:
            where.append(f"f.content_id IN ({','.join('?' * len(among))})")
            args.extend(among)
    for n, g in enumerate(probed, start=1):
        where.append(f"EXISTS (SELECT 1 FROM tags t{n} WHERE t{n}.content_id = {key} AND {match(f't{n}', g)})")
    if excluded:
        # a tag left out is one the file has, whatever the score asked of the others: with a threshold, a low one
        # left out nearly every file (0 counts every stored score) and lowering it took files away
        where.append(f"NOT EXISTS (SELECT 1 FROM tags tx WHERE tx.content_id = {key} AND {match('tx', excluded, 0)})")
    if q.path_prefix:
        lo, hi = under(q.path_prefix)
        where.append("f.path >= ? AND f.path < ?")
        args.extend([lo, hi])
    where.extend(_outside(q.hidden, args))
    sql = f"SELECT DISTINCT {columns} FROM {source} WHERE {' AND '.join(where)}"
    if q.limit > 0:
        sql += " LIMIT ?"
        args.append(q.limit)
    return sql, args
