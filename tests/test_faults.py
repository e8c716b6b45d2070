"""Bad input never stops tagging: every broken file gets a clear one-line reason, the rest get their tags.

Each fault is checked twice: through `vibrary tag --json` (a line with no tags and an error, exit status
0, the good files beside it still tagged right) and through the running daemon (the file ends "failed"
with that error, a FILE_FAILED event goes out, and files dropped afterwards are still tagged). A file
deleted before it is read is the exception: the CLI says "not found", the daemon drops it (FILE_REMOVED).
Then the heavier cases: a 2-hour file in flat memory, a kill -9 in the middle of indexing, malformed gRPC
requests, and a second daemon on the same home.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from vibrary.clients.client import Client, DaemonError
from vibrary.daemon import config, decode, features
from vibrary.daemon.cache import SpectrogramCache
from vibrary.daemon.index import Index, Job, Result
from vibrary.daemon.infer import Model
from vibrary.daemon.pipeline import ActiveModel, Pipeline
from vibrary.daemon.service import load_models
from vibrary.proto import daemon_pb2 as pb

from tests.conftest import AS_USER, DaemonProcess, json_lines, start_daemon, vibrary, wait_for
from tests.synth import BANDS, band_model, write_tone

NEEDS_USER = pytest.mark.skipif(
    os.geteuid() == 0 and not AS_USER,
    reason="root without setpriv reads a chmod 000 file: 'permission denied' cannot happen",
)


# -- broken files --------------------------------------------------------------------------------------------
def _wav_bytes(freq: float = 1000.0, seconds: float = 1.0) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return write_tone(Path(tmp) / "t.wav", freq, seconds).read_bytes()


def make_empty(folder: Path) -> list[Path]:
    path = folder / "x.wav"
    path.write_bytes(b"")
    return [path]


def make_truncated(folder: Path) -> list[Path]:
    data = _wav_bytes()
    path = folder / "cut.wav"
    path.write_bytes(data[: len(data) // 3])
    return [path]


def make_text(folder: Path) -> list[Path]:
    path = folder / "notes.wav"
    path.write_text("kick ideas:\n- layer the 909 with a sub\n- shorten the tail\n" * 20)
    return [path]


def make_huge_header(folder: Path) -> list[Path]:
    """A one-second WAV whose RIFF and data chunk sizes claim ~4 GB of samples (10 GB-class header)."""
    data = bytearray(_wav_bytes())
    struct.pack_into("<I", data, 4, 0xF0000000)
    at = data.index(b"data")
    struct.pack_into("<I", data, at + 4, 0xF0000000 - at)
    path = folder / "huge.wav"
    path.write_bytes(bytes(data))
    return [path]


def make_unknown_codec(folder: Path) -> list[Path]:
    """A WAV with format tag 0x1234 (no such codec) and an Ogg that is garbage after its magic bytes."""
    data = bytearray(_wav_bytes())
    assert data[12:16] == b"fmt " and struct.unpack_from("<H", data, 20)[0] == 1  # PCM
    struct.pack_into("<H", data, 20, 0x1234)
    wav = folder / "codec.wav"
    wav.write_bytes(bytes(data))
    ogg = folder / "broken.ogg"
    ogg.write_bytes(b"OggS" + np.random.default_rng(1).bytes(8000))
    return [wav, ogg]


def make_garbage_mp3(folder: Path) -> list[Path]:
    path = folder / "broken.mp3"
    path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + np.random.default_rng(2).bytes(8000))
    return [path]


def make_unreadable(folder: Path) -> list[Path]:
    """Made unreadable before it lands in `folder` (moved in), so no reader ever sees it readable."""
    staging = folder.parent / f".staging-{folder.name}"
    staging.mkdir(exist_ok=True)
    path = write_tone(staging / "locked.wav", 1000)
    path.chmod(0)
    return [path.rename(folder / path.name)]


def make_link_loop(folder: Path) -> list[Path]:
    (folder / "a.wav").symlink_to("b.wav")
    (folder / "b.wav").symlink_to("a.wav")
    return [folder / "a.wav", folder / "b.wav"]


def make_header_only(folder: Path) -> list[Path]:
    """A well-formed WAV header with no samples after it (a render that was cancelled at once)."""
    path = folder / "nothing.wav"
    data = bytearray(_wav_bytes()[:44])  # written once: a first version read by the watcher failed otherwise
    assert data[36:40] == b"data"
    struct.pack_into("<I", data, 4, 36)
    struct.pack_into("<I", data, 40, 0)
    path.write_bytes(bytes(data))
    return [path]


def make_fifo(folder: Path) -> list[Path]:
    """A named pipe called .wav: opening it for reading would block forever."""
    path = folder / "pipe.wav"
    os.mkfifo(path)
    return [path]


@dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[Path], list[Path]]
    words: tuple[str, ...]  # the error must contain one of these (lower case)
    marks: tuple[pytest.MarkDecorator, ...] = ()


FAULTS = [
    Fault("empty", make_empty, ("empty",)),
    Fault("truncated", make_truncated, ("truncated",)),
    Fault("text_as_wav", make_text, ("not a recognised audio format",)),
    Fault("header_claims_10gb", make_huge_header, ("truncated or corrupt",)),
    Fault("unknown_codec", make_unknown_codec, ("not a recognised audio format", "cannot decode audio")),
    Fault("garbage_mp3", make_garbage_mp3, ("not a recognised audio format", "cannot decode audio")),
    Fault("unreadable", make_unreadable, ("permission denied",), (NEEDS_USER,)),
    Fault("symlink_loop", make_link_loop, ("symbolic link loop",)),
    Fault("header_only", make_header_only, ("no audio",)),
    Fault("fifo", make_fifo, ("not a regular file",)),
]
FAULT_PARAMS = [pytest.param(f, id=f.name, marks=f.marks) for f in FAULTS]


def check_error(error: str | None, fault: Fault) -> None:
    assert error, "a failed file must say why"
    assert "\n" not in error and len(error) < 200, f"not a one-line reason: {error!r}"
    assert any(w in error.lower() for w in fault.words), f"{fault.name}: unexpected reason {error!r}"
    # the file is right there: a reason that says otherwise sends the producer looking in the wrong place
    assert "does not exist" not in error.lower() and "not found" not in error.lower(), error


_detune = itertools.count(1)


def write_good(folder: Path, prefix: str = "good") -> dict[str, str]:
    """One tone per band, each a little detuned so that no two files share content; path → right tag."""
    k = next(_detune)
    return {
        str(write_tone(folder / f"{prefix}_{band}.wav", freq * (1 + 0.003 * k))): band for band, freq in BANDS.items()
    }


def best_tag(tags: list[dict]) -> str:
    return max(tags, key=lambda t: t["score"])["tag"] if tags else ""


# -- (1) vibrary tag --json ----------------------------------------------------------------------------------
def tag_json(home: Path, *paths: Path | str) -> dict[str, dict]:
    proc = vibrary("tag", "--json", *map(str, paths), home=home)
    assert proc.returncode == 0
    lines = json_lines(proc.stdout)
    by_path = {line["path"]: line for line in lines}
    assert len(by_path) == len(lines), "a file was reported twice"
    return by_path


def assert_good_tagged(lines: dict[str, dict], good: dict[str, str]) -> None:
    for path, band in good.items():
        assert lines[path]["error"] is None, lines[path]
        assert best_tag(lines[path]["tags"]) == band, lines[path]


@pytest.mark.parametrize("fault", FAULT_PARAMS)
def test_cli_reports_fault_and_tags_the_rest(fault: Fault, model_home: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    good = write_good(lib)
    bad = fault.make(lib)
    lines = tag_json(model_home, lib)
    assert set(lines) == set(good) | {str(p) for p in bad}
    for p in bad:
        line = lines[str(p)]
        assert line["tags"] == [], line
        check_error(line["error"], fault)
    assert_good_tagged(lines, good)


def test_cli_reports_file_deleted_before_the_read(model_home: Path, tmp_path: Path) -> None:
    good = write_good(tmp_path)
    gone = write_tone(tmp_path / "gone.wav", 1000)
    gone.unlink()
    lines = tag_json(model_home, gone, *good)
    assert lines[str(gone)]["tags"] == []
    assert lines[str(gone)]["error"] == "no such file or folder"  # not "deleted or moved before it could be read"
    assert_good_tagged(lines, good)


def _read_in_a_pipeline(
    model_home: Path, paths: list[Path], cache: SpectrogramCache | None = None
) -> tuple[list[Result], list[ActiveModel]]:
    """The files read by a Pipeline of the home's models (one worker, jobs 1, 2, … in order), as the daemon
    reads them: their results as they came, and the models."""
    results: list[Result] = []
    index = Index(config.index_path(model_home))
    models = load_models(index)
    pipeline = Pipeline(
        models, results.extend, workers=1, batch_size=4, queue_size=4, store_min_score=0.02, cache=cache
    )
    try:
        for i, path in enumerate(paths, start=1):
            pipeline.submit(Job(i, str(path), 1, -1, -1, None))
        assert pipeline.wait_idle(timeout=30)
    finally:
        pipeline.close()
        index.close()
    return results, models


@pytest.mark.parametrize(
    "stage",
    [
        "before_the_read",
        "inside_fingerprint",  # after its check_readable, before it opens the file
        "after_fingerprint",  # hashed, not yet decoded
        "inside_decode",  # after decode's check_readable, before libsndfile opens it
    ],
)
def test_pipeline_file_deleted_between_event_and_read(
    stage: str, model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline itself, with the file deleted at each point of its reading: always 'not found', never
    a broken file, and the next file is tagged as usual."""
    victim = write_tone(tmp_path / "victim.wav", 1000)
    good = write_tone(tmp_path / "good.wav", BANDS["high"])

    def deleting(real: Callable[[str], object]) -> Callable[[str], object]:
        def wrapper(path: str) -> object:
            value = real(path)
            if path == str(victim) and victim.exists():
                victim.unlink()
            return value

        return wrapper

    if stage == "before_the_read":
        victim.unlink()
    elif stage == "inside_fingerprint":
        monkeypatch.setattr(features, "check_readable", deleting(features.check_readable))
    elif stage == "after_fingerprint":
        monkeypatch.setattr(features, "fingerprint", deleting(features.fingerprint))
    else:
        monkeypatch.setattr(decode, "check_readable", deleting(decode.check_readable))

    results, _ = _read_in_a_pipeline(model_home, [victim, good])
    by_id = {r.job.id: r for r in results}
    assert not victim.exists() and set(by_id) == {1, 2}
    assert by_id[1].tags == {} and by_id[1].error and "not found" in by_id[1].error, by_id[1].error
    assert by_id[1].vanished, "a deleted file must leave the index, not sit there as a broken file"
    assert by_id[2].error is None
    ((_, ranked),) = by_id[2].tags.items()
    assert ranked[0][0] == "high"


def test_a_file_rewritten_between_its_hash_and_its_decoding_is_not_tagged_as_its_old_content(
    model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new sound was cached and tagged as the old content's, and every copy of the old content then
    reused those tags (a copy of a low tone came out 'high')."""
    victim = write_tone(tmp_path / "victim.wav", BANDS["low"])
    original = features.fingerprint(str(victim)).hash
    real = features.fingerprint

    def rewriting(path: str) -> features.Fingerprint:
        hashed = real(path)
        if path == str(victim):  # (each time: read again at once, it changed again)
            write_tone(victim, BANDS["high"], seconds=1.5)  # the producer saves over it meanwhile
        return hashed

    monkeypatch.setattr("vibrary.daemon.features.fingerprint", rewriting)
    cache = SpectrogramCache(tmp_path / "cache.sqlite", 1 << 20)
    (result,), models = _read_in_a_pipeline(model_home, [victim], cache)
    assert result.tags == {} and result.error == features.CHANGED and not result.vanished
    assert result.retry_for > 0  # read again a little later, whatever changed it
    assert all(cache.get(original, m.model.info.params) is None for m in models)
    cache.close()


def test_cli_folder_link_to_parent_terminates(model_home: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    good = write_good(lib)
    (lib / "up").symlink_to("..")  # lib/up/lib/up/lib/... for anything that follows links to folders
    (lib / "self").symlink_to(".")
    lines = tag_json(model_home, lib)
    assert set(lines) == set(good), "only the real files, each once, none through a folder link"
    assert_good_tagged(lines, good)


def test_cli_exits_0_when_every_file_is_bad(model_home: Path, tmp_path: Path) -> None:
    """Per-file errors are output, not a failed command: status 0 even when every file is bad."""
    bad = make_empty(tmp_path) + make_text(tmp_path)
    proc = vibrary("tag", "--json", *map(str, bad), home=model_home, check=False)
    assert proc.returncode == 0, proc.stderr
    assert all(line["error"] and line["tags"] == [] for line in json_lines(proc.stdout))
    assert len(json_lines(proc.stdout)) == 2


# -- (2) the running daemon ----------------------------------------------------------------------------------
class EventLog:
    """Reads the daemon's Events stream in a thread, on a client of its own."""

    def __init__(self, home: Path) -> None:
        self.client = Client(home_dir=home, timeout=30)
        self.events: list[pb.Event] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for e in self.client.events():
                with self._cond:
                    self.events.append(e)
                    self._cond.notify_all()
        except Exception:
            pass  # the stream ends when the client closes

    def mark(self) -> int:
        """A point in the stream: `wait(..., since=mark)` only accepts events that came after it."""
        with self._cond:
            return len(self.events)

    def find(self, kind: int, path: str, since: int = 0) -> list[pb.Event]:
        with self._cond:
            return [e for e in self.events[since:] if e.kind == kind and e.file.path == path]

    def wait(self, kind: int, path: str, since: int = 0, timeout: float = 20.0) -> pb.Event:
        with self._cond:
            self._cond.wait_for(lambda: bool(self.find(kind, path, since)), timeout)
        found = self.find(kind, path, since)
        if not found:
            raise AssertionError(
                f"no {pb.Event.Kind.Name(kind)} event for {path} within {timeout}s; "
                f"got {[(pb.Event.Kind.Name(e.kind), e.file.path) for e in self.events]}"
            )
        return found[0]

    def close(self) -> None:
        self.client.close()
        self._thread.join(timeout=5)


@dataclass
class Watched:
    daemon: DaemonProcess
    lib: Path
    events: EventLog

    def file(self, path: Path | str) -> pb.FileTags:
        (found,) = list(self.daemon.client.tags([str(path)]))
        return found


@pytest.fixture
def watched(daemon: DaemonProcess, tmp_path: Path) -> Iterator[Watched]:
    """The daemon watching an (almost) empty folder, with the Events stream already subscribed."""
    lib = tmp_path / "lib"
    lib.mkdir()
    probe = write_tone(lib / "probe.wav", 95.0)  # content no other test file shares
    log = EventLog(daemon.home)
    # Subscribed once the stream's first message (the status as it stands) came: the probe's event follows.
    # (Tagging the probe until its event came, when the subscription came late, asked the index: no event.)
    wait_for(lambda: log.mark() > 0)
    assert daemon.client.add_watch(str(lib)) == [str(lib)]
    log.wait(pb.Event.FILE_TAGGED, str(probe))
    yield Watched(daemon, lib, log)
    log.close()


def assert_keeps_tagging(w: Watched, prefix: str = "after") -> None:
    """Good files dropped now still get tagged, and tagged right."""
    good = write_good(w.lib, prefix)
    for path, band in good.items():
        e = w.events.wait(pb.Event.FILE_TAGGED, path)
        assert e.file.tags[0].tag == band
        f = w.file(path)
        assert (f.state, f.error, f.tags[0].tag) == ("indexed", "", band)


@pytest.mark.parametrize("fault", FAULT_PARAMS)
def test_daemon_fails_fault_and_keeps_going(fault: Fault, watched: Watched) -> None:
    bad = fault.make(watched.lib)  # appears while watched: the live path, events then settle
    for p in bad:
        e = watched.events.wait(pb.Event.FILE_FAILED, str(p))
        assert e.file.state == "failed" and not e.file.tags
        check_error(e.file.error, fault)
        f = watched.file(p)
        assert (f.state, list(f.tags)) == ("failed", []), f
        assert f.error == e.file.error
        assert not watched.events.find(pb.Event.FILE_TAGGED, str(p))
    assert_keeps_tagging(watched)
    s = watched.daemon.client.status()
    assert (s.failed, s.pending, s.indexed) == (len(bad), 0, 4)  # probe + three good files


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f, id=f.name, marks=f.marks)
        for f in FAULTS
        if f.name in ("empty", "text_as_wav", "symlink_loop", "unreadable")
    ],
)
def test_daemon_scan_fails_fault_found_at_start(fault: Fault, daemon: DaemonProcess, tmp_path: Path) -> None:
    """The same faults already on disk when the folder is added: found by the scan, not by events."""
    lib = tmp_path / "lib"
    lib.mkdir()
    good = write_good(lib)
    bad = fault.make(lib)
    daemon.client.add_watch(str(lib))
    total = len(good) + len(bad)
    wait_for(lambda: (s := daemon.client.status()).pending == 0 and s.indexed + s.failed == total)
    for p in bad:
        (f,) = list(daemon.client.tags([str(p)]))
        assert f.state == "failed"
        check_error(f.error, fault)
    for path, band in good.items():
        (f,) = list(daemon.client.tags([path]))
        assert (f.state, f.tags[0].tag) == ("indexed", band)


def test_daemon_drops_a_file_deleted_before_the_read(watched: Watched) -> None:
    """A file that is gone when a worker reaches it leaves the index (FILE_REMOVED), is never reported as a
    broken file, never stays pending, and costs nothing else."""
    d = watched.daemon
    # the daemon has a pending row (asked to tag it) but the file went away before the read
    gone = write_tone(watched.lib / "gone.wav", 1000)
    watched.events.wait(pb.Event.FILE_TAGGED, str(gone))
    gone.unlink()
    watched.events.wait(pb.Event.FILE_REMOVED, str(gone))
    (f,) = list(d.client.tag([str(gone)]))
    assert f.state in ("unknown", "failed") and not f.tags
    assert watched.file(gone).state == "unknown"
    # written and deleted inside the settle window
    flashes = [str(watch_and_delete(watched.lib / f"flash{i}.wav")) for i in range(5)]
    assert_keeps_tagging(watched)
    for path in flashes:
        watched.events.wait(pb.Event.FILE_REMOVED, path)
        wait_for(lambda: watched.file(path).state == "unknown")  # noqa: B023 - called before path moves on
    for path in [str(gone), *flashes]:
        assert not watched.events.find(pb.Event.FILE_FAILED, path), "a deleted file is not a broken file"
    s = d.client.status()
    assert (s.pending, s.failed, s.indexed) == (0, 0, 4)


def test_a_model_that_fails_on_one_file_says_it_once(model_home: Path, tmp_path: Path) -> None:
    """It said "failed on a batch of 1 (…); trying the files one by one", then the same error for the file."""
    buggy = band_model(tmp_path / "buggy.onnx", name="buggy", fails_on_audio=True)
    vibrary("models", "install", str(buggy), home=model_home)
    tagged = vibrary("tag", "--model", "buggy", str(write_tone(tmp_path / "a.wav", 300)), home=model_home)
    assert "model buggy@1 failed on it: " in tagged.stdout and "Gather" in tagged.stdout
    assert "batch" not in tagged.stderr and "Gather" not in tagged.stderr, tagged.stderr  # said once: in its line
    two = [str(write_tone(tmp_path / f"{n}.wav", 300 + 100 * n)) for n in range(2)]
    tagged = vibrary("tag", "--model", "buggy", *two, home=model_home)
    assert tagged.stdout.count("model buggy@1 failed on it") == 2 and "failed on a batch of 2" in tagged.stderr
    # beside a model that works (both active), a file keeps that one's tags, the failure said beside them: the
    # first files came out as errors with no tags at all, until the broken model was set aside
    many = [str(write_tone(tmp_path / f"m{n}.wav", BANDS["low"] * (1 + 0.01 * n))) for n in range(12)]
    lines = json_lines(vibrary("tag", "--json", *many, home=model_home).stdout)
    assert [(x["error"], x["tags"][0]["tag"]) for x in lines] == [(None, "low")] * 12
    noted = [x["note"] for x in lines if "note" in x]
    assert noted and all(n.startswith("model buggy@1 failed on it: ") for n in noted)
    human = vibrary("tag", *many[:1], home=model_home).stdout
    assert human.startswith(f"{many[0]}: low ") and "(model buggy@1 failed on it: " in human, human
    silent = tmp_path / "silent.wav"  # its note says it is silent, then what failed (the failure hid it)
    sf.write(silent, np.zeros(44100, np.float32), 44100)
    (line,) = json_lines(vibrary("tag", "--json", str(silent), home=model_home).stdout)
    assert line["note"].startswith("no tags: ") and "; model buggy@1 failed on it: " in line["note"], line


def test_a_model_that_fails_on_every_file_is_set_aside_and_the_others_tag_the_library(
    watched: Watched, tmp_path: Path
) -> None:
    """A model that passed its install check but that onnxruntime fails on: it failed every file of the
    library, the other model's tags lost with them (search found nothing). Once it has failed
    pipeline.FAILS_AFTER files and scored none it is set aside, said in the status, and every file is tagged
    by the other model, those it failed first too; deactivated (or a fixed version activated), it is gone."""
    d = watched.daemon
    buggy = band_model(tmp_path / "buggy.onnx", name="buggy", fails_on_audio=True)
    vibrary("models", "install", str(buggy), home=d.home)

    def changes() -> list[str]:
        return [e.model for e in watched.events.events if e.kind == pb.Event.MODEL_CHANGED]

    wait_for(lambda: changes().count("buggy@1") == 1)  # loaded: it takes the files from now on
    drops = []
    for i in range(6):  # one at a time: the first ones fail before it is set aside
        drops.append(write_tone(watched.lib / f"buggy{i}.wav", 300 + 50 * i))
        wait_for(lambda: watched.file(drops[-1]).state in ("indexed", "failed"))
    assert watched.events.find(pb.Event.FILE_FAILED, str(drops[0]))  # before it was set aside
    wait_for(
        lambda: (
            {(f.state, f.error, f.tags[0].model if f.tags else "") for f in map(watched.file, drops)}
            == {("indexed", "", "bands")}
        )
    )
    s = d.client.status()
    assert "buggy@1" not in s.models and [m.partition(": ")[0] for m in s.failing_models] == ["buggy@1"]
    assert "Gather" in s.failing_models[0] and s.failed == 0 and changes().count("buggy@1") == 2
    said = vibrary("status", home=d.home).stdout
    assert "model buggy@1 tags nothing: it failed on every file it was given" in said, said
    assert_keeps_tagging(watched)
    d.client.deactivate("buggy")
    wait_for(lambda: not d.client.status().failing_models)
    assert d.client.status().pending == 0


def test_a_model_set_aside_stays_aside_at_a_restart_and_alone_fails_files_not_leaves_them_untagged(
    model_home: Path, tmp_path: Path
) -> None:
    """Loaded anew at a start, a model set aside failed its first files again, and every file indexed while
    it was aside was read again for it (the whole library at every login): it stays aside until the active
    models change. Alone, with no model to leave the files to, it fails them, naming itself: set aside, it
    left them "indexed" with no tags, said to be silent."""
    vibrary(
        "models",
        "install",
        str(band_model(tmp_path / "buggy.onnx", name="buggy", fails_on_audio=True)),
        home=model_home,
    )
    lib = tmp_path / "lib"
    lib.mkdir()
    d = start_daemon(model_home)
    try:
        d.client.add_watch(str(lib))
        drops = []
        for i in range(4):  # one batch each: it is judged over two at least
            drops.append(str(write_tone(lib / f"t{i}.wav", 300 + 50 * i)))
            wait_for(lambda: [f.state for f in d.client.tags(drops[-1])] in (["indexed"], ["failed"]))
        wait_for(lambda: d.client.status().failing_models and d.client.status().pending == 0)
    finally:
        d.stop()
    d = start_daemon(model_home)
    try:
        time.sleep(1.0)  # (a start's own work: its scan, and any file read again)
        s = d.client.status()
        assert [m.partition(": ")[0] for m in s.failing_models] == ["buggy@1"], s
        assert (s.pending, s.decoded, s.from_cache, s.indexed) == (0, 0, 0, len(drops)), s  # nothing read again
        listed = {m["model"]: m for m in json_lines(vibrary("models", "list", "--json", home=model_home).stdout)}
        assert "Gather" in listed["buggy"]["failing"] and "failing" not in listed["bands"]  # listed active: why not
    finally:
        d.stop()
    vibrary("models", "deactivate", "bands", home=model_home)  # while the daemon is down: buggy, alone, has
    d = start_daemon(model_home)  # its chance again (it stayed aside, and the daemon had no model at all)
    try:
        assert not d.client.status().failing_models
        alone = str(write_tone(lib / "alone.wav", 700))
        wait_for(lambda: [f.state for f in d.client.tags(alone)] == ["failed"])
        (f,) = d.client.tags(alone)
        assert f.error.startswith("model buggy@1 failed on it"), f
    finally:
        d.stop()


def test_a_model_that_fails_on_some_files_fails_those_naming_itself_and_stays(watched: Watched, tmp_path: Path) -> None:
    """One that has scored a file is not set aside for failing others: those are its to fix."""
    d = watched.daemon
    vibrary(
        "models", "install", str(band_model(tmp_path / "picky.onnx", name="picky", fails_under_db=-60)), home=d.home
    )
    wait_for(lambda: "picky@1" in [e.model for e in watched.events.events if e.kind == pb.Event.MODEL_CHANGED])
    noise = watched.lib / "noise.wav"
    sf.write(str(noise), 0.3 * np.random.default_rng(0).standard_normal(44100), 44100)  # loud: it scores it
    wait_for(lambda: {t.model for t in watched.file(noise).tags} == {"bands", "picky"})
    for i in range(4):  # tones, at the floor most of their spectrogram: it fails each
        tone = write_tone(watched.lib / f"tone{i}.wav", 300 + 50 * i)
        e = watched.events.wait(pb.Event.FILE_FAILED, str(tone))
        assert e.file.error.startswith("model picky@1 failed on it"), e.file.error
    s = d.client.status()
    assert "picky@1" in s.models and not s.failing_models


@pytest.mark.parametrize("scores", ["nan", "inf", "logits"])
def test_a_model_whose_scores_are_not_numbers_from_0_to_1_is_refused_at_install(
    scores: str, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """One whose output was NaN installed, and then every file of the library failed ("NOT NULL constraint
    failed: tags.score"), the other models' tags lost with them, even after its removal; one whose
    "scores" were logits (84.0) installed, and `--min-score` could never reach them."""
    import onnx
    from onnx import helper, numpy_helper

    path = band_model(tmp_path / "odd.onnx", name="odd")
    model = onnx.load(str(path))
    value = {"nan": np.nan, "inf": np.inf, "logits": 84.0}[scores]
    scale = numpy_helper.from_array(np.array(value, np.float32), "odd_scale")
    model.graph.initializer.append(scale)
    model.graph.node.append(helper.make_node("Mul", ["scores", "odd_scale"], ["odd_scores"]))
    model.graph.output[0].name = "odd_scores"
    onnx.save(model, str(path))
    refused = vibrary("models", "install", str(path), home=daemon.home, check=False)
    said = "not 0 to 1" if scores == "logits" else "not numbers (NaN or infinite)"
    assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    assert "odd" not in {m.name for m in daemon.client.models()}


@pytest.mark.parametrize("batch", [1, 3])
def test_pipeline_runs_a_model_with_a_fixed_batch_size(batch: int, tmp_path: Path) -> None:
    """A model exported without a dynamic batch axis is fed batches of its own size, the last one padded,
    and scores every file as the same model with a dynamic batch axis does."""
    bands = list(BANDS)
    files = [write_tone(tmp_path / f"{i}.wav", BANDS[bands[i % 3]]) for i in range(5)]
    found = {}
    for shape in ("N", batch):
        model = Model(str(band_model(tmp_path / f"bands-{shape}.onnx", batch=shape)))
        results: list[Result] = []
        pipeline = Pipeline(
            [ActiveModel(1, "bands@1", model)], results.extend, workers=1, batch_size=4, queue_size=8, store_min_score=0
        )
        try:
            for i, path in enumerate(files):
                pipeline.submit(Job(i, str(path), 1, -1, -1, None))
            assert pipeline.wait_idle(timeout=30)
        finally:
            pipeline.close()
        assert all(r.error is None for r in results), [r.error for r in results]
        found[shape] = {r.job.id: dict(r.tags[1]) for r in results}
    assert {i: max(t, key=t.__getitem__) for i, t in found[batch].items()} == {i: bands[i % 3] for i in range(5)}
    for i, tags in found["N"].items():
        assert found[batch][i] == pytest.approx(tags, abs=1e-5)


def test_daemon_watches_a_folder_deleted_or_replaced_when_it_is_back(watched: Watched) -> None:
    """A watch folder deleted and made again (restored from a backup), then renamed away with a new folder
    made under its name: files copied in afterwards are tagged. Before, the dead observer of the first
    case and the one that followed the renamed folder in the second left them unseen until a restart."""
    lib = watched.lib
    shutil.rmtree(lib)
    watched.events.wait(pb.Event.FILE_REMOVED, str(lib / "probe.wav"))
    lib.mkdir()
    assert_keeps_tagging(watched, "restored")
    lib.rename(lib.with_name("lib-old"))
    lib.mkdir()
    assert_keeps_tagging(watched, "replaced")


def watch_and_delete(path: Path) -> Path:
    write_tone(path, 1000 * (1 + 0.01 * len(path.name)))
    path.unlink()
    return path


def test_daemon_tag_rpc_says_why_a_missing_file_has_no_tags(daemon: DaemonProcess, tmp_path: Path) -> None:
    (f,) = list(daemon.client.tag([str(tmp_path / "never-was.wav")]))  # a typo: nothing was deleted or moved
    assert not f.tags and f.state != "indexed"
    assert f.error == "no such file or folder", (f.state, f.error)


def test_daemon_folder_link_to_parent(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Links to folders, there before the watch and made during it: the scan ends, nothing is indexed
    twice through a link, and the daemon keeps tagging."""
    lib = tmp_path / "lib"
    lib.mkdir()
    good = write_good(lib, "before")
    (lib / "up").symlink_to("..")  # lib/up/lib/up/... for a walker that follows links
    daemon.client.add_watch(str(lib))
    wait_for(lambda: (s := daemon.client.status()).pending == 0 and s.indexed == 3)
    (lib / "self").symlink_to(".")
    (lib / "up2").symlink_to("..")
    good.update(write_good(lib, "after"))
    wait_for(lambda: all(f.state == "indexed" for f in daemon.client.tags(list(good))))
    assert_indexed_exactly(daemon, lib, good)


def assert_indexed_exactly(daemon: DaemonProcess, lib: Path, good: dict[str, str]) -> None:
    time.sleep(0.5)  # time for any scan that followed a link to show up
    found = {f.path: f for f in daemon.client.tags([str(lib)])}
    assert set(found) == set(good), f"indexed through a link: {sorted(set(found) - set(good))}"
    for path, band in good.items():
        assert (found[path].state, found[path].tags[0].tag) == ("indexed", band)
    s = daemon.client.status()
    assert (s.indexed, s.pending, s.failed) == (len(good), 0, 0)


def test_daemon_folder_moved_in_with_a_link_to_itself(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A sample pack moved (or unzipped) into the library that carries a link to its own folder."""
    lib = tmp_path / "lib"
    lib.mkdir()
    daemon.client.add_watch(str(lib))
    staging = tmp_path / "staging" / "pack"
    good = write_good(staging, "pack")
    (staging / "loop").symlink_to(".")
    (staging / "up").symlink_to("..")
    staging.rename(lib / "pack")
    good = {p.replace(str(staging), str(lib / "pack")): band for p, band in good.items()}
    wait_for(lambda: all(f.state == "indexed" for f in daemon.client.tags(list(good))))
    assert_indexed_exactly(daemon, lib, good)


def test_daemon_retags_a_failed_file_when_it_changes(watched: Watched) -> None:
    path = make_text(watched.lib)[0]
    first = watched.events.wait(pb.Event.FILE_FAILED, str(path))
    assert "not a recognised audio format" in first.file.error
    since = watched.events.mark()
    write_tone(path, BANDS["high"])  # the same name, now real audio
    e = watched.events.wait(pb.Event.FILE_TAGGED, str(path), since)
    assert e.file.tags[0].tag == "high"
    f = watched.file(path)
    assert (f.state, f.error, f.tags[0].tag) == ("indexed", "", "high")

    empty = make_empty(watched.lib)[0]  # a copy that starts as an empty file, then fills
    assert "empty" in watched.events.wait(pb.Event.FILE_FAILED, str(empty)).file.error
    since = watched.events.mark()
    empty.write_bytes(_wav_bytes(BANDS["low"] * 1.2))
    assert watched.events.wait(pb.Event.FILE_TAGGED, str(empty), since).file.tags[0].tag == "low"
    s = watched.daemon.client.status()
    assert (s.failed, s.pending) == (0, 0)


def test_daemon_failed_file_replaced_by_a_known_sample_event_has_its_tags(watched: Watched) -> None:
    """The usual repair: the broken file is overwritten with a copy of a good one already in the library."""
    good = write_tone(watched.lib / "good_mid.wav", BANDS["mid"])
    watched.events.wait(pb.Event.FILE_TAGGED, str(good))
    broken = make_text(watched.lib)[0]
    watched.events.wait(pb.Event.FILE_FAILED, str(broken))
    since = watched.events.mark()
    shutil.copyfile(good, broken)
    e = watched.events.wait(pb.Event.FILE_TAGGED, str(broken), since)
    f = watched.file(broken)
    assert (f.state, f.tags[0].tag) == ("indexed", "mid")  # the index is right...
    assert [(t.tag, t.score) for t in e.file.tags] == [(t.tag, t.score) for t in f.tags]  # ...the event not


@NEEDS_USER
def test_daemon_retags_when_permission_is_restored(watched: Watched) -> None:
    path = make_unreadable(watched.lib)[0]
    assert watched.events.wait(pb.Event.FILE_FAILED, str(path)).file.error == "permission denied"
    since = watched.events.mark()
    path.chmod(0o644)
    assert watched.events.wait(pb.Event.FILE_TAGGED, str(path), since).file.tags[0].tag == "mid"
    assert watched.file(path).state == "indexed"


# -- a 2-hour file: tagged, in the memory of a one-shot ------------------------------------------------------
def write_long_wav(path: Path, seconds: float, sr: int = 8000, freq: float = 1000.0) -> Path:
    """8-bit mono: a tone for the opening seconds, then silence, written a megabyte at a time."""
    head = 5 * sr
    t = np.arange(head) / sr
    tone = (128 + 100 * np.sin(2 * np.pi * freq * t)).astype(np.uint8).tobytes()
    silence = bytes([128]) * (1 << 20)
    total = int(seconds * sr)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(sr)
        w.writeframes(tone)
        left = total - head
        while left > 0:
            w.writeframes(silence[: min(left, len(silence))])
            left -= len(silence)
    return path


# The CLI's own high-water mark, read by itself at the end. Not wait4's ru_maxrss: Linux carries the
# forked parent's RSS (pytest's, hundreds of MB once torch is loaded) across exec into that figure.
_TAG_AND_SAY_HWM = (
    "import sys\n"
    "from vibrary.clients.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print([x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0], file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def peak_rss_mb(home: Path, *paths: Path) -> tuple[float, dict[str, dict]]:
    """Run `vibrary tag --json` and return its peak RSS (VmHWM, exact for that process) and output."""
    env = {**os.environ, "VIBRARY_HOME": str(home)}
    proc = subprocess.run(
        [*AS_USER, sys.executable, "-c", _TAG_AND_SAY_HWM, "tag", "--json", *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    hwm = proc.stderr.strip().splitlines()[-1]
    assert hwm.startswith("VmHWM:"), proc.stderr
    lines = {line["path"]: line for line in json_lines(proc.stdout)}
    return int(hwm.split()[1]) / 1024, lines


def test_two_hour_file_is_tagged_in_flat_memory(model_home: Path, tmp_path: Path) -> None:
    short = write_tone(tmp_path / "short.wav", BANDS["mid"])
    long = write_long_wav(tmp_path / "two_hours.wav", 2 * 3600)
    huge = make_huge_header(tmp_path)[0]
    try:
        assert long.stat().st_size > 57_000_000
        with wave.open(str(long)) as w:
            assert w.getnframes() / w.getframerate() == 7200
        base, lines = peak_rss_mb(model_home, short)
        assert best_tag(lines[str(short)]["tags"]) == "mid"
        peak, lines = peak_rss_mb(model_home, long)
        line = lines[str(long)]
        assert line["error"] is None and best_tag(line["tags"]) == "mid", line
        peak_huge, lines = peak_rss_mb(model_home, huge)
        assert "truncated or corrupt" in lines[str(huge)]["error"]
    finally:
        long.unlink()
    # decoding 2 h as float32 at 44.1 kHz would take ~2.5 GB; even reading the bytes 58 MB
    for rss in (peak, peak_huge):
        assert rss < 400, f"peak RSS {rss:.0f} MB"
        assert rss < base + 100, f"peak RSS {rss:.0f} MB vs {base:.0f} MB for a one-second file"


def _peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_daemon_tags_a_two_hour_file_in_flat_memory(daemon: DaemonProcess, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    daemon.client.add_watch(str(lib))
    warm = write_tone(lib / "one_second.wav", BANDS["high"])
    wait_for(lambda: daemon.client.status().indexed == 1)
    before = _peak_rss_mb(daemon.proc.pid)
    staging = tmp_path / "staging"
    staging.mkdir()
    long = write_long_wav(staging / "two_hours.wav", 2 * 3600).rename(lib / "two_hours.wav")
    try:
        wait_for(lambda: daemon.client.status().indexed == 2, timeout=60)
        f = next(iter(daemon.client.tags([str(long)])))
        assert (f.state, f.error, f.tags[0].tag) == ("indexed", "", "mid")
        assert next(iter(daemon.client.tags([str(warm)]))).tags[0].tag == "high"
        after = _peak_rss_mb(daemon.proc.pid)
    finally:
        long.unlink()
    assert after < before + 100, f"daemon peak RSS went from {before:.0f} MB to {after:.0f} MB"


# -- kill -9 in the middle of indexing -----------------------------------------------------------------------
N_FILES = 1000


def _band_freq(i: int) -> tuple[str, float]:
    """Distinct tones spread inside each band, well away from the 300 Hz / 3 kHz edges."""
    band = ("low", "mid", "high")[i % 3]
    step = i // 3
    return band, {"low": 70 + step * 0.3, "mid": 600 + step * 3.0, "high": 5000 + step * 12.0}[band]


def _open_ro(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{config.index_path(home)}?mode=ro", uri=True)


@pytest.mark.slow
def test_kill_9_while_indexing_loses_nothing(model_home: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    expected = {}
    for i in range(N_FILES):
        band, freq = _band_freq(i)
        expected[str(write_tone(lib / f"{i // 100:02d}" / f"t{i:04d}_{band}.wav", freq, seconds=0.3))] = band
    # one worker and small batches: slow enough that the kill lands mid-way
    config.Settings(settle_s=0.2, workers=1, batch_size=8, queue_size=16).save(model_home)

    first = start_daemon(model_home)
    try:
        first.client.add_watch(str(lib))
        wait_for(lambda: first.client.status().indexed >= 100, timeout=60, interval=0.005)
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        first.client.close()
    with _open_ro(model_home) as db:
        states = dict(db.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall())
    db.close()
    assert 100 <= states.get("indexed", 0) < N_FILES, f"kill did not land mid-indexing: {states}"

    config.Settings(settle_s=0.2).save(model_home)  # the restart may go at full speed
    second = start_daemon(model_home)
    try:
        wait_for(
            lambda: second.client.status().pending == 0 and second.client.status().indexed == N_FILES,
            timeout=90,
            interval=0.2,
        )
        s = second.client.status()
        assert (s.indexed, s.pending, s.failed) == (N_FILES, 0, 0)
    finally:
        assert second.stop() == 0, second.log()

    db = _open_ro(model_home)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*), count(DISTINCT path) FROM files").fetchone() == (N_FILES, N_FILES)
        rows = db.execute(
            """SELECT f.path, v.tag, t.score FROM files f JOIN tags t ON t.content_id = f.content_id
               JOIN vocab v ON v.id = t.tag_id WHERE f.state = 'indexed'"""
        ).fetchall()
        assert db.execute("SELECT count(DISTINCT content_id) FROM files").fetchone()[0] == N_FILES
    finally:
        db.close()
    cache = sqlite3.connect(f"file:{config.cache_path(model_home)}?mode=ro", uri=True)
    try:
        assert cache.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        cache.close()
    best: dict[str, tuple[float, str]] = {}
    for path, tag, score in rows:
        if path not in best or score > best[path][0]:
            best[path] = (score, tag)
    assert set(best) == set(expected)
    wrong = {p: (best[p][1], band) for p, band in expected.items() if best[p][1] != band}
    assert not wrong, f"{len(wrong)} files tagged wrong, e.g. {list(wrong.items())[:5]}"


# -- malformed requests --------------------------------------------------------------------------------------
def test_malformed_requests_are_refused_and_the_daemon_answers(daemon: DaemonProcess, tmp_path: Path) -> None:
    stub = daemon.client.stub
    a_file = write_tone(tmp_path / "a.wav", 1000)

    def code(method: str, request: object) -> grpc.StatusCode:
        try:
            result = getattr(stub, method)(request, timeout=10)
            if isinstance(result, Iterator):  # a stream: the refusal comes with the first read
                list(result)
        except grpc.RpcError as e:
            assert e.details(), "a refusal must say why"
            return e.code()
        return grpc.StatusCode.OK

    invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    mid = [pb.AnyOf(tags=["mid"])]
    root_link = tmp_path / "everything"
    root_link.symlink_to("/", target_is_directory=True)
    cases: dict[str, tuple[str, object, grpc.StatusCode]] = {
        "AddWatch relative": ("AddWatch", pb.WatchRequest(path="samples/drums"), invalid),
        "AddWatch empty": ("AddWatch", pb.WatchRequest(path=""), invalid),
        "AddWatch a file": ("AddWatch", pb.WatchRequest(path=str(a_file)), invalid),
        "AddWatch missing": ("AddWatch", pb.WatchRequest(path=str(tmp_path / "nope")), missing),
        "RemoveWatch not watched": ("RemoveWatch", pb.WatchRequest(path=str(tmp_path)), missing),
        "Search limit < 0": ("Search", pb.SearchRequest(all_of=mid, limit=-1), invalid),
        "Search min_score > 1": ("Search", pb.SearchRequest(all_of=mid, min_score=1.5), invalid),
        "Search min_score < 0": ("Search", pb.SearchRequest(all_of=mid, min_score=-0.1), invalid),
        "Search min_score NaN": ("Search", pb.SearchRequest(all_of=mid, min_score=math.nan), invalid),
        "Search relative prefix": ("Search", pb.SearchRequest(path_prefix="drums"), invalid),
        "Search empty tag": ("Search", pb.SearchRequest(all_of=[pb.AnyOf(tags=[" "])]), invalid),
        "GetTags relative": ("GetTags", pb.GetTagsRequest(paths=["a.wav"]), invalid),
        "Tag no paths": ("Tag", pb.TagRequest(), invalid),
        "Tag relative": ("Tag", pb.TagRequest(paths=["a.wav"]), invalid),
        "Activate empty name": ("ActivateModel", pb.ModelRef(name=""), invalid),
        "Activate negative version": ("ActivateModel", pb.ModelRef(name="bands", version=-1), invalid),
        "Activate unknown model": ("ActivateModel", pb.ModelRef(name="no-such-model"), missing),
        "Activate unknown version": ("ActivateModel", pb.ModelRef(name="bands", version=99), missing),
        "Deactivate unknown model": ("DeactivateModel", pb.ModelRef(name="nope"), missing),
        "Activate NAME@VERSION as a name": ("ActivateModel", pb.ModelRef(name="bands@1"), invalid),
        "Tag a path with a NUL byte": ("Tag", pb.TagRequest(paths=["/tmp/x\x00y.wav"]), invalid),
        "AddWatch the whole disk": ("AddWatch", pb.WatchRequest(path="/"), invalid),
        "AddWatch the whole disk, spelled //": ("AddWatch", pb.WatchRequest(path="//"), invalid),
        "AddWatch /proc": ("AddWatch", pb.WatchRequest(path="/proc"), invalid),
        "AddWatch /sys/kernel": ("AddWatch", pb.WatchRequest(path="/sys/kernel"), invalid),
        "AddWatch a link to /": ("AddWatch", pb.WatchRequest(path=str(root_link)), invalid),
        "Tag the whole disk": ("Tag", pb.TagRequest(paths=["/"]), invalid),
        "SuggestLabels for the whole disk": ("SuggestLabels", pb.SuggestRequest(paths=["/"]), invalid),
        "SuggestLabels through a link to /": ("SuggestLabels", pb.SuggestRequest(paths=[str(root_link)]), invalid),
        "Train on a port that cannot be": ("Train", pb.TrainRequest(dataset="x", trainer="host:99999"), invalid),
        "Train on a port of no ASCII digit": ("Train", pb.TrainRequest(dataset="x", trainer="host:²"), invalid),
    }
    got = {name: code(method, request) for name, (method, request, _) in cases.items()}
    assert got == {name: want for name, (_, _, want) in cases.items()}
    untagged = pb.CreateDatasetRequest(name="d", files=[pb.LabelledFile(path=str(a_file), tag="")])
    with pytest.raises(grpc.RpcError) as err:  # (a suggestion's empty tag: no tag found for that file)
        list(daemon.client.stub.CreateDataset(untagged))
    assert err.value.code() == invalid and err.value.details() == f"{a_file}: empty tag"  # it named no file
    (daemon.home / "synonyms.json.lock").mkdir()  # the home refusing a write (full, read-only): as it fails
    with pytest.raises(grpc.RpcError) as err:  # it came back UNKNOWN, "Exception calling application", paths in it
        daemon.client.stub.AddSynonyms(pb.Synonyms(synonyms=[pb.Synonym(alias="wub", tag="wobble")]))
    assert err.value.code() == grpc.StatusCode.INTERNAL and str(daemon.home) not in (err.value.details() or "")
    (daemon.home / "synonyms.json.lock").rmdir()

    # still answering, nothing half-done: no watch added, the model still active, tagging works
    s = daemon.client.status()
    assert list(s.watches) == [] and list(s.models) == ["bands@1"] and s.failed == 0
    (f,) = list(daemon.client.tag([str(a_file)]))
    assert (f.state, f.tags[0].tag) == ("indexed", "mid")


def test_a_token_grpc_cannot_send_is_refused_before_any_training(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A trainer token with a newline or NUL (pasted with it) started a job, which then failed on the trainer
    with "Invalid metadata": it is refused up front, named but not quoted, and so by the clients."""
    from vibrary.clients.trainer_client import TrainerClient

    files = [(str(write_tone(tmp_path / band / f"{band}.wav", freq)), band) for band, freq in BANDS.items()]
    list(daemon.client.create_dataset("mine", files))
    for token in ("s3cret\n", "s3\0cret", "s3crét"):
        with pytest.raises(grpc.RpcError) as e:
            list(
                daemon.client.stub.Train(
                    pb.TrainRequest(dataset="mine", trainer="localhost:1", token=token), timeout=10
                )
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "token" in (e.value.details() or "")
        assert "s3" not in (e.value.details() or "")
        for client in (Client, TrainerClient):
            with pytest.raises(ValueError, match="token"):
                client("localhost:1", token=token)
    assert not daemon.client.status().HasField("training")


def test_a_disk_error_in_a_streamed_answer_is_said_without_the_servers_paths(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A call that streams its answer and fails on the home (a training whose record cannot be written: a
    read-only or full home) came back UNKNOWN, "Exception iterating responses", with the daemon's paths."""
    files = [(str(write_tone(tmp_path / band / f"{band}.wav", freq)), band) for band, freq in BANDS.items()]
    list(daemon.client.create_dataset("mine", files))
    record = config.training_path(daemon.home)
    record.mkdir()  # the record cannot be written in its place
    try:
        with pytest.raises(grpc.RpcError) as e:
            list(daemon.client.stub.Train(pb.TrainRequest(dataset="mine", trainer="localhost:1"), timeout=10))
        assert e.value.code() == grpc.StatusCode.INTERNAL and str(daemon.home) not in (e.value.details() or "")
        assert (e.value.details() or "").startswith("a disk error")
    finally:
        record.rmdir()
    assert not daemon.client.status().HasField("training") and daemon.client.datasets()


def test_suggestions_stop_reading_a_big_library_once_the_caller_stopped_waiting(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """SuggestLabels walked the folders and read every file's metadata to the end after the caller's deadline
    had passed: it stops at the deadline (a file read there has its access time moved on)."""
    one = write_tone(tmp_path / "one.wav", 1000, seconds=0.01).read_bytes()
    os.utime(tmp_path / "one.wav", (1.0, (tmp_path / "one.wav").stat().st_mtime))
    (tmp_path / "one.wav").read_bytes()
    if (tmp_path / "one.wav").stat().st_atime <= 1.0:
        pytest.skip("reads do not move access times on this file system (noatime): what is read cannot be told")
    files = [tmp_path / "lib" / f"pack {i // 100}" / "Kicks" / f"kick {i}.wav" for i in range(9000)]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(one)
        os.utime(f, (1.0, f.stat().st_mtime))  # read once, it is later than its change (relatime)
    with pytest.raises(grpc.RpcError) as e:
        daemon.client.stub.SuggestLabels(pb.SuggestRequest(paths=[str(tmp_path / "lib")]), timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)  # (its next folder, at most, after the deadline)
    read = sum(f.stat().st_atime > 1.0 for f in files)
    time.sleep(3)  # time enough to read them all (a fast machine reads thousands a second)
    assert sum(f.stat().st_atime > 1.0 for f in files) == read < len(files), f"{read} of {len(files)} read"
    assert len(daemon.client.suggest([str(files[0])]).files) == 1  # and it still answers


def test_a_refusal_that_quotes_a_huge_field_arrives_cut_with_its_code(daemon: DaemonProcess) -> None:
    """A refusal quoting a 1 MB path or name went over gRPC's 16 KB trailer limit: the caller got
    RESOURCE_EXHAUSTED "Stream removed" instead of INVALID_ARGUMENT or NOT_FOUND and the reason."""
    stub = daemon.client.stub
    huge = "a" * (1 << 20)
    cases = {
        "AddWatch": (pb.WatchRequest(path=huge), grpc.StatusCode.INVALID_ARGUMENT, "path must be absolute"),
        "GetDataset": (pb.DatasetRef(name=huge), grpc.StatusCode.INVALID_ARGUMENT, "dataset name"),
        "CountTags": (pb.CountTagsRequest(model=huge), grpc.StatusCode.INVALID_ARGUMENT, "bad model name"),
    }
    for method, (request, code, reason) in cases.items():
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, method)(request, timeout=10)
        assert (e.value.code(), reason) == (code, reason) and reason in (e.value.details() or ""), method
        assert len(e.value.details() or "") < 4000
    deep = "/a" * 500_000  # absolute, and 1 MB long: resolving it cost 17 s of CPU a request
    for call in (
        lambda: list(stub.Search(pb.SearchRequest(all_of=[pb.AnyOf(tags=["low"])], path_prefix=deep), timeout=10)),
        lambda: list(stub.GetTags(pb.GetTagsRequest(paths=[deep]), timeout=10)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no file has one that long" in str(e.value.details())
    assert daemon.client.status().models == ["bands@1"]


# -- one daemon per home -------------------------------------------------------------------------------------
def test_second_daemon_on_the_same_home_exits_1(daemon: DaemonProcess, tmp_path: Path) -> None:
    lock = daemon.home / "daemon.lock"
    assert lock.read_text().strip() == str(daemon.proc.pid)
    second = vibrary("daemon", home=daemon.home, check=False, timeout=60)
    assert second.returncode == 1, second.stderr
    assert "already running" in second.stderr and str(daemon.proc.pid) in second.stderr
    assert second.stderr.count("\n") <= 2, second.stderr  # a message, not a traceback
    assert "Traceback" not in second.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:  # as by the first one's --listen: it said the port was
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        second = vibrary("daemon", "--listen", listen, "--token", "t", home=daemon.home, check=False, timeout=60)
    assert second.returncode == 1 and "already running" in second.stderr, second.stderr

    # the first keeps serving, on the same socket, and still holds the lock
    assert daemon.proc.poll() is None
    assert config.socket_path(daemon.home).exists()
    assert lock.read_text().strip() == str(daemon.proc.pid)
    with Client(home_dir=daemon.home, timeout=10) as fresh:
        assert fresh.status().models == ["bands@1"]
    (f,) = list(daemon.client.tag([str(write_tone(tmp_path / "low.wav", BANDS["low"]))]))
    assert (f.state, f.tags[0].tag) == ("indexed", "low")


@NEEDS_USER
def test_an_unreadable_subfolder_is_reported_and_the_rest_is_tagged(model_home: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write_tone(lib / "ok" / "low.wav", BANDS["low"])
    write_tone(lib / "locked" / "high.wav", BANDS["high"])
    (lib / "locked").chmod(0)
    try:
        tagged = vibrary("tag", "--json", str(lib), home=model_home)
        suggested = vibrary("dataset", "suggest", "--json", str(lib), home=model_home, check=False)
    finally:
        (lib / "locked").chmod(0o755)
    assert [Path(line["path"]).name for line in json_lines(tagged.stdout)] == ["low.wav"]
    for proc in (tagged, suggested):
        assert f"cannot read folder {lib / 'locked'}" in proc.stderr and "left out" in proc.stderr, proc.stderr


@NEEDS_USER
def test_a_watched_folder_that_cannot_be_listed_is_said_and_read_once_fixed(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A folder without read permission inside a watch: its files were left out with a log line only, and
    stayed out after `chmod` fixed it (no event says so) until a restart or the next rescan, hours away."""
    lib = tmp_path / "lib"
    write_tone(lib / "ok" / "low.wav", BANDS["low"])
    write_tone(lib / "locked" / "high.wav", BANDS["high"])
    (lib / "locked").chmod(0)
    try:
        daemon.client.add_watch(str(lib))
        wait_for(lambda: list(daemon.client.status().unlisted_folders) == [f"{lib / 'locked'} (Permission denied)"])
        assert "folders that cannot be listed" in vibrary("status", home=daemon.home).stdout
    finally:
        (lib / "locked").chmod(0o755)
    wait_for(lambda: [f.state for f in daemon.client.tags(str(lib / "locked" / "high.wav"))] == ["indexed"], timeout=30)
    wait_for(lambda: list(daemon.client.status().unlisted_folders) == [], timeout=15)  # (the 5-s check's)
    write_tone(lib / "locked" / "mid.wav", BANDS["mid"])  # and watched from then on: no event came from it
    wait_for(lambda: [f.state for f in daemon.client.tags(str(lib / "locked" / "mid.wav"))] == ["indexed"], timeout=15)


@NEEDS_USER
def test_files_of_a_folder_locked_then_fixed_are_read_again(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A folder left without its x bit as a pack was copied in: its files failed "permission denied" and stayed
    failed after `chmod 755` (only a restart read them again); the chmod's own event scans the folder."""
    lib = tmp_path / "lib"
    lib.mkdir()
    daemon.client.add_watch(str(lib))
    daemon.client.pause()
    write_tone(lib / "pack" / "low.wav", BANDS["low"])
    wait_for(lambda: daemon.client.status().pending == 1)
    (lib / "pack").chmod(0o644)
    try:
        daemon.client.resume()
        wait_for(lambda: [f.error for f in daemon.client.tags(str(lib))] == ["permission denied"])
    finally:
        (lib / "pack").chmod(0o755)
    wait_for(lambda: [f.state for f in daemon.client.tags(str(lib))] == ["indexed"], timeout=15)


@NEEDS_USER
def test_a_dataset_that_cannot_be_written_says_so_and_the_daemon_goes_on(daemon: DaemonProcess, tmp_path: Path) -> None:
    files = [(str(write_tone(tmp_path / band / f"{band}.wav", freq)), band) for band, freq in BANDS.items()]
    locked = daemon.home / "datasets"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(DaemonError, match=r"dataset 'mine' could not be written: .*Permission denied"):
            list(daemon.client.create_dataset("mine", files))
    finally:
        locked.chmod(0o755)
    assert list(daemon.client.create_dataset("mine", files))[-1].dataset.clips == len(files)  # once it can


def test_a_model_name_that_cannot_be_a_folder_or_is_the_builtins_is_refused(home: Path, band_onnx: Path) -> None:
    """Model names become folders of the home: the same rule as dataset names, its length limit too (a
    1,000-character name passed the character check and failed on the file system, 'File name too long')."""
    from vibrary.daemon import registry
    from vibrary.daemon.infer import ModelError

    index = Index(config.index_path(home))
    try:
        for name in ("x" * 101, "../up", "two words"):
            with pytest.raises(ModelError, match="model name"):
                registry.install(index, home, str(band_onnx), name)
        assert not config.models_dir(home).exists() or not any(config.models_dir(home).iterdir())
        assert registry.install(index, home, str(band_onnx), "x" * 100).name == "x" * 100
        registry.ensure_models(index, home)
        with pytest.raises(ModelError, match="built-in model's"):  # it would become demo@2, the demo put away
            registry.install(index, home, str(band_onnx), "demo")
        with pytest.raises(ModelError, match="built-in model's"):  # a model of its own beside it: `Demo`, `demo`
            registry.install(index, home, str(band_onnx), "Demo")
        with pytest.raises(ModelError, match=r"model 'x{100}' is installed, and names that differ only in case"):
            registry.install(index, home, str(band_onnx), "X" * 100)
        assert sorted(m.name for m in index.models()) == ["demo", "x" * 100]
        index.add_model("X" * 100, "/m/x.onnx", "f" * 64, ["low"], "{}", False)  # twins from before the refusal:
        other = band_model(home / "other.onnx", name="other", shift=1)  # each takes new versions as it did
        assert registry.install(index, home, str(other), "x" * 100).ref == f"{'x' * 100}@2"
    finally:
        index.close()


def test_removing_one_of_two_versions_of_one_file_keeps_the_file_for_the_other(home: Path, band_onnx: Path) -> None:
    """A home from before installs of one file at once were one version holds two versions of one file:
    removing one deleted the file of the other, which then tagged nothing ("missing or damaged")."""
    from vibrary.daemon import registry

    index = Index(config.index_path(home))
    try:
        one = registry.install(index, home, str(band_onnx), active=True)
        with index.write() as c:  # the second version as the race left it
            c.execute(
                """INSERT INTO models(name, version, path, sha256, classes, spectrogram, builtin, installed, active)
                   SELECT name, 2, path, sha256, classes, spectrogram, builtin, installed, 0
                   FROM models WHERE id = ?""",
                (one.id,),
            )
        registry.remove(index, home, index.model(one.name, 2))
        assert Path(one.path).exists() and registry.usable(index.model(one.name, 1))
        registry.remove(index, home, index.model(one.name, 1))
        assert not Path(one.path).exists()  # the last one takes it
    finally:
        index.close()


def test_a_kill_as_a_model_is_installed_never_leaves_it_installed_and_idle(
    home: Path, band_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model was registered, then activated by a second write: a kill between the two (the first start of
    the daemon, a `vibrary train` installing) left it idle, and the demo model of a fresh home for good (a
    home that has seen it keeps the user's choice). Here the kill comes at any activation after the row."""
    from vibrary.daemon import registry

    class Killed(BaseException):
        pass

    def killed(*_: object) -> None:
        raise Killed

    monkeypatch.setattr(Index, "set_active", killed)
    index = Index(config.index_path(home))
    try:
        registry.ensure_models(index, home)
        registry.install(index, home, str(band_onnx), "band", active=True)
    finally:
        index.close()
    index = Index(config.index_path(home))  # as the next start finds it
    try:
        assert registry.ensure_models(index, home) == []  # (seen: the user's choice from now on)
        assert {m.name for m in index.active_models()} == {"demo", "band"}
    finally:
        index.close()


def test_a_dataset_whose_caller_went_away_is_not_written(daemon: DaemonProcess, tmp_path: Path) -> None:
    """CreateDataset went on decoding every file and wrote the dataset after the caller had cancelled
    (Ctrl-C on `dataset create`, a script's deadline): a dataset nobody confirmed appeared minutes later."""
    one = write_tone(tmp_path / "one.wav", 1000, seconds=0.5).read_bytes()
    files = []
    for i in range(1500):
        path = tmp_path / "lib" / f"{i:04d}.wav"
        path.parent.mkdir(exist_ok=True)
        if i < 8:  # the dataset made at the end: sounds of their own (one sound twice is one example)
            write_tone(path, 1000 + 100 * i, seconds=0.5)
        else:
            path.write_bytes(one[:-4] + struct.pack("<i", i))  # each its own content: each decoded
        files.append(pb.LabelledFile(path=str(path), tag="low" if i % 2 else "high"))
    stream = daemon.client.stub.CreateDataset(pb.CreateDatasetRequest(name="gone", files=files), timeout=300)
    assert next(stream).total == len(files)  # the build is under way
    stream.cancel()
    made = None
    while made is None:  # the name is free once the build is over, however it ended
        assert "gone" not in [d.name for d in daemon.client.stub.ListDatasets(pb.ListDatasetsRequest()).datasets]
        try:
            made = list(daemon.client.stub.CreateDataset(pb.CreateDatasetRequest(name="gone", files=files[:8])))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e  # busy: the cancelled build still runs
            time.sleep(0.2)
    assert made[-1].dataset.clips == 8
    with sqlite3.connect(config.cache_path(daemon.home)) as db:
        decoded = db.execute("SELECT COUNT(*) FROM spectra").fetchone()[0]
    assert decoded < len(files) // 2, f"{decoded} of {len(files)} files decoded for a caller that had gone"


def test_a_model_whose_metadata_cannot_be_fed_or_named_is_refused_at_its_install() -> None:
    """A model whose spectrogram cannot be made (an odd n_fft, a top_db of null) installed, then every file
    failed for every model, the built-in one's tags included; classes given as an object were tags "0", "1"."""
    from vibrary.daemon.infer import CLASSES_KEY, ModelError, parse_metadata
    from vibrary.daemon.spectrogram import METADATA_KEY

    good = {CLASSES_KEY: '["kick", "snare"]', METADATA_KEY: '{"n_fft": 1024}'}
    assert parse_metadata(good, "m.onnx").classes == ("kick", "snare")
    for key, value, said in (
        (METADATA_KEY, '{"top_db": null}', "top_db and power must be numbers above 0"),
        (METADATA_KEY, '{"n_fft": 1023}', "n_fft must be even"),
        (METADATA_KEY, '{"fmin": 5000, "fmax": 2000}', "fmin < fmax"),
        (CLASSES_KEY, '{"0": "kick", "1": "snare"}', "must be a non-empty list of names"),
        (CLASSES_KEY, '"kick"', "must be a non-empty list of names"),
        (CLASSES_KEY, json.dumps(["a", "b", "a"]), "names 'a' more than once"),
    ):
        with pytest.raises(ModelError, match=said):
            parse_metadata({**good, key: value}, "m.onnx")


def test_a_model_whose_class_names_or_batch_cost_everyone_is_refused_at_install_and_runs_if_installed(
    model_home: Path, tmp_path: Path
) -> None:
    """A shared model's class names reached terminals raw (colours, a window title, forged lines); a fixed
    batch of 20,000 installed (its all-zero probe costs nothing) and ran six files in 1.8 GB; 2**40 died in
    numpy with a traceback; one reading 3,000 s of every file took 1.2 GB for 40 one-shots. Refused at
    install only: one installed before an upgrade goes on working."""
    from vibrary.daemon import registry
    from vibrary.daemon.infer import Model, ModelError, check_installable
    from vibrary.daemon.spectrogram import SpectrogramParams

    index = Index(config.index_path(model_home))
    for classes, said in (
        (("kick", "\x1b[31mred", "x"), "holds control characters"),
        (("kick", "x\x1b]0;title\x07", "y"), "holds control characters"),
        (("kick", "a\nforged line", "x"), "holds control characters"),
        (("kick", "evil\u202egnp.wav", "x"), "holds control characters"),  # a bidi override
        (("kick", "a\ud800", "x"), "holds control characters"),  # a lone surrogate: no reply could carry it
        (("kick", "in\u200bvisible", "x"), "holds control characters"),
        (("kick", "k" * 256, "x"), "longer than 255"),
    ):
        odd = band_model(tmp_path / "odd.onnx", name="odd", classes=classes)
        assert Model(str(odd)).info.classes[1] == classes[1].lower()  # loads, as one installed before would
        with pytest.raises(ModelError, match=said):
            registry.install(index, model_home, str(odd))
    fine = ("\U0001f468\u200d\U0001f3a4", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "café")  # (ZWJ, ZWNJ)
    assert registry.install(index, model_home, str(band_model(tmp_path / "fine.onnx", name="fine", classes=fine)))
    many = Model(str(band_model(tmp_path / "many.onnx")))
    many.info = dataclasses.replace(many.info, classes=tuple(f"c{i}" for i in range(10_001)))
    with pytest.raises(ModelError, match="10,001 classes; 10,000 at most"):
        check_installable(many)
    for params in (SpectrogramParams(duration_s=60.5), SpectrogramParams(sample_rate=384_000, fmax=20_000)):
        long = band_model(tmp_path / "long.onnx", name="long", params=params)  # each file decoded to it: 1.2 GB
        with pytest.raises(ModelError, match=r"of every file at .* Hz; at most 60 s at 192,000 Hz"):
            registry.install(index, model_home, str(long))
    assert registry.install(index, model_home, str(band_model(tmp_path / "b256.onnx", name="b", batch=256)))
    with pytest.raises(ModelError, match="a fixed batch size of 257; export it with a dynamic batch axis"):
        registry.install(index, model_home, str(band_model(tmp_path / "b257.onnx", name="c", batch=257)))
    huge = band_model(tmp_path / "huge.onnx", name="d", batch=2**40)
    with pytest.raises(ModelError, match="fails on a spectrogram"):  # loaded: not numpy's MemoryError
        Model(str(huge))
    with pytest.raises(ModelError, match="a fixed batch size of 1,099,511,627,776"):  # installed: refused, not run
        registry.install(index, model_home, str(huge))
    index.close()


def test_a_model_whose_weights_lie_beside_it_is_refused_and_no_copy_is_left(model_home: Path, tmp_path: Path) -> None:
    """An ONNX file saved with external data loaded where it was, so it installed, but only the .onnx was
    copied: the daemon could not load it, and `models list` called it usable. Such a model is not even loaded:
    onnxruntime reads the files it names from wherever it says (the working folder, for a rewritten graph)."""
    import onnx
    from vibrary.daemon import registry
    from vibrary.daemon.infer import Model, ModelError

    proto = onnx.load(str(band_model(tmp_path / "whole.onnx", name="apart")))
    (tmp_path / "apart").mkdir()
    onnx.save(proto, str(tmp_path / "apart" / "apart.onnx"), save_as_external_data=True, size_threshold=64)
    index = Index(config.index_path(model_home))
    try:
        beside = r"apart.onnx: its weights lie in files beside it .*inside the \.onnx file"
        with pytest.raises(ModelError, match=beside):
            registry.install(index, model_home, str(tmp_path / "apart" / "apart.onnx"))
        with pytest.raises(ModelError, match=beside):  # (it loads and runs where it is, its files beside it)
            Model(str(tmp_path / "apart" / "apart.onnx"))
        values = onnx.numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "w")  # a sparse constant's, beside
        onnx.external_data_helper.set_external_data(values, location="w.bin", offset=0, length=8)
        values.ClearField("raw_data")
        indices = onnx.numpy_helper.from_array(np.array([0, 2], np.int64), "i")
        constant = onnx.helper.make_node(
            "Constant", [], ["y"], sparse_value=onnx.helper.make_sparse_tensor(values, indices, [4])
        )
        out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
        sparse = onnx.helper.make_model(onnx.helper.make_graph([constant], "g", [], [out]))
        (tmp_path / "apart" / "sparse.onnx").write_bytes(sparse.SerializeToString())
        with pytest.raises(ModelError, match=r"sparse\.onnx: its weights lie in files beside it"):
            Model(str(tmp_path / "apart" / "sparse.onnx"))
        assert [m.name for m in index.models() if m.name == "apart"] == []
        assert not (config.models_dir(model_home) / "apart").exists()  # (its folder left empty, before)
    finally:
        index.close()


def test_an_upgrade_finds_the_built_in_model_where_this_install_keeps_it_and_keeps_the_users_choice(
    home: Path,
) -> None:
    """The built-in model's row kept the path of the install that first saw it: once that was gone (a venv
    made anew, a clone moved, pipx's upgrade) it could be neither used, installed again nor removed. A new
    release's built-in model was active though the user had deactivated the one before it, and the one
    before stayed listed as damaged for good."""
    from vibrary.daemon import registry

    index = Index(config.index_path(home))
    try:
        (demo,) = registry.ensure_models(index, home)
        index.set_model_path(demo, "/gone/venv/vibrary/daemon/builtin/demo.onnx")  # as the old install had it
        assert registry.ensure_models(index, home) == [] and registry.usable(index.model("demo"))
        for was_active in (False, True):  # the release before this one's demo model, as a home upgraded has it
            index.remove_model(index.model("demo"))
            old = index.add_model("demo", "/gone/demo.onnx", "a" * 64, demo.classes, "{}", True, was_active)
            (new,) = registry.ensure_models(index, home)
            assert [(m.version, m.active) for m in index.models()] == [(new.version, was_active)]
            assert new.version > old.version and registry.usable(new)
    finally:
        index.close()


def test_a_home_copied_or_moved_uses_and_removes_only_its_own_model_files(home: Path, band_onnx: Path) -> None:
    """Model paths were the home's own when installed: a copy of the home (a backup taken before an upgrade,
    a home moved to another disk) used the other home's files, and a removal in the copy deleted them."""
    from vibrary.daemon import registry

    index = Index(config.index_path(home))
    try:
        mine = registry.install(index, home, str(band_onnx), "mine", active=True)
    finally:
        index.close()
    copy = home.parent / f"{home.name}-copy"
    shutil.copytree(home, copy)
    try:
        index = Index(config.index_path(copy))
        try:
            registry.ensure_models(index, copy)
            here = index.model("mine")
            assert Path(here.path).is_relative_to(copy) and registry.usable(here)
            index.set_model_path(here, mine.path)  # as a command that never looked would find it
            registry.remove(index, copy, index.model("mine"))
        finally:
            index.close()
        assert Path(mine.path).exists()  # the original home's file is left alone
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def test_an_upgraded_index_restores_the_version_that_was_active_before_a_newer_one(home: Path, band_onnx: Path) -> None:
    """An index from before versions kept when each was activated had every row at 0: removing the active
    version restored the newest, not the rollback the user had made."""
    from vibrary.daemon import registry

    index = Index(config.index_path(home))
    try:
        one = registry.install(index, home, str(band_onnx), "mine")
        registry.install(index, home, str(band_model(home / "two.onnx", shift=1)), "mine")
        index.set_active(one, True)  # the rollback, made by an older version
        with index.write() as c:
            c.execute("ALTER TABLE models DROP COLUMN activated")
    finally:
        index.close()
    index = Index(config.index_path(home))
    try:
        three = registry.install(index, home, str(band_model(home / "three.onnx", shift=2)), "mine", active=True)
        assert registry.remove(index, home, three) == index.model("mine", 1)
    finally:
        index.close()


def test_activating_a_version_removed_meanwhile_is_refused_and_leaves_the_active_one(
    home: Path, band_onnx: Path
) -> None:
    """`models activate X@2` read the row, another shell's `models remove X@2` came in between, and the
    activation deactivated X@1 and said it was done: X had no version active."""
    from vibrary.daemon import registry

    index = Index(config.index_path(home))
    try:
        registry.install(index, home, str(band_onnx), "mine", active=True)
        two = registry.install(index, home, str(band_model(home / "two.onnx", shift=1)), "mine")
        registry.remove(index, home, two)  # the other shell's
        with pytest.raises(KeyError, match="removed meanwhile"):
            index.set_active(two, True)
        assert index.model("mine", 1).active
    finally:
        index.close()


def test_a_file_refused_when_read_again_keeps_how_it_was_refused_not_its_first_hash(
    model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read again at once because it changed as it was read, a bounce truncated meanwhile was refused as empty,
    but its row kept the first read's size, time and content (read once more at the next scan for nothing)."""
    victim = write_tone(tmp_path / "bounce.wav", BANDS["low"])

    def truncated_meanwhile(path: str, *args: object) -> object:
        victim.write_bytes(b"")  # the DAW starts the next bounce
        raise features.FileChanged(features.CHANGED)

    monkeypatch.setattr(features, "features", truncated_meanwhile)
    (result,), _ = _read_in_a_pipeline(model_home, [victim])
    assert result.error == "empty file (0 bytes)" and (result.size, result.hash) == (0, None)
    assert result.mtime_ns == decode.changed_at(victim.stat())
