"""The spectrogram cache keeps a true count of its size, which decides when it evicts."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from vibrary.daemon import cache as cache_module
from vibrary.daemon.cache import SpectrogramCache
from vibrary.daemon.spectrogram import SpectrogramParams

P = SpectrogramParams()


def _spec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-P.top_db, 0, P.shape).astype(np.float32)


def _stored_bytes(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute("SELECT coalesce(sum(length(data)), 0) FROM spectra").fetchone()[0])


def test_the_same_spectrogram_stored_again_is_counted_once(tmp_path: Path) -> None:
    """Copies of one file decoded side by side store the same key twice; counting each store made the
    cache think itself full and evict everything."""
    cache = SpectrogramCache(tmp_path / "c.sqlite", 1 << 30)
    for _ in range(5):
        cache.put_many([(b"h" * 16, P, _spec(0)), (b"h" * 16, P, _spec(0))])
    assert cache.size_bytes == _stored_bytes(tmp_path / "c.sqlite") > 0
    assert cache.get(b"h" * 16, P) is not None


def test_forgotten_contents_lose_their_spectrograms_of_every_parameter_set_and_no_other(tmp_path: Path) -> None:
    """The index forgets contents no file has had for weeks; their spectrograms stayed until evicted, pushing
    out spectrograms still of use."""
    cache = SpectrogramCache(tmp_path / "c.sqlite", 1 << 30)
    other = SpectrogramParams(hop_length=1024)
    gone, kept, after = b"\x10" * 16, b"\x10" * 15 + b"\x11", b"\x0f" + b"\xff" * 15
    cache.put_many([(h, p, _spec(i)) for i, (h, p) in enumerate([(gone, P), (gone, other), (kept, P), (after, P)])])
    before = cache.size_bytes
    freed = cache.forget([gone, b"\x00" * 16])
    assert 0 < freed < before and cache.size_bytes == before - freed == _stored_bytes(tmp_path / "c.sqlite")
    assert cache.get(gone, P) is None and cache.get(gone, other) is None
    assert cache.get(kept, P) is not None and cache.get(after, P) is not None


def test_a_damaged_cache_file_is_set_aside_and_a_damaged_entry_is_a_miss(tmp_path: Path) -> None:
    """A cache is only a cache: damage costs a decode, never the daemon (it would not start) or a file
    (every file whose entry was cut short ended "failed")."""
    path = tmp_path / "c.sqlite"
    cache = SpectrogramCache(path, 1 << 30)
    cache.put_many([(b"a" * 16, P, _spec(0)), (b"b" * 16, P, _spec(1))])
    cache.close()
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute("UPDATE spectra SET data = substr(data, 1, 100) WHERE key = ?", (SpectrogramCache.key(b"a" * 16, P),))
        c.commit()
    cache.close()
    cache = SpectrogramCache(path, 1 << 30)
    assert cache.get(b"a" * 16, P) is None and cache.get(b"b" * 16, P) is not None
    assert cache.size_bytes == _stored_bytes(path)  # the damaged entry is gone, and counted as gone
    cache.close()  # the daemon stopped, then the file was damaged
    path.write_bytes(b"not a database at all" * 100)
    cache = SpectrogramCache(path, 1 << 30)
    assert cache.get(b"b" * 16, P) is None and cache.size_bytes == 0
    assert (tmp_path / "c.sqlite.damaged").read_bytes().startswith(b"not a database")
    cache.put_many([(b"c" * 16, P, _spec(2))])
    assert cache.get(b"c" * 16, P) is not None


def test_a_spectrogram_computed_by_an_earlier_decoder_is_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a fix to the decoder (stop 22's), a new model re-tagged the library from spectrograms of the
    unfixed one (silence stored as 0 dB, the loudest there is, among them): the features' version is part
    of the key."""
    cache = SpectrogramCache(tmp_path / "c.sqlite", 1 << 30)
    cache.put_many([(b"v" * 16, P, _spec(3))])
    assert cache.get(b"v" * 16, P) is not None
    monkeypatch.setattr(cache_module, "FEATURES_VERSION", cache_module.FEATURES_VERSION + 1)
    assert cache.get(b"v" * 16, P) is None
