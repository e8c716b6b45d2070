#!/usr/bin/env python
"""End-to-end time of training your own tags: audio files on disk → an installed, active model.

    python benchmarks/bench_trainer.py [--classes 10] [--per-class 20] [--seed 0]
                                       [--base-checkpoint PATH] [--out docs/benchmarks-trainer.md]

1. a seeded set of 10 audio-effect classes (clean, distortion, bitcrush, tremolo, vibrato, chorus,
   flanger, reverb, echo, ring modulation) applied to synthesized harmonic notes: sounds the demo model
   was not trained on as classes (it knows 15 instruments), so transfer from it is a fair test;
2. twice, each on a fresh VIBRARY_HOME with the same files and seed: `vibrary dataset create --json`
   (spectrograms) + `vibrary train --json` (local trainer: upload, training, ONNX export, download,
   install), once from the demo model (`--base demo`, or `--base PATH` with --base-checkpoint) and once
   from scratch (`--base none`);
3. accuracy of each model on a held-out test set made with another seed, through `vibrary tag --json`.

The CLI runs as real subprocesses, so the times include Python start-up and imports, as a user sees them.
Everything lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from machine import cpu_model  # benchmarks/machine.py, beside this script
from scipy.signal import fftconvolve

ROOT = Path(__file__).resolve().parent.parent
SR = 44100
EFFECTS = ("clean", "distortion", "bitcrush", "tremolo", "vibrato", "chorus", "flanger", "reverb", "echo", "ringmod")
GOAL_TOTAL_S = 60.0
TEST_SEED_OFFSET = 1000  # the held-out set's seed is --seed + this


# -- the sounds --------------------------------------------------------------------------------------------
def note(rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone, 80-1000 Hz (log-uniform), 0.5-3 s, random timbre and envelope, peak 1."""
    n = int(SR * rng.uniform(0.5, 3.0))
    t = np.arange(n) / SR
    f0 = np.exp(rng.uniform(np.log(80), np.log(1000)))
    k = np.arange(1, rng.integers(1, 13) + 1)[:, None]
    amps = k ** -rng.uniform(0.5, 2.5) * rng.uniform(0.3, 1.0, k.shape)
    if rng.random() < 0.3:
        amps[1::2] *= 0.1  # hollow, clarinet-like: mostly odd harmonics
    x = (amps * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi, k.shape))).sum(axis=0)
    env = np.minimum(t / rng.uniform(0.002, 0.15), 1.0)  # attack
    if rng.random() < 0.5:
        env *= np.exp(-t / rng.uniform(0.2, 1.5))  # plucked / struck
    else:
        env *= np.clip((t[-1] - t) / rng.uniform(0.05, 0.4), 0, 1)  # held, then released
    x *= env
    return x / np.abs(x).max()


def delayed(x: np.ndarray, d: np.ndarray | float) -> np.ndarray:
    """x delayed by d samples (fractional, may vary per sample); silence before the start."""
    i = np.arange(len(x), dtype=np.float64)
    return np.interp(i - d, i, x, left=0.0, right=0.0)


def lfo(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A sine in [0, 1] at rate Hz with a random phase."""
    return 0.5 + 0.5 * np.sin(2 * np.pi * rate * np.arange(n) / SR + rng.uniform(0, 2 * np.pi))


def apply(effect: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    if effect == "clean":
        return x
    if effect == "distortion":  # hard tanh drive
        drive = rng.uniform(8, 30)
        return np.tanh(drive * x) / np.tanh(drive)
    if effect == "bitcrush":  # sample-and-hold down to 2-7 kHz, 3-5 bits
        hold, levels = rng.integers(6, 20), 2.0 ** (rng.integers(3, 6) - 1)
        return np.round(np.repeat(x[::hold], hold)[:n] * levels) / levels
    if effect == "tremolo":  # amplitude modulation 4-8 Hz
        return x * (1 - rng.uniform(0.6, 1.0) * lfo(n, rng.uniform(4, 8), rng))
    if effect == "vibrato":  # pitch wobble 4-7 Hz, ±0.5-1.5 semitones, no dry signal
        rate = rng.uniform(4, 7)
        depth = (2 ** (rng.uniform(0.5, 1.5) / 12) - 1) / (2 * np.pi * rate) * SR
        return delayed(x, 1 + 2 * depth * lfo(n, rate, rng))
    if effect == "chorus":  # two slowly modulated 15-30 ms copies mixed with the dry signal
        voices = [
            delayed(
                x, SR * (rng.uniform(0.015, 0.03) + rng.uniform(0.0015, 0.004) * lfo(n, rng.uniform(0.3, 1.5), rng))
            )
            for _ in range(2)
        ]
        return x + 0.7 * sum(voices)
    if effect == "flanger":  # 0.5-5 ms sweeping delay with feedback (first 5 terms of the feedback loop)
        d = SR * (0.0005 + rng.uniform(0.001, 0.0045) * lfo(n, rng.uniform(0.15, 0.6), rng))
        g = rng.uniform(0.5, 0.85)
        return x + sum(g**j * delayed(x, j * d) for j in range(1, 6))
    if effect == "reverb":  # convolution with exponentially decaying noise, RT60 0.8-2.5 s
        rt60 = rng.uniform(0.8, 2.5)
        t = np.arange(int(SR * rt60)) / SR
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        ir = np.r_[np.zeros(int(SR * rng.uniform(0.01, 0.03))), ir]  # pre-delay
        wet = fftconvolve(np.r_[x, np.zeros(len(ir))], ir)[: n + len(ir)]
        mix = rng.uniform(0.4, 0.7)
        return (1 - mix) * np.r_[x, np.zeros(len(ir))] + mix * wet / np.abs(wet).max()
    if effect == "echo":  # discrete repeats every 120-400 ms
        step, g, repeats = int(SR * rng.uniform(0.12, 0.4)), rng.uniform(0.35, 0.65), 6
        y = np.zeros(n + repeats * step)
        for j in range(repeats + 1):
            y[j * step : j * step + n] += g**j * x
        return y
    if effect == "ringmod":  # multiplied by a 150-1200 Hz sine: inharmonic sidebands
        return x * np.sin(2 * np.pi * rng.uniform(150, 1200) * np.arange(n) / SR)
    raise ValueError(effect)


def write_set(root: Path, classes: tuple[str, ...], per_class: int, seed: int) -> int:
    """DIR/<effect>/<i>.wav, 16-bit 44.1 kHz mono, every clip from its own seeded generator; returns bytes."""
    total = 0
    for c, effect in enumerate(classes):
        (root / effect).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            y = apply(effect, note(rng), rng)[: int(SR * 4)]
            y = y / np.abs(y).max() * rng.uniform(0.3, 0.9) + 1e-4 * rng.standard_normal(len(y))
            sf.write(root / effect / f"{i}.wav", y.astype(np.float32), SR, subtype="PCM_16")
            total += (root / effect / f"{i}.wav").stat().st_size
    return total


# -- running vibrary ---------------------------------------------------------------------------------------
def vibrary(home: Path, *args: str) -> tuple[list[dict], float]:
    """Run the CLI in its own process; returns its JSON lines and the wall time."""
    env = {**os.environ, "VIBRARY_HOME": str(home)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vibrary.clients.cli", *args], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"vibrary {shlex.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], wall


@dataclass
class Run:
    label: str
    base: str
    dataset_s: float = 0.0
    train_json_s: float = 0.0
    train_wall_s: float = 0.0
    epochs_run: int = 0
    best_epoch: int = 0
    val_accuracy: float = 0.0
    test_accuracy: float = 0.0
    test_guesses: dict[str, Counter[str]] = field(default_factory=dict)  # true class → best tags
    tag_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    created: dict | None = None
    skipped: str = ""

    @property
    def total_s(self) -> float:
        return self.dataset_s + self.train_wall_s


def measure(run: Run, train_dir: Path, test_dir: Path, work: Path, seed: int) -> Run:
    home = work / f"home-{run.label}"
    load_before = os.getloadavg()[0]
    print(f"[{run.label}] dataset create …", file=sys.stderr, flush=True)
    created, run.dataset_s = vibrary(home, "dataset", "create", "--json", "effects", str(train_dir))
    run.created = created[0]
    print(f"[{run.label}] train --base {run.base} …", file=sys.stderr, flush=True)
    trained, run.train_wall_s = vibrary(home, "train", "effects", "--json", "--base", run.base, "--seed", str(seed))
    result = trained[-1]
    run.train_json_s, run.val_accuracy = result["seconds"], result["val_accuracy"]
    run.epochs_run, run.best_epoch = result["summary"]["epochs_run"], result["summary"]["best_epoch"]
    run.load = (load_before, os.getloadavg()[0])
    print(f"[{run.label}] tag the held-out set …", file=sys.stderr, flush=True)
    tagged, run.tag_s = vibrary(home, "tag", "--json", "--model", result["model"], str(test_dir))
    for line in tagged:
        guess = line["tags"][0]["tag"] if line["tags"] else "(none)"
        run.test_guesses.setdefault(Path(line["path"]).parent.name, Counter())[guess] += 1
    right = sum(guesses[c] for c, guesses in run.test_guesses.items())
    run.test_accuracy = right / max(1, len(tagged))
    return run


# -- the report --------------------------------------------------------------------------------------------
def ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def table(runs: list[Run]) -> str:
    lines = [
        "| Run | Dataset create (s) | Train: JSON `seconds` / wall (s) | **Total (s)** | Goal ≤ 60 s | "
        "Epochs run (best) | Val acc | Held-out test acc | Load avg (start → end) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        if r.skipped:
            lines.append(f"| {r.label} (`--base {r.base}`) | {r.skipped} | | | | | | | |")
            continue
        goal = ("met" if r.total_s <= GOAL_TOTAL_S else "**missed**") if r.label == "transfer" else "—"
        lines.append(
            f"| {r.label} (`--base {r.base}`) | {r.dataset_s:.1f} | {r.train_json_s:.1f} / {r.train_wall_s:.1f} | "
            f"**{r.total_s:.1f}** | {goal} | {r.epochs_run} ({r.best_epoch}) | {r.val_accuracy:.1%} | "
            f"{r.test_accuracy:.1%} | {r.load[0]:.2f} → {r.load[1]:.2f} |"
        )
    return "\n".join(lines)


def per_class_table(runs: list[Run], classes: tuple[str, ...]) -> str:
    """Held-out accuracy per class and run, with the most frequent wrong tag."""
    done = [r for r in runs if not r.skipped]
    lines = ["| Class | " + " | ".join(r.label for r in done) + " |", "| --- |" + " --- |" * len(done)]
    for c in classes:
        cells = []
        for r in done:
            guesses = r.test_guesses.get(c, Counter())
            wrong = [(g, n) for g, n in guesses.most_common() if g != c]
            confused = f" (else {wrong[0][0]} {wrong[0][1]})" if wrong else ""
            cells.append(f"{guesses[c]}/{sum(guesses.values())}{confused}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=10, help=f"effect classes, at most {len(EFFECTS)} (default 10)")
    ap.add_argument("--per-class", type=int, default=20, help="training clips per class (default 20)")
    ap.add_argument("--test-per-class", type=int, default=10, help="held-out clips per class (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="clip generation and training seed (default 0)")
    ap.add_argument("--base-checkpoint", default="", metavar="PATH", help="transfer from this checkpoint, not demo")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-trainer.md"), help="report file ('' for none)")
    args = ap.parse_args(argv)
    if not 2 <= args.classes <= len(EFFECTS) or args.per_class < 2:
        ap.error(f"--classes must be 2..{len(EFFECTS)} and --per-class ≥ 2")
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/bench_trainer.py", *argv])])
    started = dt.datetime.now(dt.timezone.utc)
    load_start = os.getloadavg()
    classes = EFFECTS[: args.classes]
    import vibrary.trainer  # the package only; torch is imported by the CLI processes

    demo_pt = Path(vibrary.trainer.__file__).parent / "builtin" / "demo.pt"
    demo_onnx = Path(vibrary.trainer.__file__).parent.parent / "daemon" / "builtin" / "demo.onnx"
    base = args.base_checkpoint or "demo"
    base_path = Path(args.base_checkpoint) if args.base_checkpoint else demo_pt
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    try:
        gen_start = time.perf_counter()
        audio = write_set(work / "train", classes, args.per_class, args.seed)
        test_audio = write_set(work / "test", classes, args.test_per_class, args.seed + TEST_SEED_OFFSET)
        gen_s = time.perf_counter() - gen_start
        print(
            f"clips: {args.per_class} × {len(classes)} training ({audio / 1e6:.1f} MB), "
            f"{args.test_per_class} × {len(classes)} held-out ({test_audio / 1e6:.1f} MB), made in {gen_s:.1f} s",
            file=sys.stderr,
        )
        runs = [Run("transfer", base), Run("scratch", "none")]
        if not base_path.exists():
            runs[0].skipped = "demo model not built yet" if not args.base_checkpoint else f"no checkpoint {base_path}"
        for run in runs:
            if not run.skipped:
                measure(run, work / "train", work / "test", work, args.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finished = dt.datetime.now(dt.timezone.utc)
    load_end = os.getloadavg()

    import torch

    created = next(r.created for r in runs if r.created)
    assert created is not None
    size_line = (
        f"audio {created['audio_bytes'] / 1e6:.2f} MB → upload {created['upload_bytes'] / 1e6:.3f} MB "
        f"(ratio {created['ratio']}×, from `vibrary dataset create --json`)"
    )
    base_note = (
        f"`--base {base}`: {base_path} ({'present' if base_path.exists() else 'absent'} at the start); "
        f"daemon/builtin/demo.onnx {'present' if demo_onnx.exists() else 'absent'}"
    )
    tag_note = ", ".join(f"{r.label} {r.tag_s:.1f} s" for r in runs if not r.skipped)
    body = f"""## Results: {started:%Y-%m-%d %H:%M %Z}

- **Command:** `{command}` (from the repository root, venv active)
- **Machine:** `nproc` = {os.cpu_count()}, CPU: {cpu_model()}, {ram_gib():.0f} GiB RAM, {platform.system()}
  {platform.release()}; load average (1 min) {load_start[0]:.2f} at the start and {load_end[0]:.2f} at the end
  (other work may share this machine); the run took {(finished - started).total_seconds() / 60:.1f} min
- **Software:** Python {platform.python_version()}, torch {torch.__version__} (CPU threads:
  {torch.get_num_threads()}), numpy {np.__version__}
- **Data:** {len(classes)} effect classes ({", ".join(classes)}) × {args.per_class} training clips, seed
  {args.seed}; held-out test set {len(classes)} × {args.test_per_class}, seed {args.seed + TEST_SEED_OFFSET};
  {size_line}
- **Base:** {base_note}
- **Training:** defaults of `vibrary train` (from the demo model: at most 20 epochs, early stop after 5
  without improvement; from none: at most 40, after 10), `--seed {args.seed}`, local trainer, CPU

{table(runs)}

*Dataset create* and *wall* times are whole `vibrary` processes (start-up and imports included). The JSON
`seconds` of `vibrary train` runs from the local trainer's start to the download of the model (upload,
training, ONNX export, download); the wall time adds start-up, `import torch`, install and activation.
*Total* = dataset create + train wall. *Held-out test acc*: the share of the held-out clips whose best tag
from `vibrary tag --json --model effects` is their folder's name (tagging took {tag_note}; not in the total).

Held-out clips tagged right, per class (and the most frequent wrong best tag):

{per_class_table(runs, classes)}
"""
    print("\n" + body)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            "# Trainer benchmark\n\nGenerated by `benchmarks/bench_trainer.py`; see `benchmarks/README.md`.\n\n" + body
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
