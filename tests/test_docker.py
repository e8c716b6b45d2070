"""The trainer image: what can be checked without Docker always, the image itself where Docker runs."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from vibrary.clients.cli import build_parser
from vibrary.clients.training_commands import cmd_trainer
from vibrary.daemon import cloud

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _argv(value: str) -> list[str]:
    return list(json.loads(value)) if value.startswith("[") else shlex.split(value)


def test_the_image_runs_as_a_user_with_a_health_check_and_commands_that_exist() -> None:
    steps = _instructions()
    users = [v for k, v in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (k, _) in enumerate(steps) if k == "USER")
    assert all(k != "RUN" for k, _ in steps[last_user:]), "nothing may run as root after USER"
    (health,) = [v for k, v in steps if k == "HEALTHCHECK"]
    (cmd,) = [v for k, v in steps if k == "CMD"]
    probe = _argv(health.split(" CMD ", 1)[1])
    serve = _argv(cmd)
    job = shlex.split(cloud.user_data(cloud.CloudSettings(bucket="b", image="img"), "r", "s3://b/jobs/x/job.json"))
    job = job[job.index("img") + 1 : job.index("img") + 5]
    for argv, action in ((probe, "health"), (serve, "serve"), (job, "run-s3")):
        assert argv[0] == "vibrary"
        args = build_parser().parse_args(argv[1:])
        assert args.func is cmd_trainer and args.action == action
    assert build_parser().parse_args(serve[1:]).listen.endswith(":7878")
    assert any(k == "ARG" and v.startswith("TORCH_INDEX=") for k, v in steps)
    assert any(k == "ARG" and v == "TORCH_VERSION=2.13.0" for k, v in steps)
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    # everything is left out but the sources: a build never ships the venv, .git, or someone's audio
    assert ignored[0] == "*" and {line for line in ignored if line[0] == "!"} == {
        "!pyproject.toml",
        "!README.md",
        "!daemon/",
        "!clients/",
        "!trainer/",
        "!proto/",
    }


def _docker_works() -> str:
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return "" if info.returncode == 0 else f"`docker info` fails: {(info.stderr or info.stdout).strip()[:200]}"


NO_DOCKER = _docker_works()


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(bool(NO_DOCKER), reason=NO_DOCKER or "docker works")
def test_the_image_builds_serves_with_a_token_and_reports_healthy() -> None:
    import grpc
    from vibrary.clients.trainer_client import TrainerClient

    from tests.test_trainer import _free_port, _manifest_and_blobs
    from tests.test_trainer_tenants import _code

    tag = "vibrary-trainer:test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=3000)
    port = _free_port()
    name = f"vibrary-trainer-test-{port}"
    refused = subprocess.run(["docker", "run", "--rm", tag], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "without a token" in refused.stderr
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:7878",
            "-e",
            "VIBRARY_TRAINER_TOKEN=t0k",
            tag,
        ],
        check=True,
    )
    try:
        assert (
            subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip() != "0"
        )
        for _ in range(120):
            state = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True, text=True
            ).stdout.strip()
            if state == "healthy":
                break
            time.sleep(1)
        assert state == "healthy"
        manifest, _ = _manifest_and_blobs()
        with TrainerClient(f"127.0.0.1:{port}", "t0k") as client:
            assert len(client.missing(manifest)) == len(manifest.shards)
        with TrainerClient(f"127.0.0.1:{port}", "nope") as client:
            assert _code(lambda: client.missing(manifest)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        subprocess.run(["docker", "stop", name], capture_output=True)
