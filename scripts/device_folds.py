"""Train the demo recipe's five folds and the shipped model on a lent GPU machine (the `device` tool), in
one call of at most 10 minutes, from spectrograms packed here.

    python scripts/device_folds.py pack --corpus /work/corpus --effects /work/fxcorpus/effects.npz --out .device
    # there, in the repository root, once per part (calls a few seconds apart: the machine is kept 30 s):
    python3 scripts/device_folds.py unpack --parts .device/a --data /root/vdata
    python3 scripts/device_folds.py unpack --parts .device/b --data /root/vdata
    python3 scripts/device_folds.py run --data /root/vdata --out $OUT --epochs 160 --seconds 520 [--synth 130]

Why each step (learned in stop 23's session, docs/demo-model.md):
- A call carries at most 64 MiB of working tree, the repository included. The corpus's 8-bit codes are
  149 MB and the effects corpus's 338 MB; xz with a delta filter makes them 24 and 84 MB, so `pack` splits
  them into folders of under 55 MB (`.device/a`, `.device/b`, …), one per call, each named in `carry`
  (add `/.device/` to .git/info/exclude). `unpack` rebuilds the files train_demo.py reads.
- The machine's Python has torch but not this package nor soundfile/soxr (build_corpus imports them):
  carry their wheels (the device README says how) and reach the package through a folder of links,
  `unpack` makes it (/tmp/vibrary-links; `run` puts it on PYTHONPATH).
- Six trainings side by side on one H200 run an epoch in about 4 s each (one alone: 2.1 s): the steps wait
  on the CPU. `run` starts the five folds and the shipped model at --epochs, reads each one's own ETA
  after a few epochs, and if the slowest would end past --seconds, starts all again at the epochs that fit
  (the first driver projected from the wall clock since launch, start-up included, and cut 120 epochs
  that fitted to 70). What finished comes back as results.tar (fold.json files, the shipped model's
  demo.pt, report and plots) and logs.tar; `python scripts/train_demo.py --report --out DIR` here then
  writes docs/demo-loso.json from the folds.
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
XZ = [{"id": lzma.FILTER_DELTA, "dist": 1}, {"id": lzma.FILTER_LZMA2, "preset": 9}]
PART_BYTES = 55_000_000  # a call's 64 MiB, less the repository (5 MB) and the wheels (2 MB)


def pack(corpus: Path, effects: Path, out: Path) -> None:
    """The corpus's cached codes, its provenance and the effects corpus, xz-packed into parts of a call."""
    cache = next(corpus.glob("spectrograms-*.npz"))  # train_demo.load_corpus made it
    (out / "a").mkdir(parents=True, exist_ok=True)
    pieces: list[tuple[str, bytes]] = [("provenance.csv", (corpus / "provenance.csv").read_bytes())]
    with np.load(cache) as z:
        pieces.append((f"{cache.stem}.codes", _packed(z["codes"])))
    with np.load(effects) as z:
        np.savez(out / "a" / "effects-meta.npz", labels=z["labels"], programs=z["programs"], classes=z["classes"])
        for k, third in enumerate(np.array_split(z["codes"], 3)):
            pieces.append((f"effects.codes.{k}", _packed(third)))
    part, size = 0, 0
    for name, data in pieces:
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, filters=XZ)
        if size and size + len(packed) > PART_BYTES:
            part, size = part + 1, 0
        folder = out / "abcdefgh"[part]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.xz").write_bytes(packed)
        size += len(packed)
        print(f"{folder.name}/{name}.xz: the part holds {size / 1e6:.1f} MB", flush=True)


def _packed(codes: np.ndarray) -> bytes:
    """uint8 codes as a shape line and the raw bytes."""
    return (" ".join(map(str, codes.shape)) + "\n").encode() + np.ascontiguousarray(codes).tobytes()


def unpack(parts: Path, data: Path) -> None:
    """One part's files into `data`; once every part has come, the npz files train_demo.py reads."""
    raw = data / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in sorted(parts.glob("*.xz")) + sorted(parts.glob("*.npz")):
        target = raw / packed.name.removesuffix(".xz")
        if not target.exists():
            target.write_bytes(lzma.decompress(packed.read_bytes()) if packed.suffix == ".xz" else packed.read_bytes())
    corpus = data / "corpus"
    corpus.mkdir(exist_ok=True)
    if (raw / "provenance.csv").exists():
        os.replace(raw / "provenance.csv", corpus / "provenance.csv")
    for packed_codes in raw.glob("spectrograms-*.codes"):
        np.savez(corpus / f"{packed_codes.name.removesuffix('.codes')}.npz", codes=_unpacked(packed_codes))
        packed_codes.unlink()
    effects = sorted(raw.glob("effects.codes.*"))
    if len(effects) == 3 and (raw / "effects-meta.npz").exists():
        (data / "fxcorpus").mkdir(exist_ok=True)
        with np.load(raw / "effects-meta.npz") as meta:
            codes = np.concatenate([_unpacked(p) for p in effects])
            np.savez(data / "fxcorpus" / "effects.npz", codes=codes, **{k: meta[k] for k in meta.files})
    links = Path("/tmp/vibrary-links/vibrary")
    links.mkdir(parents=True, exist_ok=True)
    for package in ("daemon", "trainer", "clients"):
        if not (links / package).exists():
            (links / package).symlink_to(ROOT / package)
    print(sorted(str(p.relative_to(data)) for p in data.rglob("*.npz")), flush=True)


def _unpacked(path: Path) -> np.ndarray:
    head, _, body = path.read_bytes().partition(b"\n")
    return np.frombuffer(body, np.uint8).reshape([int(n) for n in head.split()])


def run(data: Path, out: Path, epochs: int, seconds: float, synth: int) -> None:
    """The folds and the shipped model side by side, started again at fewer epochs when they would not
    end within `seconds`; what finished is packed into `out`."""
    deadline = time.monotonic() + seconds - 30  # the packing and the way back
    work = Path("/tmp/device-folds")
    procs, started = _launch(data, work, epochs, synth), time.monotonic()
    checked = False
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(5)
        if not checked and all(_eta(work, name, epochs) is not None for name in procs):
            checked = True  # every job has a few epochs behind it: its own ETA is worth reading
            now = time.monotonic()
            slowest = max(_eta(work, name, epochs) or 0.0 for name in procs)
            print(f"{now - started:.0f} s in: the slowest job ends in {slowest:.0f} s", flush=True)
            if now + slowest > deadline:
                per_epoch = slowest / epochs  # near enough: a few epochs are done
                fitting = int((deadline - now - 60) / per_epoch) // 10 * 10  # a restart loads for about 60 s
                if fitting < 10:
                    break
                for p in procs.values():
                    os.killpg(p.pid, signal.SIGKILL)
                epochs = fitting
                print(f"starting again at {epochs} epochs", flush=True)
                procs, started = _launch(data, work, epochs, synth), time.monotonic()
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    done = work / f"e{epochs}"
    with tarfile.open(out / "results.tar", "w") as tar:
        for path in sorted(done.rglob("*")):
            if path.suffix in (".json", ".png") or (path.parent.name == "ship" and path.suffix in (".pt", ".onnx")):
                tar.add(path, arcname=str(path.relative_to(work)))
    with tarfile.open(out / "logs.tar", "w") as tar:
        for path in work.glob("*.log"):
            tar.add(path, arcname=path.name)


def _launch(data: Path, work: Path, epochs: int, synth: int) -> dict[str, subprocess.Popen[bytes]]:
    base = [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--corpus", str(data / "corpus")]
    base += ["--effects", str(data / "fxcorpus" / "effects.npz"), "--epochs", str(epochs), "--threads", "1"]
    base += ["--jobs", "1", "--synth", str(synth)]
    folder = work / f"e{epochs}"
    jobs = {"ship": ["--out", str(folder / "ship")]} | {
        f"fold-{k}": ["--fold", str(k), "--out", str(folder)] for k in range(5)
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["/tmp/vibrary-links", env.get("PYTHONPATH", "")]))
    work.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, extra in jobs.items():
        with open(work / f"{name}-e{epochs}.log", "w") as log:
            procs[name] = subprocess.Popen(
                base + extra, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
    return procs


def _eta(work: Path, name: str, epochs: int) -> float | None:
    """A job's own estimate of the seconds left, once it has three epochs behind it (the first is slower)."""
    found = re.findall(r"epoch (\d+)/\d+ loss \S+ eta (\d+)s", (work / f"{name}-e{epochs}.log").read_text())
    return float(found[-1][1]) if found and int(found[-1][0]) >= 3 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("pack", help="here: the spectrograms into parts of a call")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--effects", type=Path, required=True)
    p.add_argument("--out", type=Path, default=ROOT / ".device")
    p = steps.add_parser("unpack", help="there: one part into --data")
    p.add_argument("--parts", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("/root/vdata"))
    p = steps.add_parser("run", help="there: the folds and the shipped model, within --seconds")
    p.add_argument("--data", type=Path, default=Path("/root/vdata"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=160)
    p.add_argument("--seconds", type=float, default=520)
    p.add_argument("--synth", type=int, default=0)
    args = parser.parse_args()
    if args.step == "pack":
        pack(args.corpus, args.effects, args.out)
    elif args.step == "unpack":
        unpack(args.parts, args.data)
    else:
        run(args.data, args.out, args.epochs, args.seconds, args.synth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
