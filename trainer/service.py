"""The trainer service: uploads of spectrogram shards, training jobs, progress, cancel, results.

Shards are stored under their sha256, first as `.part` files that grow chunk by chunk: an upload that
breaks off resumes from the bytes already there, and a shard is only accepted when its bytes match its
name. Jobs run one at a time in a background thread (a second job would only halve the speed of both);
their files are written under temporary names and renamed when complete, so a cancelled or failed job
never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from vibrary.daemon.rpc import is_loopback, make_server
from vibrary.daemon.shards import Manifest, ShardError, sha256_bytes, unpack
from vibrary.daemon.spectrogram import dequantize
from vibrary.proto import trainer_pb2 as pb
from vibrary.proto import trainer_pb2_grpc as pb_grpc

from . import plots
from .export import base_path, load_base, max_difference, to_onnx
from .train import Cancelled, Progress, TrainConfig, train

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name
MAX_SHARD = 256 << 20
CHUNK = 1 << 20
RESULT_FILES = ("model.onnx", "learning_curve.png", "confusion_matrix.png")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_TERMINAL = (pb.Job.SUCCEEDED, pb.Job.FAILED, pb.Job.CANCELLED)


class _JobState:
    def __init__(self, job_id: str, request: pb.JobRequest, manifest: Manifest, config: TrainConfig) -> None:
        self.job = pb.Job(id=job_id, state=pb.Job.QUEUED, phase="queued")
        self.request = request
        self.manifest = manifest
        self.config = config
        self.cancel = threading.Event()
        self.changed = threading.Condition()

    def update(self, **fields: object) -> None:
        with self.changed:
            for key, value in fields.items():
                setattr(self.job, key, value)
            self.changed.notify_all()

    def snapshot(self) -> pb.Job:
        with self.changed:
            return pb.Job.FromString(self.job.SerializeToString())


class TrainerService(pb_grpc.TrainerServicer):
    def __init__(self, root: Path) -> None:
        self.shards = root / "shards"
        self.jobs_dir = root / "jobs"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, _JobState] = {}
        self._queue: queue.Queue[_JobState] = queue.Queue()
        self._runner = threading.Thread(target=self._run_jobs, name="trainer", daemon=True)
        self._runner.start()

    # -- uploads -------------------------------------------------------------------------------------
    def _shard_path(self, sha: str, context: grpc.ServicerContext) -> Path:
        if not _SHA.match(sha):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a sha256: {sha!r}")
        return self.shards / f"{sha}.npz"

    def MissingShards(self, request: pb.ShardList, context: grpc.ServicerContext) -> pb.ShardList:
        missing = []
        for s in request.shards:
            path = self._shard_path(s.sha256, context)
            if not path.exists():
                part = path.with_suffix(".part")
                missing.append(
                    pb.ShardStatus(sha256=s.sha256, size=s.size, have_bytes=part.stat().st_size if part.exists() else 0)
                )
        return pb.ShardList(shards=missing)

    def UploadShards(self, request_iterator: Iterator[pb.ShardChunk], context: grpc.ServicerContext) -> pb.UploadReply:
        complete = []
        for chunk in request_iterator:
            path = self._shard_path(chunk.sha256, context)
            if not 0 < chunk.size <= MAX_SHARD:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"shard size {chunk.size} outside 1..{MAX_SHARD}")
            if path.exists():
                continue  # already stored: nothing is sent twice, but a client may not know yet
            part = path.with_suffix(".part")
            have = part.stat().st_size if part.exists() else 0
            if chunk.offset > have:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"shard {chunk.sha256[:12]}: chunk at {chunk.offset} but only {have} bytes held",
                )
            with open(part, "r+b" if part.exists() else "wb") as f:
                f.truncate(chunk.offset)  # a resent chunk replaces what was there
                f.seek(chunk.offset)
                f.write(chunk.data)
            if part.stat().st_size >= chunk.size:
                data = part.read_bytes()
                if len(data) != chunk.size or sha256_bytes(data) != chunk.sha256:
                    part.unlink()
                    context.abort(grpc.StatusCode.DATA_LOSS, f"shard {chunk.sha256[:12]} is corrupt: checksum mismatch")
                part.replace(path)
                complete.append(chunk.sha256)
        return pb.UploadReply(complete=complete)

    # -- jobs ----------------------------------------------------------------------------------------
    def StartJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Job:
        try:
            manifest = Manifest.from_json(request.manifest)
            config = TrainConfig.from_dict(json.loads(request.config or "{}"))
            base_path(request.base or "demo")
        except (ShardError, ValueError, TypeError, FileNotFoundError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        absent = [s.sha256[:12] for s in manifest.shards if not (self.shards / f"{s.sha256}.npz").exists()]
        if absent:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"shards not uploaded yet: {', '.join(absent)}")
        job = _JobState(uuid.uuid4().hex[:12], request, manifest, config)
        self.jobs[job.job.id] = job
        self._queue.put(job)
        return job.snapshot()

    def _job(self, ref: pb.JobRef, context: grpc.ServicerContext) -> _JobState:
        job = self.jobs.get(ref.id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {ref.id!r}")
        assert job is not None  # abort raised
        return job

    def WatchJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.Job]:
        job = self._job(request, context)
        last = None
        while context.is_active():
            current = job.snapshot()
            if current != last:
                yield current
                last = current
            if current.state in _TERMINAL:
                return
            with job.changed:
                job.changed.wait(0.5)

    def CancelJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.Job:
        job = self._job(request, context)
        job.cancel.set()
        if job.job.state == pb.Job.QUEUED:
            job.update(state=pb.Job.CANCELLED, phase="cancelled")
        return job.snapshot()

    def DownloadResult(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        job = self._job(request, context)
        if job.job.state != pb.Job.SUCCEEDED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job.id} has not succeeded")
        for name in RESULT_FILES:
            data = (self.jobs_dir / job.job.id / name).read_bytes()
            for start in range(0, len(data), CHUNK):
                last = start + CHUNK >= len(data)
                yield pb.FileChunk(
                    name=name, data=data[start : start + CHUNK], sha256=sha256_bytes(data) if last else ""
                )

    # -- the runner ----------------------------------------------------------------------------------
    def _run_jobs(self) -> None:
        while True:
            job = self._queue.get()
            if job.cancel.is_set():
                continue
            job.update(state=pb.Job.RUNNING, phase="loading")
            try:
                self._run(job)
            except Cancelled:
                job.update(state=pb.Job.CANCELLED, phase="cancelled")
            except (ShardError, ValueError, FileNotFoundError) as e:
                job.update(state=pb.Job.FAILED, phase="failed", error=str(e))
            except Exception as e:  # a bug fails the job, never the service
                log.exception("job %s failed", job.job.id)
                job.update(state=pb.Job.FAILED, phase="failed", error=f"internal error: {e}")

    def _run(self, job: _JobState) -> None:
        m = job.manifest
        parts = [unpack((self.shards / f"{s.sha256}.npz").read_bytes(), m.params, len(m.classes)) for s in m.shards]
        codes = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        groups = np.concatenate([p[2] for p in parts])
        base, base_name = load_base(job.request.base or "demo")

        def progress(p: Progress) -> None:
            job.update(
                phase=p.phase, epoch=p.epoch, epochs=p.epochs, loss=p.loss, val_accuracy=p.val_accuracy, eta_s=p.eta_s
            )

        result = train(m, codes, labels, groups, job.config, base, base_name, progress, job.cancel.is_set)
        job.update(phase="exporting")
        name = job.request.name or m.name
        model = to_onnx(result, name)
        probe = dequantize(codes[: min(16, len(codes))], m.params)
        if (diff := max_difference(result.net, model, probe)) > 1e-4:
            raise ValueError(f"exported model differs from the trained one by {diff:.2g}")
        if job.cancel.is_set():
            raise Cancelled("training cancelled")
        title = f"{name}: {len(m.classes)} classes, {result.train_clips} training clips"
        files = {
            "model.onnx": model,
            "learning_curve.png": plots.learning_curve(result.history, title),
            "confusion_matrix.png": plots.confusion_matrix(result.confusion, m.classes, f"{name} (validation)"),
        }
        out = self.jobs_dir / job.job.id
        out.mkdir(parents=True, exist_ok=True)
        for file_name, data in files.items():
            (out / f"{file_name}.part").write_bytes(data)
            (out / f"{file_name}.part").replace(out / file_name)
        job.update(
            state=pb.Job.SUCCEEDED, phase="done", val_accuracy=result.val_accuracy, summary=json.dumps(result.summary())
        )


def serve(root: Path, listen: str, token: str = "") -> tuple[grpc.Server, int]:
    """Start the trainer on listen (HOST:PORT, port 0 picks one); returns the server and its port."""
    if not token and not is_loopback(listen):
        raise ValueError(f"refusing to serve on {listen} without a token: only loopback is open to all")
    service = TrainerService(root)
    server = make_server(lambda s: pb_grpc.add_TrainerServicer_to_server(service, s), [SERVICE_NAME], token, workers=8)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise ValueError(f"cannot listen on {listen}")
    server.start()
    return server, port
