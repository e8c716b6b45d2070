"""Training speed of the tagging CNN on this machine: the same steps in the trainer's layouts side by side.

    python benchmarks/bench_train_step.py [--steps 8] [--threads 1 2] [--out docs/benchmarks-train-step.md]

A training step is what `trainer/train.py` does per batch: forward, soft cross-entropy, backward and an
AdamW update, on random dB spectrograms of the daemon's shape. Three ways, one after the other in this
run, each from the same seed:
- *before*: the network as it was trained until this benchmark's commit: ELU before the max pooling,
  tensors in PyTorch's default (NCHW) layout, float32;
- *channels-last, ELU after pooling*: the same arithmetic (ELU commutes with max), oneDNN's NHWC kernels;
- *bfloat16*: the above under bfloat16 autocast, what `TrainConfig(precision="auto")` picks on a CPU with
  AMX or AVX-512 BF16 (and CUDA); skipped where the CPU would only emulate it.

Batch 128 is the demo recipe's step (64 instrument + 64 effect clips, `scripts/train_demo.py`), 32 the
default of `vibrary train`. Prints ms per step, clips/s and each way's speed-up over *before*, and writes
the table to `--out` (`''`: nowhere) with the machine and the command.

A second table times the augmentation of one batch of 64 clips (`trainer/augment.py`; the demo recipe's
step augments two) by how many clips the CPU transforms at once: one at a time, `CPU_CHUNK` (what the
trainer does) and the whole batch, with each one's speed-up over one at a time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from machine import cpu_model  # noqa: E402  # benchmarks/machine.py, beside this script
from torch import nn  # noqa: E402
from vibrary.daemon.spectrogram import SpectrogramParams  # noqa: E402
from vibrary.trainer.network import TagNet  # noqa: E402
from vibrary.trainer.train import mixed_precision, native_bfloat16  # noqa: E402


def elu_before_pooling(net: TagNet) -> TagNet:
    """The layer order of the network before this benchmark's commit: ELU, then max pooling."""
    layers = list(net.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ELU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    net.features = nn.Sequential(*layers)
    return net


def ms_per_step(net: TagNet, x: torch.Tensor, amp: Callable[[], object], steps: int) -> float:
    optimizer = torch.optim.AdamW(net.parameters())
    target = torch.full((len(x), 15), 1 / 15)

    def step() -> None:
        with amp():  # type: ignore[attr-defined]
            logits = net(x)
        loss = torch.sum(-target * torch.log_softmax(logits.float(), dim=1), dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN picks and caches its kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def ms_per_augment(x: torch.Tensor, chunk: int, repeats: int) -> float:
    """ms to augment the batch x with the trainer's augment(), `chunk` clips at a time."""
    from vibrary.trainer import augment

    kept, augment.CPU_CHUNK = augment.CPU_CHUNK, chunk
    try:
        generator = torch.Generator().manual_seed(0)
        augment.augment(x, -80.0, generator)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            augment.augment(x, -80.0, generator)
        return (time.perf_counter() - start) / repeats * 1000
    finally:
        augment.CPU_CHUNK = kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-train-step.md"))
    args = parser.parse_args()
    cpu = torch.device("cpu")
    native_bf16 = native_bfloat16(cpu)
    float32 = mixed_precision(cpu, "float32")
    ways: list[tuple[str, Callable[[], TagNet], bool, Callable[[], object]]] = [
        ("before (NCHW, ELU then pooling, float32)", lambda: elu_before_pooling(TagNet(15)), False, float32),
        ("channels-last, ELU after pooling, float32", lambda: TagNet(15), True, float32),
    ]
    if native_bf16:
        ways.append(("channels-last, bfloat16 autocast", lambda: TagNet(15), True, mixed_precision(cpu, "bfloat16")))
    lines = [
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} "
        f"at the start; bfloat16 native: {'yes' if native_bf16 else 'no (row skipped)'}; {args.steps} steps a row\n",
        "| threads | batch | way | ms / step | clips / s | speed-up |\n| --- | --- | --- | --- | --- | --- |",
    ]
    print("\n".join(lines), flush=True)
    shape = SpectrogramParams().shape
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0)) * -80
            before = 0.0
            for name, make, channels_last, amp in ways:
                torch.manual_seed(0)
                net = make().train()
                inputs = x
                if channels_last:
                    net = net.to(memory_format=torch.channels_last)
                    inputs = x.contiguous(memory_format=torch.channels_last)
                ms = ms_per_step(net, inputs, amp, args.steps)
                before = before or ms
                lines.append(
                    f"| {threads} | {batch} | {name} | {ms:.0f} | {batch / ms * 1000:.0f} | {before / ms:.2f}× |"
                )
                print(lines[-1], flush=True)
    from vibrary.trainer.augment import CPU_CHUNK

    lines += ["", "| threads | clips at once | ms / batch of 64 | speed-up |\n| --- | --- | --- | --- |"]
    print("\n".join(lines[-2:]), flush=True)
    x = torch.rand((64, *shape), generator=torch.Generator().manual_seed(0)) * -80
    for threads in args.threads:
        torch.set_num_threads(threads)
        one = 0.0
        for chunk in (1, CPU_CHUNK, len(x)):
            ms = ms_per_augment(x, chunk, args.steps * 2)
            one = one or ms
            note = " (the trainer's CPU_CHUNK)" if chunk == CPU_CHUNK else ""
            lines.append(f"| {threads} | {chunk}{note} | {ms:.1f} | {one / ms:.2f}× |")
            print(lines[-1], flush=True)
    if args.out:
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:])
        head = f"# Training speed of the CNN\n\nGenerated by `{command.strip()}` on {when}"
        head += " (`benchmarks/README.md`).\n\n"
        Path(args.out).write_text(head + "\n".join(lines) + f"\n\nLoad average at the end: {os.getloadavg()[0]:.2f}.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
