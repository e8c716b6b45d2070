#!/usr/bin/env python3
"""Does a model of your own tags know which files are none of its tags? (docs/familiarity.md)

A user trains tags from ten examples each; the model's softmax gives every file of the library one of
them, so `vibrary search dark` used to find half the kicks. The exported model also says how familiar a
clip is (cosine similarity of its embedding to the nearest class centroid of the training clips) and the
familiarity that makes a clip one of its tags (trainer/train.py `familiarity`); the daemon leaves a file
out of searches when it is below. This script measures that bar on sets built only from allowed sources,
through the real path: vibrary.trainer.train.train (transfer from the demo model, the options `vibrary
train` passes: tags the demo knows, as all of these are, fitted from its rows of them; `--as-new` trains them
over epochs as `vibrary train --as-new` does, the only path of the rows made before stop 47), the ONNX export,
and the daemon's own Model.predict_familiar. `--share` sets the share of the examples below the bar for the run.

For each "user's tags" (a few classes of a set), seeds 0-2: ten training clips a class from the set's
training sources; then, on clips of sources never trained on,
- kept: the share of files of the user's tags that count as familiar (they stay findable);
- turned away: the share of files of the set's *other* classes that count as unfamiliar (before this,
  every one of them was a hit for one of the user's tags).

Sets: the 12 effects of docs/figure3.md (its cache, `scripts/figure3.py` builds it; test notes from other
soundfonts and programs) and the demo corpus's instruments (scripts/build_corpus.py; test clips from the
source groups of fold 0 of scripts/train_demo.py). Caveat for the instruments: the shipped demo model, the
base, heard those groups; the effects' test soundfonts were never played through effects in its training.

Usage: python scripts/familiarity_probe.py [--corpus /work/corpus] [--cache .figure3-cache] [--as-new] [--share S]
(~2 min on 2 cores; ~10 with --as-new)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

USER_TAGS = {
    "effects": [
        ["distortion", "chorus", "reverb"],
        ["clean", "bitcrush", "tremolo", "delay"],
        ["overdrive", "flanger", "phaser", "vibrato"],
    ],
    "instruments": [["piano", "organ", "strings"], ["kick", "snare", "hihat"], ["brass", "woodwind", "synth", "bass"]],
}


def sets(corpus: Path, cache: Path) -> dict[str, dict[str, np.ndarray | list[str]]]:
    import figure3
    import train_demo

    with np.load(cache / "effects.npz") as z:
        effects = {k: z[k] for k in ("codes", "labels", "test")}
    codes, labels, groups, _ = train_demo.load_corpus(corpus, 2)
    held = np.isin(groups, sorted(figure3.test_groups()))
    return {
        "effects": {**effects, "classes": figure3.EFFECTS},
        "instruments": {"codes": codes, "labels": labels, "test": held, "classes": list(train_demo.CLASSES)},
    }


def run(data: dict[str, np.ndarray | list[str]], tags: list[str], seed: int, as_new: bool) -> dict[str, object]:
    from vibrary.daemon.infer import Model
    from vibrary.daemon.shards import Manifest
    from vibrary.daemon.spectrogram import SpectrogramParams, dequantize
    from vibrary.daemon.training import TRANSFER_DEFAULTS
    from vibrary.trainer import train as training
    from vibrary.trainer.export import load_base, to_onnx
    from vibrary.trainer.known import load as load_known
    from vibrary.trainer.train import TrainConfig, train

    classes, codes, labels, test = data["classes"], data["codes"], data["labels"], data["test"]
    assert isinstance(classes, list) and isinstance(codes, np.ndarray)
    assert isinstance(labels, np.ndarray) and isinstance(test, np.ndarray)
    ids = [classes.index(t) for t in tags]
    picked = [np.random.default_rng([seed, i]).permutation(np.flatnonzero((labels == i) & ~test))[:10] for i in ids]
    idx = np.concatenate(picked)
    own = np.concatenate([np.full(len(p), k) for k, p in enumerate(picked)])
    base, base_name = load_base("demo")
    config = TrainConfig.from_dict({"seed": seed, **TRANSFER_DEFAULTS, **({"known_pull": 0.0} if as_new else {})})
    params = SpectrogramParams()
    result = train(
        Manifest("probe", tags, params),
        codes[idx],
        own,
        np.array(["a"] * len(idx)),
        config,
        base,
        base_name,
        known=load_known("demo"),  # as trainer/pipeline.py passes them: fitted from its rows, but --as-new
    )
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(to_onnx(result, "probe"))
        f.flush()
        model = Model(f.name, threads=2)
    trial = np.flatnonzero(test)
    scores, familiar = [], []
    for start in range(0, len(trial), 256):
        s, fam = model.predict_familiar(dequantize(codes[trial[start : start + 256]], params))
        scores.append(s)
        familiar.append(fam)
    fam = np.concatenate(familiar)
    best = np.concatenate(scores).argmax(1)
    mine = np.isin(labels[trial], ids)
    truth = np.array([ids.index(v) if v in ids else -1 for v in labels[trial]])
    return {
        "tags": tags,
        "seed": seed,
        "path": "as new" if as_new else "known rows",
        "share": training.UNFAMILIAR_EXAMPLES,  # of the examples below the bar
        "bar": round(result.familiar_from, 4),
        "kept": float(fam[mine].mean()),
        "turned_away": float((~fam[~mine]).mean()),
        "accuracy": float((best[mine] == truth[mine]).mean()),
        "accuracy_of_kept": float((best[mine & fam] == truth[mine & fam]).mean()) if (mine & fam).any() else 0.0,
        "turned_away_by_class": {
            classes[c]: round(float((~fam[labels[trial] == c]).mean()), 3)
            for c in sorted(set(labels[trial]))
            if c not in ids
        },
        "own_files": int(mine.sum()),
        "other_files": int((~mine).sum()),
    }


def table(runs: list[dict[str, object]]) -> str:
    """Means over the seeds, (min–max) in brackets: the table of docs/familiarity.md."""
    lines = [
        "| set | the user's tags | kept: files of those tags | turned away: files of the set's other classes"
        " | top-1 accuracy on those tags' files | on those kept |",
        "|---|---|---|---|---:|---:|",
    ]
    for name, subsets in USER_TAGS.items():
        for tags in subsets:
            rs = [r for r in runs if r["set"] == name and r["tags"] == tags]
            cells = []
            for key in ("kept", "turned_away", "accuracy", "accuracy_of_kept"):
                v = [float(r[key]) for r in rs]  # type: ignore[arg-type]
                spread = f" ({min(v):.2f}–{max(v):.2f})" if key in ("kept", "turned_away") else ""
                cells.append(f"{np.mean(v):.2f}{spread}")
            lines.append(f"| {name} | {', '.join(tags)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--cache", type=Path, default=ROOT / ".figure3-cache")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, help="default: docs/familiarity.json, -as-new.json with --as-new, -share.json")
    ap.add_argument("--report", action="store_true", help="only print the table of the runs in --out")
    ap.add_argument("--as-new", action="store_true", help="train as `vibrary train --as-new` does (over epochs)")
    ap.add_argument("--share", type=float, help="of the examples below the bar (UNFAMILIAR_EXAMPLES), for this run")
    args = ap.parse_args()
    if args.out is None:  # (a run with --as-new or --share overwrote the table the docs show as the default path)
        kind = "-as-new" if args.as_new else ""
        share = f"-share{round(args.share * 100):02d}" if args.share is not None else ""
        args.out = ROOT / "docs" / f"familiarity{kind}{share}.json"
    if args.report:
        print(table(json.loads(args.out.read_text())))
        return 0
    import torch
    from vibrary.trainer import train as training

    torch.set_num_threads(2)
    if args.share is not None:
        training.UNFAMILIAR_EXAMPLES = args.share
    data = sets(args.corpus, args.cache)
    runs = []
    for name, subsets in USER_TAGS.items():
        for tags in subsets:
            for seed in map(int, args.seeds.split(",")):
                r = run(data[name], tags, seed, args.as_new) | {"set": name}
                runs.append(r)
                print(json.dumps(r), flush=True)
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
