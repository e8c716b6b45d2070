#!/usr/bin/env python3
"""Build a typical sample pack from the allowed sources and measure what `vibrary dataset create` uploads.

A producer's pack is mostly one-shots (a fraction of a second to a few seconds) and 4–8 s loops, as
stereo WAV at 44.1 or 48 kHz, 16 or 24 bit. The seed paper reports 20–80× between the audio and the
uploaded spectrograms; issue 6 asks for ≥ 50× on such a pack. The pack is made from the demo corpus
(scripts/build_corpus.py): one-shots re-written as pack WAVs, loops laid out on a tempo grid from its hits
and notes. Fixed seed, sorted inputs, so the pack and the figures are the same on every run.

Usage: python scripts/upload_ratio.py [--corpus /work/corpus] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ONE_SHOT_CLASSES = ["kick", "snare", "hihat", "clap", "tom", "cymbal", "bass", "piano", "synth"]
ONE_SHOTS_PER_CLASS = 40
LOOPS = {"drumloop": ["kick", "snare", "hihat"], "bassloop": ["bass"], "synthloop": ["synth", "piano"]}
LOOPS_PER_KIND = 30


def _read(path: Path, sr: int) -> np.ndarray:
    audio, native = sf.read(path, dtype="float32", always_2d=True)
    audio = np.repeat(audio, 2, axis=1) if audio.shape[1] == 1 else audio[:, :2]
    return soxr.resample(audio, native, sr) if native != sr else audio


def _write(path: Path, audio: np.ndarray, sr: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = float(np.abs(audio).max()) or 1.0
    sf.write(
        path, audio / peak * 10 ** (rng.uniform(-12, -0.5) / 20), sr, subtype=str(rng.choice(["PCM_16", "PCM_24"]))
    )


def build_pack(corpus: Path, out: Path, seed: int) -> None:
    with open(corpus / "provenance.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    by_class = {
        c: [r for r in rows if r["class"] == c] for c in {*ONE_SHOT_CLASSES, *(c for cs in LOOPS.values() for c in cs)}
    }
    rng = np.random.default_rng(seed)
    for c in ONE_SHOT_CLASSES:
        for i in rng.permutation(len(by_class[c]))[:ONE_SHOTS_PER_CLASS]:
            sr = int(rng.choice([44100, 48000]))
            _write(out / c / f"{c}_{i:04d}.wav", _read(corpus / by_class[c][i]["path"], sr), sr, rng)
    for kind, sources in LOOPS.items():
        for k in range(LOOPS_PER_KIND):
            sr, bpm = int(rng.choice([44100, 48000])), float(rng.uniform(85, 140))
            bars = 2 if bpm > 110 else 1
            length = int(bars * 4 * 60 / bpm * sr * (2 if bars == 1 and bpm < 100 else 1))
            loop = np.zeros((length, 2), np.float32)
            step = 60 / bpm / 4 * sr  # sixteenth notes
            for c in sources:
                hits = [_read(corpus / by_class[c][j]["path"], sr) for j in rng.permutation(len(by_class[c]))[:3]]
                for s in range(int(length // step)):
                    if rng.random() < (0.5 if c == "hihat" else 0.25):
                        hit = hits[int(rng.integers(len(hits)))][: length - int(s * step)]
                        loop[int(s * step) : int(s * step) + len(hit)] += hit
            _write(out / kind / f"{kind}_{k:03d}_{bpm:.0f}bpm.wav", loop, sr, rng)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / ".figure3-cache" / "pack")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.out.exists():
        build_pack(args.corpus, args.out, args.seed)
    files = sorted(p for p in args.out.rglob("*.wav"))
    durations = [sf.info(p).duration for p in files]
    report = dataset_create(args.out)
    report.update(
        files=len(files),
        one_shots=sum("loop" not in p.parent.name for p in files),
        loops=sum("loop" in p.parent.name for p in files),
        median_duration_s=round(float(np.median(durations)), 2),
    )
    # the same files, one-shots and loops as datasets of their own (hard links: the walk skips symlinks)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as parts:
        for part in ("one-shots", "loops"):
            for path in files:
                if ("loop" in path.parent.name) == (part == "loops"):
                    (Path(parts) / part / path.parent.name).mkdir(parents=True, exist_ok=True)
                    os.link(path, Path(parts) / part / path.parent.name / path.name)
            sub = dataset_create(Path(parts) / part)
            report[f"{part} only"] = {k: sub[k] for k in ("clips", "audio_bytes", "upload_bytes", "ratio")}
    print(json.dumps(report))
    return 0


def dataset_create(folder: Path) -> dict[str, object]:
    """`vibrary dataset create --json` in a throw-away home: the figures a user sees."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "VIBRARY_HOME": home}
        cmd = [sys.executable, "-m", "vibrary.clients.cli", "dataset", "create", "pack", str(folder), "--json"]
        return dict(json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout))


if __name__ == "__main__":
    raise SystemExit(main())
