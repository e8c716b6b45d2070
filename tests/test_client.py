"""The Python client library as a script author uses it, against a real daemon over its real socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from vibrary.clients.client import (
    BadArgument,
    Client,
    ClientClosed,
    DaemonError,
    DaemonNotAnswering,
    DaemonNotRunning,
    VibraryError,
)
from vibrary.clients.query import QueryError, parse_query
from vibrary.proto import daemon_pb2 as pb
from vibrary.proto import daemon_pb2_grpc as pb_grpc

from tests.conftest import DaemonProcess, home_held, suspend, wait_for
from tests.synth import BANDS, band_model, write_tone


def _tagged(daemon: DaemonProcess, tmp_path: Path) -> dict[str, str]:
    """One file per band, tagged: {band: path}."""
    paths = {band: str(write_tone(tmp_path / "lib" / f"{band}.wav", freq)) for band, freq in BANDS.items()}
    list(daemon.client.tag(list(paths.values())))
    return paths


def test_a_search_read_slowly_is_not_cut_off_by_the_calls_timeout(daemon: DaemonProcess, tmp_path: Path) -> None:
    """The client's timeout covered a whole stream: a script doing a second's work per result lost the
    rest of its search (DEADLINE_EXCEEDED) after 30 s, whatever the daemon did."""
    paths = _tagged(daemon, tmp_path)
    # the daemon's answer has 3 s (it runs at a low priority, beside another test's training), the reading 3.6
    with Client(home_dir=daemon.home, timeout=3.0) as c:
        read = []
        for f in c.search([["low", "mid", "high"]]):
            time.sleep(1.2)
            read.append(f.path)
        assert sorted(read) == sorted(paths.values())
        assert len(list(c.tags(str(tmp_path / "lib")))) == 3  # one folder, given as a string
        assert len(list(c.tags(tmp_path / "lib"))) == 3  # or as a Path


@contextlib.contextmanager
def _serving(servicer: pb_grpc.DaemonServicer) -> Iterator[str]:
    """A gRPC server of the daemon's service that behaves as `servicer` says (a hung daemon, a slow one)."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_DaemonServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


class _Hung(pb_grpc.DaemonServicer):
    """A daemon that sends the first result of a search and then nothing, as a hung one does."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def _one_then_nothing(self, request: object, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        yield pb.FileTags(path="/first.wav")
        self.release.wait(60)

    Search = GetTags = _one_then_nothing


def test_a_result_stream_from_a_daemon_that_hangs_ends_after_the_clients_timeout() -> None:
    """A search from a script waited for ever on a daemon that had stopped answering (a stream had no
    deadline, so that a slow reader keeps its results): waiting for the next result is what is timed."""
    hung = _Hung()
    with _serving(hung) as target, Client(target, timeout=1.0) as c:
        try:
            for call in (lambda: c.search("kick"), lambda: c.tags("/x")):
                started = time.monotonic()
                read: list[str] = []
                with pytest.raises(DaemonError) as stalled:
                    for f in call():
                        time.sleep(1.5)  # the reader's own time is not the daemon's silence
                        read.append(f.path)
                assert stalled.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "sent nothing" in str(stalled.value)
                assert read == ["/first.wav"] and time.monotonic() - started < 30
        finally:
            hung.release.set()


class _SlowToStart(pb_grpc.DaemonServicer):
    """A daemon whose first result takes longer than the client's timeout (a search of a large library)."""

    def Search(self, request: object, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        time.sleep(1.5)
        yield pb.FileTags(path="/first.wav")


def test_a_result_stream_given_a_deadline_or_a_client_without_timeout_is_not_cut_by_its_silence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's silence was timed against the client's timeout even when the search was given a
    longer deadline of its own (cut after 1 s of the 10 asked for), and a Client(timeout=None) had its
    watching thread die of a TypeError on every stream. A close() in another thread between the open
    check and the call raised grpc's ValueError, not ClientClosed."""
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with _serving(_SlowToStart()) as target:
        with Client(target, timeout=1.0) as c:
            assert [f.path for f in c.search("kick", timeout=10)] == ["/first.wav"]
        with Client(target, timeout=10) as c, pytest.raises(DaemonError) as late:
            list(c.search("kick", timeout=1.0))  # a deadline when asked for: the daemon's answer takes 1.5 s
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with Client(target, timeout=None) as c:
            assert [f.path for f in c.search("kick")] == ["/first.wav"]
        c = Client(target)
        check_open = c._check_open

        def closed_by_another_thread_after_the_check() -> None:
            check_open()
            c.close()

        monkeypatch.setattr(c, "_check_open", closed_by_another_thread_after_the_check)
        with pytest.raises(ClientClosed):
            list(c.search("kick"))
    assert died == []


def test_searches_as_people_type_them_and_tags_as_strings(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A bare string searched its letters (`search(["kick"])` asked for k OR i OR c OR k), and the CLI's
    query grammar was the CLI's own."""
    paths = _tagged(daemon, tmp_path)
    c = daemon.client
    assert [f.path for f in c.search(["low"])] == [paths["low"]]
    assert {f.path for f in c.search("low|high -high")} == {paths["low"]}
    assert {f.path for f in c.search("mid OR high", none_of="high")} == {paths["mid"]}
    assert [f.path for f in c.tags(paths["mid"])] == [paths["mid"]]
    # min_score 0, set, is every stored score (a slider at its bottom); unset, the hits only
    assert {f.path for f in c.search("high", min_score=0)} > {f.path for f in c.search("high")} == {paths["high"]}
    raw = c.stub.Search(pb.SearchRequest(all_of=[pb.AnyOf(tags=["high"])], min_score=0.0))
    assert len(list(raw)) > 1
    with pytest.raises(grpc.RpcError, match="an empty group in all_of: give each AnyOf a tag"):  # ("empty tag")
        list(c.stub.Search(pb.SearchRequest(all_of=[pb.AnyOf(tags=["high"]), pb.AnyOf()])))
    with pytest.raises(QueryError, match="OR needs a tag on each side"):
        c.search("low OR")
    assert issubclass(QueryError, VibraryError)  # one except clause for everything the library raises
    assert parse_query("Snare OR clap dark") == ([["snare", "clap"], ["dark"]], [])
    # quoted for the shell twice (`'"snare"'`), or by a front end: the quotes were searched for as a tag
    assert parse_query(['"snare"', "'-dark'", '""']) == ([["snare"]], ["dark"])
    assert parse_query(['"snare"|"clap"', '-"dark"', "NOT", "'soft'"]) == ([["snare", "clap"]], ["dark", "soft"])


def test_tag_and_get_tags_answer_each_path_as_asked(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers come in no set order, to be matched by path (the proto): they carried the path as the index spells
    it, so a path asked through a link (`~/Samples` on another drive), with `..` or relative matched none."""
    paths = _tagged(daemon, tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "lib")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    c = daemon.client
    asked = [str(tmp_path / "link" / "low.wav"), str(tmp_path / "other" / ".." / "lib" / "mid.wav")]
    for raw in (c.stub.Tag(pb.TagRequest(paths=asked)), c.stub.GetTags(pb.GetTagsRequest(paths=asked))):
        assert sorted(f.path for f in raw) == sorted(asked)
    for answered in (c.tag, c.tags):  # the client sends a relative path joined to the current folder
        assert sorted(f.path for f in answered(["lib/high.wav", tmp_path / "link"])) == sorted(  # (once each)
            [paths["high"], str(tmp_path / "link" / "low.wav"), str(tmp_path / "link" / "mid.wav")]
        )
    assert sorted(f.path for f in c.search("low|mid")) == sorted([paths["low"], paths["mid"]])  # as indexed


def test_unquoted_words_that_spell_a_searched_models_tag_are_that_tag(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A dataset's folder `Low End/` names the tag "low end": `search("low end")` asked for low AND end (the CLI
    joined them); words are joined only into a tag of the models the search reads."""
    paths = _tagged(daemon, tmp_path)
    spaced = band_model(tmp_path / "spaced.onnx", name="spaced", classes=("low end", "middle", "top"))
    c = daemon.client
    c.install_model(str(spaced))
    wait_for(lambda: c.status().pending == 0 and [f.path for f in c.search([["low end"]])] == [paths["low"]])
    assert [f.path for f in c.search("low end")] == [paths["low"]]
    c.install_model(str(band_model(tmp_path / "off.onnx", name="off", classes=("low high", "b", "c"))), inactive=True)
    both = {f.path for f in c.search([["low"], ["high"]], min_score=0)}  # every stored score: a file has all three
    assert both and {f.path for f in c.search("low high", min_score=0)} == both  # not the inactive model's tag


def test_what_the_client_refuses_is_a_bad_argument_before_anything_is_sent(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`add_watch("")` watched the calling program's current folder (abspath of ""), and protobuf's own range
    checks raised its ValueError, not the library's; suggest() read a lone path letter by letter."""
    c = daemon.client
    monkeypatch.chdir(tmp_path)
    for call in (lambda: c.add_watch(""), lambda: list(c.tag([""])), lambda: c.suggest(["", str(tmp_path)])):
        with pytest.raises(BadArgument, match="empty path"):
            call()
    assert c.watches() == []
    with pytest.raises(BadArgument, match=r"^limit=1099511627776 is out of range: a 32-bit integer$"):
        list(c.search("low", limit=2**40))  # (protobuf's "Value out of range: 1099511627776" named no argument)
    with pytest.raises(BadArgument, match=r"^limit=2147483648 is out of range"):
        c.failed(limit=2**31)
    with pytest.raises(BadArgument, match="empty path"):  # ("cannot read : Is a directory": the current folder)
        c.install_model("")
    for given in (lambda: c.add_watch(b"/x"), lambda: c.tags(b"/x"), lambda: c.suggest(b"/x")):
        with pytest.raises(TypeError, match="a path as str, not bytes"):  # (some took them, some said "not int")
            given()
    for pairs in ("hh", [("a", "b", "c")], ["ab"], [1, 2]):  # ("not enough values to unpack", as a BadArgument)
        with pytest.raises(TypeError, match=r"give \(alias, tag\) pairs"):
            c.add_synonyms(pairs)
    assert {s.alias for s in c.add_synonyms((a, "kick") for a in ("thud", "boomz"))} >= {"thud", "boomz"}  # (once)
    with pytest.raises(TypeError, match=r"give \(old, new\) pairs"):
        c.edit_dataset("d", rename=[("a",)])
    with pytest.raises(BadArgument, match="an empty group"):  # (the daemon's "empty tag" named none)
        list(c.search([["low"], []]))
    with pytest.raises(BadArgument):
        c.deactivate("bands", 2**31)
    write_tone(tmp_path / "kit" / "Kicks" / "kick_01.wav", 60)
    assert [s.tag for s in c.suggest(str(tmp_path / "kit")).files] == ["kick"]


def test_models_are_named_as_status_names_them(daemon: DaemonProcess) -> None:
    """status() and events name a model NAME@VERSION; handing that back to activate() was refused."""
    (ref,) = daemon.client.status().models
    assert not any(m.active for m in daemon.client.deactivate(ref))
    assert [m.version for m in daemon.client.activate(ref) if m.active] == [int(ref.partition("@")[2])]
    for bad in ("bands@0", "bands@", "bands@²"):  # an empty variable in a script must not mean the newest
        with pytest.raises(BadArgument, match="versions count from 1"):
            daemon.client.activate(bad)
        with pytest.raises(BadArgument, match="versions count from 1"):  # (counts: a DaemonError)
            daemon.client.counts(bad)
    assert list(daemon.client.search("low", model=ref)) == [] and daemon.client.counts(ref) == []  # not refused
    with pytest.raises(DaemonError, match="bands@2 is not the active version of bands"):
        list(daemon.client.search("low", model="bands@2"))
    daemon.client.deactivate("bands")  # its advice, filter by the name, found nothing either
    with pytest.raises(DaemonError, match="model bands is not active: no version of it tags the library") as off:
        list(daemon.client.search("low", model=ref))
    assert off.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_closing_the_client_ends_a_stream_read_elsewhere_and_later_calls_say_so(daemon: DaemonProcess) -> None:
    """close() during events() in another thread raised CANCELLED there, though closing is how the stream
    is meant to end; a call after close() was a bare ValueError from grpc."""
    c = Client(home_dir=daemon.home)
    ended: list[object] = []
    heard = threading.Event()

    def follow() -> None:
        try:
            for _ in c.events():
                heard.set()
            ended.append("done")
        except Exception as e:
            ended.append(e)

    follower = threading.Thread(target=follow)
    follower.start()
    assert heard.wait(10)  # the status snapshot that starts every stream
    c.close()
    follower.join(10)
    assert ended == ["done"]
    with pytest.raises(ClientClosed):
        c.status()
    with pytest.raises(ClientClosed):
        next(iter(c.search(["low"])))
    assert issubclass(ClientClosed, VibraryError) and issubclass(DaemonError, VibraryError)


def test_a_result_stream_cut_short_by_close_is_no_complete_answer(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Closing the client while another thread waits for tag() must not hand that thread an empty list
    as if the files had no results; only events(), which never ends by itself, ends quietly."""
    many = [str(write_tone(tmp_path / "many" / f"{i}.wav", 200.0 + i, seconds=0.05)) for i in range(2000)]
    c = Client(home_dir=daemon.home)
    got: list[object] = []

    def tag() -> None:
        try:
            got.append(len(list(c.tag(many))))
        except Exception as e:
            got.append(e)

    worker = threading.Thread(target=tag)
    worker.start()
    time.sleep(0.3)
    c.close()
    worker.join(30)
    assert len(got) == 1 and isinstance(got[0], ClientClosed), got


def test_a_search_comes_in_pages_with_the_files_a_file_at_a_time_would_bring(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A message a file cost most of a big search's time (24,000 files: 5 s of 6): SearchPages brings the
    same files in the same order, 256 a page, and the client reads them so."""
    paths = [str(write_tone(tmp_path / f"{i:03d}.wav", 60.0 + i, seconds=0.05)) for i in range(300)]
    list(daemon.client.tag(paths))
    request = pb.SearchRequest(path_prefix=str(tmp_path))
    one_by_one = list(daemon.client.stub.Search(request))
    pages = list(daemon.client.stub.SearchPages(request))
    assert [len(p.files) for p in pages] == [256, 44]
    assert [f for p in pages for f in p.files] == one_by_one and len(one_by_one) == 300
    assert [f.path for f in daemon.client.search([], under=str(tmp_path))] == [f.path for f in one_by_one]


def test_streams_left_half_read_leave_no_thread_behind_once_closed(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A result stream's watch of its silence is a thread: one left half read kept it, waking every second,
    after close() and until the garbage collector came by."""

    def watching() -> int:
        return sum(t.name == "stream-watch" for t in threading.enumerate())

    list(daemon.client.tag([str(write_tone(tmp_path / f"{i}.wav", BANDS["low"] * (1 + i / 100))) for i in range(3)]))
    before = watching()
    c = Client(home_dir=daemon.home)
    kept = [c.search("low") for _ in range(5)]
    for stream in kept:
        next(stream)
    assert watching() == before + 5
    c.close()
    assert wait_for(lambda: watching() == before, timeout=10)


def test_looking_for_a_daemon_creates_no_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client() made $VIBRARY_HOME (and its parents) only to find nobody there."""
    nowhere = tmp_path / "not" / "yet"
    monkeypatch.setenv("VIBRARY_HOME", str(nowhere))
    with Client() as c:
        assert not c.is_running()
        with pytest.raises(DaemonNotRunning, match="vibrary daemon"):
            c.status()
    assert not (tmp_path / "not").exists()
    (tmp_path / "a file").write_text("")  # a home that is a file: NotADirectoryError, no VibraryError
    with Client(home_dir=tmp_path / "a file") as c, pytest.raises(DaemonNotRunning, match="vibrary daemon"):
        c.status()
    with Client("127.0.0.1:9", timeout=2) as remote, pytest.raises(DaemonNotRunning) as e:  # the discard port
        remote.status()
    assert "vibrary daemon" not in str(e.value)  # starting a local daemon is no answer for another machine


def test_suggestions_for_a_large_library_come_back_whole(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A library's suggestions are one reply, and gRPC's default 4 MB limit refused it (40,000 files
    gave 7.5 MB): 1,100 files under a deep folder, 4.5 MB of paths alone, come back."""
    deep = tmp_path.joinpath(*[f"Vendor Pack {i:02d} - " + "x" * 200 for i in range(17)], "Kicks")
    template = write_tone(tmp_path / "t.wav", 60.0, seconds=0.05).read_bytes()
    deep.mkdir(parents=True)
    for i in range(1100):
        (deep / f"Kick {i:04d}.wav").write_bytes(template)
    found = daemon.client.suggest([str(tmp_path / deep.relative_to(tmp_path).parts[0])])
    assert len(found.files) == 1100 and {f.tag for f in found.files} == {"kick"}
    assert found.ByteSize() > 4 << 20


def test_dataset_paths_are_kept_as_given_through_a_link(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A dataset holds its files' absolute paths as given, links and all; the client resolved links on the
    way, so a relabel by the very path the dataset holds was "not in dataset" (macOS's /tmp is a link)."""
    import os

    from vibrary.daemon import dataset

    from tests.synth import write_kinds

    write_kinds(tmp_path / "real" / "ex", per_kind=3, seed=3)
    os.symlink(tmp_path / "real", tmp_path / "link")
    dataset.build(daemon.home, "mine", dataset.examples_from_folders([str(tmp_path / "link" / "ex")]), workers=1)
    held = sorted(p for p, _ in dataset.labelled_files(daemon.home, "mine"))
    assert held[0].startswith(str(tmp_path / "link"))
    edited = daemon.client.edit_dataset("mine", relabel=[(held[0], "thump")])
    assert sum(k.clips for k in edited.classes) == len(held)
    dropped = daemon.client.edit_dataset("mine", drop="thump")  # one tag: it was the tags t, h, u, m and p
    assert "thump" not in {k.tag for k in dropped.classes}


def test_a_suspended_daemon_is_said_to_be_suspended_not_absent(daemon: DaemonProcess) -> None:
    """A daemon stopped with ^Z or SIGSTOP holds its home: "no daemon answers … start it with `vibrary
    daemon`" sent the user to start one, which would not start."""
    import signal

    from vibrary.daemon import config, pidlock

    pid = pidlock.holder(config.lock_path(daemon.home))
    assert pid is not None
    suspend(pid)
    try:
        for ask in ("status", "search", "tags"):  # a search said "the daemon sent nothing of Search for 2 s"
            with Client(home_dir=daemon.home, timeout=2) as c, pytest.raises(DaemonError) as e:
                c.status() if ask == "status" else list(c.search("low") if ask == "search" else c.tags("/"))
            assert f"the daemon (pid {pid}) is suspended: `kill -CONT {pid}` resumes it" in str(e.value), ask
        with Client(home_dir=daemon.home) as c:
            assert not c.is_running()  # a question of yes or no: it raised
    finally:
        os.kill(pid, signal.SIGCONT)
    assert daemon.client.status(timeout=10).home == str(daemon.home)


def test_a_daemon_that_holds_the_home_and_does_not_answer_is_not_said_absent(tmp_path: Path) -> None:
    """A daemon starting (its models loading), hung or swamped holds its home: "no daemon answers … start it"
    sent the user to start a second one, which is refused while the first holds the home."""
    from vibrary.daemon import config

    with home_held(tmp_path) as pid, Client(home_dir=tmp_path, timeout=2) as c:
        with pytest.raises(DaemonNotAnswering) as e:
            c.status()
        said = str(e.value)
        assert said.startswith(f"the daemon (pid {pid}) does not answer at {config.socket_path(tmp_path)}")
        assert "starting, busy or hung" in said and f"`kill {pid}`" in said
    with Client(home_dir=tmp_path, timeout=2) as c, pytest.raises(DaemonNotRunning, match="start it with") as gone:
        c.status()  # (nobody holds it now)
    assert not isinstance(gone.value, DaemonNotAnswering)


def test_a_front_end_installs_and_removes_models_and_synonyms_over_the_api_alone(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A front end on another machine can neither run the CLI there nor reach its files: the model goes as
    bytes, and is checked, installed, activated and removed as `vibrary models` would."""
    moods = band_model(tmp_path / "mine.onnx", name="moods", classes=("dark", "warm", "bright"))
    installed = daemon.client.install_model(str(moods))
    assert [(m.name, m.version, m.active) for m in installed if m.name == "moods"] == [("moods", 1, True)]
    low = str(write_tone(tmp_path / "lib" / "low.wav", BANDS["low"]))
    (tagged,) = daemon.client.tag(low)
    assert {(t.model, t.tag) for t in tagged.tags if t.score > 0.5} == {("bands", "low"), ("moods", "dark")}
    again = daemon.client.install_model(str(moods), inactive=True)  # the same file: the version it is
    assert [(m.version, m.active) for m in again if m.name == "moods"] == [(1, True)]

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(DaemonError, match="the model sent: not a loadable ONNX model") as refused:
        daemon.client.install_model(str(junk))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "upload" not in str(refused.value)
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as f:
        f.truncate(65 << 20)  # gRPC's own refusal ("Received message larger than max") named neither file nor way
    too_big = r"huge.onnx is 68,157,440 bytes, more than the 67,104,768 .* `vibrary models install`"
    with pytest.raises(BadArgument, match=too_big):
        daemon.client.install_model(str(huge))
    with pytest.raises(DaemonError, match="built in") as builtin:
        daemon.client.remove_model("demo")
    assert builtin.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "moods" not in {m.name for m in daemon.client.remove_model("moods@1")}
    assert not list((daemon.home / "models").glob("moods/*.onnx"))  # its file went with it
    assert not list((daemon.home / "models").glob(".upload-*"))  # nor were the uploads left behind
    (retagged,) = daemon.client.tag(low)  # (tagged again by the models active now)
    assert {t.model for t in retagged.tags} == {"bands"}

    daemon.client.add_synonyms([("thwack", "snare")])
    left = {s.alias for s in daemon.client.remove_synonyms(["thwack", "bd"])}
    assert "thwack" not in left and "bd" not in left and "kck" in left
    with pytest.raises(DaemonError, match="no alias 'nope'") as unknown:
        daemon.client.remove_synonyms(["nope", "kck"])
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND and "kck" in {s.alias for s in daemon.client.synonyms()}
    with pytest.raises(DaemonError, match="is the tag 'snare' itself") as itself:  # added, listed, never removable
        daemon.client.add_synonyms([("Snares", "snare")])
    assert itself.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Snares" not in {s.alias for s in daemon.client.synonyms()}
    with pytest.raises(DaemonError, match="'kick' is a tag of its own") as own:  # every kick suggested a snare
        daemon.client.add_synonyms([("kick", "snare")])
    assert own.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_named_pipe_or_a_name_not_utf8_in_a_folder_is_said_not_fatal(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Suggestions for a folder holding a named pipe read it, and waited for a writer for ever (each call
    held a server thread: 64 of them froze the daemon); a name that is not UTF-8 failed the whole call with
    UNKNOWN. A Tag of a folder whose only file had such a name answered nothing, and said nothing."""
    kicks = tmp_path / "Kicks"
    write_tone(kicks / "Kick 01.wav", 60.0, seconds=0.3)
    os.mkfifo(kicks / "Kick 02.wav")
    odd = os.path.join(os.fsencode(tmp_path), b"Odd")
    os.makedirs(odd)
    (Path(os.fsdecode(odd)) / "kick.wav").write_bytes((kicks / "Kick 01.wav").read_bytes())
    os.rename(os.path.join(odd, b"kick.wav"), os.path.join(odd, b"Caf\xe9 kick.wav"))
    found = daemon.client.suggest([str(kicks), os.fsdecode(odd)], timeout=20)
    assert sorted(f.path for f in found.files) == [str(kicks / "Kick 01.wav"), str(kicks / "Kick 02.wav")]
    assert (list(found.unnamed_files), found.unnamed_count) == ([str(tmp_path / "Odd" / "Caf\\xe9 kick.wav")], 1)
    (told,) = daemon.client.tag([os.fsdecode(odd)], timeout=20)
    assert (told.path, told.state) == (str(tmp_path / "Odd" / "Caf\\xe9 kick.wav"), "failed")
    assert "not valid UTF-8" in told.error


def test_a_client_refuses_a_timeout_it_cannot_keep_and_takes_a_home_or_an_alias_as_written(
    daemon: DaemonProcess,
) -> None:
    """`Client(timeout=0)` failed every call with DEADLINE_EXCEEDED, as if the daemon were slow;
    `home_dir` as a str was a TypeError; `remove_synonyms("hh")` asked to remove "h", twice."""
    for timeout in (0, -1.0, float("nan")):
        with pytest.raises(BadArgument, match="timeout must be a number of seconds above 0"):
            Client(home_dir=daemon.home, timeout=timeout)
    with Client(home_dir=str(daemon.home)) as c:
        assert "bands@1" in c.status().models
        assert "hh" not in {s.alias for s in c.remove_synonyms("hh")}
        for timeout in (0, -1.0):  # a call's own: DEADLINE_EXCEEDED, as of a slow daemon, or the client's at 0
            with pytest.raises(BadArgument, match="timeout must be a number of seconds above 0"):
                list(c.tag(str(daemon.home), timeout=timeout))
            with pytest.raises(BadArgument, match="timeout must be a number of seconds above 0"):
                c.suggest(str(daemon.home), timeout=timeout)


def test_a_home_given_with_a_tilde_is_the_users_as_vibrary_home_takes_it(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VIBRARY_HOME=~/x found the daemon; Client(home_dir="~/x") looked for ./~/x/daemon.sock, and said none ran."""
    monkeypatch.setenv("HOME", str(daemon.home.parent))
    with Client(home_dir=f"~/{daemon.home.name}") as c:
        assert c.status().home == str(daemon.home)


def test_a_search_word_that_is_no_text_is_a_bad_argument_when_asked(daemon: DaemonProcess) -> None:
    """A word of a name's undecodable bytes (surrogateescape) raised a bare UnicodeEncodeError as the results
    were read, past the promise that everything the client raises is a VibraryError."""
    from vibrary.clients.client import BadArgument

    for query in ("\udce9", ["\udce9"]):
        with pytest.raises(BadArgument, match="not valid UTF-8"):
            daemon.client.search(query)


def test_the_tags_of_a_folder_name_its_files_whose_names_are_not_utf8(daemon: DaemonProcess, tmp_path: Path) -> None:
    """The index cannot hold such a name: GetTags of its folder answered its other files and said nothing of
    it, where a Tag of the folder and the status said it."""
    lib = tmp_path / "lib"
    write_tone(lib / "low.wav", BANDS["low"])
    raw = os.path.join(os.fsencode(lib), b"Caf\xe9 flute.wav")
    shutil.copy(os.fsencode(lib / "low.wav"), raw)
    daemon.client.add_watch(str(lib))
    wait_for(lambda: daemon.client.status().indexed == 1)
    answers = {f.path: (f.state, f.error) for f in daemon.client.tags([str(lib)])}
    assert answers == {
        str(lib / "low.wav"): ("indexed", ""),
        str(lib / "Caf\\xe9 flute.wav"): (
            "failed",
            "left out: its name is not valid UTF-8 (rename the file to tag it)",
        ),
    }
    assert [f.path for f in daemon.client.tags([str(lib / "low.wav")])] == [str(lib / "low.wav")]  # (a file: itself)


def test_a_start_refused_for_a_daemon_running_is_no_reason_given_once_that_one_is_gone(tmp_path: Path) -> None:
    """A second `vibrary daemon` refused, then the first killed: "its last start failed: a daemon is already
    running" was said of a home where none ran, without the advice to start one."""
    from vibrary.clients.client import _last_start_failed

    log = tmp_path / "daemon.log"
    refused = "ERROR vibrary.daemon: not started: a daemon is already running for /home (pid 7)"
    log.write_text(f"2026-12-07 01:00:00,000 {refused}\n")
    assert _last_start_failed(tmp_path) == ""
    log.write_text("2026-12-07 01:00:00,000 ERROR vibrary.daemon: not started: config.json: bad value\n")
    assert _last_start_failed(tmp_path) == "config.json: bad value"
