"""Melodic notes synthesised from first principles: a source family of the project's own, beside the banks.

    python scripts/synth_instruments.py --out /work/synth --per-class 130 [--seed 0] [--wav 20]

The allowed sample banks give the melodic classes too few independent sources (FluidR3 and MuseScore
General, which shares FluidR3's guitars, basses and organs; the OPL3 FM bank), so a model learns the
banks as much as the instruments (`docs/demo-model.md`). This script adds a family that shares no
sample with any of them: each class is made by the physics or the circuit that defines it, with its
parameters drawn per note, so that what the classes have in common across these notes and the banks'
is the instrument, not a recording.

- piano: struck strings: inharmonic partials (f_n = n f0 sqrt(1 + B n^2)), two or three detuned strings
  per key that beat, a hammer position that notches partials, a two-stage decay faster for higher
  partials, a felt thump; a third are electric (GM programs 4-5 are pianos): a tine piano (brief FM
  bark, a tine ping, a suitcase tremolo) or an FM piano (a 1:14 bell over a 1:1 body).
- guitar and bass: Karplus-Strong plucked strings (pluck position, brightness, decay), a body of a few
  resonances; a third of the basses are subtractive synth basses
  (GM programs 38-39 are basses).
- strings: bowed: a band-limited sawtooth with vibrato, slow attack, an ensemble of detuned players, a
  body of resonances.
- brass: harmonics whose brightness follows the loudness (the lips' nonlinearity), a pitch scoop at the
  attack.
- woodwind: flute-like (few harmonics, breath noise), clarinet-like (odd harmonics) or reed-like (a
  formant), with gentle vibrato.
- organ: drawbar harmonics at fixed footages (or many pipe harmonics), no decay, key click, a Leslie's
  tremolo and Doppler.
- synth: detuned saw, square and pulse oscillators through a resonant low-pass swept by an envelope.
- vocals: a glottal pulse train through vowel formants, vibrato, one singer or a choir.

Every note: a MIDI key in the class's range (`build_corpus.CLASS_RANGE`), a velocity (level and
brightness), a held time of 0.15-2.8 s and a release, 3 s at 44.1 kHz mono, peak-normalised to a random
level. As in the corpus (`build_corpus.CHORDS`), 30 % of the pianos, guitars (strummed), organs,
strings, brass and synths play a chord. The output is the daemon's 8-bit log-mel codes
(`codes-v2-….npz`: codes, labels, seeds) and a provenance CSV; `--wav N` also writes N example WAVs per
class to listen to. Fixed seeds: the same command makes the same notes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_corpus, also when loaded from a test
from build_corpus import CHORD_CLASSES, CHORDS, P_CHORD
from build_corpus import CLASS_RANGE as RANGE

VERSION = 2  # of the family: 2 added chords and electric pianos (a cached build of another version is not reused)
SR = 44100
SECONDS = 3.0
N = int(SR * SECONDS)
CLASSES = ["piano", "guitar", "bass", "strings", "brass", "woodwind", "organ", "synth", "vocals"]
T = np.arange(N) / SR


def hz(key: float) -> float:
    return float(440.0 * 2 ** ((key - 69) / 12))


def envelope(rng: np.random.Generator, attack: float, hold: float, release: float, decay: float = 0.0) -> np.ndarray:
    """Linear attack, exponential decay (1/s) while held, exponential release after `hold` seconds."""
    env = np.minimum(T / max(attack, 1e-4), 1.0) * np.exp(-decay * T)
    after = hold < T
    env[after] = env[np.searchsorted(T, hold) - 1 if hold < SECONDS else -1] * np.exp(-(T[after] - hold) / release)
    return env


def partials(freqs: np.ndarray, amps: np.ndarray, decays: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of decaying sines below Nyquist, random phases."""
    out = np.zeros(N)
    for f, a, d in zip(freqs, amps, decays, strict=True):
        if f < SR / 2 * 0.95 and a > 1e-4:
            out += a * np.exp(-d * T) * np.sin(2 * np.pi * f * T + rng.uniform(0, 2 * np.pi))
    return out


def harmonic_tone(f0: np.ndarray | float, amps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Harmonics of a (possibly time-varying) fundamental, by phase accumulation; amps per harmonic."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, (N,))) / SR
    top = float(np.max(f0))
    out = np.zeros(N)
    for n, a in enumerate(amps, start=1):
        if n * top < SR / 2 * 0.95 and a > 1e-4:
            out += a * np.sin(n * phase + rng.uniform(0, 2 * np.pi))
    return out


def resonances(
    x: np.ndarray, rng: np.random.Generator, centres: tuple[float, float], count: int, q: float
) -> np.ndarray:
    """A body: the dry signal plus a few resonant peaks (peaking biquads) between `centres`."""
    y = x.copy()
    for f in np.exp(rng.uniform(np.log(centres[0]), np.log(centres[1]), count)):
        b, a = scipy.signal.iirpeak(f, q, fs=SR)
        y += rng.uniform(0.3, 1.0) * scipy.signal.lfilter(b, a, x)
    return y


def lowpass(x: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    sos = scipy.signal.butter(order, min(cutoff, SR / 2 * 0.9), fs=SR, output="sos")
    return scipy.signal.sosfilt(sos, x)


def swept(x: np.ndarray, cutoff: float, opening: float, sweep: np.ndarray) -> np.ndarray:
    """A low-pass that an envelope opens (by `opening` times its cutoff at the sweep's peak), as a crossfade
    between the closed and the open filter: smooth, where a filter switched block by block clicks."""
    return lowpass(x, cutoff) * (1 - sweep) + lowpass(x, cutoff * (1 + opening)) * sweep


def vibrato(f0: float, rng: np.random.Generator, depth_cents: float, delay: float = 0.2) -> np.ndarray:
    rate = rng.uniform(4.5, 6.5)
    depth = np.minimum(np.maximum(T - delay, 0) / 0.3, 1.0) * depth_cents
    return f0 * 2 ** (depth * np.sin(2 * np.pi * rate * T + rng.uniform(0, 6.3)) / 1200)


def piano(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    """A third of the pianos are electric, as GM programs 4-5 (and the corpus's piano class) are."""
    if rng.random() < 1 / 3:
        return electric_piano(key, vel, hold, rng)
    f0 = hz(key)
    b = rng.uniform(0.5, 4) * 1e-4 * (1 + (key - 28) / 40)
    hammer = rng.uniform(0.08, 0.16)
    n = np.arange(1, 60)
    amps = np.abs(np.sin(np.pi * n * hammer)) / n ** rng.uniform(0.6, 1.1) * np.exp(-n / (4 + 20 * vel))
    out = np.zeros(N)
    for detune in rng.uniform(-1.5, 1.5, rng.integers(2, 4)):
        freqs = n * f0 * 2 ** (detune / 1200) * np.sqrt(1 + b * n**2)
        slow = rng.uniform(0.3, 1.2) * (1 + key / 60) * (1 + 0.05 * n)
        out += partials(freqs, amps, slow, rng) + partials(freqs, amps * 0.6, slow * 6, rng)
    thump = lowpass(rng.standard_normal(N) * np.exp(-T / 0.01), 800) * 0.3 * vel
    return (out + thump) * envelope(rng, 0.002, hold, rng.uniform(0.08, 0.3))


def fm(f0: float, ratio: float, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two-operator FM: a sine at f0 whose phase a sine at ratio·f0 modulates by `index` (radians)."""
    phase = 2 * np.pi * f0 * T + rng.uniform(0, 2 * np.pi)
    return np.sin(phase + index * np.sin(ratio * phase + rng.uniform(0, 2 * np.pi)))


def electric_piano(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    """A tine piano (a struck tine whose 'bark' is brief FM, a high tine ping, an optional suitcase
    tremolo) or an FM piano (a 1:1 pair for the body beside a 1:14 pair for the attack's bell)."""
    f0 = hz(key)
    body_decay = rng.uniform(0.4, 1.5) * (1 + (key - 28) / 30)
    bark = vel * rng.uniform(0.5, 3.0) * np.exp(-T / rng.uniform(0.03, 0.25))
    out = fm(f0, 1.0, bark, rng) * np.exp(-body_decay * T)
    if rng.random() < 0.5:  # tine: an inharmonic ping at 7-14 times the pitch
        ping = rng.uniform(7, 14)
        if ping * f0 < SR / 2 * 0.9:
            out += rng.uniform(0.1, 0.4) * vel * np.sin(2 * np.pi * ping * f0 * T) * np.exp(-T / 0.02)
        if rng.random() < 0.4:
            out *= 1 + rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(3, 7) * T)
    else:  # FM piano's bell
        bell = vel * rng.uniform(0.5, 2.0) * np.exp(-T / rng.uniform(0.05, 0.4))
        out += rng.uniform(0.2, 0.6) * fm(f0, 14.0, bell, rng) * np.exp(-3 * body_decay * T)
    return out * envelope(rng, 0.001, hold, rng.uniform(0.05, 0.25))


def karplus_strong(f0: float, seconds: float, rng: np.random.Generator, bright: float, sustain: float) -> np.ndarray:
    """A plucked string: a delay line of noise, averaged at every pass (the string's losses)."""
    period = max(2, round(SR / f0))
    burst = rng.uniform(-1, 1, period)
    pluck = max(1, int(period * rng.uniform(0.1, 0.3)))
    burst = burst - np.roll(burst, pluck)  # the pluck position's comb
    burst = lowpass(burst, 500 + bright * 12000, 1)
    out = np.zeros(int(SR * seconds))
    buf = burst.copy()
    loss = sustain
    for start in range(0, len(out), period):
        chunk = buf[: min(period, len(out) - start)]
        out[start : start + len(chunk)] = chunk
        buf = loss * 0.5 * (buf + np.roll(buf, -1))
    return out


def guitar(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    s = karplus_strong(hz(key), SECONDS, rng, bright=vel * rng.uniform(0.3, 1.0), sustain=rng.uniform(0.990, 0.999))
    out = resonances(s, rng, (90, 400), 3, 4.0)
    return out * envelope(rng, 0.001, hold, rng.uniform(0.05, 0.25))


def bass(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    f0 = hz(key)
    if rng.random() < 0.33:  # synth bass: a saw or square through an enveloped low-pass
        amps = 1 / np.arange(1, 40) if rng.random() < 0.5 else np.where(np.arange(1, 40) % 2, 1 / np.arange(1, 40), 0)
        tone = harmonic_tone(f0, amps, rng)
        out = swept(tone, f0 * rng.uniform(2, 8), vel * 6, np.exp(-T / rng.uniform(0.05, 0.4)))
        return out * envelope(rng, 0.003, hold, rng.uniform(0.03, 0.15))
    s = karplus_strong(f0, SECONDS, rng, bright=vel * rng.uniform(0.05, 0.4), sustain=rng.uniform(0.995, 0.9995))
    s = resonances(s, rng, (60, 250), 2, 3.0)
    return s * envelope(rng, 0.002, hold, rng.uniform(0.04, 0.2))


def strings(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    players = int(rng.choice([1, 1, 3, 5, 8]))
    out = np.zeros(N)
    for _ in range(players):
        f = vibrato(hz(key) * 2 ** (rng.uniform(-8, 8) * (players > 1) / 1200), rng, rng.uniform(5, 20))
        amps = 1 / np.arange(1, 50) ** rng.uniform(0.9, 1.4)
        out += harmonic_tone(f, amps, rng)
    out = resonances(out, rng, (250, 3500), 5, 6.0)
    out = lowpass(out, 2000 + 8000 * vel)
    return out * envelope(rng, rng.uniform(0.04, 0.35), hold, rng.uniform(0.1, 0.5))


def brass(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    f0 = hz(key)
    attack = rng.uniform(0.02, 0.08)
    env = envelope(rng, attack, hold, rng.uniform(0.05, 0.2))
    scoop = 2 ** (-rng.uniform(20, 80) * np.exp(-T / attack) / 1200)
    phase = 2 * np.pi * np.cumsum(f0 * scoop * 2 ** (rng.uniform(0, 8) * np.sin(2 * np.pi * 5 * T) / 1200)) / SR
    out = np.zeros(N)
    brightness = 1 + 12 * vel * env  # louder is brighter: the spectrum widens with the level
    for n in range(1, 40):
        if n * f0 < SR / 2 * 0.9:
            out += np.exp(-n / brightness) * np.sin(n * phase)
    out = resonances(out, rng, (500, 2500), 2, 3.0)
    return out * env


def woodwind(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    f0 = vibrato(hz(key), rng, rng.uniform(3, 15))
    kind = rng.integers(3)
    n = np.arange(1, 30)
    if kind == 0:  # flute: nearly sinusoidal, breathy
        amps = np.exp(-n * rng.uniform(0.8, 1.6))
    elif kind == 1:  # clarinet: odd harmonics
        amps = np.where(n % 2 == 1, 1.0, rng.uniform(0.02, 0.15)) / n ** rng.uniform(0.8, 1.3)
    else:  # oboe, bassoon, sax: a reed's rich spectrum
        amps = 1 / n ** rng.uniform(0.5, 1.0)
    out = harmonic_tone(f0, amps, rng)
    if kind == 2:
        out = resonances(out, rng, (700, 3000), 2, 4.0)
    breath = rng.uniform(0.02, 0.1) if kind == 0 else rng.uniform(0.0, 0.03)
    b, a = scipy.signal.iirpeak(min(hz(key) * 2, SR / 2 * 0.9), 2.0, fs=SR)
    out += breath * scipy.signal.lfilter(b, a, rng.standard_normal(N)) * 3
    return out * envelope(rng, rng.uniform(0.02, 0.12), hold, rng.uniform(0.05, 0.2))


def organ(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    f0 = hz(key)
    if rng.random() < 0.6:  # drawbars: 16', 5 1/3', 8', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1'
        ratios = np.array([0.5, 1.5, 1, 2, 3, 4, 5, 6, 8])
        levels = rng.integers(0, 9, 9) / 8.0
        levels[2] = max(levels[2], 0.5)
        out = partials(ratios * f0, levels, np.zeros(9), rng)
        if rng.random() < 0.6:  # Leslie: tremolo and a little Doppler
            rate = rng.uniform(0.8, 7)
            out = out * (1 + 0.3 * np.sin(2 * np.pi * rate * T))
        click = lowpass(rng.standard_normal(N) * np.exp(-T / 0.004), 6000) * rng.uniform(0, 0.3)
        out += click
        attack = 0.005
    else:  # pipes: many harmonics, a few ranks slightly apart
        out = np.zeros(N)
        for detune in rng.uniform(-3, 3, rng.integers(1, 4)):
            amps = 1 / np.arange(1, 30) ** rng.uniform(0.7, 1.8)
            out += harmonic_tone(f0 * 2 ** (detune / 1200), amps, rng)
        attack = rng.uniform(0.03, 0.1)
    return out * envelope(rng, attack, hold, rng.uniform(0.03, 0.3))


def synth(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    f0 = hz(key)
    n = np.arange(1, 60)
    shapes = [1 / n, np.where(n % 2, 1 / n, 0), np.abs(np.sin(np.pi * n * rng.uniform(0.1, 0.4))) / n]
    out = np.zeros(N)
    for _ in range(int(rng.integers(1, 4))):
        out += harmonic_tone(f0 * 2 ** (rng.uniform(-15, 15) / 1200), shapes[rng.integers(3)], rng)
    pad = rng.random() < 0.4
    attack = rng.uniform(0.2, 0.8) if pad else rng.uniform(0.002, 0.03)
    shaped = swept(out, f0 * rng.uniform(1.5, 6), rng.uniform(0, 12) * vel, np.exp(-T / rng.uniform(0.05, 1.0)))
    b, a = scipy.signal.iirpeak(min(f0 * rng.uniform(2, 8), SR / 2 * 0.9), rng.uniform(1, 8), fs=SR)
    shaped += rng.uniform(0, 0.5) * scipy.signal.lfilter(b, a, out)  # the filter's resonance
    return shaped * envelope(rng, attack, hold, rng.uniform(0.05, 0.8))


FORMANTS = {  # vowel: (F1, F2, F3) Hz
    "a": (800, 1150, 2900),
    "e": (400, 1600, 2700),
    "i": (300, 2300, 3000),
    "o": (450, 800, 2830),
    "u": (325, 700, 2530),
}


def vocals(key: int, vel: float, hold: float, rng: np.random.Generator) -> np.ndarray:
    singers = int(rng.choice([1, 1, 4, 8]))
    vowel = FORMANTS[str(rng.choice(list(FORMANTS)))]
    shift = rng.uniform(0.9, 1.2)  # the singer's vocal tract
    out = np.zeros(N)
    for _ in range(singers):
        f = vibrato(hz(key) * 2 ** (rng.uniform(-10, 10) * (singers > 1) / 1200), rng, rng.uniform(10, 40), 0.3)
        source = harmonic_tone(f, 1 / np.arange(1, 50) ** 2, rng)  # a glottal pulse's -12 dB/octave
        voiced = np.zeros(N)
        for i, formant in enumerate(vowel):
            b, a = scipy.signal.iirpeak(formant * shift, formant * shift / (60 + 40 * i), fs=SR)
            voiced += scipy.signal.lfilter(b, a, source) / (1 + i)
        out += voiced
    return out * envelope(rng, rng.uniform(0.05, 0.2), hold, rng.uniform(0.1, 0.4))


VOICES: dict[str, Callable[[int, float, float, np.random.Generator], np.ndarray]] = {
    "piano": piano,
    "guitar": guitar,
    "bass": bass,
    "strings": strings,
    "brass": brass,
    "woodwind": woodwind,
    "organ": organ,
    "synth": synth,
    "vocals": vocals,
}


STRUM_S = {"guitar": (0.008, 0.03)}  # seconds between the notes of a chord; others nearly together
TOGETHER_S = (0.0, 0.006)


@dataclass(frozen=True)
class Plan:
    """What a seed draws for a note of a class, before any sample of it is made (a test of the chord share
    needs no audio)."""

    cls: str
    seed: int
    key: int
    vel: float
    hold: float
    shape: tuple[int, ...]  # the chord's steps from the key; (0,) a single note
    spread: float  # seconds between a chord's notes
    timbre: int  # the seed every voice of the chord is played from
    level_db: float  # the peak

    def made(self) -> dict[str, object]:
        """How it was made, as provenance.csv says."""
        return {
            "class": self.cls,
            "seed": self.seed,
            "key": self.key,
            "chord": " ".join(map(str, self.shape)),
            "velocity": round(self.vel, 3),
            "hold_s": round(self.hold, 3),
        }


def plan(cls: str, seed: int) -> Plan:
    rng = np.random.default_rng(seed)
    low, high = RANGE[cls]
    key = int(rng.integers(low, high + 1))
    vel = float(rng.uniform(0.3, 1.0))
    hold = float(np.exp(rng.uniform(np.log(0.15), np.log(2.8))))
    shape: tuple[int, ...] = (0,)
    if cls in CHORD_CLASSES and rng.random() < P_CHORD:
        shape = CHORDS[int(rng.integers(len(CHORDS)))]
    spread = float(rng.uniform(*STRUM_S.get(cls, TOGETHER_S)))
    timbre = int(rng.integers(2**63))
    return Plan(cls, seed, key, vel, hold, shape, spread, timbre, float(rng.uniform(-24, -0.5)))


def note(cls: str, seed: int) -> tuple[np.ndarray, dict[str, object]]:
    """One note (or, as in the corpus, for a share of some classes a chord) of `cls`, 3 s mono float32,
    and how it was made. A chord's notes are one instrument: each key is played from the same random
    stream, so they share every drawn timbre parameter and differ only by their key."""
    p = plan(cls, seed)
    audio = np.zeros(N)
    for i, step in enumerate(p.shape):
        start = int(i * p.spread * SR)
        audio[start:] += VOICES[cls](p.key + step, p.vel, p.hold, np.random.default_rng(p.timbre))[: N - start]
    audio = audio / max(1e-9, float(np.max(np.abs(audio)))) * 10 ** (p.level_db / 20)
    return audio.astype(np.float32), p.made()


def build(out: Path, per_class: int, seed: int, wav: int = 0) -> Path:
    """codes-v….npz and provenance.csv in `out` (made once: the same arguments and VERSION give the same
    notes)."""
    from vibrary.daemon.spectrogram import SpectrogramParams, log_mel, quantize

    params = SpectrogramParams()
    assert params.sample_rate == SR and params.n_samples == N
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"codes-v{VERSION}-{per_class}-{seed}-{params.key}.npz"
    if target.exists():
        return target
    codes, labels, seeds, rows = [], [], [], []
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            s = seed * 1_000_000 + c * 10_000 + i
            audio, row = note(cls, s)
            codes.append(quantize(log_mel(audio[None, :], params), params))
            labels.append(c)
            seeds.append(s)
            rows.append(row)
            if i < wav:
                import soundfile

                soundfile.write(out / f"{cls}-{i:03d}.wav", audio, SR, subtype="PCM_16")
        print(f"{cls}: {per_class} notes", file=sys.stderr, flush=True)
    np.savez(target, codes=np.stack(codes), labels=np.array(labels), seeds=np.array(seeds))
    with open(out / "provenance.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=130)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wav", type=int, default=0, help="also write this many example WAVs per class")
    args = parser.parse_args()
    print(build(args.out, args.per_class, args.seed, args.wav))
    return 0


if __name__ == "__main__":
    sys.exit(main())
