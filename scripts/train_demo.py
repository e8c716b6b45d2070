"""Train the built-in 15-instrument demo model from the corpora that scripts/build_corpus.py and
scripts/build_effects_corpus.py render, and validate its recipe leave-sources-out.

    python scripts/train_demo.py --corpus /work/corpus --effects /work/fxcorpus/effects.npz   # ship it
    python scripts/train_demo.py --corpus /work/corpus --effects … --folds --out /work/loso80  # validate
    python scripts/train_demo.py --corpus /work/corpus --effects … --holdout opl3 --out /tmp/opl3
    python scripts/train_demo.py … --folds --synth 130 --out /work/loso-synth   # + a synthesised family

Spectrograms are computed with the daemon's own decode + log-mel code (cached next to the corpus as
`spectrograms-<params key>.npz`), and the model is trained with the trainer's own `train()`, so the demo
model is fed exactly what the daemon computes. The effects corpus trains a second head on the same body
(`AuxTask`), which is not shipped: it keeps the body sensitive to what effects change, for transfer.

Validation never holds out random clips: `--folds` trains once per fold of FOLDS, each without whole
source groups (a soundfont, a drum kit, and the sources that share its recordings: the `source_group`
column), and tests on them; every group is held out exactly once, so every clip is predicted once by a
model that never heard its source. The shipped model trains on every clip with the same recipe
(fixed epochs, no validation split).

Outputs (default --out: the package): daemon/builtin/demo.onnx (what the daemon runs),
trainer/builtin/demo.pt (the base for transfer learning), and the learning curve and confusion matrix
as PNGs, plus a JSON report.

`--synth N` adds N notes a melodic class of scripts/synth_instruments.py's family to every training (made
once next to the corpus, never held out or tested on): the open question of docs/demo-model.md's probes.

Each training (an hour or more on a CPU) saves every finished epoch: the same command run again after a
cut (a reboot, a closed session) goes on from there to the same model (`checkpoint.pt` in a fold's
folder, `demo.checkpoint.pt` when shipping; removed once the outputs are written).
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
from typing import TYPE_CHECKING, Any

import numpy as np
from build_corpus import CLASSES  # scripts/ is on sys.path: the model's classes, in their order

if TYPE_CHECKING:
    from vibrary.trainer.train import AuxTask, TrainConfig, TrainResult

ROOT = Path(__file__).resolve().parent.parent


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


# Leave-sources-out folds: every source group is held out once, and each fold keeps at least one
# independent melodic source in training (fluidr3, musescore, opl3 are never held out together).
FOLDS = [
    ["musescore", "h2_tr808", "h2_gimmeahand", "h2_guitarstrums"],
    ["opl3", "pearl_glenmacarthur", "espeak"],
    ["fluidr3", "avl_redzeppelin", "h2_circafrique"],
    ["h2_bja_pacific", "h2_hardelectro1"],
    ["h2_forzee", "h2_electricempire"],
]


EFFECTS_SOURCE = "fluidr3"  # the source group whose notes scripts/build_effects_corpus.py plays


def load_effects(path: Path | None) -> AuxTask | None:
    """The effects corpus as the trainer's AuxTask, or None."""
    if path is None:
        return None
    from vibrary.trainer.train import AuxTask

    with np.load(path) as z:
        # as many effect clips as instrument clips in every step: the effects corpus is the larger one
        return AuxTask(z["codes"], z["labels"].astype(np.int64), [str(c) for c in z["classes"]], share=1.0)


def logits(net: Any, codes: np.ndarray) -> np.ndarray:
    import torch
    from vibrary.daemon.spectrogram import SpectrogramParams, dequantize

    params = SpectrogramParams()
    net.eval()
    with torch.no_grad():
        return torch.cat(
            [net(torch.from_numpy(dequantize(codes[i : i + 256], params))) for i in range(0, len(codes), 256)]
        ).numpy()


def predict(net: Any, codes: np.ndarray) -> np.ndarray:
    return logits(net, codes).argmax(1)


def recipe(epochs: int, seed: int, precision: str = "auto") -> TrainConfig:
    """The demo model's training options: fixed epochs, every given clip trains (no validation split).
    Thousands of clips need less regularisation than a user's dozens (the TrainConfig defaults)."""
    from vibrary.trainer.train import TrainConfig

    return TrainConfig(
        epochs=epochs,
        seed=seed,
        val_fraction=0.0,
        batch_size=64,
        patience=epochs,
        dropout=0.1,
        head_dropout=0.3,
        precision=precision,
    )


def synthesised(per_class: int, corpus: Path) -> tuple[np.ndarray, np.ndarray]:
    """(codes, labels) of scripts/synth_instruments.py's family, made once next to the corpus: notes of the
    project's own synthesis, no sample of any bank. Training material only, never held out or tested on."""
    import synth_instruments

    with np.load(synth_instruments.build(corpus.parent / "synth-instruments", per_class, 0)) as z:
        codes, labels = z["codes"], z["labels"]
    return codes, np.array([CLASSES.index(synth_instruments.CLASSES[i]) for i in labels])


def train_on(
    args: argparse.Namespace,
    codes: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    checkpoint: Path,
    effects: bool = True,
) -> TrainResult:
    """The recipe, the same for the shipped model and every fold: fixed epochs, every given clip trains.
    An hour or more on a CPU: a run cut off goes on from its last epoch at `checkpoint` when started again."""
    from vibrary.daemon.shards import Manifest
    from vibrary.daemon.spectrogram import SpectrogramParams
    from vibrary.trainer.train import train

    if args.synth:
        extra_codes, extra_labels = synthesised(args.synth, args.corpus)
        codes, labels = np.concatenate([codes, extra_codes]), np.concatenate([labels, extra_labels])
        groups = np.concatenate([groups, np.full(len(extra_labels), "synth")])
    manifest = Manifest("demo", CLASSES, SpectrogramParams())
    config = recipe(args.epochs, args.seed, args.precision)

    def progress(p: Any) -> None:
        print(f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f} eta {p.eta_s:.0f}s", file=sys.stderr, flush=True)

    aux = load_effects(args.effects) if effects else None
    return train(manifest, codes, labels, groups, config, progress=progress, aux=aux, checkpoint=checkpoint)


def run_fold(args: argparse.Namespace, held: list[str], out: Path) -> dict[str, object]:
    """Train without the `held` source groups, test on them; predictions and the fold's base go to `out`."""
    from vibrary.trainer.export import save_base

    codes, labels, groups, sources = load_corpus(args.corpus, args.jobs)
    unknown = set(held) - set(groups)
    if unknown:
        raise SystemExit(f"no source group {sorted(unknown)}; groups: {sorted(set(groups))}")
    test = np.isin(groups, held)
    # The effects corpus plays FluidR3 notes: a fold that holds FluidR3 out must not hear them there either.
    effects = EFFECTS_SOURCE not in held
    out.mkdir(parents=True, exist_ok=True)
    result = train_on(args, codes[~test], labels[~test], groups[~test], out / "checkpoint.pt", effects)
    predicted = predict(result.net, codes[test])
    save_base(result, out / "demo.pt")
    fold = {
        "held_out": held,
        "effects_head": bool(effects and args.effects),
        "synth_per_class": args.synth,
        "train_sources": sorted(set(sources[~test])),
        "summary": result.summary(),
        "index": np.flatnonzero(test).tolist(),
        "predicted": predicted.tolist(),
    }
    (out / "fold.json").write_text(json.dumps(fold))
    (out / "checkpoint.pt").unlink()
    return fold


def report(args: argparse.Namespace, folds: list[dict[str, object]]) -> dict[str, object]:
    """Per held-out source group and per class accuracy over all folds: each clip predicted once."""
    from vibrary.trainer import plots

    _, labels, groups, _ = load_corpus(args.corpus, args.jobs)
    predicted = np.full(len(labels), -1)
    for fold in folds:
        predicted[np.array(fold["index"], int)] = np.array(fold["predicted"], int)
    done = predicted >= 0
    right = predicted == labels
    per_group = {g: round(float(right[groups == g].mean()), 4) for g in sorted(set(groups[done]))}
    per_class = {c: round(float(right[done & (labels == i)].mean()), 4) for i, c in enumerate(CLASSES)}
    confusion = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    np.add.at(confusion, (labels[done], predicted[done]), 1)
    result = {
        "folds": [{k: v for k, v in f.items() if k not in ("index", "predicted")} for f in folds],
        "mean_over_groups": round(float(np.mean(list(per_group.values()))), 4),
        "pooled": round(float(right[done].mean()), 4),
        "per_group": per_group,
        "per_group_clips": {g: int((groups == g).sum()) for g in per_group},
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
    if args.partial:  # some folds only: no figure of the whole
        (args.out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
        return result
    docs = ROOT / "docs"  # the documented result (docs/demo-model.md)
    (docs / "demo-loso.json").write_text(json.dumps(result, indent=1) + "\n")
    (docs / "demo-confusion.png").write_bytes(
        plots.confusion_matrix(confusion, CLASSES, "demo model, leave-sources-out (every clip from an unheard source)")
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--effects", type=Path, default=None, help="effects.npz of scripts/build_effects_corpus.py")
    parser.add_argument("--out", type=Path, default=None, help="folder for all outputs (default: the package)")
    parser.add_argument("--holdout", default="", help="source groups (comma-separated) to leave out and test on")
    parser.add_argument("--folds", action="store_true", help="every fold of FOLDS, then the report")
    parser.add_argument(
        "--fold", type=int, default=None, help="only this fold of FOLDS (0-based): run folds in parallel"
    )
    parser.add_argument("--report", action="store_true", help="train nothing: the report from the folds in --out")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with --report: of the folds trained so far, into OUT/report.json (docs/ are written from all five)",
    )
    # 80: over the five folds 68.3 % against 67.2 % at 40 and 63.9 % at 20 (docs/demo-model.md)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synth", type=int, default=0, help="train with this many notes a melodic class of synth_instruments.py too"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--precision", default="auto", help="of the training steps: auto, float32 or bfloat16")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    validating = args.holdout or args.folds or args.fold is not None or args.report
    if validating and args.out is None:
        raise SystemExit("validation needs --out: a fold's model must not replace the shipped one")
    if args.holdout:
        fold = run_fold(args, args.holdout.split(","), args.out)
        print(json.dumps({k: v for k, v in fold.items() if k not in ("index", "predicted")}))
        return 0
    if validating:
        chosen = range(len(FOLDS)) if args.fold is None else [args.fold]
        if not args.report:
            for k in chosen:
                run_fold(args, FOLDS[k], args.out / f"fold-{k}")
        if args.fold is not None and not args.report:
            return 0
        paths = [args.out / f"fold-{k}" / "fold.json" for k in range(len(FOLDS))]
        missing = [str(p) for p in paths if not p.exists()]
        if args.partial:
            paths = [p for p in paths if p.exists()]
        elif missing:
            raise SystemExit(f"folds not trained yet: {missing} (--partial reports those there are)")
        print(
            json.dumps(
                {k: v for k, v in report(args, [json.loads(p.read_text()) for p in paths]).items() if k != "folds"}
            )
        )
        return 0
    return ship(args)


def ship(args: argparse.Namespace) -> int:
    """Train on every clip and write the model into the package (or --out)."""
    from vibrary.daemon.spectrogram import SpectrogramParams, dequantize
    from vibrary.trainer import plots
    from vibrary.trainer.export import exported, max_difference, save_base, to_onnx

    codes, labels, groups, sources = load_corpus(args.corpus, args.jobs)
    out = args.out or ROOT
    checkpoint = out / "demo.checkpoint.pt"  # gitignored: a cut-off run's, never shipped
    result = train_on(args, codes, labels, groups, checkpoint)
    onnx_path = out / "daemon" / "builtin" / "demo.onnx" if args.out is None else out / "demo.onnx"
    base_path = out / "trainer" / "builtin" / "demo.pt" if args.out is None else out / "demo.pt"
    docs = ROOT / "docs" if args.out is None else out
    for folder in (onnx_path.parent, base_path.parent, docs):
        folder.mkdir(parents=True, exist_ok=True)
    # the demo names the nearest of its 15 instruments for any sound, as it always has: the familiarity bar
    # of a model of one's own tags (docs/familiarity.md) would hide sounds of unheard sources from searches
    result.centroids = None
    model = to_onnx(result, "demo")
    assert max_difference(exported(result), model, dequantize(codes[:16], SpectrogramParams())) < 1e-4
    onnx_path.write_bytes(model)
    save_base(result, base_path)
    title = f"demo model: {len(CLASSES)} classes, {result.train_clips} training clips"
    label = "training loss (instrument + effect heads)" if args.effects else "training loss"
    (docs / "demo-learning-curve.png").write_bytes(plots.learning_curve(result.history, title, label))
    summary = {
        "summary": result.summary(),
        "train_sources": sorted(set(sources)),
        "synth_per_class": args.synth,
        "history": result.history,
    }
    (docs / "demo-report.json").write_text(json.dumps(summary, indent=1) + "\n")
    checkpoint.unlink()
    print(json.dumps(summary))
    if args.effects:  # its known rows, fitted on this body: left to a second command, they were forgotten
        import fit_known

        print(fit_known.fit(args.effects, "demo" if args.out is None else str(base_path), instruments=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
