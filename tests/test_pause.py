"""Pause / Resume, ListFailed and STATUS_CHANGED events, against a real daemon process on a real socket."""

from __future__ import annotations

import itertools
import queue
import shutil
import time
from pathlib import Path

import grpc
import pytest
from vibrary.clients.client import Client, DaemonError
from vibrary.proto import daemon_pb2 as pb

from tests.conftest import DaemonProcess, json_lines, start_daemon, vibrary, wait_for
from tests.synth import band_model, write_tone
from tests.test_daemon import _collect_events

SETTLE_S = 0.2  # the `home` fixture's settle time: a file is read this long after its last change


def _drop(folder: Path, n: int, prefix: str = "t") -> list[str]:
    """Audio files moved in whole, as a file manager would; returns their paths."""
    staging = folder.parent / f"staging-{prefix}"
    paths = []
    for i in range(n):
        src = write_tone(staging / f"{prefix}{i}.wav", 100.0 * (i + 1), seconds=0.5)
        dst = folder / src.name
        shutil.move(src, dst)
        paths.append(str(dst))
    return paths


def _states(client: Client, paths: list[str]) -> set[str]:
    return {f.state for f in client.tags(paths)}


def _next_status(events: queue.Queue[pb.Event], timeout: float) -> pb.Event:
    """The next STATUS_CHANGED event (file events come on the same stream); queue.Empty after timeout."""
    end = time.monotonic() + timeout
    while True:
        e = events.get(timeout=max(0.0, end - time.monotonic()))
        if e.kind == pb.Event.STATUS_CHANGED:
            return e


def test_paused_daemon_records_changes_and_indexes_them_on_resume(daemon: DaemonProcess, tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    assert daemon.client.pause().paused
    daemon.client.add_watch(str(library))
    paths = _drop(library, 3)
    wait_for(lambda: daemon.client.status().pending == 3)  # the watcher still records every file
    time.sleep(SETTLE_S + 1.0)  # long past the moment an unpaused daemon reads them
    s = daemon.client.status()
    assert (s.paused, s.pending, s.indexed, s.decoded) == (True, 3, 0, 0)
    assert _states(daemon.client, paths) == {"pending"}
    said = vibrary("tags", str(paths[0]), home=daemon.home).stdout  # not "no sound above -70 dBFS"
    assert said.strip() == f"{paths[0]}: (pending)", said
    with pytest.raises(DaemonError) as refused:
        list(daemon.client.tag(paths[:1], timeout=10))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "paused" in str(refused.value)
    assert "1 of these files are not tagged yet" in str(refused.value)

    s = daemon.client.resume()
    assert not s.paused
    wait_for(lambda: _states(daemon.client, paths) == {"indexed"})
    assert daemon.client.status().decoded == 3
    daemon.client.pause()  # a file tagged already is answered while paused (a DAW's dropped file it knows)
    assert [f.state for f in daemon.client.tag(paths[:1], timeout=10)] == ["indexed"]
    assert daemon.client.status().decoded == 3
    never_read = write_tone(tmp_path / "dropped" / "new.wav", 300.0)  # outside the watches, never read
    answered: list[pb.FileTags] = []  # the file tagged already comes first (the call answered none)
    with pytest.raises(DaemonError, match="1 of these files are not tagged yet") as refused:
        answered.extend(daemon.client.tag([paths[0], str(never_read)], timeout=10))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [(f.path, f.state) for f in answered] == [(paths[0], "indexed")]


def test_files_stay_findable_while_a_new_model_re_tags_them(
    daemon: DaemonProcess, model_home: Path, tmp_path: Path
) -> None:
    """A model installed or activated sends the library back to be re-tagged from cached spectrograms; the
    files used to vanish from search, counts and GetTags until their turn came (hours on a big library, or
    for as long as indexing was paused)."""
    library = tmp_path / "library"
    library.mkdir()
    daemon.client.add_watch(str(library))
    paths = _drop(library, 3)
    wait_for(lambda: _states(daemon.client, paths) == {"indexed"})
    found = sorted(f.path for f in daemon.client.search([["low", "mid", "high"]]))
    assert found == sorted(paths)
    daemon.client.pause()
    vibrary(
        "models",
        "install",
        str(band_model(tmp_path / "moods.onnx", name="moods", classes=("calm", "warm", "tense"))),
        home=model_home,
    )
    wait_for(lambda: daemon.client.status().pending == 3)  # every file waits for the new model's tags
    assert sorted(f.path for f in daemon.client.search([["low", "mid", "high"]])) == found
    assert sum(c.files for c in daemon.client.counts("bands")) == 3
    held = list(daemon.client.tags(paths))
    assert {f.state for f in held} == {"pending"} and all(f.tags and f.tags[0].model == "bands" for f in held)

    daemon.client.resume()
    wait_for(lambda: _states(daemon.client, paths) == {"indexed"})
    assert all({t.model for t in f.tags} == {"bands", "moods"} for f in daemon.client.tags(paths))
    assert daemon.client.status().decoded == 3  # re-tagged from the cache, not decoded again


def test_paused_survives_a_restart(model_home: Path, tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    d = start_daemon(model_home)
    try:
        d.client.add_watch(str(library))
        out = json_lines(vibrary("pause", "--json", home=model_home).stdout)
        assert out == [{"paused": True, "pending": 0}]
        assert vibrary("pause", home=model_home).stdout == "indexing was paused already (0 files pending)\n"
    finally:
        assert d.stop() == 0
    paths = _drop(library, 2)  # arrives while no daemon runs: found by the start-up scan
    d = start_daemon(model_home)
    try:
        wait_for(lambda: d.client.status().pending == 2)
        time.sleep(SETTLE_S + 1.0)
        status = json_lines(vibrary("status", "--json", home=model_home).stdout)[0]
        assert (status["paused"], status["pending"], status["indexed"]) == (True, 2, 0)
        out = json_lines(vibrary("resume", "--json", home=model_home).stdout)
        assert out[0]["paused"] is False
        assert vibrary("resume", home=model_home).stdout.startswith("indexing was not paused (")
        wait_for(lambda: _states(d.client, paths) == {"indexed"})
    finally:
        assert d.stop() == 0
    d = start_daemon(model_home)  # resumed stays resumed
    try:
        assert not d.client.status().paused
    finally:
        d.stop()


def test_list_failed_newest_first_with_the_reason(daemon: DaemonProcess, tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    daemon.client.add_watch(str(library))
    good = _drop(library, 1)
    empty = library / "empty.wav"
    empty.touch()
    wait_for(lambda: [f.path for f in daemon.client.failed()] == [str(empty)])
    garbage = library / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 10)
    wait_for(lambda: len(daemon.client.failed()) == 2)

    failed = daemon.client.failed()
    assert [f.path for f in failed] == [str(garbage), str(empty)]  # newest first
    assert {f.state for f in failed} == {"failed"}
    assert "empty" in failed[1].error and failed[0].error
    assert [f.path for f in daemon.client.failed(limit=1)] == [str(garbage)]
    wait_for(lambda: _states(daemon.client, good) == {"indexed"})  # it may come after the failures
    assert set(good).isdisjoint(f.path for f in daemon.client.failed())  # a good file is never listed
    with pytest.raises(DaemonError) as bad:
        daemon.client.failed(limit=-1)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_status_events_follow_indexing_throttled_and_end_idle(daemon: DaemonProcess, tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    listener = Client(home_dir=daemon.home)
    found = _collect_events(listener)
    first = _next_status(found, timeout=10)  # the stream opens with where things stand
    assert (first.status.indexed, first.status.pending, first.status.paused) == (0, 0, False)

    daemon.client.pause()  # files then wait, so a snapshot with work pending is certain to come
    daemon.client.add_watch(str(library))
    paths = _drop(library, 12)
    seen = [first]
    while seen[-1].status.pending < 12:
        seen.append(_next_status(found, timeout=30))
    assert seen[-1].status.paused and seen[-1].status.indexed == 0
    daemon.client.resume()
    while not (seen[-1].status.indexed == 12 and seen[-1].status.pending == 0):
        seen.append(_next_status(found, timeout=30))  # the last snapshot shows the daemon at rest
    assert not seen[-1].status.paused and list(seen[-1].status.watches) == [str(library)]
    gaps = [b.time - a.time for a, b in itertools.pairwise(seen[1:])]  # [0] came with the call
    assert all(g >= 0.24 for g in gaps), f"more than 4 status events a second: {gaps}"
    assert _states(daemon.client, paths) == {"indexed"}
    with pytest.raises(queue.Empty):  # an idle daemon sends nothing more
        _next_status(found, timeout=1.5)
    listener.close()


def test_pause_without_a_daemon_says_so(home: Path) -> None:
    proc = vibrary("pause", home=home, check=False)
    assert proc.returncode == 1 and "no daemon answers" in proc.stderr
    assert not (home / "paused").exists()  # nothing was changed behind the missing daemon's back
