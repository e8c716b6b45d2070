"""scripts/build_corpus.py's plan: strummed guitar chords (--strum) as a guitar plays them, and nothing else
changed by the option, so the corpus without it stays the one the shipped model was trained on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(_SCRIPTS))  # build_corpus imports its neighbour sf2_samples
_spec = importlib.util.spec_from_file_location("build_corpus", _SCRIPTS / "build_corpus.py")
assert _spec and _spec.loader
build_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_corpus)


def _units() -> dict:
    """One OPL3 preset per class, as discover_units would list it (no soundfont is opened by plan)."""
    program = {"piano": 0, "guitar": 25, "organ": 16}
    return {
        cls: {"opl3": [{"kind": "sf", "sf": "OPL-3_FM_128M.sf2", "bank": 0, "program": p, "name": cls}]}
        for cls, p in program.items()
    }


def _plan(strum: bool) -> list[dict]:
    return build_corpus.plan(300, 1234, ["piano", "guitar", "organ"], _units(), lambda msg: None, strum=strum)


def test_guitar_voicings_are_barre_chords_within_the_strings() -> None:
    assert build_corpus.guitar_voicing((0, 4, 7), 6) == [0, 7, 12, 16, 19, 24]  # E-form major barre
    assert build_corpus.guitar_voicing((0, 3, 7), 5) == [0, 7, 12, 15, 19]
    for shape in build_corpus.CHORDS:
        for strings in range(3, 7):
            keys = build_corpus.guitar_voicing(shape, strings)
            assert keys[0] == 0 and keys == sorted(set(keys)) and len(keys) <= strings
            assert {k % 12 for k in keys} <= {k % 12 for k in shape}


def test_strum_changes_only_the_guitar_chords() -> None:
    plain, strummed = _plan(False), _plan(True)
    assert [j for j in plain if j["class"] != "guitar"] == [j for j in strummed if j["class"] != "guitar"]
    assert not any("strum_ms" in j for j in plain)
    guitar_chords = [j for j in strummed if j["class"] == "guitar" and j.get("chord")]
    assert 60 <= len(guitar_chords) <= 120  # P_CHORD of 300
    assert all("strum_ms" in j for j in guitar_chords)
    ups = 0
    for job in guitar_chords:
        keys = [job["pitch"] + int(k) for k in job["chord"].split("+")]
        assert build_corpus.STRUM_MS[0] <= job["strum_ms"] <= build_corpus.STRUM_MS[1]
        assert max(keys) <= build_corpus.GUITAR_TOP and len(keys) >= 2
        assert keys in (sorted(keys), sorted(keys, reverse=True))  # the pick crosses the strings in order
        ups += keys[0] > keys[-1]
    assert 0.2 < ups / len(guitar_chords) < 0.5  # P_UPSTROKE
