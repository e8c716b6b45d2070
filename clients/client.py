"""A small Python client for the daemon's gRPC API; the CLI is built on it, scripts can use it too.

from vibrary.clients.client import Client
with Client() as c:              # the daemon of $VIBRARY_HOME, over its Unix socket
    c.add_watch("/samples")
    for f in c.search("kick -acoustic", limit=20, best_first=True):   # as `vibrary search` reads it
        print(f.path, f.tags[0].tag)

Everything it raises is a VibraryError: DaemonNotRunning (nobody answers; DaemonNotAnswering when a daemon holds
the home all the same: starting or hung; DaemonCannotStart where none can: a read-only disk), DaemonError (the
daemon refused or could not finish; `.code` is gRPC's status code), ClientClosed, or BadArgument (QueryError for a
query that makes no sense) before anything is sent; an argument of the wrong type (a str for a number, bytes for
a path) is Python's TypeError, as the annotations say. Replies are the protobuf messages of
proto/vibrary/v1/daemon.proto. A stream of results (search, tags) has no deadline unless given one: it lasts as
long as the caller takes to read it; but, given none, a daemon that sends nothing of it for the client's `timeout`
(a hung or stopped machine) ends it with DaemonError DEADLINE_EXCEEDED.

Files just copied into a watch folder: `tag(paths)` answers once they are tagged (status() says nothing of
them until the watcher has seen them, a moment later), or follow `events()`; `from vibrary.proto import
daemon_pb2 as pb` names the messages and their enums (pb.Event.FILE_TAGGED), and `grpc.StatusCode` a
DaemonError's code. Type checkers see the package's annotations (it ships py.typed) where it is installed
with `pip install .`: an editable install's import hook is one they cannot follow.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import grpc
from vibrary.daemon import config
from vibrary.daemon.folders import indexed_path
from vibrary.daemon.index import ANY_STORED_SCORE
from vibrary.daemon.modelref import parse_ref
from vibrary.daemon.rpc import REQUEST_MAX, check_token, keepalive
from vibrary.proto import daemon_pb2 as pb
from vibrary.proto import daemon_pb2_grpc as pb_grpc

from .errors import BadArgument, VibraryError
from .query import QueryError, joined_as, parse_query, respell

__all__ = [
    "BadArgument",
    "Client",
    "ClientClosed",
    "DaemonCannotStart",
    "DaemonError",
    "DaemonNotAnswering",
    "DaemonNotRunning",
    "QueryError",  # (named above: it had to be found in vibrary.clients.query)
    "VibraryError",
]


class DaemonNotRunning(VibraryError, ConnectionError):
    """No daemon answers at the target: not started, stopped, or listening elsewhere."""


class DaemonCannotStart(DaemonNotRunning):
    """No daemon answers, and none can start in that home (its disk is read-only): no use waiting for one."""


class DaemonNotAnswering(DaemonNotRunning):
    """A daemon holds the home but does not answer yet (starting) or at all (hung): starting another is no
    remedy, it would be refused."""


class DaemonError(VibraryError, RuntimeError):
    """The daemon refused the call or could not finish it in time; str() is its reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise BadArgument(f"timeout must be a number of seconds above 0 (None: no limit), not {timeout!r}")


class ClientClosed(VibraryError, RuntimeError):
    """A call on a client after its close() (a stream it returned included)."""


Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]  # one path, or several
REPLY_MAX = 1 << 30
KEEPALIVE_MS = (30_000, 20_000)


def _suspended(pid: int) -> str:
    return f"the daemon (pid {pid}) is suspended: `kill -CONT {pid}` resumes it"


class Client:
    def __init__(
        self,
        target: str = "",
        token: str = "",
        timeout: float | None = 30.0,
        home_dir: Path | str | None = None,
        keepalive_ms: tuple[int, int] = KEEPALIVE_MS,
    ) -> None:
        """target: "" for the Unix socket of home_dir ($VIBRARY_HOME by default), or HOST:PORT of a daemon
        started with --listen (which then requires `token`). `timeout`: seconds a call may take, streams
        of results excepted; a stream ends (DaemonError UNAVAILABLE, saying why where it can: a daemon
        suspended) once a ping after `keepalive_ms[0]` of silence is not answered within `keepalive_ms[1]` (a
        daemon suspended, hung, or across a network gone)."""
        _check_timeout(timeout)  # 0 failed every call at once with DEADLINE_EXCEEDED
        if not target:  # looking for a daemon must not create a home (`~/…` as VIBRARY_HOME takes it)
            target = config.unix_target(config.socket_path(Path(home_dir or config.home(create=False)).expanduser()))
        self.target = target
        self.timeout = timeout
        try:
            self._metadata = (("authorization", f"Bearer {check_token(token)}"),) if token else ()
        except ValueError as e:
            raise BadArgument(str(e)) from None
        # paths name files of the daemon's machine: one over TCP resolves them itself (a relative path, a
        # link, macOS's /tmp → /private/tmp resolved here named another file there, or none)
        self._local = target.startswith("unix:")
        # a library's suggestions come as one reply (7.5 MB for 40,000 files): gRPC's 4 MB refused them
        options = [("grpc.max_receive_message_length", REPLY_MAX), *keepalive(*keepalive_ms)]
        self._channel = grpc.insecure_channel(target, options=options)
        self._closed = False
        self.stub = pb_grpc.DaemonStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. A stream being read in another thread (events()) ends, as if done."""
        self._closed = True
        self._channel.close()

    def _call(self, method: str, request: object, timeout: float | None = None) -> Any:
        self._check_open()
        _check_timeout(timeout)  # (a call's own 0 fell back to the client's, -1 was a slow daemon's error)
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._translate(e) from None
        except ValueError:  # grpc's word for a channel closed under the call
            self._check_open()
            raise

    def _stream(
        self, method: str, request: object, timeout: float | None = None, endless: bool = False, idle: bool = False
    ) -> Iterator:
        """`endless`: a stream that ends only when closed (events), so close() is its normal end; any
        other stream cut short by close() raises ClientClosed: its caller must not take a part for all.
        `idle`: a stream whose messages keep coming while the daemon works (results): given no deadline,
        waiting longer than the client's timeout for the next one ends it, as a hung daemon would otherwise
        hang the caller; given one, that is the bound (a search known to be slow to start is given one)."""
        self._check_open()  # when the caller starts reading: streams are lazy
        _check_timeout(timeout)
        quiet: _Quiet | None = None
        try:  # a close() in another thread since the check: the call raises ValueError
            call = getattr(self.stub, method)(request, timeout=timeout, metadata=self._metadata)
            if idle and timeout is None and self.timeout:  # a deadline given is the caller's own bound
                quiet = _Quiet(call, self.timeout)
            yield from call if quiet is None else quiet.messages()
        except grpc.RpcError as e:
            if quiet is not None and quiet.fired:
                pid, stopped = self._holder()
                if stopped:  # (as status() says it: "sent nothing" sent people waiting)
                    raise DaemonError(grpc.StatusCode.DEADLINE_EXCEEDED, _suspended(pid)) from None
                raise DaemonError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"the daemon sent nothing of {method} for {self.timeout:g} s"
                ) from None
            if self._closed and e.code() == grpc.StatusCode.CANCELLED:
                if endless:
                    return
                raise ClientClosed(f"the client was closed before {method} was done") from None
            raise self._translate(e) from None
        except ValueError:
            self._check_open()
            raise
        finally:
            if quiet is not None:
                quiet.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"this client of {self.target} is closed: make a new one")

    def _translate(self, e: grpc.RpcError) -> VibraryError:
        if self._closed:  # close() from another thread cut the call: "Channel closed!" read as the daemon's
            return ClientClosed(f"this client of {self.target} was closed during the call")
        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        details = e.details() if hasattr(e, "details") else str(e)
        unanswered = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        pid, stopped = self._holder() if unanswered else (0, False)
        if stopped:  # "start it" was wrong: one runs, and a second would not start
            return DaemonError(code, _suspended(pid))
        if code == grpc.StatusCode.UNAVAILABLE:
            if not self.target.startswith("unix:"):
                return DaemonNotRunning(f"no daemon answers at {self.target} ({details})")
            if pid:  # "start it" was wrong here too: a second daemon is refused while this one holds the home
                return DaemonNotAnswering(
                    f"the daemon (pid {pid}) does not answer at {self._socket()}: it is starting, busy or hung; "
                    f"wait a moment, or stop it (`kill {pid}`) and start it again with `vibrary daemon`"
                )
            if trouble := config.disk_trouble(home := os.path.dirname(self._socket())):  # where none can start
                said = f"no daemon answers at {self._socket()}, and none can start there: {trouble}"
                return DaemonCannotStart(said) if config.read_only(home) else DaemonNotRunning(said)
            if failed := _last_start_failed(Path(self._socket()).parent):  # ("start it" of one that cannot start)
                return DaemonNotRunning(
                    f"no daemon answers at {self._socket()}; its last start failed ({failed}): once that is mended,"
                    " start it with `vibrary daemon`"
                )
            return DaemonNotRunning(f"no daemon answers at {self._socket()}; start it with `vibrary daemon`")
        return DaemonError(code, details or code.name)

    def _socket(self) -> str:
        return urllib.parse.unquote(self.target.removeprefix("unix:"))  # the socket's path, not its URI

    def _holder(self) -> tuple[int, bool]:
        """The pid of the live process that holds this home (0: none), and whether it is suspended (SIGSTOP, a
        ^Z in its terminal): either way it answers nothing, and no other daemon starts there."""
        if not self._local:
            return 0, False
        import psutil  # (here: the lock is fcntl's, and a client on Windows reaches a daemon over TCP only)
        from vibrary.daemon import pidlock

        try:  # (a home that is a file, or cannot be read: NotADirectoryError was all a caller got)
            pid = pidlock.holder(config.lock_path(Path(self._socket()).parent))
            status = psutil.Process(pid).status() if pid else psutil.STATUS_DEAD
        except (psutil.Error, OSError):
            return 0, False
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # one dying, its lock not yet let go: none holds it
            return 0, False
        return pid or 0, status == psutil.STATUS_STOPPED

    def _path(self, path: str | os.PathLike[str], indexed: bool = True) -> str:
        """A path as the index spells it (absolute, links to folders resolved), or as a dataset does (absolute
        only: `indexed` False), when the daemon shares this machine; as given when it is reached over TCP.
        An empty one is refused: abspath made it the current folder, and `add_watch("")` watched wherever
        the calling program stood."""
        path = _text_path(path)
        if not self._local:
            return path
        return indexed_path(path) if indexed else os.path.abspath(path)

    def _paths(self, paths: Paths, indexed: bool = True) -> list[str]:
        """One path alone, or several."""
        if isinstance(paths, bytes):  # (iterated, its bytes were numbers: "not int")
            _text_path(paths)
        return [self._path(p, indexed) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]

    # -- calls ---------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """Whether a daemon answers there, within 2 s; one that refuses this client's token runs all the same.
        One suspended or hung answers nothing: False (a question of yes or no raised for it)."""
        try:
            self.status(timeout=2.0)
        except DaemonNotRunning:
            return False
        except DaemonError as e:
            if e.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                return False
            if e.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
        return True

    def status(self, timeout: float | None = None) -> pb.Status:
        """Counts of files indexed, pending and failed, the active models, the queue and what needs the
        producer's attention (missing or unwatched watch folders, a stalled index); `vibrary status` shows it."""
        return self._call("GetStatus", pb.GetStatusRequest(), timeout)

    def add_watch(self, folder: str) -> list[str]:
        """Watch a folder and index what it holds; the watch folders then. DaemonError NOT_FOUND for a folder
        not there, INVALID_ARGUMENT for a file or a system folder (/, /proc), FAILED_PRECONDITION for a folder
        never indexed (a trash folder). A folder already
        watched, or inside a watch folder, is no error."""
        return list(self._call("AddWatch", pb.WatchRequest(path=self._path(folder))).paths)

    def remove_watch(self, folder: str) -> list[str]:
        """Stop watching a folder; its files that no other watch folder holds leave the index and searches.
        The watch folders then; DaemonError NOT_FOUND when it was none."""
        return list(self._call("RemoveWatch", pb.WatchRequest(path=self._path(folder))).paths)

    def watches(self) -> list[str]:
        """The watch folders (watch_list() says which are not there now)."""
        return list(self.watch_list().paths)

    def watch_list(self) -> pb.WatchList:
        """The watch folders, and which of them are not there now (`missing`)."""
        return self._call("ListWatches", pb.ListWatchesRequest())

    def search(
        self,
        all_of: str | Sequence[str | Sequence[str]] = (),
        none_of: Sequence[str] = (),
        min_score: float | None = None,
        under: str = "",
        model: str = "",
        limit: int = 0,
        best_first: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.FileTags]:
        """Files whose tags match, streamed. `all_of`: a query as people type it (`"kick -acoustic
        snare|clap"`, QueryError when it makes no sense), or groups that must all match, each a tag or a
        list of alternatives (`[["snare", "clap"], "dark"]`). `none_of`: tags no result has. `min_score`:
        None counts the tags that hit (a model's best tag, or a score of at least 0.5), a score counts every
        stored score from it up (0: all). `under`: a folder. `model`: one model's tags (NAME,
        or NAME@VERSION of its active version).
        `limit` 0: every match; in the index's order unless `best_first` (the surest first by the first
        group's tags, which costs more: `vibrary search --limit` asks for it). Tags as the models spell them:
        the synonym table (hh → hihat), which `vibrary search` reads too, is the caller's to apply
        (`synonyms()` lists it); unquoted words that spell a searched model's tag with spaces (`lead synth`,
        from a dataset's folder `Lead Synth/`) are that tag, as `vibrary search` reads them (the models are
        asked for then, as the results are read)."""
        if model:
            _model_ref(model, 0)  # (BadArgument: `x@0` raised a bare ValueError as the results were read)
        if isinstance(all_of, str):
            groups, excluded = parse_query(all_of)  # a query that makes no sense is said before anything is asked
        else:
            groups, excluded = [[g] if isinstance(g, str) else list(g) for g in all_of], []
            if any(not g for g in groups):  # (the daemon's "empty tag in query" named no tag)
                raise BadArgument("an empty group of alternatives in the query: give each group a tag")
        for word in (w for g in groups for w in g):  # (sent as the results are read: UnicodeEncodeError then)
            word.encode()
        request = pb.SearchRequest(
            none_of=[*([none_of] if isinstance(none_of, str) else none_of)],
            # (None: unset) a daemon from before the field was optional reads 0 as unset: the least score above it
            min_score=ANY_STORED_SCORE if min_score == 0 else min_score,
            path_prefix=self._path(under) if under else "",
            model=model,
            limit=limit,
            best_first=best_first,
        )

        def pages() -> Iterator[pb.FileTags]:
            nonlocal groups, excluded
            if isinstance(all_of, str):  # words of a tag however its model joins them, a plural (kicks: kick)
                known = self._tags_of(model, timeout)
                groups, excluded, _ = respell(*parse_query(all_of, joined_as(known)), known, None)
            request.all_of.extend(pb.AnyOf(tags=g) for g in groups)
            request.none_of[:0] = excluded
            yield from self._search_pages(request, timeout)

        return pages()

    def _tags_of(self, model: str, timeout: float | None) -> set[str]:
        """The tags of the models a search reads (active, or standing in; `model`'s alone, of either of its
        versions the daemon may read)."""
        try:
            name = parse_ref(model)[0] if model else ""
        except ValueError:  # (a name no model can have: the daemon refuses the search, saying why)
            name = model
        try:
            models = self._call("ListModels", pb.ListModelsRequest(), timeout).models
        except DaemonError as e:  # a daemon that lists no models (before ListModels): the words as they are
            if e.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return set()
        return {t for m in models if (m.active or m.serving) and name in ("", m.name) for t in m.classes}

    def _search_pages(self, request: pb.SearchRequest, timeout: float | None) -> Iterator[pb.FileTags]:
        """Search's files as SearchPages brings them (a message a file took 5 s of 24,000 files' 6), or from
        Search where a daemon from before SearchPages answers."""
        try:
            for page in self._stream("SearchPages", request, timeout, idle=True):
                yield from page.files
        except DaemonError as e:
            if e.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            yield from self._stream("Search", request, timeout, idle=True)

    def tags(self, paths: Paths, timeout: float | None = None) -> Iterator[pb.FileTags]:
        """What the index holds for these files, or for every file under these folders (one stream). Sent
        unresolved: the daemon resolves links as the index spells paths, and says when one led out of the watches;
        answers carry the paths as sent (absolute: a relative one joined to the current folder), a file under a
        folder joined to it."""
        return self._stream("GetTags", pb.GetTagsRequest(paths=self._paths(paths, indexed=False)), timeout, idle=True)

    def counts(self, model: str = "") -> list[pb.TagCount]:
        """How many files hit each tag, of every active model or of `model` (NAME or NAME@VERSION)."""
        if model:
            _model_ref(model, 0)  # (BadArgument, as search's: `x@0` came back a DaemonError)
        return list(self._call("CountTags", pb.CountTagsRequest(model=model)).counts)

    def tag(self, paths: Paths, timeout: float = 600.0) -> Iterator[pb.FileTags]:
        """Tag these files (and the files under these folders) first, inside watches or not, and stream
        their results once all are done; when they take longer than timeout, those done (streamed a little
        before it), then DaemonError DEADLINE_EXCEEDED (FAILED_PRECONDITION: indexing was paused meanwhile).
        Answers carry the paths as tags() does."""
        return self._stream("Tag", pb.TagRequest(paths=self._paths(paths, indexed=False)), timeout)

    def events(self) -> Iterator[pb.Event]:
        """The daemon's events as they happen (a status snapshot first), until close() or until the
        daemon stops (the stream ends) or dies (DaemonNotRunning): follow it again after a restart. One
        suspended (SIGSTOP) ends it too, once its keepalive goes unanswered (DaemonError: it says how to resume it).
        A daemon follows 32 such streams at once: the next is a DaemonError RESOURCE_EXHAUSTED (share one)."""
        return self._stream("Events", pb.EventsRequest(), endless=True)

    def models(self) -> list[pb.Model]:
        """Every installed model version, active or not, with its classes and spectrogram parameters."""
        return list(self._call("ListModels", pb.ListModelsRequest()).models)

    def activate(self, name: str, version: int = 0) -> list[pb.Model]:
        """Activate NAME's version active last (its newest, when none was), or NAME@VERSION (`version`, or in the
        name as status() has it)."""
        return list(self._call("ActivateModel", _model_ref(name, version)).models)

    def deactivate(self, name: str, version: int = 0) -> list[pb.Model]:
        """Deactivate NAME's active version, or NAME@VERSION."""
        return list(self._call("DeactivateModel", _model_ref(name, version)).models)

    def install_model(self, path: str, name: str = "", inactive: bool = False) -> list[pb.Model]:
        """Send an ONNX file (read here: the daemon may run on another machine) to be installed as a new
        version of `name` (its metadata's name when empty) and activated, unless `inactive`."""
        try:
            data = Path(_text_path(path)).read_bytes()  # ("" read the current folder: "Is a directory")
        except OSError as e:
            raise BadArgument(f"cannot read {path}: {e.strerror}") from None
        most = REQUEST_MAX - 4096  # (the name and gRPC's framing): gRPC's own refusal named no file
        if len(data) > most:
            raise BadArgument(
                f"{path} is {len(data):,} bytes, more than the {most:,} a model sent to the daemon may be: on the "
                "daemon's machine, `vibrary models install` takes it from its disk"
            )
        request = pb.InstallModelRequest(onnx=data, name=name, inactive=inactive)
        return list(self._call("InstallModel", request).models)

    def remove_model(self, name: str, version: int = 0) -> list[pb.Model]:
        """Remove NAME's newest version, or NAME@VERSION; if it was active, the version active before it is
        activated (the newest left when none was)."""
        return list(self._call("RemoveModel", _model_ref(name, version)).models)

    def pause(self) -> pb.Status:
        """Stop reading files (a DAW session wants the CPU): changes are still noted, and read on resume().
        Searches go on. The status then."""
        return self._call("Pause", pb.PauseRequest())

    def resume(self) -> pb.Status:
        """Read files again after pause(); the status then."""
        return self._call("Resume", pb.PauseRequest())

    def failed(self, limit: int = 0) -> list[pb.FileTags]:
        """The files that most recently failed, newest first (limit 0: the daemon's default, 50)."""
        return list(self._stream("ListFailed", pb.ListFailedRequest(limit=limit), self.timeout))

    # -- your own tags -------------------------------------------------------------------------------
    def suggest(self, paths: Paths, timeout: float = 600.0) -> pb.Suggestions:
        """Tags proposed for these files (and those under these folders) from their names, folders and
        embedded metadata, for the producer to confirm before create_dataset(); nothing is stored."""
        return self._call("SuggestLabels", pb.SuggestRequest(paths=self._paths(paths)), timeout)

    def synonyms(self) -> list[pb.Synonym]:
        """The synonym table (alias → tag: built-in ones and the user's), as `vibrary search` applies it."""
        return list(self._call("ListSynonyms", pb.ListSynonymsRequest()).synonyms)

    def add_synonyms(self, pairs: Sequence[tuple[str, str]]) -> list[pb.Synonym]:
        """Add these (alias, tag) pairs to the user's table; the table as it is then."""
        request = pb.Synonyms(synonyms=[pb.Synonym(alias=a, tag=t) for a, t in _pairs(pairs, "(alias, tag)")])
        return list(self._call("AddSynonyms", request).synonyms)

    def remove_synonyms(self, aliases: str | Sequence[str]) -> list[pb.Synonym]:
        """Take these aliases out (built-in ones too); the table as it is then. One alias may be given as is
        (`remove_synonyms("hh")` asked for "h", then "h" again)."""
        each = [aliases] if isinstance(aliases, str) else aliases
        request = pb.Synonyms(synonyms=[pb.Synonym(alias=a) for a in each])
        return list(self._call("RemoveSynonyms", request).synonyms)

    def create_dataset(
        self,
        name: str,
        files: Sequence[tuple[str, str]],
        timeout: float | None = None,
        add: bool = False,
        restore: bool = False,
        replace: bool = False,
    ) -> Iterator[pb.DatasetProgress]:
        """Progress messages; the last one carries the dataset (and, with `add`, how many clips joined it).
        `restore` (with `add`): files and tags that edits removed join again. A dataset `name` that exists is
        built anew only with `replace` (DaemonError ALREADY_EXISTS otherwise)."""
        labelled = [pb.LabelledFile(path=self._path(p, indexed=False), tag=t) for p, t in _pairs(files, "(path, tag)")]
        request = pb.CreateDatasetRequest(name=name, files=labelled, add=add, restore=restore, replace=replace)
        return self._stream("CreateDataset", request, timeout)

    def edit_dataset(
        self,
        name: str,
        rename: Sequence[tuple[str, str]] = (),
        drop: Sequence[str] = (),
        relabel: Sequence[tuple[str, str]] = (),
    ) -> pb.Dataset:
        """Rename tags (OLD, NEW pairs), drop tags, relabel files (PATH, TAG pairs). A tag alone is one
        tag to drop (`drop="hat"` dropped the tags h, a and t)."""
        request = pb.EditDatasetRequest(
            name=name,
            rename=[pb.EditDatasetRequest.Rename(tag=a, to=b) for a, b in _pairs(rename, "(old, new)")],
            drop=[drop] if isinstance(drop, str) else list(drop),
            relabel=[
                pb.LabelledFile(path=self._path(p, indexed=False), tag=t) for p, t in _pairs(relabel, "(path, tag)")
            ],
        )
        return self._call("EditDataset", request)

    def dataset(self, name: str) -> pb.Dataset:
        """One dataset: its tags and how many clips each has. DaemonError NOT_FOUND when there is none."""
        return self._call("GetDataset", pb.DatasetRef(name=name))

    def datasets(self) -> list[pb.Dataset]:
        """Every dataset, as dataset() describes each."""
        return list(self._call("ListDatasets", pb.ListDatasetsRequest()).datasets)

    def delete_dataset(self, name: str) -> list[pb.Dataset]:
        """Delete a dataset's spectrograms and labels (the audio files are never touched); the datasets left.
        Refused (DaemonError) while a training reads it."""
        return list(self._call("DeleteDataset", pb.DatasetRef(name=name)).datasets)

    def train(
        self,
        dataset: str,
        name: str = "",
        trainer: str = "",
        base: str = "",
        options: str | Mapping[str, Any] = "{}",
        token: str = "",
        confirm_cost: bool = False,
        timeout: float | None = None,
    ) -> Iterator[pb.TrainProgress]:
        """Progress until the job ends; leaving early does not stop the training (cancel_training does).
        `options`: a mapping (`{"epochs": 40, "seed": 1}`) or its JSON text; the names are the fields of
        `vibrary.trainer.options.TrainConfig` (importable without torch), and an unknown one is refused."""
        request = pb.TrainRequest(
            dataset=dataset,
            name=name,
            trainer=trainer,
            base=base,
            options=options if isinstance(options, str) else json.dumps(dict(options)),
            token=token,
            confirm_cost=confirm_cost,
        )
        return self._stream("Train", request, timeout)

    def cancel_training(self) -> pb.TrainProgress:
        """Stop the training that runs (on the trainer too); its progress then. No model is installed."""
        return self._call("CancelTraining", pb.CancelTrainingRequest())


class _Quiet:
    """Cancels a streaming call once it has waited on the daemon for more than `idle` seconds at a time;
    the time its caller spends between reads does not count. One thread a stream, not a timer a message:
    a search may stream a million results."""

    def __init__(self, call: Any, idle: float) -> None:
        self.call, self.idle = call, idle
        self.fired = False
        self._since: float | None = None  # when the wait for the next message began; None: not waiting
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="stream-watch", daemon=True).start()

    def messages(self) -> Iterator[Any]:
        for_next = iter(self.call)
        while True:
            self._since = time.monotonic()
            try:
                message = next(for_next)
            except StopIteration:
                return
            finally:
                self._since = None
            yield message

    def _watch(self) -> None:
        while not self._done.wait(min(self.idle / 4, 1.0)):
            if self.call.done():  # cancelled by close(), a stream left half read: its thread lived on till collected
                return
            now = time.monotonic()  # before reading `since`: a wait begun after `now` is never counted as long
            since = self._since
            if since is not None and now - since > self.idle:
                self.fired = True
                self.call.cancel()
                return

    def stop(self) -> None:
        self._done.set()


def _last_start_failed(home_dir: Path) -> str:
    """Why the home's last daemon would not start (a damaged index, a bad config.json), when its log ends with
    that ("" else): "start it with `vibrary daemon`" was said of a daemon that could not start, again."""
    try:
        with open(config.log_path(home_dir), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            last = f.read().decode(errors="replace").rstrip("\n").rpartition("\n")[2]
    except OSError:
        return ""
    failed = last.partition(" vibrary.daemon: not started: ")[2]
    return "" if "is already running for" in failed else failed  # (a second one refused says nothing of the first)


def _text_path(path: str | os.PathLike[str]) -> str:
    """A path as text: an empty one is refused (abspath made it the current folder, and `add_watch("")` watched
    wherever the calling program stood); bytes are a TypeError, as the module says (some calls took them, others
    failed on "not int")."""
    if isinstance(path, bytes) or isinstance(named := os.fspath(path), bytes):
        raise TypeError(f"a path as str, not bytes: {path!r} (os.fsdecode() makes one)")
    if not named:
        raise BadArgument("an empty path: name a file or folder")
    return named


def _pairs(pairs: Sequence[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    """Pairs as given, each checked: `add_synonyms("hh")` was refused as "not enough values to unpack"."""
    given = pairs if isinstance(pairs, str) else list(pairs)  # (a generator, read once)
    if isinstance(given, str) or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in given):
        raise TypeError(f"give {what} pairs, as a list of 2-tuples: {given!r}")
    return [(a, b) for a, b in given]


def _model_ref(name: str, version: int) -> pb.ModelRef:
    """NAME@VERSION as status() and events name models, or NAME and a version apart, read as the CLI reads
    it (`NAME@0` and `NAME@`, an empty variable in a script, must not mean the newest)."""
    if "@" not in name:
        return pb.ModelRef(name=name, version=version)
    if version:
        raise BadArgument(f"model {name!r} and version {version}: give the version once")
    try:
        named, number = parse_ref(name)
    except ValueError as e:
        raise BadArgument(str(e)) from None
    return pb.ModelRef(name=named, version=number)


def _out_of_range(said: str, method: Callable[..., Any], args: Any, kwargs: Any) -> str:
    """protobuf's "Value out of range: 2147483648", with the argument it was (`limit`) named."""
    if not said.startswith("Value out of range"):
        return said
    given = inspect.signature(method).bind(*args, **kwargs).arguments
    named = [k for k, v in given.items() if type(v) is int and said.endswith(f": {v}")]
    return f"{named[0]}={given[named[0]]} is out of range: a 32-bit integer" if named else said


P = ParamSpec("P")
R = TypeVar("R")


def _refusing_bad_values(method: Callable[P, R]) -> Callable[P, R]:
    """protobuf's own checks (a limit past 2**32, a token it cannot send) raised its ValueError, which the
    module's promise, "everything it raises is a VibraryError", did not cover."""

    @functools.wraps(method)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except VibraryError:
            raise
        except UnicodeEncodeError as e:  # a path from an old archive: its bytes are no UTF-8 to send
            name = e.object if isinstance(e.object, str) else ""
            raise BadArgument(f"{os.fsencode(name)!r} is not valid UTF-8: rename it to use it here") from None
        except ValueError as e:  # a TypeError stays one: a call with the wrong arguments is the program's bug
            raise BadArgument(_out_of_range(str(e), method, args, kwargs)) from None

    return checked


for _name, _method in list(vars(Client).items()):
    if callable(_method) and not _name.startswith("_"):
        setattr(Client, _name, _refusing_bad_values(_method))
