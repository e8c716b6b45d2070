"""Train the built-in 15-instrument demo model from the corpus that scripts/build_corpus.py renders.

    python scripts/train_demo.py --corpus /work/corpus            # train, export into the package
    python scripts/train_demo.py --corpus /work/corpus --holdout opl3 --out /tmp/loso-opl3

Spectrograms are computed with the daemon's own decode + log-mel code (cached next to the corpus as
`spectrograms-<params key>.npz`), and the model is trained with the trainer's own `train()`, so the demo
model is fed exactly what the daemon computes. Validation holds out whole source groups (a soundfont or a
drum kit and its copies, the `source_group` column), never random clips. `--holdout GROUP` trains without
one group and reports per-class accuracy on it: one fold of leave-one-source-out.

Outputs (default --out: the package): daemon/builtin/demo.onnx (what the daemon runs),
trainer/builtin/demo.pt (the base for transfer learning), and the learning curve and confusion matrix
as PNGs, plus a JSON report.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
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


def _spectrogram(path: str) -> np.ndarray:
    from vibrary.daemon.decode import decode
    from vibrary.daemon.spectrogram import SpectrogramParams, log_mel, quantize

    params = SpectrogramParams()
    return quantize(log_mel(decode(path, params), params), params)


def load_corpus(corpus: Path, jobs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(codes, labels, source groups, sources), computing and caching the spectrograms once."""
    from vibrary.daemon.spectrogram import SpectrogramParams

    with open(corpus / "provenance.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    cache = corpus / f"spectrograms-{SpectrogramParams().key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            codes = z["codes"]
    else:
        started = time.monotonic()
        with ProcessPoolExecutor(jobs) as pool:
            codes = np.stack(list(pool.map(_spectrogram, [str(corpus / r["path"]) for r in rows], chunksize=32)))
        np.savez(cache, codes=codes)
        print(f"spectrograms of {len(rows)} clips in {time.monotonic() - started:.0f} s", file=sys.stderr)
    labels = np.array([CLASSES.index(r["class"]) for r in rows])
    groups = np.array([r["source_group"] for r in rows])
    sources = np.array([r["source"] for r in rows])
    return codes, labels, groups, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder for all outputs (default: the package)")
    parser.add_argument("--holdout", default="", help="a source_group to leave out entirely and test on")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch
    from vibrary.daemon.shards import Manifest
    from vibrary.daemon.spectrogram import SpectrogramParams, dequantize
    from vibrary.trainer import plots
    from vibrary.trainer.export import max_difference, save_base, to_onnx
    from vibrary.trainer.train import TrainConfig, train

    if args.holdout and args.out is None:
        raise SystemExit("--holdout needs --out: a fold's model must not replace the shipped one")
    codes, labels, groups, sources = load_corpus(args.corpus, args.jobs)
    test = groups == args.holdout if args.holdout else np.zeros(len(labels), bool)
    if args.holdout and not test.any():
        raise SystemExit(f"no source group {args.holdout!r}; groups: {sorted(set(groups))}")
    manifest = Manifest("demo", CLASSES, SpectrogramParams())
    config = TrainConfig(epochs=args.epochs, seed=args.seed, patience=8, val_fraction=0.15, batch_size=64)

    def progress(p: object) -> None:
        print(
            f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f} val {p.val_accuracy:.3f} eta {p.eta_s:.0f}s",  # type: ignore[attr-defined]
            file=sys.stderr,
            flush=True,
        )

    result = train(manifest, codes[~test], labels[~test], groups[~test], config, progress=progress)
    report: dict[str, object] = {
        "summary": result.summary(),
        "holdout": args.holdout,
        "train_sources": sorted(set(sources[~test])),
    }
    if args.holdout:
        with torch.no_grad():
            x = torch.from_numpy(dequantize(codes[test], manifest.params))
            predicted = torch.cat([result.net(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()
        truth = labels[test]
        report["holdout_accuracy"] = float((predicted == truth).mean())
        report["holdout_per_class"] = {
            CLASSES[c]: float((predicted[truth == c] == c).mean()) for c in sorted(set(truth))
        }
        report["holdout_clips"] = int(test.sum())

    out = args.out or ROOT
    onnx_path = out / "daemon" / "builtin" / "demo.onnx" if args.out is None else out / "demo.onnx"
    base_path = out / "trainer" / "builtin" / "demo.pt" if args.out is None else out / "demo.pt"
    docs = ROOT / "docs" if args.out is None else out
    for folder in (onnx_path.parent, base_path.parent, docs):
        folder.mkdir(parents=True, exist_ok=True)
    model = to_onnx(result, "demo")
    probe = dequantize(codes[:16], manifest.params)
    assert max_difference(result.net, model, probe) < 1e-4
    onnx_path.write_bytes(model)
    save_base(result, base_path)
    title = f"demo model: {len(CLASSES)} classes, {result.train_clips} training clips"
    (docs / "demo-learning-curve.png").write_bytes(plots.learning_curve(result.history, title))
    (docs / "demo-confusion.png").write_bytes(
        plots.confusion_matrix(result.confusion, CLASSES, "demo model (held-out source groups)")
    )
    (docs / "demo-report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
