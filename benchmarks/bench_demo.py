"""Batched inference speed of the built-in demo model alone (goal: ≥300 clips/s on this 2-core CPU).

    python benchmarks/bench_demo.py [--model daemon/builtin/demo.onnx] [--seconds 5]

Feeds random dB spectrograms of the model's own shape through onnxruntime at several batch sizes and
thread counts, and prints clips/s beside the goal. The daemon runs each model on one thread (its workers
use the other cores), so that row is the one that matters for indexing; two threads is the model alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vibrary.daemon.infer import Model  # noqa: E402

GOAL = 300.0


def clips_per_second(model: Model, batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).uniform(-80, 0, (batch, *model.info.params.shape)).astype(np.float32)
    model.predict(x)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(x)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "daemon" / "builtin" / "demo.onnx")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if not args.model.exists():
        print(f"no model at {args.model}; build it with scripts/train_demo.py", file=sys.stderr)
        return 1
    print(
        f"model {args.model} ({args.model.stat().st_size / 1e6:.2f} MB), {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print("| threads | batch | clips/s | ÷ goal (300) |\n| --- | --- | --- | --- |")
    for threads in (1, os.cpu_count() or 1):
        model = Model(str(args.model), threads=threads)
        for batch in (1, 8, 64):
            rate = clips_per_second(model, batch, args.seconds)
            print(f"| {threads} | {batch} | {rate:.0f} | {rate / GOAL:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
