"""Training on a rented GPU: shards to S3, an EC2 instance timed to the upload, the model back.

Most producers have no GPU. The dataset's shards (spectrograms and labels, never audio or paths) go to
S3 under their sha256, so a shard is never uploaded twice and an interrupted upload resumes: shards
already there are skipped (head_object) and a large shard's multipart upload continues from its last
part. A GPU instance costs money from the second it starts, and boots in minutes: it is launched when
the measured upload rate says the upload will be done in about the time the instance takes to boot (at
once for a short upload), so neither waits long for the other. The instance runs the trainer image,
which reads the job from S3 (trainer/s3job.py), writes progress and results back, and shuts down, and
an instance launched to shut down terminates itself. The client still terminates it when it is done
or fails, and a hard cap in the user data ends it whatever happens. Nothing is launched before the
user accepted the cost estimate. A client that stops following a job once it has all its shards (`Left`)
leaves the instance to train on and terminate itself; `collect` picks up the results later.

boto3 is imported only here, and only when a cloud job runs (the `[cloud]` extra). Configuration comes
from the usual AWS places (credentials, region) plus VIBRARY_CLOUD_* variables or $VIBRARY_HOME/cloud.json.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shlex
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from . import config
from .shards import Manifest, sha256_bytes

T = TypeVar("T")
log = logging.getLogger(__name__)

# On-demand Linux prices in US$ per hour, us-east-1, as AWS listed them in 2025 (not fetched live).
# Other regions cost up to a third more; the estimate says which figure it used.
PRICES = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g6.xlarge": 0.805,
    "g6.2xlarge": 0.978,
}  # (no p3: its V100 is sm_70, dropped from torch's CUDA 12.8 wheels, the image's, since 2.11)
PRICES_AS_OF = "us-east-1 on-demand, 2025 list"
PART_SIZE = 8 << 20  # multipart above this (S3's minimum part is 5 MiB)
UPLOADING = "uploading.json"  # beside job.json, rewritten while this machine uploads: the instance's sign of life
HEARTBEAT_S = 60.0  # at most this often (S3 bills each request)
ASSUMED_RATE = 1 << 20  # bytes/s before the upload has been measured
CLIPS_PER_S = 1500  # training throughput of a T4-class GPU for the estimate (clips × epochs per second)
SETUP_S = 120  # pulling shards and the image, exporting, uploading the results
RESULTS = ("model.onnx", "learning_curve.png", "confusion_matrix.png", "summary.json")
DEFAULT_AMI = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
_ENDED = ("shutting-down", "terminated", "stopping", "stopped")
_GONE = ("shutting-down", "terminated")


class CloudError(Exception):
    """A cloud job that cannot run or failed; str() says why and what to do."""


class AwsRefused(CloudError):
    """AWS itself refused or failed a call (credentials expired, throttled, access denied): not the job's
    end, which may be training on regardless."""


_NO_CREDENTIALS = (  # AWS's codes for credentials that are missing, expired or not (or no longer) valid
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "AuthFailure",
)


_NO_QUOTA = ("VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded")
_NO_CAPACITY = ("InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity", "Unsupported")


def _aws_code(e: BaseException) -> str:
    """AWS's error code of a refusal ("" for an error that is none of AWS's answers: a timeout, no credentials)."""
    from botocore.exceptions import ClientError

    return str(e.response.get("Error", {}).get("Code", "")) if isinstance(e, ClientError) else ""


def credentials_gone(e: BaseException) -> bool:
    """Whether AWS refused for want of valid credentials (an SSO session run out): nothing can be followed or
    ended with them, and the job trains on regardless, to be collected once they are renewed."""
    from botocore.exceptions import (
        CredentialRetrievalError,
        NoCredentialsError,
        RefreshWithMFAUnsupportedError,
        SSOError,
        TokenRetrievalError,
    )

    cause = e.__cause__ if isinstance(e, AwsRefused) else e
    gone = (NoCredentialsError, TokenRetrievalError, SSOError, CredentialRetrievalError, RefreshWithMFAUnsupportedError)
    if isinstance(cause, gone):  # (SSOError: an SSO session run out in a profile of the older form, no token cache)
        return True
    return cause is not None and _aws_code(cause) in _NO_CREDENTIALS


class Left(Exception):
    """Raised by a progress callback to stop following a job without ending it (the daemon is stopping)."""


class CostDeclined(CloudError):
    """The user did not accept the cost estimate: nothing was uploaded or launched."""


@dataclass
class CloudSettings:
    bucket: str = ""
    region: str = ""  # empty: the AWS configuration's own
    instance_type: str = "g4dn.xlarge"
    ami: str = DEFAULT_AMI  # the AWS Deep Learning Base AMI: NVIDIA driver, Docker and the container toolkit
    image: str = ""  # the trainer image (see Dockerfile), pushed where the instance can pull it
    instance_profile: str = ""  # IAM instance profile: S3 access to the bucket
    subnet: str = ""
    security_groups: str = ""  # comma-separated ids
    boot_s: float = 240.0  # launch to a running container, for a GPU AMI
    poll_s: float = 10.0
    timeout_s: float = 6 * 3600.0
    max_hours: float = 4.0  # the instance shuts itself down after this, whatever happens
    relaunches: int = 2  # new instances for a job whose instance ended mid-training (see _Job.replace)

    @classmethod
    def load(cls, home_dir: Path) -> CloudSettings:
        """$VIBRARY_HOME/cloud.json, then VIBRARY_CLOUD_<NAME> variables over it."""
        path = home_dir / "cloud.json"
        raw: dict[str, Any] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise CloudError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CloudError(f'{path}: expected an object of settings, e.g. {{"bucket": "my-bucket"}}')
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise CloudError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        for name in known:
            if (value := os.environ.get(f"VIBRARY_CLOUD_{name.upper()}")) is not None:
                raw[name] = value
        settings = cls(**{name: _setting(name, type(getattr(cls(), name)), value) for name, value in raw.items()})
        # (without a profile the job cannot even say it failed); all said at once: it took a run for each
        missing = [name for name in ("bucket", "image", "instance_profile") if not getattr(settings, name)]
        if missing:
            variables = ", ".join(f"VIBRARY_CLOUD_{name.upper()}" for name in missing)
            raise CloudError(
                f"to train in the cloud, set {variables} (or {', '.join(map(repr, missing))} in {path}), beside AWS"
                " credentials and a region: docs/cloud.md"
            )
        if settings.image.startswith("-") or any(ch.isspace() for ch in settings.image):  # docker read it as an option
            raise CloudError(f"image {settings.image!r} is not an image name (as docker takes it: REGISTRY/NAME:TAG)")
        return settings


def _setting(name: str, kind: type, value: Any) -> Any:
    """One setting as its default's type, from JSON or from a variable's text, or an error naming it:
    `"boot_s": "fast"` said only "could not convert string to float", and `"bucket": null` became "None"."""
    where = f"cloud setting {name!r} (VIBRARY_CLOUD_{name.upper()} or cloud.json)"
    if kind is str:
        if not isinstance(value, str):
            raise CloudError(f"{where} must be text, not {json.dumps(value)}")
        return value
    try:
        number = kind(value) if isinstance(value, str) or not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or (kind is int and isinstance(value, float) and value != number):
        raise CloudError(f"{where} must be {'a whole number' if kind is int else 'a number'}, not {json.dumps(value)}")
    if name in ("poll_s", "timeout_s", "max_hours") and not number > 0:  # not: refuses nan too
        raise CloudError(f"{where} must be more than 0, not {value}")
    if not number >= 0:
        raise CloudError(f"{where} must be 0 or more, not {value}")
    return number


# -- where things are in the bucket (the cloud job in trainer/s3job.py reads the same) ----------------------
def shard_key(sha256: str) -> str:
    return f"shards/{sha256}.npz"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or "/" not in url[5:]:
        raise ValueError(f"not an s3://BUCKET/KEY address: {url!r}")
    bucket, key = url[5:].split("/", 1)
    return bucket, key


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object as JSON, or None while it does not exist."""
    try:
        reply: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return reply
    except s3.exceptions.NoSuchKey:
        return None


def put_json(s3: Any, bucket: str, key: str, obj: dict[str, Any]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(obj).encode(), ContentType="application/json")


def exists(s3: Any, bucket: str, key: str) -> bool:
    return written_at(s3, bucket, key) is not None


def written_at(s3: Any, bucket: str, key: str) -> float | None:
    """When the object was last written (a POSIX time, S3's clock), or None when there is none."""
    try:
        return float(s3.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp())
    except s3.exceptions.ClientError as e:
        if _aws_code(e) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


# -- the upload -------------------------------------------------------------------------------------------
def check_bucket(s3: Any, bucket: str) -> None:
    """CloudError naming the setting when the bucket is not there: found only after the cost was accepted, as
    "NoSuchBucket when calling the PutObject operation", the bucket unnamed (a missing shard's 404 hid it)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = _aws_code(e)
        setting = "the cloud settings' bucket, VIBRARY_CLOUD_BUCKET"
        if code in ("404", "NoSuchBucket"):
            raise CloudError(
                f"no bucket {bucket!r} in {s3.meta.region_name} ({setting}): make it there, or name yours"
                " (docs/cloud.md)"
            ) from None
        if code in ("403", "AccessDenied"):  # (names are global: a common one is often another account's)
            raise CloudError(
                f"bucket {bucket!r} ({setting}) is not yours to use: another account's (bucket names are global),"
                " or these credentials may not list it (s3:ListBucket)"
            ) from None
        raise


def missing_shards(s3: Any, bucket: str, manifest: Manifest) -> list[tuple[str, int]]:
    """(sha256, size) of the shards the bucket lacks: what this upload will send."""
    return [(s.sha256, s.size) for s in manifest.shards if not exists(s3, bucket, shard_key(s.sha256))]


def upload_shards(
    s3: Any, bucket: str, missing: list[tuple[str, int]], shard_dir: Path, sent: Callable[[int], None]
) -> None:
    """Upload these shards; sent(n) after each object or part. A shard above PART_SIZE goes in parts,
    and an unfinished multipart upload of it (an earlier, interrupted run) continues where it stopped."""
    for sha, _ in missing:
        data = (shard_dir / f"{sha}.npz").read_bytes()
        if sha256_bytes(data) != sha:
            raise CloudError(f"local shard {sha[:12]} is corrupt; create the dataset again (--replace)")
        key = shard_key(sha)
        if len(data) <= PART_SIZE:
            s3.put_object(Bucket=bucket, Key=key, Body=data)
            sent(len(data))
        else:
            _multipart(s3, bucket, key, data, sent)


def _multipart(s3: Any, bucket: str, key: str, data: bytes, sent: Callable[[int], None]) -> None:
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    upload_id = next((u["UploadId"] for u in uploads if u["Key"] == key), None)
    done: dict[int, str] = {}
    if upload_id is None:
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    else:
        for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
            for part in page.get("Parts", []):
                start = (part["PartNumber"] - 1) * PART_SIZE
                if part["Size"] == len(data[start : start + PART_SIZE]):  # a part of another size is sent again
                    done[part["PartNumber"]] = part["ETag"]
    for number, start in enumerate(range(0, len(data), PART_SIZE), 1):
        if number in done:
            continue
        piece = data[start : start + PART_SIZE]
        reply = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=piece)
        done[number] = reply["ETag"]
        sent(len(piece))
    parts = [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def launch_due(sent: int, total: int, elapsed_s: float, boot_s: float) -> bool:
    """Whether to launch now: when the rest of the upload, at the rate measured so far, takes no longer
    than the instance takes to boot (at once when the upload is short or done)."""
    remaining = total - sent
    if remaining <= 0:
        return True
    rate = sent / elapsed_s if sent > 0 and elapsed_s > 0 else ASSUMED_RATE
    return remaining / rate <= boot_s


# -- cost -------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    minutes: float
    dollars: float | None
    text: str


def estimate(
    settings: CloudSettings, manifest: Manifest, options: str, upload_bytes: int, base: str = "demo"
) -> Estimate:
    """What the job would cost. Tags the demo knows train in one fit of seconds (vibrary.trainer.known):
    the estimate counted their epochs, and did not say that this machine does it at no cost."""
    from vibrary.trainer import known

    opts = json.loads(options or "{}")
    fits = known.starts_from(known.load(base or "demo"), manifest.classes, opts.get("known_pull")) is not None
    epochs = 1 if fits else int(opts.get("epochs") or 40)
    train_s = manifest.clips * epochs / CLIPS_PER_S
    minutes = max(1.0, (settings.boot_s + SETUP_S + train_s) / 60)  # EC2 bills a minute at least
    price = PRICES.get(settings.instance_type)
    dollars = None if price is None else price * minutes / 60
    cost = (
        f"about ${dollars:.2f} (${price}/hour, {PRICES_AS_OF})"
        if dollars is not None
        else f"unknown: no price on record for {settings.instance_type}, see aws.amazon.com/ec2/pricing"
    )
    work = (
        "one fit from what the demo model knows of these tags (seconds: `--trainer local`, the default, does it"
        " on this machine at no cost)"
        if fits
        else f"up to {epochs} epochs"
    )
    worst = settings.max_hours * (1 + settings.relaunches)  # (each replacement gets its own limit)
    text = (
        f"Cloud training of {manifest.name!r}: {manifest.clips} clips, {work}.\n"
        f"Upload: {upload_bytes / 1e6:.1f} MB of spectrograms and labels (no audio) to s3://{settings.bucket}.\n"
        f"One {settings.instance_type} instance for about {minutes:.0f} minutes: {cost}.\n"
        f"Each instance ends itself after {settings.max_hours:g} hours at most"
        + (f" ({worst:g} hours in all if it is replaced {settings.relaunches} times)" if settings.relaunches else "")
        + ". S3 storage of the shards is billed apart."
    )
    if minutes > 0.8 * settings.max_hours * 60:  # cut off at the limit, it would be paid for and give nothing
        raise CloudError(
            f"{text}\nThat is more than the {settings.max_hours:g} hours an instance may run (max_hours, less a"
            " margin): nothing was launched; raise max_hours in the cloud settings, or train fewer epochs"
        )
    if minutes > 0.8 * settings.timeout_s / 60:  # (the client gives up then, and ends the instance it paid for)
        raise CloudError(
            f"{text}\nThat is more than the {settings.timeout_s:g} s this machine waits for a cloud job (timeout_s,"
            " less a margin): nothing was launched; raise timeout_s with max_hours in the cloud settings, or train"
            " fewer epochs"
        )
    return Estimate(minutes, dollars, text)


# -- the instance -----------------------------------------------------------------------------------------
def user_data(settings: CloudSettings, region: str, job_url: str) -> str:
    """The instance's boot script: a cap on its life, the trainer container, then shutdown (= terminate).
    An image in ECR needs a login first, with the instance profile's credentials. Every setting is quoted: the
    script runs as root, and an image name with a `;` or `$(…)` in cloud.json ran it."""
    image, region, job_url = (shlex.quote(s) for s in (settings.image, region, job_url))
    registry = shlex.quote(settings.image.split("/", 1)[0])
    login = (
        [f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry}"]
        if ".dkr.ecr." in registry
        else []
    )
    return "\n".join(
        [
            "#!/bin/bash",
            "set -u",
            f"shutdown -h +{max(1, round(settings.max_hours * 60))}",
            *login,
            f"docker run --rm --gpus all --network host -e AWS_DEFAULT_REGION={region} {image} "
            f"vibrary trainer run-s3 {job_url}",
            "shutdown -h now",
            "",
        ]
    )


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C, a closed terminal or a `kill` that comes meanwhile is handled once the block is done (on the
    main thread, where Python handles signals; elsewhere, as it comes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heard: list[int] = []
    held = {sig: signal.signal(sig, lambda signum, frame: heard.append(signum)) for sig in ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)  # (None: one set from C)
        if heard:
            signal.raise_signal(heard[0])  # to the handler that was there


ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)  # a kill, a closed terminal, Ctrl-C


def launch(ec2: Any, settings: CloudSettings, region: str, job_id: str, job_url: str) -> str:
    params: dict[str, Any] = {
        "ImageId": settings.ami,
        "InstanceType": settings.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data(settings, region, job_url),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
        "IamInstanceProfile": {"Name": settings.instance_profile},
        "TagSpecifications": [
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "Name", "Value": f"vibrary-train-{job_id}"}, {"Key": "vibrary-job", "Value": job_id}],
            }
        ],
    }
    if settings.subnet:
        params["SubnetId"] = settings.subnet
    if settings.security_groups:
        params["SecurityGroupIds"] = [g.strip() for g in settings.security_groups.split(",") if g.strip()]
    return str(ec2.run_instances(**params)["Instances"][0]["InstanceId"])


TERMINATE_TRIES = 10  # tries to terminate an instance AWS does not know yet, poll_s apart
FRESH_S = 600.0  # how long after its launch an instance AWS does not know is taken to be still coming


def instance_state(ec2: Any, instance_id: str, fresh: bool = True) -> str:
    """An instance AWS does not know reads as pending while `fresh` (DescribeInstances is eventually
    consistent: right after RunInstances it may answer InvalidInstanceID.NotFound for a while), and as
    terminated otherwise: AWS forgets a terminated instance after about an hour, and a job collected the
    next morning waited six hours for an instance that no longer existed."""
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except Exception as e:
        if _not_found(e):
            return "pending" if fresh else "terminated"
        raise
    return str(reservations[0]["Instances"][0]["State"]["Name"]) if reservations else "terminated"


def _not_found(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}  # (None on botocore's connection errors)
    return bool(response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound")


def job_instances(ec2: Any, job_id: str) -> list[dict[str, Any]]:
    """Every instance launched for a job (their tag names it), the first first: the job's record on this
    machine names the one it saw launched, and the bucket's record would cost a write per launch."""
    reply = ec2.describe_instances(Filters=[{"Name": "tag:vibrary-job", "Values": [job_id]}])
    return sorted((i for r in reply["Reservations"] for i in r["Instances"]), key=lambda i: i["LaunchTime"])


def patiently(call: Callable[[], T], progress: Callable[[dict[str, Any]], None], poll_s: float, deadline: float) -> T:
    """AWS's answer, asked again while AWS is out of reach (a laptop's Wi-Fi gone for a minute, a daemon
    started before the network): botocore's own retries last seconds, and one failed poll ended a paid
    training, its instance terminated and its checkpoint deleted. `progress` is told each time (raising
    there, a cancel or a stopping daemon, ends the wait)."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as Unreachable

    while True:
        try:
            return call()
        except (Unreachable, HTTPClientError, ClientError) as e:
            if time.monotonic() > deadline or (isinstance(e, ClientError) and not _passing(e)):
                raise
            progress({"message": f"AWS is out of reach ({e}); asking again every {poll_s:g} s"})
            time.sleep(poll_s)


def _passing(e: Any) -> bool:
    """Whether AWS's refusal passes by itself (throttled, busy, an error of its own), not one to say at once:
    botocore's few retries spent, one ended a paid training and deleted its checkpoint."""
    error, status = e.response.get("Error", {}), e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    throttled = ("Throttling", "ThrottlingException", "RequestLimitExceeded", "SlowDown", "TooManyRequestsException")
    return error.get("Code") in throttled or int(status or 0) >= 500


@contextmanager
def _aws_errors() -> Iterator[None]:
    """botocore's errors (no region, no credentials, access denied…) as CloudError, said plainly."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as e:
        raise AwsRefused(f"AWS: {e}") from e


@contextmanager
def _aws() -> Iterator[tuple[CloudSettings, Any, Any]]:
    """This home's cloud settings and S3 and EC2 clients, with AWS's errors said plainly."""
    settings = CloudSettings.load(config.home())
    session = _session(settings)
    with _aws_errors():
        yield settings, session.client("s3"), session.client("ec2")


def _session(settings: CloudSettings) -> Any:
    try:
        import boto3
    except ImportError:
        raise CloudError("cloud training needs boto3: in Vibrary's clone, pip install -e '.[cloud]'") from None
    return boto3.session.Session(region_name=settings.region or None)


# -- the whole job ----------------------------------------------------------------------------------------
@dataclass
class _Job:
    settings: CloudSettings
    s3: Any
    ec2: Any
    region: str
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    instance: str = ""
    launched_at: float = 0.0  # time.time() when `instance` was launched (kept in the job's record); 0: unknown

    @property
    def fresh(self) -> bool:
        """Whether `instance` was launched by this process moments ago, so AWS may not know it yet."""
        return bool(self.launched_at) and time.time() - self.launched_at < FRESH_S

    @property
    def prefix(self) -> str:
        return job_prefix(self.job_id)

    @property
    def url(self) -> str:
        return f"s3://{self.settings.bucket}/{self.prefix}job.json"

    def launch(
        self,
        progress: Callable[[dict[str, Any]], None],
        why: str,
        on_launched: Callable[[str, str], None] = lambda job_id, instance: None,
    ) -> None:
        """`on_launched` hears of the instance before anything else is said: a progress line first (slow on a
        loaded machine) left a window where a Ctrl-C ended an instance its caller never heard of, and said
        "nothing was launched". A signal that ends the process waits for the launch to be heard of (CI). It
        hears of the job first, with no instance yet: a process killed between RunInstances and the record (a
        kill -9, a power cut) left an instance no record named; the job's tag finds it (clean_up)."""
        with _signals_held():
            self.launched_at = time.time()
            on_launched(self.job_id, "")
            try:
                self.instance = launch(self.ec2, self.settings, self.region, self.job_id, self.url)
            except Exception as e:
                said = self._refused(e)
                if said is e:
                    raise
                raise said from e
            self.launched_at = time.time()
            on_launched(self.job_id, self.instance)
        progress({"state": "WAITING", "message": f"launched {self.settings.instance_type} {self.instance}: {why}"})

    def _refused(self, e: Exception) -> Exception:
        """A launch AWS answered with a refusal made no instance: nothing to look for by its tag (the clean-up
        did, for a minute and more, before the refusal was said). A new account's GPU quota is none."""
        from botocore.exceptions import ClientError

        # (a timeout, AWS's own error or throttling after botocore's retries: an attempt may have launched it, and
        # its tag finds it; a refusal, 4xx, made none)
        code = _aws_code(e)
        if code in _NO_CAPACITY:  # (sent as a 500, retried by botocore: a refusal all the same)
            self.launched_at = 0.0
            return AwsRefused(
                f"AWS: {e}: AWS has no {self.settings.instance_type} free in {self.region} now: try again later,"
                " or another instance type or region in the cloud settings"
            )
        if not isinstance(e, ClientError) or _passing(e):
            return e
        self.launched_at = 0.0
        if code in _NO_QUOTA:
            return AwsRefused(
                f"AWS: {e}: this account's quota of {self.settings.instance_type} instances is used up or none (a new"
                " account may run no GPU instance): ask for more in the Service Quotas console (EC2, Running"
                " On-Demand instances of its family)"
            )
        return e

    def wait(self, progress: Callable[[dict[str, Any]], None]) -> None:
        """Until the job's progress.json says it ended. An instance that ends first is replaced while
        `replace` allows, else that is a failure."""
        bucket, key = self.settings.bucket, f"{self.prefix}progress.json"
        deadline = time.monotonic() + self.settings.timeout_s

        def asked(call: Callable[[], T]) -> T:
            return patiently(call, progress, self.settings.poll_s, deadline)

        while True:
            status = asked(lambda: read_json(self.s3, bucket, key)) or {
                "state": "WAITING",
                "message": "the instance is starting",
            }
            if status["state"] == "SUCCEEDED":
                return
            if status["state"] == "FAILED":
                raise CloudError(f"cloud training failed: {status.get('error') or 'no reason given'}")
            progress({k: v for k, v in status.items() if k != "error"})
            if asked(lambda: instance_state(self.ec2, self.instance, self.fresh)) in _ENDED:
                if (asked(lambda: read_json(self.s3, bucket, key)) or {}).get("state") == "SUCCEEDED":
                    return
                self.replace(status, progress)
            if time.monotonic() > deadline:
                raise CloudError(f"cloud training took more than {self.settings.timeout_s:g} s; stopped")
            time.sleep(self.settings.poll_s)

    def replace(self, status: dict[str, Any], progress: Callable[[dict[str, Any]], None]) -> None:
        """A new instance for a job whose instance ended mid-training (AWS reclaimed it, its host failed);
        it goes on from the job's last checkpoint in the bucket (trainer/s3job.py). Not for an instance
        that never got to training (a bad image or role: the next would fail the same way and cost as
        much), nor one that reached its `max_hours`, nor more than `relaunches` times: CloudError."""
        ended = f"instance {self.instance} ended before the job did"
        launched = job_instances(self.ec2, self.job_id)
        lived_s = (dt.datetime.now(dt.timezone.utc) - launched[-1]["LaunchTime"]).total_seconds() if launched else 0.0
        if status["state"] != "TRAINING":
            raise CloudError(f"{ended}, before it trained: see its console log")
        if not launched:  # AWS forgot them all: it ended over an hour ago, maybe at max_hours; not again
            raise CloudError(f"{ended}, over an hour ago (AWS no longer lists it): start the training again")
        if lived_s >= self.settings.max_hours * 3600 - 60:
            raise CloudError(f"{ended}: it reached its limit of {self.settings.max_hours:g} hours (max_hours)")
        if len(launched) > self.settings.relaunches:
            raise CloudError(f"{ended}, and it was the job's {len(launched)}th instance: see their console logs")
        if launched[-1].get("StateReason", {}).get("Code") == "Client.InstanceInitiatedShutdown":
            # its boot script shut it down once the training process ended without a word (killed for
            # memory, a driver's abort): not reclaimed, and a new one would end the same way at the same cost
            raise CloudError(
                f"{ended}: the training stopped without a word (out of memory?) and the instance shut itself down;"
                f" see its console log (aws ec2 get-console-output --instance-id {launched[-1]['InstanceId']})"
            )
        epoch = f"epoch {status['epoch']}" if status.get("epoch") else "its start"
        self.launch(progress, f"{ended} (reclaimed, or its host failed); the new one goes on from {epoch}")

    def results(self, progress: Callable[[dict[str, Any]], None]) -> dict[str, bytes]:
        deadline = time.monotonic() + self.settings.timeout_s

        def fetched(name: str) -> bytes:
            reply = self.s3.get_object(Bucket=self.settings.bucket, Key=f"{self.prefix}out/{name}")
            return bytes(reply["Body"].read())

        return {
            name: patiently(functools.partial(fetched, name), progress, self.settings.poll_s, deadline)
            for name in RESULTS
        }

    def clean_up(self) -> None:
        """The job's instances go (those that have not gone themselves), and so does everything of the
        job in the bucket but the shards, which the next training of the same data reuses."""
        try:
            listed = job_instances(self.ec2, self.job_id)
            for _ in range(TERMINATE_TRIES if not self.instance and self.fresh else 0):
                if listed:  # (its id never heard of: a process killed as it launched; by its tag, a moment after)
                    break
                time.sleep(self.settings.poll_s)
                listed = job_instances(self.ec2, self.job_id)
            running = [i["InstanceId"] for i in listed if i["State"]["Name"] not in _GONE]
            if self.instance and self.instance not in running and (self.fresh or not listed):
                running.append(self.instance)  # not listed yet, or forgotten: tried, and NotFound said below
            for attempt in range(TERMINATE_TRIES):
                try:
                    if running:
                        self.ec2.terminate_instances(InstanceIds=running)
                    break
                except Exception as e:  # one launched a moment ago may not be known yet: it will be
                    if not _not_found(e):
                        raise
                    if not self.fresh:
                        break  # launched long ago and forgotten by AWS: terminated (and its model installed)
                    if attempt == TERMINATE_TRIES - 1:
                        raise
                    time.sleep(self.settings.poll_s)
        except Exception as e:  # the one thing that must not pass unsaid: it costs money by the hour
            raise CloudError(
                f"could not terminate instance {self.instance or 'tagged vibrary-job=' + self.job_id} ({e}): terminate"
                " it in the EC2 console"
            ) from e
        try:
            listed = self.s3.list_objects_v2(Bucket=self.settings.bucket, Prefix=self.prefix).get("Contents", [])
            if listed:
                objects = [{"Key": o["Key"]} for o in listed]
                self.s3.delete_objects(Bucket=self.settings.bucket, Delete={"Objects": objects})
        except Exception as e:
            log.warning("could not remove s3://%s/%s: %s", self.settings.bucket, self.prefix, e)


def train_in_cloud(
    manifest: Manifest,
    shard_dir: Path,
    *,
    name: str,
    base: str,
    options: str,
    confirm: Callable[[str], bool],
    progress: Callable[[dict[str, Any]], None],
    on_started: Callable[[str, str], None] = lambda job_id, instance: None,
    on_launched: Callable[[str, str], None] = lambda job_id, instance: None,
) -> dict[str, bytes]:
    """Train on a GPU instance; returns model.onnx, learning_curve.png, confusion_matrix.png and
    summary.json. confirm(text) is shown the cost estimate before anything is uploaded or launched
    (False: CostDeclined); progress(dict) gets TrainProgress fields (state UPLOADING, WAITING or
    TRAINING, and the rest). An exception raised by progress cancels the job: the instance is
    terminated and the job's files removed, as on any failure; but Left, once on_started(job id,
    instance id) has said that the job has all it needs, leaves it running. on_launched(job id, instance
    id) hears of an instance launched while the upload goes on, so that a client that dies meanwhile
    leaves a record to end it by (abandon). AWS errors come as CloudError."""
    if base not in ("", "demo", "none"):
        raise CloudError(f"a cloud training starts from base demo or none, not {base!r}")
    with _aws() as (settings, s3, ec2):
        region = s3.meta.region_name
        bucket = settings.bucket
        check_bucket(s3, bucket)
        missing = missing_shards(s3, bucket, manifest)
        total = sum(size for _, size in missing)
        if not confirm(estimate(settings, manifest, options, total, base).text):
            raise CostDeclined("not launched: the cost estimate was not accepted")
        job = _Job(settings, s3, ec2, region)
        spec = {"manifest": manifest.to_json(), "name": name or manifest.name, "base": base, "options": options or "{}"}
        put_json(s3, bucket, f"{job.prefix}job.json", spec)
        try:
            started, done, beat = time.monotonic(), 0, time.monotonic()
            alive = f"{job.prefix}{UPLOADING}"  # (an instance whose uploader went quiet ends itself: s3job)
            put_json(s3, bucket, alive, {"uploaded_bytes": 0})

            def sent(n: int) -> None:
                nonlocal done, beat
                done += n
                progress({"state": "UPLOADING", "uploaded_bytes": done, "upload_bytes": total})
                if time.monotonic() - beat >= HEARTBEAT_S:
                    beat = time.monotonic()
                    try:
                        put_json(s3, bucket, alive, {"uploaded_bytes": done})
                    except Exception as e:  # (throttled): the next part tries again; the upload goes on
                        log.warning("could not tell the instance the upload goes on: %s", e)
                elapsed = time.monotonic() - started
                if not job.instance and launch_due(done, total, elapsed, settings.boot_s):
                    rest = (total - done) * elapsed / done
                    job.launch(
                        progress,
                        f"the upload ends in about {rest:.0f} s, the instance boots in {settings.boot_s:g} s",
                        on_launched,
                    )

            progress({"state": "UPLOADING", "uploaded_bytes": 0, "upload_bytes": total})
            if launch_due(0, total, 0.0, settings.boot_s):
                job.launch(progress, "the upload is short", on_launched)
            upload_shards(s3, bucket, missing, shard_dir, sent)  # the last piece launches at the latest
            on_started(job.job_id, job.instance)
        except Left:  # the daemon stops before the job has all it needs: nobody could go on with it
            job.clean_up()
            ended = f": instance {job.instance} was terminated" if job.instance else ""
            raise CloudError(
                f"the daemon stopped during the upload{ended}; start the training again (the shards uploaded are kept)"
            ) from None
        except BaseException:  # (on_started too: a job nobody has on record would never be collected)
            job.clean_up()  # an instance waiting for shards that never come would only cost money
            raise
        return _outcome(job, progress)


def collect(
    job_id: str, instance: str, progress: Callable[[dict[str, Any]], None], launched_at: float = 0.0
) -> dict[str, bytes]:
    """The results of a job that an earlier client left running (Left), as train_in_cloud returns them.
    `instance` is the one the client saw launched; a replacement launched since is found by its tag."""
    with _aws() as (settings, s3, ec2):
        deadline = time.monotonic() + settings.timeout_s  # (a daemon started before the network is up)
        launched = patiently(lambda: job_instances(ec2, job_id), progress, settings.poll_s, deadline)
        latest = launched[-1]["InstanceId"] if launched else instance
        job = _Job(settings, s3, ec2, s3.meta.region_name, job_id, latest, launched_at if latest == instance else 0.0)
        return _outcome(job, progress)


def abandon(job_id: str, instance: str, launched_at: float = 0.0) -> None:
    """End a job whose client died during its upload: its instances terminated, its files but the shards
    removed (the shards stay for the next try)."""
    with _aws() as (settings, s3, ec2):
        _Job(settings, s3, ec2, s3.meta.region_name, job_id, instance, launched_at).clean_up()


def _outcome(job: _Job, progress: Callable[[dict[str, Any]], None]) -> dict[str, bytes]:
    """Wait for the job and fetch its results, then clean up; unless progress says Left."""
    try:
        job.wait(progress)
        files = job.results(progress)
    except Left:
        raise  # the instance trains on and terminates itself; collect() picks up what it leaves
    except BaseException as e:  # (AWS's own errors, raw here: _aws makes them AwsRefused on their way out)
        if not credentials_gone(e):  # (with none, nothing could be ended: it trains on, to be collected later)
            job.clean_up()
        raise
    job.clean_up()
    return files
