#!/usr/bin/env python3
"""How a demo-model checkpoint hears lo-fi samples (docs/demo-model.md, "Lo-fi samples").

Sample packs hold SP-1200 and MPC drums at 26-40 kHz and 12 bits, 8-bit chip sounds, and bit-crushed loops;
the corpus holds none. This takes the clips of the source groups a fold held out (so the checkpoint never
heard their source), writes each again as a lo-fi file (resampled down with soxr, requantised to so many
bits), reads it back through the daemon's own decoder and log-mel, and scores the checkpoint on each version.

    python scripts/lofi_probe.py --corpus /work/corpus --checkpoint /work/loso45/fold-0/demo.pt --fold 0

Prints one line of JSON: the share right for each version (clean, 22.05 kHz 12-bit, 11.025 kHz 8-bit, 8 kHz
8-bit, 8 kHz 16-bit, 44.1 kHz 8-bit), over `--clips` clips drawn with a fixed seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VERSIONS = {  # name: (sample rate, bits), None: the clip as rendered
    "clean": None,
    "22k-12bit": (22050, 12),
    "11k-8bit": (11025, 8),
    "8k-8bit": (8000, 8),
    "8k-16bit": (8000, 16),
    "44k-8bit": (44100, 8),
}


def lo_fi(path: str, rate: int, bits: int, out: str) -> None:
    """The clip at `rate` Hz and `bits` bits, as a sampler of those would have recorded it."""
    import soundfile as sf
    import soxr

    audio, native = sf.read(path, dtype="float32", always_2d=True)
    audio = soxr.resample(audio, native, rate)
    steps = 2 ** (bits - 1)
    audio = np.clip(np.round(audio * steps) / steps, -1, 1 - 1 / steps)
    sf.write(out, audio, rate, subtype="PCM_U8" if bits == 8 else "PCM_16")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--checkpoint", required=True, help="a demo.pt of train_demo.py (a fold's, or the shipped one)")
    ap.add_argument("--fold", type=int, default=0, help="whose held-out source groups to test on (FOLDS)")
    ap.add_argument("--clips", type=int, default=300)
    args = ap.parse_args()
    import torch
    import train_demo
    from vibrary.daemon.decode import decode
    from vibrary.daemon.spectrogram import SpectrogramParams, log_mel, quantize
    from vibrary.trainer.export import load_net

    torch.set_num_threads(1)
    with open(args.corpus / "provenance.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    rows = [r for r in rows if r["source_group"] in train_demo.FOLDS[args.fold]]
    picked = np.random.default_rng(0).permutation(len(rows))[: args.clips]
    rows = [rows[i] for i in sorted(picked)]
    truth = np.array([train_demo.CLASSES.index(r["class"]) for r in rows])
    net = load_net(args.checkpoint)
    params = SpectrogramParams()
    right = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in VERSIONS.items():
            codes = []
            for r in rows:
                path = str(args.corpus / r["path"])
                if version is not None:
                    lo_fi(path, *version, f"{tmp}/clip.wav")
                    path = f"{tmp}/clip.wav"
                codes.append(quantize(log_mel(decode(path, params), params), params))
            right[name] = round(float((train_demo.predict(net, np.stack(codes)) == truth).mean()), 3)
            print(f"{name}: {right[name]:.1%}", file=sys.stderr, flush=True)
    print(json.dumps({"checkpoint": args.checkpoint, "fold": args.fold, "clips": len(rows), "right": right}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
