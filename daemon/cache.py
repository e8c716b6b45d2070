"""Content-addressed spectrogram cache: a new model re-tags the library without decoding audio again.

Keyed by (content hash, spectrogram parameters, FEATURES_VERSION), so a moved or duplicated file hits the
cache and a model trained on other parameters never receives the wrong features. Entries are the 8-bit codes of
`spectrogram.quantize`, zlib-compressed (zero-padded one-shots shrink a lot), in their own SQLite file so
that cache traffic never contends with the index. The least recently written entries go first when the
cache outgrows its budget.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .index import read_only_connection
from .spectrogram import SpectrogramParams, dequantize, quantize

log = logging.getLogger(__name__)

# A file's spectrogram depends on the decoder and the log-mel code as well as on the parameters: after a fix
# to either (stop 22's: inf samples, an inverted channel, opening silence; stop 25's: the first sound after
# a silent opening; stop 42's: the silence before a first sound, whatever its length) a new model must not
# re-tag the library from spectrograms computed before it. Part of every key: bump it with any change to what
# decode() or log_mel() return, and earlier entries are misses (decoded again, and evicted in time).
FEATURES_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spectra (
    key BLOB PRIMARY KEY,
    data BLOB NOT NULL,
    dtype TEXT NOT NULL,
    stored REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spectra_age ON spectra(stored);
"""


def _compress(data: bytes) -> bytes:
    """zlib's run-length strategy: the codes hold long runs of one value (the -top_db floor, the zero
    padding), and RLE finds them in 80 % of level 1's time for a 5 % smaller entry (plain zlib to read)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return packer.compress(data) + packer.flush()


class SpectrogramCache:
    def __init__(self, path: Path | str, max_bytes: int) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._lock = threading.Lock()
        self._said_damaged = False
        try:
            self._size = self._open()
        except sqlite3.OperationalError:
            raise  # locked or unwritable: the file may be fine, so it is left alone
        except sqlite3.DatabaseError as e:  # a cache is only a cache: start an empty one
            self.close()
            damaged = Path(f"{self.path}.damaged")
            Path(self.path).replace(damaged)
            for suffix in ("-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            log.warning("spectrogram cache %s is damaged (%s): moved to %s, starting an empty one", path, e, damaged)
            self._size = self._open()

    def close(self) -> None:
        """Close this thread's connection (each thread has its own)."""
        c = getattr(self._local, "conn", None)
        self._local.conn = None
        if c is not None:
            c.close()

    def _open(self) -> int:
        c = self._conn()
        c.executescript(_SCHEMA)
        return int(c.execute("SELECT coalesce(sum(length(data)), 0) FROM spectra").fetchone()[0])

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
        return c

    @staticmethod
    def key(content_hash: bytes, params: SpectrogramParams) -> bytes:
        return content_hash + bytes.fromhex(params.key) + bytes([FEATURES_VERSION])

    def get(self, content_hash: bytes, params: SpectrogramParams) -> np.ndarray | None:
        try:
            row = (
                self._conn()
                .execute("SELECT data, dtype FROM spectra WHERE key = ?", (self.key(content_hash, params),))
                .fetchone()
            )
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:  # pages damaged under a file that opened: a miss, said once a run
            if not self._said_damaged:
                self._said_damaged = True
                log.error("spectrogram cache %s is damaged (%s): delete it while the daemon is stopped", self.path, e)
            return None
        if row is None:
            return None
        try:
            codes = np.frombuffer(zlib.decompress(row[0]), dtype=row[1]).reshape(params.shape)
        except (zlib.error, ValueError, TypeError) as e:  # a damaged entry is a miss: the audio is decoded again
            log.warning("spectrogram cache entry damaged (%s); computing it again", e)
            with self._lock, contextlib.suppress(sqlite3.Error):
                cur = self._conn().execute("DELETE FROM spectra WHERE key = ?", (self.key(content_hash, params),))
                self._size -= len(row[0]) if cur.rowcount else 0
            return None
        return dequantize(codes, params)

    def put_many(self, entries: list[tuple[bytes, SpectrogramParams, np.ndarray]]) -> None:
        """Store (hash, params, log-mel) triples in one transaction, then evict past the budget."""
        if not entries:
            return
        rows = []
        for content_hash, params, spec in entries:
            codes = quantize(spec, params)
            rows.append((self.key(content_hash, params), _compress(codes.tobytes()), codes.dtype.str, time.time()))
        c = self._conn()
        with self._lock:
            with self._transaction(c):
                for row in rows:  # a key already there holds the same spectrogram: counted once
                    if c.execute("INSERT OR IGNORE INTO spectra VALUES (?, ?, ?, ?)", row).rowcount:
                        self._size += len(row[1])
            if self._size > self.max_bytes:
                self._evict(c)

    def forget(self, content_hashes: list[bytes]) -> int:
        """Drop every spectrogram of these contents (forgotten by the index: no file has had them for weeks),
        whatever their parameters; returns the bytes freed. Left, they would outlive the library's files and
        push out spectrograms still of use."""
        c = self._conn()
        freed = 0
        for start in range(0, len(content_hashes), 256):
            with self._lock, self._transaction(c):
                for h in content_hashes[start : start + 256]:  # a key is the hash, then parameters and version
                    gone = c.execute(
                        "DELETE FROM spectra WHERE key BETWEEN ? AND ? RETURNING length(data)", (h, h + b"\xff" * 16)
                    ).fetchall()
                    n = sum(n for (n,) in gone)
                    self._size -= n
                    freed += n
        return freed

    def opening_silent(self, params: Iterable[SpectrogramParams], before: int) -> set[bytes]:  # (1: unversioned only)
        """The contents whose spectrogram, of one of these parameter sets and as a FEATURES_VERSION before `before`
        (or a release before there was one) computed it, opens with a silent frame: a sound after 25 ms or more of
        silence, which decode() now reads from its first sound (stop 42). Their tags were the old reading's, a note
        and its pre-roll heard as silence and a click; these spectrograms are misses now, but they tell which files
        to read again without decoding a library. Read a page of keys at a time, each page a read of its own."""
        kinds = list(params)
        suffixes = {bytes.fromhex(p.key) + bytes([v]): p for p in kinds for v in range(1, before)}
        # and a release's from before FEATURES_VERSION, whose keys had none: its files were left with their tags
        suffixes |= {bytes.fromhex(p.key): p for p in kinds}
        found: set[bytes] = set()
        last = b""
        while suffixes:
            rows = (
                self._conn()
                .execute("SELECT key, data, dtype FROM spectra WHERE key > ? ORDER BY key LIMIT 512", (last,))
                .fetchall()
            )
            if not rows:
                break
            last = rows[-1][0]
            for key, data, dtype in rows:
                suffix = next((s for s in suffixes if key.endswith(s)), None)
                if suffix is None:
                    continue
                p = suffixes[suffix]
                try:
                    spec = dequantize(np.frombuffer(zlib.decompress(data), dtype=dtype).reshape(p.shape), p)
                except (zlib.error, ValueError, TypeError):
                    continue  # (a damaged entry says nothing of its file)
                floor = spec.min()
                if spec[..., 0].max() <= floor < spec.max():
                    found.add(key[: -len(suffix)])
        return found

    def _evict(self, c: sqlite3.Connection) -> None:
        """The oldest first, a page at a time: reading every key of a 2 GB cache (700,000) held up the
        inference thread, which stores its batches here, for as long as that took."""
        target = int(self.max_bytes * 0.9)
        with self._transaction(c):
            while self._size > target:
                freed = c.execute(
                    """DELETE FROM spectra WHERE key IN (SELECT key FROM spectra ORDER BY stored LIMIT 256)
                       RETURNING length(data)"""
                ).fetchall()
                if not freed:
                    break
                self._size -= sum(n for (n,) in freed)

    @contextlib.contextmanager
    def _transaction(self, c: sqlite3.Connection) -> Iterator[None]:
        """A write that fails (a full disk) is rolled back: left open, it would hold the write lock and
        stall every other writer; the size is counted again, as the rollback undid part of it."""
        try:
            c.execute("BEGIN IMMEDIATE")
            yield
        except BaseException as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            self._size = int(c.execute("SELECT coalesce(sum(length(data)), 0) FROM spectra").fetchone()[0])
            if isinstance(e, sqlite3.Error) and read_only_connection(e):
                self.close()  # (opened during a read-only spell: reopened at the next write)
            raise
        c.execute("COMMIT")

    @property
    def size_bytes(self) -> int:
        return self._size
