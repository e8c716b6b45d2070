"""One cloud training job, run by the trainer image on the instance: `vibrary trainer run-s3 URL`.

The instance is launched while the shards are still uploading (daemon/cloud.py times it so), so the
job first waits for every shard of its manifest to be in the bucket, checks each against its sha256,
then trains with the same code as the trainer service. progress.json beside job.json tells the user's
machine how far it is; the results go to out/ and progress.json says SUCCEEDED only after all of them
are there. Whatever happens, progress.json ends as SUCCEEDED or FAILED and the process exits, and the
instance's boot script shuts the instance down after it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from vibrary.daemon.cloud import exists, parse_s3_url, put_json, read_json, shard_key
from vibrary.daemon.shards import Manifest, ShardError, sha256_bytes
from vibrary.daemon.training import progress_fields

from .pipeline import train_to_files
from .train import Progress, TrainConfig

log = logging.getLogger(__name__)

SHARD_WAIT_S = 3 * 3600.0  # the longest upload a job waits for
POLL_S = float(os.environ.get("VIBRARY_JOB_POLL_S", "5"))  # how often a missing shard is looked for
REPORT_S = 2.0  # progress.json is rewritten at most this often (but at once on a new phase)


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


def _shards(s3: Any, bucket: str, manifest: Manifest, report: _Reporter) -> list[bytes]:
    deadline = time.monotonic() + SHARD_WAIT_S
    waiting = [s.sha256 for s in manifest.shards]
    while waiting := [sha for sha in waiting if not exists(s3, bucket, shard_key(sha))]:
        if time.monotonic() > deadline:
            raise ShardError(f"{len(waiting)} shards never arrived in s3://{bucket}")
        report("WAITING", message=f"waiting for {len(waiting)} of {len(manifest.shards)} shards")
        time.sleep(POLL_S)
    blobs = []
    for s in manifest.shards:
        data = s3.get_object(Bucket=bucket, Key=shard_key(s.sha256))["Body"].read()
        if sha256_bytes(data) != s.sha256:
            raise ShardError(f"shard {s.sha256[:12]} in s3://{bucket} is corrupt")
        blobs.append(data)
    return blobs


def run_job(url: str) -> int:
    """Run the job at s3://BUCKET/jobs/ID/job.json; 0 when its model is in the bucket, 1 otherwise."""
    import boto3

    bucket, key = parse_s3_url(url)
    prefix = key.rsplit("/", 1)[0] + "/"
    s3 = boto3.client("s3")
    report = _Reporter(s3, bucket, f"{prefix}progress.json")
    try:
        spec = read_json(s3, bucket, key)
        if spec is None:
            raise ValueError(f"no job at {url}")
        manifest = Manifest.from_json(spec["manifest"])
        train_config = TrainConfig.from_dict(json.loads(spec.get("options") or "{}"))
        report("WAITING", message="fetching the shards")
        blobs = _shards(s3, bucket, manifest, report)

        def progress(p: Progress) -> None:
            report("TRAINING", message=p.phase, **progress_fields(p))

        report("TRAINING", message="loading")
        files, result = train_to_files(manifest, blobs, spec["name"], spec["base"], train_config, progress)
        files["summary.json"] = json.dumps(result.summary()).encode()
        for name, data in files.items():
            s3.put_object(Bucket=bucket, Key=f"{prefix}out/{name}", Body=data)
        report("SUCCEEDED", force=True, val_accuracy=result.val_accuracy, message="done")
        return 0
    except Exception as e:  # whatever it was, the user's machine must hear of it, not wait for hours
        log.exception("cloud job %s failed", url)
        report(
            "FAILED", force=True, error=str(e) if isinstance(e, (ValueError, KeyError)) else f"{type(e).__name__}: {e}"
        )
        return 1
