"""Shards: what leaves the machine must round-trip exactly, shrink, and stay readable across format changes."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from vibrary.daemon import shards
from vibrary.daemon.spectrogram import SpectrogramParams, log_mel, quantize

from tests.synth import tone

P = SpectrogramParams()


def one_shots(n: int) -> np.ndarray:
    """Spectrogram codes of decaying tones of 0.2–1.5 s, zero padded to the clip length as the daemon does."""
    codes = []
    for i in range(n):
        seconds = 0.2 + 1.3 * i / max(1, n - 1)
        audio = tone(110.0 * (1 + i % 5), seconds)[:, 0]
        audio = audio * np.exp(-3 * np.linspace(0, seconds, audio.size))
        padded = np.zeros((1, P.n_samples), np.float32)
        padded[0, : audio.size] = audio
        codes.append(quantize(log_mel(padded, P), P))
    return np.stack(codes)


def test_shards_round_trip_exactly_and_beat_deflate() -> None:
    codes = one_shots(12)
    labels = np.arange(12) % 3
    groups = [f"g{i % 4}" for i in range(12)]
    blob = shards.pack(codes, labels, groups)
    got_codes, got_labels, got_groups = shards.unpack(blob, P, 3)
    assert np.array_equal(got_codes, codes)
    assert np.array_equal(got_labels, labels)
    assert list(got_groups) == groups
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
    old = io.BytesIO()
    np.savez_compressed(old, codes=codes, labels=labels.astype(np.int16), groups=np.array(groups, dtype="U16"))
    assert len(blob) < 0.9 * len(old.getvalue())


def test_shards_written_before_lzma_still_load() -> None:
    """Datasets built by earlier versions (np.savez_compressed, deflate) must keep training."""
    codes = one_shots(4)
    old = io.BytesIO()
    np.savez_compressed(old, codes=codes, labels=np.array([0, 1, 0, 1], np.int16), groups=np.array(["a"] * 4, "U16"))
    got_codes, got_labels, _ = shards.unpack(old.getvalue(), P, 2)
    assert np.array_equal(got_codes, codes)
    assert got_labels.tolist() == [0, 1, 0, 1]


def test_a_shard_that_would_unpack_to_more_than_a_shard_holds_is_refused_unread() -> None:
    """Zeros compress thousands of times over: a few kB could claim gigabytes and get the trainer killed
    (and, its job resumed at every start, killed again). The sizes the zip claims are checked first."""
    from vibrary.daemon.shards import SHARD_CLIPS

    n = SHARD_CLIPS * 8
    bomb = shards.pack(np.zeros((n, *P.shape), np.uint8), np.zeros(n, np.int64), ["g"] * n)
    assert len(bomb) < 100_000
    with pytest.raises(shards.ShardError, match=f"more than {SHARD_CLIPS} clips"):
        shards.unpack(bomb, P, 2)


def test_a_dataset_whose_class_names_a_model_may_not_have_opens_but_does_not_train() -> None:
    """Names the daemon refuses a model for (a case twin, a search word, a control character) are said before a
    training, not after it; a dataset made before those rules still opens, to be mended by a rename or a drop."""
    params = SpectrogramParams()
    codes = np.zeros((4, *params.shape), np.uint8)
    for classes, said in (
        (["Kick", "kick"], "names 'kick' more than once"),
        (["or", "kick"], "read as search syntax"),
        (["kick", "hat\u200b"], "holds control characters"),
    ):
        manifest, _ = shards.write("old", classes, params, codes, np.array([0, 1, 0, 1]), ["a"] * 4)
        opened = shards.Manifest.from_json(manifest.to_json())  # (every command on a dataset loads it so)
        assert opened.classes == classes
        with pytest.raises(shards.ShardError, match=said):
            opened.check_classes()
    fine, _ = shards.write("new", ["hi hat", "Kick"], params, codes, np.array([0, 1, 0, 1]), ["a"] * 4)
    fine.check_classes()  # spaces and capitals are names a model may have
