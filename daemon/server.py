"""The daemon's gRPC API on a user-only Unix socket, and on TCP only when asked (then only with a token).

Health and reflection are served too, so `grpcurl -unix daemon.sock list` works with no proto files.
Malformed requests get INVALID_ARGUMENT with the reason; streams stop as soon as the caller goes away or
its deadline passes.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Iterator

import grpc
from vibrary.proto import daemon_pb2 as pb
from vibrary.proto import daemon_pb2_grpc as pb_grpc

from . import events
from .index import FileTags, Query
from .rpc import make_server
from .service import Daemon

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Daemon"].full_name
_EVENT_KINDS = {
    events.FILE_TAGGED: pb.Event.FILE_TAGGED,
    events.FILE_FAILED: pb.Event.FILE_FAILED,
    events.FILE_REMOVED: pb.Event.FILE_REMOVED,
    events.MODEL_CHANGED: pb.Event.MODEL_CHANGED,
    events.STATUS_CHANGED: pb.Event.STATUS_CHANGED,
}
_FAILED_DEFAULT_LIMIT = 50


def file_tags_pb(f: FileTags) -> pb.FileTags:
    return pb.FileTags(
        path=f.path,
        state=f.state,
        error=f.error or "",
        tags=[pb.Tag(model=m, tag=t, score=s) for m, t, s in f.tags],
    )


def status_pb(status: dict[str, object]) -> pb.Status:
    """The daemon's status() as the proto; keys the proto does not know are left out."""
    return pb.Status(**{k: v for k, v in status.items() if k in pb.Status.DESCRIPTOR.fields_by_name})


def _absolute(path: str, context: grpc.ServicerContext) -> str:
    if not path:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path is empty")
    if not os.path.isabs(path):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"path must be absolute: {path!r}")
    return os.path.normpath(path)


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
        return status_pb(self.daemon.status())

    def AddWatch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> pb.WatchList:
        folder = _absolute(request.path, context)
        if not os.path.exists(folder):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no such folder: {folder}")
        if not os.path.isdir(folder):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a folder: {folder}")
        self.daemon.add_watch(folder)
        return pb.WatchList(paths=self.daemon.index.watches())

    def RemoveWatch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> pb.WatchList:
        folder = _absolute(request.path, context)
        if not self.daemon.remove_watch(folder):
            context.abort(grpc.StatusCode.NOT_FOUND, f"not a watch folder: {folder}")
        return pb.WatchList(paths=self.daemon.index.watches())

    def ListWatches(self, request: pb.ListWatchesRequest, context: grpc.ServicerContext) -> pb.WatchList:
        return pb.WatchList(paths=self.daemon.index.watches())

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        if not 0.0 <= request.min_score <= 1.0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "min_score must be within [0, 1]")
        if request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must not be negative")
        if request.path_prefix and not os.path.isabs(request.path_prefix):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path_prefix must be absolute")
        groups = [list(g.tags) for g in request.all_of]
        if any(not g or any(not t.strip() for t in g) for g in groups) or any(not t.strip() for t in request.none_of):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty tag in query")
        query = Query(
            groups, list(request.none_of), request.min_score, request.path_prefix, request.model, request.limit
        )
        for found in self.daemon.index.search(query):
            if not context.is_active():
                return
            yield file_tags_pb(found)

    def GetTags(self, request: pb.GetTagsRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        paths = [_absolute(p, context) for p in request.paths]
        for found in self.daemon.index.file_tags(paths):
            if not context.is_active():
                return
            yield file_tags_pb(found)

    def CountTags(self, request: pb.CountTagsRequest, context: grpc.ServicerContext) -> pb.TagCounts:
        counts = self.daemon.index.tag_counts(request.model)
        return pb.TagCounts(counts=[pb.TagCount(model=m, tag=t, files=n) for m, t, n in counts])

    def Tag(self, request: pb.TagRequest, context: grpc.ServicerContext) -> Iterator[pb.FileTags]:
        if not request.paths:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no paths given")
        paths = [_absolute(p, context) for p in request.paths]
        if self.daemon.paused:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "indexing is paused; resume it first (vibrary resume)")
        remaining = context.time_remaining()
        deadline = time.time() + (remaining if remaining is not None else 3600.0)
        results = self.daemon.tag_now(paths, deadline)
        if any(r.state == "pending" for r in results):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "files still pending at the deadline")
        for r in results:
            yield file_tags_pb(r)

    def Events(self, request: pb.EventsRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        feed = self.daemon.events.subscribe()
        try:
            # where things stand now, so a front end needs no GetStatus call (and misses nothing between)
            yield pb.Event(kind=pb.Event.STATUS_CHANGED, time=time.time(), status=status_pb(self.daemon.status()))
            while context.is_active():
                try:
                    e = feed.get(timeout=0.25)
                except queue.Empty:
                    continue
                yield pb.Event(
                    kind=_EVENT_KINDS[e.kind],
                    time=e.time,
                    file=file_tags_pb(e.file) if e.file else None,
                    model=e.model,
                    status=status_pb(e.status) if e.status is not None else None,
                )
        finally:
            self.daemon.events.unsubscribe(feed)

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ModelList:
        return self._models()

    def ActivateModel(self, request: pb.ModelRef, context: grpc.ServicerContext) -> pb.ModelList:
        return self._set_active(request, context, True)

    def DeactivateModel(self, request: pb.ModelRef, context: grpc.ServicerContext) -> pb.ModelList:
        return self._set_active(request, context, False)

    def _set_active(self, request: pb.ModelRef, context: grpc.ServicerContext, active: bool) -> pb.ModelList:
        if not request.name or request.version < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model name required, version >= 0")
        try:
            row = self.daemon.index.model(request.name, request.version)
        except KeyError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        self.daemon.index.set_active(row, active)
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
                )
                for m in self.daemon.index.models()
            ]
        )


def _server(daemon: Daemon, token: str) -> grpc.Server:
    return make_server(
        lambda server: pb_grpc.add_DaemonServicer_to_server(DaemonService(daemon), server), [SERVICE_NAME], token
    )


def serve(daemon: Daemon, socket_path: str, listen: str = "", token: str = "") -> list[grpc.Server]:
    """Start the servers; the socket is created user-only (0600) before anyone can connect."""
    if len(socket_path.encode()) > 100:
        raise ValueError(f"socket path too long for a Unix socket ({len(socket_path)} bytes): {socket_path}")
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # stale: the home lock proves no other daemon owns it
    servers = []
    unix = _server(daemon, "")
    old_umask = os.umask(0o177)
    try:
        unix.add_insecure_port(f"unix:{socket_path}")
        unix.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    servers.append(unix)
    if listen:
        if not token:
            raise ValueError("listening on TCP needs a token (--token or VIBRARY_TOKEN)")
        tcp = _server(daemon, token)
        if tcp.add_insecure_port(listen) == 0:
            raise ValueError(f"cannot listen on {listen}")
        tcp.start()
        servers.append(tcp)
    log.info("serving on unix:%s%s", socket_path, f" and {listen}" if listen else "")
    return servers
