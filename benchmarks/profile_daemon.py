#!/usr/bin/env python
"""Where the daemon's CPU time per file goes, stage by stage and thread by thread.

    python benchmarks/profile_daemon.py [--clips 400] [--clips-dir DIR] [--mode stages|daemon|both] [--py-spy OUT.svg]

`bench_daemon.py` gives one CPU-per-file figure for the whole daemon; this script says what it is made of,
on a smaller set of the same clips (`bench_daemon.make_clip_set`, same seed), cheaply enough to run after
every change. CPU time rather than wall time, because the figure then hardly depends on what else the
machine is doing.

*stages*: one thread in this process runs the daemon's own functions over the clips, timing each stage
with `time.thread_time`: content hash, done-models lookup, decode, log-mel, 8-bit codes, cache write (one
transaction per batch, as the pipeline does), the CNN (batches of the daemon's batch size, one thread),
ranking, and the index write (one transaction per batch).

*inproc*: the daemon's own `Daemon` class in this process, indexing the clips as in *daemon*, with a
timer around each stage (exclusive: a stage's time excludes the stages it calls), so the stages are
seen at work among the daemon's threads, GIL and queues included.

*daemon*: a real `vibrary daemon` on a fresh home with the demo model, timed as `bench_daemon.py` times it
(AddWatch until indexed + failed = N, status polled every 50 ms), giving the process's CPU per file and
each thread's share. With `--py-spy OUT.svg` py-spy records the run (native frames included).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_daemon import DEMO, make_clip_set, prepare_home, process_cpu, usable_encodings  # noqa: E402
from vibrary.daemon import config  # noqa: E402
from vibrary.daemon.cache import SpectrogramCache  # noqa: E402
from vibrary.daemon.decode import DecodeError, decode  # noqa: E402
from vibrary.daemon.features import fingerprint  # noqa: E402
from vibrary.daemon.index import Index, Job, Result  # noqa: E402
from vibrary.daemon.infer import Model, ranked_tags  # noqa: E402
from vibrary.daemon.spectrogram import dequantize, log_mel, quantize  # noqa: E402

from tests.conftest import start_daemon  # noqa: E402


def clip_paths(folder: Path, count: int, seed: int) -> list[str]:
    """The clip set, made once per folder (kept between runs when --clips-dir is given)."""
    found = sorted(str(p) for p in folder.rglob("clip_*") if p.is_file())
    if len(found) >= count:
        return found[:count]
    return [c.path for c in make_clip_set(folder, count, seed, usable_encodings())]


def stages(paths: list[str], batch: int) -> dict[str, float]:
    """Seconds of this thread's CPU per stage over all paths."""
    spent: dict[str, float] = defaultdict(float)
    clock = time.thread_time
    home = Path(tempfile.mkdtemp(prefix="vb-prof-"))
    index = Index(config.index_path(home))
    cache = SpectrogramCache(config.cache_path(home), 1 << 30)
    model = Model(str(DEMO), threads=1)
    params = model.info.params
    rows = index.mark_pending((p, 0.0) for p in paths)
    assert rows == len(paths)
    jobs = [Job(*r) for r in index.conn().execute("SELECT id, path, gen, size, mtime_ns, NULL FROM files")]
    pending: list[tuple[Result, np.ndarray]] = []

    def flush() -> None:
        t = clock()
        fresh = [(r.hash, params, s) for r, s in pending]
        cache.put_many(fresh)
        spent["cache write"] += clock() - t
        t = clock()
        scores = model.predict(np.stack([s for _, s in pending]))
        spent["CNN"] += clock() - t
        t = clock()
        for (r, _), row in zip(pending, scores, strict=True):
            r.tags[1] = ranked_tags(row, model.info.classes, 0.02)
        spent["rank tags"] += clock() - t
        t = clock()
        index.write_results([r for r, _ in pending], 0.02)
        spent["index write"] += clock() - t
        pending.clear()

    for job in jobs:
        t0 = clock()
        result = Result(job)
        try:
            result.size, result.mtime_ns, result.inode, result.hash, result.links = fingerprint(job.path)
            t1 = clock()
            index.models_done(result.hash)
            t2 = clock()
            audio = decode(job.path, params)
        except DecodeError:
            continue
        t3 = clock()
        spec = log_mel(audio, params)
        t4 = clock()
        spec = dequantize(quantize(spec, params), params)
        t5 = clock()
        spent["content hash"] += t1 - t0
        spent["done lookup"] += t2 - t1
        spent["decode"] += t3 - t2
        spent["log-mel"] += t4 - t3
        spent["8-bit codes"] += t5 - t4
        pending.append((result, spec))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    index.close()
    return dict(spent)


# (module, attribute, stage): wrapped in `inproc`; where a module imported a function by name, its copy
_STAGES = (
    ("vibrary.daemon.pipeline", "fingerprint", "content hash"),
    ("vibrary.daemon.index.Index", "models_done", "done lookup"),
    ("vibrary.daemon.cache.SpectrogramCache", "get", "cache lookup"),
    ("vibrary.daemon.features", "decode", "decode"),
    ("vibrary.daemon.features", "log_mel", "log-mel"),
    ("vibrary.daemon.pipeline", "features", "8-bit codes etc."),
    ("vibrary.daemon.cache.SpectrogramCache", "put_many", "cache write"),
    ("vibrary.daemon.pipeline.Pipeline", "_prepare", "worker: rest"),
    ("vibrary.daemon.infer.Model", "predict", "CNN"),
    ("vibrary.daemon.pipeline", "ranked_tags", "rank tags"),
    ("vibrary.daemon.pipeline.Pipeline", "_infer", "infer: rest"),
    ("vibrary.daemon.index.Index", "write_results", "index write"),
    ("vibrary.daemon.service.Daemon", "_store", "store: rest"),
    ("vibrary.daemon.index.Index", "due_jobs", "feeder: due_jobs"),
    ("vibrary.daemon.index.Index", "next_due", "feeder: next_due"),
    ("vibrary.daemon.service.Daemon", "status", "status (polled)"),
)


def _resolve(dotted: str) -> object:
    module, _, rest = dotted.partition(".daemon.")
    head, *attrs = rest.split(".")
    obj: object = importlib.import_module(f"{module}.daemon.{head}")
    for a in attrs:
        obj = getattr(obj, a)
    return obj


def inproc(paths: list[str], folder: Path) -> None:
    from vibrary.daemon.service import Daemon

    spent: dict[str, float] = defaultdict(float)
    local = threading.local()

    def timed(fn: Callable[..., object], stage: str) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            stack = local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # time spent in timed callees
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.thread_time() - start
                inner = stack.pop()
                spent[stage] += took - inner
                if stack:
                    stack[-1] += took

        return wrapper

    originals = []
    for owner_name, attr, stage in _STAGES:
        owner = _resolve(owner_name)
        originals.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, timed(getattr(owner, attr), stage))
    home = prepare_home(DEMO)
    config.Settings(settle_s=0.2, nice=0).save(home)
    d = Daemon(home)
    try:
        d.start()
        me = psutil.Process()
        time.sleep(0.5)
        before = {t.id: t.user_time + t.system_time for t in me.threads()}
        start = time.perf_counter()
        d.add_watch(str(folder))
        while True:
            status = d.status()
            if int(status["indexed"]) + int(status["failed"]) >= len(paths):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        after = {t.id: t.user_time + t.system_time for t in me.threads()}
        names = {t.native_id: t.name for t in threading.enumerate()}
    finally:
        d.stop()
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)
    n = len(paths)
    print(f"\nin process: {n} files in {elapsed:.2f} s wall; CPU by stage (exclusive), ms/file:")
    for stage, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<22} {s / n * 1000:6.3f}")
    print(f"  {'sum of stages':<22} {sum(spent.values()) / n * 1000:6.3f}")
    print("CPU by thread, ms/file (this process's threads, the main thread polling status included):")
    for took, tid in sorted(((after[t] - before.get(t, 0.0), t) for t in after), reverse=True):
        if took / n * 1000 >= 0.01:
            print(f"  {names.get(tid, str(tid)):<22} {took / n * 1000:6.3f}")
    print(f"  {'all threads':<22} {sum(after[t] - before.get(t, 0.0) for t in after) / n * 1000:6.3f}")


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id → Python thread name, from `py-spy dump --json` (empty when py-spy cannot attach)."""
    try:
        command = ["py-spy", "dump", "--json", "--pid", str(pid)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        threads = json.loads(out.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return {t["os_thread_id"]: t.get("thread_name") or str(t["os_thread_id"]) for t in threads if t.get("os_thread_id")}


def daemon(paths: list[str], folder: Path, py_spy: str) -> None:
    home = prepare_home(DEMO)
    config.Settings(settle_s=0.2).save(home)
    d = start_daemon(home)
    try:
        proc = psutil.Process(d.proc.pid)
        time.sleep(0.5)
        before = {t.id: t.user_time + t.system_time for t in proc.threads()}
        cpu_before = sum(process_cpu(proc))
        recorder = None
        if py_spy:
            recorder = subprocess.Popen(
                ["py-spy", "record", "--threads", "--rate", "100", "-o", py_spy, "--pid", str(proc.pid)]
                + (["--format", "raw"] if not py_spy.endswith(".svg") else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        start = time.perf_counter()
        d.client.add_watch(str(folder))
        while True:
            status = d.client.status()
            if status.indexed + status.failed >= len(paths):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        cpu = sum(process_cpu(proc)) - cpu_before
        after = {t.id: t.user_time + t.system_time for t in proc.threads()}
        rss = proc.memory_info().rss
        names = thread_names(proc.pid)
        if recorder is not None:
            recorder.send_signal(2)
            recorder.wait(timeout=60)
        n = len(paths)
        print(f"\ndaemon: {n} files ({status.indexed} indexed, {status.failed} failed) in {elapsed:.2f} s wall")
        print(f"  {n / elapsed:.1f} files/s, {cpu / n * 1000:.2f} ms CPU/file (all threads), RSS {rss / 1e6:.0f} MB")
        per_thread = sorted(((after[t] - before.get(t, 0.0), t) for t in after), reverse=True)
        for spent, tid in per_thread:
            if spent / n * 1000 >= 0.01:
                print(f"  {names.get(tid, str(tid)):<24} {spent / n * 1000:6.2f} ms/file")
    finally:
        d.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--clips-dir", default="", help="keep the clips here between runs (default: a temporary folder)")
    ap.add_argument("--mode", choices=("stages", "inproc", "daemon", "both"), default="both")
    ap.add_argument("--batch", type=int, default=config.Settings().batch_size)
    ap.add_argument(
        "--py-spy", default="", help="record the daemon run with py-spy: .svg a flame graph, other names raw stacks"
    )
    args = ap.parse_args()
    folder = Path(args.clips_dir) if args.clips_dir else Path(tempfile.mkdtemp(prefix="vb-clips-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = clip_paths(folder, args.clips, args.seed)
    if args.mode in ("stages", "both"):
        for p in paths:  # warm the page cache, as the daemon run finds it
            Path(p).read_bytes()
        spent = stages(paths, args.batch)
        total = sum(spent.values())
        print(f"\nstages, one thread, {len(paths)} files, batch {args.batch}:")
        for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<14} {s / len(paths) * 1000:6.3f} ms/file")
        print(f"  {'total':<14} {total / len(paths) * 1000:6.3f} ms/file")
    if args.mode == "inproc":
        inproc(paths, folder)
    if args.mode in ("daemon", "both"):
        daemon(paths, folder, args.py_spy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
