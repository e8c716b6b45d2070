"""The local index: one SQLite file in WAL mode that is also the daemon's durable work queue.

Tags belong to *content* (a hash of the file's bytes), not to paths: a moved or duplicated file finds its
tags already there, and a kill -9 loses nothing because every file waits as a `pending` row until the
transaction that stores its tags commits. Each change of a file bumps its `gen`, and results are written
only if `gen` still matches, so a file rewritten while it was being read is simply read again.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .config import disk_trouble, tag_key

T = TypeVar("T")

# the reason a file waits for its watch folder (a drive unplugged while it waited to be read): pending for as long
# as it takes, and not one of the files retried after a passing error (`retrying`): `status --wait` took the
# files of a drive unplugged mid-indexing for ones about to move, and waited for ever
WATCH_GONE = "its watch folder is not there now (a drive unplugged?): read when it is back"
HIT_SCORE = 0.5  # by default a file "has" a tag when it is its model's best tag or scores at least this
# ...unless the model finds the file unfamiliar: then none of its tags is a hit. A familiar file's best tag
# always is, and that is how an unfamiliar one is told when read back (_with_tags): keep the two together.
ASKED_DUE = -1.0  # the due of the files a caller waits for: ahead of a re-tag of the library (due 0)
ANY_STORED_SCORE = 1e-9  # a min_score that counts every stored score: 0 counts the hits (HIT_SCORE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,     -- never reused: a worker's late result names (id, gen)
    path TEXT NOT NULL UNIQUE,
    dir TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT -1,
    mtime_ns INTEGER NOT NULL DEFAULT -1,
    inode INTEGER NOT NULL DEFAULT -1,       -- a name swapped with another's keeps size and mtime
    content_id INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | indexed | failed
    error TEXT,
    due REAL NOT NULL DEFAULT 0,              -- not read before this time: a copy may still be growing
    gen INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_work ON files(state, due);
CREATE INDEX IF NOT EXISTS files_dir ON files(dir);
CREATE INDEX IF NOT EXISTS files_content ON files(content_id);
CREATE INDEX IF NOT EXISTS files_inode ON files(inode);  -- the other names of a file with hard links
CREATE INDEX IF NOT EXISTS files_failed ON files(updated) WHERE state = 'failed';
CREATE INDEX IF NOT EXISTS files_retry ON files(due) WHERE state = 'pending' AND error IS NOT NULL;
CREATE INDEX IF NOT EXISTS files_retag ON files(due) WHERE state = 'pending' AND content_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS contents (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    unused_since REAL                         -- when no file had it any more (looked at hourly), else NULL
);
CREATE INDEX IF NOT EXISTS contents_unused ON contents(unused_since) WHERE unused_since IS NOT NULL;
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,     -- never reused: tags of a removed model must not pass to another
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    classes TEXT NOT NULL,
    spectrogram TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0,
    builtin INTEGER NOT NULL DEFAULT 0,
    installed REAL NOT NULL,
    activated REAL NOT NULL DEFAULT 0,        -- when it was last made active (0: never): whom a removal restores
    serving INTEGER NOT NULL DEFAULT 0,       -- whose tags searches read: the active version, or until it has
                                              -- tagged the library, the version active before it (hand_over)
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vocab (
    id INTEGER PRIMARY KEY,
    tag TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tags (
    content_id INTEGER NOT NULL,
    model_id INTEGER NOT NULL,
    tag_id INTEGER NOT NULL,
    score REAL NOT NULL,
    hit INTEGER NOT NULL,
    PRIMARY KEY (content_id, model_id, tag_id)
) WITHOUT ROWID;
-- one posting list per (tag, model), sorted by content: `hit` is in it only so that a search reads nothing
-- else (without it SQLite fetched every row from the table to re-check hit = 1: 20x slower scans)
DROP INDEX IF EXISTS tags_hit;
CREATE INDEX IF NOT EXISTS tags_hits ON tags(tag_id, model_id, content_id, hit) WHERE hit = 1;
CREATE INDEX IF NOT EXISTS tags_score ON tags(tag_id, score);
-- which (content, model) pairs have been computed, so a model adds nothing twice
CREATE TABLE IF NOT EXISTS tagged (
    content_id INTEGER NOT NULL,
    model_id INTEGER NOT NULL,
    PRIMARY KEY (content_id, model_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watches (
    path TEXT PRIMARY KEY,
    added REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    """One pending file as the workers see it."""

    id: int
    path: str
    gen: int
    size: int
    mtime_ns: int
    hash: bytes | None


@dataclass
class Result:
    """What a worker found out about a file: tags per model id, or an error."""

    job: Job
    size: int = -1
    mtime_ns: int = -1
    inode: int = -1
    hash: bytes | None = None
    links: int = 1
    tags: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    unfamiliar: set[int] = field(default_factory=set)  # models that find the file like none of their examples
    error: str | None = None
    # models that failed on it, where the others' tags are kept (`vibrary tag`: Pipeline fail_files False)
    model_errors: dict[int, str] = field(default_factory=dict)
    vanished: bool = False  # the file is gone: its row leaves the index
    # read as it was at its last reading (size, change time, content) and nothing computed: no news to announce
    # (a file copied in and tagged at once was read again for its copy's events, and said tagged twice)
    unchanged: bool = False
    # the error passes (no file handles left): the file stays pending, read again every RETRY_S for as long
    # as this many seconds since it was queued (it changed, or a model activated re-tags it); then it fails,
    # and said so
    retry_for: float = 0.0


@dataclass(frozen=True)
class ModelRow:
    id: int
    name: str
    version: int
    path: str
    sha256: str
    classes: tuple[str, ...]
    spectrogram: str
    active: bool
    builtin: bool
    activated: float = 0.0  # when it was last made active (0: never)
    installed: float = 0.0  # when it was installed (trained, for a version a training installed)
    serving: bool = False  # searches read its tags (Index.hand_over)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class FileTags:
    path: str
    state: str
    error: str | None
    tags: list[tuple[str, str, float]]  # (model, tag, score), best first
    unfamiliar: frozenset[str] = frozenset()  # models that find it like none of their examples (guesses)


# Errors of files that a model, not the file, failed: read again once the active models change
# (Index.requeue_model_failures), as the model may be the one deactivated or removed.
MODEL_FAILED = "model {ref} failed on it: "  # the pipeline: a model raised on the file, or gave NaN scores
NOT_STORED = "its tags could not be stored: "  # the daemon: the index refused what the models said
NOT_INDEXED = "not in the index"  # a path asked for that is there, but never read
NO_SUCH_PATH = "no such file or folder"  # a path asked for that is not there (nor was, when asked)

# PRAGMA user_version from which silent openings were read past (Index.forget_silent_once).
_SILENT_OPENINGS_READ = 1
# ... from which files longer than the hashed head were hashed again (Index.rehash_long_once).
_SILENT_HEADS_HASHED = 2
# ... from which every tag is stored as config.tag_key spells it (Index.spell_tags_once).
_TAGS_SPELLED = 3
# ... from which FFmpeg reads the codecs libsndfile refused (Index.read_unsupported_once).
_FFMPEG_READS = 4
# ... from which a model's guess for silence, stored by an older release, was read again (forget_unheard_once).
_UNHEARD_FORGOTTEN = 5
# ... from which files whose old spectrogram opened silent were read again (forget_late_starts_once); 6 until
# the spectrograms of a release from before FEATURES_VERSION were looked at too: an index at 6 looks again
_LATE_STARTS_READ = 7
UNCOMPRESSED = (".wav", ".wave", ".bwf", ".aif", ".aiff", ".aifc", ".w64", ".rf64", ".caf")

PARKED = 1e12  # the `due` of a file parked under a watch folder not there now (Index.park): due when it is back
RETRY_S = 60.0  # how long a file whose reading failed for a passing reason waits to be read again
RETRY_FOR_S = 3600.0  # ... and for how long after its change: an EIO or an ESTALE may never pass

# (path, dir, due, updated): a file to read once `due` has passed; a row already there is read again
_MARK_PENDING = """INSERT INTO files(path, dir, state, due, gen, updated) VALUES (?1, ?2, 'pending', ?3, 1, ?4)
    ON CONFLICT(path) DO UPDATE SET state = 'pending', error = NULL,
        due = excluded.due, gen = files.gen + 1, updated = excluded.updated"""


# Tags a removed model left behind (an older version wrote a batch in flight after the removal).
_ORPHANS = """DELETE FROM tags WHERE model_id NOT IN (SELECT id FROM models);
    DELETE FROM tagged WHERE model_id NOT IN (SELECT id FROM models);"""

FAILED = "failed"  # a file's state when its last reading failed: it has no tags to show (Index._with_tags)


_UNUSED = "NOT EXISTS (SELECT 1 FROM files f WHERE f.content_id = contents.id)"  # a content no file has now


def primary_code(e: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (SQLITE_READONLY 8, SQLITE_CORRUPT 11, SQLITE_FULL 13 …); 0 before
    Python 3.11, which gives the words only."""
    return getattr(e, "sqlite_errorcode", 0) & 0xFF


def read_only_connection(e: sqlite3.Error) -> bool:
    """Whether a write failed because its connection reads only: SQLite opens a database read-only while its file
    cannot be written (a sync or restore tool's moment of other permissions, `chmod a-w`), and that connection
    stays so when the file can be written again. Kept, it refused every write of its thread until a restart: new
    samples were never indexed. Closed, the next write opens it anew."""
    return primary_code(e) == 8 or "readonly database" in str(e)  # (SQLITE_READONLY: Python 3.10 names it not)


@contextlib.contextmanager
def _transaction(c: sqlite3.Connection) -> Iterator[None]:
    c.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if c.in_transaction:  # SQLite rolls back by itself on some errors (a full disk): keep that error
            c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")


def _add_column(c: sqlite3.Connection, table: str, column: str, then: str = "") -> bool:
    """A column an index made by an older version lacks; whether this call added it. `then`: a statement that
    fills it, in the same transaction (a crash between the two left the column unfilled for good)."""
    name = column.split()[0]
    if c.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() and not any(
        row[1] == name for row in c.execute(f"PRAGMA table_info({table})")
    ):
        try:
            with _transaction(c):
                c.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                if then:
                    c.execute(then)
            return True
        except sqlite3.OperationalError as e:  # another process opening the same old index added it meanwhile
            if "duplicate column name" not in str(e):  # (the daemon and a command at login: one said "damaged")
                raise
    return False


def _pages(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """500 at a time: SQLite takes only so many variables in one statement (32,766 on many builds, 999 on
    old ones), and a folder, a Tag call or a search can hold more."""
    for start in range(0, len(items), 500):
        yield items[start : start + 500]


def under(folder: str) -> tuple[str, str]:
    """Bounds of the paths strictly under `folder`: '/' sorts just before '0'."""
    base = folder.rstrip(os.sep)
    return base + os.sep, base + chr(ord(os.sep) + 1)


def _first_time(c: sqlite3.Connection, version: int) -> bool:
    """Whether a once-per-index step (PRAGMA user_version `version`) is still to be done; marked done as the
    caller's transaction commits (user_version is in the database's header, which the transaction writes)."""
    if int(c.execute("PRAGMA user_version").fetchone()[0]) >= version:
        return False
    c.execute(f"PRAGMA user_version = {int(version)}")
    return True


def within(path: str, folders: Iterable[str]) -> bool:
    """Whether path is one of the folders or under one: a prefix test alone would put `Drums2/` in `Drums`."""
    return any(path == f or path.startswith(under(f)[0]) for f in folders)


def _ids_never_reused(c: sqlite3.Connection, table: str, then: str = "") -> None:
    """Give an index made before the table's ids were AUTOINCREMENT its new table (rows copied, ids kept),
    then run `then`. A plain INTEGER PRIMARY KEY hands a deleted row's id to the next row added: a worker's
    late result for a deleted file, keyed by (id, gen), then removed or tagged the next file, and a model
    installed after one was removed took over the tags the removed one had left."""
    found = c.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if found is None or "AUTOINCREMENT" in found[0]:
        return
    start = SCHEMA.index(f"CREATE TABLE IF NOT EXISTS {table} (")
    create = SCHEMA[start : SCHEMA.index(");", start) + 2]
    columns = ", ".join(row[1] for row in c.execute(f"PRAGMA table_info({table})"))
    c.executescript(
        f"""BEGIN IMMEDIATE;
            ALTER TABLE {table} RENAME TO {table}_before_autoincrement;
            {create}
            INSERT INTO {table}({columns}) SELECT {columns} FROM {table}_before_autoincrement;
            DROP TABLE {table}_before_autoincrement;
            {then}
            COMMIT;"""
    )


class IndexDamaged(ValueError):
    """The index file cannot be used: said in one line with what to do, never as a traceback."""


def damaged(e: sqlite3.Error) -> bool:
    """Whether SQLite found the database file damaged (SQLITE_CORRUPT, SQLITE_NOTADB), not locked or full."""
    return primary_code(e) in (11, 26) or any(w in str(e) for w in ("malformed", "not a database"))


def damaged_said(path: str, e: sqlite3.Error) -> str:
    return (
        f"the index {path} is damaged ({e}): move it aside and start the daemon again, then "
        "`vibrary watch add` your folders again (their spectrograms are cached: nothing is decoded twice)"
    )


class Index:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._hits: dict[int, int] | None = None  # files per tag, see search._rarest_first
        try:
            self._open()
        except sqlite3.OperationalError as e:  # locked, read-only, a full disk, a folder that is not there
            why = disk_trouble(os.path.dirname(os.path.abspath(self.path))) or e  # ("disk I/O error": a full disk)
            raise IndexDamaged(f"cannot open the index {self.path}: {why}") from None
        except sqlite3.DatabaseError as e:
            raise IndexDamaged(damaged_said(self.path, e)) from None

    def _open(self) -> None:
        c = self.conn()
        upgrade = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'tags_hit'").fetchone()
        # columns first, then the tables made anew with them: a table made anew from SCHEMA has them already, so
        # their first values were never filled in (every `activated` 0: a removal restored the newest version)
        _add_column(c, "files", "inode INTEGER NOT NULL DEFAULT -1")  # -1: not known yet
        _add_column(c, "contents", "unused_since REAL")
        # the versions active now came last (a removal restored the newest)
        _add_column(
            c, "models", "activated REAL NOT NULL DEFAULT 0", "UPDATE models SET activated = installed WHERE active"
        )
        _add_column(c, "models", "serving INTEGER NOT NULL DEFAULT 0")
        _ids_never_reused(c, "files")
        _ids_never_reused(c, "models", then=_ORPHANS)
        c.executescript(SCHEMA)  # executescript runs its own transaction
        # an active version whose model has none serving serves (an index from before `serving`, however made),
        # and a version of a model none of whose versions is active does not (left so by an older release)
        unserved = "active AND name NOT IN (SELECT name FROM models WHERE serving)"
        off = "serving AND name NOT IN (SELECT name FROM models WHERE active)"
        never = "active AND activated = 0"  # an active version upgraded so (above) came last all the same
        if c.execute(f"SELECT 1 FROM models WHERE {unserved} OR {off} OR {never}").fetchone():  # (read-only homes)
            try:
                with c:
                    c.execute(f"UPDATE models SET serving = 1 WHERE {unserved}")
                    c.execute(f"UPDATE models SET serving = 0 WHERE {off}")
                    c.execute(f"UPDATE models SET activated = installed WHERE {never}")
            except sqlite3.OperationalError as e:  # a home read-only now (`models list` of it failed): mended
                if not read_only_connection(e):  # at the next open that can write
                    raise
        if upgrade:  # tags_hit gave way to tags_hits: without its statistics a path search walks every tag
            c.execute("ANALYZE tags")

    # -- connections ---------------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        """This thread's connection: SQLite connections must not be shared between threads."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA busy_timeout=60000")
            self._local.conn = c
        return c

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        c = self.conn()
        try:
            with _transaction(c):
                yield c
        except sqlite3.OperationalError as e:
            if read_only_connection(e):
                self.close()  # (reopened at the next write, which a read-only spell had failed for good)
            raise

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads of one state of the index (no write in between; none of its own either)."""
        c = self.conn()
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("COMMIT")

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # -- watch folders -------------------------------------------------------------------------------
    def add_watch(self, folder: str) -> None:
        with self.write() as c:
            c.execute("INSERT OR IGNORE INTO watches(path, added) VALUES (?, ?)", (folder, time.time()))

    def remove_watch(self, folder: str) -> list[str] | None:
        """Forget the folder and the files under it that no other watch folder covers: those files' paths,
        or None when it was no watch folder."""
        with self.write() as c:
            if c.execute("DELETE FROM watches WHERE path = ?", (folder,)).rowcount == 0:
                return None
            others = [r[0] for r in c.execute("SELECT path FROM watches")]
            lo, hi = under(folder)
            rows = c.execute("SELECT id, path FROM files WHERE path >= ? AND path < ?", (lo, hi)).fetchall()
            gone = [(i, p) for i, p in rows if not within(p, others)]
            c.executemany("DELETE FROM files WHERE id = ?", [(i,) for i, _ in gone])
        return [p for _, p in gone]

    def analyze(self) -> None:
        """Refresh SQLite's statistics: without them it guesses badly how selective a tag or a folder is,
        and walked the whole files table for a search."""
        self.conn().execute("ANALYZE")
        self._count_hits()

    def _count_hits(self) -> dict[int, int]:
        """Files per tag (any model), for ordering AND queries; refreshed with ANALYZE, so a little stale."""
        rows = self.conn().execute("SELECT tag_id, count(*) FROM tags WHERE hit = 1 GROUP BY tag_id")
        self._hits = {int(t): int(n) for t, n in rows}
        return self._hits

    def watches(self) -> list[str]:
        return [r[0] for r in self.conn().execute("SELECT path FROM watches ORDER BY path")]

    # -- files: what the watcher and the scan report ---------------------------------------------------
    def mark_pending(self, items: Iterable[tuple[str, float]]) -> int:
        """(path, due) pairs: new or changed files, to be read once `due` has passed."""
        rows = [(p, os.path.dirname(p), due, time.time()) for p, due in items]
        with self.write() as c:
            c.executemany(_MARK_PENDING, rows)
        return len(rows)

    def paths_with_inode(self, inode: int, but_content: bytes) -> list[str]:
        """The files with this inode number, on any drive, but those known to hold `but_content` already (each
        name of a file rewritten through one had the others read again, and each of those the others again)."""
        rows = self.conn().execute(
            """SELECT f.path FROM files f LEFT JOIN contents c ON c.id = f.content_id
               WHERE f.inode = ? AND (c.hash IS NULL OR c.hash != ?)""",
            (inode, but_content),
        )
        return [r[0] for r in rows]

    def mark_asked(self, items: Sequence[tuple[str, int, int]]) -> set[str]:
        """(path, size, mtime_ns; -1, -1 when it cannot be looked at) of files a caller waits for (Tag). Those
        new, changed since they were read, failed (a codec installed since) or not to be looked at are queued
        ahead of every file waiting, and those waiting already are moved ahead and read at once (a passing
        error forgotten): a re-tag of the whole library waits at due 0, and the ties went by row id, so a
        plugin's Tag of one new sample waited for all of it. Those read as they are now are left as they are:
        each was read again, and dropped from the index when the caller stopped waiting. Returns the paths
        that were not in the index (the ones to drop then)."""
        known: set[str] = set()
        for page in _pages([p for p, _, _ in items]):
            marks = ",".join("?" * len(page))
            known.update(r[0] for r in self.conn().execute(f"SELECT path FROM files WHERE path IN ({marks})", page))
        now = time.time()
        rows = [(p, os.path.dirname(p), ASKED_DUE, now, size, mtime) for p, size, mtime in items]
        with self.write() as c:
            c.executemany(
                f"""{_MARK_PENDING}
                   WHERE files.state != 'pending'
                     AND (?5 = -1 OR files.state = 'failed' OR files.size != ?5 OR files.mtime_ns != ?6)""",
                rows,
            )
            c.executemany(
                "UPDATE files SET due = ?2, error = NULL WHERE path = ?1 AND state = 'pending' AND due > ?2",
                [(p, ASKED_DUE) for p, *_ in items],
            )
        return {p for p, *_ in items if p not in known}

    def mark_found(self, items: Iterable[tuple[str, float, int, int, int]]) -> int:
        """(path, due, size, mtime_ns, inode) of files a scan found new or changed: marked as mark_pending
        does, unless the row has meanwhile become pending or been indexed as it is now (inode -1: not to be
        compared). A scan decides on rows it read a moment before, and during a copy the watcher's events
        mark the same files: a second mark bumped `gen` under a worker already reading the file, and the
        file was read twice."""
        rows = [(p, os.path.dirname(p), due, time.time(), size, mtime, inode) for p, due, size, mtime, inode in items]
        with self.write() as c:
            cur = c.executemany(
                f"""{_MARK_PENDING}
                   WHERE files.state != 'pending'
                     AND (files.size != ?5 OR files.mtime_ns != ?6 OR (?7 != -1 AND files.inode NOT IN (-1, ?7)))""",
                rows,
            )
            return cur.rowcount

    def set_inodes(self, items: Iterable[tuple[int, str]]) -> None:
        """(inode, path) of indexed files whose inode was not known (an index from before inodes were
        kept), so that a later swap is seen."""
        with self.write() as c:
            c.executemany("UPDATE files SET inode = ? WHERE path = ? AND state = 'indexed'", list(items))

    def outside_watches(self) -> list[tuple[str, str]]:
        """(path, state) of the files no watch holds: those tagged on demand (the Tag call). Read as the
        ranges of paths between the watches, from the path index: asked every minute, it read every row of a
        library of a million files to find the few."""
        held: list[tuple[str, str]] = []
        for lo, hi in sorted(under(w) for w in self.watches()):  # nested watches merged into one range
            if held and lo <= held[-1][1]:
                held[-1] = (held[-1][0], max(held[-1][1], hi))
            else:
                held.append((lo, hi))
        starts, ends = ["", *(hi for _, hi in held)], [*(lo for lo, _ in held), "\U0010ffff"]  # (past any path)
        rows: list[tuple[str, str]] = []
        for start, end in zip(starts, ends, strict=True):
            rows += self.conn().execute("SELECT path, state FROM files WHERE path >= ? AND path < ?", (start, end))
        return [(str(path), str(state)) for path, state in rows]

    def remove_paths(self, paths: Iterable[str]) -> list[str]:
        """Drop files (and, for folders, everything under them); returns the file paths dropped."""
        removed: list[str] = []
        with self.write() as c:
            for p in paths:
                if not p.strip(os.sep):  # "" or "/": under() of it is every path there is
                    raise ValueError(f"refusing to remove everything under {p!r}")
                lo, hi = under(p)
                hits = c.execute(
                    "DELETE FROM files WHERE path = ? OR (path >= ? AND path < ?) RETURNING path", (p, lo, hi)
                ).fetchall()
                removed.extend(r[0] for r in hits)
        return removed

    def park(self, folders: Sequence[str], now: float) -> int:
        """Pending files due under these folders (watch folders not there now) wait for them (due PARKED, until
        retry_now): a drive of 400,000 files unplugged as a model re-tagged the library was walked past at every
        busy round of the feeder (45 ms, against 0.1). Nothing else about them changes (no error: status would count
        them as retrying at every call), and they are written once, not again while they wait. How many."""
        sql = "UPDATE files SET due = ? WHERE state = 'pending' AND due <= ? AND path >= ? AND path < ?"
        with self.write() as c:
            return sum(c.execute(sql, (PARKED, now, *under(folder))).rowcount for folder in folders)

    def retry_now(self, folder: str) -> int:
        """Files under folder that wait to be read again after a passing error, or were parked: due now (their
        drive is back)."""
        lo, hi = under(folder)
        sql = """UPDATE files SET due = 0
                 WHERE state = 'pending' AND (error IS NOT NULL OR due >= ?) AND path >= ? AND path < ?"""
        with self.write() as c:
            return int(c.execute(sql, (PARKED, lo, hi)).rowcount)

    def unread(self, paths: Sequence[str]) -> list[str]:
        """Which of these files are pending and not waiting after a passing error: a Tag call's poll, which
        asked for every file's tags 50 times a second (2.7 s a time for 100,000 files)."""
        left: list[str] = []
        for page in _pages(paths):
            marks = ",".join("?" * len(page))
            sql = f"SELECT path FROM files WHERE state = 'pending' AND error IS NULL AND path IN ({marks})"
            left += [r[0] for r in self.conn().execute(sql, page)]
        return left

    def move(self, src: str, dst: str) -> list[tuple[str, str]]:
        """A file or folder renamed inside the library: paths change, content and tags stay. The new
        `gen` drops any result a worker is still computing under the old path. Each (old, new) path moved."""
        if not src or not dst:
            raise ValueError(f"a move needs two paths, not {src!r} → {dst!r}")  # '' would match every path
        with self.write() as c:
            moved = []
            if c.execute("SELECT 1 FROM files WHERE path = ?", (src,)).fetchone():
                c.execute("DELETE FROM files WHERE path = ?", (dst,))  # the file it replaced
                c.execute(
                    "UPDATE files SET path = ?, dir = ?, gen = gen + 1 WHERE path = ?", (dst, os.path.dirname(dst), src)
                )
                moved.append((src, dst))
            lo, hi = under(src)
            rows = c.execute("SELECT id, path FROM files WHERE path >= ? AND path < ?", (lo, hi)).fetchall()
            for file_id, path in rows:
                new = dst + path[len(src) :]
                c.execute("DELETE FROM files WHERE path = ?", (new,))
                c.execute(
                    "UPDATE files SET path = ?, dir = ?, gen = gen + 1 WHERE id = ?",
                    (new, os.path.dirname(new), file_id),
                )
                moved.append((path, new))
        return moved

    def files_in_dir(self, folder: str) -> dict[str, tuple[int, int, int, str]]:
        """path → (size, mtime_ns, inode, state) of the files the index holds in this folder."""
        rows = self.conn().execute("SELECT path, size, mtime_ns, inode, state FROM files WHERE dir = ?", (folder,))
        return {p: (s, m, i, st) for p, s, m, i, st in rows}

    def dirs_under(self, folder: str) -> list[str]:
        lo, hi = under(folder)
        rows = self.conn().execute(
            "SELECT DISTINCT dir FROM files WHERE dir = ? OR (dir >= ? AND dir < ?)", (folder, lo, hi)
        )
        return [r[0] for r in rows]

    # -- work queue ----------------------------------------------------------------------------------
    def due_jobs(self, limit: int, skip: set[int], now: float, hidden: Sequence[str] = ()) -> list[Job]:
        """`hidden`: folders whose files wait (a watch folder on a drive unplugged): read now, each would
        be found gone and leave the index, to be hashed again when the drive is back."""
        args: list[object] = [now]
        outside = "".join(f" AND {c}" for c in _outside(hidden, args))
        rows = self.conn().execute(
            f"""SELECT f.id, f.path, f.gen, f.size, f.mtime_ns, c.hash FROM files f
               LEFT JOIN contents c ON c.id = f.content_id
               WHERE f.state = 'pending' AND f.due <= ?{outside} ORDER BY f.due LIMIT ?""",
            (*args, limit + len(skip)),
        )
        jobs = [Job(*r) for r in rows if r[0] not in skip]
        return jobs[:limit]

    def next_due(self, after: float | None = None) -> float | None:
        """When the next pending file falls due; with `after`, the next one not yet due at that time (the
        feeder has just taken the due ones, and asking about them again had it polling every 5 ms)."""
        if after is None:
            row = self.conn().execute("SELECT min(due) FROM files WHERE state = 'pending'").fetchone()
        else:
            row = (
                self.conn()
                .execute("SELECT min(due) FROM files WHERE state = 'pending' AND due > ?", (after,))
                .fetchone()
            )
        return row[0]

    def models_done(self, content_hash: bytes) -> set[int]:
        rows = self.conn().execute(
            "SELECT t.model_id FROM tagged t JOIN contents c ON c.id = t.content_id WHERE c.hash = ?",
            (content_hash,),
        )
        return {r[0] for r in rows}

    def write_results(self, results: Sequence[Result], min_score_stored: float) -> list[Result]:
        """Store a batch in one transaction; returns the results that were current (not superseded)."""
        written: list[Result] = []
        with self.write() as c:
            models = {int(row[0]) for row in c.execute("SELECT id FROM models")}  # one removed meanwhile: none
            for r in results:
                if r.vanished:
                    if c.execute("DELETE FROM files WHERE id = ? AND gen = ?", (r.job.id, r.job.gen)).rowcount:
                        written.append(r)
                    continue
                if r.retry_for:  # the reason is kept for `vibrary tags`: pending, and why it waits
                    now = time.time()
                    sql = """UPDATE files SET due = ?, error = ?
                             WHERE id = ? AND gen = ? AND state = 'pending' AND updated > ?"""
                    if c.execute(sql, (now + RETRY_S, r.error, r.job.id, r.job.gen, now - r.retry_for)).rowcount:
                        written.append(r)
                        continue
                    r.error = f"{r.error} (tried for {r.retry_for / 60:g} min; read again when it changes)"  # given up
                    r.retry_for = 0.0
                content_id = self._content_id(c, r.hash) if r.hash is not None else None
                if content_id is not None:
                    tags = {model: ranked for model, ranked in r.tags.items() if model in models}
                    self._store_tags(c, content_id, tags, min_score_stored, r.unfamiliar)
                state, error = ("failed", r.error) if r.error else ("indexed", None)
                cur = c.execute(
                    """UPDATE files SET state = ?, error = ?, size = ?, mtime_ns = ?, inode = ?,
                           content_id = coalesce(?, content_id), updated = ?
                       WHERE id = ? AND gen = ?""",
                    (state, error, r.size, r.mtime_ns, r.inode, content_id, time.time(), r.job.id, r.job.gen),
                )
                if cur.rowcount:
                    written.append(r)
        return written

    def _content_id(self, c: sqlite3.Connection, content_hash: bytes) -> int:
        """(A content a file has again is in use from now: marked unused a month ago and back for less than
        the hour between two looks, it was forgotten at the next look after it went again.)"""
        c.execute("INSERT OR IGNORE INTO contents(hash) VALUES (?)", (content_hash,))
        c.execute(
            "UPDATE contents SET unused_since = NULL WHERE hash = ? AND unused_since IS NOT NULL", (content_hash,)
        )
        return int(c.execute("SELECT id FROM contents WHERE hash = ?", (content_hash,)).fetchone()[0])

    def _store_tags(
        self,
        c: sqlite3.Connection,
        content_id: int,
        tags: dict[int, list[tuple[str, float]]],
        floor: float,
        unfamiliar: set[int],
    ) -> None:
        """A file a model finds unfamiliar keeps that model's tags, none of them a hit: a model's best tag
        (or any of its tags) is otherwise a hit, which is what a search finds."""
        for model_id, ranked in tags.items():
            c.execute("DELETE FROM tags WHERE content_id = ? AND model_id = ?", (content_id, model_id))
            familiar = model_id not in unfamiliar
            rows = [
                # at least ANY_STORED_SCORE: the bottom of a search's range finds every score stored
                (
                    content_id,
                    model_id,
                    self._tag_id(c, tag),
                    max(score, ANY_STORED_SCORE),
                    int(familiar and (rank == 0 or score >= HIT_SCORE)),
                )
                for rank, (tag, score) in enumerate(ranked)
                if rank == 0 or score >= floor
            ]
            c.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?)", rows)
            c.execute("INSERT OR IGNORE INTO tagged VALUES (?, ?)", (content_id, model_id))

    def _tag_id(self, c: sqlite3.Connection, tag: str) -> int:
        c.execute("INSERT OR IGNORE INTO vocab(tag) VALUES (?)", (tag,))
        return int(c.execute("SELECT id FROM vocab WHERE tag = ?", (tag,)).fetchone()[0])

    # -- status --------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        rows = self.conn().execute("SELECT state, count(*) FROM files GROUP BY state")
        found = dict(rows.fetchall())
        return {s: int(found.get(s, 0)) for s in ("indexed", "pending", "failed")}

    def count_under(self, folders: Iterable[str]) -> int:
        """The files under these folders, each counted once (a folder inside another is in it)."""
        tops = [f for f in folders if not within(f, [other for other in folders if other != f])]
        sql = "SELECT count(*) FROM files WHERE path >= ? AND path < ?"
        return sum(int(self.conn().execute(sql, under(f)).fetchone()[0]) for f in tops)

    def retagging(self) -> int:
        """The pending files read before (a model activated, a file changed), which searches find by the tags
        they had ("indexed 72, pending 1456" of a library all searchable, in the minutes a new model took to
        tag it, read as a library not indexed yet)."""
        row = self.conn().execute(
            "SELECT count(*) FROM files INDEXED BY files_retag WHERE state = 'pending' AND content_id IS NOT NULL"
        )
        return int(row.fetchone()[0])

    def due_count(self, now: float) -> int:
        row = self.conn().execute("SELECT count(*) FROM files WHERE state = 'pending' AND due <= ?", (now,))
        return int(row.fetchone()[0])

    def retrying(self) -> tuple[int, str]:
        """How many pending files wait to be read again after a passing error, and the soonest one's reason:
        from a partial index as small as they are few, asked 4 times a second by each status follower."""
        row = (
            self.conn()
            .execute(
                """SELECT count(*), (SELECT error FROM files INDEXED BY files_retry WHERE state = 'pending'
                                   AND error IS NOT NULL AND error != ?1 ORDER BY due LIMIT 1)
               FROM files INDEXED BY files_retry WHERE state = 'pending' AND error IS NOT NULL AND error != ?1""",
                (WATCH_GONE,),
            )
            .fetchone()
        )
        return int(row[0]), row[1] or ""

    def failures(self, limit: int = 20) -> list[tuple[str, str]]:
        """The newest failures first, from a partial index that holds only failed files: instant on a huge,
        mostly healthy library, and free for every file that is tagged fine."""
        rows = self.conn().execute(
            """SELECT path, error FROM files INDEXED BY files_failed
               WHERE state = 'failed' ORDER BY updated DESC LIMIT ?""",
            (limit,),
        )
        return [(p, e) for p, e in rows]

    def failed_with(self, reason: str) -> list[str]:
        """The failed files whose error starts with `reason`, from the partial index of failed files."""
        rows = self.conn().execute(
            "SELECT path FROM files INDEXED BY files_failed WHERE state = 'failed' AND substr(error, 1, ?) = ?",
            (len(reason), reason),
        )
        return [p for (p,) in rows]

    # -- models --------------------------------------------------------------------------------------
    def add_model(
        self,
        name: str,
        path: str,
        sha256: str,
        classes: Sequence[str],
        spectrogram: str,
        builtin: bool,
        active: bool = False,
    ) -> ModelRow:
        """Register a new version of `name`. A number is never given twice, even after its version was
        removed: a script that names `NAME@3` must not get another model. `active` in the same transaction:
        a kill between the two left the new version installed and idle (the demo model of a first start for
        good, a home that has seen it keeping "the user's choice"). The same file installed under the name already
        is that version (in the transaction: two trainings following one job each installed its model, checked
        absent at once, as two versions of one file, and removing either took the file from the other)."""
        with self.write() as c:
            same = c.execute("SELECT id, version FROM models WHERE name = ? AND sha256 = ?", (name, sha256)).fetchone()
            if same is not None:
                if active:
                    _turn_on(c, name, same[0])
                return self.model(name, int(same[1]))
            version = c.execute(
                """SELECT max(coalesce((SELECT max(version) FROM models WHERE name = ?), 0),
                              coalesce((SELECT last FROM model_versions WHERE name = ?), 0)) + 1""",
                (name, name),
            )
            number = int(version.fetchone()[0])
            c.execute(
                "INSERT INTO model_versions VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET last = excluded.last",
                (name, number),
            )
            added = c.execute(
                """INSERT INTO models(name, version, path, sha256, classes, spectrogram, builtin, installed)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (name, number, path, sha256, json.dumps(list(classes)), spectrogram, int(builtin), time.time()),
            )
            if active:
                _turn_on(c, name, int(added.lastrowid or 0))
        return self.model(name, number)

    def models(self) -> list[ModelRow]:
        rows = self.conn().execute(
            """SELECT id, name, version, path, sha256, classes, spectrogram, active, builtin, activated, installed,
                      serving FROM models ORDER BY name, version"""
        )
        return [
            ModelRow(i, n, v, p, s, tuple(json.loads(cl)), sp, bool(a), bool(b), t, when, bool(on))
            for i, n, v, p, s, cl, sp, a, b, t, when, on in rows
        ]

    def model(self, name: str, version: int = 0, active_first: bool = False) -> ModelRow:
        """NAME@VERSION, or the newest version when version is 0. With active_first, the active one, else the
        one active last, else the newest: what "deactivate NAME" and "activate NAME" mean (a model turned off
        after a rollback came back on at the version rolled away from). KeyError when absent."""
        matching = [m for m in self.models() if m.name == name and (version == 0 or m.version == version)]
        if not matching:
            models = self.models()
            known = ", ".join(m.ref for m in models) or "none"  # by name and version: @2 before @10
            names = {m.name for m in models}  # (a version missing of a model there is not a mistyped name)
            near = difflib.get_close_matches(name, sorted(names), n=1) if name not in names else []
            meant = f" (did you mean {near[0]!r}?)" if near else ""  # (as a dataset's name or a tag is asked)
            raise KeyError(f"no model {name}{'@' + str(version) if version else ''}{meant}; installed: {known}")
        return max(matching, key=lambda m: (active_first and m.active, active_first and m.activated, m.version))

    def set_model_path(self, model: ModelRow, path: str) -> None:
        with self.write() as c:
            c.execute("UPDATE models SET path = ? WHERE id = ?", (path, model.id))

    def active_models(self) -> list[ModelRow]:
        return [m for m in self.models() if m.active]

    def serving_models(self) -> list[ModelRow]:
        """The versions whose tags searches, counts and GetTags read (hand_over)."""
        return [m for m in self.models() if m.serving]

    def tagging_models(self) -> list[ModelRow]:
        """The versions the daemon tags with: the active ones, and those standing in for one (hand_over), so that
        files new or changed meanwhile have the tags that searches read too."""
        return [m for m in self.models() if m.active or m.serving]

    def hand_over(self, followed: Collection[int], hidden: Sequence[str] = ()) -> list[ModelRow]:
        """Searches read a new active version's tags once it has tagged every file read before, and until then
        the tags of the version active before it: a training's new version left its tags out of every search
        until the re-tag reached each file (minutes on a big library, and for as long as indexing was paused),
        while the old version's tags stood in the index. Files under watch folders not there now (`hidden`) wait
        for their drive, not the hand-over. Only `followed` versions: those whose re-tag the daemon has queued
        (a version just activated by another command has no file waiting for it yet). The versions that took
        over."""
        took: list[ModelRow] = []
        for m in self.active_models():
            if m.serving or m.id not in followed:
                continue
            args: list[object] = [m.id]
            outside = "".join(f" AND {c}" for c in _outside(hidden, args))
            waiting = (
                self.conn()
                .execute(
                    f"""SELECT 1 FROM files f INDEXED BY files_retag WHERE f.state = 'pending'
                    AND f.content_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tagged t
                    WHERE t.content_id = f.content_id AND t.model_id = ?){outside} LIMIT 1""",
                    args,
                )
                .fetchone()
            )
            if waiting is None:
                with self.write() as c:  # (unless another command activated another version meanwhile)
                    done = c.execute(
                        """UPDATE models SET serving = (id = ?1) WHERE name = ?2
                           AND EXISTS (SELECT 1 FROM models WHERE id = ?1 AND active)""",
                        (m.id, m.name),
                    ).rowcount
                if done:
                    took.append(m)
        return took

    def set_active(self, model: ModelRow, active: bool) -> None:
        """Activating a version deactivates the model's other versions: one version per tag family. KeyError
        when the version was removed since it was read (another command's `models remove`): the activation
        said it was done, and its model was left with no version active."""
        with self.write() as c:
            was = c.execute("SELECT active FROM models WHERE id = ?", (model.id,)).fetchone()
            if was is None:
                raise KeyError(f"no model {model.ref}: removed meanwhile")
            if active:
                _turn_on(c, model.name, model.id)
            elif was[0]:  # its tags leave searches at once, and those of a version standing in for it
                c.execute("UPDATE models SET active = 0, serving = 0 WHERE name = ?", (model.name,))

    def remove_model(self, model: ModelRow) -> ModelRow | None:
        """Forget a version and its tags. When it was the active one, the version active before it takes its
        place (returned), as a rollback would, else the newest: removing a version never leaves a tag family
        silently without a model. (The newest alone put a version installed `--inactive`, staged, or of other
        tags, live in place of the one the user had before.)"""
        with self.write() as c:
            was = c.execute("SELECT active, serving FROM models WHERE id = ?", (model.id,)).fetchone()
            active, serving = was or (0, 0)
            c.execute("DELETE FROM tags WHERE model_id = ?", (model.id,))
            c.execute("DELETE FROM tagged WHERE model_id = ?", (model.id,))
            c.execute("DELETE FROM models WHERE id = ?", (model.id,))
            if not active:
                if serving:  # it stood in for the active version, which serves now, tagged so far as it is
                    c.execute("UPDATE models SET serving = 1 WHERE name = ? AND active", (model.name,))
                return None
            last = "SELECT id, version FROM models WHERE name = ? ORDER BY activated DESC, version DESC"
            row = c.execute(last, (model.name,)).fetchone()
            if row is None:
                return None
            _turn_on(c, model.name, row[0])
        return self.model(model.name, int(row[1]))

    def note_unused(self, now: float) -> None:
        """Contents no file has now (deleted or rewritten files left them, with their tags) are marked so since
        `now`, and those a file has again unmarked. Kept a while, so that a file that comes back (moved by a
        delete and a create, a drive mounted inside a watch folder plugged in again) gets its tags by its
        hash; never forgotten, they grew the index and every tag's posting list for good."""
        with self.write() as c:
            c.execute(f"UPDATE contents SET unused_since = ? WHERE unused_since IS NULL AND {_UNUSED}", (now,))
            c.execute(f"UPDATE contents SET unused_since = NULL WHERE unused_since IS NOT NULL AND NOT {_UNUSED}")

    def forget_unused(self, before: float, most: int) -> list[bytes]:
        """Forget, with their tags, at most `most` contents no file has had since before `before` (and none has
        now, checked again as each page goes); returns the hashes of those that went, whose cached
        spectrograms can go too."""
        rows = self.conn().execute(
            f"SELECT id FROM contents WHERE unused_since < ? AND {_UNUSED} LIMIT ?", (before, most)
        )
        forgotten: list[bytes] = []
        for page in _pages([int(r[0]) for r in rows]):
            with self.write() as c:
                marks = ",".join("?" * len(page))
                gone = c.execute(f"SELECT id, hash FROM contents WHERE id IN ({marks}) AND {_UNUSED}", page).fetchall()
                for table, column in (("tags", "content_id"), ("tagged", "content_id"), ("contents", "id")):
                    c.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i, _ in gone])
                forgotten += [bytes(h) for _, h in gone]
        return forgotten

    def any_pending(self, hidden: Sequence[str] = (), due_after: float | None = None) -> bool:
        """Whether a file waits to be read, but for those under `hidden` (watch folders not there now, whose
        files wait for them for as long as a drive stays unplugged); with `due_after`, only the files not due
        before then (settling, or to be read again after a passing error: few, where a drive's are many)."""
        args: list[object] = [] if due_after is None else [due_after, PARKED]
        later = "" if due_after is None else " AND f.due > ? AND f.due < ?"  # (parked: not due later, but when back)
        outside = "".join(f" AND {c}" for c in _outside(hidden, args))
        row = self.conn().execute(f"SELECT 1 FROM files f WHERE f.state = 'pending'{later}{outside} LIMIT 1", args)
        return row.fetchone() is not None

    def forget_silent_once(self) -> int:
        """Before stop 25 a file whose opening seconds were silent was computed as having no tags at all (a
        stem that starts late, a kick after 5 s of silence); decode() now reads on to the first sound. Once
        per index, such (content, model) pairs are forgotten, so that requeue_missing reads their files
        again. The daemon asks it at its start, holding the home: a command run beside an older daemon still
        running must not use it up while that daemon stores the old silence again."""
        with self.write() as c:
            if not _first_time(c, _SILENT_OPENINGS_READ):
                return 0
            forgotten = c.execute(
                """DELETE FROM tagged WHERE NOT EXISTS
                   (SELECT 1 FROM tags t WHERE t.content_id = tagged.content_id AND t.model_id = tagged.model_id)"""
            ).rowcount
            return forgotten

    def forget_late_starts_once(self, late: Callable[[bool], set[bytes]]) -> int:
        """Since stop 42 a file is read from its first sound, however late (a note bounced with its pre-roll was
        heard as silence and a click: a tom of a piano note); an index from before keeps those tags until the
        file changes. Once per index, the contents that `late` names (content hashes: the cache's old
        spectrograms that open silent, cache.opening_silent) are forgotten as tagged, so that requeue_missing
        reads their files again, their old tags found until the new ones replace them. Asked in the daemon's
        background (reading a full cache takes seconds). `late(versioned)`: False for an index that ran the step
        when it looked at versioned spectrograms only (user_version 6): their files were read again then."""
        done = int(self.conn().execute("PRAGMA user_version").fetchone()[0])
        if done >= _LATE_STARTS_READ:
            return 0
        hashes = sorted(late(done < _LATE_STARTS_READ - 1))  # (outside the write: read for seconds)
        with self.write() as c:
            if not _first_time(c, _LATE_STARTS_READ):
                return 0
            forgotten = 0
            for page in _pages(hashes):
                forgotten += c.execute(
                    f"""DELETE FROM tagged WHERE content_id IN
                        (SELECT id FROM contents WHERE hash IN ({",".join("?" * len(page))}))""",
                    page,
                ).rowcount
        return forgotten

    def forget_unheard_once(self, guess: Callable[[ModelRow], tuple[str, float] | None]) -> int:
        """An older release stored a silent file (digital silence, or silence the decoder reads past now; not a DC
        offset, whose spectrogram is no silent clip's) with each model's guess for silence (kick 0.24), which
        `vibrary search kick` found; it is stored with no tags now (spectrogram.heard_in), but only once read
        again. Once per index, the (content, model) pairs whose best tag is the model's guess for a silent clip
        (`guess`: its best tag and score, None when it cannot be run) are forgotten, so that requeue_missing reads
        their files again (from the cache, mostly; a sound that happened to score the same is only read again).
        The daemon asks it at its start."""
        c = self.conn()  # (before the models are run for their guesses: a home with no tags runs none)
        if int(c.execute("PRAGMA user_version").fetchone()[0]) >= _UNHEARD_FORGOTTEN:
            return 0
        none = c.execute("SELECT 1 FROM tags LIMIT 1").fetchone() is None
        guesses = {} if none else {row.id: said for row in self.models() if (said := guess(row)) is not None}
        forgotten = 0
        with self.write() as c:
            if not _first_time(c, _UNHEARD_FORGOTTEN):
                return 0
            for model_id, (tag, score) in guesses.items():
                contents = [
                    r[0]
                    for r in c.execute(
                        """SELECT t.content_id FROM tags t JOIN vocab v ON v.id = t.tag_id
                           WHERE t.model_id = ? AND v.tag = ? AND abs(t.score - ?) < 1e-5 AND t.score = (
                               SELECT max(score) FROM tags b WHERE b.content_id = t.content_id AND b.model_id = ?)""",
                        (model_id, tag_key(tag), score, model_id),
                    )
                ]
                for table in ("tags", "tagged"):
                    c.executemany(
                        f"DELETE FROM {table} WHERE content_id = ? AND model_id = ?", ((i, model_id) for i in contents)
                    )
                forgotten += len(contents)
        return forgotten

    def rehash_long_once(self, head_bytes: int) -> int:
        """Before stop 27 a file whose hashed head was all silence (a stem that starts after 20 s) was known
        by it alone: the stems of one song shared one content id, and one stem's tags. Once per index, the
        files longer than the head are read again (at the daemon's start, as forget_silent_once): an unchanged
        hash needs no decoding, a silent head's new one is tagged from its own sound (and one an older daemon
        hashed with blake2b is decoded again). Only uncompressed files: a compressed one's head holds minutes."""
        uncompressed = " OR ".join(f"lower(path) LIKE '%{ext}'" for ext in UNCOMPRESSED)
        with self.write() as c:
            if not _first_time(c, _SILENT_HEADS_HASHED):
                return 0
            requeued = c.execute(
                f"""UPDATE files SET state = 'pending', due = 0, gen = gen + 1, updated = ?
                    WHERE size > ? AND state = 'indexed' AND ({uncompressed})""",
                (time.time(), head_bytes),
            ).rowcount
            return int(requeued)

    def spell_tags_once(self) -> int:
        """Before stop 34 tags were compared by their case alone: a model whose class names spell é as e and
        an accent stored its tags so, and no search finds them since queries are spelled as tag_key spells
        them. Once per index (at the daemon's start, as forget_silent_once), every tag and every model's
        classes are stored so; two spellings of one tag become one. How many tags were spelled anew."""
        with self.write() as c:
            if not _first_time(c, _TAGS_SPELLED):
                return 0
            spelled = 0
            for tag_id, tag in c.execute("SELECT id, tag FROM vocab").fetchall():
                if (key := tag_key(tag)) == tag:
                    continue
                spelled += 1
                same = c.execute("SELECT id FROM vocab WHERE tag = ?", (key,)).fetchone()
                if same is None:
                    c.execute("UPDATE vocab SET tag = ? WHERE id = ?", (key, tag_id))
                    continue
                c.execute("UPDATE OR IGNORE tags SET tag_id = ? WHERE tag_id = ?", (same[0], tag_id))
                c.execute("DELETE FROM tags WHERE tag_id = ?", (tag_id,))
                c.execute("DELETE FROM vocab WHERE id = ?", (tag_id,))
            for model_id, classes in c.execute("SELECT id, classes FROM models").fetchall():
                if (keys := [tag_key(t) for t in json.loads(classes)]) != json.loads(classes):
                    c.execute("UPDATE models SET classes = ? WHERE id = ?", (json.dumps(keys), model_id))
            return spelled

    def read_unsupported_once(self, refusal: str) -> int:
        """An index of before FFmpeg decoded for libsndfile holds the files libsndfile refused as of an
        "unsupported encoding" (AAC or ALAC in an Apple Loop's .caf, a WAV or AIFF-C of an odd codec) as failed
        for good: a scan does not read an unchanged failed file again. FFmpeg reads many of them now: once per
        index (at the daemon's start, as forget_silent_once), they are read again. How many. `refusal`:
        libsndfile's words (decode.UNSUPPORTED_ENCODING), as the errors hold them."""
        with self.write() as c:
            if not _first_time(c, _FFMPEG_READS):
                return 0
            requeued = c.execute(
                """UPDATE files SET state = 'pending', error = NULL, due = 0, gen = gen + 1, updated = ?
                   WHERE state = 'failed' AND error LIKE ?""",
                (time.time(), f"%{refusal}%"),
            ).rowcount
            return int(requeued)

    def requeue_model_failures(self) -> int:
        """Files that failed because a model could not score them (its error says "model NAME@V failed on
        it", or their tags could not be stored) go back to pending: called when the active models change,
        since the model may be gone. Its files stayed failed, the other models' tags lost with them, until
        each file changed (a model that gave NaN scores failed a whole library)."""
        with self.write() as c:
            return c.execute(
                """UPDATE files SET state = 'pending', error = NULL, due = 0, gen = gen + 1, updated = ?
                   WHERE state = 'failed' AND (error LIKE ? OR error LIKE ?)""",
                (time.time(), MODEL_FAILED.format(ref="%") + "%", NOT_STORED + "%"),
            ).rowcount

    def requeue_missing(self, model_ids: Sequence[int]) -> int:
        """Indexed files whose content lacks tags from one of these models go back to pending. Pending
        files move to a new generation too: one a worker holds was read for the models active before,
        and its result, now stale, is dropped, so the file is read again for these."""
        if not model_ids:
            return 0
        marks = ",".join("?" * len(model_ids))
        with self.write() as c:
            c.execute("UPDATE files SET gen = gen + 1 WHERE state = 'pending'")
            cur = c.execute(
                f"""UPDATE files SET state = 'pending', due = 0, gen = gen + 1, updated = ? WHERE state = 'indexed'
                       AND (content_id IS NULL OR (SELECT count(*) FROM tagged t WHERE t.content_id = files.content_id
                                                   AND t.model_id IN ({marks})) < ?)""",
                (time.time(), *model_ids, len(model_ids)),
            )
            return cur.rowcount

    # -- queries -------------------------------------------------------------------------------------
    def file_tags(self, paths: Sequence[str]) -> Iterator[FileTags]:
        """What the index holds for these paths; a folder stands for everything under it. Each file once, as
        a Tag answers: a path given twice, or a file given beside its folder, is one answer."""
        model_ids = [m.id for m in self.serving_models()]
        answered: set[str] = set()
        for p in paths:
            lo, hi = under(p)
            rows = (
                self.conn()
                .execute(
                    """SELECT path, content_id, state, error FROM files
                   WHERE path = ? OR (path >= ? AND path < ?) ORDER BY path""",
                    (p, lo, hi),
                )
                .fetchall()
            )
            if not rows and p not in answered:
                yield FileTags(p, "unknown", NOT_INDEXED if os.path.lexists(p) else NO_SUCH_PATH, [])
            new = [r for r in rows if r[0] not in answered]
            answered.update([p, *(r[0] for r in new)])
            yield from self._with_tags(new, model_ids)

    def _with_tags(self, rows: Sequence[tuple], model_ids: Sequence[int]) -> Iterator[FileTags]:
        """Rows with their tags (those of `model_ids`: the serving models, a version standing in for its new one
        until that has re-tagged the library), looked up a page of rows at a time: SQLite takes only so many
        variables in one statement (32,766 on many builds), and a folder can hold more files than that. A file
        whose last reading failed has none to show; every other file shows the tags of the content it last had,
        best first, of a tie the one that hit first (as front ends tell a model's best tag: its first):
        one pending again (a model activated re-tags the library, a file touched or rewritten waits to be read)
        is found until its new tags replace the old, not missing from searches for as long as a re-tag takes."""
        for page in _pages(rows):
            content_ids = sorted({r[1] for r in page if r[1] is not None})
            by_content: dict[int, list[tuple[str, str, float]]] = {}
            hit_by: dict[int, set[str]] = {}  # a model none of whose tags is a hit found the file unfamiliar
            if content_ids and model_ids:
                sql = f"""SELECT t.content_id, m.name, v.tag, t.score, t.hit FROM tags t
                          JOIN vocab v ON v.id = t.tag_id JOIN models m ON m.id = t.model_id
                          WHERE t.content_id IN ({",".join("?" * len(content_ids))})
                            AND t.model_id IN ({",".join("?" * len(model_ids))})
                          ORDER BY t.score DESC, t.hit DESC"""
                for cid, model, tag, score, hit in self.conn().execute(sql, (*content_ids, *model_ids)):
                    by_content.setdefault(cid, []).append((model, tag, score))
                    if hit:
                        hit_by.setdefault(cid, set()).add(model)
            for r in page:
                path, content_id = r[0], r[1]
                state, error = r[2], r[3]
                tags = by_content.get(content_id, []) if state != FAILED else []
                unfamiliar = frozenset(m for m, _, _ in tags) - hit_by.get(content_id, set())
                yield FileTags(path, state, error, tags, unfamiliar)

    def tag_counts(self, model: str = "", hidden: Sequence[str] = ()) -> list[tuple[str, str, int]]:
        """(model, tag, files) for every tag that some indexed file has; `hidden` as in search.Query."""
        args: list[object] = [model, model]
        outside = "".join(f" AND {c}" for c in _outside(hidden, args))
        rows = self.conn().execute(
            f"""SELECT m.name, v.tag, count(*) FROM files f
               JOIN tags t ON t.content_id = f.content_id AND t.hit = 1
               JOIN models m ON m.id = t.model_id AND m.serving = 1
               JOIN vocab v ON v.id = t.tag_id
               WHERE f.state != 'failed' AND (? = '' OR m.name = ?){outside}
               GROUP BY m.name, v.tag ORDER BY count(*) DESC, v.tag""",
            args,
        )
        return [(m, t, int(n)) for m, t, n in rows]


def _turn_on(c: sqlite3.Connection, name: str, model_id: int) -> None:
    """Make this version the active one of its model (in the caller's transaction). A version that serves
    searches now (the one active before) goes on serving until this one has tagged the library (hand_over);
    with none serving, or no file to tag (a home that only trains: `models list` said the version before stood
    in for it, for good, with no daemon to hand over), it serves at once."""
    c.execute("UPDATE models SET active = (id = ?) WHERE name = ?", (model_id, name))
    c.execute("UPDATE models SET activated = ? WHERE id = ?", (time.time(), model_id))
    serving = c.execute("SELECT 1 FROM models WHERE name = ? AND serving", (name,)).fetchone() is not None
    if not serving or c.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None:
        c.execute("UPDATE models SET serving = (id = ?) WHERE name = ?", (model_id, name))


def _outside(folders: Sequence[str], args: list[object]) -> list[str]:
    """Conditions that leave out the files under these folders (their bounds appended to args)."""
    conditions = []
    for folder in folders:
        conditions.append("NOT (f.path >= ? AND f.path < ?)")
        args.extend(under(folder))
    return conditions
