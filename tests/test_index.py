"""The SQLite index: query semantics, tags that follow content, and results that are never stale."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import vibrary.daemon.index as index_module
import vibrary.daemon.search as search_module
from vibrary.daemon.decode import UNSUPPORTED_ENCODING
from vibrary.daemon.features import changed_at
from vibrary.daemon.index import ANY_STORED_SCORE, Index, Result
from vibrary.daemon.search import Query, search


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


def _add(index: Index, path: str, tags: dict[str, float], model_id: int, content: bytes | None = None) -> None:
    index.mark_pending([(path, 0.0)])
    job = next(j for j in index.due_jobs(1000, set(), 1e12) if j.path == path)
    ranked = sorted(tags.items(), key=lambda kv: -kv[1])
    result = Result(
        job, size=1, mtime_ns=1, hash=content or path.encode().ljust(16, b"\0")[:16], tags={model_id: ranked}
    )
    assert index.write_results([result], 0.02) == [result]


@pytest.fixture
def library(index: Index) -> tuple[Index, int, int]:
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare", "hihat"], "{}", False)
    mood = index.add_model("mood", "/m/mood.onnx", "b" * 64, ["dark", "bright"], "{}", False)
    index.set_active(inst, True)
    index.set_active(mood, True)
    _add(index, "/lib/drums/k1.wav", {"kick": 0.9, "snare": 0.05}, inst.id)
    _add(index, "/lib/drums/k2.wav", {"kick": 0.4, "snare": 0.35, "hihat": 0.25}, inst.id)  # best tag, < 0.5
    _add(index, "/lib/drums/s1.wav", {"snare": 0.7, "kick": 0.3}, inst.id)
    _add(index, "/lib/other/h1.wav", {"hihat": 0.95}, inst.id)
    for path, mood_tags in {"/lib/drums/k1.wav": {"dark": 0.8}, "/lib/drums/s1.wav": {"bright": 0.9}}.items():
        content = path.encode().ljust(16, b"\0")[:16]
        index.mark_pending([(path, 0.0)])
        job = next(j for j in index.due_jobs(100, set(), 1e12) if j.path == path)
        r = Result(job, size=1, mtime_ns=1, hash=content, tags={mood.id: list(mood_tags.items())})
        index.write_results([r], 0.02)
    return index, inst.id, mood.id


def _paths(index: Index, **kw: Any) -> list[str]:
    return sorted(f.path for f in search(index, Query(**kw)))


def test_single_tag_matches_best_tag_or_high_score(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    assert _paths(index, all_of=[["kick"]]) == ["/lib/drums/k1.wav", "/lib/drums/k2.wav"]
    assert _paths(index, all_of=[["kick"]], min_score=0.3) == [
        "/lib/drums/k1.wav",
        "/lib/drums/k2.wav",
        "/lib/drums/s1.wav",
    ]
    assert _paths(index, all_of=[["kick"]], min_score=0.5) == ["/lib/drums/k1.wav"]
    # every stored score, from the bottom of a slider: a multi-label model's best tag of 1e-12 (stored, as a
    # best tag always is) was not found by it, nor any score under 1e-9 with store_min_score 0
    index.add_model("sparse", "/m/sparse.onnx", "c" * 64, ["dusty"], "{}", False)
    sparse = index.model("sparse", 1)
    index.set_active(sparse, True)
    _add(index, "/lib/drums/d1.wav", {"dusty": 1e-12}, sparse.id)
    assert _paths(index, all_of=[["dusty"]], min_score=ANY_STORED_SCORE) == ["/lib/drums/d1.wav"]


def test_a_new_version_serves_searches_once_it_has_tagged_the_library(library: tuple[Index, int, int]) -> None:
    """A training's new version left its tags out of every search until its re-tag reached each file (for as
    long as indexing was paused), while the version before's stood in the index: that one serves until then."""
    index, inst, mood = library
    v2 = index.add_model("mood", "/m/mood2.onnx", "d" * 64, ["dark", "murky"], "{}", False, active=True)
    assert [m.ref for m in index.serving_models()] == ["inst@1", "mood@1"]
    assert index.requeue_missing([inst, v2.id]) == 4  # every file lacks mood@2's tags
    assert _paths(index, all_of=[["dark"]]) == ["/lib/drums/k1.wav"]  # not none: mood@1's, until mood@2 has them
    files = ["/lib/drums/k1.wav", "/lib/drums/k2.wav", "/lib/drums/s1.wav", "/lib/other/h1.wav"]
    for path in files[:3]:
        _add(index, path, {"murky": 0.9}, v2.id)
    assert index.hand_over({inst, v2.id}, hidden=[]) == [] and _paths(index, all_of=[["murky"]]) == []
    away = ["/lib/other"]  # a file whose drive is away waits apart
    assert [m.ref for m in index.hand_over({inst, v2.id}, hidden=away)] == ["mood@2"]
    assert [m.ref for m in index.serving_models()] == ["inst@1", "mood@2"]
    assert _paths(index, all_of=[["murky"]]) == files[:3] and _paths(index, all_of=[["dark"]]) == []
    assert _paths(index, all_of=[["kick"]]) == ["/lib/drums/k1.wav", "/lib/drums/k2.wav"]  # inst's as they were
    index.set_active(index.model("mood", 1), True)  # a rollback: mood@1 never tagged k2 and h1
    assert index.requeue_missing([inst, mood]) == 1 and index.hand_over({inst, mood}) == []  # k2 (h1: pending)
    assert _paths(index, all_of=[["murky"]]) == files[:3]  # mood@2 serves until then
    for path in ("/lib/drums/k2.wav", "/lib/other/h1.wav"):
        _add(index, path, {"bright": 0.6}, mood)
    assert [m.ref for m in index.hand_over({inst, mood})] == ["mood@1"]
    assert _paths(index, all_of=[["dark"]]) == ["/lib/drums/k1.wav"] and _paths(index, all_of=[["murky"]]) == []
    index.set_active(index.model("mood", 2), True)
    index.set_active(index.model("mood", 2), False)  # turned off: neither version's tags are found
    assert [m.ref for m in index.serving_models()] == ["inst@1"] and _paths(index, all_of=[["dark"]]) == []
    index.set_active(index.model("mood", 2), True)  # none stands in: it serves at once
    assert [m.ref for m in index.serving_models()] == ["inst@1", "mood@2"]
    index.set_active(index.model("mood", 1), True)
    assert index.remove_model(index.model("mood", 2)) is None  # the one standing in goes: mood@1 serves
    assert [m.ref for m in index.serving_models()] == ["inst@1", "mood@1"]
    v3 = index.add_model("mood", "/m/mood3.onnx", "e" * 64, ["dark"], "{}", False, active=True)
    assert [m.ref for m in index.serving_models()] == ["inst@1", "mood@1"]  # (mood@3 re-tags)
    assert index.remove_model(v3) == index.model("mood", 1)  # the active one goes mid-way: mood@1 again, serving
    assert [(m.ref, m.active) for m in index.serving_models()] == [("inst@1", True), ("mood@1", True)]
    with index.write() as c:  # as an older release left it: deactivated, its serving flag not cleared
        c.execute("UPDATE models SET active = 0 WHERE name = 'mood'")
    assert [m.ref for m in Index(index.path).serving_models()] == ["inst@1"]  # repaired as it opens


def test_files_under_folders_count_once_however_the_folders_nest(index: Index) -> None:
    index.mark_pending([(p, 0.0) for p in ("/lib/a/1.wav", "/lib/a/b/2.wav", "/lib/a2/3.wav", "/lib/c.wav")])
    assert index.count_under(["/lib/a"]) == 2  # not /lib/a2's
    assert index.count_under(["/lib/a", "/lib/a/b"]) == index.count_under(["/lib/a/b", "/lib/a"]) == 2
    assert index.count_under(["/lib/a/b", "/lib/a2", "/gone"]) == 2 and index.count_under([]) == 0


def test_and_or_not_and_prefix(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    assert _paths(index, all_of=[["kick"], ["dark"]]) == ["/lib/drums/k1.wav"]
    assert _paths(index, all_of=[["snare", "hihat"]]) == ["/lib/drums/s1.wav", "/lib/other/h1.wav"]
    assert _paths(index, all_of=[["kick", "snare"]], none_of=["dark"]) == ["/lib/drums/k2.wav", "/lib/drums/s1.wav"]
    assert _paths(index, all_of=[["hihat", "kick"]], path_prefix="/lib/other") == ["/lib/other/h1.wav"]
    assert _paths(index, none_of=["kick"], path_prefix="/lib") == ["/lib/drums/s1.wav", "/lib/other/h1.wav"]
    assert _paths(index, all_of=[["nonexistent"]]) == []
    assert len(_paths(index, all_of=[["kick", "snare", "hihat"]], limit=2)) == 2


def test_a_lower_score_asked_for_never_takes_files_away_when_a_tag_is_left_out(
    library: tuple[Index, int, int],
) -> None:
    """`-snare` leaves out the files that have snare, whatever --min-score asks of the tags searched for: it
    was read with the threshold too, so `kick -snare --min-score 0.01` left out every file with a stored snare
    score of 0.01 (nearly all: k1's 0.05 is no snare) and found fewer files than without a threshold."""
    index, _, _ = library
    found = [set(_paths(index, all_of=[["kick"]], none_of=["snare"], min_score=m)) for m in (0.5, 0.3, 0.0, 0.01)]
    assert found[0] == {"/lib/drums/k1.wav"} and found[1] == found[2] == {"/lib/drums/k1.wav", "/lib/drums/k2.wav"}
    assert found[3] == found[1]  # s1 has kick 0.3 but is a snare
    assert set(_paths(index, all_of=[["kick"]], none_of=["snare"], min_score=ANY_STORED_SCORE)) == found[1]


def test_a_best_first_search_ranks_a_file_alike_in_a_small_folder_and_in_a_walk(index: Index) -> None:
    """A small folder (or a long walk) ranked by every stored score, a walk by the scores that count: a file
    another model only guessed kick for (stored, not a hit) came first under --under and not without it."""
    first = index.add_model("first", "/m/a.onnx", "a" * 64, ["kick", "snare"], "{}", False, active=True)
    second = index.add_model("second", "/m/b.onnx", "b" * 64, ["kick", "snare"], "{}", False, active=True)
    _add(index, "/lib/x.wav", {"kick": 0.30, "snare": 0.25}, first.id)  # a hit: first's best tag
    _add(index, "/lib/x.wav", {"snare": 0.55, "kick": 0.45}, second.id)  # stored, not a hit
    _add(index, "/lib/y.wav", {"kick": 0.40, "snare": 0.2}, first.id)
    for under in ("", "/lib"):
        (best,) = search(index, Query([["kick"]], path_prefix=under, limit=1, best_first=True))
        assert best.path == "/lib/y.wav", under


def test_a_tag_is_found_in_either_unicode_form_and_any_case(index: Index) -> None:
    """Another front end's search for a tag pasted from a macOS folder name (é as e and an accent)."""
    model = index.add_model("mood", "/m/mood.onnx", "a" * 64, ["caf\u00e9", "dark"], "{}", False, active=True)
    _add(index, "/lib/c.wav", {"caf\u00e9": 0.9, "dark": 0.1}, model.id)
    assert _paths(index, all_of=[["Cafe\u0301"]]) == ["/lib/c.wav"]
    assert _paths(index, all_of=[["dark"]], none_of=["cafe\u0301"], min_score=0.05) == []


def test_tags_stored_in_another_unicode_form_before_are_spelled_once_and_found(index: Index) -> None:
    """An index of before stop 34 holds a model's tags as its class names spelled them (é as e and an accent):
    spelled once as queries are, and merged with the same tag stored since in the other form."""
    model = index.add_model("mood", "/m/mood.onnx", "a" * 64, ["cafe\u0301", "dark"], "{}", False, active=True)
    _add(index, "/lib/old.wav", {"cafe\u0301": 0.9, "dark": 0.1}, model.id)
    _add(index, "/lib/new.wav", {"caf\u00e9": 0.8, "dark": 0.2}, model.id)  # (the model loaded since spells it so)
    index.conn().execute("PRAGMA user_version = 2")  # as the older daemon left it
    assert index.spell_tags_once() == 1 and index.spell_tags_once() == 0
    assert _paths(index, all_of=[["caf\u00e9"]]) == ["/lib/new.wav", "/lib/old.wav"]
    assert [(t, n) for _, t, n in index.tag_counts()] == [("caf\u00e9", 2)]
    assert index.model("mood").classes == ("caf\u00e9", "dark")


def test_search_returns_tags_of_active_models_best_first(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    (k1,) = [f for f in search(index, Query(all_of=[["dark"]]))]
    assert [t[1] for t in k1.tags] == ["kick", "dark", "snare"]
    assert {t[0] for t in k1.tags} == {"inst", "mood"}
    assert _paths(index, all_of=[["kick"]], model="mood") == []


def test_inactive_models_are_invisible_but_kept(library: tuple[Index, int, int]) -> None:
    index, _, mood_id = library
    mood = next(m for m in index.models() if m.id == mood_id)
    index.set_active(mood, False)
    assert _paths(index, all_of=[["dark"]]) == []
    assert all(t[0] == "inst" for f in index.file_tags(["/lib"]) for t in f.tags)
    index.set_active(mood, True)
    assert _paths(index, all_of=[["dark"]]) == ["/lib/drums/k1.wav"]


def test_files_read_again_for_a_model_are_counted_as_being_re_tagged(library: tuple[Index, int, int]) -> None:
    """A model activated re-tags the library: "indexed 72, pending 1456" of files all searchable read as a
    library not indexed yet. The pending files read before are counted apart; a new file is not one of them."""
    index, inst_id, mood_id = library
    index.mark_pending([("/lib/new.wav", 0.0)])
    assert index.retagging() == 0
    queued = index.requeue_missing([inst_id, mood_id])  # k2 and h1 lack a mood
    assert queued == 2 and index.counts()["pending"] == 3 and index.retagging() == 2
    assert _paths(index, all_of=[["kick"]]) == ["/lib/drums/k1.wav", "/lib/drums/k2.wav"]  # found meanwhile


def test_a_moved_file_keeps_its_tags(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    assert len(index.move("/lib/drums", "/lib/kit")) == 3
    assert _paths(index, all_of=[["kick"]]) == ["/lib/kit/k1.wav", "/lib/kit/k2.wav"]
    assert index.counts() == {"indexed": 4, "pending": 0, "failed": 0} and index.retagging() == 0
    assert index.move("/lib/kit/k1.wav", "/lib/k1.wav") == [("/lib/kit/k1.wav", "/lib/k1.wav")]
    assert "/lib" in index.dirs_under("/lib") and list(index.files_in_dir("/lib")) == ["/lib/k1.wav"]


def test_a_duplicate_file_needs_no_model_run(library: tuple[Index, int, int]) -> None:
    index, inst_id, mood_id = library
    content = b"/lib/drums/k1.wav".ljust(16, b"\0")[:16]
    assert index.models_done(content) == {inst_id, mood_id}
    assert index.models_done(b"x" * 16) == set()


def test_a_result_for_a_file_changed_meanwhile_is_dropped(index: Index) -> None:
    m = index.add_model("inst", "/m.onnx", "c" * 64, ["kick"], "{}", False)
    index.set_active(m, True)
    index.mark_pending([("/a.wav", 0.0)])
    (job,) = index.due_jobs(10, set(), 1e12)
    index.mark_pending([("/a.wav", 0.0)])  # the file changed while a worker was reading it
    stale = Result(job, size=1, mtime_ns=1, hash=b"h" * 16, tags={m.id: [("kick", 1.0)]})
    assert index.write_results([stale], 0.02) == []
    assert index.counts()["pending"] == 1


def test_failures_are_kept_with_their_reason(index: Index) -> None:
    index.mark_pending([("/bad.wav", 0.0)])
    (job,) = index.due_jobs(10, set(), 1e12)
    index.write_results([Result(job, size=10, mtime_ns=5, error="empty file (0 bytes)")], 0.02)
    (f,) = index.file_tags(["/bad.wav"])
    assert (f.state, f.error, f.tags) == ("failed", "empty file (0 bytes)", [])
    assert index.failures() == [("/bad.wav", "empty file (0 bytes)")]


def test_codecs_refused_before_ffmpeg_read_them_are_read_again_once(index: Index) -> None:
    """An Apple Loop (.caf of AAC or ALAC) failed for good before stop 35, and a scan does not read an unchanged
    failed file again: once per index, such failures go back to pending; the others stay failed."""
    index.mark_pending([("/loops/a.caf", 0.0), ("/bad.wav", 0.0)])
    refused = "cannot decode audio: Supported file format but unsupported encoding"
    errors = {"/loops/a.caf": refused, "/bad.wav": "empty file (0 bytes)"}
    index.write_results(
        [Result(j, size=10, mtime_ns=5, error=errors[j.path]) for j in index.due_jobs(10, set(), 1e12)], 0.02
    )
    index.conn().execute("PRAGMA user_version = 3")  # as the older daemon left it
    assert index.read_unsupported_once(UNSUPPORTED_ENCODING) == 1 and index.read_unsupported_once("x") == 0
    assert [j.path for j in index.due_jobs(10, set(), 1e12)] == ["/loops/a.caf"]
    assert index.failures() == [("/bad.wav", "empty file (0 bytes)")]


def test_an_index_from_before_every_once_step_has_each_in_turn(index: Index, tmp_path: Path) -> None:
    """The daemon ran the newest once-step second: an index from before the others was marked past them (each is
    skipped once a later one is done), and an Apple Loop that FFmpeg reads now stayed failed for good."""
    from vibrary.daemon import service

    index.mark_pending([("/loops/a.caf", 0.0)])
    refused = "cannot decode audio: Supported file format but unsupported encoding"
    index.write_results([Result(j, size=10, mtime_ns=5, error=refused) for j in index.due_jobs(10, set(), 1e12)], 0.02)
    index.conn().execute("PRAGMA user_version = 1")
    service.upgrade(index)
    assert [j.path for j in index.due_jobs(10, set(), 1e12)] == ["/loops/a.caf"]
    assert index.conn().execute("PRAGMA user_version").fetchone()[0] == index_module._UNHEARD_FORGOTTEN


def test_a_failure_that_passes_keeps_the_file_pending_and_reads_it_again_later(index: Index) -> None:
    """Out of file handles (EMFILE) for a moment, a file was failed for good: only a change or a rescan hours
    later read it again. It waits a minute, says why, and a change reads it at once."""
    index.mark_pending([("/lib/k.wav", 0.0), ("/lib/s.wav", 0.0)])
    jobs = index.due_jobs(10, set(), 1e12)
    why = "cannot open file: Too many open files"
    now = time.time()
    assert len(index.write_results([Result(j, error=why, retry_for=index_module.RETRY_FOR_S) for j in jobs], 0.02)) == 2
    assert index.counts() == {"indexed": 0, "pending": 2, "failed": 0} and index.failures() == []
    assert index.retagging() == 0
    assert index.retrying() == (2, why)
    assert index.due_jobs(10, set(), now + 1) == []  # not fed again at once: the reason has to pass first
    assert {j.path for j in index.due_jobs(10, set(), now + index_module.RETRY_S + 1)} == {"/lib/k.wav", "/lib/s.wav"}
    assert [(f.state, f.error) for f in index.file_tags(["/lib/k.wav"])] == [("pending", why)]
    index.mark_pending([("/lib/k.wav", 0.0)])  # changed meanwhile: read now, the old reason forgotten
    assert index.retrying() == (1, why) and [j.path for j in index.due_jobs(10, set(), now + 1)] == ["/lib/k.wav"]
    (late,) = index.due_jobs(10, set(), now + index_module.RETRY_S + 1)[1:]  # an EIO, an ESTALE may never pass:
    index.write_results([Result(late, error=why, retry_for=1e-6)], 0.02)  # tried for as long as it may, it fails
    assert index.failures() == [("/lib/s.wav", f"{why} (tried for 1.66667e-08 min; read again when it changes)")]


def test_a_passing_error_in_a_re_tag_is_retried_from_when_the_file_was_queued(index: Index) -> None:
    """A model activated re-tags the library: a file indexed months ago and a passing error then (a NAS's
    ESTALE) failed the file at once, "tried for 60 min", out of every search: the hour counted from its last
    indexing, not from when it was queued again."""
    first = index.add_model("demo", "x.onnx", "sha", ["kick", "snare"], "{}", True, active=True)
    index.mark_pending([("/lib/a.wav", 0.0)])
    (job,) = index.due_jobs(10, set(), 1e12)
    index.write_results(
        [Result(job, size=10, mtime_ns=1, inode=5, hash=b"h" * 16, tags={first.id: [("kick", 0.9)]})], 0
    )
    index.conn().execute("UPDATE files SET updated = updated - 7200")  # indexed two hours ago
    second = index.add_model("mine", "y.onnx", "sha2", ["dark", "bright"], "{}", False, active=True)
    assert index.requeue_missing([first.id, second.id]) == 1
    (job,) = index.due_jobs(10, set(), 1e12)
    why = "cannot read file: Stale file handle"
    index.write_results([Result(job, error=why, retry_for=index_module.RETRY_FOR_S)], 0)
    assert index.failures() == [] and index.retrying() == (1, why)


def test_files_waiting_for_their_watch_folder_are_not_counted_as_retrying(index: Index) -> None:
    """A drive unplugged mid-indexing: its files tried meanwhile wait for it, and were counted with the ones
    read again after a passing error, so `status --wait` (which gives up once pending files are more than
    those) waited for ever."""
    index.mark_pending([("/drive/a.wav", 0.0), ("/drive/b.wav", 0.0), ("/lib/k.wav", 0.0)])
    jobs = {j.path: j for j in index.due_jobs(10, set(), 1e12)}
    gone = [
        Result(jobs[p], error=index_module.WATCH_GONE, retry_for=math.inf) for p in ("/drive/a.wav", "/drive/b.wav")
    ]
    why = "cannot open file: Too many open files"
    index.write_results([*gone, Result(jobs["/lib/k.wav"], error=why, retry_for=index_module.RETRY_FOR_S)], 0.02)
    assert index.counts()["pending"] == 3 and index.retrying() == (1, why)


def test_files_longer_than_the_hashed_head_are_read_again_once_after_the_upgrade(index: Index) -> None:
    """Their hash may have been their silent head's alone (stems of one song shared one id and one's tags):
    an index made before is read again once, those files only; their unchanged content is not decoded."""
    head = 4 << 20
    for path, size in (("/lib/stem.wav", head + 1), ("/lib/kick.wav", 50_000), ("/lib/song.flac", head + 1)):
        index.mark_pending([(path, 0.0)])
        (job,) = index.due_jobs(10, set(), 1e12)
        index.write_results([Result(job, size=size, mtime_ns=1, hash=path.encode().ljust(16)[:16])], 0.02)
    assert index.rehash_long_once(head) == 1  # (a compressed file's head holds minutes of its audio)
    assert [j.path for j in index.due_jobs(10, set(), 1e12)] == ["/lib/stem.wav"]
    assert index.rehash_long_once(head) == 0  # once


def test_due_jobs_respects_settle_time_and_in_flight(index: Index) -> None:
    index.mark_pending([("/a.wav", 100.0), ("/b.wav", 200.0)])
    assert [j.path for j in index.due_jobs(10, set(), 150.0)] == ["/a.wav"]
    a = index.due_jobs(10, set(), 150.0)[0]
    assert index.due_jobs(10, {a.id}, 150.0) == []
    assert index.next_due() == 100.0


def test_new_model_requeues_only_what_it_has_not_seen(library: tuple[Index, int, int]) -> None:
    index, inst_id, mood_id = library
    assert index.requeue_missing([inst_id]) == 0
    assert index.requeue_missing([inst_id, mood_id]) == 2  # k2 and h1 have no mood tags
    assert index.counts()["pending"] == 2


def test_tag_counts_and_watches(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    counts = {(m, t): n for m, t, n in index.tag_counts()}
    assert counts[("inst", "kick")] == 2 and counts[("inst", "hihat")] == 1 and counts[("mood", "dark")] == 1
    index.add_watch("/lib")
    index.add_watch("/lib/other")
    assert index.watches() == ["/lib", "/lib/other"]
    assert index.remove_watch("/lib")
    assert sorted(f.path for f in index.file_tags(["/lib"]) if f.state != "unknown") == ["/lib/other/h1.wav"]
    assert index.remove_watch("/nowhere") is None


def test_the_files_outside_every_watch_are_read_between_the_watches(index: Index) -> None:
    """Nested, sibling and prefix-sharing watches (`/lib` and `/lib2`): the ranges between them, merged."""
    for w in ("/lib", "/lib/sub", "/other", "/b"):
        index.add_watch(w)
    inside = ["/lib/a.wav", "/lib/sub/b.wav", "/other/c.wav", "/b/x/y.wav"]
    outside = ["/a.wav", "/lib2/f.wav", "/lib-x/g.wav", "/libz.wav", "/zzz/e.wav", "/\u00e9t\u00e9.wav"]
    outside.append("/\U0001f600.wav")
    index.mark_pending((p, 0.0) for p in inside + outside)
    assert sorted(p for p, _ in index.outside_watches()) == sorted(outside)
    index.remove_watch("/lib")
    assert sorted(p for p, _ in index.outside_watches()) == sorted(outside)  # (its files went with it)


def test_model_versions(index: Index) -> None:
    a1 = index.add_model("inst", "/1.onnx", "1" * 64, ["kick"], "{}", False)
    a2 = index.add_model("inst", "/2.onnx", "2" * 64, ["kick"], "{}", False)
    assert (a1.version, a2.version) == (1, 2)
    assert index.model("inst").version == 2 and index.model("inst", 1).path == "/1.onnx"
    index.set_active(a1, True)
    index.set_active(a2, True)
    assert [m.ref for m in index.active_models()] == ["inst@2"]
    with pytest.raises(KeyError, match="no model inst@7; installed: inst@1, inst@2"):
        index.model("inst", 7)
    with pytest.raises(KeyError, match=r"no model ints \(did you mean 'inst'\?\); installed"):  # as of datasets
        index.model("ints")
    index.add_model("inst2", "/3.onnx", "3" * 64, ["kick"], "{}", False)
    with pytest.raises(KeyError, match=r"no model inst@7; installed"):  # its version mistyped, not its name
        index.model("inst", 7)


def test_a_stale_result_for_a_moved_file_neither_deletes_nor_overwrites_it(index: Index) -> None:
    index.mark_pending([("/staging/a.wav", 0.0)])
    (job,) = index.due_jobs(10, set(), 1e12)
    assert len(index.move("/staging/a.wav", "/lib/a.wav")) == 1  # moved while a worker was reading it
    gone = Result(job, error="file not found", vanished=True)  # the worker's view of the old path
    assert index.write_results([gone], 0.02) == []
    (moved,) = index.due_jobs(10, set(), 1e12)
    assert (moved.id, moved.path) == (job.id, "/lib/a.wav")  # still queued, under its new name


def test_a_move_needs_two_paths(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    with pytest.raises(ValueError, match="two paths"):
        index.move("/lib/drums", "")
    assert index.counts()["indexed"] == 4 and index.dirs_under("/lib") != []


def test_and_queries_start_from_the_rarest_tag_with_the_same_answer(library: tuple[Index, int, int]) -> None:
    index, _, _ = library
    kick, dark = search_module._lookup_tag(index, "kick"), search_module._lookup_tag(index, "dark")
    assert kick is not None and dark is not None
    assert search_module._rarest_first(index, [[kick], [dark]]) == [[dark], [kick]]  # 2 kicks, 1 dark file
    assert _paths(index, all_of=[["kick"], ["dark"]]) == _paths(index, all_of=[["dark"], ["kick"]])
    assert _paths(index, all_of=[["kick"], ["dark"]]) == ["/lib/drums/k1.wav"]


def test_an_and_of_one_models_tags_finds_the_same_files_by_merge_or_by_probes(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare", "hihat"], "{}", False)
    mood = index.add_model("mood", "/m/mood.onnx", "b" * 64, ["dark", "bright"], "{}", False)
    index.set_active(inst, True)
    index.set_active(mood, True)
    rng = random.Random(7)
    expected = set()
    for i in range(300):
        kick, snare = rng.random(), rng.random()
        path = f"/lib/{i:03d}.wav"
        _add(index, path, {"kick": kick, "snare": snare, "hihat": 0.01}, inst.id)
        dark = i % 3 == 0
        if dark:  # a second model's tag on the same content, for the NOT
            index.mark_pending([(path, 0.0)])
            job = next(j for j in index.due_jobs(1000, set(), 1e12) if j.path == path)
            r = Result(
                job, size=1, mtime_ns=1, hash=path.encode().ljust(16, b"\0")[:16], tags={mood.id: [("dark", 0.9)]}
            )
            index.write_results([r], 0.02)
        if min(kick, snare) >= 0.5 and not dark:  # a hit: the model's best tag, or a score of at least 0.5
            expected.add(path)
    # a copy of a matching file shares its content, and must be found too
    first = sorted(expected)[0]
    _add(index, "/lib/copy.wav", {"kick": 0.9, "snare": 0.8}, inst.id, content=first.encode().ljust(16, b"\0")[:16])
    expected.add("/lib/copy.wav")
    query = {"all_of": [["kick"], ["snare"]], "none_of": ["dark"]}
    ids = [[search_module._lookup_tag(index, "kick")], [search_module._lookup_tag(index, "snare")]]
    assert search_module._postings_to_merge(index, ids, [inst.id, mood.id]) is not None  # similar list lengths: merged
    merged = _paths(index, **query)
    assert len(_paths(index, **query, limit=7)) == 7
    monkeypatch.setattr(search_module, "MERGE_MAX_RATIO", 0)
    assert search_module._postings_to_merge(index, ids, [inst.id, mood.id]) is None  # probed
    assert merged == _paths(index, **query) == sorted(expected)
    assert len(expected) > 20


def test_a_file_read_for_the_models_active_before_a_change_is_read_again(index: Index) -> None:
    """A worker holds a file while another model is activated: its result, made without the new model,
    is not stored as done; the file is read again (otherwise it stays without the new model's tags
    until it changes)."""
    first = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick"], "{}", False)
    index.set_active(first, True)
    index.mark_pending([("/lib/k.wav", 0.0)])
    (held,) = index.due_jobs(10, set(), 1e12)
    second = index.add_model("mood", "/m/mood.onnx", "b" * 64, ["dark"], "{}", False)
    index.set_active(second, True)
    index.requeue_missing([first.id, second.id])
    stale = Result(held, size=1, mtime_ns=1, hash=b"k" * 16, tags={first.id: [("kick", 0.9)]})
    assert index.write_results([stale], 0.02) == []
    (again,) = index.due_jobs(10, set(), 1e12)
    assert again.path == held.path and again.gen > held.gen


def test_tags_of_a_folder_bigger_than_sqlites_variable_limit(index: Index) -> None:
    """A folder's files are looked up with their tags a page at a time: one `IN (...)` of every content
    id failed past SQLite's variable limit (32,766 on many builds; lowered here to show it)."""
    model = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick"], "{}", False)
    index.set_active(model, True)
    for i in range(1200):
        _add(index, f"/lib/pack/{i:04d}.wav", {"kick": 0.9}, model.id)
    index.conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    found = list(index.file_tags(["/lib"]))
    assert len(found) == 1200 and all(f.tags and f.tags[0][1] == "kick" for f in found)


def test_a_late_result_for_a_deleted_file_never_touches_the_file_added_after_it(index: Index) -> None:
    """A worker still holds a file that was deleted (its row gone) when another file is added: with ids
    reused, the new file got the old one's (id, gen) and the late result removed it from the index
    (or, for a file read before its deletion, gave it the old file's tags)."""
    model = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare"], "{}", False)
    index.set_active(model, True)
    index.mark_pending([("/lib/a.wav", 0.0)])
    (held,) = index.due_jobs(10, set(), 1e12)
    assert index.remove_paths(["/lib/a.wav"]) == ["/lib/a.wav"]
    index.mark_pending([("/lib/b.wav", 0.0)])
    (new,) = index.due_jobs(10, set(), 1e12)
    assert new.id != held.id
    read = Result(held, size=1, mtime_ns=1, hash=b"a" * 16, tags={model.id: [("kick", 0.9)]})
    vanished = Result(held, vanished=True)
    assert index.write_results([read], 0.02) == [] and index.write_results([vanished], 0.02) == []
    (b,) = index.file_tags(["/lib/b.wav"])
    assert (b.state, b.tags) == ("pending", [])


def test_an_index_from_before_autoincrement_ids_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old_schema = index_module.SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER PRIMARY KEY")
    newer = ("activated REAL", "serving INTEGER")
    old_schema = "\n".join(line for line in old_schema.splitlines() if not any(n in line for n in newer))
    with sqlite3.connect(path) as c:
        c.executescript(old_schema)
        c.execute("INSERT INTO files(id, path, dir, gen) VALUES (7, '/lib/k.wav', '/lib', 3)")
        c.execute("INSERT INTO models VALUES (2, 'inst', 1, '/m.onnx', 'a', '[]', '{}', 1, 0, 1000.0)")
        c.execute("INSERT INTO models VALUES (4, 'inst', 2, '/m2.onnx', 'b', '[]', '{}', 0, 0, 2000.0)")
        c.executemany("INSERT INTO tags VALUES (1, ?, 1, 0.9, 1)", [(2,), (3,)])  # 3: a model removed before
        c.executemany("INSERT INTO tagged VALUES (1, ?)", [(2,), (3,)])
    index = Index(path)
    for name in ("files", "models"):
        table = index.conn().execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
        assert "AUTOINCREMENT" in table
    assert index.conn().execute("SELECT model_id FROM tags").fetchall() == [(2,)]  # what 3 left is gone
    assert index.conn().execute("SELECT model_id FROM tagged").fetchall() == [(2,)]
    listed = [(m.id, m.ref, m.serving, m.activated) for m in index.models()]  # (from before `serving`)
    # the version active at the upgrade was made active last: the table made anew had `activated` 0 for every
    # version, and a removal or `activate inst` restored the newest (inst@2) in place of the one rolled back to
    assert listed == [(2, "inst@1", True, 1000.0), (4, "inst@2", False, 0.0)]
    removed = index.add_model("other", "/o.onnx", "b" * 64, ["x"], "{}", False)
    index.remove_model(removed)
    assert index.add_model("other", "/o.onnx", "b" * 64, ["x"], "{}", False).id == removed.id + 1
    assert index.conn().execute("SELECT id, path, gen FROM files").fetchall() == [(7, "/lib/k.wav", 3)]
    indexes = {r[0] for r in index.conn().execute("SELECT name FROM sqlite_master WHERE tbl_name = 'files'")}
    assert {"files_work", "files_dir", "files_content", "files_failed"} <= indexes
    index.remove_paths(["/lib/k.wav"])
    index.mark_pending([("/lib/s.wav", 0.0)])
    assert index.due_jobs(10, set(), 1e12)[0].id == 8  # not 7 again
    with index.write() as c:  # as that upgrade left an index: mended at the next open
        c.execute("UPDATE models SET activated = 0")
    index.close()
    with contextlib.closing(Index(path)) as again:
        assert again.model("inst", 1).activated == 1000.0


def test_removing_the_active_version_restores_the_one_active_before_it(index: Index) -> None:
    """The newest version left took its place: one installed `--inactive` to try later, or of other tags, went
    live and re-tagged the library, where the user had another before."""
    index.add_model("moods", "/m/1.onnx", "a" * 64, ["dark"], "{}", False, active=True)
    v2 = index.add_model("moods", "/m/2.onnx", "b" * 64, ["dark"], "{}", False, active=True)
    v3 = index.add_model("moods", "/m/3.onnx", "c" * 64, ["c1", "c2"], "{}", False)  # staged, never active
    assert index.remove_model(v2) == index.model("moods", 1)
    v4 = index.add_model("moods", "/m/4.onnx", "d" * 64, ["dark"], "{}", False)
    index.set_active(v4, True)
    assert index.remove_model(v4) == index.model("moods", 1)  # (not v3, newer)
    assert index.remove_model(index.model("moods", 1)) == index.model("moods", 3)  # none left was active: the newest
    assert index.remove_model(v3) is None and not index.models()


def test_a_file_installed_twice_at_once_is_one_version(index: Index) -> None:
    """Two `vibrary train` following one job each installed its model: both found it not installed, then each
    added a version of the one file, and removing either took the file from the other."""
    first = index.add_model("mine", "/m/a.onnx", "a" * 64, ["dark"], "{}", False)  # (as if checked absent by both)
    again = index.add_model("mine", "/m/a.onnx", "a" * 64, ["dark"], "{}", False, active=True)
    assert (again.version, again.active) == (1, True) and [m.ref for m in index.models()] == ["mine@1"]
    assert first.id == again.id


def test_tags_computed_by_a_model_removed_meanwhile_are_not_stored(index: Index) -> None:
    """A batch in flight when its model is removed used to store that model's tags after the removal had
    deleted them; with ids reused, the next model installed took them over as its own."""
    kept = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare"], "{}", False)
    gone = index.add_model("mood", "/m/mood.onnx", "b" * 64, ["dark", "bright"], "{}", False)
    index.mark_pending([("/lib/a.wav", 0.0)])
    (job,) = index.due_jobs(10, set(), 1e12)
    index.remove_model(gone)
    tags = {kept.id: [("kick", 0.9)], gone.id: [("dark", 0.8)]}
    assert index.write_results([Result(job, size=1, mtime_ns=1, hash=b"a" * 16, tags=tags)], 0.02)
    assert index.conn().execute("SELECT DISTINCT model_id FROM tags").fetchall() == [(kept.id,)]
    assert index.conn().execute("SELECT model_id FROM tagged").fetchall() == [(kept.id,)]
    assert index.add_model("next", "/m/next.onnx", "c" * 64, ["x"], "{}", False).id not in (kept.id, gone.id)


def test_a_search_finds_no_file_that_was_never_read_and_nothing_removes_everything(index: Index) -> None:
    """Files pending again keep their last content's tags in a search; a file never read has none to
    match, not even as 'not kick' or 'under this folder'."""
    model = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare"], "{}", False)
    index.set_active(model, True)
    _add(index, "/lib/k.wav", {"kick": 0.9}, model.id)
    _add(index, "/lib/s.wav", {"snare": 0.9}, model.id)
    index.mark_pending([("/lib/new.wav", 0.0), ("/lib/s.wav", 0.0)])  # new; and touched, to be read again
    assert _paths(index, none_of=["kick"]) == ["/lib/s.wav"]
    assert [(f.state, f.tags[0][1]) for f in search(index, Query([["snare"]]))] == [("pending", "snare")]  # as it is
    assert _paths(index, path_prefix="/lib") == ["/lib/k.wav", "/lib/s.wav"]
    for everything in ("", "/"):
        with pytest.raises(ValueError, match="refusing to remove everything"):
            index.remove_paths([everything])
    assert len(list(index.file_tags(["/lib"]))) == 3
    twice = [f.path for f in index.file_tags(["/lib/k.wav", "/lib", "/lib/k.wav", "/gone.wav", "/gone.wav"])]
    assert twice == ["/lib/k.wav", "/lib/new.wav", "/lib/s.wav", "/gone.wav"]  # each once, as a Tag answers


def test_an_index_from_before_inodes_gets_the_column_with_inodes_unknown(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    inode_line = next(line for line in index_module.SCHEMA.splitlines() if line.strip().startswith("inode "))
    with sqlite3.connect(path) as c:
        inode_index = next(line for line in index_module.SCHEMA.splitlines() if "files_inode" in line)
        c.executescript(index_module.SCHEMA.replace(inode_line + "\n", "").replace(inode_index + "\n", ""))
        c.execute("INSERT INTO files(path, dir, size, mtime_ns) VALUES ('/lib/k.wav', '/lib', 10, 20)")
    index = Index(path)
    assert index.files_in_dir("/lib") == {"/lib/k.wav": (10, 20, -1, "pending")}  # -1: size and mtime decide


def test_a_scan_marks_only_what_is_still_new_or_changed_when_it_writes(index: Index) -> None:
    """A scan decides on rows read a moment before; by the time it writes, the watcher may have marked
    the file (a worker reading it must not see its gen bumped) or a worker indexed it as it is."""
    index.mark_pending([("/lib/busy.wav", 0.0)])
    assert len(index.due_jobs(10, set(), 1e12)) == 1  # a worker has it now
    _add(index, "/lib/done.wav", {"kick": 0.9}, index.add_model("m", "/m.onnx", "a" * 64, ["kick"], "{}", False).id)
    gen = {p: g for p, g in index.conn().execute("SELECT path, gen FROM files")}
    marked = index.mark_found(
        [("/lib/busy.wav", 0.0, 5, 5, 5), ("/lib/done.wav", 0.0, 1, 1, 3), ("/lib/new.wav", 0.0, 7, 7, 7)]
    )
    assert marked == 1
    after = {p: (s, g) for p, s, g in index.conn().execute("SELECT path, state, gen FROM files")}
    assert after == {
        "/lib/busy.wav": ("pending", gen["/lib/busy.wav"]),  # the worker's result still counts
        "/lib/done.wav": ("indexed", gen["/lib/done.wav"]),  # indexed as it is now (size 1, mtime 1)
        "/lib/new.wav": ("pending", 1),
    }
    index.set_inodes([(3, "/lib/done.wav")])  # its inode, first known (stored as -1 before)
    assert index.mark_found([("/lib/done.wav", 0.0, 1, 1, 3)]) == 0  # the same file, as indexed
    assert index.mark_found([("/lib/done.wav", 0.0, 1, 1, -1)]) == 0  # an inode not to be compared
    assert index.mark_found([("/lib/done.wav", 0.0, 1, 1, 4)]) == 1  # another file under its name
    assert index.mark_found([("/lib/new.wav", 0.0, 8, 7, 7)]) == 0  # pending already


def test_a_damaged_index_says_so_in_one_line_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(index_module.IndexDamaged, match=r"is damaged .*move it aside"):
        Index(path)
    with pytest.raises(index_module.IndexDamaged, match="cannot open the index"):
        Index(tmp_path / "no such folder" / "index.sqlite")


@pytest.mark.parametrize("walk", [1, 1000])  # 1: every match found and sorted; 1000: walked best first
def test_a_best_first_search_gives_the_surest_matches_first(
    index: Index, monkeypatch: pytest.MonkeyPatch, walk: int
) -> None:
    monkeypatch.setattr(search_module, "RANK_WALK", walk)
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare", "hihat"], "{}", False)
    mood = index.add_model("mood", "/m/mood.onnx", "b" * 64, ["dark", "bright"], "{}", False)
    index.set_active(inst, True)
    index.set_active(mood, True)
    rng = random.Random(11)
    for i in range(240):
        weights = [rng.random() ** 2 for _ in range(3)]
        scores = dict(zip(("kick", "snare", "hihat"), (w / sum(weights) for w in weights), strict=True))
        path = f"/lib/{'ab'[i % 2]}/{i:03d}.wav"
        _add(index, path, scores, inst.id)
        if i % 3 == 0:
            _add(index, path, {"dark": 0.9}, mood.id)
        if i == 4:  # a copy shares its content's scores and is ranked beside it
            _add(index, "/lib/b/copy.wav", scores, inst.id, content=path.encode().ljust(16, b"\0")[:16])

    def surest(limit: int, **kw: Any) -> list[str]:
        """Every match, ranked here by its best score among the first group's tags."""
        lead = set(kw["all_of"][0])
        ranked = sorted((-max(s for _, t, s in f.tags if t in lead), f.path) for f in search(index, Query(**kw)))
        return [path for _, path in ranked[: limit or None]]

    queries: list[dict[str, Any]] = [
        {"all_of": [["kick"]]},
        {"all_of": [["snare", "hihat"]]},
        {"all_of": [["kick"]], "min_score": 0.2},
        {"all_of": [["kick", "hihat"]], "none_of": ["dark"]},
        {"all_of": [["snare"]], "path_prefix": "/lib/a"},
        {"all_of": [["kick", "snare"], ["dark"]]},
    ]
    for kw in queries:
        for limit in (1, 5, 30, 0):  # 0: every match, sorted (best_first was ignored without a limit)
            found = [f.path for f in search(index, Query(**kw, limit=limit, best_first=True))]
            assert found == surest(limit, **kw), (kw, limit)


def test_files_an_older_version_found_silent_are_read_again_once(tmp_path: Path) -> None:
    """Before stop 25 a silent opening was all a file was (no tags at all); decode() now reads on to the
    first sound, so the daemon's start forgets such results once (PRAGMA user_version) and requeue_missing
    reads the files again. Opening the index (any command does) changes nothing."""
    path = tmp_path / "index.sqlite"
    index = Index(path)
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare"], "{}", False)
    index.set_active(inst, True)
    _add(index, "/lib/late-stem.wav", {}, inst.id)  # what a silent opening was stored as
    _add(index, "/lib/kick.wav", {"kick": 0.9}, inst.id)
    index.close()
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA user_version = 0")
    states = lambda ix: {f.path: f.state for f in ix.file_tags(["/lib"])}  # noqa: E731
    reopened = Index(path)
    assert states(reopened) == {"/lib/late-stem.wav": "indexed", "/lib/kick.wav": "indexed"}
    assert reopened.forget_silent_once() == 1 and reopened.requeue_missing([inst.id]) == 1
    assert states(reopened) == {"/lib/late-stem.wav": "pending", "/lib/kick.wav": "indexed"}
    _add(reopened, "/lib/late-stem.wav", {}, inst.id)  # silent still (a sound beyond LOOK_AHEAD_S): it stays so
    assert reopened.forget_silent_once() == 0 and reopened.requeue_missing([inst.id]) == 0
    assert states(reopened) == {"/lib/late-stem.wav": "indexed", "/lib/kick.wav": "indexed"}


def test_folders_left_out_are_left_out_by_every_plan(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    """Query.hidden (the files under a missing watch): the merged AND, the probed AND, a folder, best first
    and the counts all leave them out, and a sibling folder whose name starts alike (`Pack 2`) stays."""

    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare", "hihat"], "{}", False)
    index.set_active(inst, True)
    rng = random.Random(3)
    scores: dict[str, tuple[float, float]] = {}
    for root in ("/old/Pack", "/new/Pack", "/old/Pack 2"):
        for i in range(150):
            kick, snare = rng.random(), rng.random()
            path = f"{root}/{i:03d}.wav"
            _add(index, path, {"kick": kick, "snare": snare, "hihat": 0.01}, inst.id, f"{root}{i}".encode()[-16:])
            scores[path] = (kick, snare)
    hidden = ["/old/Pack"]
    shown = {p: s for p, s in scores.items() if not p.startswith("/old/Pack/")}
    both = sorted(p for p, (k, s) in shown.items() if min(k, s) >= 0.5)

    def found(q: Query) -> list[str]:
        return sorted(f.path for f in search(index, q))

    assert found(Query([["kick"], ["snare"]], hidden=hidden)) == both  # merged posting lists
    assert found(Query([["kick"], ["snare"]], path_prefix="/old", hidden=hidden)) == [
        p for p in both if p.startswith("/old/")
    ]
    best = [f.path for f in search(index, Query([["kick"]], hidden=hidden, limit=20, best_first=True))]
    assert best and all(p in shown for p in best)
    kicks = sum(1 for p, (k, s) in shown.items() if k > s or k >= 0.5)  # its best tag, and any from 0.5, is a hit
    assert dict((t, n) for _, t, n in index.tag_counts("", hidden))["kick"] == kicks
    monkeypatch.setattr(search_module, "MERGE_MAX_RATIO", 0)  # the probed plan
    assert found(Query([["kick"], ["snare"]], hidden=hidden)) == both


def test_files_a_caller_waits_for_go_ahead_of_a_retag_and_unchanged_ones_are_left(tmp_path: Path) -> None:
    """A Tag of one new sample waited behind a re-tag of the whole library (due 0 both, ties by row id), and
    every file it named was queued again, read or not, as it is now or not."""
    index = Index(tmp_path / "index.sqlite")
    read = tmp_path / "read.wav"
    read.write_bytes(b"R" * 100)
    index.mark_pending([(str(read), 0.0)])
    (job,) = index.due_jobs(10, set(), 1e12)
    st = os.stat(read)
    index.write_results([Result(job, size=st.st_size, mtime_ns=changed_at(st), inode=st.st_ino, hash=b"r" * 16)], 0.02)
    backlog = [f"/lib/{i:05d}.wav" for i in range(3000)]
    index.mark_pending((p, 0.0) for p in backlog)  # as a new model's re-tag leaves them
    asked = [("/new/one.wav", -1, -1), (backlog[-1], -1, -1), (str(read), st.st_size, changed_at(st))]
    assert index.mark_asked(asked) == {"/new/one.wav"}
    first = [j.path for j in index.due_jobs(8, set(), time.time())]
    assert set(first[:2]) == {"/new/one.wav", backlog[-1]} and str(read) not in first
    assert [f.state for f in index.file_tags([str(read)])] == ["indexed"]  # read as it is now: left as it was
    read.write_bytes(b"changed, and longer")
    st = os.stat(read)
    index.mark_asked([(str(read), st.st_size, changed_at(st))])
    assert [f.state for f in index.file_tags([str(read)])] == ["pending"]
    (job,) = [j for j in index.due_jobs(10, set(), time.time()) if j.path == str(read)]
    index.write_results([Result(job, size=st.st_size, mtime_ns=changed_at(st), error="unsupported codec")], 0.02)
    index.mark_asked([(str(read), st.st_size, changed_at(st))])  # failed, unchanged: asked for, read again
    assert [f.state for f in index.file_tags([str(read)])] == ["pending"]
    index.close()


def test_contents_no_file_has_are_forgotten_with_their_tags_unless_one_has_them_again(
    library: tuple[Index, int, int],
) -> None:
    """Deleted and rewritten files left their contents and tags in the index for good (a library that churns
    renders grew it, and every tag's posting list, without end). Those no file has had for a while go."""
    index, inst_id, mood_id = library
    k1 = b"/lib/drums/k1.wav".ljust(16, b"\0")[:16]
    h1 = b"/lib/other/h1.wav".ljust(16, b"\0")[:16]
    s1 = b"/lib/drums/s1.wav".ljust(16, b"\0")[:16]
    index.note_unused(100.0)
    assert len(index.forget_unused(1e12, 10)) == 0  # every content is some file's
    assert index.remove_paths(["/lib/drums/k1.wav", "/lib/other/h1.wav"]) == ["/lib/drums/k1.wav", "/lib/other/h1.wav"]
    index.note_unused(200.0)
    assert len(index.forget_unused(150.0, 10)) == 0  # not unused for long enough
    assert index.models_done(k1) == {inst_id, mood_id}  # kept: it may come back
    _add(index, "/lib/moved/h1.wav", {"hihat": 0.95}, inst_id, content=h1)  # it came back, by a delete and a create
    index.remove_paths(["/lib/moved/h1.wav"])  # and went again before the next look: unused from now, not from 200
    index.note_unused(250.0)
    assert index.forget_unused(240.0, 10) == [k1] and index.models_done(h1) == {inst_id}  # k1's only
    _add(index, "/lib/moved/h1.wav", {"hihat": 0.95}, inst_id, content=h1)
    index.remove_paths(["/lib/drums/s1.wav"])
    index.note_unused(300.0)  # s1's from now; h1's no longer
    assert len(index.forget_unused(260.0, 10)) == 0
    assert index.models_done(k1) == set() and index.models_done(h1) == {inst_id}
    assert index.models_done(s1) == {inst_id, mood_id}
    assert index.forget_unused(1e12, 10) == [s1] and index.models_done(s1) == set()
    rows = index.conn().execute("SELECT count(*) FROM tags t JOIN contents c ON c.id = t.content_id").fetchone()[0]
    assert rows == index.conn().execute("SELECT count(*) FROM tags").fetchone()[0]  # no tag of a forgotten one
    assert _paths(index, all_of=[["hihat"]]) == ["/lib/moved/h1.wav"]
    assert _paths(index, all_of=[["kick"]]) == ["/lib/drums/k2.wav"]


def test_an_index_from_before_contents_were_forgotten_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE contents (id INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE)")
    c.execute("INSERT INTO contents(hash) VALUES (x'00')")
    c.commit()
    c.close()
    index = Index(path)
    index.note_unused(5.0)
    assert index.forget_unused(10.0, 10) == [b"\x00"]


def test_a_new_version_serves_at_once_where_there_is_no_file_to_tag(index: Index) -> None:
    """A home that only trains (no watch, no daemon): `models list` said the version before stood in for the new
    one until it had tagged a library there is none of, for good."""
    index.add_model("mood", "/m/mood1.onnx", "a" * 64, ["dark"], "{}", False, active=True)
    index.add_model("mood", "/m/mood2.onnx", "b" * 64, ["dark", "murky"], "{}", False, active=True)
    assert [m.ref for m in index.serving_models()] == ["mood@2"]


def test_a_models_guess_for_silence_stored_by_an_older_release_is_read_again(index: Index, tmp_path: Path) -> None:
    """An older release stored a silent file with the model's guess for silence (kick 0.24), found by `vibrary
    search kick` after an upgrade, though the file is stored with no tags now: such files are read again once."""
    from vibrary.daemon.service import silence_guess
    from vibrary.daemon.spectrogram import SpectrogramParams

    from tests.synth import band_model

    path = band_model(tmp_path / "bands.onnx")
    row = index.add_model("bands", str(path), "c" * 64, ["low", "mid", "high"], SpectrogramParams().to_json(), False)
    guessed = silence_guess(row)
    assert guessed is not None
    tag, score = guessed
    other = next(t for t in ("low", "mid", "high") if t != tag)
    _add(index, "/lib/silent.wav", {tag: score, other: score / 2}, row.id)
    _add(index, "/lib/tone.wav", {other: 0.9, tag: score}, row.id)  # the same score, not its best: a sound
    assert index.requeue_missing([row.id]) == 0
    assert index.forget_unheard_once(silence_guess) == 1
    assert index.requeue_missing([row.id]) == 1 and _pending(index) == {"/lib/silent.wav"}
    assert index.forget_unheard_once(silence_guess) == 0  # once


def _pending(index: Index) -> set[str]:
    return {job.path for job in index.due_jobs(100_000, set(), 1e12)}


def test_a_column_added_to_an_older_index_comes_with_its_fill_or_not_at_all(tmp_path: Path) -> None:
    """`models.activated` was added, then filled in a statement of its own: a crash between the two (a kill, a
    power cut) left every version's activation unknown for good, and `activate NAME` turned on the newest."""
    c = sqlite3.connect(tmp_path / "old.sqlite", isolation_level=None)
    c.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, active INTEGER, installed REAL)")
    c.execute("INSERT INTO models VALUES (1, 1, 5.0)")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # the fill fails as a crash would cut it
        index_module._add_column(c, "models", "activated REAL NOT NULL DEFAULT 0", "UPDATE gone SET x = 1")
    assert "activated" not in {row[1] for row in c.execute("PRAGMA table_info(models)")}  # so the next open fills it
    fill = "UPDATE models SET activated = installed WHERE active"
    assert index_module._add_column(c, "models", "activated REAL NOT NULL DEFAULT 0", fill)
    assert c.execute("SELECT activated FROM models").fetchall() == [(5.0,)]


def test_files_under_a_watch_folder_not_there_are_parked_until_it_is_back(index: Index) -> None:
    """A drive of 400,000 files unplugged as a model re-tagged the library was walked past at every round of the
    feeder (45 ms a round, against 0.1). Parked, they are due no more, neither retrying nor due later (which status
    and the idle feeder ask), and are due at once when their folder is back; one due later is not parked yet."""
    index.mark_pending([("/drive/a.wav", 0.0), ("/drive/b.wav", 0.0), ("/lib/k.wav", 0.0), ("/drive/later.wav", 50.0)])
    assert index.park(["/drive"], now=10.0) == 2
    assert [j.path for j in index.due_jobs(10, set(), 100.0)] == ["/lib/k.wav", "/drive/later.wav"]
    assert [(f.state, f.error) for f in index.file_tags(["/drive/a.wav"])] == [("pending", None)]
    assert index.retrying() == (0, "") and index.park(["/drive"], now=10.0) == 0  # written once
    assert not index.any_pending(["/drive"], due_after=100.0) and index.due_count(20.0) == 1
    assert index.retry_now("/drive") == 2  # back
    assert {j.path for j in index.due_jobs(10, set(), 100.0)} == {
        "/drive/a.wav",
        "/drive/b.wav",
        "/drive/later.wav",
        "/lib/k.wav",
    }


@pytest.mark.parametrize("words", [[["kick"]], [["kick"], ["snare"]]], ids=["one tag", "merged AND"])
def test_a_search_read_slowly_holds_no_snapshot_a_checkpoint_must_wait_for(
    tmp_path: Path, words: list[list[str]]
) -> None:
    index = Index(tmp_path / "index.sqlite")
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare", "hihat"], "{}", False)
    index.set_active(inst, True)
    for i in range(450):  # three pages of 200
        _add(index, f"/lib/{i:03d}.wav", {"kick": 0.6, "snare": 0.55, "hihat": 0.01}, inst.id)
    ids = [[search_module._lookup_tag(index, w) or 0] for w in ("kick", "snare")]
    assert len(words) < 2 or search_module._postings_to_merge(index, ids, [inst.id]) is not None  # the merge plan
    writer = Index(tmp_path / "index.sqlite")  # the daemon's writer: a connection of its own
    writer.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    results = search(index, Query(all_of=words))
    first = next(results)  # a client that read one result and waits (a plugin's first screen)
    _add(writer, "/lib/new.wav", {"kick": 0.9}, inst.id)  # the daemon writes on meanwhile
    busy, frames, copied = writer.conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, copied) == (0, frames) and frames > 0  # every frame back in the database: the WAL can restart
    found = [first.path, *(f.path for f in results)]
    assert len(found) == len(set(found)) and set(found) - {"/lib/new.wav"} == {f"/lib/{i:03d}.wav" for i in range(450)}


def test_of_two_tags_scored_alike_the_one_that_hit_is_listed_first(index: Index) -> None:
    """Front ends tell a model's best tag by its place (the proto's tags carry no hit): of a tie, the one listed
    first must be the one searches find the file by."""
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["snare", "kick"], "{}", False)
    index.set_active(inst, True)
    _add(index, "/lib/s.wav", {"snare": 0.9}, inst.id)  # snare first in the vocabulary
    _add(index, "/lib/tie.wav", {"kick": 0.4, "snare": 0.4}, inst.id)  # kick ranked first: the hit
    assert _paths(index, all_of=[["kick"]]) == ["/lib/tie.wav"]
    assert _paths(index, all_of=[["snare"]]) == ["/lib/s.wav"]
    (found,) = search(index, Query(all_of=[["kick"]]))
    assert [tag for _, tag, _ in found.tags] == ["kick", "snare"]


def test_a_connection_opened_read_only_is_opened_anew_for_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite opens a database read-only while its file cannot be written (a restore tool's moment of other
    permissions), and the connection stays so once it can be: the thread that opened it then (the watcher's)
    failed every write until a restart, and new samples were never indexed."""
    index = Index(tmp_path / "index.sqlite")
    index.close()
    connect = sqlite3.connect

    def read_only_once(path: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        monkeypatch.setattr(index_module.sqlite3, "connect", connect)
        return connect(f"file:{path}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(index_module.sqlite3, "connect", read_only_once)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        index.add_watch("/lib")
    index.add_watch("/lib")  # the file writable again: written
    assert index.watches() == ["/lib"]


def test_an_index_to_mend_opens_while_its_home_is_read_only_and_is_mended_once_it_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index an upgrade left with its active version never 'activated' is mended when opened; a home
    read-only meanwhile (a backup's moment, `chmod a-w`) failed to open at all: `models list` failed."""
    path = tmp_path / "index.sqlite"
    with contextlib.closing(Index(path)) as index:
        index.add_model("inst", "/m.onnx", "a" * 64, ["kick"], "{}", False, active=True)
        with index.write() as c:
            c.execute("UPDATE models SET activated = 0")
    connect = sqlite3.connect
    monkeypatch.setattr(
        index_module.sqlite3, "connect", lambda p, *a, **k: connect(f"file:{p}?mode=ro", *a, uri=True, **k)
    )
    with contextlib.closing(Index(path)) as read_only:
        assert read_only.model("inst", 1).activated == 0.0  # left as it was
    monkeypatch.setattr(index_module.sqlite3, "connect", connect)
    with contextlib.closing(Index(path)) as writable:
        assert writable.model("inst", 1).activated > 0


def test_a_search_past_its_first_page_keeps_its_limit_and_finds_each_file_once(index: Index) -> None:
    """The first page is read on its own (it comes at once), the rest after it: each file once, the limit kept."""
    inst = index.add_model("inst", "/m/inst.onnx", "a" * 64, ["kick", "snare"], "{}", False)
    index.set_active(inst, True)
    for i in range(30):
        _add(index, f"/lib/{i:03d}.wav", {"kick": 0.9}, inst.id)
    for limit in (0, 4, 10, 11, 29, 30, 31):
        found = [f.path for f in search(index, Query(all_of=[["kick"]], limit=limit), page=10)]
        assert len(found) == len(set(found)) == min(limit or 30, 30), (limit, found)
    results = search(index, Query(all_of=[["kick"]]), page=10)
    first = next(results)
    index.remove_paths([first.path])  # deleted and written again as the client reads: another row, another id
    _add(index, first.path, {"kick": 0.9}, inst.id)
    found = [first.path, *(f.path for f in results)]
    assert len(found) == len(set(found)) == 30
    results = search(index, Query(all_of=[["kick"]], limit=15), page=10)
    first = next(results)
    index.remove_paths([first.path])
    _add(index, first.path, {"kick": 0.9}, inst.id)
    found = [first.path, *(f.path for f in results)]
    assert len(found) == len(set(found)) == 15  # (the limit kept: 14 came)
