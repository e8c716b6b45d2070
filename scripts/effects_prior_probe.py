#!/usr/bin/env python3
"""How far would a head that already knows the 12 effects of docs/figure3.md take a user's ten clips a class?

The demo body was trained beside a second head on the effects corpus (`scripts/build_effects_corpus.py`:
FluidR3 notes of even programs through 17 effects, sox's and pedalboard's renderings), and that head is not
shipped. This probe fits its stand-in, a logistic regression on the shipped body's frozen embedding over the
corpus clips of the figure's 12 classes (L2 0.001, LBFGS), and measures on the figure's test clips (other
soundfonts, other programs, the figure's own renderings):

- the prior alone, with no example of the user's;
- the figure's transfer recipe (`run_one`, as `vibrary train` trains) from 10 clips a class, its head started
  from the prior instead of imprinted class means, seeds 0-2, with each of the transfer options given.

It asks whether shipping such a head, for tags named like its classes, is worth it (docs/figure3.md, "Stop 26").

Usage: python scripts/effects_prior_probe.py [--corpus /work/fxcorpus/effects.npz] [--options '{}' ...]
(a minute for the prior; 30-150 s a training on 2 cores)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def prior(corpus: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (classes, embedding), bias) of a logistic regression on the frozen embedding, standardisation
    folded in, so that `embedding @ weight.T + bias` are its logits."""
    import layer_probe  # scripts/ is on sys.path when a script runs

    fx = np.load(corpus)
    names = [str(c) for c in fx["classes"]]
    keep = np.isin(fx["labels"], [names.index(c) for c in classes])
    y = torch.from_numpy(np.array([classes.index(names[i]) for i in fx["labels"][keep]])).long()
    e = layer_probe.activations(fx["codes"][keep], "demo")["embedding"]
    mu, sd = e.mean(0), e.std(0) + 1e-4
    x = torch.from_numpy((e - mu) / sd).float()
    w = torch.zeros(e.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(x @ w + b, y) + 1e-3 * w.square().sum()
        value.backward()
        return value

    opt.step(loss)
    weight = (w.detach() / torch.from_numpy(sd).float()[:, None]).T.contiguous()
    bias = b.detach() - torch.from_numpy(mu / sd).float() @ w.detach()
    return weight, bias


def main() -> None:
    import figure3
    import layer_probe
    import vibrary.trainer.train as trainer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".figure3-cache")
    ap.add_argument("--corpus", type=Path, default=Path("/work/fxcorpus/effects.npz"))
    ap.add_argument("--options", nargs="*", default=["{}"], help="transfer options (JSON) to train with, each")
    args = ap.parse_args()
    classes = list(figure3.EFFECTS)
    data = figure3.build_effects(args.cache)
    weight, bias = prior(args.corpus, classes)
    test = np.flatnonzero(data["test"])
    embedded = torch.from_numpy(layer_probe.activations(data["codes"][test], "demo")["embedding"])
    alone = float(((embedded @ weight.T + bias).argmax(1).numpy() == data["labels"][test]).mean())
    print(f"prior alone: {alone:.3f}", flush=True)

    imprint = trainer._imprint

    def from_prior(net: trainer.TagNet, *a: Any, **k: Any) -> None:
        imprint(net, *a, **k)  # its batch-norm recalibration on the user's clips stays
        with torch.no_grad():
            net.head.weight.copy_(weight)
            net.head.bias.copy_(bias)

    trainer._imprint = from_prior
    for options in args.options:
        accs = [figure3.run_one(data, classes, 10, seed, "demo", json.loads(options))["accuracy"] for seed in (0, 1, 2)]
        print(f"10 a class from the prior, {options}: {np.mean(accs):.3f} ({', '.join(f'{a:.3f}' for a in accs)})")


if __name__ == "__main__":
    main()
