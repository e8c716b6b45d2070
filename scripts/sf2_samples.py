"""Which samples each preset of a SoundFont (SF2, or SF3 with compressed samples) plays, read from its
`pdta` chunk: preset → instruments → sample headers.

Why: MuseScore General says it is based on FluidR3, but most of its presets play samples of their own.
Leave-one-source-out validation must not test on a MuseScore preset that plays FluidR3's recordings
while FluidR3 trains, nor throw away the many that do not: the corpus builder groups each preset by the
samples it actually plays (scripts/build_corpus.py, `source_group`).
"""

from __future__ import annotations

import struct
from functools import lru_cache

_RECORD = {"phdr": 38, "pbag": 4, "pgen": 4, "inst": 22, "ibag": 4, "igen": 4, "shdr": 46}
GEN_KEY_RANGE, GEN_INSTRUMENT, GEN_SAMPLE_ID = 43, 41, 53


def _chunks(path: str) -> dict[str, bytes]:
    """The pdta sub-chunks of the file, by name."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise ValueError(f"{path}: not a SoundFont")
    at = data.rfind(b"pdta")  # found by name: some SF3 files leave out the pad byte after an odd-sized chunk
    while at >= 8 and data[at - 8 : at - 4] != b"LIST":
        at = data.rfind(b"pdta", 0, at)
    if at < 8:
        raise ValueError(f"{path}: no pdta chunk")
    sub, end, out = at + 4, at - 4 + 4 + struct.unpack("<I", data[at - 4 : at])[0], {}
    while sub + 8 <= min(end, len(data)):
        name, size = data[sub : sub + 4].decode("latin1"), struct.unpack("<I", data[sub + 4 : sub + 8])[0]
        out[name] = data[sub + 8 : sub + 8 + size]
        sub += 8 + size
    missing = set(_RECORD) - set(out)
    if missing:
        raise ValueError(f"{path}: no {sorted(missing)} chunk")
    return out


def _records(chunk: bytes, size: int) -> list[bytes]:
    return [chunk[i : i + size] for i in range(0, len(chunk) - size + 1, size)]


def _name(record: bytes) -> str:
    return record[:20].split(b"\0")[0].decode("latin1").strip()


Zone = tuple[int, int, frozenset[str]]  # lowest key, highest key, sample names


@lru_cache(maxsize=8)
def preset_zones(path: str) -> dict[tuple[int, int], list[Zone]]:
    """(bank, program) → its zones: the key range each plays and the names of the samples it plays there
    (a preset zone's key range intersected with its instrument's zones)."""
    c = _chunks(path)
    phdr, pbag, pgen = _records(c["phdr"], 38), _records(c["pbag"], 4), _records(c["pgen"], 4)
    inst, ibag, igen = _records(c["inst"], 22), _records(c["ibag"], 4), _records(c["igen"], 4)
    shdr = [_name(r) for r in _records(c["shdr"], 46)]

    def zones(bags: list[bytes], gen: list[bytes], first: int, last: int, oper: int) -> list[tuple[int, int, int]]:
        """(lo key, hi key, amount of `oper`) for each zone from bag `first` to `last` that has `oper`."""
        found = []
        for b in range(first, min(last, len(bags))):
            g0 = struct.unpack("<H", bags[b][:2])[0]
            g1 = struct.unpack("<H", bags[b + 1][:2])[0] if b + 1 < len(bags) else len(gen)
            lo, hi, target = 0, 127, None
            for g in gen[g0:g1]:
                op, amount = struct.unpack("<HH", g)
                if op == GEN_KEY_RANGE:
                    lo, hi = amount & 0xFF, amount >> 8
                elif op == oper:
                    target = amount
            if target is not None:
                found.append((lo, hi, target))
        return found

    out: dict[tuple[int, int], list[Zone]] = {}
    for p in range(len(phdr) - 1):  # the last record is the terminal "EOP"
        program, bank, first = struct.unpack("<HHH", phdr[p][20:26])
        last = struct.unpack("<H", phdr[p + 1][24:26])[0]
        found: list[Zone] = []
        for plo, phi, i in zones(pbag, pgen, first, last, GEN_INSTRUMENT):
            if i + 1 >= len(inst):
                continue
            i_first = struct.unpack("<H", inst[i][20:22])[0]
            i_last = struct.unpack("<H", inst[i + 1][20:22])[0]
            for ilo, ihi, s in zones(ibag, igen, i_first, i_last, GEN_SAMPLE_ID):
                lo, hi = max(plo, ilo), min(phi, ihi)
                if lo <= hi and s < len(shdr) - 1:  # the last header is the terminal "EOS"
                    found.append((lo, hi, frozenset([shdr[s]])))
        out[(bank, program)] = found
    return out


@lru_cache(maxsize=8)
def all_sample_names(path: str) -> frozenset[str]:
    return frozenset(_name(r) for r in _records(_chunks(path)["shdr"], 46))


def shared_fraction(path: str, bank: int, program: int, others: tuple[str, ...], key: int | None = None) -> float:
    """Share of the samples that the preset (or only its zones that play `key`) plays whose names also
    occur in any of the `others` soundfonts. 0 when the preset plays nothing there."""
    mine: set[str] = set()
    for lo, hi, names in preset_zones(path).get((bank, program), []):
        if key is None or lo <= key <= hi:
            mine |= names
    if not mine:
        return 0.0
    theirs = frozenset().union(*(all_sample_names(o) for o in others))
    return len(mine & theirs) / len(mine)
