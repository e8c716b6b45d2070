#!/usr/bin/env python3
"""Fit the rows of the effect classes the demo model knows, into trainer/builtin/demo-known.json (with
--instruments, as shipped: its own 15 instrument classes beside them, its head's rows as they are).

A logistic regression (L2 0.001 in the standardised space) on the shipped demo body's frozen embedding of
every clip of the effects corpus (`scripts/build_effects_corpus.py`: 17 effects, which the body was trained
beside); the trainer starts a user's dataset of those tags from its rows (trainer/known.py). Rerun after
every retrain of the demo (`scripts/train_demo.py` does, after training with --effects): the file names the
demo.pt it was fitted on, and is ignored for any other.
Deterministic (LBFGS, no sampling); about two minutes on 2 cores.

Usage: python scripts/fit_known.py --effects /work/fxcorpus/effects.npz --instruments
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from vibrary.daemon.spectrogram import SpectrogramParams, dequantize
from vibrary.trainer import known
from vibrary.trainer.export import load_net
from vibrary.trainer.train import _embedded

L2 = 1e-3  # per clip, as the figure's probes fitted it (docs/figure3.md, "Stop 26")
# other names of the classes, as sample packs and effect plug-ins write them (matched as trainer/known.py's _key,
# so "ring mod" and "low-pass" need none; "vib" and "comp" are left out: vibes (vibraphone) and comping)
ALIASES = {
    "dry": "clean", "nofx": "clean", "unprocessed": "clean", "bypass": "clean",
    "dist": "distortion", "distorted": "distortion",
    "od": "overdrive", "overdriven": "overdrive", "drive": "overdrive",
    "bitcrusher": "bitcrush", "bitcrushed": "bitcrush", "crusher": "bitcrush",
    "ring modulator": "ringmod", "ring modulation": "ringmod",
    "chorused": "chorus", "flange": "flanger", "flanged": "flanger", "phased": "phaser", "phasing": "phaser",
    "trem": "tremolo",
    "verb": "reverb", "reverberation": "reverb",
    "echo": "delay", "feedback delay": "delay", "slapback": "delay",
    "lpf": "lowpass", "hpf": "highpass", "bpf": "bandpass",
    "reversed": "reverse", "compression": "compressor", "compressed": "compressor",
}  # fmt: skip
INSTRUMENT_ALIASES = {
    "bd": "kick", "bassdrum": "kick", "kickdrum": "kick", "sd": "snare", "hh": "hihat", "hat": "hihat",
    "cym": "cymbal", "crash": "cymbal", "handclap": "clap", "gtr": "guitar",
    "string": "strings", "horn": "brass", "synthesizer": "synth", "vocal": "vocals",
    "vox": "vocals", "voice": "vocals",
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--effects", type=Path, required=True, help="effects.npz of scripts/build_effects_corpus.py")
    ap.add_argument("--base", default="demo", help="demo, or a checkpoint of train_demo.py (a fold's demo.pt)")
    ap.add_argument(
        "--instruments", action="store_true", help="the base's own 15 classes too, its head's rows as they are"
    )
    args = ap.parse_args()
    print(fit(args.effects, args.base, args.instruments))


def fit(effects: Path, base: str = "demo", instruments: bool = True) -> str:
    """Fit and write the base's known rows (beside its checkpoint, or the built-in demo's); what was written."""
    corpus = np.load(effects)
    classes = [str(c) for c in corpus["classes"]]
    net = load_net(base)
    params, codes = SpectrogramParams(), corpus["codes"]

    def batch(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(dequantize(codes[idx], params)), torch.from_numpy(corpus["labels"][idx]).long()

    embedded, labels = _embedded(net, np.arange(len(codes)), batch, 64)
    mean, scale = embedded.mean(0), embedded.std(0) + 1e-4
    zeros = torch.zeros(len(classes), embedded.shape[1]), torch.zeros(len(classes))
    loss, weight, bias = known.fit_head(embedded, labels, *zeros, mean, scale, L2 * len(labels))
    right = float(((embedded @ weight.T + bias).argmax(1) == labels).float().mean())
    families, aliases = ["effects"] * len(classes), dict(ALIASES)
    if instruments:  # the demo's head, trained on them: its logits, as the demo model tags with them
        import train_demo

        weight = torch.cat([weight, net.head.weight.detach()])
        bias = torch.cat([bias, net.head.bias.detach()])
        families += ["instruments"] * len(train_demo.CLASSES)
        classes += list(train_demo.CLASSES)
        aliases |= INSTRUMENT_ALIASES
    assert not set(aliases.values()) - set(classes), "an alias of a class the corpus does not have"
    keys = [known._key(name) for name in [*classes, *aliases]]
    assert len(set(keys)) == len(keys), "an alias spelled as a class or another alias (trainer/known.py's _key)"
    checkpoint = known.base_path(base)
    out = known.file_of(base)
    assert checkpoint is not None and out is not None
    fitted = {
        "base": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "classes": classes,
        "families": families,
        "aliases": aliases,
        **{k: v.tolist() for k, v in (("weight", weight), ("bias", bias), ("mean", mean), ("scale", scale))},
    }
    out.write_text(json.dumps(fitted) + "\n")  # float32's digits: read back as the same float32s
    return f"{out}: {len(classes)} classes, {len(labels)} clips, loss {loss:.3f}, right on them {right:.3f}"


if __name__ == "__main__":
    main()
