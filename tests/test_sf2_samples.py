"""scripts/sf2_samples.py reads which samples a SoundFont preset plays at a key: the leave-sources-out
validation of the demo model groups MuseScore General's presets with FluidR3 by it."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "sf2_samples.py"
_spec = importlib.util.spec_from_file_location("sf2_samples", _PATH)
assert _spec and _spec.loader
sf2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sf2)


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body


def _name(text: str) -> bytes:
    return text.encode().ljust(20, b"\0")


def soundfont(path: Path, presets: list[tuple[int, int, list[tuple[int, int, str]]]], odd_sdta: bool = False) -> None:
    """A minimal SoundFont: each preset (bank, program, zones) gets one instrument whose zones play one
    named sample each over a key range. odd_sdta writes an odd-sized sample chunk without its pad byte,
    as some SF3 files do."""
    samples = sorted({s for _, _, zones in presets for _, _, s in zones})
    phdr = pbag = pgen = inst = ibag = igen = b""
    n_pbag = n_pgen = n_ibag = n_igen = 0
    for i, (bank, program, zones) in enumerate(presets):
        phdr += _name(f"preset {i}") + struct.pack("<HHHIII", program, bank, n_pbag, 0, 0, 0)
        pbag += struct.pack("<HH", n_pgen, 0)
        pgen += struct.pack("<HH", sf2.GEN_INSTRUMENT, i)
        n_pbag, n_pgen = n_pbag + 1, n_pgen + 1
        inst += _name(f"inst {i}") + struct.pack("<H", n_ibag)
        for lo, hi, sample in zones:
            ibag += struct.pack("<HH", n_igen, 0)
            igen += struct.pack("<HBB", sf2.GEN_KEY_RANGE, lo, hi) + struct.pack(
                "<HH", sf2.GEN_SAMPLE_ID, samples.index(sample)
            )
            n_ibag, n_igen = n_ibag + 1, n_igen + 2
    phdr += _name("EOP") + struct.pack("<HHHIII", 0, 0, n_pbag, 0, 0, 0)
    pbag += struct.pack("<HH", n_pgen, 0)
    inst += _name("EOI") + struct.pack("<H", n_ibag)
    ibag += struct.pack("<HH", n_igen, 0)
    shdr = b"".join(_name(s) + b"\0" * 26 for s in [*samples, "EOS"])
    pdta = b"pdta" + b"".join(
        _chunk(n, b)
        for n, b in [
            (b"phdr", phdr), (b"pbag", pbag), (b"pmod", b"\0" * 10), (b"pgen", pgen + b"\0" * 4),
            (b"inst", inst), (b"ibag", ibag), (b"imod", b"\0" * 10), (b"igen", igen + b"\0" * 4), (b"shdr", shdr),
        ]
    )  # fmt: skip
    smpl = b"\0" * (101 if odd_sdta else 100)
    body = (
        b"sfbk"
        + _chunk(b"LIST", b"INFO" + _chunk(b"ifil", b"\2\0\1\0"))
        + _chunk(b"LIST", b"sdta" + _chunk(b"smpl", smpl))
    )
    body += _chunk(b"LIST", pdta)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("odd_sdta", [False, True])
def test_zones_give_the_samples_each_key_plays(tmp_path: Path, odd_sdta: bool) -> None:
    path = tmp_path / "a.sf2"
    soundfont(path, [(0, 0, [(0, 59, "Piano low"), (60, 127, "Piano high")]), (128, 0, [(36, 36, "Kick")])], odd_sdta)
    zones = sf2.preset_zones(str(path))
    assert zones[(0, 0)] == [(0, 59, frozenset({"Piano low"})), (60, 127, frozenset({"Piano high"}))]
    assert zones[(128, 0)] == [(36, 36, frozenset({"Kick"}))]


def test_shared_fraction_counts_the_samples_another_soundfont_also_has(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine.sf2", tmp_path / "theirs.sf2"
    soundfont(mine, [(0, 0, [(0, 59, "Piano low"), (60, 127, "Own high")]), (0, 1, [(0, 127, "Own organ")])])
    soundfont(theirs, [(0, 0, [(0, 127, "Piano low")])])
    others = (str(theirs),)
    assert sf2.shared_fraction(str(mine), 0, 0, others) == 0.5
    assert sf2.shared_fraction(str(mine), 0, 0, others, key=40) == 1.0  # this key plays their sample
    assert sf2.shared_fraction(str(mine), 0, 0, others, key=80) == 0.0
    assert sf2.shared_fraction(str(mine), 0, 1, others) == 0.0
    assert sf2.shared_fraction(str(mine), 0, 9, others) == 0.0  # no such preset: nothing shared


def test_a_file_that_is_not_a_soundfont_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.sf2"
    bad.write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    with pytest.raises(ValueError, match="not a SoundFont"):
        sf2.preset_zones(str(bad))
