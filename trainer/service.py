"""The trainer service: uploads of spectrogram shards, training jobs, progress, cancel, results.

Shards are stored under their sha256, first as `.part` files that grow chunk by chunk: an upload that
breaks off resumes from the bytes already there, and a shard is only accepted when its bytes match its
name. Jobs run one at a time in a background thread (a second job would only halve the speed of both);
their files are written under temporary names and renamed when complete, so a cancelled or failed job
never leaves a half-written model behind. Each job's record (`job.json` in its folder) is rewritten at
every change of state, so a restarted trainer still lists its jobs and serves the results of finished
ones. A job that was queued or running when the trainer stopped (a reboot, a crash, `Serving.stop`) is
queued again at the next start and goes on from its last finished epoch (`checkpoint.pt` in its folder,
trainer/checkpoint.py): the daemon that started it reconnects, or collects it at its own next start. A
trainer started for one caller (the daemon's own, `resume`) takes up only the jobs it is told to and
fails the others, whose caller is gone (a `vibrary train` killed mid-training), except those it is told
to spare (the daemon's, which the daemon comes back for). One trainer at a time uses a data folder (an
flock, `trainer.lock`): two would each take up or fail the other's jobs; the second gets TrainerBusy.
A job whose caller said it follows it to the end (`followed`: a `vibrary train` in a terminal) is
cancelled once nobody has watched it for UNWATCHED_S: that caller was killed, and nobody else would
collect the model, so the trainer's time goes to the next job instead. A job cancelled, or failed for want
of its caller or for a fault of the machine (a full disk), keeps its checkpoint (`leftovers/`): the same job
started again (the same command run again) goes on from there; started again while it still runs, the
caller is given it to follow. One failed by its own training drops it (its state may be what failed).
At its start and after every job the trainer gives back the disk of collected or long-finished jobs and of
shards unused for a week (trainer/prune.py).

Every call belongs to the user its token names (trainer/tenants.py), and every user has a folder of
their own for shards and jobs. Shards are content-addressed, so sharing them would save disk, but then
MissingShards would tell one user whether another holds a given shard (a known sample pack, say): each
user's storage is separate, and another user's job id gets the same NOT_FOUND as an id never issued.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from vibrary.daemon import atomic, pidlock
from vibrary.daemon.config import check_name
from vibrary.daemon.rpc import bind, is_loopback, make_server
from vibrary.daemon.shards import Manifest, ShardError, sha256_bytes
from vibrary.daemon.training import progress_fields
from vibrary.proto import trainer_pb2 as pb
from vibrary.proto import trainer_pb2_grpc as pb_grpc

from . import options, prune
from .options import RESULT_FILES, Cancelled, TrainConfig, base_path
from .tenants import DEFAULT, LOCAL, Tenants, check_user

if TYPE_CHECKING:
    from .train import Progress

# The trainer extra, said missing when the service starts, not by its first job (which imports it): torch
# alone is not all of it, and an environment that has torch without `.[trainer]` took uploads and then
# failed every job with "internal error: No module named 'onnx'"
for _needed in ("torch", "onnx", "matplotlib"):
    if importlib.util.find_spec(_needed) is None:
        raise ModuleNotFoundError(f"No module named {_needed!r}", name=_needed)

log = logging.getLogger(__name__)


class Unusable(RuntimeError):
    """The trainer's own installation cannot train: each job fails saying so, and the service goes on."""


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name
MAX_SHARD = 256 << 20
CHUNK = 1 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")
_TERMINAL = (pb.Job.SUCCEEDED, pb.Job.FAILED, pb.Job.CANCELLED)
RECORD = "job.json"
CHECKPOINT = "checkpoint.pt"
# Checkpoints of followed jobs whose caller was gone (a `vibrary train` killed, its terminal closed): the
# same job started again goes on from there instead of from its first epoch. Kept as long as shards are.
LEFTOVERS = "leftovers"
# How long a followed job may go unwatched: well past the 120 s a `vibrary train` spends reconnecting
# (daemon/training.py RECONNECT_S), so a client behind a dropped Wi-Fi is not mistaken for a killed one.
UNWATCHED_S = float(os.environ.get("VIBRARY_TRAINER_UNWATCHED_S", "600"))
# A WatchJob stream holds one of the server's WORKERS threads for as long as it is open: 64 of them (a
# studio's callers, or one tenant on purpose) left no thread for any other call, the health check included
WORKERS = 64
LOW_DISK = 256 << 20  # free bytes under which a failure says how few: torch's words for a full disk hide it
MAX_WATCHES, MAX_USER_WATCHES = 48, 8
# an upload stream holds one too, for as long as its caller keeps it open: 64 idle ones left no thread for
# any other call, the health check included
MAX_UPLOADS, MAX_USER_UPLOADS = 8, 2
# jobs queued or running: one tenant's thousand queued jobs left the others waiting behind them for days
MAX_JOBS, MAX_USER_JOBS = 64, 4
# a tenant's shards (the spectrograms of about a million clips): one could fill the disk the others train on
MAX_USER_SHARD_BYTES = 32 << 30


class _JobState:
    def __init__(
        self, job_id: str, user: str, request: pb.JobRequest, manifest: Manifest, config: TrainConfig, out: Path
    ) -> None:
        self.job = pb.Job(id=job_id, state=pb.Job.QUEUED, phase="queued")
        self.user = user
        self.request = request
        self.manifest = manifest
        self.config = config
        self.out = out
        self.cancel = threading.Event()
        self.changed = threading.Condition()
        self.history: list[pb.Job] = []  # every update since `past` updates, in order: a watcher misses none
        self.past = 0  # updates dropped from history once the job ended (watchers count from the start)
        self.watchers = 0
        self.followers: Counter[str] = Counter()  # watch streams open by each caller that gave its id
        self.unwatched_since = time.monotonic()  # a restarted trainer gives its caller the whole limit again
        # failed for want of its caller, or for a fault of the machine (a full disk, memory): its checkpoint is
        # kept, as a cancel's is (a failure of its own, a ValueError, drops it: the state may be what failed)
        self.keep_checkpoint = False
        self.created = time.time()  # ListJobs is oldest first, a restarted trainer's too (its folders are by id)

    @functools.cached_property
    def key(self) -> str:
        """What the job is (dataset, name, base, options): the same `vibrary train` run again is the same. Its
        first half is the dataset, name and base alone, which a run of them with other options shares."""
        trained = pb.JobRequest(manifest=self.request.manifest, name=self.request.name, base=self.request.base)
        options = pb.JobRequest()
        options.CopyFrom(self.request)
        options.followed = False  # (not an option: the CLI's run and the daemon's of the same options are one job)
        return "".join(
            hashlib.sha256(r.SerializeToString(deterministic=True)).hexdigest()[:16] for r in (trained, options)
        )

    @property
    def leftover(self) -> Path:
        """Where its checkpoint goes when it is cancelled (a Ctrl-C, a `kill`, a terminal closed) or fails
        for want of its caller or for a fault of the machine, for the same job started again: a cancel
        dropped the epochs trained."""
        return self.out.parent.parent / LEFTOVERS / f"{self.key}.pt"

    @property
    def leftover_before(self) -> Path:
        """Where a trainer before stop 49 put the same job's checkpoint (its key the whole request's hash)."""
        whole = hashlib.sha256(self.request.SerializeToString(deterministic=True)).hexdigest()[:32]
        return self.leftover.with_name(f"{whole}.pt")

    def cut_off_with_other_options(self) -> bool:
        """A cut-off run of this dataset kept with other options (`--epochs 30` killed, then `--epochs 6`): this
        one starts anew, which it did unsaid (that one goes on where it stopped, run again with its options)."""
        return any(p != self.leftover for p in self.leftover.parent.glob(f"{self.key[:16]}*.pt"))

    def update(self, **fields: object) -> None:
        with self.changed:
            for key, value in fields.items():
                setattr(self.job, key, value)
            if "state" in fields:
                try:
                    self.save()
                    if self.job.state in _TERMINAL:  # over: nothing goes on from it, but a run of it again
                        self.put_checkpoint_away()
                except OSError:  # a full disk: the record on disk lags, but watchers still hear the end
                    log.exception("job %s: could not record its state %s", self.job.id, self.job.state)
            self.history.append(self.snapshot())
            if self.job.state in _TERMINAL and len(self.history) > 1:  # a late watcher needs only the end
                self.past += len(self.history) - 1
                self.history = self.history[-1:]
            self.changed.notify_all()

    def put_checkpoint_away(self) -> None:
        checkpoint = self.out / CHECKPOINT
        if (self.job.state == pb.Job.CANCELLED or self.keep_checkpoint) and checkpoint.exists():
            self.leftover.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.replace(self.leftover)
            log.info("job %s: its checkpoint is kept for the same job started again", self.job.id)
        checkpoint.unlink(missing_ok=True)

    def save(self) -> None:
        """The job's record, replaced whole: a trainer killed mid-write leaves the previous one."""
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "user": self.user,
            "created": self.created,
            "request": json_format.MessageToDict(self.request),
            "job": json_format.MessageToDict(self.job),
        }
        atomic.write(self.out / RECORD, json.dumps(record, indent=1))

    @classmethod
    def load(cls, path: Path) -> _JobState:
        """A job from the record `save` wrote; ValueError (or KeyError) when it is not one."""
        record = json.loads(path.read_text())
        request = json_format.ParseDict(record["request"], pb.JobRequest())
        manifest = Manifest.from_json(request.manifest)
        config = TrainConfig.from_dict(json.loads(request.config or "{}"), strict=False)
        state = cls(path.parent.name, str(record["user"]), request, manifest, config, path.parent)
        state.job = json_format.ParseDict(record["job"], pb.Job())
        state.created = float(record.get("created", path.stat().st_mtime))  # (an older record: its last change)
        return state

    def snapshot(self) -> pb.Job:
        with self.changed:
            return pb.Job.FromString(self.job.SerializeToString())


def _check_size(size: int, context: grpc.ServicerContext) -> None:
    if not 0 < size <= MAX_SHARD:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"shard size {size} outside 1..{MAX_SHARD}")


def _held_bytes(folder: Path) -> int:
    held = 0
    with os.scandir(folder) as entries:
        for e in entries:
            with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                held += e.stat().st_size if e.is_file() else 0
    return held


def _finish(part: Path, path: Path, size: int, sha256: str) -> bool:
    """A whole upload becomes its shard when its size and checksum are right; otherwise it is deleted
    (False), to be sent again from its start."""
    data = part.read_bytes()
    if len(data) != size or sha256_bytes(data) != sha256:
        part.unlink()
        return False
    atomic.publish(part, path)
    return True


class TrainerBusy(RuntimeError):
    """Another trainer process uses this data folder: `pid`'s (None: not written yet)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class TrainerService(pb_grpc.TrainerServicer):
    def __init__(
        self,
        root: Path,
        tenants: Tenants | None = None,
        resume: Collection[str] | None = None,
        spare: Collection[str] = (),
    ) -> None:
        """`resume`: the ids of the unfinished jobs to take up again, None: all of them; the others are
        failed, except those in `spare`, left as they are for their own caller. TrainerBusy while another
        process's trainer has `root`."""
        try:
            self._lock = pidlock.hold(root / "trainer.lock")
        except pidlock.Held as e:
            raise TrainerBusy(
                f"the trainer data folder {root} is in use by another trainer (pid {e.pid or '?'})", e.pid
            ) from None
        self.root = root
        self.tenants = tenants or Tenants(root)
        self.jobs: dict[str, _JobState] = {}
        self._queue: queue.Queue[_JobState | None] = queue.Queue()  # None: the runner's end
        self._suspended = threading.Event()
        self._spared: list[_JobState] = []  # neither run nor listed, but their shards stay
        # Held while shards are judged present (MissingShards, StartJob) and while stale ones are removed, so
        # that a shard said to be there, or a job's, is never removed between the saying and the training.
        self._shards = threading.Lock()
        self._writing = threading.Lock()  # taken for each uploaded chunk: see UploadShards
        self._shard_bytes: dict[str, int] = {}  # a tenant's shard bytes, about (_check_shard_room)
        self._watching: Counter[str] = Counter()  # WatchJob streams open, by user
        self._uploading: Counter[str] = Counter()  # UploadShards streams open, by user
        self._streams_lock = threading.Lock()
        self._restore(resume, spare)
        self._runner = threading.Thread(target=self._run_jobs, name="trainer", daemon=True)
        self._runner.start()
        threading.Thread(target=self._cancel_unwatched, name="unwatched", daemon=True).start()

    def suspend(self, timeout: float = 10.0) -> None:
        """Stop the job in training at its next batch, leaving it on record as running (it goes on from its
        last epoch at the next start), and end the runner, so the process does not exit under a training
        thread. A runner still busy after `timeout` (loading a large dataset) is left: its job resumes all
        the same, and a shutdown must not hang on it."""
        self._suspended.set()
        self._queue.put(None)
        self._runner.join(timeout)

    def close(self) -> None:
        """Let another trainer have the data folder (after `suspend`, and once no call can change a job)."""
        self._lock.close()

    def _restore(self, resume: Collection[str] | None, spare: Collection[str]) -> None:
        """The jobs of this trainer's earlier runs, from their records; unfinished ones are queued again,
        the one that was training first, then the others in the order they came."""
        again: list[tuple[bool, float, _JobState]] = []
        loaded: list[tuple[Path, _JobState]] = []
        for path in self.root.glob(f"tenants/*/jobs/*/{RECORD}"):
            try:
                loaded.append((path, _JobState.load(path)))
            except (OSError, ValueError, KeyError, TypeError, json_format.ParseError, ShardError) as e:
                log.warning("%s: not a job record (%s); skipped", path, e)
        for path, job in sorted(loaded, key=lambda pj: (pj[1].created, str(pj[0]))):
            if job.user != path.parent.parent.parent.name:
                log.warning("%s: names user %r, but lies in another user's folder; skipped", path, job.user)
                continue
            was = "running" if job.job.state == pb.Job.RUNNING else "queued"
            if job.job.state in _TERMINAL:
                job.put_checkpoint_away()  # left by a stop between the record and this
            elif resume is None or job.job.id in resume:
                again.append((was != "running", job.created, job))
            elif job.job.id in spare or (resume is not None and job.user != LOCAL):
                # (not listed: this trainer neither runs it nor answers for it; another user's is a shared
                # trainer's on the same folder, which comes back for it: it was failed as nobody's)
                self._spared.append(job)
                continue
            else:
                job.keep_checkpoint = True
                job.update(
                    state=pb.Job.FAILED,
                    phase="failed",
                    error=f"the trainer stopped while this job was {was}, and nobody was left to collect it; "
                    "start it again (its shards are kept: nothing is uploaded twice; it goes on from its last epoch)",
                )
            self.jobs[job.job.id] = job
        for _, _, job in sorted(again, key=lambda entry: entry[:2]):
            log.info("job %s was cut off: queued again, to go on from its last finished epoch", job.job.id)
            job.update(state=pb.Job.QUEUED, phase="queued")
            self._queue.put(job)
        self._prune()

    def _prune(self) -> None:
        """Give back the disk of collected and long-finished jobs and of stale shards (trainer/prune.py);
        the shards of unfinished jobs stay, spared ones included. A failure costs disk, never a job."""
        try:
            self._prune_now()
        except OSError as e:
            log.warning("could not prune %s: %s", self.root, e)

    def _prune_now(self) -> None:
        for job_id, job in list(self.jobs.items()):
            if job.job.state in _TERMINAL and prune.job_expired(job.out, RECORD):
                prune.remove_job(job.out)
                del self.jobs[job_id]
                log.info("job %s removed: finished and collected, or never collected for a month", job_id)
        with self._shards:
            needed: dict[str, set[str]] = {}
            for job in [*self._spared, *(j for j in list(self.jobs.values()) if j.job.state not in _TERMINAL)]:
                needed.setdefault(job.user, set()).update(s.sha256 for s in job.manifest.shards)
            for folder in self.root.glob("tenants/*/shards"):
                freed = prune.prune_shards(folder, needed.get(folder.parent.name, set()))
                if freed:
                    log.info("%s: %.1f MB of shards unused for a week removed", folder, freed / 1e6)
            for folder in self.root.glob(f"tenants/*/{LEFTOVERS}"):  # (their shards went too by then)
                prune.prune_shards(folder, set(), suffixes=(".pt",))

    # -- who is asking -------------------------------------------------------------------------------
    def _user(self, context: grpc.ServicerContext) -> str:
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        user = self.tenants.user(given if isinstance(given, str) else given.decode(errors="replace"))
        if user is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        assert user is not None  # abort raised
        return user

    def _folder(self, user: str, kind: str) -> Path:
        path = self.root / "tenants" / check_user(user) / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- uploads -------------------------------------------------------------------------------------
    def _shard_path(self, user: str, sha: str, context: grpc.ServicerContext) -> Path:
        if not _SHA.fullmatch(sha):  # (match let a trailing newline through)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a sha256: {sha!r}")
        return self._folder(user, "shards") / f"{sha}.npz"

    def MissingShards(self, request: pb.ShardList, context: grpc.ServicerContext) -> pb.ShardList:
        user = self._user(context)
        missing = []
        with self._shards:
            for s in request.shards:
                path = self._shard_path(user, s.sha256, context)
                _check_size(s.size, context)  # (0 reached the file system: UNKNOWN, and the server's paths)
                if path.exists() and path.stat().st_size == s.size:
                    prune.touch(path)  # about to be trained on: it stays
                    continue
                if path.exists():  # cut short on this disk: no job could read it, and no upload replaced it
                    log.warning("shard %s cut short on disk: deleted, to be sent again", s.sha256[:12])
                    path.unlink(missing_ok=True)
                with self._writing:  # (an upload of it may be writing its last chunk)
                    part = path.with_suffix(".part")
                    have = part.stat().st_size if part.exists() else 0
                    if have >= s.size:  # whole, but cut off before its check: checked now, or sent again
                        if _finish(part, path, s.size, s.sha256):
                            continue
                        have = 0
                missing.append(pb.ShardStatus(sha256=s.sha256, size=s.size, have_bytes=have))
        return pb.ShardList(shards=missing)

    def UploadShards(self, request_iterator: Iterator[pb.ShardChunk], context: grpc.ServicerContext) -> pb.UploadReply:
        user = self._user(context)
        release = self._stream(user, self._uploading, MAX_UPLOADS, MAX_USER_UPLOADS, "uploads", context)
        try:
            return self._upload(user, request_iterator, context)
        finally:
            release()

    def _upload(
        self, user: str, request_iterator: Iterator[pb.ShardChunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        complete = []
        for chunk in request_iterator:
            path = self._shard_path(user, chunk.sha256, context)
            _check_size(chunk.size, context)
            # one chunk at a time: two uploads of one shard (a retry while the old stream still writes, two
            # terminals) wrote into a file the other had just verified and renamed: a corrupt shard on record
            with self._writing:  # (a full disk is said by daemon/rpc.py, without the server's paths)
                self._check_shard_room(user, path, len(chunk.data), context)
                if self._store(chunk, path, context):
                    complete.append(chunk.sha256)
        return pb.UploadReply(complete=complete)

    def _check_shard_room(self, user: str, path: Path, grows: int, context: grpc.ServicerContext) -> None:
        """(Holding _writing.) RESOURCE_EXHAUSTED for a chunk that would take a user of a shared trainer past
        MAX_USER_SHARD_BYTES; shards no job needs are given back a week after their last use. Counted as the
        chunks come (a resent one counted twice), and the shard folder read again when that count says no:
        prunes give bytes back, and reading it at every chunk held up every other upload."""
        if self._alone(user):  # (no count kept meanwhile: one kept from before would be low when tenants come)
            self._shard_bytes.pop(user, None)
            return
        if path.exists():
            return
        held = self._shard_bytes.get(user)
        if held is None or held + grows > MAX_USER_SHARD_BYTES:
            held = _held_bytes(path.parent)
        if held + grows > MAX_USER_SHARD_BYTES:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"your shards on this trainer would take more than the {MAX_USER_SHARD_BYTES / 1e9:.1f} GB a"
                f" user may hold ({held / 1e9:.1f} GB now); those no job needs go a week after their last use",
            )
        self._shard_bytes[user] = held + grows

    def _store(self, chunk: pb.ShardChunk, path: Path, context: grpc.ServicerContext) -> bool:
        """Write one chunk of a shard; True when it completed the shard."""
        if path.exists():
            return False  # already stored: nothing is sent twice, but a client may not know yet
        part = path.with_suffix(".part")
        have = part.stat().st_size if part.exists() else 0
        if not 0 <= chunk.offset <= have:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"shard {chunk.sha256[:12]}: chunk at {chunk.offset} but only {have} bytes held",
            )
        with open(part, "r+b" if part.exists() else "wb") as f:
            f.truncate(chunk.offset)  # a resent chunk replaces what was there
            f.seek(chunk.offset)
            f.write(chunk.data)
        if part.stat().st_size < chunk.size:
            return False
        if not _finish(part, path, chunk.size, chunk.sha256):
            context.abort(grpc.StatusCode.DATA_LOSS, f"shard {chunk.sha256[:12]} is corrupt: checksum mismatch")
        return True

    # -- jobs ----------------------------------------------------------------------------------------
    def StartJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Job:
        user = self._user(context)
        base = request.base or "demo"
        if base not in ("demo", "none"):  # a path of the trainer's machine: a named pipe there wedged its jobs
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"base {base[:100]!r}: expected demo or none")
        try:
            manifest = Manifest.from_json(request.manifest)
            manifest.check_classes()
            check_name(request.name or manifest.name, "model")  # the daemon's rule: it becomes a folder there
            config = TrainConfig.from_dict(options.parse(request.config or "{}"))
            base_path(base)
            options.check_fits(base, manifest.params)
            if config.device.startswith("cuda"):  # (torch is loaded by the first job; here only when asked for)
                from .train import pick_device

                pick_device(config.device)
        except (ShardError, ValueError, TypeError, FileNotFoundError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with self._shards:  # from here on the job's shards are needed: no prune removes them
            absent = [s.sha256[:12] for s in manifest.shards if not self._shard_path(user, s.sha256, context).exists()]
            if absent:  # (every one of 1,200 made a message gRPC refused to carry: over 16 KB)
                more = f" and {len(absent) - 10} more" if len(absent) > 10 else ""
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"shards not uploaded yet: {', '.join(absent[:10])}{more}"
                )
            job_id = uuid.uuid4().hex[:12]
            job = _JobState(job_id, user, request, manifest, config, self._folder(user, "jobs") / job_id)
            if request.followed:  # the same `vibrary train` again: its caller was cut off, or gave up on a
                same = self._same_job(user, job.key)  # trainer out of reach, and comes back for it
                if same is not None:
                    log.info("job %s started again by its caller: followed where it is", same.job.id)
                    return same.snapshot()
            self._check_room(user, context)
            job.save()
            self.jobs[job_id] = job
        self._queue.put(job)
        return job.snapshot()

    def _alone(self, user: str) -> bool:
        """The one user of an open trainer or of --token (every caller of a studio's trainer, maybe), or the
        daemon's own: it has the trainer's whole share of anything."""
        return user == LOCAL or (user == DEFAULT and not self.tenants.has_users())

    def _check_room(self, user: str, context: grpc.ServicerContext) -> None:
        """RESOURCE_EXHAUSTED past MAX_USER_JOBS unfinished jobs of one user of a shared trainer (the jobs run
        one at a time, in the order they came), or MAX_JOBS in all."""
        alone = self._alone(user)
        unfinished = [j.user for j in list(self.jobs.values()) if j.job.state not in _TERMINAL]
        share = MAX_JOBS if alone else MAX_USER_JOBS
        if len(unfinished) >= MAX_JOBS or unfinished.count(user) >= share:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many jobs queued or running ({share} by one user, {MAX_JOBS} in all): wait for one to"
                " finish, or cancel one",
            )

    def _same_job(self, user: str, key: str) -> _JobState | None:
        """The same job, unfinished, or trained within a day and never collected, its result whole: a `vibrary
        train` killed (or cut off) between the end of its training and its download trained it all again."""
        return next(
            (
                j
                for j in list(self.jobs.values())
                if j.user == user
                and j.request.followed
                and ((j.job.state not in _TERMINAL and not j.cancel.is_set()) or _uncollected(j))
                and j.key == key  # (one cancelled, by Ctrl-C or for want of its caller, is ending)
            ),
            None,
        )

    def _job(self, ref: pb.JobRef, context: grpc.ServicerContext) -> _JobState:
        user = self._user(context)
        job = self.jobs.get(ref.id)
        if job is None or job.user != user:  # someone else's job is as absent as one never started
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {ref.id!r}")
        assert job is not None  # abort raised
        return job

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.JobList:
        user = self._user(context)
        return pb.JobList(jobs=[job.snapshot() for job in list(self.jobs.values()) if job.user == user])

    def WatchJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.Job]:
        """The job as it is now, then every update after it in order (an epoch is never skipped for the
        next one having come fast), until it ends or the caller goes."""
        job = self._job(request, context)
        release = self._stream(job.user, self._watching, MAX_WATCHES, MAX_USER_WATCHES, "jobs watched", context)
        with job.changed:
            pending, seen = [job.snapshot()], job.past + len(job.history)
            job.watchers += 1
            job.followers[request.follower] += 1

        def gone() -> None:  # when the call ends, however: a generator's `finally` waits for its collection
            with job.changed:
                job.watchers -= 1
                job.followers[request.follower] -= 1
                job.followers += Counter()  # (drops the callers no longer watching)
                if request.follower:  # (a dashboard that looked in every minute kept an abandoned job training)
                    job.unwatched_since = time.monotonic()
            release()

        if not context.add_callback(gone):  # the call already ended
            gone()
        while True:
            for update in pending:
                yield update
                if update.state in _TERMINAL:
                    return
            if not context.is_active():
                return
            with job.changed:
                if job.past + len(job.history) == seen:
                    job.changed.wait(0.5)
                pending, seen = job.history[max(0, seen - job.past) :], job.past + len(job.history)

    def _stream(
        self, user: str, open_now: Counter[str], most: int, most_each: int, what: str, context: grpc.ServicerContext
    ) -> Callable[[], None]:
        """One of the server's threads for a stream (each holds one for as long as it is open), or
        RESOURCE_EXHAUSTED: a share for each user of tokens.json; the one user of an open trainer or of --token
        (every caller of a studio's trainer, maybe) has them all. Returns what gives it back."""
        share = most if self._alone(user) else most_each
        with self._streams_lock:
            full = sum(open_now.values()) >= most or open_now[user] >= share
            if not full:
                open_now[user] += 1
        if full:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many {what} at once ({share} by one user, {most} in all): close one",
            )

        def release() -> None:
            with self._streams_lock:
                open_now[user] -= 1

        return release

    def CancelJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.Job:
        """Cancels the job, unless the caller gave its id and another caller watches the job: then only that
        caller stops (a Ctrl-C on one machine cancelled the training another machine of the same user followed,
        which then ended 'training cancelled', unsaid why)."""
        job = self._job(request, context)
        with job.changed:  # (a daemon's job, not followed, has one caller: another stream is its own, gone stale)
            followed = request.follower and job.request.followed
            # (a watch that gave no id, a dashboard's or grpcurl's, follows nothing: it kept a Ctrl-C from cancelling)
            others = sum(n for who, n in job.followers.items() if who and who != request.follower) if followed else 0
        if others and job.job.state not in _TERMINAL:
            log.info(
                "job %s: one of its callers stopped following it; it goes on for the %d others", job.job.id, others
            )
            snapshot = job.snapshot()
            snapshot.followers = others
            return snapshot
        self._cancel(job)
        return job.snapshot()

    def _cancel(self, job: _JobState, why: str = "") -> None:
        if why:
            job.update(error=why)
        with job.changed:
            job.cancel.set()
            idle = job.job.state == pb.Job.QUEUED or (self._suspended.is_set() and job.job.state not in _TERMINAL)
            if idle:  # no runner will see the cancel
                job.update(state=pb.Job.CANCELLED, phase="cancelled")

    def _cancel_unwatched(self) -> None:
        while not self._suspended.wait(min(5.0, UNWATCHED_S / 4)):
            now = time.monotonic()
            for job in list(self.jobs.values()):
                with job.changed:
                    # (a watch that gave no caller id, a dashboard's, follows nothing: it kept an abandoned job on)
                    following = any(n for who, n in job.followers.items() if who)
                    gone = job.request.followed and not following and now - job.unwatched_since > UNWATCHED_S
                if gone and job.job.state not in _TERMINAL and not job.cancel.is_set():
                    log.info(
                        "job %s cancelled: unwatched for %.0f s by the caller that follows it",
                        job.job.id,
                        now - job.unwatched_since,
                    )
                    self._cancel(
                        job,
                        f"cancelled: nobody watched it for {UNWATCHED_S:.0f} s, and the caller that started it "
                        "(a vibrary train) had said it would follow it to the end",
                    )

    def DownloadResult(self, request: pb.JobRef, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        job = self._job(request, context)
        if job.job.state != pb.Job.SUCCEEDED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job.id} has not succeeded")
        gone = [name for name in RESULT_FILES if not (job.out / name).exists()]
        if gone:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job.job.id}: {', '.join(gone)} no longer on the trainer")
        for name in RESULT_FILES:
            data = (job.out / name).read_bytes()
            for start in range(0, len(data), CHUNK):
                last = start + CHUNK >= len(data)
                yield pb.FileChunk(
                    name=name, data=data[start : start + CHUNK], sha256=sha256_bytes(data) if last else ""
                )
        prune.mark_collected(job.out)  # every byte went out: the folder may go in a day

    # -- the runner ----------------------------------------------------------------------------------
    def _run_jobs(self) -> None:
        while (job := self._queue.get()) is not None and not self._suspended.is_set():
            with job.changed:  # a cancel is either seen here or sees the job running
                if job.cancel.is_set() or job.job.state in _TERMINAL:
                    continue
                job.update(state=pb.Job.RUNNING, phase="loading")
            # the log said nothing of a job until it was suspended or failed on a bug: who trained what, when
            log.info("job %s started: %s of user %s", job.job.id, job.manifest.name, job.user)
            try:
                self._run(job)
                log.info("job %s succeeded in %d epochs", job.job.id, job.job.epoch)
            except Cancelled:
                if not job.cancel.is_set():  # suspended: on record as running, for the next start
                    log.info("job %s suspended at epoch %d", job.job.id, job.job.epoch)
                    return
                job.update(state=pb.Job.CANCELLED, phase="cancelled")
                log.info("job %s cancelled at epoch %d", job.job.id, job.job.epoch)
            except (ShardError, ValueError, FileNotFoundError, Unusable) as e:
                job.update(state=pb.Job.FAILED, phase="failed", error=str(e))
                log.info("job %s failed: %s", job.job.id, e)
            except Exception as e:  # a bug, or the machine (a full disk, memory), fails the job, never the service
                if _disk_full(e):  # said in words (torch's traceback of it filled a terminal)
                    log.error("job %s failed: the disk is full under %s", job.job.id, self.root)
                else:
                    log.exception("job %s failed", job.job.id)
                job.keep_checkpoint = True  # (a full disk, once freed, goes on from there)
                job.update(state=pb.Job.FAILED, phase="failed", error=self._why_failed(e, job))
            self._prune()

    def _why_failed(self, e: Exception, job: _JobState) -> str:
        """A full disk in words: torch says it as "[enforce fail at inline_container.cc:672] unexpected pos".
        Whether the same job goes on from an epoch depends on a checkpoint having been saved: with too little
        room for the first one, none was, and "a checkpoint is kept" was said all the same."""
        free = None
        with contextlib.suppress(OSError):  # (its folder gone may be what failed the job)
            free = shutil.disk_usage(self.root).free
        low = f" (the trainer's disk has {free / 1e6:.0f} MB free)" if free is not None and free < LOW_DISK else ""
        if _disk_full(e):
            kept = (job.out / CHECKPOINT).exists() or job.leftover.exists()
            then = (
                "goes on from its last finished epoch (a checkpoint is kept)"
                if kept
                else "starts anew: no epoch's checkpoint could be saved (each needs a few times the model's size)"
            )
            return f"the trainer's disk is full{low} under {self.root}: free some space; the same job run again {then}"
        return f"internal error: {e}{low}"

    def _stopped(self, job: _JobState) -> bool:
        """Asked every batch: a cancel, a suspension, or the owner's token removed. A user whose token was
        revoked could neither follow nor cancel their jobs, which went on taking the trainer's hours."""
        if not job.cancel.is_set() and self.tenants.revoked(job.user):
            self._cancel(job, "its owner's token was removed")
        return job.cancel.is_set() or self._suspended.is_set()

    def _intact(self, path: Path, sha256: str) -> bytes:
        """A stored shard's bytes, checked against its name: one damaged on this disk failed every training of
        it ("corrupt shard"), and no upload could mend it, since the trainer said it had it. Deleted only while
        no upload writes, and only if what is there is still damaged (an upload may have put it right since)."""
        again = "train again, and it is sent anew"
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # (another job found it damaged, or MissingShards it cut short, since it started)
            raise ShardError(f"shard {sha256[:12]} is no longer on the trainer (it was damaged): {again}") from None
        if sha256_bytes(data) != sha256:
            with self._writing, contextlib.suppress(FileNotFoundError):  # (no upload writes meanwhile)
                if sha256_bytes(path.read_bytes()) != sha256:  # (not one an upload has put right since)
                    path.unlink()
            raise ShardError(f"shard {sha256[:12]} was damaged on the trainer's disk: {again}")
        return data

    def _run(self, job: _JobState) -> None:
        # matplotlib (each job's plots) keeps its font cache in the trainer's folder, not ~/.cache: Vibrary writes
        # only in its home. Read when matplotlib is first imported, with the pipeline. torch's bfloat16 steps on a
        # CPU make its inductor's cache folder, in /tmp unless told (read when it is made).
        os.environ.setdefault("MPLCONFIGDIR", str(self.root / "matplotlib"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.root / "torch"))
        try:
            from .pipeline import train_to_files  # torch: loaded by the first job, not by the service's start
        except (ImportError, OSError) as e:  # there but broken (a half-done upgrade, a missing library)
            raise Unusable(
                f"the trainer cannot load PyTorch and its extra ({e}): in Vibrary's clone, pip install -e '.[trainer]'"
            ) from None

        checkpoint = job.out / CHECKPOINT
        if not job.leftover.exists() and job.leftover_before.exists():  # (an upgrade between the cut and this run)
            job.leftover_before.replace(job.leftover)
        if not checkpoint.exists() and job.leftover.exists():  # taken as it starts, not when it was queued: the
            job.leftover.replace(checkpoint)  # same job cancelled just before put its epochs away only at its end
            log.info("job %s goes on from where the same job, cut off, was", job.job.id)
        elif not checkpoint.exists() and job.cut_off_with_other_options():
            job.update(other_options_cut_off=True)
        shard_dir = self._folder(job.user, "shards")
        blobs = (self._intact(shard_dir / f"{s.sha256}.npz", s.sha256) for s in job.manifest.shards)

        def progress(p: Progress) -> None:
            job.update(phase=p.phase, **progress_fields(p))

        name = job.request.name or job.manifest.name
        files, result = train_to_files(
            job.manifest,
            blobs,
            name,
            job.request.base or "demo",
            job.config,
            progress,
            lambda: self._stopped(job),
            checkpoint,
        )
        for file_name, data in files.items():
            atomic.write(job.out / file_name, data)
        job.update(
            state=pb.Job.SUCCEEDED, phase="done", val_accuracy=result.val_accuracy, summary=json.dumps(result.summary())
        )
        job.leftover.unlink(missing_ok=True)  # (a run of it cut off meanwhile: done now, nothing to go on from)


@dataclass
class Serving:
    """A started trainer: its gRPC server, the port it listens on, and the service behind it."""

    server: grpc.Server
    port: int
    service: TrainerService

    def stop(self, grace: float | None) -> None:
        """Stop serving; a job in training is suspended (`TrainerService.suspend`) to go on at the next start."""
        self.service.suspend()
        self.server.stop(grace).wait()
        self.service.close()


def _uncollected(job: _JobState) -> bool:
    """Trained within a day (a newer Vibrary, or demo model, may train it otherwise), never downloaded, and
    every file of its result still there."""
    try:
        ended = time.time() - (job.out / RECORD).stat().st_mtime
    except OSError:
        return False
    return (
        job.job.state == pb.Job.SUCCEEDED
        and ended < SAME_JOB_S
        and not (job.out / prune.COLLECTED).exists()
        and all((job.out / name).exists() for name in RESULT_FILES)
    )


SAME_JOB_S = 86_400.0


def _disk_full(e: BaseException) -> bool:
    return any(isinstance(c, OSError) and c.errno == errno.ENOSPC for c in _causes(e))


def _causes(e: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or during, innermost last."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]


def serve(
    root: Path,
    listen: str,
    token: str = "",
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    resume: Collection[str] | None = None,
    spare: Collection[str] = (),
    own: bool = False,
) -> Serving:
    """Start the trainer on listen (HOST:PORT, port 0 picks one); `resume`, `spare` and TrainerBusy as in
    TrainerService. `own`: the trainer a daemon or `vibrary train` runs for itself on loopback, for the
    local user alone: `token` is the run's own (without one, every account on the machine was let in), and
    the users `vibrary trainer token add` gave the data folder are `trainer serve`'s, not its.

    Off loopback a token is required (`token`, or users in root/tokens.json); with tls_cert and tls_key
    (PEM) the trainer speaks only TLS, so tokens and spectrograms never cross a network in the clear."""
    if own and not (token and is_loopback(listen)):
        raise ValueError("a trainer of one's own serves loopback only, with a token of the run's own")
    tenants = Tenants(root, token, open_ok=is_loopback(listen), own=own)
    if tenants.open and not is_loopback(listen):
        raise ValueError(
            f"refusing to serve on {listen} without a token: only loopback is open to all (`vibrary trainer token add"
            " USER` gives one to each user; --token one to everyone)"
        )
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and its key")
    service = TrainerService(root, tenants, resume, spare)
    # strangers get nothing but health checks; an open loopback trainer needs no check at all
    check = "" if tenants.open else (lambda authorization: tenants.user(authorization) is not None)
    server = make_server(
        lambda s: pb_grpc.add_TrainerServicer_to_server(service, s), [SERVICE_NAME], check, workers=WORKERS
    )
    try:
        tls = None if tls_cert is None or tls_key is None else grpc.ssl_server_credentials([(tls_key, tls_cert)])
        port = bind(server, listen, tls)
        server.start()
    except BaseException:
        Serving(server, 0, service).stop(grace=None)  # the data folder is free again for the next try
        raise
    return Serving(server, port, service)
