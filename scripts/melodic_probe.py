"""Quick probes of what makes the demo model's melodic classes generalise to an unheard sample bank.

    python scripts/melodic_probe.py --corpus /work/corpus --held musescore --arm base [--seed 1] [--epochs 13]

The leave-sources-out folds (`train_demo.py --folds`) take 35–40 minutes each on two CPU cores and move by
about as much between seeds as the recipe changes worth trying, so they cannot rank many ideas. A probe
is a smaller copy of their hardest question: the nine melodic classes only, from the three independent
melodic sample families (`fluidr3`, `musescore`, `opl3`), trained on two and tested on the third, with
the demo recipe (20 epochs, no effects head) at one torch thread: about 11 minutes. Every run appends its
result to `docs/melodic-probe.jsonl` (`docs/demo-model.md` reads them): accuracy, per class and (in the rows
after the first `mixstyle` one) `confusion`: counts, a row per true class, columns predicted, `MELODIC` order;
later rows also name the epochs and the corpus folder (`--corpus` may be another build: more clips per class,
or strummed guitars, which only `build_corpus.py --strum` at d4d5cf9 makes). `--held recorded` trains on all
three families and tests on the corpus's recordings that are unlike any bank's notes (`RECORDED`: real
guitar strums, espeak-ng speech). `--logits DIR` saves a run's logits of the test clips; `--ensemble
FILE...` trains nothing and scores the mean of such runs' class probabilities (a row with `members`).

Arms (each against `base`; `--seed` for the seed spread):
- `e40`: 40 epochs instead of 20 (the shipped model's loss was still falling at 20).
- `eq10`: the random EQ of `trainer/augment.py` at 10 dB instead of 4, with bumps of orders 4–6 added (each
  order's gain up to 10 / order dB): other banks differ most in spectral envelope, so a model that ignores
  more of it might transfer better.
- `layer-e10`, `layer-e20`: every training clip gets a layered twin, the sum in power of it and a clip of
  the same class from the other training family (share 0.3–0.7 each, then referenced to the maximum as
  the daemon does): blends between banks, a "new instrument"; 10 epochs (as many steps as `base`) or 20.
- `narrow`: half the widths (8→64): less capacity to memorise a bank.
- `mel6`: the mel shift of the augmentation three times as far (±6 bands instead of ±2), like resampling
  a sample to another pitch, which moves its formants.
- `synth2`: a fourth family in training, 130 notes per class synthesised from first principles
  (`scripts/synth_instruments.py`, no sample of any bank), 20 epochs. The rows of the arms `synth`,
  `synth-e14` and `synth-e40` (20, 14 and 40 epochs) were made with the family's first version, before it
  had chords and electric pianos (this script and `synth_instruments.py` at commit 907f794).
- `synth2-guitar`: the same family's guitars only (130 notes and strummed chords), the other classes as `base`.
- `fmix`: Freq-MixStyle (the DCASE device-generalisation trick): for half the batches, each clip's
  per-band mean and deviation over time are blended with another clip's (Beta(0.3, 0.3)), so the network
  meets spectral envelopes and band dynamics of clips it never heard together.
- `onset`: three clips in four keep their start (shifted at most a frame earlier), as the daemon feeds every
  file from its first sound; the fourth is moved later as before (up to a quarter of the clip). The trainer's
  default since stop 45 (`augment.LATE_SHARE`), so no arm of its own now: `base` rows made after stop 45's are
  this, and `late` is the earlier recipe, every clip's start drawn up to a quarter of the clip later. Stop 45's
  own 14 rows (`base`, `onset`, `powermix`, `onset-masksound`) were made at commit 83bb248, where `base` was
  today's `late`.
- `powermix`: mixup sums the two clips' powers (as two sounds played together do) and references the sum to
  its maximum, instead of blending dB values (which hides the quieter clip while its label stays).
- `onset-masksound`: `onset`, and SpecAugment's time masks fall where each clip sounds (a one-shot's masks fell
  on the silence after it half of the time, hiding nothing).
  The rows of `powermix` and `onset-masksound` were made with this script and `trainer/augment.py` at commit
  83bb248 (both lost points; their arms and switches are gone).
- `mixstyle`: MixStyle (Zhou et al., domain generalisation) on the feature maps after the first two
  blocks: per-channel mean and deviation blended between clips of a batch, half the batches, Beta(0.1, 0.1).

The rows of the arm `swa` (the weights averaged over the last half of the epochs, batch norm recomputed
for the average; no gain) were made with this script at commit 003c4b0: it hooked the per-epoch batch-norm
recomputation, which a training without validation no longer does (trainer/train.py).
Rows that name no `precision` were trained in float32 before the trainer's channels-last layout; later
ones name the precision of their training steps (`--precision`; `auto` is bfloat16 on this CPU), and
`options` any TrainConfig field set with `--set` (e.g. `--set lr=0.01`).

Each arm changes the trainer's augmentation or network only in this process (module attributes), so
nothing here changes what `vibrary train` does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import train_demo
from build_corpus import CLASSES

MELODIC = CLASSES[6:]  # piano … vocals, after the six drum classes
FAMILIES = ["fluidr3", "musescore", "opl3"]
# Recordings unlike any bank's notes: real strummed guitar chords and espeak-ng speech. `--held recorded`
# trains on all three families and tests on these (the folds' two lowest groups, 2 % and 14 %).
RECORDED = ["h2_guitarstrums", "espeak"]
ARMS = [
    "base",
    "e40",
    "eq10",
    "layer-e10",
    "layer-e20",
    "narrow",
    "mel6",
    "synth2",
    "synth2-guitar",
    "fmix",
    "mixstyle",
    "late",
]
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "melodic-probe.jsonl"


def layered(codes: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 7) -> np.ndarray:
    """One twin per clip: its power spectrum summed with a same-class clip of another family."""
    from vibrary.daemon.spectrogram import SpectrogramParams, dequantize, quantize

    params = SpectrogramParams()
    rng = np.random.default_rng(seed)
    twins = []
    for i in range(len(codes)):
        j = rng.choice(np.flatnonzero((labels == labels[i]) & (groups != groups[i])))
        share = rng.uniform(0.3, 0.7)
        power = share * 10 ** (dequantize(codes[i : i + 1], params)[0] / 10)
        power += (1 - share) * 10 ** (dequantize(codes[j : j + 1], params)[0] / 10)
        db = 10 * np.log10(np.maximum(power, 1e-10))
        twins.append(quantize(np.maximum(db - db.max(), -params.top_db), params))
    return np.stack(twins)


def _blend_stats(x: Any, dims: tuple[int, ...], alpha: float) -> Any:
    """x with its mean and deviation over `dims` blended with those of another clip of the batch."""
    import torch

    mu = x.mean(dim=dims, keepdim=True)
    sig = (x.var(dim=dims, keepdim=True) + 1e-6).sqrt()
    lam = torch.distributions.Beta(alpha, alpha).sample((len(x),) + (1,) * (x.dim() - 1)).to(x.device)
    order = torch.randperm(len(x))
    mixed_mu = lam * mu + (1 - lam) * mu[order]
    mixed_sig = lam * sig + (1 - lam) * sig[order]
    return (x - mu) / sig * mixed_sig + mixed_mu


def set_arm(arm: str) -> None:
    """Change the trainer's augmentation or network for this process only."""
    import torch
    from vibrary.trainer import augment, network
    from vibrary.trainer import train as training

    if arm == "eq10":
        augment.EQ_DB = 10.0
        augment.EQ_ORDERS = 6
    elif arm == "narrow":
        network.WIDTHS = (8, 16, 32, 64)
    elif arm == "fmix":
        plain = training.augment

        def freq_mixed(x: Any, floor: float, generator: Any, masks: bool = True) -> Any:
            x = plain(x, floor, generator, masks)
            if float(torch.rand(())) < 0.5:
                x = _blend_stats(x, (1, 3), 0.3).clamp(floor, 0.0)  # per mel band, over channels and time
            return x

        training.augment = freq_mixed
    elif arm == "mixstyle":

        class MixStyle(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                if not self.training or float(torch.rand(())) >= 0.5:
                    return x
                return _blend_stats(x, (2, 3), 0.1)

        class StyledNet(network.TagNet):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                layers: list[torch.nn.Module] = list(self.get_submodule("features").children())
                ends = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.MaxPool2d)][:2]
                for end in reversed(ends):
                    layers.insert(end + 1, MixStyle())
                self.features = torch.nn.Sequential(*layers)

        training.TagNet = StyledNet
    elif arm == "mel6":
        augment.MEL_SHIFT = 6.0
    elif arm == "late":
        augment.LATE_SHARE = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--held", choices=[*FAMILIES, "recorded"], required=True, help="what to test on")
    parser.add_argument("--arm", choices=ARMS, default="base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="instead of the arm's (20; 40 for e40, 10 for layer-e10)")
    parser.add_argument("--precision", default="auto", help="of the training steps: auto, float32 or bfloat16")
    parser.add_argument(
        "--set", action="append", default=[], metavar="OPTION=VALUE", help="a TrainConfig option over the recipe's"
    )
    parser.add_argument("--logits", type=Path, help="save the test clips' logits in this folder")
    parser.add_argument("--ensemble", type=Path, nargs="+", help="score the mean of these runs' saved logits")
    args = parser.parse_args()

    import torch
    from vibrary.daemon.shards import Manifest
    from vibrary.daemon.spectrogram import SpectrogramParams
    from vibrary.trainer.train import train

    torch.set_num_threads(1)
    set_arm(args.arm)
    codes, labels, groups, _ = train_demo.load_corpus(args.corpus, 1)
    keep = np.isin(groups, FAMILIES + RECORDED) & (labels >= len(CLASSES) - len(MELODIC))
    codes, labels, groups = codes[keep], labels[keep] - (len(CLASSES) - len(MELODIC)), groups[keep]
    test = np.isin(groups, RECORDED if args.held == "recorded" else [args.held])
    train_on = ~test & np.isin(groups, FAMILIES)
    if args.ensemble:  # the mean of the members' class probabilities; the arm names the members' arm
        from scipy.special import softmax

        mean = np.mean([softmax(np.load(path), axis=1) for path in args.ensemble], axis=0)
        return report(args, mean, labels[test], {"members": [p.stem for p in args.ensemble]}, {})
    x, y, g = codes[train_on], labels[train_on], groups[train_on]
    epochs = args.epochs or {"layer-e10": 10, "e40": 40}.get(args.arm, 20)
    if args.arm.startswith("layer"):
        x, y, g = np.concatenate([x, layered(x, y, g)]), np.concatenate([y, y]), np.concatenate([g, g])
    if args.arm.startswith("synth"):
        import synth_instruments

        assert synth_instruments.CLASSES == MELODIC
        with np.load(synth_instruments.build(args.corpus.parent / "synth-instruments", 130, 0)) as z:
            extra_x, extra_y = z["codes"], z["labels"]  # each read of an npz member unpacks it again
        if args.arm == "synth2-guitar":
            guitars = extra_y == MELODIC.index("guitar")
            extra_x, extra_y = extra_x[guitars], extra_y[guitars]
        x, y = np.concatenate([x, extra_x]), np.concatenate([y, extra_y])
        g = np.concatenate([g, np.full(len(extra_y), "synth")])
    options = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = replace(train_demo.recipe(epochs, args.seed, args.precision), **options)
    started = time.monotonic()
    result = train(Manifest("probe", MELODIC, SpectrogramParams()), x, y, g, config)
    scores = train_demo.logits(result.net, codes[test])
    if args.logits:  # for ensembles of runs, scored afterwards (`--ensemble`)
        args.logits.mkdir(parents=True, exist_ok=True)
        np.save(args.logits / f"{args.held}-{args.arm}-{args.seed}-e{epochs}-{args.corpus.name}.npy", scores)
    truth = labels[test]
    run = {"seed": args.seed, "epochs": epochs, "corpus": args.corpus.name, "precision": args.precision}
    run |= {"options": options} if options else {}
    return report(args, scores, truth, run, {"train_clips": len(x), "seconds": round(time.monotonic() - started)})


def report(
    args: argparse.Namespace, scores: np.ndarray, truth: np.ndarray, run: dict[str, Any], cost: dict[str, Any]
) -> int:
    """Print the row of a run (or of an ensemble of runs' logits) and append it to RESULTS."""
    predicted = scores.argmax(1)
    row = {
        "held": args.held,
        "arm": args.arm,
        **run,
        "accuracy": round(float(np.mean(predicted == truth)), 4),
        "per_class": {
            c: round(float(np.mean(predicted[truth == i] == i)), 3) for i, c in enumerate(MELODIC) if np.any(truth == i)
        },
        "confusion": [np.bincount(predicted[truth == i], minlength=len(MELODIC)).tolist() for i in range(len(MELODIC))],
        **cost,
    }
    print(json.dumps(row), flush=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
