"""Client side of the trainer service: resumable uploads, job progress, verified downloads.

A trainer serving TLS is reached with `tls_ca`: the PEM of the certificate authority that signed its
certificate (a self-signed certificate is its own), or the path of that file in $VIBRARY_TRAINER_CA.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from vibrary.daemon.rpc import check_token, keepalive
from vibrary.daemon.shards import Manifest, sha256_bytes
from vibrary.proto import trainer_pb2 as pb
from vibrary.proto import trainer_pb2_grpc as pb_grpc

from .client import DaemonError

CHUNK = 1 << 20
FINISHED = (pb.Job.SUCCEEDED, pb.Job.FAILED, pb.Job.CANCELLED)


KEEPALIVE_MS = (30_000, 20_000)  # a ping after this long without a message; an answer awaited this long


def open_channel(
    target: str, ca: bytes | str | Path | None, server_name: str = "", options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to a trainer: TLS when `ca` (the certificate it serves, or its CA's) is given, the
    certificate checked for `server_name` (or $VIBRARY_TRAINER_TLS_NAME) when the address is not its name
    (an IP address; localhost in its container). Only `trainer health` took that name: `vibrary train
    --trainer IP:PORT` failed the check for the same trainer."""
    if ca is None:
        return grpc.insecure_channel(target, options=list(options))
    try:
        pem = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
    except OSError as e:  # ("[Errno 2] No such file or directory: 'nope.pem'" named no setting)
        raise ValueError(
            f"the trainer's certificate {e.filename} (VIBRARY_TRAINER_CA, or --tls-ca) cannot be read: {e.strerror}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:  # (gRPC said only that no connection was made)
        what = "given" if isinstance(ca, bytes) else str(ca)
        raise ValueError(f"the trainer's certificate {what} (VIBRARY_TRAINER_CA, or --tls-ca) is no PEM certificate")
    name = server_name or os.environ.get("VIBRARY_TRAINER_TLS_NAME", "")
    named = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem), [*options, *named])


def connection_hint(e: grpc.RpcError, tls: bool, answered: bool = False, flags: bool = False) -> str:
    """What to set when a call failed on the connection: gRPC's words ("Socket closed",
    "CERTIFICATE_VERIFY_FAILED") did not say that the token or the certificate was wrong. `answered`: the
    trainer answered this client before; `flags`: the command has --tls-ca and --server-name (`trainer health`)."""
    code, details = e.code(), e.details() or ""
    ca, name = ("--tls-ca", "--server-name") if flags else ("VIBRARY_TRAINER_CA", "VIBRARY_TRAINER_TLS_NAME")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "; give its token with --token or VIBRARY_TRAINER_TOKEN"
    if code != grpc.StatusCode.UNAVAILABLE:
        return ""
    if "Hostname Verification" in details:
        return f"; its certificate does not name this address: set {name} to the name it holds"
    if answered:  # (its TLS, or not, was right a moment ago)
        return "; it answered before: stopped or restarted there?"
    if "certificate has expired" in details:  # ("is VIBRARY_TRAINER_CA the certificate it serves?": it was)
        return "; the certificate it serves has expired: make a new one there and serve it (docs/cloud.md)"
    if tls:
        return f"; is {ca} the certificate it serves (or its CA's)?"
    where = "" if flags else " (in the daemon's environment, for a training the daemon runs)"
    running = "; is it running there (`vibrary trainer serve`)?"
    return f"{running} One that serves TLS needs {ca} set to its certificate{where}"


class TrainerClient:
    def __init__(
        self,
        target: str,
        token: str = "",
        timeout: float = 60.0,
        tls_ca: bytes | str | Path | None = None,
        called: str = "",
    ) -> None:
        """`called`: how its refusals name it ("trainer at 127.0.0.1:39735" named a port the producer never
        chose, for the trainer this machine started)."""
        self.target = target
        self.called = called or f"trainer at {target}"
        self.timeout = timeout
        self.follower = uuid.uuid4().hex  # its watches' and cancels' (JobRef.follower): its cancel is its own
        self._metadata = (("authorization", f"Bearer {check_token(token)}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", 16 << 20),
            # a trainer that stops answering ends a watch: it hung for as long as that lasted, and never gave up
            *keepalive(*KEEPALIVE_MS),
        ]
        ca = tls_ca if tls_ca is not None else os.environ.get("VIBRARY_TRAINER_CA") or None
        self._tls = ca is not None
        self._answered = False  # any call answered: a later UNAVAILABLE is no wrong address or TLS
        self._channel = open_channel(target, ca, options=options)
        self.stub = pb_grpc.TrainerStub(self._channel)

    def __enter__(self) -> TrainerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _rpc(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            answer = getattr(self.stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._said(e) from None
        self._answered = True
        return answer

    def _said(self, e: grpc.RpcError) -> DaemonError:
        """The trainer's refusal, with what to set when it is about the connection: gRPC's words ("Socket
        closed", "CERTIFICATE_VERIFY_FAILED") did not say that the token or the certificate was wrong."""
        details = e.details() or e.code().name
        return DaemonError(e.code(), f"{self.called}: {details}{connection_hint(e, self._tls, self._answered)}")

    def missing(self, manifest: Manifest) -> list[pb.ShardStatus]:
        wanted = pb.ShardList(shards=[pb.ShardStatus(sha256=s.sha256, size=s.size) for s in manifest.shards])
        return list(self._rpc("MissingShards", wanted, self.timeout).shards)

    def upload(self, manifest: Manifest, shard_dir: Path, progress: Callable[[int], object] = lambda n: None) -> int:
        """Send what the trainer lacks, resuming partial shards; returns the bytes sent."""
        missing = self.missing(manifest)
        for status in missing:  # a corrupt local shard is said here, not as a broken stream later
            if sha256_bytes((shard_dir / f"{status.sha256}.npz").read_bytes()) != status.sha256:
                raise ValueError(f"local shard {status.sha256[:12]} is corrupt; create the dataset again (--replace)")
        sent = 0
        # raised inside the iterator, gRPC logged a traceback ("Exception iterating requests!") and ended the
        # call UNKNOWN with those words: a cancel (progress raises) or a shard unreadable lost its own. Kept
        # here, the stream ends (the trainer keeps what came, to resume from) and it is raised as it was.
        stopped: list[Exception] = []

        def chunks() -> Iterator[pb.ShardChunk]:
            nonlocal sent
            try:
                for status in missing:
                    data = (shard_dir / f"{status.sha256}.npz").read_bytes()
                    for start in range(status.have_bytes, len(data), CHUNK):
                        piece = data[start : start + CHUNK]
                        yield pb.ShardChunk(sha256=status.sha256, offset=start, data=piece, size=len(data))
                        sent += len(piece)
                        progress(len(piece))
            except Exception as e:
                stopped.append(e)

        if missing:
            try:
                self._rpc("UploadShards", chunks(), None)
            except DaemonError:
                if not stopped:
                    raise
            if stopped:
                raise stopped[0]
        return sent

    def start(
        self, manifest: Manifest, name: str, base: str, config_json: str = "{}", followed: bool = False
    ) -> pb.Job:
        """`followed`: see JobRequest.followed in proto/vibrary/v1/trainer.proto."""
        request = pb.JobRequest(
            manifest=manifest.to_json(), name=name, base=base, config=config_json, followed=followed
        )
        return self._rpc("StartJob", request, self.timeout)

    def _stream(self, method: str, request: Any) -> Iterator[Any]:
        try:
            for answer in getattr(self.stub, method)(request, metadata=self._metadata):
                self._answered = True
                yield answer
        except grpc.RpcError as e:
            raise self._said(e) from None

    def watch(self, job_id: str) -> Iterator[pb.Job]:
        return self._stream("WatchJob", pb.JobRef(id=job_id, follower=self.follower))

    def jobs(self) -> list[pb.Job]:
        return list(self._rpc("ListJobs", pb.ListJobsRequest(), self.timeout).jobs)

    def cancel(self, job_id: str) -> pb.Job:
        """Cancel the job; where another caller follows it, only this one's following: `followers` > 0."""
        return self._rpc("CancelJob", pb.JobRef(id=job_id, follower=self.follower), self.timeout)

    def download(self, job_id: str) -> dict[str, bytes]:
        """The job's files, each checked against the sha256 the trainer sent with it."""
        files: dict[str, bytearray] = {}
        for chunk in self._stream("DownloadResult", pb.JobRef(id=job_id)):
            files.setdefault(chunk.name, bytearray()).extend(chunk.data)
            if chunk.sha256 and sha256_bytes(bytes(files[chunk.name])) != chunk.sha256:
                raise ValueError(f"{chunk.name} arrived corrupted (checksum mismatch)")
        return {name: bytes(data) for name, data in files.items()}
