#!/usr/bin/env python3
"""Which of the demo body's layers tells the 12 effects of docs/figure3.md apart from 10 examples a class?

A linear probe: the base's weights frozen, each clip's activations after each convolution block pooled over
time (mean, max, deviation: what the embedding reads from the last block), standardised on the training
clips, and a logistic regression (L2, LBFGS) fitted on 10 clips a class; accuracy on the figure's test clips
(other soundfonts, other programs), seeds 0-2 as the figure draws them. It asks whether the transfer head
should read earlier layers than the embedding (effects are textures: distortion, modulation, echoes); the
answer is in docs/figure3.md ("Stop 24").

Usage: python scripts/layer_probe.py [--cache .figure3-cache] [--base demo]   (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"embedding": ["embedding"], "block 2": ["block 2"], "block 3": ["block 3"], "block 4": ["block 4"]}
LAYERS["blocks 3-4"] = ["block 3", "block 4"]
LAYERS["blocks 2-4 + embedding"] = ["block 2", "block 3", "block 4", "embedding"]


def activations(codes: np.ndarray, base: str) -> dict[str, np.ndarray]:
    """Each block's time-pooled activations and the embedding, for every clip."""
    from vibrary.daemon.spectrogram import SpectrogramParams, dequantize
    from vibrary.trainer.export import load_net
    from vibrary.trainer.network import pool_time

    net = load_net(base, strict=False)  # an auxiliary head of the demo's training is not part of it
    net.eval()
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(codes), 64):
            x = torch.from_numpy(dequantize(codes[start : start + 64], SpectrogramParams()))
            out.setdefault("embedding", []).append(net.embedding(x).numpy())
            f, block = net.scaled(x), 0
            for layer in net.features:
                f = layer(f)
                if isinstance(layer, torch.nn.ELU):
                    block += 1
                    out.setdefault(f"block {block}", []).append(pool_time(f).flatten(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def probe(x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, l2: float) -> float:
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-4
    xt, xe = (torch.from_numpy((x[i] - mu) / sd).float() for i in (train, test))
    y = torch.from_numpy(labels[train]).long()
    w = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = F.cross_entropy(xt @ w + b, y) + l2 * w.square().sum()
        value.backward()
        return value

    opt.step(loss)
    return float(((xe @ w + b).argmax(1).numpy() == labels[test]).mean())


def main() -> None:
    import figure3  # scripts/ is on sys.path when a script runs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".figure3-cache")
    ap.add_argument("--base", default="demo")
    args = ap.parse_args()
    data = figure3.build_effects(args.cache)
    acts = activations(data["codes"], args.base)
    test = np.flatnonzero(data["test"])
    print("| layers read | features | L2 0.001 | L2 0.01 | L2 0.1 |\n|---|---:|---:|---:|---:|")
    for name, keys in LAYERS.items():
        x = np.concatenate([acts[k] for k in keys], axis=1)
        cells = []
        for l2 in (1e-3, 1e-2, 1e-1):
            accs = [probe(x, data["labels"], figure3.draw(data, 10, seed), test, l2) for seed in (0, 1, 2)]
            cells.append(f"{np.mean(accs):.3f} ({min(accs):.3f}–{max(accs):.3f})")
        print(f"| {name} | {x.shape[1]} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
