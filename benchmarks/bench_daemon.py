#!/usr/bin/env python
"""Vibrary's performance goals, measured side by side in one run on this machine.

    python benchmarks/bench_daemon.py [--clips 2000] [--rows 1000000] [--out docs/benchmarks.md]

1. a reproducible (seeded) clip set shaped like sample packs: WAV 16/24-bit, FLAC, OGG, MP3, mono and
   stereo, 22.05-96 kHz, 0.2-6 s of tones, noise bursts, decaying plucks and kicks;
2. a stand-in CNN (4 × Conv3x3/32 + ELU + MaxPool, Gemm 128, Gemm 15, Softmax) built with the onnx helper
   API, used as the model everywhere until the demo CNN replaces it;
3. throughput on the same files: a naive librosa + onnxruntime loop, the real daemon process end to end
   (watch folder → indexed), and a decode-only bound with as many threads as the daemon has workers;
4. the daemon's peak RSS while it indexes;
5. drop → tags-queryable latency on the idle daemon;
6. tag-search latency on a synthetic index of 1 M files.

Everything lives in temporary folders that are removed at the end. The table is printed and written
between the result markers of --out (the rest of that file is kept).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "daemon" / "builtin" / "demo.onnx"
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py, beside this script)
from vibrary.daemon import config, registry  # noqa: E402
from vibrary.daemon.decode import DecodeError, decode  # noqa: E402
from vibrary.daemon.index import HIT_SCORE, SCHEMA, Index  # noqa: E402
from vibrary.daemon.infer import ACTIVATION_KEY, CLASSES_KEY, NAME_KEY, VERSION_KEY, parse_metadata  # noqa: E402
from vibrary.daemon.search import Query, search  # noqa: E402
from vibrary.daemon.spectrogram import METADATA_KEY, SpectrogramParams  # noqa: E402

from tests.conftest import DaemonProcess, start_daemon  # noqa: E402

MARK_START = "<!-- bench_daemon:start -->"
MARK_END = "<!-- bench_daemon:end -->"

CLASSES = (
    "kick",
    "snare",
    "hihat",
    "clap",
    "tom",
    "cymbal",
    "percussion",
    "bass",
    "lead",
    "pad",
    "pluck",
    "keys",
    "vocal",
    "fx",
    "texture",
)

GOAL_SPEEDUP = 5.0  # daemon ÷ naive loop
GOAL_DECODE_SHARE = 0.5  # daemon ÷ decode-only
GOAL_RSS_MB = 300.0
GOAL_DROP_P95_MS = 250.0
GOAL_SEARCH_P99_MS = 10.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


@contextlib.contextmanager
def niceness(level: int) -> Iterator[None]:
    """Run a measurement at the daemon's OS priority, so background load costs every contender alike."""
    me = psutil.Process()
    before = me.nice()
    try:
        me.nice(level)
    except psutil.Error:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(psutil.Error):
            me.nice(before)  # lowering niceness again needs root; otherwise the rest runs niced too


# -- 1. the clip set -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoding:
    label: str
    ext: str
    fmt: str
    subtype: str
    weight: float
    max_rate: int = 0  # 0: any


ENCODINGS = (
    Encoding("WAV 16-bit", ".wav", "WAV", "PCM_16", 0.34),
    Encoding("WAV 24-bit", ".wav", "WAV", "PCM_24", 0.22),
    Encoding("FLAC 24-bit", ".flac", "FLAC", "PCM_24", 0.14),
    Encoding("OGG Vorbis", ".ogg", "OGG", "VORBIS", 0.12),
    Encoding("MP3", ".mp3", "MP3", "MPEG_LAYER_III", 0.18, max_rate=48000),
)
RATES = ((22050, 0.12), (44100, 0.48), (48000, 0.30), (96000, 0.10))
KINDS = (("tone", 0.25), ("noise", 0.25), ("pluck", 0.30), ("kick", 0.20))


def usable_encodings() -> list[Encoding]:
    """The encodings this libsndfile can write (MP3 needs libsndfile ≥ 1.1 built with LAME)."""
    formats = sf.available_formats()
    usable = []
    probe = Path(tempfile.mkdtemp(prefix="vb-probe-"))
    try:
        for enc in ENCODINGS:
            if enc.fmt not in formats or enc.subtype not in sf.available_subtypes(enc.fmt):
                continue
            try:
                sf.write(
                    str(probe / f"probe{enc.ext}"),
                    np.zeros((4410, 1), np.float32),
                    44100,
                    format=enc.fmt,
                    subtype=enc.subtype,
                )
                usable.append(enc)
            except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
                pass
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return usable


def _pick(rng: np.random.Generator, options: tuple | list, weights: list[float]) -> object:
    w = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def synth(kind: str, sr: int, seconds: float, channels: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, channels) float32 one-shot; every call gives different content (different hashes)."""
    n = max(16, int(sr * seconds))
    t = np.arange(n) / sr
    if kind == "tone":
        f0 = math.exp(rng.uniform(math.log(40), math.log(2500)))
        x = np.zeros(n)
        for k in range(1, int(rng.integers(1, 8)) + 1):
            if k * f0 < sr / 2:
                x += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
        attack, decay = rng.uniform(0.002, 0.08), rng.uniform(0.3, 4.0)
        x *= np.minimum(1.0, t / attack) * np.exp(-t / decay)
    elif kind == "noise":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / sr)
        lo = math.exp(rng.uniform(math.log(30), math.log(4000)))
        hi = min(sr / 2, lo * math.exp(rng.uniform(0.5, 4.0)))
        x = np.fft.irfft(spectrum * ((freqs >= lo) & (freqs <= hi)), n)
        x *= np.exp(-t / rng.uniform(0.02, 1.0))
    elif kind == "pluck":
        f0 = math.exp(rng.uniform(math.log(60), math.log(1200)))
        damping = rng.uniform(1.0, 8.0)
        x = np.zeros(n)
        for k in range(1, 16):
            if k * f0 >= sr / 2:
                break
            x += np.exp(-t * damping * k) * np.sin(2 * np.pi * k * f0 * t) / k
        x[: min(n, int(0.003 * sr))] += 0.3 * rng.standard_normal(min(n, int(0.003 * sr)))
    else:  # kick: falling pitch plus a click
        f = rng.uniform(38, 60) + rng.uniform(80, 200) * np.exp(-t / rng.uniform(0.02, 0.08))
        x = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / rng.uniform(0.1, 0.6))
        click = min(n, int(0.002 * sr))
        x[:click] += 0.5 * rng.standard_normal(click)
    x += 1e-4 * rng.standard_normal(n)  # a noise floor: no two clips alike
    if channels == 2:
        pan = rng.uniform(0.2, 0.8)
        delay = int(rng.integers(0, max(1, int(0.0008 * sr))))
        right = np.concatenate([np.zeros(delay), x[: n - delay]])
        audio = np.stack([x * (1 - pan), right * pan], axis=1)
    else:
        audio = x[:, None]
    audio *= rng.uniform(0.3, 0.95) / max(1e-9, float(np.max(np.abs(audio))))
    return audio.astype(np.float32)


@dataclass
class Clip:
    path: str
    encoding: str
    rate: int
    channels: int
    seconds: float
    kind: str


def write_clip(path_stem: Path, rng: np.random.Generator, encodings: list[Encoding]) -> Clip:
    enc = _pick(rng, encodings, [e.weight for e in encodings])
    assert isinstance(enc, Encoding)
    rate = int(_pick(rng, [r for r, _ in RATES], [w for _, w in RATES]))  # type: ignore[call-overload]
    if enc.max_rate and rate > enc.max_rate:
        rate = enc.max_rate
    channels = 1 if rng.random() < 0.5 else 2
    seconds = float(math.exp(rng.uniform(math.log(0.2), math.log(6.0))))
    kind = str(_pick(rng, [k for k, _ in KINDS], [w for _, w in KINDS]))
    path = str(path_stem) + enc.ext
    sf.write(path, synth(kind, rate, seconds, channels, rng), rate, format=enc.fmt, subtype=enc.subtype)
    return Clip(path, enc.label, rate, channels, seconds, kind)


def make_clip_set(folder: Path, count: int, seed: int, encodings: list[Encoding]) -> list[Clip]:
    """pack_NN/KIND/KIND_NNNNN.EXT; clip i depends only on (seed, i), so the set is the same every run."""
    clips = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        stem = folder / f"pack_{i % 20:02d}" / f"clip_{i:05d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        clips.append(write_clip(stem, rng, encodings))
    return clips


# -- 2. the stand-in CNN ---------------------------------------------------------------------------------
def standin_cnn(path: Path, seed: int = 0, name: str = "standin-cnn") -> Path:
    """Input [N,1,96,259] → 4 × (Conv 3x3 ×32 pad 1, Elu, MaxPool 2x2) → Gemm 128 → Elu → Gemm 15 → Softmax.

    Random (seeded) weights: its tags mean nothing, its compute is that of a small real tagger.
    """
    params = SpectrogramParams()
    rng = np.random.default_rng(seed)
    channels, height, width = params.shape
    inits = [
        numpy_helper.from_array(np.array([params.top_db / 2], np.float32), "shift"),
        numpy_helper.from_array(np.array([2 / params.top_db], np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "shift"], ["shifted"]),  # dB in [-80, 0] → about [-1, 1]
        helper.make_node("Mul", ["shifted", "scale"], ["h0"]),
    ]
    prev, cin = "h0", channels
    for b in range(4):
        w = rng.standard_normal((32, cin, 3, 3)) * math.sqrt(2.0 / (cin * 9))
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"conv{b}_w"),
            numpy_helper.from_array(np.zeros(32, np.float32), f"conv{b}_b"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [prev, f"conv{b}_w", f"conv{b}_b"], [f"conv{b}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Elu", [f"conv{b}"], [f"elu{b}"], alpha=1.0),
            helper.make_node("MaxPool", [f"elu{b}"], [f"pool{b}"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        prev, cin, height, width = f"pool{b}", 32, height // 2, width // 2
    flat = cin * height * width
    w1 = rng.standard_normal((flat, 128)) * math.sqrt(2.0 / flat)
    w2 = rng.standard_normal((128, len(CLASSES))) * math.sqrt(1.0 / 128)
    inits += [
        numpy_helper.from_array(w1.astype(np.float32), "fc1_w"),
        numpy_helper.from_array(np.zeros(128, np.float32), "fc1_b"),
        numpy_helper.from_array(w2.astype(np.float32), "fc2_w"),
        numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "fc2_b"),
    ]
    nodes += [
        helper.make_node("Flatten", [prev], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["fc1"]),
        helper.make_node("Elu", ["fc1"], ["fc1_elu"], alpha=1.0),
        helper.make_node("Gemm", ["fc1_elu", "fc2_w", "fc2_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *params.shape])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(CLASSES)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    meta = {
        CLASSES_KEY: json.dumps(list(CLASSES)),
        METADATA_KEY: params.to_json(),
        NAME_KEY: name,
        VERSION_KEY: "1",
        ACTIVATION_KEY: "none",
    }
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def model_params(session: ort.InferenceSession) -> SpectrogramParams:
    """The spectrogram parameters a model says it was trained on (the stand-in CNN's are the defaults)."""
    return parse_metadata(session.get_modelmeta().custom_metadata_map, "model").params


def cnn_cost_ms(session: ort.InferenceSession, batch: int, repeats: int) -> float:
    """Milliseconds of onnxruntime time per clip at this batch size."""
    shape = model_params(session).shape
    x = np.random.default_rng(0).uniform(-80, 0, (batch, *shape)).astype(np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {session.get_inputs()[0].name: x})
    return (time.perf_counter() - start) / (repeats * batch) * 1000


# -- 3a. the naive loop ----------------------------------------------------------------------------------
@dataclass
class Rate:
    files_per_s: float
    cpu_ms_per_file: float  # CPU time of every thread of the process, divided by the files
    what: str


def naive_throughput(paths: list[str], model: Path, seed: int, min_subset: int, budget_s: float) -> Rate:
    """librosa.load + pad + melspectrogram + power_to_db + one onnxruntime call per file.

    Times a fixed seeded subset first; goes on over the whole set only if that fits in budget_s.
    """
    import librosa  # seconds of import (numba, scipy): kept out of the timing

    session = ort_session(model, os.cpu_count() or 1)
    params = model_params(session)

    def one(path: str) -> np.ndarray:
        y, _ = librosa.load(path, sr=params.sample_rate, mono=True, duration=params.duration_s)
        if y.shape[0] < params.n_samples:
            y = np.pad(y, (0, params.n_samples - y.shape[0]))
        mel = librosa.feature.melspectrogram(
            y=y[: params.n_samples],
            sr=params.sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
        )
        db = librosa.power_to_db(mel, ref=np.max, top_db=params.top_db)
        return session.run(None, {session.get_inputs()[0].name: db[None, None].astype(np.float32)})[0]

    order = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]
    subset = order[: min(min_subset, len(order))]
    for p in order[-5:]:  # warm-up: librosa's lazily compiled and cached pieces, onnxruntime's arenas
        one(p)
    start, cpu = time.perf_counter(), time.process_time()
    for p in subset:
        one(p)
    elapsed = time.perf_counter() - start
    projected = elapsed / len(subset) * len(order)
    if len(subset) == len(order) or projected > budget_s:
        return Rate(
            len(subset) / elapsed,
            (time.process_time() - cpu) / len(subset) * 1000,
            f"seeded subset of {len(subset)} of {len(order)} files",
        )
    for p in order[len(subset) :]:
        one(p)
    elapsed = time.perf_counter() - start
    cpu_ms = (time.process_time() - cpu) / len(order) * 1000
    return Rate(len(order) / elapsed, cpu_ms, f"all {len(order)} files")


# -- 3c. decode-only bound -------------------------------------------------------------------------------
def decode_throughput(paths: list[str], threads: int, params: SpectrogramParams) -> Rate:
    """decode() of every file at the model's parameters (its sample rate: a resampling the daemon does too)."""

    def one(path: str) -> bool:
        try:
            decode(path, params)
            return True
        except DecodeError:
            return False

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths[:20]))  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        ok = sum(pool.map(one, paths))
        elapsed = time.perf_counter() - start
        cpu_ms = (time.process_time() - cpu) / len(paths) * 1000
    return Rate(len(paths) / elapsed, cpu_ms, f"all {len(paths)} files, {len(paths) - ok} failed")


# -- 3b + 4. the daemon end to end, with its RSS -----------------------------------------------------------
class RssSampler(threading.Thread):
    """RSS of a process and its children, every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name="rss", daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def sample(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def run(self) -> None:
        while True:
            try:
                self.samples.append(self.sample())
            except psutil.Error:
                return
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class DaemonRun:
    files_per_s: float
    seconds: float
    indexed: int
    failed: int
    failures: list[str]
    peak_rss: int
    idle_rss: int
    end_rss: int
    rss_samples: int
    startup_s: float
    cpu_ms_per_file: float
    states: Counter = field(default_factory=Counter)


def prepare_home(model_path: Path) -> Path:
    """A fresh home: settle_s 0.2, the benchmark's model installed and the only active model."""
    home = Path(tempfile.mkdtemp(prefix="vb-"))  # short: Unix socket paths are limited to ~100 bytes
    config.Settings(settle_s=0.2).save(home)
    index = Index(config.index_path(home))
    try:
        for row in registry.ensure_models(index, home):
            index.set_active(row, False)
        model = registry.install(index, home, str(model_path))  # the demo model: its built-in row
        index.set_active(model, True)
        active = [m.ref for m in index.active_models()]
    finally:
        index.close()
    assert active == [model.ref], active
    return home


def daemon_throughput(d: DaemonProcess, folder: Path, count: int, startup_s: float, timeout_s: float) -> DaemonRun:
    sampler = RssSampler(d.proc.pid)
    time.sleep(0.5)
    idle_rss = sampler.sample()
    sampler.start()
    client = d.client
    cpu_before = sum(process_cpu(sampler.proc))
    start = time.perf_counter()
    client.add_watch(str(folder))
    while True:
        status = client.status()
        if status.indexed + status.failed >= count:
            break
        if time.perf_counter() - start > timeout_s:
            sampler.stop()
            raise RuntimeError(f"daemon not done after {timeout_s:.0f}s: {status}\n{d.log()[-3000:]}")
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {d.proc.returncode}:\n{d.log()[-3000:]}")
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    cpu_ms = (sum(process_cpu(sampler.proc)) - cpu_before) / count * 1000
    sampler.stop()
    end_rss = sampler.sample()
    states: Counter = Counter()
    failures: list[str] = []
    tagged = 0
    for f in client.tags([str(folder)]):
        states[f.state] += 1
        tagged += bool(f.tags)
        if f.state == "failed" and len(failures) < 5:
            failures.append(f"{f.path}: {f.error}")
    if tagged != status.indexed:
        raise RuntimeError(f"{status.indexed} files indexed but only {tagged} have tags")
    return DaemonRun(
        count / elapsed,
        elapsed,
        status.indexed,
        status.failed,
        failures,
        max(sampler.samples),
        idle_rss,
        end_rss,
        len(sampler.samples),
        startup_s,
        cpu_ms,
        states,
    )


def process_cpu(proc: psutil.Process) -> tuple[float, float]:
    """User and system CPU seconds of a process and its children."""
    t = proc.cpu_times()
    user, system = t.user, t.system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = child.cpu_times()
            user, system = user + ct.user, system + ct.system
    return user, system


# -- 5. drop → tags queryable ----------------------------------------------------------------------------
def drop_latency(
    d: DaemonProcess,
    folder: Path,
    stage: Path,
    drops: int,
    seed: int,
    how: str,
    variant: int,
    encodings: list[Encoding],
) -> tuple[list[float], int]:
    """Latencies (ms) from the start of the copy to GetTags answering 'indexed'; and the count that failed."""
    moves: dict[str, Callable[[str, str], object]] = {
        "shutil.copy": shutil.copy,
        "shutil.copyfile": shutil.copyfile,
        "os.replace": os.replace,
    }
    move = moves[how]
    client = d.client
    latencies: list[float] = []
    failed = 0
    for i in range(drops):
        rng = np.random.default_rng([seed, 7, variant, i])
        clip = write_clip(stage / f"drop_{how.replace('.', '_')}_{i:03d}", rng, encodings)
        target = str(folder / os.path.basename(clip.path))
        time.sleep(0.1)  # the daemon is idle, the staged file's own events are long gone
        start = time.perf_counter()
        move(clip.path, target)
        state = ""
        while time.perf_counter() - start < 10.0:
            found = list(client.tags([target]))
            state = found[0].state if found else ""
            if state in ("indexed", "failed"):
                break
            time.sleep(0.005)
        elapsed_ms = (time.perf_counter() - start) * 1000
        if state == "indexed":
            latencies.append(elapsed_ms)
        else:
            failed += 1
        if how != "os.replace":
            os.unlink(clip.path)
    return latencies, failed


# -- 6. tag search on 1 M synthetic rows ------------------------------------------------------------------
SUBFOLDERS = ("bass", "drums", "fx", "keys")  # sorted, so rows are written in path order
FILES_PER_PACK = 1000


def build_search_index(path: Path, rows: int, seed: int) -> tuple[float, int, int]:
    """Fill daemon.index's tables directly: files, contents, tags (1-3 per file, `hit` as the daemon
    writes it), tagged, vocab and one active model. Returns (seconds, tag rows, hit rows)."""
    start = time.perf_counter()
    index = Index(path)
    c = index.conn()
    c.execute("PRAGMA synchronous=OFF")
    c.execute("PRAGMA cache_size=-262144")
    secondary = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]
    for name in secondary:  # built in one sort each at the end, from the same SCHEMA
        c.execute(f"DROP INDEX {name}")
    now = time.time()
    c.execute("BEGIN")
    c.execute(
        """INSERT INTO models(id, name, version, path, sha256, classes, spectrogram, active, builtin,
                              installed)
           VALUES (1, 'standin-cnn', 1, '/nowhere/standin-cnn.onnx', ?, ?, ?, 1, 0, ?)""",
        ("0" * 64, json.dumps(list(CLASSES)), SpectrogramParams().to_json(), now),
    )
    c.execute(
        """INSERT INTO models(id, name, version, path, sha256, classes, spectrogram, active, builtin,
                              installed)
           VALUES (2, 'mood', 1, '/nowhere/mood.onnx', ?, ?, ?, 1, 0, ?)""",
        ("1" * 64, json.dumps(list(MOODS)), SpectrogramParams().to_json(), now),
    )
    c.executemany("INSERT INTO vocab(id, tag) VALUES (?, ?)", [(i + 1, t) for i, t in enumerate(CLASSES + MOODS)])
    c.execute("COMMIT")
    rng = np.random.default_rng([seed, 6])
    popularity = 1.0 / np.arange(1, len(CLASSES) + 1) ** 0.8  # a few common tags, a long tail
    rng.shuffle(popularity)
    log_pop = np.log(popularity / popularity.sum())
    tag_rows = hit_rows = 0
    chunk = 100_000
    for lo in range(0, rows, chunk):
        ids = np.arange(lo + 1, min(rows, lo + chunk) + 1)
        n = ids.size
        # 1-3 distinct tags per file, drawn by popularity (Gumbel top-k), with descending scores
        picks = np.argsort(-(log_pop + rng.gumbel(size=(n, len(CLASSES)))), axis=1)[:, :3] + 1
        count = rng.choice([1, 2, 3], size=n, p=[0.45, 0.35, 0.20])
        s0 = rng.uniform(0.25, 0.99, n)
        s1 = rng.uniform(0.02, 1.0, n) * s0
        s2 = rng.uniform(0.02, 1.0, n) * s1
        scores = np.stack([s0, s1, s2], axis=1)
        rank = np.broadcast_to(np.arange(3), (n, 3))
        keep = rank < count[:, None]
        cid = np.broadcast_to(ids[:, None], (n, 3))[keep]
        tag = picks[keep]
        score = scores[keep]
        hit = ((rank[keep] == 0) | (score >= HIT_SCORE)).astype(np.int64)
        order = np.lexsort((tag, cid))
        hashes = rng.bytes(8 * n)
        files = []
        for i in ids.tolist():
            pack, nth = divmod(i - 1, FILES_PER_PACK)
            folder = f"/library/pack_{pack:04d}/{SUBFOLDERS[nth * len(SUBFOLDERS) // FILES_PER_PACK]}"
            files.append(
                (
                    i,
                    f"{folder}/sample_{i:07d}.wav",
                    folder,
                    100_000 + i % 5_000_000,
                    1_700_000_000_000_000_000 + i,
                    i,
                    now,
                )
            )
        c.execute("BEGIN")
        c.executemany(
            "INSERT INTO contents(id, hash) VALUES (?, ?)",
            ((i, i.to_bytes(8, "big") + hashes[8 * k : 8 * k + 8]) for k, i in enumerate(ids.tolist())),
        )
        c.executemany(
            """INSERT INTO files(id, path, dir, size, mtime_ns, content_id, state, error, due, gen, updated)
               VALUES (?, ?, ?, ?, ?, ?, 'indexed', NULL, 0, 1, ?)""",
            files,
        )
        tag_values = zip(
            cid[order].tolist(), tag[order].tolist(), score[order].tolist(), hit[order].tolist(), strict=True
        )
        c.executemany("INSERT INTO tags VALUES (?, 1, ?, ?, ?)", tag_values)
        c.executemany("INSERT INTO tagged VALUES (?, 1)", ((i,) for i in ids.tolist()))
        # a second tag family: each file's best mood, sometimes a runner-up
        mood = rng.integers(len(MOODS), size=n) + len(CLASSES) + 1
        mood_score = rng.uniform(0.3, 0.99, n)
        c.executemany(
            "INSERT INTO tags VALUES (?, 2, ?, ?, 1)",
            zip(ids.tolist(), mood.tolist(), mood_score.tolist(), strict=True),
        )
        c.executemany("INSERT INTO tagged VALUES (?, 2)", ((i,) for i in ids.tolist()))
        c.execute("COMMIT")
        tag_rows += int(cid.size) + n
        hit_rows += int(hit.sum()) + n
    c.executescript(SCHEMA)  # the secondary indexes, exactly as the daemon declares them
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index.analyze()  # as the daemon does once it is idle after indexing
    index.close()
    return time.perf_counter() - start, tag_rows, hit_rows


QUERY_KINDS = ("single tag", "AND across families", "AND within a family", "tag + NOT", "OR group", "tag + path prefix")
MOODS = ("dark", "bright", "warm", "aggressive", "soft", "vintage")


def make_queries(count: int, rows: int, seed: int) -> list[tuple[str, Query]]:
    rng = np.random.default_rng([seed, 61])
    packs = max(1, math.ceil(rows / FILES_PER_PACK))
    queries = []
    for i in range(count):
        kind = QUERY_KINDS[i % len(QUERY_KINDS)]
        a, b, c = (CLASSES[j] for j in rng.choice(len(CLASSES), 3, replace=False))
        if kind == "single tag":
            q = Query(all_of=[[a]], limit=100)
        elif kind == "AND across families":  # instrument AND mood: what a producer asks for
            q = Query(all_of=[[a], [MOODS[int(rng.integers(len(MOODS)))]]], limit=100)
        elif kind == "AND within a family":  # two instruments on one file: rare with a softmax model
            q = Query(all_of=[[a], [b]], limit=100)
        elif kind == "tag + NOT":
            q = Query(all_of=[[a]], none_of=[b], limit=100)
        elif kind == "OR group":
            q = Query(all_of=[[a, b, c][: int(rng.integers(2, 4))]], limit=100)
        else:
            q = Query(all_of=[[a]], path_prefix=f"/library/pack_{int(rng.integers(packs)):04d}", limit=100)
        queries.append((kind, q))
    order = rng.permutation(len(queries))
    return [queries[i] for i in order]


def search_latency(path: Path, queries: list[tuple[str, Query]]) -> dict[str, tuple[list[float], list[int]]]:
    index = Index(path)  # a fresh connection, as the daemon's API thread would have
    try:
        for _, q in queries[:25]:
            sum(1 for _ in search(index, q))  # warm-up (not counted)
        out: dict[str, tuple[list[float], list[int]]] = {k: ([], []) for k in QUERY_KINDS}
        for kind, q in queries:
            start = time.perf_counter()
            found = sum(1 for _ in search(index, q))
            out[kind][0].append((time.perf_counter() - start) * 1000)
            out[kind][1].append(found)
    finally:
        index.close()
    return out


# -- the report ------------------------------------------------------------------------------------------
def versions() -> str:
    import grpc

    return (
        f"Python {platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}, "
        f"soundfile {sf.__version__} (libsndfile {sf.__libsndfile_version__}), "
        f"SQLite {sqlite3.sqlite_version}, grpcio {grpc.__version__}"
    )


def row(name: str, measured: str, goal: str = "—", ratio: float | None = None, higher_better: bool = True) -> str:
    if ratio is None:
        return f"| {name} | {measured} | {goal} | — | — |"
    met = ratio >= 1.0 if higher_better else ratio <= 1.0
    return f"| {name} | {measured} | {goal} | {ratio:.2f} | {'met' if met else '**missed**'} |"


def write_report(out: Path, body: str) -> None:
    block = f"{MARK_START}\n{body.rstrip()}\n{MARK_END}\n"
    if out.exists():
        text = out.read_text()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            tail = rest.split(MARK_END, 1)[1].lstrip("\n")
            out.write_text(head + block + ("\n" + tail if tail else ""))
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    intro = "# Benchmarks\n\nGenerated by `benchmarks/bench_daemon.py`; see `benchmarks/README.md`.\n\n"
    out.write_text(intro + block)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=2000, help="files in the clip set (default 2000)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="files in the synthetic search index")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="report file ('' for none)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--drops", type=int, default=50, help="drops per copy method for the latency test")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument(
        "--model", default="", help="an ONNX model to run instead of the demo (its spectrogram parameters are used)"
    )
    ap.add_argument("--naive-subset", type=int, default=300, help="files the naive loop times at least")
    ap.add_argument(
        "--naive-budget",
        type=float,
        default=150.0,
        help="seconds the naive loop may take over the whole set before a subset is used instead",
    )
    args = ap.parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["benchmarks/bench_daemon.py", *argv])])
    started = dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    threads = os.cpu_count() or 1
    settings = config.Settings(settle_s=0.2)
    temps: list[Path] = []
    daemon: DaemonProcess | None = None

    def temp(prefix: str) -> Path:
        p = Path(tempfile.mkdtemp(prefix=prefix))
        temps.append(p)
        return p

    try:
        # 1. clips
        encodings = usable_encodings()
        log(f"encodings writable here: {', '.join(e.label for e in encodings)}")
        clips_dir = temp("vb-clips-")
        t = time.perf_counter()
        clips = make_clip_set(clips_dir, args.clips, args.seed, encodings)
        paths = [c.path for c in clips]
        total_bytes = sum(os.path.getsize(p) for p in paths)
        mix_enc = Counter(c.encoding for c in clips)
        mix_rate = Counter(c.rate for c in clips)
        mix_kind = Counter(c.kind for c in clips)
        stereo = sum(c.channels == 2 for c in clips)
        mean_s = float(np.mean([c.seconds for c in clips]))
        log(
            f"clip set: {len(clips)} files, {total_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s; "
            f"{dict(mix_enc)}; rates {dict(sorted(mix_rate.items()))}; {stereo} stereo; "
            f"mean duration {mean_s:.2f}s; {dict(mix_kind)}"
        )

        # 2. model
        if args.model:
            model_path, model_label = Path(args.model), f"`{args.model}` (--model)"
        elif DEMO.exists():
            model_path, model_label = DEMO, "the built-in *demo model* (`daemon/builtin/demo.onnx`)"
        else:
            model_path = standin_cnn(temp("vb-model-") / "standin-cnn.onnx", seed=args.seed)
            model_label = (
                "the *stand-in CNN* (random seeded weights; 4 × Conv 3x3/32 + ELU + MaxPool 2x2, "
                "Gemm 128, ELU, Gemm 15, Softmax on [N, 1, 96, 259]): the demo model is not built"
            )
        cost_session = ort_session(model_path, threads)
        cnn_1 = cnn_cost_ms(cost_session, 1, 30)
        cnn_32 = cnn_cost_ms(cost_session, settings.batch_size, 3)
        del cost_session
        log(
            f"model {model_path.name}: {os.path.getsize(model_path) / 1e6:.2f} MB, {cnn_1:.1f} ms/clip at batch 1, "
            f"{cnn_32:.1f} ms/clip at batch {settings.batch_size} ({threads} threads)"
        )

        # 3c + 3a at the daemon's priority
        # the daemon's os.nice(settings.nice) adds to the niceness it inherits from this script
        daemon_nice = min(19, psutil.Process().nice() + settings.nice)
        with niceness(daemon_nice):
            log(f"decode-only bound: {threads} threads over {len(paths)} files ...")
            dec = decode_throughput(paths, settings.worker_count, model_params(ort_session(model_path, 1)))
            log(f"decode-only: {dec.files_per_s:.1f} files/s, {dec.cpu_ms_per_file:.1f} ms CPU/file ({dec.what})")
            log("naive loop (librosa + onnxruntime, one file at a time) ...")
            naive = naive_throughput(paths, model_path, args.seed, args.naive_subset, args.naive_budget)
            log(f"naive: {naive.files_per_s:.1f} files/s, {naive.cpu_ms_per_file:.1f} ms CPU/file ({naive.what})")

        # 3b + 4
        home = prepare_home(model_path)
        temps.append(home)
        t = time.perf_counter()
        daemon = start_daemon(home)
        startup_s = time.perf_counter() - t
        log(f"daemon up in {startup_s:.1f}s (pid {daemon.proc.pid}); watching {clips_dir} ...")
        run = daemon_throughput(daemon, clips_dir, len(paths), startup_s, timeout_s=600)
        log(
            f"daemon: {run.files_per_s:.1f} files/s, {run.cpu_ms_per_file:.1f} ms CPU/file "
            f"({run.seconds:.1f}s, {run.indexed} indexed, "
            f"{run.failed} failed), RSS idle {run.idle_rss / 1e6:.0f} MB, peak {run.peak_rss / 1e6:.0f} MB "
            f"over {run.rss_samples} samples"
        )
        for f in run.failures:
            log(f"  failed: {f}")

        # 5
        stage = temp("vb-stage-")  # outside the watched folder, same filesystem
        drop_results = {}
        for variant, how in enumerate(("shutil.copy", "shutil.copyfile", "os.replace")):
            lat, drop_failed = drop_latency(daemon, clips_dir, stage, args.drops, args.seed, how, variant, encodings)
            drop_results[how] = (lat, drop_failed)
            log(
                f"drop → queryable via {how}: p50 {pct(lat, 50):.0f} ms, p95 {pct(lat, 95):.0f} ms, "
                f"max {max(lat, default=float('nan')):.0f} ms ({drop_failed} not indexed)"
            )
        code = daemon.stop()
        daemon = None
        if code != 0:
            log(f"warning: daemon exited with {code}")

        # 6
        db_dir = temp("vb-search-")
        db_path = db_dir / "index.sqlite"
        log(f"building a {args.rows:,}-file index ...")
        build_s, tag_rows, hit_rows = build_search_index(db_path, args.rows, args.seed)
        db_mb = sum(p.stat().st_size for p in db_dir.iterdir()) / 1e6
        log(f"built in {build_s:.1f}s: {tag_rows:,} tag rows ({hit_rows:,} hits), {db_mb:.0f} MB")
        queries = make_queries(args.queries, args.rows, args.seed)
        by_kind = search_latency(db_path, queries)
        best_kind = search_latency(db_path, [(kind, replace(q, best_first=True)) for kind, q in queries])
        all_ms = [ms for lat, _ in by_kind.values() for ms in lat]
        best_ms = [ms for lat, _ in best_kind.values() for ms in lat]
        for kind, (lat, found) in by_kind.items():
            log(
                f"search {kind}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, "
                f"max {max(lat):.2f} ms, {np.mean(found):.0f} results on average"
            )
        log(f"search overall: p50 {pct(all_ms, 50):.2f} ms, p99 {pct(all_ms, 99):.2f} ms")
        log(f"search best first: p50 {pct(best_ms, 50):.2f} ms, p99 {pct(best_ms, 99):.2f} ms")
    finally:
        if daemon is not None:
            daemon.stop()
        for p in temps:
            shutil.rmtree(p, ignore_errors=True)

    finished = dt.datetime.now().astimezone()
    load_after = os.getloadavg()
    speedup = run.files_per_s / naive.files_per_s
    share = run.files_per_s / dec.files_per_s
    peak_mb = run.peak_rss / 1e6
    copy_lat = drop_results["shutil.copy"][0]
    p95 = pct(copy_lat, 95)
    p99 = pct(all_ms, 99)
    lines = [
        "| Benchmark | Measured | Goal | Measured ÷ goal | Met? |",
        "| --- | --- | --- | --- | --- |",
        row(
            "Naive loop: librosa.load + melspectrogram + power_to_db + onnxruntime, one file at a time",
            f"{naive.files_per_s:.1f} files/s, {naive.cpu_ms_per_file:.0f} ms CPU/file ({naive.what})",
        ),
        row(
            f"Daemon end to end: add_watch → indexed+failed = {len(paths)} (real process, "
            f"{settings.worker_count} workers)",
            f"{run.files_per_s:.1f} files/s, {run.cpu_ms_per_file:.0f} ms CPU/file ({run.seconds:.1f} s)",
        ),
        row(
            f"Decode-only bound: decode() on {settings.worker_count} threads",
            f"{dec.files_per_s:.1f} files/s, {dec.cpu_ms_per_file:.1f} ms CPU/file",
        ),
        row("Daemon ÷ naive loop", f"{speedup:.2f}×", f"≥ {GOAL_SPEEDUP:.0f}×", speedup / GOAL_SPEEDUP),
        row(
            "Naive loop ÷ daemon in CPU time per file (depends little on other load)",
            f"{naive.cpu_ms_per_file / run.cpu_ms_per_file:.2f}×",
        ),
        row("Daemon ÷ decode-only", f"{share:.0%}", f"≥ {GOAL_DECODE_SHARE:.0%}", share / GOAL_DECODE_SHARE),
        row(
            "Daemon peak RSS while indexing (incl. children, sampled every 100 ms)",
            f"{peak_mb:.0f} MB (idle before: {run.idle_rss / 1e6:.0f} MB)",
            f"≤ {GOAL_RSS_MB:.0f} MB",
            peak_mb / GOAL_RSS_MB,
            higher_better=False,
        ),
        row(
            f"Drop → tags queryable, shutil.copy into the watched folder ({len(copy_lat)} drops), p50 / p95",
            f"{pct(copy_lat, 50):.0f} / {p95:.0f} ms",
            f"p95 ≤ {GOAL_DROP_P95_MS:.0f} ms",
            p95 / GOAL_DROP_P95_MS,
            higher_better=False,
        ),
        row(
            f"Tag search on {args.rows:,} files, {len(all_ms)} queries (limit 100), p50 / p99",
            f"{pct(all_ms, 50):.2f} / {p99:.2f} ms",
            f"p99 ≤ {GOAL_SEARCH_P99_MS:.0f} ms",
            p99 / GOAL_SEARCH_P99_MS,
            higher_better=False,
        ),
    ]
    main_table = "\n".join(lines)
    drop_table = "\n".join(
        ["| Drop method | Drops | p50 | p95 | max | not indexed in 10 s |", "| --- | --- | --- | --- | --- | --- |"]
        + [
            f"| `{how}` | {len(lat)} | {pct(lat, 50):.0f} ms | {pct(lat, 95):.0f} ms | "
            f"{max(lat, default=float('nan')):.0f} ms | {nf} |"
            for how, (lat, nf) in drop_results.items()
        ]
    )
    search_table = "\n".join(
        [
            "| Query kind | Queries | p50 | p99 | max | mean results | best first: p50 | p99 | max |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        + [
            f"| {kind} | {len(lat)} | {pct(lat, 50):.2f} ms | {pct(lat, 99):.2f} ms | {max(lat):.2f} ms | "
            f"{np.mean(found):.1f} | {pct(best, 50):.2f} ms | {pct(best, 99):.2f} ms | {max(best):.2f} ms |"
            for (kind, (lat, found)), (best, _) in zip(by_kind.items(), best_kind.values(), strict=True)
        ]
        + [
            f"| **all** | {len(all_ms)} | {pct(all_ms, 50):.2f} ms | {p99:.2f} ms | {max(all_ms):.2f} ms | | "
            f"{pct(best_ms, 50):.2f} ms | {pct(best_ms, 99):.2f} ms | {max(best_ms):.2f} ms |"
        ]
    )
    mix = ", ".join(f"{k} {v}" for k, v in mix_enc.most_common())
    rates = ", ".join(f"{r / 1000:g} kHz {n}" for r, n in sorted(mix_rate.items()))
    kinds = ", ".join(f"{k} {v}" for k, v in mix_kind.most_common())
    ram_gib = psutil.virtual_memory().total / 2**30
    took_min = (finished - started).total_seconds() / 60
    packs = math.ceil(args.rows / FILES_PER_PACK)
    body = f"""## Results: {started:%Y-%m-%d %H:%M %Z}

- **Command:** `{command}` (from the repository root, venv active)
- **Machine:** `nproc` = {os.cpu_count()}, CPU: {cpu_model()}, {ram_gib:.0f} GiB RAM,
  {platform.system()} {platform.release()}; load average {load_before[0]:.2f} at the start and
  {load_after[0]:.2f} at the end (other work may share this machine); the run took {took_min:.1f} min
- **Software:** {versions()}
- **Model:** {model_label}, for every throughput figure.
  It costs {cnn_1:.1f} ms per clip at batch 1 and {cnn_32:.1f} ms per clip at batch {settings.batch_size}
  on {threads} onnxruntime threads.
- **Clip set:** {len(clips)} files, {total_bytes / 1e6:.0f} MB, seed {args.seed}: {mix}; {rates};
  {stereo} stereo / {len(clips) - stereo} mono; 0.2-6 s (mean {mean_s:.2f} s); {kinds}.
  All three throughput figures are over these files with a warm page cache; the naive loop and
  decode-only ran at the daemon's niceness ({daemon_nice}), one after the other in this run.
- **Daemon:** fresh home, `settle_s` 0.2, other settings default (workers {settings.worker_count},
  batch {settings.batch_size}, queue {settings.queue_size}); up in {run.startup_s:.1f} s;
  {run.indexed} indexed, {run.failed} failed; RSS {run.idle_rss / 1e6:.0f} MB idle, peak {peak_mb:.0f} MB,
  {run.end_rss / 1e6:.0f} MB when done (MB = 10^6 bytes).

{main_table}

"Measured ÷ goal" is ≥ 1 for a met "≥" goal and ≤ 1 for a met "≤" goal. "ms CPU/file" is the CPU time
of all the process's threads (user + system) over the timed files: unlike files/s, it hardly depends on
what else the machine is doing, so it is the figure to compare between runs on a busy machine.

### Drop → tags queryable, by how the file arrives

Timer from the start of the copy/rename into the watched folder until `GetTags` (polled every 5 ms)
says `indexed`; the daemon idle, a new unique clip each time, written beforehand outside the watched
folder. The goal row above is `shutil.copy`.

{drop_table}

### Tag search by query kind

`search(index, Query(..., limit=100))` on a fresh connection, results consumed, after 25 warm-up
queries; "best first" is the same queries with `best_first=True` (the 100 surest matches, as `vibrary
search --limit` asks), timed after them. Index: {args.rows:,} files in {packs:,} pack folders,
{tag_rows:,} tag rows ({hit_rows:,} hits; two tag families: 15 instrument tags with a long-tail
popularity, 1-3 per file, scores shaped like a softmax model's, and 6 moods, one per file), {db_mb:.0f} MB,
built in {build_s:.0f} s; then `ANALYZE`, as the daemon runs it when idle after indexing.

{search_table}
"""
    print("\n" + body)
    if args.out:
        write_report(Path(args.out), body)
        log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
