#!/usr/bin/env python3
"""Reproduce Figure 3 of the seed paper (test accuracy against examples per class) for an instrument set
and a 12-effect set built only from the allowed sources, with Vibrary's own trainer.

Why a script and not a benchmark: the numbers feed `vibrary train`'s advice on how many examples a user
needs (daemon/builtin/examples_curve.json), so they must be rebuilt the same way whenever the trainer
changes. Test clips always come from sources the training clips never come from (see docs/figure3.md):

- instruments: clips of /work/corpus (scripts/build_corpus.py); the test set is the source groups of the
  first leave-sources-out fold of scripts/train_demo.py, training draws from every other group, and the
  transfer runs start from that fold's model (--instrument-base), which never heard the test sources;
- effects: sustained notes rendered with FluidSynth, an effect applied with pedalboard or numpy; training
  notes come from FluidR3 GM (even GM programs), test notes from MuseScore General and the OPL3 FM bank
  (odd GM programs), so neither the soundfont nor the instrument of a test note was ever trained on.

Everything is drawn from fixed seeds over sorted inputs; rendered spectrograms are cached (as the
daemon's 8-bit codes) under --cache and finished runs in runs.jsonl there, so a rerun only trains what is
missing. Training calls vibrary.trainer.train.train in-process: the code path of `vibrary train`.

Usage: python scripts/figure3.py [--corpus /work/corpus] [--counts 1,2,5,10,20,50] [--seeds 0,1,2]
       python scripts/figure3.py --counts 10 --seeds 0 --sets effects --modes transfer --no-write  # one point
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC_PARAMS_SR = 44100

INSTRUMENTS = ["kick", "snare", "hihat", "cymbal", "tom", "clap", "piano", "guitar", "bass"]  # the demo's first 9
INSTRUMENT_FOLD = 0  # the fold of scripts/train_demo.py whose held-out groups are the instrument test set
EFFECTS = [
    "clean",
    "distortion",
    "overdrive",
    "bitcrush",
    "ringmod",
    "chorus",
    "flanger",
    "phaser",
    "tremolo",
    "vibrato",
    "reverb",
    "delay",
]
# Sustained-ish GM programs (0-based): pianos, organs, guitars, strings, brass, reeds/pipes, synth leads/pads.
NOTE_PROGRAMS = [*range(0, 6), *range(16, 21), *range(24, 32), *range(40, 52), *range(56, 80), *range(80, 96)]
TRAIN_SOUNDFONTS = ["/usr/share/sounds/sf2/FluidR3_GM.sf2"]
TEST_SOUNDFONTS = ["/usr/share/sounds/sf3/MuseScore_General_Full.sf3", "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2"]
EFFECT_TRAIN_POOL = 80  # rendered training clips per effect class; runs draw their n from these
EFFECT_TEST_PER_CLASS = 40
INSTRUMENT_TRAIN_POOL = 120
INSTRUMENT_TEST_PER_CLASS = 60
PAPER = {  # reference-facts.md, Figure 3 of the seed paper
    "instruments": {10: 0.77, 20: 0.84, 40: 0.89, 80: 0.93},
    "effects": {10: 0.21, 20: 0.23, 40: 0.27, 80: 0.43, 160: 0.71, 320: 0.85, 720: 0.90},
}


def test_groups() -> set[str]:
    import train_demo  # scripts/ is on sys.path when a script runs

    return set(train_demo.FOLDS[INSTRUMENT_FOLD])


# ---------------------------------------------------------------------------------------------------
# Effects: what each class does to a dry note (parameters drawn per clip, same ranges for train and test)
# ---------------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _mod_delay(x: np.ndarray, sr: int, base_ms: float, depth_ms: float, rate: float, phase: float) -> np.ndarray:
    """x delayed by base + depth·sin: a pitch wobble (vibrato) when heard alone."""
    t = np.arange(len(x))
    delay = (base_ms + depth_ms * np.sin(2 * np.pi * rate * t / sr + phase)) * sr / 1000
    return np.interp(t - delay, t, x, left=0.0)


# pedalboard effects: plugin and parameters, each drawn uniformly from (lo, hi) per clip or fixed
PEDALBOARD: dict[str, tuple[str, dict[str, tuple[float, float] | float]]] = {
    "distortion": ("Distortion", {"drive_db": (28, 40)}),
    "overdrive": ("Distortion", {"drive_db": (8, 16)}),
    "chorus": (
        "Chorus",
        {"rate_hz": (0.5, 2), "depth": (0.2, 0.5), "centre_delay_ms": (7, 15), "feedback": (0, 0.2), "mix": 0.5},
    ),
    "flanger": ("Chorus", {"rate_hz": (0.1, 1), "depth": (0.5, 1), "centre_delay_ms": (1, 3), "feedback": (0.5, 0.85)}),
    "phaser": (
        "Phaser",
        {
            "rate_hz": (0.3, 2),
            "depth": (0.6, 1),
            "centre_frequency_hz": (500, 2000),
            "feedback": (0.3, 0.7),
            "mix": (0.5, 1),
        },
    ),
    "reverb": (
        "Reverb",
        {"room_size": (0.6, 0.95), "damping": (0.2, 0.6), "wet_level": (0.3, 0.6), "dry_level": (0.5, 0.8)},
    ),
    "delay": ("Delay", {"delay_seconds": (0.12, 0.45), "feedback": (0.3, 0.6), "mix": (0.35, 0.55)}),
}


def apply_effect(name: str, x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    import pedalboard as pb

    t = np.arange(len(x)) / sr

    def board(plugin: Any) -> np.ndarray:
        return pb.Pedalboard([plugin])(x[None].astype(np.float32), sr)[0]

    if name in PEDALBOARD:
        plugin, ranges = PEDALBOARD[name]
        values = {k: v if isinstance(v, float) else _u(rng, *v) for k, v in ranges.items()}
        return board(getattr(pb, plugin)(**values))
    if name == "clean":
        return x
    if name == "bitcrush":
        hold = int(rng.integers(1, 6))
        crushed = board(pb.Bitcrush(bit_depth=_u(rng, 3, 6)))
        return np.repeat(crushed[::hold], hold)[: len(x)]
    if name == "ringmod":
        return x * np.sin(2 * np.pi * math.exp(_u(rng, math.log(80), math.log(1000))) * t)
    if name == "tremolo":
        depth, rate = _u(rng, 0.6, 1.0), _u(rng, 3, 10)
        return x * (1 - depth / 2 * (1 - np.sin(2 * np.pi * rate * t + _u(rng, 0, 2 * np.pi))))
    if name == "vibrato":
        return _mod_delay(x, sr, 5, _u(rng, 0.5, 2), _u(rng, 4, 8), _u(rng, 0, 2 * np.pi))
    raise ValueError(f"unknown effect {name!r}")


def effect_plan(seed: int = 3) -> list[dict[str, Any]]:
    """Every effect clip: class, split, soundfont, program, key, velocity, hold, and its own seed."""
    rng = np.random.default_rng(seed)
    jobs: list[dict[str, Any]] = []
    for split, fonts, count, parity in (
        ("train", TRAIN_SOUNDFONTS, EFFECT_TRAIN_POOL, 0),
        ("test", TEST_SOUNDFONTS, EFFECT_TEST_PER_CLASS, 1),
    ):
        programs = [p for p in NOTE_PROGRAMS if p % 2 == parity]
        for label, effect in enumerate(EFFECTS):
            for i in range(count):
                jobs.append(
                    {
                        "split": split,
                        "label": label,
                        "effect": effect,
                        "soundfont": fonts[i % len(fonts)],
                        "program": int(rng.choice(programs)),
                        "key": int(rng.integers(45, 73)),
                        "velocity": int(rng.integers(70, 121)),
                        "hold_s": _u(rng, 1.2, 2.6),
                        "seed": int(rng.integers(2**31)),
                    }
                )
    return jobs


def build_effects(cache: Path) -> dict[str, np.ndarray]:
    from vibrary.daemon.decode import fit
    from vibrary.daemon.spectrogram import SpectrogramParams, log_mel, quantize

    path = cache / "effects.npz"
    if path.exists():
        return dict(np.load(path))
    params = SpectrogramParams()
    import build_corpus  # its FluidSynth renderer, and its refusal of reserved sources

    renderer = build_corpus.FluidRenderer()
    codes, labels, test, groups = [], [], [], []
    plan = effect_plan()
    started = time.monotonic()
    for k, job in enumerate(plan):
        note = renderer.note(
            str(job["soundfont"]),
            0,
            int(job["program"]),
            int(job["key"]),
            int(job["velocity"]),
            float(job["hold_s"]),
            3.0,
        )
        dry = fit(note, renderer.sr, params)[0]
        dry = 0.5 * dry / max(1e-6, float(np.abs(dry).max()))
        wet = apply_effect(str(job["effect"]), dry, params.sample_rate, np.random.default_rng(int(job["seed"])))
        codes.append(quantize(log_mel(wet[None].astype(np.float32), params), params))
        labels.append(job["label"])
        test.append(job["split"] == "test")
        groups.append(f"{Path(str(job['soundfont'])).stem}/{job['program']}")
        if k % 200 == 0:
            print(f"  effects: {k}/{len(plan)} clips, {time.monotonic() - started:.0f} s", file=sys.stderr)
    data = {"codes": np.stack(codes), "labels": np.array(labels), "test": np.array(test), "groups": np.array(groups)}
    np.savez_compressed(path, codes=data["codes"], labels=data["labels"], test=data["test"], groups=data["groups"])
    return data


def build_instruments(cache: Path, corpus: Path) -> dict[str, np.ndarray]:
    """The corpus clips of INSTRUMENTS, split by source group; pools drawn with a fixed seed from sorted paths.
    The spectrograms are train_demo's, computed once for the whole corpus and cached beside it."""
    import train_demo

    held = test_groups()
    path = cache / f"instruments-{'+'.join(sorted(held))}.npz"  # a new test split is a new cache
    if path.exists():
        return dict(np.load(path))
    if not (corpus / "provenance.csv").exists():
        raise SystemExit(f"no corpus at {corpus}: build it with scripts/build_corpus.py (see docs/demo-model.md)")
    codes, classes, source_groups, sources = train_demo.load_corpus(corpus, os.cpu_count() or 1)
    in_test = np.isin(source_groups, sorted(held))
    rng = np.random.default_rng(5)
    picked, labels, test = [], [], []
    for label, name in enumerate(INSTRUMENTS):
        for is_test, cap in ((False, INSTRUMENT_TRAIN_POOL), (True, INSTRUMENT_TEST_PER_CLASS)):
            pool = np.flatnonzero((classes == train_demo.CLASSES.index(name)) & (in_test == is_test))
            chosen = pool[np.sort(rng.permutation(len(pool))[:cap])]
            picked += chosen.tolist()
            labels += [label] * len(chosen)
            test += [is_test] * len(chosen)
    idx = np.array(picked)
    data = {"codes": codes[idx], "labels": np.array(labels), "test": np.array(test), "groups": sources[idx]}
    np.savez_compressed(path, **data)
    return data


# ---------------------------------------------------------------------------------------------------
# Training and testing
# ---------------------------------------------------------------------------------------------------
def checkpoint_id(base: str, known: bool = True) -> str:
    """A base as runs.jsonl keys it: its name and the hash of its weights, so a retrained base reruns; and of
    the known rows shipped with it (trainer/known.py), which change how its transfer runs train (`known`
    False: a run that trains the tags as new, `--as-new`, which they do not change)."""
    import hashlib

    from vibrary.trainer import known as rows_of
    from vibrary.trainer.options import base_path

    path = base_path(base)
    if path is None:
        return base
    file = rows_of.file_of(base)
    with_rows = known and file is not None and rows_of.load(base) is not None
    rows = f"+known@{hashlib.sha256(file.read_bytes()).hexdigest()[:12]}" if with_rows and file else ""
    return f"{base}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}{rows}"


def recorded(base: str, done: dict[tuple[str, str, str, int, int], dict[str, Any]], known: bool = True) -> str:
    """The base's key, or where its checkpoint is gone (a fold trained on another machine, then removed) the
    one key its finished runs were kept under (with known rows or without, as asked, where it had both):
    the figure is redrawn from them."""
    try:
        return checkpoint_id(base, known)
    except FileNotFoundError:
        kept = {key[2] for key in done if key[2].split("@")[0] == base and not key[2].endswith(HALF)}
        plain = {k for k in kept if "+known@" not in k}
        chosen = (kept - plain or plain) if known else plain  # a base without rows: its runs are both
        if len(chosen) != 1:
            raise
        return chosen.pop()


HALF = "+half-known"  # a run key's suffix: the mode half-known


def half_known(classes: list[str]) -> list[str]:
    """Every second class named as the base does not know it (`own chorus`): a dataset of the user's own tags
    beside tags the demo knows, as the trainer takes it from the known rows (half of them known at least)."""
    return [f"own {c}" if i % 2 else c for i, c in enumerate(classes)]


def draw(data: dict[str, np.ndarray], n: int, seed: int) -> np.ndarray:
    """n training clips per class; a seed's smaller sets are the start of its larger ones."""
    picked = []
    for label in np.unique(data["labels"]):
        pool = np.flatnonzero((data["labels"] == label) & ~data["test"])
        order = np.random.default_rng([seed, int(label)]).permutation(pool)
        picked.append(order[:n] if n > 1 else np.repeat(order[:1], 2))  # the trainer needs 2: one clip twice
    return np.concatenate(picked)


def run_one(
    data: dict[str, np.ndarray],
    classes: list[str],
    n: int,
    seed: int,
    base_checkpoint: str,
    overrides: dict[str, object],
) -> dict[str, Any]:
    """One point: n clips per class, trained as `vibrary train` trains (base_checkpoint "none": scratch)."""
    from vibrary.daemon.shards import Manifest
    from vibrary.daemon.spectrogram import SpectrogramParams
    from vibrary.daemon.training import TRANSFER_DEFAULTS
    from vibrary.trainer.export import load_base
    from vibrary.trainer.known import load as load_known
    from vibrary.trainer.train import TrainConfig, train

    params = SpectrogramParams()
    idx = draw(data, n, seed)
    base, base_name = load_base(base_checkpoint)
    transfer = base is not None
    config = TrainConfig.from_dict({"seed": seed, **(TRANSFER_DEFAULTS if transfer else {}), **overrides})
    started = time.monotonic()
    result = train(
        Manifest("figure3", classes, params),
        data["codes"][idx],
        data["labels"][idx].astype(np.int64),
        data["groups"][idx],
        config,
        base,
        base_name,
        known=load_known(base_checkpoint),
    )
    import train_demo

    test = np.flatnonzero(data["test"])
    predicted = train_demo.predict(result.net, data["codes"][test])
    truth = data["labels"][test]
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    return {
        "n": n,
        "seed": seed,
        "mode": "transfer" if transfer else "scratch",
        "accuracy": float(np.mean(predicted == truth)),
        "per_class": {c: float(confusion[i, i] / max(1, confusion[i].sum())) for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "val_accuracy": result.val_accuracy,
        "train_seconds": round(time.monotonic() - started, 1),
    }


# each mode's label and colour in the figure, and its curve in daemon/builtin/examples_curve.json (a suffix of
# the set's name, read by daemon/advice.py; None: not there)
MODES = {
    "transfer": ("transfer, from its known rows", "tab:blue", ""),
    "half-known": ("transfer, half the tags unknown to it", "tab:cyan", " half known"),
    "as-new": ("transfer, tags as new", "tab:purple", " as new"),
    "scratch": ("scratch", "tab:orange", None),
}
Curves = dict[str, dict[str, dict[str, dict[str, float]]]]  # set → mode → n → mean / std / min / max / seeds


def summarize(runs: list[dict[str, Any]]) -> Curves:
    accs: dict[tuple[str, str, str], list[float]] = {}
    for r in runs:
        accs.setdefault((r["set"], r["mode"], str(r["n"])), []).append(float(r["accuracy"]))
    out: Curves = {}
    for (set_name, mode, n), values in accs.items():
        a = np.array(values)
        out.setdefault(set_name, {}).setdefault(mode, {})[n] = {
            "mean": round(float(a.mean()), 4),
            "std": round(float(a.std()), 4),
            "min": round(float(a.min()), 4),
            "max": round(float(a.max()), 4),
            "seeds": len(a),
        }
    return out


def plot(summary: Curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from vibrary.trainer.train import SMALL_CLASS

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.9), sharey=True)
    for ax, name in zip(axes, ("instruments", "effects"), strict=True):
        for mode, (label, colour, _) in MODES.items():
            curve = summary.get(name, {}).get(mode, {})
            ns = sorted(curve, key=int)
            if not ns:
                continue
            x = [int(n) for n in ns]
            mean = [curve[n]["mean"] for n in ns]
            ax.plot(x, mean, "o-", color=colour, label=f"Vibrary, {label} (mean of {curve[ns[0]]['seeds']} seeds)")
            ax.fill_between(x, [curve[n]["min"] for n in ns], [curve[n]["max"] for n in ns], color=colour, alpha=0.2)
        n_classes = len(INSTRUMENTS if name == "instruments" else EFFECTS)
        ax.axhline(1 / n_classes, ls=":", color="black", lw=0.8, label="chance")
        ax.axvline(SMALL_CLASS, ls=":", color="tab:green", lw=1, label=f"from {SMALL_CLASS}/class: validation split")
        ref = PAPER[name]
        ax.plot(list(ref), list(ref.values()), "s--", color="grey", label="seed paper, Figure 3")
        ax.set_xscale("log")
        ax.set_xlabel("training examples per class")
        ax.set_title(f"{name}: {n_classes} classes, unseen sources")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("test accuracy (shaded: min–max over seeds)")
    drawn: dict[str, Any] = {}  # one legend under both: inside, it hid curves
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            drawn.setdefault(label, handle)
    fig.legend(list(drawn.values()), list(drawn), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--cache", type=Path, default=ROOT / ".figure3-cache")
    ap.add_argument("--counts", default="1,2,5,10,20,50")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sets", default="instruments,effects")
    ap.add_argument(
        "--modes",
        default="transfer,half-known,as-new,scratch",
        help="as-new: transfer with the known rows unused; half-known: every second class renamed so that the base"
        " does not know it",
    )
    ap.add_argument("--config", default="{}", help="JSON TrainConfig overrides (experiments; not for the figure)")
    ap.add_argument("--tag", default="", help="experiment label kept in runs.jsonl (empty: the figure's runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--effects-base", default="demo", help="base of the effect transfer runs (default: the shipped model)"
    )
    ap.add_argument(
        "--instrument-base",
        default="/work/loso80/fold-0-stop29/demo.pt",
        help="base of the instrument transfer runs: fold 0 of the recipe (`train_demo.py --fold 0 --out DIR`), with its"
        " known rows beside it (`fit_known.py --base DIR/demo.pt --instruments`)",
    )
    ap.add_argument("--no-write", action="store_true", help="print results, write no docs")
    ap.add_argument("--plot-only", action="store_true", help="train nothing: write the docs from finished runs")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    builders: dict[str, tuple[Callable[[], dict[str, np.ndarray]], list[str]]] = {
        "instruments": (lambda: build_instruments(args.cache, args.corpus), INSTRUMENTS),
        "effects": (lambda: build_effects(args.cache), EFFECTS),
    }
    overrides = json.loads(args.config)
    bases = {"instruments": args.instrument_base, "effects": args.effects_base}
    log_path = args.cache / "runs.jsonl"
    done: dict[tuple[str, str, str, int, int], dict[str, Any]] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["tag"], r["set"], r.get("base", ""), r["n"], r["seed"])] = r
    runs: list[dict[str, Any]] = []
    counts = sorted((int(c) for c in args.counts.split(",")), key=lambda n: (n != 10, n))  # the goal's point first
    for set_name in args.sets.split(","):
        build, classes = builders[set_name]
        data = build()
        for n in counts:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for mode in args.modes.split(","):
                    base = "none" if mode == "scratch" else bases[set_name]
                    known = mode != "as-new"  # as `vibrary train --as-new`: the known rows are not used
                    config = overrides if known else {**overrides, "known_pull": 0}
                    base_id = recorded(base, done, known) if args.plot_only else checkpoint_id(base, known)
                    base_id += HALF if mode == "half-known" else ""
                    key = (args.tag, set_name, base_id, n, seed)
                    if key not in done and args.plot_only:
                        continue
                    if key not in done:
                        named = half_known(classes) if mode == "half-known" else classes
                        r = run_one(data, named, n, seed, base, config)
                        r.update(set=set_name, tag=args.tag, config=config, base=base_id)
                        with open(log_path, "a") as f:
                            f.write(json.dumps(r) + "\n")
                        done[key] = r
                    r = {**done[key], "mode": mode}  # a base without known rows: one run serves both transfers
                    runs.append(r)
                    worst = sorted(r["per_class"].items(), key=lambda kv: kv[1])[:3]
                    print(
                        f"{set_name:11s} {mode:8s} n={n:3d} seed={seed} acc={r['accuracy']:.3f} "
                        f"epochs={r['epochs_run']} ({r['train_seconds']} s) worst: "
                        + ", ".join(f"{c} {a:.2f}" for c, a in worst),
                        flush=True,
                    )
    summary = summarize(runs)
    print(
        json.dumps({s: {m: {n: v["mean"] for n, v in c.items()} for m, c in ms.items()} for s, ms in summary.items()})
    )
    if args.no_write:
        return 0
    today = datetime.date.today().isoformat()
    (ROOT / "docs" / "figure3.json").write_text(
        json.dumps(
            {
                "date": today,
                "command": "python scripts/figure3.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "instruments": INSTRUMENTS,
                "instrument_test_groups": sorted(test_groups()),
                "bases": bases,
                "effects": EFFECTS,
                "summary": summary,
                "paper": {k: {str(n): a for n, a in v.items()} for k, v in PAPER.items()},
                "runs": [{k: v for k, v in r.items() if k != "confusion"} for r in runs],
                "confusion_10_transfer": {
                    s: np.sum(
                        [r["confusion"] for r in runs if r["set"] == s and r["n"] == 10 and r["mode"] == "transfer"],
                        axis=0,
                    ).tolist()
                    for s in summary
                },
            },
            indent=1,
        )
        + "\n"
    )
    plot(summary, ROOT / "docs" / "figure3.png")
    curve: dict[str, object] = {
        f"{s}{suffix}": {n: v["mean"] for n, v in sorted(summary[s].get(mode, {}).items(), key=lambda kv: int(kv[0]))}
        for s in ("instruments", "effects")
        for mode, (_, _, suffix) in MODES.items()
        if suffix is not None and summary.get(s, {}).get(mode)
    }
    curve["source"] = f"docs/figure3.json, {today}"
    curve["classes"] = {"instruments": len(INSTRUMENTS), "effects": len(EFFECTS)}  # what the advice says of them
    path = ROOT / "daemon" / "builtin" / "examples_curve.json"  # the curves of sets and modes not run stay
    path.write_text(json.dumps({**json.loads(path.read_text()), **curve}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
