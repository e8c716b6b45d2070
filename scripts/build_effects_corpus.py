#!/usr/bin/env python3
"""Render the effects part of the demo model's training set: FluidR3 notes, each through one audio effect.

Why the demo model learns effects at all: a producer's own tag families are as often "what was done to
the sound" (distorted, chorused, washed in reverb) as "what plays". A base network that only ever told
instruments apart pools away exactly what effects change (modulation over time, echoes, added
harmonics), and ten examples per class cannot teach it that (docs/figure3.md). Trained beside the 15
instruments on this set, through a second head that is not shipped, its body keeps those cues for
transfer learning.

What keeps the evaluation honest (scripts/figure3.py tests effects on other material):
- dry notes come from FluidR3 GM only, even General-MIDI programs only; the Figure-3 effect test plays
  odd programs of MuseScore General and the OPL3 FM bank;
- each clip's effect is one of two implementations, drawn per clip: sox's or pedalboard's plugin (or
  numpy code of this file where one of them has none), with parameter ranges of this file, wider than
  the Figure-3 test set's, so the body learns the effect, not one plug-in's fingerprint;
- classes are broader than the test's 12 (filters, reverse, compression), so the body learns effects in
  general, not one list.

Output: DIR/effects.npz (the daemon's 8-bit log-mel codes of every clip, labels, class names, program
numbers) and DIR/effects-provenance.csv (one row per clip: program, key, velocity, hold, effect and its
parameters, seed). No audio is kept: only spectrograms train. Reproducible for a --seed.

Usage: python scripts/build_effects_corpus.py --out /work/fxcorpus [--per-class 800] [--seed 7] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import figure3  # scripts/ is on sys.path when a script runs
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SR = 44100
FLUIDR3 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
# Even GM programs (0-based) of every melodic family but the sound effects (120-127): the more kinds of
# dry sound the body hears, the less it takes an instrument's own vibrato or decay for an effect.
PROGRAMS = [p for p in range(120) if p % 2 == 0]
CHORD_SHARE = 0.3  # clips that play 2-3 notes at once (intervals from CHORDS) instead of one
CHORDS = [(0, 7), (0, 4, 7), (0, 3, 7), (0, 12), (0, 5), (0, 4), (0, 7, 12)]
# The 12 effects of the paper's Figure 3 (scripts/figure3.py tests them), in its order, then five more.
EFFECTS = [*figure3.EFFECTS, "lowpass", "highpass", "bandpass", "reverse", "compressor"]


def sox(x: np.ndarray, *effect: str) -> np.ndarray:
    """Run mono float audio through one sox effect chain; the output is cut or padded to the input's length."""
    done = subprocess.run(
        ["sox", "-q", "-t", "f32", "-r", str(SR), "-c", "1", "-", "-t", "f32", "-", *effect],
        input=x.astype(np.float32).tobytes(),
        capture_output=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"sox {' '.join(effect)}: {done.stderr.decode().strip()}")
    y = np.frombuffer(done.stdout, np.float32)
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]


def draw_effect(name: str, rng: np.random.Generator) -> dict[str, float]:
    """The effect's parameters, drawn per clip."""
    u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 3)  # noqa: E731
    table: dict[str, dict[str, float]] = {
        "clean": {},
        "distortion": {"gain_db": u(24, 45), "hard": float(rng.random() < 0.5)},
        "overdrive": {"gain_db": u(6, 18), "colour": u(10, 40)},
        "bitcrush": {"bits": u(2.5, 6.5), "hold": float(rng.integers(1, 8))},
        "ringmod": {"carrier_hz": round(math.exp(rng.uniform(math.log(60), math.log(1500))), 1)},
        "chorus": {"delay_ms": u(25, 60), "decay": u(0.3, 0.6), "speed": u(0.2, 2.5), "depth_ms": u(1, 4)},
        "flanger": {"delay_ms": u(0, 4), "depth_ms": u(1, 6), "regen": u(-60, 80), "speed": u(0.1, 1.5)},
        "phaser": {"delay_ms": u(1, 4), "decay": u(0.3, 0.6), "speed": u(0.2, 2.0)},
        "tremolo": {"speed": u(2, 12), "depth": u(45, 100)},
        "vibrato": {"rate": u(3, 9), "depth_st": u(0.15, 1.0)},
        "reverb": {"reverberance": u(40, 100), "damping": u(10, 80), "room": u(40, 100), "wet_db": u(-6, 3)},
        "delay": {"delay_ms": u(90, 600), "decay": u(0.3, 0.7), "taps": float(rng.integers(1, 4))},
        "lowpass": {"cutoff_hz": round(math.exp(rng.uniform(math.log(300), math.log(2500))), 1)},
        "highpass": {"cutoff_hz": round(math.exp(rng.uniform(math.log(800), math.log(5000))), 1)},
        "bandpass": {
            "centre_hz": round(math.exp(rng.uniform(math.log(500), math.log(3000))), 1),
            "octaves": u(0.5, 1.5),
        },
        "reverse": {},
        "compressor": {"threshold_db": u(-45, -25), "ratio": u(4, 20), "makeup_db": u(6, 18)},
    }
    return table[name]


def _board(plugin: Any, x: np.ndarray) -> np.ndarray:
    import pedalboard

    return pedalboard.Pedalboard([plugin])(x[None].astype(np.float32), SR)[0].astype(np.float64)


# pedalboard's plug-in for an effect, from the drawn parameters p (pb: the pedalboard module, imported late)
PEDALBOARD: dict[str, Callable[[Any, dict[str, float]], Any]] = {
    "distortion": lambda pb, p: pb.Distortion(drive_db=p["gain_db"]),
    "overdrive": lambda pb, p: pb.Distortion(drive_db=p["gain_db"] * 0.9),
    "bitcrush": lambda pb, p: pb.Bitcrush(bit_depth=p["bits"]),
    "chorus": lambda pb, p: pb.Chorus(
        rate_hz=p["speed"],
        depth=min(1.0, p["depth_ms"] / 5),
        centre_delay_ms=p["delay_ms"] / 3,
        feedback=0.1,
        mix=0.5,
    ),
    "flanger": lambda pb, p: pb.Chorus(
        rate_hz=p["speed"],
        depth=min(1.0, p["depth_ms"] / 6),
        centre_delay_ms=1 + p["delay_ms"] / 2,
        feedback=max(-0.9, min(0.9, p["regen"] / 90)),
        mix=0.5,
    ),
    "phaser": lambda pb, p: pb.Phaser(
        rate_hz=p["speed"],
        depth=0.5 + p["decay"] / 1.2,
        centre_frequency_hz=400 + 500 * p["delay_ms"],
        feedback=p["decay"],
        mix=0.5 + p["decay"] / 1.2,
    ),
    "reverb": lambda pb, p: pb.Reverb(
        room_size=p["room"] / 100,
        damping=p["damping"] / 100,
        wet_level=min(1.0, 0.2 + p["reverberance"] / 200),
        dry_level=0.6,
    ),
    "delay": lambda pb, p: pb.Delay(
        delay_seconds=p["delay_ms"] / 1000, feedback=p["decay"] * 0.8, mix=0.3 + p["decay"] / 3
    ),
    "lowpass": lambda pb, p: pb.LowpassFilter(cutoff_frequency_hz=p["cutoff_hz"]),
    "highpass": lambda pb, p: pb.HighpassFilter(cutoff_frequency_hz=p["cutoff_hz"]),
    "compressor": lambda pb, p: pb.Compressor(
        threshold_db=p["threshold_db"], ratio=p["ratio"], attack_ms=3, release_ms=150
    ),
}


def pedalboard_effect(name: str, p: dict[str, float], x: np.ndarray) -> np.ndarray | None:
    """The effect through pedalboard's plug-in with the same drawn parameters; None where it has none."""
    if name not in PEDALBOARD:
        return None
    import pedalboard

    y = _board(PEDALBOARD[name](pedalboard, p), x)
    if name == "bitcrush" and p["hold"] > 1:
        y = np.repeat(y[:: int(p["hold"])], int(p["hold"]))[: len(x)]
    if name == "compressor":
        y = y * 10 ** (p["makeup_db"] / 20)
    return y


def apply_effect(name: str, p: dict[str, float], x: np.ndarray, use_pedalboard: bool = False) -> np.ndarray:
    if use_pedalboard:
        y = pedalboard_effect(name, p, x)
        if y is not None:
            return y
    t = np.arange(len(x)) / SR
    if name == "clean":
        return x
    if name == "distortion":
        g = 10 ** (p["gain_db"] / 20)
        return np.clip(x * g, -1, 1) if p["hard"] else sox(x, "overdrive", str(p["gain_db"]), "20")
    if name == "overdrive":
        return sox(x, "overdrive", str(p["gain_db"]), str(p["colour"]))
    if name == "bitcrush":
        levels = 2 ** p["bits"] / 2
        held = np.repeat(x[:: int(p["hold"])], int(p["hold"]))[: len(x)]
        return np.round(held * levels) / levels
    if name == "ringmod":
        return x * np.cos(2 * np.pi * p["carrier_hz"] * t)
    if name == "chorus":
        return sox(
            x, "chorus", "0.7", "0.9", str(p["delay_ms"]), str(p["decay"]), str(p["speed"]), str(p["depth_ms"]), "-t"
        )
    if name == "flanger":
        return sox(x, "flanger", str(p["delay_ms"]), str(p["depth_ms"]), str(p["regen"]), "71", str(p["speed"]))
    if name == "phaser":
        return sox(x, "phaser", "0.8", "0.74", str(p["delay_ms"]), str(p["decay"]), str(p["speed"]), "-t")
    if name == "tremolo":
        return sox(x, "tremolo", str(p["speed"]), str(p["depth"]))
    if name == "vibrato":  # read position wobbles: a pitch swing of ±depth semitones at `rate`
        swing = 2 ** (p["depth_st"] / 12) - 1
        pos = np.arange(len(x)) + swing * SR / (2 * np.pi * p["rate"]) * (1 - np.cos(2 * np.pi * p["rate"] * t))
        return np.interp(pos, np.arange(len(x)), x, right=0.0)
    if name == "reverb":
        return sox(x, "reverb", str(p["reverberance"]), str(p["damping"]), str(p["room"]), "100", "0", str(p["wet_db"]))
    if name == "delay":
        taps = int(p["taps"])
        args = [
            str(round(p["delay_ms"] * (k + 1), 1)) + " " + str(round(p["decay"] ** (k + 1), 3)) for k in range(taps)
        ]
        return sox(x, "echos", "0.8", "0.9", *" ".join(args).split())
    if name == "lowpass":
        return sox(x, "sinc", f"-{p['cutoff_hz']}")
    if name == "highpass":
        return sox(x, "sinc", f"{p['cutoff_hz']}")
    if name == "bandpass":
        return sox(
            x, "sinc", f"{p['centre_hz'] / 2 ** (p['octaves'] / 2):.0f}-{p['centre_hz'] * 2 ** (p['octaves'] / 2):.0f}"
        )
    if name == "reverse":
        return x[::-1].copy()
    if name == "compressor":
        th, ratio = p["threshold_db"], p["ratio"]
        curve = f"-90,-90,{th},{th},0,{th + (0 - th) / ratio}"
        return sox(x, "compand", "0.003,0.15", curve, str(p["makeup_db"]))
    raise ValueError(f"unknown effect {name!r}")


def plan(per_class: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    jobs = []
    for label, name in enumerate(EFFECTS):
        for i in range(per_class):
            jobs.append(
                {
                    "id": f"{name}__{i:04d}",
                    "label": label,
                    "effect": name,
                    "program": int(rng.choice(PROGRAMS)),
                    "key": int(rng.integers(36, 85)),
                    "velocity": int(rng.integers(50, 128)),
                    "hold_s": round(float(rng.uniform(0.3, 2.7)), 3),
                    "lead_s": round(float(rng.uniform(0, 0.2)) if rng.random() < 0.5 else 0.0, 3),
                    "params": draw_effect(name, rng),
                    "chord": list(CHORDS[int(rng.integers(len(CHORDS)))]) if rng.random() < CHORD_SHARE else [0],
                    "pedalboard": bool(rng.random() < 0.5),
                    "seed": int(rng.integers(2**31)),
                }
            )
    return jobs


_RENDERER: Any = None


def render(job: dict[str, Any]) -> np.ndarray:
    """One clip's 8-bit log-mel codes, computed as the daemon computes them."""
    global _RENDERER
    import soxr
    from vibrary.daemon.decode import fit
    from vibrary.daemon.spectrogram import SpectrogramParams, log_mel, quantize

    if _RENDERER is None:
        import build_corpus  # its FluidSynth renderer, and its refusal of reserved sources (scripts/ is on sys.path)

        _RENDERER = build_corpus.FluidRenderer()
    note = sum(
        _RENDERER.note(FLUIDR3, 0, job["program"], min(108, job["key"] + k), job["velocity"], job["hold_s"], 3.2)
        for k in job["chord"]
    )
    dry = soxr.resample(note.mean(axis=1), _RENDERER.sr, SR)
    dry = np.concatenate([np.zeros(round(job["lead_s"] * SR), np.float32), dry])[: round(3.2 * SR)]
    dry = 0.5 * dry / max(1e-6, float(np.abs(dry).max()))
    wet = apply_effect(job["effect"], job["params"], dry.astype(np.float64), job["pedalboard"])
    wet = wet / max(1.0, float(np.abs(wet).max()))
    params = SpectrogramParams()
    clip = fit(wet[:, None].astype(np.float32), SR, params)
    return quantize(log_mel(clip, params), params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=800)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = plan(args.per_class, args.seed)
    started = time.monotonic()
    codes = []
    # spawned: forked from build_corpus.py --effects-out (FluidSynth's threads and a pool behind it), a worker
    # inherited a lock held by a thread that does not exist in it, and waited on it for ever
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for k, c in enumerate(pool.map(render, jobs, chunksize=16)):
            codes.append(c)
            if k % 500 == 0:
                print(f"  {k}/{len(jobs)} clips, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    np.savez_compressed(
        args.out / "effects.npz",
        codes=np.stack(codes),
        labels=np.array([j["label"] for j in jobs]),
        programs=np.array([j["program"] for j in jobs]),
        classes=np.array(EFFECTS),
    )
    with open(args.out / "effects-provenance.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "id",
                "effect",
                "implementation",
                "soundfont",
                "program",
                "key",
                "chord",
                "velocity",
                "hold_s",
                "lead_s",
                "params",
                "seed",
            ]
        )
        for j in jobs:
            impl = "pedalboard" if j["pedalboard"] and j["effect"] in PEDALBOARD else "sox/numpy"
            w.writerow(
                [
                    j["id"],
                    j["effect"],
                    impl,
                    Path(FLUIDR3).name,
                    j["program"],
                    j["key"],
                    "+".join(map(str, j["chord"])),
                    j["velocity"],
                    j["hold_s"],
                    j["lead_s"],
                    json.dumps(j["params"], sort_keys=True),
                    j["seed"],
                ]
            )
    print(f"{len(jobs)} clips in {time.monotonic() - started:.0f} s → {args.out / 'effects.npz'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
