"""The daemon's gRPC API on a user-only Unix socket, and on TCP only when asked (then only with a token).

Health and reflection are served too, so `grpcurl -unix daemon.sock list` works with no proto files.
Malformed requests get INVALID_ARGUMENT with the reason; streams stop as soon as the caller goes away or
its deadline passes.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import tempfile
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from vibrary.proto import daemon_pb2 as pb
from vibrary.proto import daemon_pb2_grpc as pb_grpc

from . import config, dataset, events, registry, suggest, training
from .decode import IN_JUNK, in_junk_folder, why_not_read
from .folders import UNNAMED, as_asked, indexed_path, readable_name, storable
from .index import ANY_STORED_SCORE, NOT_INDEXED, WATCH_GONE, FileTags, ModelRow, within
from .infer import ModelError
from .modelref import parse_ref
from .rpc import bind, make_server, unbindable
from .search import Query, search
from .service import FOLLOW_WAIT_S, UNNAMED_SHOWN, Daemon, NoModel, Paused, TooManyFiles, TrainingBusy

log = logging.getLogger(__name__)
_Request = TypeVar("_Request", bound=Message)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Daemon"].full_name
_EVENT_KINDS = {
    events.FILE_TAGGED: pb.Event.FILE_TAGGED,
    events.FILE_FAILED: pb.Event.FILE_FAILED,
    events.FILE_REMOVED: pb.Event.FILE_REMOVED,
    events.MODEL_CHANGED: pb.Event.MODEL_CHANGED,
    events.STATUS_CHANGED: pb.Event.STATUS_CHANGED,
    events.TRAINING_PROGRESS: pb.Event.TRAINING_PROGRESS,
    events.TRAINING_FINISHED: pb.Event.TRAINING_FINISHED,
    events.MODEL_INSTALLED: pb.Event.MODEL_INSTALLED,
    events.EVENTS_LOST: pb.Event.EVENTS_LOST,
}
_FAILED_DEFAULT_LIMIT = 50
PAGE_FILES, PAGE_BYTES = 256, 1 << 20  # a SearchPages page, far under gRPC's 4 MB a message
_NAME_FIELDS = ("name", "dataset")
# (it read as false beside a `vibrary train` running in another terminal, which the daemon knows nothing of)
NO_TRAINING = "the daemon runs no training (a `vibrary train` in a terminal runs its own: Ctrl-C there cancels it)"


def _composed(request: _Request) -> _Request:
    """The request with its model and dataset names as composed characters (NFC), as the CLI and the
    registry keep them: a front end on macOS passes names from file names decomposed, and got NOT_FOUND for
    an installed model, or a second dataset beside the one of the same name."""
    for field in _NAME_FIELDS:
        if field in request.DESCRIPTOR.fields_by_name:
            setattr(request, field, unicodedata.normalize("NFC", getattr(request, field)))
    return request


def file_tags_pb(f: FileTags) -> pb.FileTags:
    return pb.FileTags(
        path=f.path,
        state=f.state,
        error=f.error or "",
        tags=[pb.Tag(model=m, tag=t, score=s, unfamiliar=m in f.unfamiliar) for m, t, s in f.tags],
    )


def why_not_indexed(path: str, asked: str, watches: list[str], unwritable: str = "") -> str:
    """Why a path that is there has nothing in the index: `vibrary tags` said "not in the index" alike of a
    file outside every watch, a PDF, macOS's `._` files and a link to a folder elsewhere. `asked`: the path as
    given, `path` where its links lead; `unwritable`: why the watcher cannot write what it heard now (a full
    disk: a new sample waiting for that was "not in the index")."""
    if os.path.isfile(path) and (why := why_not_read(path)):
        return why
    if not within(path, watches) and within(asked, watches):
        return "a link to a folder elsewhere: watches do not follow links (`vibrary watch add` where it leads)"
    if not within(path, watches):
        return "not under a watch folder (`vibrary watch add` one above it, or `vibrary tag` reads it now)"
    if unwritable:
        return f"{NOT_INDEXED} yet: the index cannot be written now ({unwritable})"
    return NOT_INDEXED


def status_pb(status: dict[str, object]) -> pb.Status:
    """The daemon's status() as the proto; keys the proto does not know are left out."""
    messages = ("training", "unfollowed_links")
    fields = {k: v for k, v in status.items() if k in pb.Status.DESCRIPTOR.fields_by_name and k not in messages}
    message = pb.Status(**fields)
    links = status.get("unfollowed_links") or []
    assert isinstance(links, list)
    message.unfollowed_links.extend(pb.Link(path=link, target=target) for link, target in links)
    if status.get("training") is not None:
        message.training.CopyFrom(train_progress_pb(status["training"]))  # type: ignore[arg-type]
    return message


def _absolute(path: str, context: grpc.ServicerContext) -> str:
    if not path:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path is empty")
    if not os.path.isabs(path):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"path must be absolute: {path!r}")
    if "\0" in path:  # no file has such a name: it was a failure in the index, and a traceback in the log
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"path holds a NUL byte: {path!r}")
    if len(path.encode(errors="surrogateescape")) > PATH_MAX:  # none can be opened (a 1 MB one: 17 s to resolve)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"path of {len(path):,} characters: no file has one that long")
    return os.path.normpath(path)


def _asked(paths: Iterable[str], context: grpc.ServicerContext) -> dict[str, str]:
    """Each path as the index spells it (links resolved) → as asked, the first spelling of one asked twice: Tag and
    GetTags answer with it, for a front end to match its answers by path."""
    asked: dict[str, str] = {}
    for p in paths:
        asked.setdefault(indexed_path(_absolute(p, context)), p)
    return asked


def _not_whole_disk(paths: list[str], context: grpc.ServicerContext) -> list[str]:
    """Paths to walk, none of them `/` (which walked /proc, /sys and every program's files for minutes) nor
    inside the system's own pseudo-folders (`watch add /proc` flooded the log with unreadable entries)."""
    if any(_whole_disk_or_system(p) for p in paths):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, WHOLE_DISK)
    return paths


def _whole_disk_or_system(path: str) -> bool:
    where = indexed_path(path)
    return where == os.sep or any(where == s or where.startswith(s + os.sep) for s in SYSTEM_FOLDERS)


class PauseService:
    """Pause / Resume / ListFailed, mixed into DaemonService."""

    daemon: Daemon

    def Pause(self, request: pb.PauseRequest, context: grpc.ServicerContext) -> pb.Status:
        self.daemon.set_paused(True)
        return status_pb(self.daemon.status())

    def Resume(self, request: pb.PauseRequest, context: grpc.ServicerContext) -> pb.Status:
        self.daemon.set_paused(False)
        return status_pb(self.daemon.status())

    def ListFailed(self, request: pb.ListFailedRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        if request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        for path, error in self.daemon.index.failures(request.limit or _FAILED_DEFAULT_LIMIT):
            yield pb.FileTags(path=path, state="failed", error=error or "")


class DaemonService(PauseService, pb_grpc.DaemonServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.Status:
        # `vibrary models activate` changes the index itself, and the feeder follows within a second: a status
        # meanwhile said all was indexed, and `status --wait` ended before the re-tag had begun. Within the call's
        # deadline (a check of 2 s, `is_running`, must not fail on a follow of 10)
        left = context.time_remaining()
        self.daemon.wait_for_models_followed(FOLLOW_WAIT_S if left is None else min(FOLLOW_WAIT_S, left - 0.5))
        return status_pb(self.daemon.status())

    def AddWatch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> pb.WatchList:
        folder = _absolute(request.path, context)
        if not os.path.exists(folder):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no such folder: {folder}")
        if not os.path.isdir(folder):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a folder: {folder}")
        folder = indexed_path(folder)  # a link is watched where it leads (folders.indexed_path)
        _not_whole_disk([folder], context)  # /proc, /sys, every program's files, re-read for ever
        if in_junk_folder(folder):  # it was watched, and never a file of it read, without a word
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{folder} is {IN_JUNK.replace(': never', ', which are never')}: move the samples out of it, or"
                " watch the folder they belong to",
            )
        try:
            self.daemon.add_watch(folder)
        except OSError as e:  # (not the inotify limit, at which it is scanned until it can be watched): not kept
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot watch {folder}: {e}")
        return self._watch_list()

    def RemoveWatch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> pb.WatchList:
        folder = _absolute(request.path, context)
        if not (self.daemon.remove_watch(folder) or self.daemon.remove_watch(indexed_path(folder))):
            context.abort(grpc.StatusCode.NOT_FOUND, f"not a watch folder: {folder}")
        return self._watch_list()

    def ListWatches(self, request: pb.ListWatchesRequest, context: grpc.ServicerContext) -> pb.WatchList:
        return self._watch_list()

    def _watch_list(self) -> pb.WatchList:
        watcher = self.daemon.watcher
        paths = self.daemon.index.watches()
        return pb.WatchList(paths=paths, missing=sorted(watcher.missing), unwatched=watcher.over_limit)

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        for found in self._search(request, context):
            if not context.is_active():
                return
            yield file_tags_pb(found)

    def SearchPages(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTagsPage]:
        page, size = pb.FileTagsPage(), 0
        for found in self._search(request, context):
            file = page.files.add()
            file.CopyFrom(file_tags_pb(found))
            size += file.ByteSize()
            if len(page.files) >= PAGE_FILES or size >= PAGE_BYTES:
                if not context.is_active():
                    return
                yield page
                page, size = pb.FileTagsPage(), 0
        if page.files:
            yield page

    def _search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Iterator[FileTags]:
        if not 0.0 <= request.min_score <= 1.0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "min_score must be within [0, 1]")
        # set (0 included: a front end's slider at its bottom), every stored score from it up; unset, the hits
        min_score = max(request.min_score, ANY_STORED_SCORE) if request.HasField("min_score") else 0.0
        if request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        # `lib/../x` is x, and a link to a folder is where it leads, as the index holds it (a client over TCP
        # cannot resolve the daemon's links for it)
        prefix = indexed_path(_absolute(request.path_prefix, context)) if request.path_prefix else ""
        groups = [list(dict.fromkeys(g.tags)) for g in request.all_of]
        if any(not g for g in groups):  # ("empty tag in query" named none)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an empty group in all_of: give each AnyOf a tag")
        if any(not t.strip() for g in groups for t in g) or any(not t.strip() for t in request.none_of):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty tag in query")
        longest = 10 * config.LONGEST_TAG  # (a tag of 3 MB, or with a NUL, was searched for: no file has one; a
        # model from before the install's limit may have one longer than that limit)
        tags = (config.tag_key(t) for t in (*(t for g in groups for t in g), *request.none_of))
        if any(len(t) > longest or "\0" in t for t in tags):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a tag of over {longest} characters, or with a NUL")
        if len(groups) > MAX_QUERY_TERMS or sum(map(len, groups)) + len(request.none_of) > 4 * MAX_QUERY_TERMS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"query too long: at most {MAX_QUERY_TERMS} AND groups and {4 * MAX_QUERY_TERMS} tags in all",
            )
        model = self._model_name(request.model, context)
        query = Query(
            groups,
            list(request.none_of),
            min_score,
            prefix,
            model,
            request.limit,
            request.best_first,
            sorted(self.daemon.watcher.missing),  # files that cannot be opened now: no use in a DAW
        )
        return search(self.daemon.index, query)

    def _model_name(self, ref: str, context: grpc.ServicerContext) -> str:
        """A model filter's model: an installed one by name, or NAME@VERSION of its active version (or of the one
        standing in for it), as Status and Events name it (a front end handing that back was refused); searches
        read the tags of one version of each model, so another version is refused with the reason."""
        if not ref:
            return ""
        try:
            name, version = parse_ref(ref)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        installed = [m for m in self.daemon.index.models() if m.name == name]
        if not installed:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {name}")
        active = next((m.ref for m in installed if m.active), None)
        searched = {m.ref for m in installed if m.active or m.serving}
        if version and not searched:  # ("filter by the name", its advice, found nothing either: an API walkthrough)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {name} is not active: no version of it tags the library (ActivateModel, or `vibrary models "
                f"activate {name}`, first)",
            )
        if version and f"{name}@{version}" not in searched:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{ref} is not the active version of {name} ({active or 'none is active'}): searches read the "
                "tags of one version of each model; filter by the name",
            )
        return name

    def GetTags(self, request: pb.GetTagsRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        asked = _asked(request.paths, context)
        watches = self.daemon.index.watches()
        missing = sorted(self.daemon.watcher.missing)
        for found in self.daemon.index.file_tags(list(asked)):
            if not context.is_active():
                return
            if found.error == NOT_INDEXED:
                spelled = os.path.normpath(as_asked(found.path, asked))
                found = replace(
                    found, error=why_not_indexed(found.path, spelled, watches, self.daemon.watcher.unwritable)
                )
            elif found.state == "pending" and not found.error and missing and within(found.path, missing):
                found = replace(found, error=WATCH_GONE)  # why it is not read: "(pending)" said nothing
            yield file_tags_pb(replace(found, path=as_asked(found.path, asked)))
        # the files under these folders whose names are not UTF-8, which the index cannot hold: a folder's answer
        # left them out, silently, where a Tag of it and the status said them (as people can read them)
        folders = list(asked)
        for name in self.daemon.watcher.unnamed:
            if within(name, folders):
                yield pb.FileTags(path=name, state="failed", error=UNNAMED)

    def CountTags(self, request: pb.CountTagsRequest, context: grpc.ServicerContext) -> pb.TagCounts:
        model = self._model_name(request.model, context)
        counts = self.daemon.index.tag_counts(model, sorted(self.daemon.watcher.missing))
        return pb.TagCounts(counts=[pb.TagCount(model=m, tag=t, files=n) for m, t, n in counts])

    def Tag(self, request: pb.TagRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        if not request.paths:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no paths given")
        asked = _asked(request.paths, context)
        paths = _not_whole_disk(list(asked), context)
        remaining = context.time_remaining()  # no deadline reads as ~1e19 s
        budget = min(remaining if remaining is not None else TAG_WAIT_S, TAG_WAIT_S)
        # stopped a little before the caller's deadline, so that the files done reach it before it gives up: at
        # its deadline exactly, a DAW's Tag of 500 files with 5 s to spare got none of the 400 read and stored
        deadline = time.time() + budget - min(ANSWER_MARGIN_S, budget / 4)
        try:
            results = self.daemon.tag_now(paths, deadline, context.is_active)
        except TimeoutError as e:  # still walking the folders given
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except TooManyFiles as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Paused as e:  # the files tagged already are answered first
            yield from (file_tags_pb(replace(r, path=as_asked(r.path, asked))) for r in e.done)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except NoModel as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        if not context.is_active():
            return  # the caller went away: nobody to answer
        waiting = [r.state == "pending" and not r.error for r in results]  # (an error: read again a minute later)
        for r, later in zip(results, waiting, strict=True):  # those done first, whatever comes after them
            if not later:
                yield file_tags_pb(replace(r, path=as_asked(r.path, asked)))
        if any(waiting):
            said = f"{sum(waiting)} of {len(results)} files"
            if self.daemon.paused:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"indexing was paused before {said} were done")
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{said} still pending at the deadline")

    def Events(self, request: pb.EventsRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        bus = self.daemon.events
        try:
            feed = bus.subscribe(most=MAX_FOLLOWERS)  # each holds a server thread for as long as it runs
        except events.Crowded as crowded:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(crowded))
        if not context.add_callback(lambda: bus.end(feed)):  # the caller already gone
            bus.end(feed)
        try:
            # where things stand now, so a front end needs no GetStatus call (and misses nothing between)
            yield pb.Event(kind=pb.Event.STATUS_CHANGED, time=time.time(), status=status_pb(self.daemon.status()))
            while (e := feed.next()) is not None:
                status = self.daemon.status() if e.kind == events.EVENTS_LOST else e.status  # where things stand
                yield pb.Event(
                    kind=_EVENT_KINDS[e.kind],
                    time=e.time,
                    file=file_tags_pb(e.file) if e.file else None,
                    model=e.model,
                    status=status_pb(status) if status is not None else None,
                    training=train_progress_pb(e.training) if e.training else None,
                    lost=e.lost,
                    moved_from=e.moved_from,
                )
        finally:
            bus.unsubscribe(feed)

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ModelList:
        return self._models()

    def ActivateModel(self, request: pb.ModelRef, context: grpc.ServicerContext) -> pb.ModelList:
        return self._set_active(request, context, True)

    def DeactivateModel(self, request: pb.ModelRef, context: grpc.ServicerContext) -> pb.ModelList:
        return self._set_active(request, context, False)

    def _set_active(self, request: pb.ModelRef, context: grpc.ServicerContext, active: bool) -> pb.ModelList:
        row = self._model_row(request, context, active_first=True)
        try:
            self.daemon.index.set_active(row, active)
        except KeyError as e:  # removed meanwhile
            context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        self.daemon.models_changed()
        return self._models()

    def _model_row(self, request: pb.ModelRef, context: grpc.ServicerContext, active_first: bool) -> ModelRow:
        request = _composed(request)
        if not request.name or request.version < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model name required, version >= 0")
        if "@" in request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give the version in its own field, not as NAME@VERSION")
        try:
            parse_ref(request.name)  # a name no model can have (200,000 characters, a NUL): not "no model …"
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            return self.daemon.index.model(request.name, request.version, active_first=active_first)
        except KeyError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        raise AssertionError("unreachable")  # abort raised

    def InstallModel(self, request: pb.InstallModelRequest, context: grpc.ServicerContext) -> pb.ModelList:
        if not request.onnx:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no model given: onnx holds the model file's bytes")
        folder = config.models_dir(self.daemon.home)
        try:  # a file of its own: registry.install checks it by loading it, and copies it under its hash
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", suffix=".onnx") as upload:
                upload.write(request.onnx)
                upload.flush()
                try:
                    registry.install(
                        self.daemon.index, self.daemon.home, upload.name, request.name, active=not request.inactive
                    )
                except ModelError as e:
                    sent = str(e).replace(upload.name, "the model sent")
                    sent = sent.replace(os.path.basename(upload.name), "the model sent")
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, sent)
        except OSError as e:  # a full disk, a home not writable: the user can act on it
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if e.errno == errno.ENOSPC else grpc.StatusCode.INTERNAL
            context.abort(code, f"the model could not be written to {folder}: {e.strerror or e}")
        self.daemon.models_changed()
        return self._models()

    def RemoveModel(self, request: pb.ModelRef, context: grpc.ServicerContext) -> pb.ModelList:
        row = self._model_row(request, context, active_first=False)
        try:
            registry.remove(self.daemon.index, self.daemon.home, row)
        except ModelError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        self.daemon.models_changed()
        return self._models()

    def _models(self) -> pb.ModelList:
        return pb.ModelList(
            models=[
                pb.Model(
                    name=m.name,
                    version=m.version,
                    active=m.active,
                    classes=list(m.classes),
                    spectrogram=m.spectrogram,
                    path=m.path,
                    builtin=m.builtin,
                    serving=m.serving,
                )
                for m in self.daemon.index.models()
            ]
        )

    # -- your own tags -------------------------------------------------------------------------------
    def SuggestLabels(self, request: pb.SuggestRequest, context: grpc.ServicerContext) -> pb.Suggestions:
        if not request.paths:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no paths given")
        paths = _not_whole_disk([_absolute(p, context) for p in request.paths], context)
        try:
            found = suggest.suggest(paths, suggest.Synonyms.load(self.daemon.home), context.is_active)
        except TimeoutError as e:  # the caller's deadline passed, or it went away: nobody waits for the rest
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except FileNotFoundError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except ValueError as e:  # the user's synonyms.json is broken
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        unnamed = [readable_name(s.path) for s in found if not storable(s.path)]  # (gRPC's strings cannot carry
        reply = suggestions_pb([s for s in found if storable(s.path)])  # them: the whole call failed UNKNOWN)
        reply.unnamed_files.extend(unnamed[:UNNAMED_SHOWN])
        reply.unnamed_count = len(unnamed)
        return reply

    def ListSynonyms(self, request: pb.ListSynonymsRequest, context: grpc.ServicerContext) -> pb.Synonyms:
        return self._synonyms(context)

    def AddSynonyms(self, request: pb.Synonyms, context: grpc.ServicerContext) -> pb.Synonyms:
        if not request.synonyms:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no synonyms given")
        table = self._load_synonyms(context)
        try:
            table.add(self.daemon.home, [(s.alias, s.tag) for s in request.synonyms])
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return self._synonyms(context)

    def RemoveSynonyms(self, request: pb.Synonyms, context: grpc.ServicerContext) -> pb.Synonyms:
        if not request.synonyms:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no aliases given")
        table = self._load_synonyms(context)
        try:
            table.remove(self.daemon.home, [s.alias for s in request.synonyms])
        except suggest.NoSuchAlias as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return self._synonyms(context)

    def _load_synonyms(self, context: grpc.ServicerContext) -> suggest.Synonyms:
        try:
            return suggest.Synonyms.load(self.daemon.home)
        except ValueError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        raise AssertionError("unreachable")  # abort raised

    def _synonyms(self, context: grpc.ServicerContext) -> pb.Synonyms:
        pairs = self._load_synonyms(context).pairs()
        return pb.Synonyms(synonyms=[pb.Synonym(alias=a, tag=t, builtin=b) for a, t, b in pairs])

    def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DatasetProgress]:
        request = _composed(request)
        try:
            dataset.check_name(request.name)
            files = [(_absolute(f.path, context), _labelled(f)) for f in request.files]
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not files:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no labelled files given")
        if request.add and request.replace:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "`add` or `replace` a dataset: not both")
        if request.restore and not request.add:  # (ignored without a word: a new dataset has no edit to undo)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "`restore` is of an `add`: a new dataset has no edits")
        if request.add:
            self._dataset_exists(request.name, context)
        done: queue.Queue[int] = queue.Queue()
        result: dict[str, object] = {}

        def step(n: int) -> None:
            """A file done; a caller that went away (Ctrl-C, its deadline) ends the build unwritten, since
            the dataset was written all the same after nobody waited for it."""
            if not context.is_active():
                raise TimeoutError(f"dataset {request.name!r} not written: the caller stopped waiting")
            done.put(n)

        def build() -> None:  # in its own thread, so that progress streams while it works
            try:
                result["done"] = self.daemon.create_dataset(
                    request.name, files, step, add=request.add, restore=request.restore, replace=request.replace
                )
            except Exception as e:
                result["error"] = e
            finally:
                done.put(-1)

        threading.Thread(target=build, name="dataset", daemon=True).start()
        count, last_sent = 0, 0.0
        while (n := done.get()) != -1:
            count += n
            if context.is_active() and (time.monotonic() - last_sent > 0.1 or count == len(files)):
                last_sent = time.monotonic()
                yield pb.DatasetProgress(done=count, total=len(files))
        error = result.get("error")
        if isinstance(error, TimeoutError):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        if isinstance(error, ValueError):  # no readable file, fewer than two tags
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if isinstance(error, dataset.Busy | dataset.Unlabelled):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        if isinstance(error, dataset.Exists):
            adds = "" if error.damaged else "`add` adds to it, "
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{error}: {adds}`replace` builds it anew")
        if isinstance(error, OSError):  # disk full, home not writable: the user can act on it
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED if error.errno == errno.ENOSPC else grpc.StatusCode.INTERNAL,
                f"dataset {request.name!r} could not be written: {error}",
            )
        if error is not None:
            raise error  # type: ignore[misc]
        made = result["done"]
        assert isinstance(made, dataset.Added)
        yield pb.DatasetProgress(
            done=count,
            total=len(files),
            dataset=dataset_pb(request.name, made.report),
            added=made.added if request.add else 0,
            left_out=made.left_out,
        )

    def EditDataset(self, request: pb.EditDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:
        request = _composed(request)
        self._dataset_exists(request.name, context)
        if not (request.rename or request.drop or request.relabel):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no edit given")
        relabel = [(_absolute(f.path, context), f.tag) for f in request.relabel]
        try:
            report = self.daemon.edit_dataset(
                request.name,
                rename=[(r.tag, r.to) for r in request.rename],
                drop=list(request.drop),
                relabel=relabel,
            )
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (dataset.Busy, dataset.Unlabelled) as e:  # in training; made before datasets kept their labels
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except FileNotFoundError as e:  # deleted since it was looked for
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return dataset_pb(request.name, report)

    def _dataset_exists(self, name: str, context: grpc.ServicerContext) -> None:
        try:
            dataset.load(self.daemon.home, name)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except FileNotFoundError as e:
            if self.daemon.dataset_changing == name:  # its first build runs: "no dataset" sent people to make it
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"dataset {name!r} is being built or deleted; try when it is done",
                )
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))

    def GetDataset(self, request: pb.DatasetRef, context: grpc.ServicerContext) -> pb.Dataset:
        request = _composed(request)
        self._dataset_exists(request.name, context)
        try:
            return dataset_pb(request.name, dataset.load_report(self.daemon.home, request.name))
        except FileNotFoundError as e:  # made before labels were kept
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        raise AssertionError("unreachable")

    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.DatasetList:
        return self._datasets()

    def _datasets(self) -> pb.DatasetList:
        found = []
        for name in dataset.names(self.daemon.home):
            try:
                found.append(dataset_pb(name, dataset.load_report(self.daemon.home, name)))
            except (FileNotFoundError, ValueError) as e:
                log.warning("dataset %s cannot be read: %s", name, e)
        return pb.DatasetList(datasets=found)

    def DeleteDataset(self, request: pb.DatasetRef, context: grpc.ServicerContext) -> pb.DatasetList:
        request = _composed(request)
        self._dataset_exists(request.name, context)
        try:
            self.daemon.delete_dataset(request.name)
        except dataset.Busy as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return self._datasets()

    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> Iterator[pb.TrainProgress]:
        request = _composed(request)
        try:
            training.check_request(request.trainer, request.base, request.name, request.options or "{}", request.token)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self._dataset_exists(request.dataset, context)
        try:  # a trainer that cannot run here, refused now (a stream that went WAITING, then FAILED, status OK)
            if request.trainer in ("", "local"):
                training.check_local_trainer()
            elif request.trainer == "cloud":
                training.check_cloud(self.daemon.home)
        except training.TrainingError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        try:  # refused now, as the CLI refuses it: it was a stream that went WAITING, then FAILED, status OK
            registry.check_free_name(self.daemon.index, request.name or request.dataset)
        except ModelError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{e} (TrainRequest.name)")
        confirmed = request.confirm_cost
        try:
            job = self.daemon.start_training(
                request.dataset,
                name=request.name,
                trainer=request.trainer or "local",
                base=request.base or "demo",
                options=request.options or "{}",
                token=request.token,
                confirm=lambda text: confirmed,
            )
        except TrainingBusy as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        for progress in job.follow(context.is_active):
            yield train_progress_pb(progress)

    def CancelTraining(self, request: pb.CancelTrainingRequest, context: grpc.ServicerContext) -> pb.TrainProgress:
        job = self.daemon.training
        if job is None or job.finished:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_TRAINING)
        assert job is not None
        if job.progress.state == "installing":  # seconds, and past undoing: the trainer's copy may be gone
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the trained model is being installed (seconds): once it is, `vibrary models deactivate` it or"
                " activate the version before it",
            )
        job.cancel.set()  # the reply said the state before it, "training": the stream ends in CANCELLED
        return train_progress_pb(replace(job.progress, message="cancelling"))


def _labelled(f: pb.LabelledFile) -> str:
    """A file's tag; ValueError naming the file (a suggestion's empty tag, no tag found for it, was refused
    as a bare "empty tag", the request's other files unnamed)."""
    try:
        return dataset.label(f.tag)
    except ValueError as e:
        raise ValueError(f"{f.path}: {e}") from None


def suggestions_pb(found: list[suggest.Suggestion]) -> pb.Suggestions:
    counts = Counter(s.tag for s in found if s.tag)
    return pb.Suggestions(
        files=[
            pb.Suggestion(path=s.path, tag=s.tag, source=s.source, raw=s.raw, alternatives=list(s.alternatives))
            for s in found
        ],
        tags=[pb.TagCount(tag=t, files=n) for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
    )


FAILED_SHOWN = 100  # a dataset's unreadable files named in its message; failed_count has them all


def dataset_pb(name: str, report: dataset.BuildReport) -> pb.Dataset:
    return pb.Dataset(
        name=name,
        classes=[pb.DatasetClass(tag=t, clips=n) for t, n in report.per_class.items()],
        clips=report.manifest.clips,
        audio_bytes=report.audio_bytes,
        upload_bytes=report.manifest.size,
        ratio=report.ratio,
        # all of them made a ListDatasets of one dataset with 40,000 unreadable files 7.6 MB, past gRPC's 4 MB
        failed=[pb.FileTags(path=p, error=e, state="failed") for p, e in report.failed[:FAILED_SHOWN]],
        failed_count=len(report.failed),
        advice=report.advice,
    )


def train_progress_pb(p: training.TrainProgress) -> pb.TrainProgress:
    fields = {f: getattr(p, f) for f in pb.TrainProgress.DESCRIPTOR.fields_by_name if f != "state"}
    return pb.TrainProgress(state=pb.TrainProgress.State.Value(p.state.upper()), **fields)


# Streams (Events, Train, Tag, CreateDataset) hold a server thread each while they run: the pool leaves
# room for the calls of every front end beside MAX_FOLLOWERS event streams.
MAX_FOLLOWERS = 32  # Events streams at once (the proto says so)
MAX_QUERY_TERMS = 64  # AND groups in a search (SQLite's expression depth stops at 1000)
WHOLE_DISK = "not the whole disk nor a system folder (/proc, /sys, /dev): name the folders your samples are in"
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")  # the kernel's and devices' pseudo-files: no samples, endless errors
PATH_MAX = 4096  # bytes of a path a request may give: Linux opens none longer
TAG_WAIT_S = 3600.0  # longest a Tag call waits for its files when the caller set no deadline
ANSWER_MARGIN_S = 0.5  # how long before its deadline a Tag call answers (a quarter of a shorter one)


def _server(daemon: Daemon, token: str) -> grpc.Server:
    return make_server(
        lambda server: pb_grpc.add_DaemonServicer_to_server(DaemonService(daemon), server),
        [SERVICE_NAME],
        token,
        workers=MAX_FOLLOWERS + 32,
    )


def check_listening(socket_path: str, listen: str, token: str) -> str:
    """The socket's gRPC target; ValueError for what cannot be served. Asked before a daemon starts, too:
    `vibrary daemon --listen` without a token logged a start and a stop before it said why."""
    if listen and not token:
        raise ValueError("listening on TCP needs a token (--token or VIBRARY_TOKEN)")
    if listen and (why := unbindable(listen)):  # (a port taken, too)
        raise ValueError(f"cannot listen on {listen}: {why}")
    return config.unix_target(socket_path)  # ValueError when too long to be a socket's path


def serve(daemon: Daemon, socket_path: str, listen: str = "", token: str = "") -> tuple[list[grpc.Server], str]:
    """Start the servers; the socket is created user-only (0600) before anyone can connect. The servers, and the
    TCP address listened on as bound (`--listen 127.0.0.1:0` took a port nobody was told of), or ""."""
    target = check_listening(socket_path, listen, token)
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # stale: the home lock proves no other daemon owns it
    servers = []
    unix = _server(daemon, "")
    old_umask = os.umask(0o177)
    try:
        try:
            unix.add_insecure_port(target)
        except RuntimeError as e:  # grpc says only "Failed to bind"
            raise ValueError(f"cannot listen on {socket_path}: {e}") from None
        unix.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    servers.append(unix)
    if listen:
        tcp = _server(daemon, token)
        listen = f"{listen.rpartition(':')[0]}:{bind(tcp, listen)}"
        tcp.start()
        servers.append(tcp)
    log.info("serving on unix:%s%s", socket_path, f" and {listen}" if listen else "")
    return servers, listen
