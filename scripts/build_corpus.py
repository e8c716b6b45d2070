#!/usr/bin/env python3
"""Build the training corpus for Vibrary's built-in demo model (15 instrument classes).

Every clip is rendered from Debian-packaged sound sources (see scripts/corpus_sources.md):
General-MIDI soundfonts rendered note by note with FluidSynth, drum-kit soundfonts, Hydrogen
drum kits read sample by sample, and a little espeak-ng speech for ``vocals``.  Each clip gets
seeded random "sample-pack" variety: pitch, velocity, note length, leading silence, peak level,
mono/stereo, 16/24 bit, 22.05-96 kHz, WAV/FLAC/AIFF and, on a fraction, light effects.

The whole plan (which clip comes from which source/preset/note and with which settings) is drawn
in the main process from ``--seed`` before anything is rendered, so the corpus and its
``provenance.csv`` are identical whatever ``--jobs`` is.

Usage:
    python scripts/build_corpus.py --out DIR [--per-class N] [--seed S] [--jobs J]

Output: DIR/<class>/<source>__<id>.<ext>, DIR/provenance.csv (one row per clip), DIR/summary.txt.
The ``source`` column (one soundfont or one kit) is the unit for leave-one-source-out validation;
``source_group`` joins sources that share recordings and must be held out together.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sf2_samples, also when loaded from another script

CLASSES = [
    "kick",
    "snare",
    "hihat",
    "cymbal",
    "tom",
    "clap",
    "piano",
    "guitar",
    "bass",
    "strings",
    "brass",
    "woodwind",
    "organ",
    "synth",
    "vocals",
]
DRUM_CLASSES = {"kick", "snare", "hihat", "cymbal", "tom", "clap"}

# ---------------------------------------------------------------------------------------------
# Sources: an explicit allow-list.  Nothing outside it is ever opened, listed or read.
# ---------------------------------------------------------------------------------------------
SF2 = "/usr/share/sounds/sf2"
SF3 = "/usr/share/sounds/sf3"
H2_DIR = "/usr/share/hydrogen/data/drumkits"

# General-MIDI soundfonts: source -> soundfont files (melodic bank 0 + drum bank 128).
# FluidR3_GS.sf2 (fluid-soundfont-gs) only holds GS sound-effect presets, so it gives nothing here.
GM_SOUNDFONTS = {
    "fluidr3": [f"{SF2}/FluidR3_GM.sf2", f"{SF3}/FluidR3Mono_GM.sf3"],
    "musescore": [f"{SF3}/MuseScore_General_Full.sf3"],
    "opl3": [f"{SF2}/OPL-3_FM_128M.sf2"],
}
# GM drum kits (bank 128 programs) used per soundfont; Standard 1-7 / Room 1-7 ... are variations
# that mostly reuse the same samples, the Orchestra kit has concert percussion: both left out.
GM_KITS = {"fluidr3": [0, 8, 16, 24, 25, 32, 40], "musescore": [0, 8, 16, 24, 25, 32, 40], "opl3": [0]}

# Drum-kit soundfonts (avldrums.lv2-soundfont): one preset (bank 0, program 0) each.
KIT_SOUNDFONTS = {
    "avl_blackpearl": f"{SF2}/Black_Pearl_4_LV2.sf2",
    "avl_redzeppelin": f"{SF2}/Red_Zeppelin_4_LV2.sf2",
}

# Hydrogen kits (hydrogen-data + the allowed part of hydrogen-drumkits), in dedup priority order:
# a sample file whose bytes already appeared in an earlier kit is skipped.
H2_KITS = {
    "h2_gmrockkit": "GMRockKit",
    "h2_tr808": "TR808EmulationKit",
    "h2_bja_pacific": "BJA_Pacific",
    "h2_electricempire": "ElectricEmpireKit",
    "h2_forzee": "ForzeeStereo",
    "h2_gimmeahand": "Gimme A Hand 1.0",
    "h2_hardelectro1": "HardElectro1",
    "h2_blackpearl": "The Black Pearl 1.0",
    "h2_circafrique": "circAfrique v4",
}

# Hydrogen kits whose every instrument is one melodic class (hydrogen-drumkits-effects): real recordings.
H2_MELODIC_KITS = {"h2_guitarstrums": ("belofilms_GuitarStrums", "guitar")}

# Sources that share recordings: hold them out together.  GMRockKit and The Black Pearl 1.0 ship
# largely identical files and come from the same Pearl kit as AVL's Black Pearl.  MuseScore General
# is "based on" FluidR3, yet most of its presets play samples of their own (scripts/sf2_samples.py
# reads which): a MuseScore clip of which any note plays a FluidR3 sample joins the `fluidr3` group
# (see source_group()), the others form the `musescore` group.  Every other source is its own group.
SOURCE_GROUP = {
    "h2_gmrockkit": "pearl_glenmacarthur",
    "h2_blackpearl": "pearl_glenmacarthur",
    "avl_blackpearl": "pearl_glenmacarthur",
}


def source_group(source: str, job: dict) -> str:
    """The group of recordings a clip belongs to: the unit of leave-one-source-out validation."""
    if source == "musescore" and job["kind"] in ("sf", "sfdrum"):
        from sf2_samples import shared_fraction

        fluid = tuple(GM_SOUNDFONTS["fluidr3"])
        keys = [job["pitch"] + int(k) for k in str(job.get("chord") or "0").split("+")]
        shared = max(shared_fraction(job["sf"], job["bank"], job["program"], fluid, key) for key in keys)
        return "fluidr3" if shared > 0 else "musescore"
    return SOURCE_GROUP.get(source, source)


# Reserved for independent evaluation (shared/data-sources.md): never opened, even if installed.
RESERVED = [
    "timgm6mb",
    "sf_gmbank",
    "csound",
    "freepats",
    "sonic-pi",
    "lmms",
    "grandorgue",
    "audiophob",
    "colomboacousticdrumkit",
    "millo-drums_v.1",
    "millo_multilayered2",
    "millo_multilayered3",
    "rumpf_kit_z01_h2",
    "varibreaks",
]


def assert_allowed(path: str) -> str:
    low = str(path).lower()
    for name in RESERVED:
        if name in low:
            raise RuntimeError(f"refusing to touch reserved source {name!r}: {path}")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Label maps
# ---------------------------------------------------------------------------------------------
# GM melodic programs (0-based) per class.  Left out as ambiguous: 6 harpsichord, 7 clavinet,
# 21-23 accordion/harmonica/bandoneon, 46 harp, 47 timpani, 76 blown bottle, 78 whistle,
# 85 voice lead and 91 choir pad (voice-like synths), 96-99 and 101 sound-effect pads.
GM_PROGRAMS = {
    "piano": [0, 1, 2, 3, 4, 5],
    "organ": [16, 17, 18, 19, 20],
    "guitar": list(range(24, 32)),
    "bass": list(range(32, 40)),
    "strings": [40, 41, 42, 43, 44, 45, 48, 49, 50, 51],
    "vocals": [52, 53, 54],
    "brass": list(range(56, 64)),
    "woodwind": [*range(64, 76), 77, 79],
    "synth": [80, 81, 82, 83, 84, 86, 87, 88, 89, 90, 92, 93, 94, 95, 100, 102, 103],
}
# Playable MIDI note range per class, refined per program where the instrument is narrower.
CLASS_RANGE = {
    "piano": (28, 100),
    "organ": (36, 91),
    "guitar": (40, 84),
    "bass": (28, 55),
    "strings": (36, 96),
    "vocals": (48, 79),
    "brass": (40, 82),
    "woodwind": (50, 91),
    "synth": (36, 96),
}
PROGRAM_RANGE = {
    40: (55, 100),
    41: (48, 88),
    42: (36, 76),
    43: (28, 60),
    45: (36, 84),
    56: (54, 84),
    57: (40, 72),
    58: (28, 58),
    59: (54, 84),
    60: (41, 77),
    64: (56, 88),
    65: (49, 81),
    66: (44, 76),
    67: (36, 69),
    68: (58, 91),
    69: (52, 81),
    70: (34, 75),
    71: (50, 91),
    72: (74, 103),
    73: (60, 96),
    74: (60, 96),
    75: (60, 96),
    77: (55, 88),
    79: (60, 91),
    38: (28, 55),
    39: (28, 55),
}
GM_DRUM_NOTES = {
    35: "kick",
    36: "kick",
    38: "snare",
    40: "snare",
    39: "clap",
    42: "hihat",
    44: "hihat",
    46: "hihat",
    49: "cymbal",
    51: "cymbal",
    52: "cymbal",
    55: "cymbal",
    57: "cymbal",
    59: "cymbal",
    41: "tom",
    43: "tom",
    45: "tom",
    47: "tom",
    48: "tom",
    50: "tom",
}  # 37 side stick: left out
# AVL kits use their own key map (48 = hi-hat swish, 50/52/58 = cymbal chokes, 60 = china ride).
AVL_DRUM_NOTES = {
    36: "kick",
    38: "snare",
    40: "snare",
    39: "clap",
    41: "tom",
    43: "tom",
    45: "tom",
    47: "tom",
    42: "hihat",
    44: "hihat",
    46: "hihat",
    48: "hihat",
    49: "cymbal",
    50: "cymbal",
    51: "cymbal",
    52: "cymbal",
    53: "cymbal",
    55: "cymbal",
    57: "cymbal",
    58: "cymbal",
    59: "cymbal",
    60: "cymbal",
}


def h2_class(name: str) -> str | None:
    """Map a Hydrogen instrument name to a class, or None when it is not one of ours."""
    n = name.lower()
    if re.search(r"stick|rim ?click|\bclick\b|roll|cowbell|conga|bongo|djembe|tambourine", n):
        return None
    if "clap" in n:
        return "clap"
    if re.search(r"kick|bass ?drum|^bd\b", n):
        return "kick"
    if "snare" in n:
        return "snare"
    if re.search(r"hi[- ]?hat|\bhat\b|\bhh\b|\bchh\b|\bohh\b", n):
        return "hihat"
    if re.search(r"crash|ride|splash|china|cymbal", n):
        return "cymbal"
    if re.search(r"\btom\b", n):
        return "tom"
    # circAfrique: dundun family (stick-played cylindrical bass drums), open head hits only.
    if re.search(r"(dununba|sangban|kenkeni)\d* head hit", n):
        return "tom"
    return None


# ---------------------------------------------------------------------------------------------
# Variety settings
# ---------------------------------------------------------------------------------------------
RENDER_SR = 48000  # FluidSynth renders here; soxr converts to the target rate
BLOCK = 64  # FluidSynth's internal block size (FLUID_BUFSIZE)
SAMPLE_RATES = ([22050, 44100, 48000, 96000], [0.10, 0.45, 0.30, 0.15])
FORMATS = ([("wav", "WAV"), ("flac", "FLAC"), ("aif", "AIFF")], [0.70, 0.20, 0.10])
MAX_LEN = {"kick": 1.5, "snare": 1.5, "clap": 1.2, "hihat": 2.5, "tom": 2.5, "cymbal": 4.0}
MELODIC_MAX_LEN = 4.0  # seconds of sound; up to 0.3 s leading silence comes on top
CAP_PER_UNIT = {"h2": 16, "sfdrum": 32}  # at most this many clips from one drum sample / kit note
# a preset that gives no sound at a drawn pitch (a FluidR3 strings note): the clip is left out, a class one short,
# and the build goes on; any other error of a clip fails it
SILENT_RENDER = "silent render"
SILENT_MOST, SILENT_FEW = 0.01, 10  # of the clips planned, and at least: more silent ones fail the build
SOURCE_WEIGHT = {"espeak": 0.35}  # espeak-ng is a little extra vocals material, never alone
P_EFFECT = 0.30
# Sample packs hold chords and stabs as well as single notes: a share of the melodic clips of these
# classes plays 2-4 notes at once (semitones above the drawn pitch), so a strummed guitar or a brass
# section is not a sound the model has never heard.
CHORD_CLASSES = {"piano", "guitar", "organ", "strings", "brass", "synth"}
P_CHORD = 0.3
CHORDS = [(0, 4, 7), (0, 3, 7), (0, 7), (0, 7, 12), (0, 4, 7, 12), (0, 3, 7, 10), (0, 5, 7), (0, 12)]

ESPEAK_VOICES = ["en-us", "en-gb", "en-029", "de", "fr-fr", "es", "it", "pt-br", "nl", "sv"]
ESPEAK_VARIANTS = [
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "croak",
    "klatt",
    "klatt3",
    "whisper",
]
ESPEAK_TEXTS = [
    "yeah",
    "oh yeah",
    "hey",
    "ah",
    "ooh",
    "la la la",
    "come on",
    "uh huh",
    "one two three four",
    "baby",
    "get up",
    "woo",
    "let's go",
    "alright",
    "oh no",
    "hey hey",
    "whoa",
    "okay",
    "aaaaah",
    "ooooh",
    "mmm hmm",
    "say what",
    "get down",
    "check it",
    "na na na",
    "hallelujah",
]


# ---------------------------------------------------------------------------------------------
# FluidSynth rendering (pyfluidsynth for control, fluid_synth_write_float for float output)
# ---------------------------------------------------------------------------------------------
class FluidRenderer:
    def __init__(self, sr: int = RENDER_SR):
        import fluidsynth  # pyfluidsynth

        self.sr = sr
        self.synth = fluidsynth.Synth(
            gain=0.5,
            samplerate=float(sr),
            **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1, "synth.polyphony": 128},
        )
        lib = ctypes.CDLL(ctypes.util.find_library("fluidsynth"))
        self._write = lib.fluid_synth_write_float
        self._write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        self.sfids: dict[str, int] = {}

    def sfid(self, path: str) -> int:
        if path not in self.sfids:
            self.sfids[path] = self.synth.sfload(assert_allowed(path))
            if self.sfids[path] < 0:
                raise RuntimeError(f"fluidsynth could not load {path}")
        return self.sfids[path]

    def preset_name(self, path: str, bank: int, prog: int) -> str | None:
        return self.synth.sfpreset_name(self.sfid(path), bank, prog)

    def _pull(self, n: int) -> np.ndarray:
        buf = np.zeros((n, 2), np.float32)
        ptr = buf.ctypes.data
        self._write(self.synth.synth, n, ptr, 0, 2, ptr + 4, 0, 2)
        return buf

    def note(self, path: str, bank: int, prog: int, key: int, vel: int, hold_s: float, total_s: float) -> np.ndarray:
        # The first time FluidSynth plays a sample its output differs slightly from every later
        # time (state it sets up lazily), so each note is played twice and the second one kept:
        # that makes a clip independent of what the process rendered before (and of --jobs).
        self._note(path, bank, prog, key, vel, hold_s, total_s)
        return self._note(path, bank, prog, key, vel, hold_s, total_s)

    def _note(self, path, bank, prog, key, vel, hold_s, total_s) -> np.ndarray:
        chan = 9 if bank == 128 else 0
        self.synth.all_sounds_off(chan)
        self._pull(BLOCK)
        self.synth.program_select(chan, self.sfid(path), bank, prog)
        self.synth.noteon(chan, key, vel)
        # FluidSynth handles events once per 64-frame block: pulling whole blocks keeps every
        # note on the same grid, so a clip renders identically whatever was rendered before it.
        hold = BLOCK * max(1, round(hold_s * self.sr / BLOCK))
        total = BLOCK * max(hold // BLOCK + 1, math.ceil(total_s * self.sr / BLOCK))
        a = self._pull(hold)
        self.synth.noteoff(chan, key)
        b = self._pull(total - hold)
        self.synth.all_sounds_off(chan)
        return np.concatenate([a, b])


_RENDERER: FluidRenderer | None = None


def renderer() -> FluidRenderer:
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = FluidRenderer()
    return _RENDERER


# ---------------------------------------------------------------------------------------------
# Unit discovery: what each source can give each class
# ---------------------------------------------------------------------------------------------
def discover_units(log) -> dict[str, dict[str, list[dict]]]:
    """Return {class: {source: [unit, ...]}} with sorted, de-duplicated units."""
    units: dict[str, dict[str, list[dict]]] = {c: defaultdict(list) for c in CLASSES}
    r = renderer()

    # GM soundfonts: melodic programs and bank-128 drum notes.
    for source, paths in GM_SOUNDFONTS.items():
        for path in paths:
            if not os.path.exists(path):
                log(f"  missing {path}: skipped")
                continue
            for cls, progs in GM_PROGRAMS.items():
                for prog in progs:
                    name = r.preset_name(path, 0, prog)
                    if name:
                        units[cls][source].append({"kind": "sf", "sf": path, "bank": 0, "program": prog, "name": name})
            seen: set = set()
            for kit in GM_KITS[source]:
                name = r.preset_name(path, 128, kit)
                if not name:
                    continue
                for note, cls in sorted(GM_DRUM_NOTES.items()):
                    key = _probe_drum(r, path, 128, kit, note, seen)
                    if key:
                        units[cls][source].append(
                            {"kind": "sfdrum", "sf": path, "bank": 128, "program": kit, "note": note, "name": name}
                        )

    # AVL drum-kit soundfonts.
    for source, path in KIT_SOUNDFONTS.items():
        if not os.path.exists(path):
            log(f"  missing {path}: skipped")
            continue
        preset = r.preset_name(path, 0, 0)
        seen = set()
        for note, cls in sorted(AVL_DRUM_NOTES.items()):
            if _probe_drum(r, path, 0, 0, note, seen):
                units[cls][source].append(
                    {"kind": "sfdrum", "sf": path, "bank": 0, "program": 0, "note": note, "name": preset}
                )

    # Hydrogen kits: every velocity layer of every mappable instrument, duplicates dropped.
    seen_files: set[str] = set()
    for source, kit_name in H2_KITS.items():
        kit_dir = Path(assert_allowed(os.path.join(H2_DIR, kit_name)))
        xml_path = kit_dir / "drumkit.xml"
        if not xml_path.exists():
            log(f"  missing {xml_path}: skipped")
            continue
        root = ET.parse(xml_path).getroot()
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        dropped = 0
        for inst in root.iter(f"{ns}instrument"):
            iname = (inst.findtext(f"{ns}name") or "").strip()
            h2_cls = h2_class(iname)
            if h2_cls is None:
                continue
            # old-format kits give one <filename> per instrument instead of <layer>s
            layers = list(inst.iter(f"{ns}layer")) or [inst]
            for layer in layers:
                fname = layer.findtext(f"{ns}filename")
                if not fname:
                    continue
                fpath = Path(assert_allowed(str(kit_dir / fname)))
                if not fpath.exists():
                    continue
                digest = hashlib.sha1(fpath.read_bytes()).hexdigest()
                if digest in seen_files:
                    dropped += 1
                    continue
                seen_files.add(digest)
                vmax = float(layer.findtext(f"{ns}max") or 1.0)
                units[h2_cls][source].append(
                    {"kind": "h2", "kit": kit_name, "file": str(fpath), "name": iname, "velocity": round(vmax * 127)}
                )
        if dropped:
            log(f"  {source}: {dropped} sample files identical to an earlier kit's were skipped")

    # Hydrogen kits of one melodic instrument: every sample file.
    for source, (kit_name, cls) in H2_MELODIC_KITS.items():
        kit_dir = Path(assert_allowed(os.path.join(H2_DIR, kit_name)))
        if not kit_dir.is_dir():
            log(f"  missing {kit_dir}: skipped")
            continue
        for fpath in sorted(kit_dir.glob("*.flac")) + sorted(kit_dir.glob("*.wav")):
            units[cls][source].append(
                {
                    "kind": "h2",
                    "kit": kit_name,
                    "file": str(assert_allowed(str(fpath))),
                    "name": fpath.stem,
                    "velocity": 100,
                }
            )

    # espeak-ng voices for vocals.
    if shutil.which("espeak-ng"):
        for voice in ESPEAK_VOICES:
            for variant in ESPEAK_VARIANTS:
                units["vocals"]["espeak"].append({"kind": "espeak", "voice": f"{voice}+{variant}"})
    else:
        log("  espeak-ng not found: no espeak vocals")
    return {c: {s: u for s, u in sorted(d.items())} for c, d in units.items()}


def _probe_drum(r: FluidRenderer, path, bank, prog, note, seen: set) -> bool:
    """True if the kit sounds at this note and is not a copy of a note already taken."""
    x = r.note(path, bank, prog, note, 100, 0.1, 0.6)
    peak = float(np.abs(x).max())
    if peak < 1e-4:
        return False
    digest = hashlib.sha1(np.round(x / peak * 1000).astype(np.int16).tobytes()).hexdigest()
    if digest in seen:
        return False
    seen.add(digest)
    return True


# ---------------------------------------------------------------------------------------------
# Planning: allocate clips to sources and units, draw every random setting
# ---------------------------------------------------------------------------------------------
def allocate(n: int, sources: dict[str, list[dict]]) -> dict[str, int]:
    """Split n clips over sources by weight, respecting per-unit caps (water filling)."""
    cap = {}
    for s, us in sources.items():
        per = CAP_PER_UNIT.get(us[0]["kind"])
        cap[s] = len(us) * per if per else math.inf
    alloc = dict.fromkeys(sources, 0)
    open_ = [s for s in sources if cap[s] > 0]
    left = n
    while left > 0 and open_:
        w = {s: SOURCE_WEIGHT.get(s, 1.0) for s in open_}
        tot = sum(w.values())
        share = {s: left * w[s] / tot for s in open_}
        base = {s: int(share[s]) for s in open_}
        rest = left - sum(base.values())
        for s in sorted(open_, key=lambda s: (-(share[s] - base[s]), s))[:rest]:
            base[s] += 1
        left = 0
        for s in open_:
            take = int(min(base[s], cap[s] - alloc[s]))  # cap may be inf
            alloc[s] += take
            left += base[s] - take
        open_ = [s for s in open_ if alloc[s] < cap[s]]
    return alloc


def _loguniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_effect(rng, sr: int) -> dict:
    if rng.random() >= P_EFFECT:
        return {}
    kinds = ["reverb", "eq", "saturation"]
    pick = sorted(rng.choice(3, size=1 if rng.random() < 0.8 else 2, replace=False).tolist())
    fx: dict = {}
    for i in pick:
        k = kinds[i]
        if k == "reverb":
            fx["reverb"] = {
                "rt60": round(rng.uniform(0.3, 2.5), 2),
                "wet": round(rng.uniform(0.1, 0.45), 2),
                "predelay": round(rng.uniform(0.005, 0.03), 3),
            }
        elif k == "eq":
            t = str(rng.choice(["highpass", "lowpass", "peak"]))
            if t == "highpass":
                fx["eq"] = {"type": t, "freq": round(_loguniform(rng, 60, 500))}
            elif t == "lowpass":
                fx["eq"] = {"type": t, "freq": round(min(_loguniform(rng, 1500, 12000), 0.45 * sr))}
            else:
                gain = rng.uniform(3, 9) * (1 if rng.random() < 0.5 else -1)
                fx["eq"] = {
                    "type": t,
                    "freq": round(_loguniform(rng, 150, 6000)),
                    "gain_db": round(gain, 1),
                    "q": round(rng.uniform(0.5, 2.0), 2),
                }
        else:
            fx["saturation"] = {"drive": round(rng.uniform(1.5, 8.0), 2)}
    return fx


def effect_str(fx: dict) -> str:
    if not fx:
        return "none"
    return "+".join(f"{k}({','.join(f'{a}={v}' for a, v in p.items())})" for k, p in fx.items())


def draw_common(rng) -> dict:
    sr = int(rng.choice(SAMPLE_RATES[0], p=SAMPLE_RATES[1]))
    fmt_i = int(rng.choice(len(FORMATS[0]), p=FORMATS[1]))
    normalised = rng.random() < 0.4
    level = rng.uniform(-1.5, -1.0) if normalised else rng.uniform(-30.0, -1.5)
    return {
        "samplerate": sr,
        "ext": FORMATS[0][fmt_i][0],
        "format": FORMATS[0][fmt_i][1],
        "bit_depth": 16 if rng.random() < 0.55 else 24,
        "channels": 2 if rng.random() < 0.6 else 1,
        "level_db": round(float(level), 2),
        "lead_silence_s": 0.0 if rng.random() < 0.4 else round(rng.uniform(0.005, 0.3), 3),
        "cut": round(rng.uniform(0.35, 1.0), 3) if rng.random() < 0.25 else 1.0,
        "pan": round(rng.uniform(-0.35, 0.35), 3) if rng.random() < 0.5 else 0.0,
        "fx": draw_effect(rng, sr),
        "seed": int(rng.integers(2**31 - 1)),
    }


def draw_hold(rng) -> float:
    u = rng.random()
    if u < 0.35:
        return round(rng.uniform(0.08, 0.4), 3)
    if u < 0.8:
        return round(rng.uniform(0.4, 1.5), 3)
    return round(rng.uniform(1.5, 3.0), 3)


def plan(per_class: int, seed: int, classes: list[str], units, log) -> list[dict]:
    jobs = []
    for ci, cls in enumerate(CLASSES):
        if cls not in classes:
            continue
        sources = {s: u for s, u in units[cls].items() if u}
        alloc = allocate(per_class, sources)
        rng = np.random.default_rng([seed, ci])
        for source in sorted(sources):
            us = list(sources[source])
            order = rng.permutation(len(us))
            for i in range(alloc[source]):
                if i % len(us) == 0 and i:
                    order = rng.permutation(len(us))
                u = us[order[i % len(us)]]
                job = {"class": cls, "source": source, **u, **draw_common(rng)}
                if u["kind"] == "sf":
                    lo, hi = PROGRAM_RANGE.get(u["program"], CLASS_RANGE[cls])
                    job["pitch"] = int(rng.integers(lo, hi + 1))
                    job["velocity"] = int(rng.integers(30, 128))
                    job["hold_s"] = draw_hold(rng)
                    if cls in CHORD_CLASSES and rng.random() < P_CHORD:
                        shape = CHORDS[int(rng.integers(len(CHORDS)))]
                        job["chord"] = "+".join(str(k) for k in shape)
                elif u["kind"] == "sfdrum":
                    job["pitch"] = u["note"]
                    job["velocity"] = int(rng.integers(20, 128))
                    job["hold_s"] = round(rng.uniform(0.05, 0.5), 3)
                elif u["kind"] == "h2":
                    st = round(rng.uniform(-2.0, 2.0), 2) if rng.random() < 0.35 else 0.0
                    job["pitch_shift_st"] = st
                elif u["kind"] == "espeak":
                    job["text"] = str(rng.choice(ESPEAK_TEXTS))
                    job["espeak_pitch"] = int(rng.integers(15, 91))
                    job["espeak_speed"] = int(rng.integers(90, 200))
                    job["pitch"] = job["espeak_pitch"]
                job["source_group"] = source_group(source, job)
                job["path"] = f"{cls}/{source}__{i:04d}.{job['ext']}"
                jobs.append(job)
        log(f"  {cls:9s} " + ", ".join(f"{s}={alloc[s]}" for s in sorted(alloc) if alloc[s]))
    return jobs


# ---------------------------------------------------------------------------------------------
# Audio processing
# ---------------------------------------------------------------------------------------------
def trim(x: np.ndarray, sr: int, max_len: float) -> np.ndarray:
    """Cut leading silence (to -50 dB), the tail below -60 dB, and cap the length."""
    env = np.abs(x).max(axis=1)
    peak = float(env.max())
    if peak <= 0:
        return x
    start = max(0, int(np.argmax(env > peak * 10 ** (-50 / 20))) - int(0.001 * sr))
    end = len(env) - int(np.argmax(env[::-1] > peak * 1e-3)) + int(0.01 * sr)
    end = min(end, len(env), start + int(max_len * sr))
    return x[start:end]


def fade_out(x: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    n = min(len(x), max(1, int(seconds * sr)))
    x = x.copy()
    x[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)[:, None]
    return x


def apply_effects(x: np.ndarray, sr: int, fx: dict, rng, max_len: float) -> np.ndarray:
    if "eq" in fx:
        p = fx["eq"]
        if p["type"] == "highpass":
            sos = signal.butter(2, p["freq"], "highpass", fs=sr, output="sos")
        elif p["type"] == "lowpass":
            sos = signal.butter(2, p["freq"], "lowpass", fs=sr, output="sos")
        else:  # RBJ peaking biquad
            a_ = 10 ** (p["gain_db"] / 40)
            w0 = 2 * math.pi * p["freq"] / sr
            alpha = math.sin(w0) / (2 * p["q"])
            b = [1 + alpha * a_, -2 * math.cos(w0), 1 - alpha * a_]
            a = [1 + alpha / a_, -2 * math.cos(w0), 1 - alpha / a_]
            sos = signal.tf2sos(b, a)
        x = signal.sosfilt(sos, x, axis=0).astype(np.float32)
    if "saturation" in fx:
        d = fx["saturation"]["drive"]
        x = np.tanh(d * x / (np.abs(x).max() + 1e-12)) / math.tanh(d)
    if "reverb" in fx:
        p = fx["reverb"]
        n = int(p["rt60"] * sr)
        t = np.arange(n) / sr
        decay = np.exp(-6.91 * t / p["rt60"])
        pre = np.zeros((int(p["predelay"] * sr), x.shape[1]))
        ir = np.concatenate([pre, rng.standard_normal((n, x.shape[1])) * decay[:, None]])
        ir /= np.sqrt((ir**2).sum(axis=0, keepdims=True))
        pad = np.concatenate([x, np.zeros((len(ir), x.shape[1]), np.float32)])
        wet = signal.fftconvolve(pad, ir, axes=0)[: len(pad)]
        dry_peak = np.abs(x).max() + 1e-12
        wet *= dry_peak / (np.abs(wet).max() + 1e-12)
        x = ((1 - p["wet"]) * pad + p["wet"] * wet).astype(np.float32)
        x = trim(x, sr, max_len)
        x = fade_out(x, sr, 0.02)
    return x.astype(np.float32)


def load_h2(job) -> tuple[np.ndarray, int]:
    x, sr = sf.read(assert_allowed(job["file"]), dtype="float32", always_2d=True)
    st = job.get("pitch_shift_st", 0.0)
    if st:
        # sampler-style pitch shift: play the sample faster/slower
        x = soxr.resample(x, sr * 2 ** (st / 12), sr, quality="HQ")
    return x, sr


def run_espeak(job) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as td:
        out = os.path.join(td, "v.wav")
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                job["voice"],
                "-p",
                str(job["espeak_pitch"]),
                "-s",
                str(job["espeak_speed"]),
                "-w",
                out,
                job["text"],
            ],
            check=True,
            capture_output=True,
        )
        x, sr = sf.read(out, dtype="float32", always_2d=True)
    return x, sr


def render_job(job: dict, out_dir: str) -> dict:
    cls = job["class"]
    max_len = MAX_LEN.get(cls, MELODIC_MAX_LEN)
    rng = np.random.default_rng(job["seed"])
    kind = job["kind"]
    if kind in ("sf", "sfdrum"):
        sr = RENDER_SR
        total = job["hold_s"] + (3.0 if kind == "sf" else max_len + 0.5)
        keys = [job["pitch"] + int(k) for k in str(job.get("chord") or "0").split("+")]
        x = np.sum(
            [
                renderer().note(
                    job["sf"], job["bank"], job["program"], key, job["velocity"], job["hold_s"], min(total, 6.0)
                )
                for key in keys
            ],
            axis=0,
        )
    elif kind == "h2":
        x, sr = load_h2(job)
    else:
        x, sr = run_espeak(job)
    if float(np.abs(x).max()) < 1e-5:
        return {"path": job["path"], "error": SILENT_RENDER}

    x = trim(x, sr, max_len)
    if job["cut"] < 1.0:  # sample-pack style truncated tail
        n = max(int(0.08 * sr), int(len(x) * job["cut"]))
        x = fade_out(x[:n], sr, min(0.05, 0.3 * n / sr))
    else:
        x = fade_out(x, sr, 0.005)
    if job["fx"]:
        x = apply_effects(x, sr, job["fx"], rng, max_len)

    # channels
    if job["channels"] == 1:
        x = x.mean(axis=1, keepdims=True)
    elif x.shape[1] == 1:
        ang = (job["pan"] + 1) * math.pi / 4
        x = np.concatenate([x * math.cos(ang), x * math.sin(ang)], axis=1) * math.sqrt(2)
    # sample rate
    if sr != job["samplerate"]:
        x = soxr.resample(x, sr, job["samplerate"], quality="HQ")
    sr = job["samplerate"]
    # leading silence and level
    lead = np.zeros((int(job["lead_silence_s"] * sr), x.shape[1]), np.float32)
    x = np.concatenate([lead, x]).astype(np.float32)
    peak = float(np.abs(x).max())
    x *= 10 ** (job["level_db"] / 20) / peak
    subtype = "PCM_16" if job["bit_depth"] == 16 else "PCM_24"
    dest = os.path.join(out_dir, job["path"])
    sf.write(dest, x, sr, subtype=subtype, format=job["format"])
    return provenance_row(job, len(x) / sr)


COLUMNS = [
    "path",
    "class",
    "source",
    "source_group",
    "kind",
    "soundfont_or_kit",
    "bank",
    "program",
    "drum_note",
    "sample_file",
    "preset_name",
    "text",
    "pitch",
    "chord",
    "pitch_shift_st",
    "velocity",
    "hold_s",
    "lead_silence_s",
    "cut",
    "duration_s",
    "samplerate",
    "bit_depth",
    "channels",
    "format",
    "level_db",
    "effect",
    "seed",
]


def provenance_row(job: dict, duration: float) -> dict:
    kind = job["kind"]
    row: dict[str, object] = dict.fromkeys(COLUMNS, "")
    row.update({k: job.get(k, "") for k in COLUMNS if k in job})
    row["duration_s"] = round(duration, 4)
    row["effect"] = effect_str(job["fx"])
    if kind in ("sf", "sfdrum"):
        row["soundfont_or_kit"] = os.path.basename(job["sf"])
        row["preset_name"] = job["name"]
        if kind == "sfdrum":
            row["drum_note"] = job["note"]
    elif kind == "h2":
        row["soundfont_or_kit"] = job["kit"]
        row["sample_file"] = os.path.basename(job["file"])
        row["preset_name"] = job["name"]
        row["pitch_shift_st"] = job.get("pitch_shift_st", 0.0)
    else:
        row["soundfont_or_kit"] = "espeak-ng"
        row["preset_name"] = job["voice"]
        row["velocity"] = ""
    return row


# ---------------------------------------------------------------------------------------------
def _worker(args):
    job, out_dir = args
    try:
        return render_job(job, out_dir)
    except Exception as exc:  # keep going; failures are reported at the end
        return {"path": job["path"], "error": f"{type(exc).__name__}: {exc}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (outside the repository)")
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma list (for quick tests)")
    ap.add_argument("--dry-run", action="store_true", help="only print the plan")
    ap.add_argument("--force", action="store_true", help="replace an existing corpus in --out")
    ap.add_argument(
        "--effects-out",
        default=None,
        help="then the effects corpus there too (scripts/build_effects_corpus.py at its defaults): the demo's "
        "rebuild in one command",
    )
    args = ap.parse_args(argv)

    t0 = time.time()

    def log(msg):
        print(msg, flush=True)

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    bad = set(classes) - set(CLASSES)
    if bad:
        ap.error(f"unknown classes: {sorted(bad)}")
    out = Path(args.out)
    if not args.dry_run:
        existing = [out / c for c in CLASSES if (out / c).exists()] + [
            p for p in (out / "provenance.csv", out / "summary.txt") if p.exists()
        ]
        if existing and not args.force:
            ap.error(f"{out} already holds a corpus; use --force to replace it")
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    log("discovering sources ...")
    units = discover_units(log)
    global _RENDERER
    if args.jobs > 1 and _RENDERER is not None:  # workers make their own synth
        _RENDERER.synth.delete()
        _RENDERER = None
    log(f"planning {args.per_class} clips per class (seed {args.seed}) ...")
    jobs = plan(args.per_class, args.seed, classes, units, log)
    if args.dry_run:
        return 0
    for c in classes:
        (out / c).mkdir(parents=True, exist_ok=True)

    # Group jobs by soundfont so each worker loads few soundfonts; results are re-sorted by path.
    work = sorted(jobs, key=lambda j: (j.get("sf", ""), j["path"]))
    rows: list[dict] = []
    errors: list[dict] = []
    tasks = [(j, str(out)) for j in work]
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.imap(_worker, tasks, chunksize=16)
            for i, res in enumerate(results, 1):
                (errors if "error" in res else rows).append(res)
                if i % 500 == 0:
                    log(f"  {i}/{len(tasks)} clips, {time.time() - t0:.0f} s")
    else:
        for i, task in enumerate(tasks, 1):
            res = _worker(task)
            (errors if "error" in res else rows).append(res)
            if i % 500 == 0:
                log(f"  {i}/{len(tasks)} clips, {time.time() - t0:.0f} s")

    rows.sort(key=lambda r: r["path"])
    with open(out / "provenance.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)

    summary = summarize(rows, errors, time.time() - t0, args)
    (out / "summary.txt").write_text(summary)
    log(summary)
    if any(e["error"] != SILENT_RENDER for e in errors):  # (a preset silent at a pitch is left out, as planned)
        return 1
    if len(errors) > max(SILENT_FEW, SILENT_MOST * len(jobs)):  # a soundfont rendering nothing: no preset at a pitch
        log(f"{len(errors)} of {len(jobs)} clips rendered silent: is a soundfont broken?")
        return 1
    if args.effects_out:
        import build_effects_corpus  # (scripts/ is on sys.path, as for train_demo.py's import of this one)

        return build_effects_corpus.main(["--out", args.effects_out, "--jobs", str(args.jobs)])
    return 0


def summarize(rows, errors, seconds, args) -> str:
    by = Counter((r["class"], r["source"]) for r in rows)
    sources = sorted({s for _, s in by})
    silent = sum(e["error"] == SILENT_RENDER for e in errors)
    lines = [
        f"clips: {len(rows)}  failed: {len(errors) - silent}  silent, left out: {silent}  seconds: {seconds:.0f}  "
        f"per-class: {args.per_class}  seed: {args.seed}",
        "",
    ]
    lines.append("| class | total | " + " | ".join(sources) + " |")
    lines.append("|---|---:|" + "---:|" * len(sources))
    for c in CLASSES:
        n = sum(by[(c, s)] for s in sources)
        if n:
            lines.append(f"| {c} | {n} | " + " | ".join(str(by[(c, s)] or "") for s in sources) + " |")
    tot = Counter(r["source"] for r in rows)
    lines.append(f"| **total** | {len(rows)} | " + " | ".join(str(tot[s]) for s in sources) + " |")
    for e in errors[:20]:
        lines.append(f"{'LEFT OUT' if e['error'] == SILENT_RENDER else 'FAILED'} {e['path']}: {e['error']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
