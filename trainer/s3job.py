"""One cloud training job, run by the trainer image on the instance: `vibrary trainer run-s3 URL`.

The instance is launched while the shards are still uploading (daemon/cloud.py times it so), so the
job first waits for every shard of its manifest to be in the bucket, checks each against its sha256,
then trains with the same code as the trainer service. progress.json beside job.json tells the user's
machine how far it is; the results go to out/ and progress.json says SUCCEEDED only after all of them
are there. Whatever happens, progress.json ends as SUCCEEDED or FAILED and the process exits, and the
instance's boot script shuts the instance down after it.

The training's epoch checkpoint (trainer/checkpoint.py) goes to checkpoint.pt beside job.json at most
every CHECKPOINT_S, and a job that finds one there goes on from it: an instance that ends mid-training (a
reclaimed spot instance, a failed host) is replaced by the user's machine (daemon/cloud.py), and the new
one does not pay for the epochs the old one finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vibrary.daemon.cloud import UPLOADING, exists, parse_s3_url, put_json, read_json, shard_key, written_at
from vibrary.daemon.config import check_name
from vibrary.daemon.shards import Manifest, ShardError, sha256_bytes
from vibrary.daemon.training import progress_fields

from . import options
from .pipeline import train_to_files
from .train import Progress, TrainConfig

log = logging.getLogger(__name__)

SHARD_WAIT_S = 3 * 3600.0  # the longest upload a job waits for
# how long the uploading machine may send nothing (it rewrites uploading.json at least every minute while it
# sends) before the job gives up: a laptop closed or a `vibrary train` killed mid-upload left the instance
# waiting SHARD_WAIT_S at GPU prices, and nothing on the user's side knew of it
UPLOAD_SILENT_S = 15 * 60.0
POLL_S = float(os.environ.get("VIBRARY_JOB_POLL_S", "5"))  # how often a missing shard is looked for
REPORT_S = 2.0  # progress.json is rewritten at most this often (but at once on a new phase)
CHECKPOINT_S = 60.0  # the epoch checkpoint goes to the bucket at most this often (a few MB each time)
# a training that has not asked for a batch this long has hung (a wedged GPU driver, a deadlock): it ends, said
# so, rather than hold a paid GPU until max_hours (every pass asks for its batches: trainer/train.py `batch`)
HUNG_S = 30 * 60.0


class _Reporter:
    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self._last = 0.0
        self._phase = ""

    def __call__(self, state: str, *, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        phase = f"{state}/{fields.get('message', '')}"
        if force or phase != self._phase or now - self._last >= REPORT_S:
            put_json(self.s3, self.bucket, self.key, {"state": state, **fields})
            self._last, self._phase = now, phase


class _Watchdog:
    """Ends the job, said as failed, when the training goes HUNG_S without a batch. A thread, since a hung
    training holds the main one; the process ends at once (`end`), and with it the instance (user data)."""

    def __init__(
        self, report: Callable[..., Any], hung_s: float = HUNG_S, end: Callable[[int], Any] = os._exit
    ) -> None:
        self.report, self.hung_s, self.end = report, hung_s, end
        self.alive = time.monotonic()
        self.done = threading.Event()

    def beat(self) -> bool:
        """The training's `cancelled` callback, asked every batch: alive, never cancelled."""
        self.alive = time.monotonic()
        return False

    def __enter__(self) -> _Watchdog:
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()

    def _watch(self) -> None:
        while not self.done.wait(min(60.0, self.hung_s / 10)):
            if time.monotonic() - self.alive > self.hung_s:
                error = f"the training hung: no batch in {self.hung_s / 60:g} minutes; the instance ends"
                log.error("%s", error)
                with contextlib.suppress(Exception):  # (said if S3 can hear it; the process ends either way)
                    self.report("FAILED", force=True, error=error)
                self.end(3)
                return


def _handed_over(blobs: list[bytes]) -> Iterator[bytes]:
    """Each shard's bytes once, let go of as it is unpacked: the compressed dataset was kept beside the
    unpacked one for the whole training."""
    blobs.reverse()
    while blobs:
        yield blobs.pop()


def _shards(s3: Any, bucket: str, manifest: Manifest, report: _Reporter, alive: str = "") -> list[bytes]:
    """Every shard of the manifest, once all are in the bucket. `alive`: the key the uploading machine
    rewrites while it sends (none from a version before it: then SHARD_WAIT_S alone)."""
    deadline = time.monotonic() + SHARD_WAIT_S
    waiting = [s.sha256 for s in manifest.shards]
    while waiting := [sha for sha in waiting if not exists(s3, bucket, shard_key(sha))]:
        if time.monotonic() > deadline:
            raise ShardError(f"{len(waiting)} shards never arrived in s3://{bucket}")
        report("WAITING", message=f"waiting for {len(waiting)} of {len(manifest.shards)} shards")
        heard = written_at(s3, bucket, alive) if alive else None
        if heard is not None and time.time() - heard > UPLOAD_SILENT_S:
            raise ShardError(
                f"the computer uploading the dataset has sent nothing for {UPLOAD_SILENT_S / 60:g} minutes (asleep,"
                f" stopped or offline) with {len(waiting)} shards to go: this instance ends rather than wait at GPU"
                " prices; start the training again (the shards uploaded are kept)"
            )
        time.sleep(POLL_S)
    blobs = []
    for s in manifest.shards:
        data = s3.get_object(Bucket=bucket, Key=shard_key(s.sha256))["Body"].read()
        if sha256_bytes(data) != s.sha256:
            raise ShardError(f"shard {s.sha256[:12]} in s3://{bucket} is corrupt")
        blobs.append(data)
    return blobs


class _Checkpoints:
    """The training's checkpoint file here, mirrored to the bucket after finished epochs."""

    def __init__(self, s3: Any, bucket: str, key: str, folder: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.path = Path(folder) / "checkpoint.pt"
        self._sent_epoch, self._sent_at = 0, -CHECKPOINT_S

    def fetch(self) -> bool:
        """The bucket's checkpoint of this job, if an earlier instance left one; True when there was one."""
        if not exists(self.s3, self.bucket, self.key):
            return False
        self.path.write_bytes(self.s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read())
        return True

    def epoch_done(self, epoch: int) -> None:
        now = time.monotonic()
        if epoch > self._sent_epoch and now - self._sent_at >= CHECKPOINT_S and self.path.exists():
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self.path.read_bytes())
            self._sent_epoch, self._sent_at = epoch, now


def run_job(url: str) -> int:
    """Run the job at s3://BUCKET/jobs/ID/job.json; 0 when its model is in the bucket, else JobFailed (said in
    the bucket's progress.json too, where it could be written: the user's machine reads it there)."""
    import boto3

    bucket, key = parse_s3_url(url)
    prefix = key.rsplit("/", 1)[0] + "/"
    s3 = boto3.client("s3")
    report = _Reporter(s3, bucket, f"{prefix}progress.json")
    try:
        with tempfile.TemporaryDirectory(prefix="vibrary-job-") as scratch:
            return _run(s3, bucket, key, prefix, report, _Checkpoints(s3, bucket, f"{prefix}checkpoint.pt", scratch))
    except Exception as e:  # whatever it was, the user's machine must hear of it, not wait for hours
        log.exception("cloud job %s failed", url)
        why = str(e) if isinstance(e, (ValueError, KeyError)) else f"{type(e).__name__}: {e}"
        try:
            report("FAILED", force=True, error=why)
        except Exception as unsent:  # (no credentials, no PutObject: the bucket cannot hear it either)
            raise JobFailed(f"{why}; and its failure could not be written to the bucket: {unsent}") from None
        raise JobFailed(why) from None


class JobFailed(RuntimeError):
    """A cloud job that ended without a model in the bucket: why."""


def _require_gpu() -> None:
    """A cloud job is paid by the GPU hour and estimated at a GPU's speed; on a CPU (an image built with
    the default CPU wheel, an instance type without a GPU) it costs 20-50 times that, and ends at
    max_hours with nothing. VIBRARY_JOB_ALLOW_CPU=1 allows it: for the tests, which run the job here
    (the instance's container is not given it)."""
    import torch

    if not torch.cuda.is_available() and os.environ.get("VIBRARY_JOB_ALLOW_CPU") != "1":
        raise ValueError(
            "PyTorch sees no CUDA GPU here: the image was built with the CPU wheel (build it with "
            "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128, docs/cloud.md) or the instance "
            "type has no GPU; not training on the CPU at GPU prices"
        )


def _run(s3: Any, bucket: str, key: str, prefix: str, report: _Reporter, checkpoints: _Checkpoints) -> int:
    spec = read_json(s3, bucket, key)
    if spec is None:
        raise ValueError(f"no job at s3://{bucket}/{key}")
    manifest = Manifest.from_json(spec["manifest"])
    check_name(spec["name"], "model")  # the daemon's rule, as the trainer service checks it: a folder there
    train_config = TrainConfig.from_dict(options.parse(spec.get("options") or "{}"))  # `[]`: said, not a TypeError
    _require_gpu()
    report("WAITING", message="fetching the shards")
    blobs = _shards(s3, bucket, manifest, report, f"{prefix}{UPLOADING}")
    resumed = checkpoints.fetch()

    def progress(p: Progress) -> None:
        if p.phase == "training":
            checkpoints.epoch_done(p.epoch)
        report("TRAINING", message=p.phase, **progress_fields(p))

    report("TRAINING", message="going on from the last checkpoint" if resumed else "loading")
    with _Watchdog(report) as watchdog:
        files, result = train_to_files(
            manifest,
            _handed_over(blobs),
            spec["name"],
            spec["base"],
            train_config,
            progress,
            cancelled=watchdog.beat,
            checkpoint=checkpoints.path,
        )
    files["summary.json"] = json.dumps(result.summary()).encode()
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}out/{name}", Body=data)
    report("SUCCEEDED", force=True, val_accuracy=result.val_accuracy, message="done")
    return 0
