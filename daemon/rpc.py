"""What every Vibrary gRPC server has: health, reflection, and a token check on anything but loopback or
a Unix socket. The daemon and the trainer both build their servers here."""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .index import damaged, damaged_said, primary_code

log = logging.getLogger(__name__)

HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class TokenCheck(grpc.ServerInterceptor):
    """Every call but health checks must carry `authorization: Bearer <token>`: the one token given, or
    one that `allowed(authorization)` accepts (the trainer's per-user tokens)."""

    def __init__(self, token: str | Callable[[str], bool]) -> None:
        if callable(token):
            self._allowed = token
        else:
            check_token(token)  # no client could send it
            expected = f"Bearer {token}".encode()
            self._allowed = lambda given: hmac.compare_digest(given.encode(), expected)

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        if details.method.startswith(f"/{HEALTH_NAME}/"):
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, credentials = (given if isinstance(given, str) else given.decode(errors="replace")).partition(" ")
        if scheme.lower() == "bearer" and self._allowed(f"Bearer {credentials.strip()}"):  # schemes ignore case
            return continuation(details)
        handler = continuation(details)
        return self._deny_stream if handler is not None and handler.request_streaming else self._deny_unary


def check_token(token: str) -> str:
    """The token, when gRPC metadata can carry it (printable ASCII); ValueError, without quoting it, when
    not: a newline or NUL pasted with it failed every call later, as "Invalid metadata"."""
    if not all(" " <= c <= "~" for c in token):
        raise ValueError("the token holds a character gRPC cannot send: printable ASCII only (no newline or NUL)")
    return token


class CutMessages(grpc.ServerInterceptor):
    """A request that cannot be decoded is INVALID_ARGUMENT, and a refusal's message is cut to MESSAGE_MAX
    bytes. It goes as a trailer, and one that quoted a huge request field (a 1 MB path, name or job id)
    passed gRPC's 16 KB limit on the way: the caller got RESOURCE_EXHAUSTED "Stream removed" instead of the
    refusal and its reason."""

    class _Context:
        def __init__(self, context: grpc.ServicerContext) -> None:
            self._context = context

        def __getattr__(self, name: str) -> Any:
            return getattr(self._context, name)

        def abort(self, code: grpc.StatusCode, details: str) -> None:
            data = details.encode()
            if len(data) > MESSAGE_MAX:
                details = f"{data[:MESSAGE_MAX].decode(errors='ignore')}… ({len(data)} bytes in all)"
            self._context.abort(code, details)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        kind = next(k for k in kinds if getattr(handler, k) is not None)
        behaviour = getattr(handler, kind)
        if getattr(behaviour, "experimental_non_blocking", False):  # health's Watch: wrapped, it lost the flag
            return handler  # and held a server thread each; unauthenticated, 64 of them locked every caller out
        deserialize = handler.request_deserializer
        if deserialize is None:
            return handler._replace(**{kind: lambda request, context: behaviour(request, self._Context(context))})

        def decode(raw: bytes, checked: CutMessages._Context) -> Any:
            """A request that does not decode (invalid UTF-8 in a string field, a message cut short) is the
            caller's mistake: gRPC answered INTERNAL "Exception deserializing request!" and logged a traceback."""
            try:
                return deserialize(raw)
            except Exception as e:
                checked.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}")

        def decoded(request: Any, context: grpc.ServicerContext) -> Any:
            checked = self._Context(context)
            if kind == "unary_unary":
                return _disk_errors_said(lambda: behaviour(decode(request, checked), checked), checked)
            if kind == "unary_stream":
                return _disk_errors_streamed(lambda: behaviour(decode(request, checked), checked), checked)
            requests = (decode(raw, checked) for raw in request)  # a stream: each as it comes
            if kind == "stream_unary":  # (the trainer's upload: a shard it could not store)
                return _disk_errors_said(lambda: behaviour(requests, checked), checked)
            return _disk_errors_streamed(lambda: behaviour(requests, checked), checked)

        return handler._replace(request_deserializer=None, **{kind: decoded})


def _disk_errors_said(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
    """A call's own disk error (a full or read-only home: a dataset edit, a synonym, a pause marker; a shard
    the trainer could not store) came back UNKNOWN, "Exception calling application", the server's paths in
    it: RESOURCE_EXHAUSTED for a full disk, INTERNAL else, said without them."""
    try:
        return call()
    except OSError as e:
        _abort_for_disk(e, context)
    except sqlite3.DatabaseError as e:
        _abort_for_database(e, context)


def _disk_errors_streamed(call: Callable[[], Iterator[Any]], context: grpc.ServicerContext) -> Iterator[Any]:
    """The same for a call that streams its answer: it raises as it goes (a training whose record cannot be
    written), and came back UNKNOWN, "Exception iterating responses"."""
    try:
        yield from call()
    except OSError as e:
        _abort_for_disk(e, context)
    except sqlite3.DatabaseError as e:
        _abort_for_database(e, context)


def _abort_for_disk(e: OSError, context: grpc.ServicerContext) -> None:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    log.info("a call failed on the disk: %s", e)  # (its caller is told: an error here was a stray line in `train`)
    said = "the disk is full" if full else "a disk error"
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.INTERNAL, f"{said}: {e.strerror}")


_DATABASE_SAID = {  # SQLite's primary result codes (FULL, READONLY, CANTOPEN, BUSY, IOERR; Python 3.10 names
    # none of them) → what a caller is told, and how
    13: (grpc.StatusCode.RESOURCE_EXHAUSTED, "the disk is full"),
    8: (grpc.StatusCode.FAILED_PRECONDITION, "the disk holding it is read-only"),
    14: (grpc.StatusCode.FAILED_PRECONDITION, "it cannot be opened"),
    5: (grpc.StatusCode.UNAVAILABLE, "another program holds it locked; try again"),
    10: (grpc.StatusCode.INTERNAL, "the disk gave an error"),
}


def _abort_for_database(e: sqlite3.DatabaseError, context: grpc.ServicerContext) -> None:
    """The same for a database the call writes (a watch added on a full disk: "Exception calling
    application: database or disk is full"), or finds damaged (the daemon stops: Daemon._feed)."""
    if damaged(e):  # (the index: the cache's reads take damage for a miss, cache.SpectrogramCache.get)
        said = damaged_said("of the daemon", e)
        log.error("a call found %s", said)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, said)
    primary = primary_code(e)
    if not primary and "disk is full" in str(e):
        primary = 13
    if primary in _DATABASE_SAID:
        log.info("a call failed on its database: %s", e)  # (its caller is told)
    else:  # ("no such column", "too many SQL variables": a bug, whose traceback is wanted)
        log.exception("a call failed on its database")
    code, said = _DATABASE_SAID.get(primary, (grpc.StatusCode.INTERNAL, str(e)))
    context.abort(code, f"the index cannot be written: {said} ({e})")


REQUEST_MAX = 64 << 20  # bytes of one request: a dataset of 300,000 labelled paths; a model file
MESSAGE_MAX = 2000  # bytes; percent-encoded (3 bytes each at most) it stays under gRPC's 8 KB soft limit


def keepalive(ping_ms: int, answer_ms: int) -> list[tuple[str, int]]:
    """Channel options that notice a server that stopped answering (a hung or suspended process, a host
    gone, a link that drops packets): a stream waiting on it hung silent for as long as that lasted. A ping
    after `ping_ms` without a message, its answer awaited `answer_ms` (the servers here allow one every 5 s)."""
    return [
        ("grpc.keepalive_time_ms", ping_ms),
        ("grpc.keepalive_timeout_ms", answer_ms),
        ("grpc.http2.ping_timeout_ms", answer_ms),  # (which newer gRPC waits on: a minute, by default)
        # (a quiet stream sends nothing: by default, 2 pings and then none, or one in 5 minutes)
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", ping_ms),
    ]


def make_server(
    add: Callable[[grpc.Server], None],
    services: Sequence[str],
    token: str | Callable[[str], bool] = "",
    workers: int = 16,
) -> grpc.Server:
    """A server with the given servicers (added by `add`), health SERVING for each, and reflection."""
    options = [
        ("grpc.max_receive_message_length", REQUEST_MAX),
        ("grpc.max_send_message_length", 1 << 30),  # a library's suggestions are one reply (7.5 MB per 40,000 files)
        ("grpc.so_reuseport", 0),  # a port another server holds is an error, not a port shared with it
        # a client that vanished (a laptop asleep, a network change) is noticed, and its streams end
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # and a client that pings to know the server is there (the trainer's) is not told off for it
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=[TokenCheck(token), CutMessages()] if token else [CutMessages()],
        options=options,
    )
    add(server)
    checker = health.HealthServicer()
    for name in ("", *services):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection([*services, HEALTH_NAME, reflection.SERVICE_NAME], server)
    stop = server.stop

    def stopping(grace: float | None) -> threading.Event:
        """NOT_SERVING first, for a health watcher (a front end) to tell a stop from a crash: its stream
        ended as a killed server's does. Said from a thread, waited on HEALTH_SAID_S at most: its send to a Watch
        stream whose caller had gone waited on gRPC's flow control for ever, and the stop with it (300 s in a test)."""
        saying = threading.Thread(target=checker.enter_graceful_shutdown, name="health-shutdown", daemon=True)
        saying.start()
        saying.join(HEALTH_SAID_S)
        return stop(grace)

    server.stop = stopping
    return server


HEALTH_SAID_S = 1.0  # how long a stop waits for NOT_SERVING to be sent to the health watchers


def bind(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Listen on HOST:PORT; ValueError that names the address when it cannot (grpc raises a bare
    RuntimeError for a taken port, a malformed address or an unusable certificate)."""
    if why := unbindable(listen):  # found first: grpc writes its own error line to the terminal, then ours
        raise ValueError(f"cannot listen on {listen}: {why}")
    try:
        port = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        why = "the TLS certificate or key is unusable, or " if credentials else ""
        why += "the address is malformed, taken or not this machine's"
        raise ValueError(f"cannot listen on {listen}: {why}")
    return int(port)


_BIND_ERRORS = {
    errno.EADDRINUSE: "port {port} is taken: another program listens on it (another port, or stop that one)",
    errno.EADDRNOTAVAIL: "{host} is not an address of this machine",
    errno.EACCES: "ports under 1024 need root: pick a port over 1023",
}


def unbindable(listen: str) -> str:
    """Why HOST:PORT cannot be listened on, found by binding it as grpc would ('' when one of its addresses
    can be): grpc says only that it could not, and writes its own error line to the terminal first."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        return "expected HOST:PORT, a port from 0 to 65535"
    try:
        addresses = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return f"{host!r} is no host name this machine knows"
    failed: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        try:  # (a socket of a family the machine has off, IPv6 say, is no address to bind either)
            with contextlib.closing(socket.socket(family, kind, proto)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(address)
                return ""
        except OSError as e:
            failed.append(e)
    first = failed[0] if failed else OSError(errno.EADDRNOTAVAIL, "")
    return _BIND_ERRORS.get(first.errno or 0, "{why}").format(port=port, host=host, why=first.strerror or first)


def is_loopback(listen: str) -> bool:
    """True for 127.x.x.x:PORT, [::1]:PORT and localhost:PORT."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
