"""The spectrogram cache keeps a true count of its size, which decides when it evicts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
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
