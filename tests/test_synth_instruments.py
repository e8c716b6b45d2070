"""scripts/synth_instruments.py makes the same notes from the same seeds, each a usable clip of its class."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "synth_instruments.py"
_spec = importlib.util.spec_from_file_location("synth_instruments", _PATH)
assert _spec and _spec.loader
synth = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = synth  # (its dataclass looks its module up there)
_spec.loader.exec_module(synth)


@pytest.mark.parametrize("cls", synth.CLASSES)
def test_every_class_makes_a_finite_3_s_note_that_a_seed_repeats(cls: str) -> None:
    audio, made = synth.note(cls, 7)
    again, _ = synth.note(cls, 7)
    other, _ = synth.note(cls, 8)
    assert audio.shape == (synth.N,) and audio.dtype == np.float32 and np.all(np.isfinite(audio))
    assert np.array_equal(audio, again) and not np.array_equal(audio, other)
    assert 10 ** (-24.5 / 20) <= np.max(np.abs(audio)) <= 1.0  # peak-normalised to its drawn level
    low, high = synth.RANGE[cls]
    assert made["class"] == cls and low <= made["key"] <= high
    sound = np.flatnonzero(np.abs(audio) > 1e-3 * np.max(np.abs(audio)))
    assert sound[0] < synth.SR * 0.1  # the note starts at once (leading silence is the corpus's to add)


def test_the_classes_are_the_demo_models_melodic_ones() -> None:
    from vibrary.daemon.infer import Model
    from vibrary.daemon.registry import BUILTIN_DIR

    assert list(Model(str(BUILTIN_DIR / "demo.onnx")).info.classes)[6:] == synth.CLASSES


def test_a_share_of_the_chord_classes_play_chords_as_the_corpus_does() -> None:
    """Only in the corpus's chord classes, and about as often (30 %: 2-18 of 30 holds for 99.9 % of seeds)."""
    for cls in ("piano", "bass"):
        chords = sum(synth.plan(cls, seed).shape != (0,) for seed in range(30))
        assert (2 <= chords <= 18) if cls in synth.CHORD_CLASSES else chords == 0, (cls, chords)
