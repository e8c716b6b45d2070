"""The trainer: a real service over a real socket turns spectrogram shards into a model the daemon runs."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import grpc  # noqa: E402
from vibrary.clients.client import Client, DaemonError  # noqa: E402
from vibrary.clients.trainer_client import TrainerClient  # noqa: E402
from vibrary.daemon import config, dataset, shards  # noqa: E402
from vibrary.daemon.index import Index  # noqa: E402
from vibrary.daemon.infer import Model  # noqa: E402
from vibrary.daemon.spectrogram import SpectrogramParams, dequantize, log_mel, quantize  # noqa: E402
from vibrary.daemon.training import JobRecord, TrainingError, TrainProgress, resume  # noqa: E402
from vibrary.proto import daemon_pb2  # noqa: E402
from vibrary.proto import trainer_pb2 as pb  # noqa: E402
from vibrary.trainer.augment import augment  # noqa: E402
from vibrary.trainer.export import exported, max_difference, to_onnx  # noqa: E402
from vibrary.trainer.network import TagNet  # noqa: E402
from vibrary.trainer.train import TrainConfig, _load_base, split_by_group, train  # noqa: E402

from tests.conftest import json_lines, start_daemon, vibrary, wait_for  # noqa: E402
from tests.synth import KINDS, band_model, sound, write_kinds  # noqa: E402

P = SpectrogramParams()


def spectrograms(per_kind: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    codes, labels, groups = [], [], []
    for label, kind in enumerate(KINDS):
        for i in range(per_kind):
            clip = np.zeros(P.n_samples, np.float32)
            x = sound(kind, rng)[: P.n_samples]
            clip[: len(x)] = x
            codes.append(quantize(log_mel(clip[None], P), P))
            labels.append(label)
            groups.append(f"{kind}-{i % 2}")
    return np.stack(codes), np.array(labels), groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_trainer(home: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`vibrary trainer serve` as its own process on a real TCP port, once it answers. The port is its own
    pick, said in its --json line (one found free here first could be taken meanwhile by another test's)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vibrary.clients.cli", "trainer", "serve", "--listen", "127.0.0.1:0", "--json"],
        env={**os.environ, "VIBRARY_HOME": str(home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    said = proc.stdout.readline()
    assert said, proc.communicate(timeout=30)[1].decode(errors="replace")[-2000:]
    port = json.loads(said)["serving"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture
def trainer_service(tmp_path: Path) -> Iterator[str]:
    proc, target = _start_trainer(tmp_path / "trainer-home")
    try:
        yield target
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_end_to_end_folders_to_a_model_that_tags_new_clips(
    model_home: Path, tmp_path: Path, trainer_service: str
) -> None:
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    created = json_lines(
        vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home).stdout
    )[0]
    assert created["clips"] == 24 and created["classes"] == sorted(KINDS) and created["ratio"] > 20
    out = vibrary(
        "train",
        "kinds",
        "--json",
        "--trainer",
        trainer_service,
        "--base",
        "none",
        "--epochs",
        "12",
        home=model_home,
        timeout=600,
    )
    trained = json_lines(out.stdout)[-1]
    assert "your smallest tag, 'noise', has 8 examples: expect" in out.stderr  # said before the training starts
    assert (trained["model"], trained["version"], trained["classes"]) == ("kinds", 1, sorted(KINDS))
    assert trained["seconds"] > 0 and trained["val_clips"] == 0  # 8 a class: every clip trains, none validates
    assert trained["accuracy_of"] == "training clips (none held out)"
    assert trained["val_accuracy"] == trained["summary"]["train_accuracy"] > 0.5  # a number, as the contract has it
    for plot in trained["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    write_kinds(tmp_path / "new", per_kind=5, seed=99)  # clips the model has never seen
    tagged = json_lines(vibrary("tag", "--json", "--model", "kinds", str(tmp_path / "new"), home=model_home).stdout)
    assert len(tagged) == 15
    right = sum(line["tags"][0]["tag"] == Path(line["path"]).parent.name for line in tagged)
    assert right >= 14, tagged
    listed = json_lines(vibrary("models", "list", "--json", home=model_home).stdout)
    models = {m["name"]: m["active"] for m in listed if not m["builtin"]}
    assert models == {"bands": True, "kinds": True}  # a new tag family beside the existing one


def _store(blobs: dict[str, bytes], folder: Path) -> None:
    """Shards on disk under their sha256, as `vibrary dataset create` leaves them."""
    for digest, blob in blobs.items():
        (folder / f"{digest}.npz").write_bytes(blob)


def _manifest_and_blobs(per_kind: int = 6, seed: int = 0) -> tuple[shards.Manifest, dict[str, bytes]]:
    codes, labels, groups = spectrograms(per_kind, seed)
    return shards.write("t", list(KINDS), P, codes, labels, groups)


def test_upload_resumes_after_a_disconnect_and_never_resends(trainer_service: str, tmp_path: Path) -> None:
    manifest, blobs = _manifest_and_blobs(per_kind=100)  # > 1 shard, several chunks each
    assert len(manifest.shards) >= 2
    first = manifest.shards[0]
    data = blobs[first.sha256]
    with TrainerClient(trainer_service) as client:
        half = len(data) // 2

        arrived = threading.Event()

        def broken() -> Iterator[pb.ShardChunk]:
            yield pb.ShardChunk(sha256=first.sha256, offset=0, data=data[:half], size=len(data))
            arrived.wait(30)
            raise ConnectionError("network went away")  # the client dies mid-upload

        call = client.stub.UploadShards.future(broken())
        wait_for(lambda: {s.sha256: s.have_bytes for s in client.missing(manifest)}.get(first.sha256) == half)
        arrived.set()
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
        missing = {s.sha256: s.have_bytes for s in client.missing(manifest)}
        assert missing[first.sha256] == half and len(missing) == len(manifest.shards)

        _store(blobs, tmp_path)
        sent = client.upload(manifest, tmp_path)
        assert sent == manifest.size - half  # only what was missing
        assert client.missing(manifest) == []
        assert client.upload(manifest, tmp_path) == 0  # a second upload sends nothing


def test_an_upload_stopped_here_raises_its_own_error_and_logs_no_traceback(
    trainer_service: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancel during the upload (the progress callback raises) put gRPC's "Exception iterating requests!"
    traceback in the daemon's log and came back as UNKNOWN with those words; so did a shard that could not
    be read, whose own error was lost."""
    manifest, blobs = _manifest_and_blobs(per_kind=100)
    _store(blobs, tmp_path)

    class Stop(Exception):
        pass

    def cancelled(n: int) -> None:
        raise Stop("cancelled by the user")

    with TrainerClient(trainer_service) as client:
        with pytest.raises(Stop):
            client.upload(manifest, tmp_path, cancelled)
        left = sum(s.size - s.have_bytes for s in client.missing(manifest))
        assert 0 < left < manifest.size  # what came is kept, to resume from
        (tmp_path / f"{manifest.shards[-1].sha256}.npz").unlink()  # the dataset's folder cleaned up meanwhile
        with pytest.raises(FileNotFoundError, match=manifest.shards[-1].sha256):
            client.upload(manifest, tmp_path)
    assert "Exception iterating requests" not in caplog.text


def test_a_full_disk_on_the_trainer_is_said_without_its_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard that could not be stored (the trainer's disk full) came back UNKNOWN, "Exception calling
    application: [Errno 28] No space left on device: '/data/tenants/alice/shards/….part'"."""
    import errno

    from vibrary.trainer import service

    def full(self: object, chunk: object, path: Path, context: object) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device", str(path.with_suffix(".part")))

    monkeypatch.setattr(service.TrainerService, "_store", full)
    manifest, blobs = _manifest_and_blobs()
    _store(blobs, tmp_path)
    serving = service.serve(tmp_path / "trainer", "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client, pytest.raises(DaemonError) as err:
            client.upload(manifest, tmp_path)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "No space left on device" in str(err.value)
        assert str(tmp_path) not in str(err.value)
    finally:
        serving.stop(grace=0)


def test_a_trainer_gone_after_it_answered_is_not_blamed_on_the_address_or_tls(tmp_path: Path) -> None:
    """A trainer restarted mid-job was met with "is it running there? One that serves TLS needs
    VIBRARY_TRAINER_CA set": of a plain connection that had worked a second before."""
    from vibrary.trainer import service

    serving = service.serve(tmp_path / "trainer", "127.0.0.1:0")
    with TrainerClient(f"127.0.0.1:{serving.port}", timeout=5) as client:
        try:
            assert client.jobs() == []
        finally:
            serving.stop(grace=0)
        with pytest.raises(DaemonError) as err:
            client.jobs()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "it answered before" in str(err.value)
    assert "VIBRARY_TRAINER_CA" not in str(err.value)


def test_two_uploads_of_one_shard_at_once_store_it_whole(trainer_service: str, tmp_path: Path) -> None:
    """Two uploads of one shard at once (a retry while the old stream still wrote, two terminals) could
    write into the file the other had just verified and renamed: a corrupt shard on record as present,
    never uploaded again, and every training on it failed (a reviewer saw it about once in 20 tries of
    2.5 MB shards; this tries 40)."""
    manifest, _ = _manifest_and_blobs()
    rng = np.random.default_rng(0)

    def upload(client: TrainerClient, one: shards.Manifest) -> None:
        with contextlib.suppress(Exception):  # a refused chunk is fine: the other upload stores the shard
            client.upload(one, tmp_path)

    with TrainerClient(trainer_service) as a, TrainerClient(trainer_service) as b:
        for _ in range(40):
            blob = rng.bytes(2_500_000)  # (the upload checks bytes against the hash, not what they hold)
            digest = shards.sha256_bytes(blob)
            (tmp_path / f"{digest}.npz").write_bytes(blob)
            one = dataclasses.replace(manifest, shards=[shards.ShardInfo(digest, 10, len(blob))])
            threads = [threading.Thread(target=upload, args=(c, one)) for c in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            (held,) = (tmp_path / "trainer-home").rglob(f"{digest}.npz")  # (the trainer_service fixture's home)
            assert shards.sha256_bytes(held.read_bytes()) == digest


def test_a_shard_size_that_cannot_be_is_refused_without_the_servers_paths(trainer_service: str) -> None:
    """MissingShards of a shard of 0 bytes answered UNKNOWN, with the trainer's data path in its words."""
    with TrainerClient(trainer_service) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.stub.MissingShards(pb.ShardList(shards=[pb.ShardStatus(sha256="a" * 64, size=0)]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "/" not in (e.value.details() or "")


def test_a_refusal_that_quotes_a_huge_field_arrives_cut_with_its_code(trainer_service: str) -> None:
    """A job id or sha256 of 1 MB was quoted whole in the refusal, over gRPC's 16 KB trailer limit: the caller
    got RESOURCE_EXHAUSTED "Stream removed" instead of NOT_FOUND or INVALID_ARGUMENT."""
    huge = "a" * (1 << 20)
    with TrainerClient(trainer_service) as client:
        for call, code in [
            (lambda: client.stub.CancelJob(pb.JobRef(id=huge), timeout=10), grpc.StatusCode.NOT_FOUND),
            (
                lambda: client.stub.MissingShards(
                    pb.ShardList(shards=[pb.ShardStatus(sha256=huge, size=1)]), timeout=10
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == code and len(e.value.details() or "") < 4000


def test_training_options_that_are_not_a_json_object_are_refused_by_name(trainer_service: str) -> None:
    """StartJob with config "[]" answered UNKNOWN ("'list' object has no attribute 'items'"); config that
    was not JSON said only "Expecting value", not which field."""
    manifest, _ = _manifest_and_blobs()
    with TrainerClient(trainer_service) as client:
        deep = "[" * 100_000 + "]" * 100_000
        for config, reason in [
            ("[]", "must be a JSON object"),
            ("7", "must be a JSON object"),
            ("{", "not JSON"),
            (deep, "nested too deeply"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                client.stub.StartJob(pb.JobRequest(manifest=manifest.to_json(), config=config), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, config
            assert "training options" in (e.value.details() or "") and reason in (e.value.details() or "")


def test_a_model_name_that_cannot_be_or_a_broken_manifest_is_refused_by_name(
    trainer_service: str, tmp_path: Path
) -> None:
    """StartJob trained a model named a/b, with a NUL or of 1 MB (only the daemon checked names): the trainer
    follows the daemon's rule for the request's name, or else the manifest's. A manifest missing a field
    said only "bad dataset manifest: 'spectrogram'"; a string of classes was taken for a list of its letters. A
    base that is a path was opened by the trainer's job runner (a named pipe there wedged every job after)."""
    manifest, blobs = _manifest_and_blobs()
    _store(blobs, tmp_path)
    raw = json.loads(manifest.to_json())
    with TrainerClient(trainer_service) as client:
        client.upload(manifest, tmp_path)  # nothing else in the way
        named = [(name, manifest.to_json()) for name in ("a/b", "a\0b", "x" * (1 << 20))]
        for name, text in [*named, ("", json.dumps({**raw, "name": "../up"}))]:
            with pytest.raises(grpc.RpcError) as e:
                client.stub.StartJob(pb.JobRequest(manifest=text, name=name, base="none"), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model name" in (e.value.details() or "")
        broken = [({k: v for k, v in raw.items() if k != "spectrogram"}, "no 'spectrogram' field")]
        broken.append(({**raw, "shards": [{"sha256": "a" * 64, "clips": 1}]}, "field 'shards': no 'size'"))
        broken.append(({**raw, "classes": "tone"}, "field 'classes': not a list"))  # was the classes t, o, n, e
        broken.append(({**raw, "classes": ["a", 1]}, "field 'classes': not a list of names"))
        shard = {"sha256": "a" * 64, "clips": -3, "size": 10}
        broken.append(({**raw, "shards": [shard]}, "field 'shards': a shard of -3 clips in 10 bytes"))
        # names the daemon would refuse the trained model for (after the hours of its training)
        broken.append(({**raw, "classes": ["Kick", "kick"]}, "classes: names 'kick' more than once"))
        broken.append(({**raw, "classes": ["or", "kick"]}, "read as search syntax"))
        broken.append(({**raw, "classes": ["kick", "red\x1b[31m"]}, "holds control characters"))
        for text, reason in broken:
            with pytest.raises(grpc.RpcError) as e:
                client.stub.StartJob(pb.JobRequest(manifest=json.dumps(text), name="ok", base="none"), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in (e.value.details() or "")
        for change in ({"n_mels": 64}, {"mono": False}):  # queued, then failed: "differs in ['embed.0.weight']"
            other = json.dumps({**raw, "spectrogram": {**raw["spectrogram"], **change}})
            with pytest.raises(grpc.RpcError) as e:
                client.stub.StartJob(pb.JobRequest(manifest=other, name="ok", base="demo"), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "do not fit the demo base" in (
                e.value.details() or ""
            )
        for device, said in (("cuda:99", "device 'cuda:99': this trainer has"), ("cuda:00", "device 'cuda:00': ")):
            cuda = json.dumps({"device": device})  # none here (or not that many): said at once, not by the job
            with pytest.raises(grpc.RpcError) as e:
                client.stub.StartJob(pb.JobRequest(manifest=manifest.to_json(), config=cuda, base="none"), timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in (e.value.details() or "")
        (tmp_path / "base.pt").write_text("not a checkpoint")  # a path of the trainer's machine: a pipe wedged it
        with pytest.raises(grpc.RpcError) as e:
            client.stub.StartJob(pb.JobRequest(manifest=manifest.to_json(), base=str(tmp_path / "base.pt")), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected demo or none" in (
            e.value.details() or ""
        )
        assert list(client.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == []


def test_a_start_before_a_large_upload_names_a_few_missing_shards(trainer_service: str) -> None:
    """Every absent shard was named: over ~1,200 the message exceeded what gRPC carries (RESOURCE_EXHAUSTED
    instead of the reason)."""
    manifest, _ = _manifest_and_blobs()
    many = [shards.ShardInfo(f"{i:064x}", 10, 100) for i in range(1500)]
    with TrainerClient(trainer_service) as client, pytest.raises(DaemonError) as e:
        client.start(dataclasses.replace(manifest, shards=many), "big", "none")
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "and 1490 more" in str(e.value)


def test_spectrograms_larger_than_a_trainer_takes_are_refused_by_the_manifest() -> None:
    """A shard may unpack to what its manifest's spectrogram shape allows: a client's n_mels of 10^6 let a
    10 MB upload allocate 66 GB on the trainer."""
    manifest, _ = _manifest_and_blobs()
    raw = json.loads(manifest.to_json())
    raw["spectrogram"]["n_mels"] = 1_000_000
    with pytest.raises(shards.ShardError, match="larger than a trainer takes"):
        shards.Manifest.from_json(json.dumps(raw))


@pytest.mark.parametrize(("field", "value"), [("n_mels", 8), ("duration_s", 0.3)])
def test_spectrograms_smaller_than_the_network_takes_are_refused_by_the_manifest(field: str, value: float) -> None:
    """Taken, uploaded and queued, they failed in training with "internal error: Output size is too small"."""
    from vibrary.trainer.network import TagNet

    manifest, _ = _manifest_and_blobs()
    raw = json.loads(manifest.to_json())
    raw["spectrogram"][field] = value
    with pytest.raises(shards.ShardError, match=r"smaller than a trainer takes \(16 × 32"):
        shards.Manifest.from_json(json.dumps(raw))
    net = TagNet(2, n_mels=shards.MIN_MELS).eval()  # the least it takes, it takes
    assert net(torch.zeros(1, 1, shards.MIN_MELS, shards.MIN_FRAMES)).shape == (1, 2)


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_a_trainer_gives_back_the_disk_of_finished_jobs_and_stale_shards(tmp_path: Path) -> None:
    """Collected jobs go a day later, uncollected ones a month later; shards a week after their last use,
    except those an unfinished job trains on (here one spared for the daemon that started it); a shard
    that went is simply uploaded again."""
    from vibrary.trainer.service import serve

    root = tmp_path / "trainer"
    sets = {name: _manifest_and_blobs(per_kind=4, seed=seed) for seed, name in enumerate("abcde")}
    for name, (_, blobs) in sets.items():
        (tmp_path / name).mkdir()
        _store(blobs, tmp_path / name)
    one_epoch = json.dumps({"epochs": 1})
    serving = serve(root, "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            ids = {}
            for name in "abcde":
                client.upload(sets[name][0], tmp_path / name)
            for name in "ab":
                ids[name] = client.start(sets[name][0], name, "none", one_epoch).id
                assert list(client.watch(ids[name]))[-1].state == pb.Job.SUCCEEDED
            client.download(ids["a"])  # a is collected, b never
            ids["c"] = client.start(sets["c"][0], "c", "none", json.dumps({"epochs": 500})).id
            ids["d"] = client.start(sets["d"][0], "d", "none", one_epoch).id  # queued behind c
            assert client.cancel(ids["d"]).state == pb.Job.CANCELLED
            wait_for(lambda: any(root.glob(f"tenants/*/jobs/{ids['c']}/checkpoint.pt")), timeout=120)
    finally:
        serving.stop(grace=0)  # c is cut off mid-training: unfinished, it needs its shards
    jobs = {name: next(root.glob(f"tenants/*/jobs/{job_id}")) for name, job_id in ids.items()}
    shards = next(root.glob("tenants/*/shards"))
    _age(jobs["a"] / "collected", 2)
    _age(jobs["b"] / "job.json", 2)
    _age(jobs["d"] / "job.json", 31)
    for shard in shards.glob("*.npz"):
        if shard.stem not in {s.sha256 for s in sets["e"][0].shards}:  # e was uploaded just now
            _age(shard, 8)
    abandoned = shards / f"{'0' * 64}.part"
    abandoned.write_bytes(b"half an upload")
    _age(abandoned, 8)

    serving = serve(root, "127.0.0.1:0", resume=[], spare=[ids["c"]])
    try:
        assert [name for name, folder in jobs.items() if folder.exists()] == ["b", "c"]
        left = {p.stem for p in shards.glob("*.npz")}
        for name, kept in {"a": False, "b": False, "c": True, "e": True}.items():
            assert all((s.sha256 in left) == kept for s in sets[name][0].shards), name
        assert not abandoned.exists()
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            assert {job.id for job in client.jobs()} == {ids["b"]}  # c is the daemon's business
            assert client.upload(sets["a"][0], tmp_path / "a") == sets["a"][0].size  # sent again, whole
            assert client.download(ids["b"])["model.onnx"]  # an uncollected result waits for its caller
    finally:
        serving.stop(grace=0)


def test_watches_of_jobs_leave_the_trainer_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each WatchJob stream holds a server thread: 64 of them (one tenant could open them) left none for any
    other call, the health check included."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from vibrary.trainer import service

    monkeypatch.setattr(service, "MAX_WATCHES", 2)  # (the one user of an open trainer has them all)
    manifest, blobs = _manifest_and_blobs(per_kind=2, seed=0)
    (tmp_path / "shards").mkdir()
    _store(blobs, tmp_path / "shards")
    serving = service.serve(tmp_path / "trainer", "127.0.0.1:0")
    target = f"127.0.0.1:{serving.port}"
    watchers = [TrainerClient(target) for _ in range(3)]
    try:
        with TrainerClient(target) as client:
            client.upload(manifest, tmp_path / "shards")
            job = client.start(manifest, "k", "none", json.dumps({"epochs": 400}))
            streams = [w.watch(job.id) for w in watchers[:2]]
            assert [next(s).id for s in streams] == [job.id] * 2  # each one is being served
            with pytest.raises(DaemonError) as refused:
                next(watchers[2].watch(job.id))
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "close one" in str(refused.value)
            with grpc.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            watchers[0].close()  # one closed: room for another

            def room() -> bool:
                with TrainerClient(target) as again:
                    try:
                        return next(again.watch(job.id)).id == job.id
                    except DaemonError:
                        return False

            wait_for(room)
            client.cancel(job.id)
    finally:
        for w in watchers:
            w.close()
        serving.stop(grace=0)


@pytest.mark.parametrize(("fault", "kept"), [(RuntimeError("disk full"), True), (ValueError("NaN weights"), False)])
def test_a_job_failed_by_the_machine_keeps_its_epochs_and_one_failed_by_its_own_state_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Exception, kept: bool
) -> None:
    """A full disk (torch's words: "unexpected pos 112832") failed a job that had taken up the epochs of the
    same job cancelled before, and dropped them; a failure of the training's own (a ValueError) may be the
    state itself, which would fail every run that went on from it."""
    from vibrary.trainer import pipeline, service

    def failing(*args: object, **kwargs: object) -> None:
        checkpoint = args[-1]
        assert isinstance(checkpoint, Path)
        checkpoint.write_bytes(b"epoch 5")  # as train() saves one after each epoch
        raise fault

    monkeypatch.setattr(pipeline, "train_to_files", failing)
    manifest, blobs = _manifest_and_blobs(per_kind=2, seed=0)
    (tmp_path / "shards").mkdir()
    _store(blobs, tmp_path / "shards")
    serving = service.serve(tmp_path / "trainer", "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            client.upload(manifest, tmp_path / "shards")
            job = client.start(manifest, "k", "none", json.dumps({"epochs": 9}))
            end = list(client.watch(job.id))[-1]
    finally:
        serving.stop(grace=0)
    assert end.state == pb.Job.FAILED and str(fault) in end.error
    assert len(list((tmp_path / "trainer").glob("tenants/*/leftovers/*.pt"))) == kept


def test_a_followed_job_cut_off_goes_on_when_its_caller_starts_it_again(tmp_path: Path) -> None:
    """A `vibrary train` killed mid-training (kill -9, a laptop shut): the trainer the next run starts failed
    the job and dropped its checkpoint, and the same command trained from the first epoch again. One that gave
    up on a trainer out of reach queued a second job behind the first, which nobody would collect."""
    from vibrary.trainer.service import serve

    root = tmp_path / "trainer"
    manifest, blobs = _manifest_and_blobs(per_kind=4, seed=0)
    (tmp_path / "shards").mkdir()
    _store(blobs, tmp_path / "shards")
    long = json.dumps({"epochs": 400})
    serving = serve(root, "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            client.upload(manifest, tmp_path / "shards")
            first = client.start(manifest, "k", "none", long, followed=True)
            assert client.start(manifest, "k", "none", long, followed=True).id == first.id  # followed where it is
            other = client.start(manifest, "k", "none", json.dumps({"epochs": 3}), followed=True)
            assert other.id != first.id and client.cancel(other.id).state == pb.Job.CANCELLED  # another job
            next(u for u in client.watch(first.id) if u.epoch >= 4)
    finally:
        serving.stop(grace=0)  # cut off mid-training, at its 4th epoch or later
    serving = serve(root, "127.0.0.1:0", resume=[])  # as the next `vibrary train` starts its own trainer
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            (old,) = [job for job in client.jobs() if job.id == first.id]
            assert old.state == pb.Job.FAILED and "it goes on from its last epoch" in old.error
            again = client.start(manifest, "k", "none", long, followed=True)
            assert again.id != first.id
            went_on_from = next(u.epoch for u in client.watch(again.id) if u.epoch > 0)
            assert not list(root.glob("tenants/*/leftovers/*.pt"))  # taken up
            client.cancel(again.id)  # Ctrl-C, a `kill`, a terminal closed: its epochs are kept all the same
            assert [u.state for u in client.watch(again.id)][-1] == pb.Job.CANCELLED
            assert len(list(root.glob("tenants/*/leftovers/*.pt"))) == 1
            third = client.start(manifest, "k", "none", long, followed=True)
            resumed_at = next(u.epoch for u in client.watch(third.id) if u.epoch > 0)
            client.cancel(third.id)
    finally:
        serving.stop(grace=0)
    assert went_on_from >= 3 and resumed_at >= 3  # from scratch: 1


def test_a_watch_of_a_trainer_that_stops_answering_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer host that hangs (here: SIGSTOP) keeps its connection open: a `vibrary train` following its
    job waited, silent, for as long as that lasted (11 minutes in a QA session) and never gave up."""
    from vibrary.clients import trainer_client

    monkeypatch.setattr(trainer_client, "KEEPALIVE_MS", (6_000, 3_000))  # (30 s and 20 s in use)
    proc, target = _start_trainer(tmp_path / "trainer-home")
    manifest, blobs = _manifest_and_blobs(per_kind=4, seed=0)
    (tmp_path / "shards").mkdir()
    _store(blobs, tmp_path / "shards")
    try:
        with TrainerClient(target) as client:
            client.upload(manifest, tmp_path / "shards")
            job = client.start(manifest, "k", "none", json.dumps({"epochs": 400}), followed=True)
            updates = client.watch(job.id)
            next(u for u in updates if u.epoch >= 1)
            proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            with pytest.raises(DaemonError):
                for _ in updates:
                    pass
            assert time.monotonic() - stopped < 30
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=30)


def test_a_shard_said_to_be_there_is_not_pruned_before_its_job_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune that has judged a week-old shard stale when a client asks for it: either the shard goes
    first and the client is told to upload it again, or the client's asking keeps it; never "you have
    it" and then gone, which failed the job's start."""
    from vibrary.trainer import prune
    from vibrary.trainer.service import serve

    manifest, blobs = _manifest_and_blobs(per_kind=4)
    _store(blobs, tmp_path)
    judged, asked = threading.Event(), threading.Event()
    real_age = prune._age

    def age_then_pause(path: Path) -> float:
        days = real_age(path)
        if threading.current_thread().name == "pruner" and not judged.is_set():
            judged.set()  # the first shard is judged stale; the client asks while it is
            asked.wait(1.0)
        return days

    monkeypatch.setattr(prune, "_age", age_then_pause)
    serving = serve(tmp_path / "trainer", "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            client.upload(manifest, tmp_path)
            for shard in (tmp_path / "trainer").glob("tenants/*/shards/*.npz"):
                _age(shard, 8)
            pruner = threading.Thread(target=serving.service._prune, name="pruner")
            pruner.start()
            assert judged.wait(10)
            client.upload(manifest, tmp_path)
            asked.set()
            pruner.join()
            job = client.start(manifest, "raced", "none", json.dumps({"epochs": 1}))
            assert list(client.watch(job.id))[-1].state == pb.Job.SUCCEEDED
    finally:
        serving.stop(grace=0)


def test_corrupt_shard_is_refused(trainer_service: str) -> None:
    manifest, blobs = _manifest_and_blobs()
    shard = manifest.shards[0]
    bad = bytearray(blobs[shard.sha256])
    bad[len(bad) // 2] ^= 0xFF
    with TrainerClient(trainer_service) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.UploadShards(
                iter([pb.ShardChunk(sha256=shard.sha256, offset=0, data=bytes(bad), size=len(bad))])
            )
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert [s.have_bytes for s in client.missing(manifest)] == [0]  # nothing half-kept
        with pytest.raises(DaemonError, match="not uploaded"):
            client.start(manifest, "t", "none")


def test_a_shard_damaged_on_the_trainers_disk_is_sent_again(trainer_service: str, tmp_path: Path) -> None:
    """A shard damaged on the trainer's disk failed every training of it ("corrupt shard"), and was never sent
    again: the trainer said it had it. Cut short, it is asked for again; damaged otherwise, the job that reads
    it says so and deletes it, and the next upload sends it."""
    manifest, blobs = _manifest_and_blobs()
    _store(blobs, tmp_path)
    shard = manifest.shards[0]
    with TrainerClient(trainer_service) as client:
        client.upload(manifest, tmp_path)
        (stored,) = (tmp_path / "trainer-home").rglob(f"{shard.sha256}.npz")
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF  # a bit flipped on disk
        stored.write_bytes(data)
        first, second = (client.start(manifest, name, "none", json.dumps({"epochs": 1})) for name in "tu")
        final = list(client.watch(first.id))[-1]
        assert final.state == pb.Job.FAILED and f"shard {shard.sha256[:12]} was damaged" in final.error, final
        final = list(client.watch(second.id))[-1]  # queued behind it: the trainer's own path, said bare
        assert final.state == pb.Job.FAILED and "is no longer on the trainer" in final.error, final
        assert str(tmp_path) not in final.error
        assert client.upload(manifest, tmp_path) == shard.size  # sent again, whole
        stored.write_bytes(stored.read_bytes()[:100])  # cut short: asked for again before any job
        assert [s.sha256 for s in client.missing(manifest)] == [shard.sha256]
        client.upload(manifest, tmp_path)
        final = list(client.watch(client.start(manifest, "t", "none", json.dumps({"epochs": 1})).id))[-1]
        assert final.state == pb.Job.SUCCEEDED, final


def test_a_watch_that_gives_no_caller_id_does_not_keep_a_cancelled_job_going(
    trainer_service: str, tmp_path: Path
) -> None:
    """A dashboard watching a followed job (no follower id) made the cancel of the one `vibrary train` that
    followed it a no-op, said as "another `vibrary train` … follows its job"."""
    manifest, blobs = _manifest_and_blobs(per_kind=30)
    _store(blobs, tmp_path)
    with TrainerClient(trainer_service) as client, TrainerClient(trainer_service) as dashboard:
        client.upload(manifest, tmp_path)
        job = client.start(manifest, "w", "none", json.dumps({"epochs": 500, "patience": 500}), followed=True)
        updates = client.watch(job.id)
        next(u for u in updates if u.epoch >= 1)
        looking = dashboard.stub.WatchJob(pb.JobRef(id=job.id))  # no follower: it only looks
        next(looking)
        assert client.cancel(job.id).followers == 0
        assert list(updates)[-1].state == pb.Job.CANCELLED
        looking.cancel()


def test_bad_datasets_get_clear_errors(trainer_service: str, tmp_path: Path) -> None:
    codes, labels, groups = spectrograms(4, 0)
    with pytest.raises(shards.ShardError, match="empty"):
        shards.write("e", list(KINDS), P, codes[:0], labels[:0], [])[0].check()
    with pytest.raises(shards.ShardError, match="at least 2"):
        shards.write("one", ["tone"], P, codes[:4], labels[:4], groups[:4])[0].check()
    wrong = SpectrogramParams(n_mels=64)
    with pytest.raises(shards.ShardError, match="expected uint8"):
        shards.unpack(shards.pack(codes, labels, groups), wrong, 3)
    with pytest.raises(shards.ShardError, match="corrupt shard"):
        shards.unpack(b"PK\x03\x04 not really a zip", P, 3)

    # a class with a single example fails the job with the reason, instead of training nonsense
    keep = np.r_[np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:1]]
    manifest, blobs = shards.write("thin", list(KINDS), P, codes[keep], labels[keep], [groups[i] for i in keep])
    _store(blobs, tmp_path)
    with TrainerClient(trainer_service) as client:
        client.upload(manifest, tmp_path)
        job = client.start(manifest, "thin", "none", json.dumps({"epochs": 1}))
        final = list(client.watch(job.id))[-1]
        assert final.state == pb.Job.FAILED and "thump (1)" in final.error
        with pytest.raises(DaemonError, match="unknown training options"):
            client.start(manifest, "thin", "none", json.dumps({"epocs": 3}))


def test_cancel_mid_training_leaves_no_model(trainer_service: str, tmp_path: Path) -> None:
    manifest, blobs = _manifest_and_blobs(per_kind=30)
    _store(blobs, tmp_path)
    with TrainerClient(trainer_service) as client:
        client.upload(manifest, tmp_path)
        job = client.start(manifest, "c", "none", json.dumps({"epochs": 500, "patience": 500}))
        updates = client.watch(job.id)
        next(u for u in updates if u.epoch >= 1)  # training is under way
        client.cancel(job.id)
        final = list(updates)[-1]
        assert final.state == pb.Job.CANCELLED and final.epoch < 500
        with pytest.raises(DaemonError) as err:
            client.download(job.id)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_restarted_trainer_keeps_finished_jobs_and_goes_on_with_the_interrupted_one(tmp_path: Path) -> None:
    manifest, blobs = _manifest_and_blobs(per_kind=10)
    _store(blobs, tmp_path)
    home = tmp_path / "trainer-home"
    proc, target = _start_trainer(home)
    try:
        with TrainerClient(target) as client:
            client.upload(manifest, tmp_path)
            done = client.start(manifest, "d", "none", json.dumps({"epochs": 2, "patience": 10}))
            assert list(client.watch(done.id))[-1].state == pb.Job.SUCCEEDED
            result = client.download(done.id)
            quick = [client.start(manifest, f"q{i}", "none", json.dumps({"epochs": 1})).id for i in range(3)]
            assert all(list(client.watch(q))[-1].state == pb.Job.SUCCEEDED for q in quick)
            busy = client.start(manifest, "b", "none", json.dumps({"epochs": 20, "patience": 20}))
            next(u for u in client.watch(busy.id) if u.epoch >= 2)  # training is under way
        proc.terminate()  # a clean stop (SIGTERM) suspends the job
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None
        logged = proc.stderr.read().decode()  # it said nothing of a job until one was suspended or failed on a bug
        assert f"job {done.id} started: " in logged and f"job {done.id} succeeded in 2 epochs" in logged, logged
        proc, target = _start_trainer(home)
        with TrainerClient(target) as client:
            gone_on = next(u for u in client.watch(busy.id) if u.epoch >= 4)
        proc.kill()  # no clean shutdown: kill -9 mid-epoch
        proc.wait(timeout=30)
        proc, target = _start_trainer(home)
        with TrainerClient(target) as client:
            jobs = {j.id: j for j in client.jobs()}
            assert list(jobs) == [done.id, *quick, busy.id]  # oldest first, as before the restarts (ids are random)
            assert jobs[done.id].state == pb.Job.SUCCEEDED and json.loads(jobs[done.id].summary)
            assert (jobs[done.id].epoch, jobs[done.id].epochs) == (2, 2)  # a finished job listed 0 of 0 epochs
            assert client.download(done.id) == result  # the finished model is still there, byte for byte
            assert jobs[busy.id].state in (pb.Job.QUEUED, pb.Job.RUNNING)  # taken up again
            final = list(client.watch(busy.id))[-1]
            assert final.state == pb.Job.SUCCEEDED
            summary = json.loads(final.summary)
            assert summary["epochs_run"] == 20 and summary["resumed_from_epoch"] >= gone_on.epoch
            assert not list(home.glob("trainer/tenants/*/jobs/*/checkpoint.pt"))  # removed once the job is over
            assert client.missing(manifest) == []  # the shards survived
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _Link:
    """A TCP relay to the trainer whose connections can be cut, as a dropped Wi-Fi or VPN cuts them."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.down = False  # while set, the trainer is out of reach: connections are closed as they come
        self.refused = threading.Event()  # a connection was closed as it came
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                near.close()
                self.refused.set()
                continue
            far = socket.create_connection(self.upstream)
            self.open += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def outage(self, after_refused_s: float = 1.0) -> None:
        """Out of reach from now (open connections cut) until `after_refused_s` after it first refused one:
        a fixed time from now could end before a loaded machine's caller even tried."""
        self.refused.clear()
        self.down = True
        self.cut()

        def back() -> None:
            self.refused.wait(60)
            time.sleep(after_refused_s)
            self.down = False

        threading.Thread(target=back, daemon=True).start()

    def cut(self) -> None:
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open = []

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_connection_cut_mid_training_loses_nothing(model_home: Path, tmp_path: Path, trainer_service: str) -> None:
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    link = _Link(trainer_service)
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    args = ["train", "kinds", "--json", "--trainer", link.address, "--base", "none", "--epochs", "40"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vibrary.clients.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with TrainerClient(trainer_service) as watcher:  # the trainer itself, not through the link
            wait_for(lambda: any(j.epoch >= 2 for j in watcher.jobs()), timeout=120)
            link.cut()  # every connection of the training drops mid-epoch; new ones get through again
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()
            assert b"reconnecting to job" in err  # the user was told
            assert re.search(rb"epoch \d+/40: loss \d", err)  # no bar on a pipe: a line per epoch instead
            trained = json_lines(out.decode())[-1]
            assert trained["model"] == "kinds" and trained["classes"] == sorted(KINDS)
            (job,) = watcher.jobs()  # the one job, trained once
            assert job.state == pb.Job.SUCCEEDED and json.loads(job.summary)["epochs_run"] > 2
    finally:
        proc.kill()
        link.close()


def test_the_daemon_waits_out_a_trainer_longer_out_of_reach_than_the_command_does(
    model_home: Path, tmp_path: Path, trainer_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer out of reach for longer than `vibrary train` waits (RECONNECT_S): the command gives up and
    says the job may still run there; the daemon (a training it follows can be left: `leave`) calls again
    until the trainer is back, then collects and installs the model."""
    from vibrary.daemon import training

    monkeypatch.setattr(training, "RECONNECT_S", 1.0)
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    dataset.build(model_home, "kinds", dataset.examples_from_folders([str(tmp_path / "examples")]))
    index = Index(config.index_path(model_home))
    link = _Link(trainer_service)
    try:
        with TrainerClient(trainer_service) as watcher:  # the trainer itself, not through the link
            for daemon_follows in (False, True):
                seen: list[TrainProgress] = []
                outcome: list[object] = []
                how = {"trainer": link.address, "base": "none", "options": {"epochs": 20}, "progress": seen.append}
                leave = threading.Event() if daemon_follows else None

                def run(how: dict[str, Any] = how, leave: threading.Event | None = leave, out: list[object] = outcome):
                    try:
                        out.append(training.train(model_home, "kinds", index=index, leave=leave, **how))
                    except TrainingError as e:
                        out.append(e)

                thread = threading.Thread(target=run)
                thread.start()
                wait_for(lambda: any(j.epoch >= 2 and j.state == pb.Job.RUNNING for j in watcher.jobs()), timeout=120)
                link.down = True
                link.cut()
                time.sleep(3 * training.RECONNECT_S)  # longer than the command waits
                link.down = False
                thread.join(timeout=300)
                if daemon_follows:
                    (trained,) = outcome
                    assert isinstance(trained, training.Trained) and trained.row.name == "kinds", trained
                    assert [m.name for m in index.models() if m.active and m.name == "kinds"] == ["kinds"]
                    assert any("reconnecting to job" in p.message for p in seen)
                    after = [p.state for p in seen][[p.state for p in seen].index("training") :]
                    assert "waiting" not in after, after  # out of reach, then back: training all along
                else:
                    (error,) = outcome
                    assert isinstance(error, TrainingError) and "out of reach for" in str(error)
                    assert "the same command goes on from the job's last finished epoch" in str(error)
                    assert seen[-1].state == "failed"
                wait_for(lambda: all(j.state == pb.Job.SUCCEEDED for j in watcher.jobs()), timeout=300)
    finally:
        link.close()
        index.close()


def test_a_connection_cut_after_a_long_quiet_spell_is_reconnected_not_given_up(
    model_home: Path, tmp_path: Path, trainer_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job queued behind another one's (or in a CPU epoch of minutes) hears nothing from the trainer for
    long: the first dropped connection after such a spell was counted out of reach since the last word, so
    `vibrary train` gave up at once and cancelled a job the trainer still had (RECONNECT_S here 1 s)."""
    from vibrary.daemon import training

    monkeypatch.setattr(training, "RECONNECT_S", 1.0)
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    dataset.build(model_home, "kinds", dataset.examples_from_folders([str(tmp_path / "examples")]))
    index = Index(config.index_path(model_home))
    link = _Link(trainer_service)
    ahead = threading.Event()  # cancels the job ahead of ours
    outcome: list[object] = []

    def run(trainer: str, epochs: int, cancel: threading.Event | None = None) -> None:
        try:
            how = {"trainer": trainer, "base": "none", "options": {"epochs": epochs, "patience": epochs}}
            outcome.append(training.train(model_home, "kinds", index=index, cancel=cancel, **how))
        except TrainingError as e:
            outcome.append(e)

    first = threading.Thread(target=run, args=(trainer_service, 500, ahead))
    ours = threading.Thread(target=run, args=(link.address, 3))
    try:
        with TrainerClient(trainer_service) as watcher:
            first.start()
            wait_for(lambda: any(j.state == pb.Job.RUNNING for j in watcher.jobs()), timeout=120)
            ours.start()
            wait_for(lambda: any(j.state == pb.Job.QUEUED for j in watcher.jobs()), timeout=60)
            time.sleep(3 * training.RECONNECT_S)  # queued: not a word from the trainer all along
            link.cut()  # one blip; the link is up again at once
            time.sleep(0.5)
            ahead.set()
            ours.join(timeout=300)
            first.join(timeout=60)
        cancelled, trained = sorted(outcome, key=lambda o: isinstance(o, training.Trained))
        assert isinstance(trained, training.Trained) and trained.row.name == "kinds", trained
        assert isinstance(cancelled, training.Cancelled)
    finally:
        ahead.set()
        link.close()
        index.close()


def test_a_cancel_the_trainer_cannot_hear_says_the_job_trains_on_there(
    model_home: Path, tmp_path: Path, trainer_service: str
) -> None:
    """The daemon cancels a training while its remote trainer is out of reach: the job there was left
    training to its end (the trainer cancels only jobs whose caller said it follows them), and the daemon
    said only "cancelled"."""
    from vibrary.daemon import training

    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    dataset.build(model_home, "kinds", dataset.examples_from_folders([str(tmp_path / "examples")]))
    index = Index(config.index_path(model_home))
    link = _Link(trainer_service)
    cancel, leave = threading.Event(), threading.Event()  # leave: followed as the daemon follows it
    outcome: list[object] = []

    def run() -> None:
        how = {"trainer": link.address, "base": "none", "options": {"epochs": 300, "patience": 300}}
        try:
            outcome.append(training.train(model_home, "kinds", index=index, cancel=cancel, leave=leave, **how))
        except TrainingError as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    try:
        with TrainerClient(trainer_service) as watcher:
            thread.start()
            wait_for(lambda: any(j.epoch >= 1 and j.state == pb.Job.RUNNING for j in watcher.jobs()), timeout=120)
            link.down = True
            link.cut()
            time.sleep(0.5)
            cancel.set()
            thread.join(timeout=60)
            (cancelled,) = outcome
            assert isinstance(cancelled, training.Cancelled), cancelled
            assert "could not be told; it trains on there" in str(cancelled)
            (job,) = watcher.jobs()
            assert job.state == pb.Job.RUNNING
            watcher.cancel(job.id)
    finally:
        link.close()
        index.close()


def test_a_daemon_restarted_mid_training_collects_the_remote_job(
    model_home: Path, tmp_path: Path, trainer_service: str
) -> None:
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    d = start_daemon(model_home)
    watcher = TrainerClient(trainer_service)
    try:
        with Client(home_dir=model_home) as leaving:  # a front end that asks, then goes away
            options = json.dumps({"epochs": 40, "patience": 40})
            next(iter(leaving.train("kinds", trainer=trainer_service, base="none", options=options)))
        wait_for(lambda: d.client.status().training.epoch >= 2, timeout=120)
        record = config.training_path(model_home)
        assert record.stat().st_mode & 0o777 == 0o600  # it holds the trainer's token
        assert d.stop() == 0  # a clean stop leaves the remote job training instead of cancelling it
        assert "Traceback" not in d.log()
        (job,) = watcher.jobs()
        assert job.state in (pb.Job.RUNNING, pb.Job.SUCCEEDED) and record.exists()  # (it may end meanwhile)

        d = start_daemon(model_home)  # the next start follows the job to its end and installs the model
        done = daemon_pb2.TrainProgress.SUCCEEDED
        wait_for(lambda: d.client.status().training.state == done, timeout=300)
        told = d.client.status().training
        assert (told.dataset, told.model, list(told.classes)) == ("kinds", "kinds@1", sorted(KINDS))
        assert {m.name: m.active for m in d.client.models()}["kinds"]
        (job,) = watcher.jobs()  # the one job, trained once
        assert job.state == pb.Job.SUCCEEDED and json.loads(job.summary)["epochs_run"] > 2
        assert not record.exists() and "Traceback" not in d.log()
    finally:
        watcher.close()
        d.stop()


def test_a_daemon_stopped_before_its_trainer_had_the_job_says_so_at_its_next_start(
    model_home: Path, tmp_path: Path
) -> None:
    """A logout while a training waits for its trainer (here: the local trainer's folder held by another
    trainer) ended it as "cancelled", as if the user had, in an event sent after the servers had stopped,
    and dropped its record: the next morning nothing was trained and nothing said why."""
    from vibrary.trainer.service import serve

    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    busy = serve(model_home / "trainer", "127.0.0.1:0")  # another process's training holds the folder
    d = start_daemon(model_home)
    try:
        with Client(home_dir=model_home) as asking:
            next(iter(asking.train("kinds", trainer="local", base="none")))
        wait_for(lambda: "waiting for its training to finish" in d.client.status().training.message, timeout=60)
        assert d.stop() == 0
        busy.stop(grace=1)
        assert config.training_path(model_home).exists()
        d = start_daemon(model_home)
        failed = daemon_pb2.TrainProgress.FAILED
        wait_for(lambda: d.client.status().training.state == failed, timeout=60)
        told = d.client.status().training.error
        assert "the daemon stopped before its own trainer had the job: start the training again" in told
        assert not config.training_path(model_home).exists()
    finally:
        busy.stop(grace=1)
        d.stop()


def test_the_daemons_own_training_goes_on_from_its_last_epoch_after_a_stop_or_a_crash(
    model_home: Path, tmp_path: Path
) -> None:
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    record = config.training_path(model_home)
    d = start_daemon(model_home)
    try:
        with Client(home_dir=model_home) as leaving:  # the daemon's own trainer, the default
            # epochs enough that the job cannot end between the status that saw epoch 2 and the stop (CI, loaded)
            next(iter(leaving.train("kinds", base="none", options=json.dumps({"epochs": 40, "patience": 40}))))
        wait_for(lambda: d.client.status().training.epoch >= 2, timeout=120)
        assert d.stop() == 0  # a clean stop (logout, reboot) suspends the job instead of cancelling it
        assert "Traceback" not in d.log()
        (checkpoint,) = model_home.glob("trainer/tenants/*/jobs/*/checkpoint.pt")
        (job_file,) = model_home.glob("trainer/tenants/*/jobs/*/job.json")
        assert record.exists()

        d = start_daemon(model_home)
        wait_for(lambda: d.client.status().training.epoch >= 4, timeout=120)
        d.stop(signal.SIGKILL)  # a crash mid-epoch: the trainer dies with the daemon
        d = start_daemon(model_home)
        done = daemon_pb2.TrainProgress.SUCCEEDED
        wait_for(lambda: d.client.status().training.state == done, timeout=300)
        assert d.client.status().training.model == "kinds@1"
        assert {m.name: m.active for m in d.client.models()}["kinds"]
        summary = json.loads(json.loads(job_file.read_text())["job"]["summary"])
        assert summary["epochs_run"] == 40 and summary["resumed_from_epoch"] >= 3  # not trained from scratch
        assert list(model_home.glob("trainer/tenants/*/jobs/*/job.json")) == [job_file]  # the one job
        assert not checkpoint.exists() and not record.exists() and "Traceback" not in d.log()
    finally:
        d.stop()


def test_a_train_command_stopped_by_ctrl_c_or_killed_leaves_no_job_to_train_on(
    model_home: Path, tmp_path: Path
) -> None:
    """Nobody will collect the job of a `vibrary train` that is gone: Ctrl-C cancels it (and now says so:
    it exited 130 without a word), and after a kill the next local trainer fails it instead of training it
    first (the daemon's own jobs are taken up by name, `resume`)."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    jobs = model_home / "trainer" / "tenants"
    records: list[Path] = []
    for stop in (signal.SIGINT, signal.SIGKILL):
        args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--json", "--base", "none"]
        args += ["--epochs", "500"]
        env = {**os.environ, "VIBRARY_HOME": str(model_home)}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: any(jobs.glob("*/jobs/*/checkpoint.pt")), timeout=120)  # an epoch is done
            proc.send_signal(stop)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL)
            if stop == signal.SIGINT:  # it ended with no word of the training's end
                assert re.search(r"^upload ([\d,]+) of \1 bytes$", err.decode(), re.M), err  # the first: sent whole
                said = "vibrary: training cancelled; its job on the trainer is cancelled; the same command goes on"
                assert err.decode().endswith(f"{said} from its last finished epoch\n"), err
                assert json_lines(out.decode())[-1] == {"error": "interrupted", "exit_status": 130}  # (--json: none)
        finally:
            proc.kill()
        records += [r for r in jobs.glob("*/jobs/*/job.json") if r not in records]
    interrupted, killed = records
    assert json.loads(interrupted.read_text())["job"]["state"] == "CANCELLED"
    assert not (interrupted.parent / "checkpoint.pt").exists()
    again = vibrary("train", "kinds", "--json", "--base", "none", "--epochs", "1", home=model_home)
    trained = json_lines(again.stdout)
    assert trained[-1]["summary"]["epochs_run"] == 1
    # nothing was sent (the trainer kept the first tries'): said so, where the log said "upload 0 of N bytes",
    # then "upload N of N bytes"
    starting = "starting the job on the trainer (it had the spectrograms already, from an earlier upload)"
    assert starting in again.stderr.splitlines() and not re.search("^upload ", again.stderr, re.M), again.stderr
    assert trained[-1]["accuracy_of"] == "training clips (none held out)"  # 8 clips a class all train
    record = json.loads(killed.read_text())["job"]
    assert record["state"] == "FAILED" and "nobody was left to collect it" in record["error"]
    assert not list(jobs.glob("*/jobs/*/checkpoint.pt"))


def test_ctrl_c_while_the_trainer_is_out_of_reach_says_its_job_was_not_cancelled(
    model_home: Path, tmp_path: Path
) -> None:
    """A Ctrl-C while the remote trainer was down said "its job on the trainer is cancelled", and the trainer,
    back, trained it to the end for nobody: the cancel never reached it, and that is said."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "kinds", str(tmp_path / "examples"), home=model_home)
    trainer, target = _start_trainer(tmp_path / "trainer-home")
    args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--trainer", target, "--base", "none"]
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    proc = subprocess.Popen(
        [*args, "--epochs", "500"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lines.extend, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        wait_for(functools.partial(_said, lines, "epoch 2/"), timeout=120)
        trainer.kill()
        trainer.wait(timeout=30)
        wait_for(functools.partial(_said, lines, "lost the trainer"), timeout=60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        trainer.kill()
    reader.join(timeout=30)
    said = "".join(lines)
    assert "vibrary: training cancelled; the trainer is out of reach, so its job " in said, said
    assert "could not be cancelled there: the trainer cancels it once nobody has followed it" in said, said
    assert "its job on the trainer is cancelled" not in said, said


def test_a_job_two_callers_follow_goes_on_for_one_when_the_other_stops(tmp_path: Path) -> None:
    """Two homes training the same dataset under one token follow one job; a Ctrl-C of one cancelled it, and
    the other said only "training cancelled", as if it had been interrupted itself. It goes on for that one."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    homes = [tmp_path / "laptop", tmp_path / "studio"]
    for home in homes:
        vibrary("dataset", "create", "kinds", str(tmp_path / "examples"), home=home)
    trainer, target = _start_trainer(tmp_path / "trainer-home")
    args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--trainer", target, "--base", "none"]
    procs = [
        subprocess.Popen(
            [*args, "--epochs", "60", "--json"],
            env={**os.environ, "VIBRARY_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for home in homes
    ]
    lines: list[str] = []
    assert procs[0].stderr is not None
    reader = threading.Thread(target=lines.extend, args=(procs[0].stderr,), daemon=True)
    reader.start()
    try:
        wait_for(functools.partial(_said, lines, "epoch 3/"), timeout=120)
        procs[0].send_signal(signal.SIGINT)
        assert procs[0].wait(timeout=60) == 130
        out, err = procs[1].communicate(timeout=300)
        assert procs[1].returncode == 0, err
    finally:
        for each in procs:
            each.kill()
        trainer.kill()
    reader.join(timeout=30)
    said = "vibrary: training cancelled; another `vibrary train` of the same dataset follows its job on the trainer"
    assert said in "".join(lines), lines
    trained = json_lines(out)[-1]
    assert (trained["model"], trained["summary"]["epochs_run"]) == ("kinds", 60)  # the whole of it, for the other


def _said(lines: list[str], start: str) -> bool:
    return any(line.startswith(start) for line in lines)


def test_the_same_train_command_again_says_it_goes_on_from_the_last_epoch(model_home: Path, tmp_path: Path) -> None:
    """After a Ctrl-C, the same `vibrary train` goes on from the last finished epoch, as the Ctrl-C said; it
    did so without a word, its bar standing at epoch 12 of a command just typed. With other options it starts
    anew, which it did unsaid too."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "kinds", str(tmp_path / "examples"), home=model_home)
    args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--base", "none", "--epochs", "500"]
    env = {**os.environ, "VIBRARY_HOME": str(model_home)}
    said: list[list[str]] = []
    for run in (args, args, [*args[:-1], "400"]):
        proc = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        said.append(lines)
        assert proc.stderr is not None
        reader = threading.Thread(target=lines.extend, args=(proc.stderr,), daemon=True)
        reader.start()
        try:
            wanted = "epoch 2/" if len(said) == 1 else "epoch "  # the second run's first epoch is past the first's
            wait_for(functools.partial(_said, lines, wanted), timeout=120)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            proc.kill()
        reader.join(timeout=30)
    first, again, other = ("".join(lines) for lines in said)
    assert "going on after" not in first and "anew" not in first + again, first + again
    assert "starting anew: an earlier run of this dataset was cut off with other options" in other, other
    assert "going on after" not in other and re.search(r"^epoch 1/400", other, re.M), other
    resumed = re.search(
        r"^going on after epoch (\d+) of 500, where an earlier run of this training stopped$", again, re.M
    )
    assert resumed and int(resumed[1]) >= 2, again
    first_epoch = re.search(r"^epoch (\d+)/500", again, re.M)
    assert first_epoch and resumed.start() < first_epoch.start(), again  # said as it starts
    assert int(first_epoch[1]) == int(resumed[1]) + 1, again  # the epoch it stopped at was said again


def test_a_jobs_key_is_its_dataset_then_its_options_and_an_older_trainers_leftover_is_found(tmp_path: Path) -> None:
    """Other options share the key's first half (a run of them starts anew, said so); whether its caller follows
    it is no option (the CLI's run and the daemon's were told "other options"); a checkpoint an older trainer
    kept under the whole request's hash is the same job's."""
    import hashlib

    from vibrary.trainer.service import _JobState

    def key(**fields: Any) -> str:
        given = {"manifest": "{}", "name": "mine", "base": "demo", "config": '{"epochs": 6}', **fields}
        request = pb.JobRequest(**given)
        return _JobState("j", "u", request, None, None, tmp_path / "u" / "jobs" / "j").key

    assert key(followed=True) == key(followed=False)
    other = key(config='{"epochs": 30}')
    assert other[:16] == key()[:16] and other[16:] != key()[16:]
    request = pb.JobRequest(manifest="{}", name="mine", followed=True)
    job = _JobState("j", "u", request, None, None, tmp_path / "u" / "jobs" / "j")
    whole = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()[:32]
    assert job.leftover_before == tmp_path / "u" / "leftovers" / f"{whole}.pt" != job.leftover


def test_ctrl_c_during_the_upload_says_no_job_was_started(model_home: Path, tmp_path: Path) -> None:
    """Ctrl-C while the spectrograms were still on their way said "its job on the trainer is cancelled" of a
    job that did not exist. A trainer that takes the connection and never answers holds the upload."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "kinds", str(tmp_path / "examples"), home=model_home)
    silent = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []
    threading.Thread(target=lambda: taken.append(silent.accept()[0]), daemon=True).start()
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--base", "none", "--trainer", address]
    proc = subprocess.Popen(args, env={**os.environ, "VIBRARY_HOME": str(model_home)}, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: taken, timeout=60)  # the upload has begun
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        silent.close()
    assert proc.returncode == 130
    assert err.decode().endswith(
        "vibrary: training cancelled; nothing was started on the trainer "
        "(what was uploaded stays there for the next try)\n"
    ), err


def test_a_training_waiting_for_the_daemons_training_says_it_is_the_daemons(model_home: Path) -> None:
    """`vibrary train` beside a daemon's training said "the trainer data folder … is in use by another trainer
    (pid 17456)": the daemon's pid, which a producer does not know for the daemon. This process stands for the
    daemon: it holds the home and the local trainer's folder."""
    from vibrary.daemon import pidlock, training
    from vibrary.trainer.service import serve

    told: list[str] = []
    cancel = threading.Event()

    def waiting() -> None:
        with contextlib.suppress(training.Cancelled):
            job = JobRecord("kinds", "kinds", "local")
            with training._trainer_at(model_home, job, lambda **p: told.append(p["message"]), cancel, None):
                pass

    busy = serve(model_home / "trainer", "127.0.0.1:0")
    held = pidlock.hold(config.lock_path(model_home))
    try:
        asking = threading.Thread(target=waiting)
        asking.start()
        wait_for(lambda: bool(told), timeout=30)
        cancel.set()
        asking.join(timeout=30)
    finally:
        held.close()
        busy.stop(grace=0)
    assert told == [
        "the daemon is training (`vibrary status` says what; `vibrary train --cancel` stops it): waiting"
        " for its training to finish"
    ], told


def test_ctrl_c_while_waiting_for_a_busy_trainer_says_no_job_was_started(model_home: Path, tmp_path: Path) -> None:
    """Ctrl-C while the local trainer was busy with another process's training (nothing uploaded, no job)
    said "its job on the trainer is cancelled"."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "kinds", str(tmp_path / "examples"), home=model_home)
    busy, _ = _start_trainer(model_home)  # the folder of the local trainer of `vibrary train`
    args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--base", "none"]
    proc = subprocess.Popen(
        args, env={**os.environ, "VIBRARY_HOME": str(model_home)}, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "waiting for its training to finish" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        busy.terminate()
        busy.wait(timeout=30)
    assert proc.returncode == 130
    assert err.endswith("vibrary: training cancelled; nothing was started on the trainer\n"), err


def test_a_training_that_stops_early_says_why_and_which_epochs_weights_it_kept(
    model_home: Path, tmp_path: Path
) -> None:
    """With clips held out (25 a class), a training stops once validation accuracy has not improved for its
    patience (5 epochs from the demo base): the command printed "epoch 6/30" and then "done", which read as
    a training cut short, and never said that the model kept is an earlier epoch's."""
    write_kinds(tmp_path / "examples", per_kind=25, seed=1)
    for noise in (tmp_path / "examples" / "noise").iterdir():  # two tags: half the training time
        noise.unlink()
    vibrary("dataset", "create", "kinds", str(tmp_path / "examples"), home=model_home)
    proc = vibrary("train", "kinds", "--epochs", "30", home=model_home, timeout=600)
    said = proc.stdout
    stopped = re.search(
        r"stopped early after epoch (\d+) of 30: validation accuracy had not improved for (\d+) epochs "
        r"\(patience 5\); kept the weights of epoch (\d+), its best",
        said,
    )
    if stopped is None:  # a CPU whose run still improved (ties go to the lower loss) to its end: nothing to say
        assert "stopped early" not in said and "30/30" in proc.stdout + proc.stderr, (said, proc.stderr)
        return
    run, idle, best = map(int, stopped.groups())
    assert idle == 5 and best + idle == run < 30


_FOLLOWER = """
import json, sys
from vibrary.clients.trainer_client import TrainerClient
from vibrary.daemon import dataset
from pathlib import Path
manifest, _ = dataset.load(Path(sys.argv[2]), "kinds")
with TrainerClient(sys.argv[1]) as client:  # as `vibrary train` does: start a followed job, watch it
    job = client.start(manifest, "kinds", "none", json.dumps({"epochs": 500, "patience": 500}), followed=True)
    for _ in client.watch(job.id):
        pass
"""


def test_a_remote_job_whose_train_command_was_killed_is_cancelled_once_nobody_watches_it(
    model_home: Path, tmp_path: Path
) -> None:
    """`vibrary train --trainer HOST:PORT` follows its job (JobRequest.followed); killed, nobody will
    collect the job, so the trainer cancels it once it has gone unwatched for its limit (2 s here) and
    trains the next job instead. A job started for the daemon (not followed) trains on unwatched."""
    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    trainer_home = tmp_path / "trainer-home"
    trainer, target = _start_trainer(trainer_home, VIBRARY_TRAINER_UNWATCHED_S="2")
    try:
        vibrary("train", "kinds", "--base", "none", "--trainer", target, "--epochs", "1", home=model_home)
        (record,) = trainer_home.glob("trainer/tenants/*/jobs/*/job.json")
        assert json.loads(record.read_text())["request"]["followed"] is True  # the command says it follows
        with TrainerClient(target) as client:  # lists jobs, never watches them
            follower = subprocess.Popen([sys.executable, "-c", _FOLLOWER, target, str(model_home)])
            try:
                wait_for(lambda: any(j.epoch >= 1 and j.state == pb.Job.RUNNING for j in client.jobs()), timeout=120)
                follower.kill()
                follower.wait(timeout=60)
            finally:
                follower.kill()
            (killed,) = [j for j in client.jobs() if j.state == pb.Job.RUNNING]

            def looked_in() -> bool:  # a dashboard's watch (no caller id), looking in and out: it kept the job on
                looking = client.stub.WatchJob(pb.JobRef(id=killed.id))
                next(looking)
                looking.cancel()
                return {j.id: j for j in client.jobs()}[killed.id].state == pb.Job.CANCELLED

            wait_for(looked_in, timeout=60, interval=0.5)
            assert "nobody watched it for 2 s" in {j.id: j for j in client.jobs()}[killed.id].error
            manifest, _ = dataset.load(model_home, "kinds")
            daemons = client.start(manifest, "kinds", "none", json.dumps({"epochs": 30, "patience": 30}))
            wait_for(lambda: {j.id: j for j in client.jobs()}[daemons.id].state == pb.Job.SUCCEEDED, timeout=300)
    finally:
        trainer.terminate()
        trainer.wait(timeout=30)


def test_one_trainer_per_data_folder_the_next_waits_and_leaves_the_daemons_job_alone(
    model_home: Path, tmp_path: Path
) -> None:
    """A `vibrary train` while another trainer has the same folder waits for it (before, it failed that
    trainer's jobs on disk), and then spares the job the daemon's record names (a daemon killed while it
    trained): the daemon takes that one up at its next start."""
    from vibrary.trainer.service import TrainerBusy, serve

    write_kinds(tmp_path / "examples", per_kind=8, seed=1)
    vibrary("dataset", "create", "--json", "kinds", str(tmp_path / "examples"), home=model_home)
    root = model_home / "trainer"
    held = serve(root, "127.0.0.1:0")
    told: list[str] = []
    try:
        with pytest.raises(TrainerBusy, match=rf"{root} is in use by another trainer \(pid {os.getpid()}\)"):
            serve(root, "127.0.0.1:0")
        refused = vibrary("trainer", "serve", "--listen", "127.0.0.1:0", home=model_home, check=False)
        assert refused.returncode == 1 and "in use by another trainer" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        (tmp_path / "afile").write_text("")  # it said "[Errno 20] Not a directory: '…/afile/tokens.json'"
        for data in (tmp_path / "afile", tmp_path / "afile" / "sub"):
            refused = vibrary(
                "trainer", "serve", "--listen", "127.0.0.1:0", "--data", str(data), home=model_home, check=False
            )
            assert refused.returncode == 1 and refused.stderr == (
                f"vibrary: the trainer data folder {data} cannot be used (a file is in its place, or in the place of"
                " a folder above it): give --data a folder to write in\n"
            ), refused.stderr
        unread = ["trainer", "serve", "--listen", "127.0.0.1:0", "--tls-key", str(tmp_path / "nokey.pem")]
        refused = vibrary(*unread, "--tls-cert", str(tmp_path / "afile"), home=model_home, check=False)
        said = f"cannot read {tmp_path / 'nokey.pem'}, the TLS key (--tls-key or $VIBRARY_TRAINER_TLS_KEY): No such"
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr  # ([Errno 2] and a path, bare)
        manifest, shard_dir = dataset.load(model_home, "kinds")
        with TrainerClient(f"127.0.0.1:{held.port}") as client:
            client.upload(manifest, shard_dir)
            job_id = client.start(manifest, "kinds", "none", json.dumps({"epochs": 500})).id
        (job_file,) = root.glob(f"tenants/*/jobs/{job_id}/job.json")
        wait_for(lambda: (job_file.parent / "checkpoint.pt").exists(), timeout=120)
        JobRecord("kinds", "kinds", "local", job_id=job_id).save(config.training_path(model_home))
        args = [sys.executable, "-m", "vibrary.clients.cli", "train", "kinds", "--json", "--base", "none"]
        proc = subprocess.Popen(
            [*args, "--epochs", "1"],
            env={**os.environ, "VIBRARY_HOME": str(model_home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None and proc.stdout is not None
        reader = threading.Thread(target=lambda: told.extend(proc.stderr or ()), daemon=True)
        reader.start()
        printed: list[str] = []  # (read as it comes: a full pipe would hold the command up)
        stdout_reader = threading.Thread(target=lambda: printed.extend(proc.stdout or ()), daemon=True)
        stdout_reader.start()
        wait_for(lambda: any("waiting for its training to finish" in line for line in told), timeout=60)
        assert proc.poll() is None
    finally:
        held.stop(grace=0)  # suspends the job, which stays running on record: the daemon's to take up
    proc.wait(timeout=300)  # not communicate(): the pipes are the readers', which it closed under them
    reader.join(timeout=10)
    stdout_reader.join(timeout=10)
    out = "".join(printed)
    assert proc.returncode == 0, "".join(told)
    assert json_lines(out)[-1]["summary"]["epochs_run"] == 1
    assert f"in use by another trainer (pid {os.getpid()})" in "".join(told)
    assert json.loads(job_file.read_text())["job"]["state"] == "RUNNING"  # neither failed nor trained
    assert (job_file.parent / "checkpoint.pt").exists()


def test_a_training_cut_off_before_a_trainer_had_it_is_reported_at_the_next_start(model_home: Path) -> None:
    told: list[TrainProgress] = []
    with contextlib.closing(Index(config.index_path(model_home))) as index, pytest.raises(TrainingError):
        resume(model_home, JobRecord("kinds", "kinds", "local"), index=index, progress=told.append)
    assert told[-1].state == "failed" and told[-1].dataset == "kinds"
    assert "before its own trainer had the job: start the training again" in told[-1].error


def test_export_matches_torch_and_the_daemon_loads_it(tmp_path: Path) -> None:
    codes, labels, groups = spectrograms(6, 3)
    manifest, _ = shards.write("kinds", list(KINDS), P, codes, labels, groups)
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=2, seed=1))
    model_bytes = to_onnx(result, "kinds")
    x = np.random.default_rng(0).uniform(-80, 0, (5, *P.shape)).astype(np.float32)
    assert max_difference(exported(result), model_bytes, x) < 1e-4
    (tmp_path / "kinds.onnx").write_bytes(model_bytes)
    model = Model(str(tmp_path / "kinds.onnx"))
    assert model.info.classes == KINDS and model.info.params == P and model.info.name == "kinds"
    assert json.loads(model.info.metadata["vibrary.training"])["train_clips"] == result.train_clips
    for n in (1, 7):  # the batch axis is dynamic
        scores = model.predict(x[:1].repeat(n, axis=0))
        assert scores.shape == (n, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert model.info.familiar_from == pytest.approx(result.familiar_from, abs=1e-6)
    _, familiar = model.predict_familiar(dequantize(codes, P))
    assert familiar.sum() >= len(codes) - 1  # the bar is its least typical training clip (1 % of them)


def test_the_familiarity_bar_is_the_least_typical_example_without_itself_in_its_class() -> None:
    """familiarity() on a network whose embedding is the input itself: two classes of three points
    around the two axes. Each point is measured against the mean direction of the two others of its class
    (with itself, a class of a few points would find each of them close to a centre it pulls in)."""
    from vibrary.trainer.train import UNFAMILIAR_EXAMPLES, familiarity

    class Points:
        def eval(self) -> None:
            pass

        def embedding(self, x: Any) -> Any:
            return x

    points = np.array([[1, 0.3], [1, -0.1], [1, 0], [0, 1], [0.2, 1], [-0.4, 1]], np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)

    def batch(idx: np.ndarray) -> tuple[Any, Any]:
        return torch.from_numpy(points[idx]), torch.from_numpy(labels[idx])

    centroids, bar = familiarity(Points(), np.arange(6), labels, batch, 2, 2)
    means = np.stack([unit[labels == c].mean(0) for c in (0, 1)])
    assert np.allclose(centroids, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6)
    typical = []
    for i in range(6):
        others = unit[(labels == labels[i]) & (np.arange(6) != i)].mean(0)
        own = unit[i] @ others / np.linalg.norm(others)
        typical.append(max(own, unit[i] @ centroids[1 - labels[i]]))
    assert bar == pytest.approx(np.quantile(typical, UNFAMILIAR_EXAMPLES), abs=1e-6)
    assert bar < min(unit[i] @ centroids[labels[i]] for i in range(6))  # every example is familiar
    assert max(np.array([0.7071, 0.7071]) @ centroids.T) < bar  # half-way between the two: neither

    # a third tag of one clip, half-way: without itself it has no centroid, and it set the bar at 0.71
    points = np.concatenate([points, np.array([[1, 1]], np.float32)])
    labels = np.append(labels, 2)
    _, with_a_lone_clip = familiarity(Points(), np.arange(7), labels, batch, 3, 2)
    assert with_a_lone_clip == pytest.approx(bar, abs=0.02) and with_a_lone_clip > 0.8

    # 5000 clips of one tag, then 3 of another: a sample of the first 4096 clips left the rare tag out
    rng = np.random.default_rng(0)
    points = np.concatenate([[1, 0] + 0.1 * rng.standard_normal((5000, 2)), [[0, 1], [0.1, 1], [-0.1, 1]]])
    points = points.astype(np.float32)
    labels = np.array([0] * 5000 + [1] * 3)
    centroids, bar = familiarity(Points(), np.arange(5003), labels, batch, 2, 64)  # the rare tag last
    assert centroids[1] @ np.array([0.0, 1.0]) > 0.99 and bar < 0.99  # the rare tag's files are familiar


def test_training_is_deterministic_for_a_seed() -> None:
    codes, labels, groups = spectrograms(4, 5)
    manifest, _ = shards.write("d", list(KINDS), P, codes, labels, groups)

    def weights(seed: int) -> object:
        return train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=2, seed=seed)).net.head.weight

    assert torch.equal(weights(7), weights(7))
    assert not torch.equal(weights(7), weights(8))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_bfloat16_is_for_the_training_steps_only(precision: str) -> None:
    """Training steps run in the precision asked for; batch-norm statistics, evaluation and the exported
    model stay float32, what the daemon computes."""
    codes, labels, groups = spectrograms(4, 5)
    manifest, _ = shards.write("d", list(KINDS), P, codes, labels, groups)
    seen: set[tuple[bool, Any]] = set()  # (training mode, dtype of a convolution's output)

    def record(module: Any, args: object, out: Any) -> None:
        if isinstance(module, torch.nn.Conv2d):
            seen.add((module.training, out.dtype))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        config = TrainConfig(epochs=2, seed=1, precision=precision, val_fraction=0.3)
        result = train(manifest, codes, labels, np.array(groups), config)
    finally:
        hook.remove()
    step = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert seen == {(True, step), (False, torch.float32)}
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in result.net.parameters())
    x = np.random.default_rng(0).uniform(-80, 0, (3, *P.shape)).astype(np.float32)
    assert max_difference(exported(result), to_onnx(result, "d"), x) < 1e-4
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig.from_dict({"precision": "fp8"})


def test_training_options_are_checked_before_a_trainer_is_asked_and_old_records_still_load() -> None:
    from vibrary.daemon.training import options_json

    for bad, said in (
        ('{"epochz": 3}', "unknown training options"),
        ('{"epochs": "x"}', 'epochs: "x" is not a whole number'),
        ('{"augment": 1}', "augment: 1 is not true or false"),
        ('{"seed": -1}', "seed from 0 to 2147483647"),
        ('{"seed": 9223372036854775808}', "seed from 0 to 2147483647"),  # (was an overflow deep in training)
        ('{"epochs": 1000000000}', "epochs must be 10000 or fewer"),  # held a shared trainer for good
        ('{"device": "nonsense"}', "unknown device 'nonsense'"),  # (was torch's error after the upload)
        ('{"dropout": 1.5}', "within [0, 1)"),
        ('{"lr": NaN}', "lr must be above 0"),
        ('{"patience": 0}', "patience must be 1 or more"),
        ("not json", "training options are not JSON"),
    ):
        with pytest.raises(ValueError, match=re.escape(said)):
            options_json("demo", bad)
    assert json.loads(options_json("demo", '{"lr": 1, "body_lr": 0}')) == {
        "epochs": 20,
        "patience": 5,
        "masks": False,
        "lr": 1,
        "body_lr": 0,
    }
    old = TrainConfig.from_dict({"augment": 0, "epochs": 5.0, "patience": 0, "lr": 0}, strict=False)  # an old record
    assert (old.augment, old.epochs, old.patience, old.lr) == (0, 5, 0, 0)
    assert isinstance(old.epochs, int)  # range() takes it


def test_validation_holds_out_whole_groups_and_keeps_every_class() -> None:
    labels = np.array([0] * 6 + [1] * 6 + [2] * 3)
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "d", "e", "e", "e", "f", "f", "f"])
    val = split_by_group(labels, groups, 0.3, np.random.default_rng(0))
    for c in range(3):
        assert (~val[labels == c]).any() and val[labels == c].any()
    for g in "abcde":  # classes with several groups lose whole groups, never part of one
        assert len(set(val[groups == g])) == 1


def test_augmentation_keeps_shape_and_range_and_follows_the_seed() -> None:
    x = torch.from_numpy(np.random.default_rng(0).uniform(-80, 0, (4, *P.shape)).astype(np.float32))
    a = augment(x, -80.0, torch.Generator().manual_seed(3))
    b = augment(x, -80.0, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= -80.0 - 1e-4 and a.max() <= 0.0 + 1e-4
    assert not torch.equal(a[0] - a[0].max(), a[1] - a[1].max())  # each clip its own draw


def test_lo_fi_copies_lose_the_bands_above_their_rate_and_hiss_only_where_they_sound() -> None:
    """A flat spectrum (white noise) in the first half of the clip, silence after: a sampler at 8 kHz keeps
    nothing above 4 kHz, an 8-bit one hisses under the sound but not in the digital silence after it; the
    rest of a batch (and all of it at a share of 0) is left alone."""
    from vibrary.daemon.spectrogram import SpectrogramParams, mel_filterbank
    from vibrary.trainer.augment import LoFi

    params = SpectrogramParams()
    lofi = LoFi(mel_filterbank(params), params.sample_rate)
    x = torch.full((64, 1, params.n_mels, 40), -80.0)
    x[..., :20] = -30.0
    x[..., 0, 5] = 0.0  # the loudest value, at 0 dB as the daemon references it
    out = lofi(x, -80.0, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(lofi(x, -80.0, 0.0, torch.Generator()), x)
    changed = ~(out == x).flatten(1).all(1)
    assert 16 < changed.sum() < 48  # about half the clips
    assert out.max() <= 0.0 and out.min() >= -80.0 and torch.equal(out.flatten(1).amax(1), torch.zeros(64))
    above = torch.from_numpy(mel_filterbank(params)[:, np.linspace(0, 22050, 1025) <= 11025].sum(1) == 0)
    cut = changed & (out[:, 0, above, :20] <= -79.0).all(dim=(1, 2))  # nothing left above 11 kHz at least
    assert cut.any() and (out[cut, 0, :10, :20] > -35).all()  # the low bands as they were
    hiss = changed & (out[:, 0, :, 20:] > -80).any(dim=(1, 2))
    assert not hiss.any()  # the silence after the sound stays digital silence
    hissed = changed & (out[:, 0, :10, :20] != x[:, 0, :10, :20]).any(dim=(1, 2))
    assert hissed.any()
    # a hi-hat: its sound all above 11 kHz, loudest there. Cut, nothing of it is left (it stays as it was, not a
    # clip of hiss); the floor stays silence (it was taken for sound at -80 dB, and lifted 80 dB to 0 dB)
    hat = torch.full((64, 1, params.n_mels, 40), -80.0)
    hat[:, 0, above, :20] = -6.0
    hat[:, 0, above.nonzero()[0], 5] = 0.0
    hat[:32, 0, :10, :20] = -50.0  # half of them with a little low sound too
    out = lofi(hat, -80.0, 1.0, torch.Generator().manual_seed(2))
    assert (out[..., 20:] == -80.0).all()  # silence after the sound, whatever was done
    alone = ~(out[32:] == hat[32:]).flatten(1).all(1)
    cut_away = (out[32:, 0, above, :20] <= -79.0).all(dim=(1, 2))
    assert not (alone & cut_away).any()  # none of the high-only hats left as hiss
    low = (out[:32, 0, above, :20] <= -79.0).all(dim=(1, 2))  # cut: the low sound left, at the top now
    assert low.any() and (out[:32][low].flatten(1).amax(1) == 0).all()
    assert (out[:32][low][:, 0, :10, :20] > -10).all()


def test_a_short_one_shot_is_never_augmented_into_silence_nor_loses_its_attack() -> None:
    """A closed hi-hat, 13 frames at the clip's start: shifts up to 32 frames earlier cut its attack off a
    third of the time and left it all silent a fifth of the time, masks as often: a clip of silence trained
    as `hihat`."""
    floor = -80.0
    x = torch.full((600, *P.shape), floor)
    x[..., 40:80, :13] = torch.linspace(0, -60, 13)  # loud at its onset, fading out
    out = augment(x, floor, torch.Generator().manual_seed(0), masks=True)
    sounding = out.flatten(1).amax(1) > floor
    assert bool(sounding.all())
    first = (out.amax(2) > floor).float().argmax(-1).flatten()  # where each copy's sound begins
    onset = out.amax(2).flatten(1).gather(1, first[:, None]).flatten()  # and how loud it is there
    assert float((onset > -20).float().mean()) > 0.9  # the attack, not its tail, for nearly every copy


def test_batch_norm_statistics_weigh_every_clip_alike() -> None:
    """129 clips recalibrated in passes of 128: the last pass, one clip, made half of every mean and variance
    of the model exported (means off by up to 1.2 standard deviations)."""
    from vibrary.trainer.train import _recalibrate_batch_norm

    rng = np.random.default_rng(2)
    levels = rng.uniform(-70, -10, (129, 1, 1, 1))  # quiet clips and loud ones, as a sample pack's are
    x = torch.from_numpy((levels + rng.uniform(-10, 10, (129, *P.shape))).astype(np.float32))
    net = TagNet(3).eval()

    def batch(idx: np.ndarray) -> tuple[Any, Any]:
        return x[torch.from_numpy(idx)], torch.zeros(len(idx), dtype=torch.long)

    _recalibrate_batch_norm(net, np.arange(129), batch, batch_size=32)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    passes = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    _recalibrate_batch_norm(net, np.arange(129), batch, batch_size=129)  # one pass of every clip: exact
    for m, (mean, var) in zip(norms, passes, strict=True):
        assert torch.allclose(mean, m.running_mean, atol=0.1 * float(m.running_var.sqrt().mean()))
        assert torch.allclose(var, m.running_var, rtol=0.2)


def test_the_class_means_of_a_new_head_see_every_class() -> None:
    """The means the new head starts from came from the first 4096 shuffled clips: a class of 5 in 20,000
    was missing a third of the time, and its row started at zero."""
    from vibrary.trainer.train import _shares

    labels = np.array([0] * 10_000 + [1] * 9_995 + [2] * 5)
    order = np.random.default_rng(0).permutation(len(labels))
    order = np.concatenate([order[labels[order] != 2], order[labels[order] == 2]])  # the five shuffled last
    picked = _shares(order, labels, 3)
    assert len(picked) <= 4096 and np.bincount(labels[picked]).tolist() == [1365, 1365, 5]
    assert picked.tolist() == order[np.isin(order, picked)].tolist()  # in the order given (batch norm's passes)


def test_the_batched_time_stretch_and_shifts_read_as_torchs_resize_and_a_roll() -> None:
    """The batch is stretched and shifted by index arithmetic; each clip must come out as the plain
    per-clip operations would make it: torch's bilinear resize to the stretched length, cut or padded
    with silence, moved in time with silence in the gap, moved in mel with the edge band repeated."""
    from vibrary.trainer.augment import _gather, _stretch_and_shift

    n, m, t = 5, 12, 50
    x = torch.from_numpy(np.random.default_rng(1).uniform(-80, 0, (n, 1, m, t)).astype(np.float32))
    frames = torch.tensor([40, 62, 50, 20, 45])  # shorter, longer, the same
    shift = torch.tensor([0, 6, -7, 3, -12])
    bands = torch.tensor([0, 1, -2, 2, 0])
    out = _gather(
        _stretch_and_shift(x, frames, shift, -80.0), 2, (torch.arange(m)[None] - bands[:, None]).clamp(0, m - 1)
    )
    for i in range(n):
        f, k, b = int(frames[i]), int(shift[i]), int(bands[i])
        clip = torch.nn.functional.interpolate(x[i : i + 1], size=(m, f), mode="bilinear", align_corners=False)[0]
        clip = torch.nn.functional.pad(clip, (0, max(0, t - f)), value=-80.0)[..., :t]
        moved = torch.full_like(clip, -80.0)
        if k >= 0:
            moved[..., k:] = clip[..., : t - k]
        else:
            moved[..., :k] = clip[..., -k:]
        expected = moved[:, (torch.arange(m) - b).clamp(0, m - 1), :]
        assert torch.allclose(out[i], expected, atol=1e-3), i


def test_transfer_copies_the_body_and_refuses_a_base_that_does_not_fit() -> None:
    base = TagNet(15).state_dict()
    net = TagNet(3)
    _load_base(net, base)
    assert torch.equal(net.features[0].weight, base["features.0.weight"])
    assert net.head.weight.shape == (3, 128)
    with pytest.raises(ValueError, match="does not fit"):
        _load_base(TagNet(3, channels=2), base)


def test_a_remote_trainer_needs_a_token(tmp_path: Path) -> None:
    from vibrary.trainer.service import serve

    with pytest.raises(ValueError, match="without a token"):
        serve(tmp_path, "0.0.0.0:0")
    serving = serve(tmp_path, "127.0.0.1:0", token="t0k")
    try:
        manifest, _ = _manifest_and_blobs()
        with TrainerClient(f"127.0.0.1:{serving.port}", token="nope") as bad, pytest.raises(DaemonError) as err:
            bad.missing(manifest)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with TrainerClient(f"127.0.0.1:{serving.port}", token="t0k") as good:
            assert len(good.missing(manifest)) == len(manifest.shards)
    finally:
        serving.stop(grace=0)


def test_daemon_and_clients_never_import_torch() -> None:
    code = (
        "import sys, vibrary.daemon.service, vibrary.daemon.server, vibrary.daemon.dataset, "
        "vibrary.clients.cli, vibrary.clients.trainer_client; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_HIDDEN = """
import sys
class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name == {0!r} or name.startswith({0!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hidden())
"""


@pytest.mark.parametrize("missing", ["torch", "matplotlib"])
def test_train_without_torch_says_how_to_install_it(home: Path, tmp_path: Path, missing: str) -> None:
    """The trainer service loads torch with its first job, and says at its start when torch is not there
    (a `sitecustomize` hides it as an installation without the trainer extra would); nor the rest of the
    extra: torch without it took the job and failed it with "internal error: No module named 'matplotlib'"."""
    (tmp_path / "no-torch").mkdir()
    (tmp_path / "no-torch" / "sitecustomize.py").write_text(_HIDDEN.format(missing))
    write_kinds(tmp_path / "ex", per_kind=2, seed=0)
    vibrary("dataset", "create", "d", str(tmp_path / "ex"), home=home)
    env = {**os.environ, "VIBRARY_HOME": str(home), "PYTHONPATH": str(tmp_path / "no-torch")}
    proc = subprocess.run(
        [sys.executable, "-m", "vibrary.clients.cli", "train", "d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "pip install -e '.[trainer]'" in proc.stderr


def test_a_trainer_whose_torch_is_broken_fails_each_job_saying_so(tmp_path: Path) -> None:
    """torch is loaded by the first job: one there but broken (a half-done upgrade) failed it as an
    "internal error"; it says what to reinstall, and the service goes on to fail the next one alike."""
    broken = tmp_path / "broken" / "onnx"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libonnx.so: cannot open shared object file')\n")
    manifest, blobs = _manifest_and_blobs(per_kind=2)
    _store(blobs, tmp_path)
    proc, target = _start_trainer(tmp_path / "trainer-home", PYTHONPATH=str(tmp_path / "broken"))
    try:
        with TrainerClient(target) as client:
            client.upload(manifest, tmp_path)
            for name in ("first", "second"):
                job = client.start(manifest, name, "none", json.dumps({"epochs": 1}))
                last = list(client.watch(job.id))[-1]
                assert last.state == pb.Job.FAILED, last
                assert "libonnx.so" in last.error and "pip install -e '.[trainer]'" in last.error, last.error
                assert not last.error.startswith("internal error"), last.error
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_progress_streams_epochs(trainer_service: str, tmp_path: Path) -> None:
    manifest, blobs = _manifest_and_blobs(per_kind=6)
    _store(blobs, tmp_path)
    with TrainerClient(trainer_service) as client:
        client.upload(manifest, tmp_path)
        job = client.start(manifest, "p", "none", json.dumps({"epochs": 3, "patience": 10}))
        seen = list(client.watch(job.id))
        epochs = sorted({u.epoch for u in seen if u.phase == "training"})
        assert epochs == [1, 2, 3] and seen[-1].state == pb.Job.SUCCEEDED
        assert {u.phase for u in seen} >= {"training", "done"}
        files = client.download(job.id)
        assert set(files) == {"model.onnx", "learning_curve.png", "confusion_matrix.png"}


def test_batch_norm_is_recalibrated_on_a_shuffled_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A corpus laid out one folder per class arrives sorted; the clips batch norm learns its statistics
    from must still mix every class, or the model is tuned to the first few classes."""
    import vibrary.trainer.train as training

    codes, labels, groups = spectrograms(6, 0)  # sorted by class
    manifest, _ = shards.write("s", list(KINDS), P, codes, labels, groups)
    seen: list[np.ndarray] = []
    real = training._recalibrate_batch_norm

    def spy(net: TagNet, idx: np.ndarray, *rest: Any) -> None:
        seen.append(np.array(idx))
        real(net, idx, *rest)

    monkeypatch.setattr(training, "_recalibrate_batch_norm", spy)
    train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=1, val_fraction=0.0))
    first_third = labels[seen[0][: len(seen[0]) // 3]]
    assert set(first_third.tolist()) == {0, 1, 2}


def test_with_no_clip_held_out_the_confusion_matrix_is_of_the_training_clips() -> None:
    """As the accuracy is then (README): it was an empty matrix, a blank PNG titled "no clips held out"."""
    codes, labels, groups = spectrograms(4, 6)
    manifest, _ = shards.write("small", list(KINDS), P, codes, labels, groups)
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=2, seed=0))
    assert result.val_clips == 0 and result.confusion.sum() == result.train_clips == len(labels)
    assert np.trace(result.confusion) / result.confusion.sum() == pytest.approx(result.train_accuracy)


@pytest.mark.parametrize(("clips_per_kind", "epochs"), [(2, 1), (4, 5)])
def test_very_short_trainings_still_train(clips_per_kind: int, epochs: int) -> None:
    """1 or 5 optimiser steps in all: the learning-rate schedule must neither crash nor stand still."""
    codes, labels, groups = spectrograms(clips_per_kind, 2)
    manifest, _ = shards.write("short", list(KINDS), P, codes, labels, groups)
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=epochs, batch_size=32, seed=0))
    assert len(result.history) == epochs
    torch.manual_seed(0)  # train() seeds the same way before it builds its network
    before = TagNet(3)
    assert not torch.allclose(before.head.weight, result.net.head.weight, atol=1e-4)


@pytest.mark.parametrize(("clips_per_kind", "steps"), [(8, 3), (2, 1), (32, 3), (40, 4)])
def test_small_datasets_take_smaller_batches_not_fewer_steps(
    monkeypatch: pytest.MonkeyPatch, clips_per_kind: int, steps: int
) -> None:
    """24 clips in one batch of 32 made 12 epochs 12 optimiser steps, and tones came out as thumps."""
    codes, labels, groups = spectrograms(clips_per_kind, 4)
    manifest, _ = shards.write("steps", list(KINDS), P, codes, labels, groups)
    taken = []
    step = torch.optim.AdamW.step

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        taken.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=1, val_fraction=0.0, augment=False))
    assert len(taken) == steps


def test_a_whole_shard_cut_off_before_its_check_is_finished_or_sent_again(tmp_path: Path) -> None:
    """A trainer stopped between the last chunk and the checksum leaves a full-length `.part`: the client
    then had nothing left to send for it, and every start failed "shards not uploaded yet" for a week."""
    from vibrary.trainer.service import serve
    from vibrary.trainer.tenants import LOCAL

    manifest, blobs = _manifest_and_blobs(per_kind=100)
    good, bad = manifest.shards[0], manifest.shards[1]
    folder = tmp_path / "trainer" / "tenants" / LOCAL / "shards"
    folder.mkdir(parents=True)
    (folder / f"{good.sha256}.part").write_bytes(blobs[good.sha256])
    (folder / f"{bad.sha256}.part").write_bytes(bytes(len(blobs[bad.sha256])))  # full length, wrong bytes
    serving = serve(tmp_path / "trainer", "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            missing = {s.sha256: s.have_bytes for s in client.missing(manifest)}
    finally:
        serving.stop(grace=0)
    assert good.sha256 not in missing and (folder / f"{good.sha256}.npz").read_bytes() == blobs[good.sha256]
    assert missing[bad.sha256] == 0 and not (folder / f"{bad.sha256}.part").exists()


def test_an_upload_chunk_that_does_not_decode_is_invalid_argument(trainer_service: str) -> None:
    """A request stream's message that does not decode (a sha256 field that is not UTF-8) was INTERNAL
    "Exception deserializing request!", as unary requests were."""
    with grpc.insecure_channel(trainer_service) as channel:
        upload = channel.stream_unary("/vibrary.v1.Trainer/UploadShards")
        with pytest.raises(grpc.RpcError) as err:
            upload(iter([b"\x0a\x03\xff\xfe\xfd"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in str(err.value.details())


def test_a_model_that_could_not_be_installed_is_kept_with_a_command_that_pastes(tmp_path: Path) -> None:
    """The command said for installing it by hand broke on a home with a space (macOS's
    `~/Library/Application Support/vibrary`): argparse's "unrecognized arguments"."""
    from vibrary.daemon import training

    home = tmp_path / "Application Support" / "vibrary"
    said = training._kept(home, {"model.onnx": b"onnx bytes"}, "dark pads")
    command = shlex.split(said.split("`")[1])
    assert command[:3] == ["vibrary", "models", "install"] and command[4:] == ["--name", "dark pads"]
    assert Path(command[3]).read_bytes() == b"onnx bytes" and Path(command[3]).is_relative_to(home / "uninstalled")


def test_a_cancel_heard_while_the_model_came_keeps_it_uninstalled(model_home: Path, tmp_path: Path) -> None:
    """CancelTraining answered "cancelling" once the trainer's files were on their way, and the model was
    installed and activated all the same (the training ended SUCCEEDED)."""
    from vibrary.daemon import training

    index = Index(config.index_path(model_home))
    files = {"model.onnx": band_model(tmp_path / "moods.onnx", name="moods").read_bytes(), "summary.json": b"{}"}
    said: list[TrainProgress] = []
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(training.Cancelled, match="uninstalled") as cancelled:
        training._installed(index, model_home, files, "moods", training._Report("moods", said.append), cancel)
    assert "moods" not in [m.name for m in index.models()] and [p.state for p in said] == ["installing"]
    kept = shlex.split(str(cancelled.value).split("`")[1])[3]
    assert Path(kept).read_bytes() == files["model.onnx"]
    index.close()


def test_a_training_that_makes_a_version_installed_before_says_so(model_home: Path, tmp_path: Path) -> None:
    """A training is deterministic: made again, its model file can be the very file of a version installed
    before, which is that version, and was said "installed and activated moods@1" as of a new one."""
    from vibrary.daemon import training

    index = Index(config.index_path(model_home))
    onnx = band_model(tmp_path / "moods.onnx", name="moods").read_bytes()
    said: list[TrainProgress] = []
    for _ in range(2):
        files = {"model.onnx": onnx, "summary.json": b"{}"}
        trained = training._installed(
            index, model_home, files, "moods", training._Report("moods", said.append), threading.Event()
        )
    assert (
        trained.again
        and trained.row.ref == "moods@1"
        and [m.version for m in index.models() if m.name == "moods"] == [1]
    )
    assert said[-1].message == "activated moods@1, installed before: this training made the very same model"
    assert "installed and activated moods@1" in [p.message for p in said]  # the first time
    index.close()


def test_a_followed_job_trained_and_never_collected_is_followed_again_not_trained_again(tmp_path: Path) -> None:
    """A `vibrary train` killed between the end of its training and its download (a kill, a reboot, a Ctrl-C
    while it installed): the same command trained it all again, from the first epoch, and the trained model
    lay uncollected. Once collected, the same job started again is a new training."""
    from vibrary.trainer.service import serve

    manifest, blobs = _manifest_and_blobs(per_kind=4, seed=0)
    (tmp_path / "shards").mkdir()
    _store(blobs, tmp_path / "shards")
    short = json.dumps({"epochs": 2})
    serving = serve(tmp_path / "trainer", "127.0.0.1:0")
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            client.upload(manifest, tmp_path / "shards")
            first = client.start(manifest, "k", "none", short, followed=True)
            assert [u.state for u in client.watch(first.id)][-1] == pb.Job.SUCCEEDED
    finally:
        serving.stop(grace=0)  # the caller gone before its download
    serving = serve(tmp_path / "trainer", "127.0.0.1:0", resume=[])  # as the next `vibrary train` starts its own
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            again = client.start(manifest, "k", "none", short, followed=True)
            assert (again.id, again.state) == (first.id, pb.Job.SUCCEEDED)
            assert "model.onnx" in client.download(again.id)
            anew = client.start(manifest, "k", "none", short, followed=True)  # collected: trained anew
            assert anew.id != first.id
            client.cancel(anew.id)
    finally:
        serving.stop(grace=0)


def test_a_full_disk_is_said_as_such_not_in_torchs_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """torch wraps a full disk's OSError in "[enforce fail at inline_container.cc:672] . unexpected pos …":
    the job failed as an "internal error" in those words, and its traceback filled the terminal. (The first
    checkpoint's write is made to fail so: no epoch was saved, so none is gone on from, as was said.)"""
    import errno

    from vibrary.trainer import pipeline
    from vibrary.trainer.service import serve

    def no_space(*args: object, **kwargs: object) -> None:
        if saving[-1]:  # an epoch's checkpoint was saved before the disk filled
            Path(str(args[7])).write_bytes(b"epoch 1")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 410624 vs 410520") from e

    saving: list[bool] = []
    monkeypatch.setattr(pipeline, "train_to_files", no_space)
    manifest, blobs = _manifest_and_blobs(per_kind=4, seed=0)
    (tmp_path / "shards").mkdir()
    _store(blobs, tmp_path / "shards")
    serving = serve(tmp_path / "trainer", "127.0.0.1:0")
    said = []
    try:
        with TrainerClient(f"127.0.0.1:{serving.port}") as client:
            client.upload(manifest, tmp_path / "shards")
            for epochs in (2, 3):  # (the second saves a checkpoint first)
                saving.append(epochs == 3)
                job = client.start(manifest, "k", "none", json.dumps({"epochs": epochs}), followed=True)
                (*_, last) = client.watch(job.id)
                assert last.state == pb.Job.FAILED and last.error.startswith("the trainer's disk is full")
                said.append(last.error)
    finally:
        serving.stop(grace=0)
    assert "starts anew: no epoch's checkpoint could be saved" in said[0] and "enforce fail" not in said[0]
    assert "goes on from its last finished epoch (a checkpoint is kept)" in said[1]
    assert not [r for r in caplog.records if r.exc_info]


def test_a_job_queued_on_the_trainer_says_why_it_waits() -> None:
    """`vibrary train` said "queued", and then nothing for the minutes the trainer's other job took."""
    from vibrary.daemon.training import TrainProgress, _forward
    from vibrary.proto import trainer_pb2

    queued = _forward(trainer_pb2.Job(state=trainer_pb2.Job.QUEUED, phase="queued"), TrainProgress())
    assert queued["state"] == "waiting" and "starts this one once those before it end" in queued["message"]
    running = _forward(trainer_pb2.Job(state=trainer_pb2.Job.RUNNING, phase="training"), TrainProgress())
    assert (running["state"], running["message"]) == ("training", "training")


def test_a_job_the_trainer_no_longer_has_says_to_start_the_training_again(
    trainer_service: str, model_home: Path
) -> None:
    """A daemon back after a month found its job removed from the trainer, and said only "no job 'x'"."""
    told: list[TrainProgress] = []
    record = JobRecord("kinds", "kinds", trainer_service, job_id="0123456789ab")
    with contextlib.closing(Index(config.index_path(model_home))) as index, pytest.raises(TrainingError):
        resume(model_home, record, index=index, progress=told.append)
    assert told[-1].state == "failed"
    assert "the trainer no longer has job 0123456789ab" in told[-1].error and "`vibrary train kinds`" in told[-1].error


def test_the_trainer_this_machine_starts_is_named_as_such_in_its_refusals(tmp_path: Path) -> None:
    """Its refusals named "trainer at 127.0.0.1:39735", a port the producer never chose (a full disk there
    read as a stranger's trainer)."""
    import threading

    from vibrary.clients.client import DaemonError
    from vibrary.daemon import training

    record = training.JobRecord(dataset="mine", name="mine", trainer="local")
    local = training._trainer_at(tmp_path, record, lambda **_: None, threading.Event(), None)
    with local as client, pytest.raises(DaemonError) as refused:
        client.download("no-such-job")
    assert str(refused.value).startswith(f"the trainer on this machine (in {tmp_path / 'trainer'}): ")


def test_a_confusion_matrix_title_fits_its_figure() -> None:
    """A small dataset's title ("clips held out in 5 folds, in turn, each by a quick fit on the others") was
    cut off at both ends of a two-tag figure."""
    import matplotlib.pyplot as plt
    from vibrary.trainer import pipeline
    from vibrary.trainer.plots import confusion_figure

    title = f"mine\nclips held out in 5 folds, in turn{pipeline.STAND_IN}"
    # (long tag names push the axes right: a title centred over them ran off the edge, "…each b")
    for classes in (["dark", "bright"], [f"tag {i}" for i in range(15)], ["bright plucks", "dark pads", "wobbly"]):
        fig = confusion_figure(np.eye(len(classes), dtype=int), classes, title)
        (said,) = [t for t in [*fig.texts, fig.axes[0].title] if "clips held out" in t.get_text()]
        box = said.get_window_extent(fig.canvas.get_renderer())
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1, (classes, box, fig.bbox)
        plt.close(fig)
