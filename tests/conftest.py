"""Fixtures: fresh homes, real models, and a real daemon process on a real Unix socket."""

from __future__ import annotations

import compileall
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The suite runs in two processes (-n 2), each training and starting trainers: torch's two OpenMP threads
# per process spun against the other process's (a third of the training tests' time). One thread each; set
# before anything imports torch, and inherited by every process the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import grpc
import pytest
from vibrary.clients.client import Client
from vibrary.daemon import config, registry
from vibrary.daemon.index import Index

from tests.synth import band_model

# Tests run as root in CI; root reads files whatever their mode. Dropping these capabilities makes the
# processes under test meet "permission denied" like a producer's own account would.
AS_USER = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package once, before the workers start: the suite starts hundreds of CLIs,
    daemons and trainers, and where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines) each of
    them compiled every module it imports again, about 0.2 s of CPU a process (a quarter of a CLI call's)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        root = Path(__file__).resolve().parents[1]
        for folder in ("daemon", "clients", "proto", "trainer"):
            compileall.compile_dir(root / folder, quiet=2)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> object:
    """Poll until predicate() is truthy; fail the test with the last value otherwise."""
    end = time.monotonic() + timeout
    value = None
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


@contextlib.contextmanager
def home_held(home: Path) -> Iterator[int]:
    """A process that holds `home` as its daemon does, and answers nothing (as one starting, or hung): its pid."""
    hold = "import sys, time; from pathlib import Path; from vibrary.daemon import config, pidlock\n"
    hold += "lock = pidlock.hold(config.lock_path(Path(sys.argv[1]))); print('held', flush=True); time.sleep(120)"
    with subprocess.Popen([sys.executable, "-c", hold, str(home)], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            yield holder.pid
        finally:
            holder.kill()


def suspend(pid: int) -> None:
    """SIGSTOP, as ^Z does, and wait until it is taken: that is when the process is next scheduled, which at
    nice 19 on a busy machine is not at once (a client asked meanwhile saw a daemon not yet suspended)."""
    import psutil

    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, timeout=20)


@pytest.fixture(scope="session")
def band_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return band_model(tmp_path_factory.mktemp("models") / "bands.onnx")


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh VIBRARY_HOME with a short path (Unix socket paths are limited to ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vh-"))
    monkeypatch.setenv("VIBRARY_HOME", str(path))
    config.Settings(settle_s=0.2).save(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def model_home(home: Path, band_onnx: Path) -> Path:
    """A home whose only active model is the low/mid/high band model: its right answers are known."""
    return with_band_model(home, band_onnx)


def fill_disk(path: Path) -> None:
    """Write zeros to `path` until its disk is full (a tmpfs the test mounted)."""
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)


def with_band_model(home: Path, band_onnx: Path) -> Path:
    index = Index(config.index_path(home))
    for row in registry.ensure_models(index, home):
        index.set_active(row, False)
    index.set_active(registry.install(index, home, str(band_onnx)), True)
    index.close()
    return home


def vibrary(*args: str, home: Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as an ordinary user would."""
    env = {**os.environ, "VIBRARY_HOME": str(home)}
    proc = subprocess.run(
        [*AS_USER, sys.executable, "-m", "vibrary.clients.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vibrary {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class DaemonProcess:
    home: Path
    proc: subprocess.Popen[bytes]
    client: Client

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.client.close()

    def log(self) -> str:
        path = config.log_path(self.home)
        return path.read_text() if path.exists() else ""


# A command's prefix: its SIGHUP as a terminal's shell leaves it. A test suite run under `nohup` or a CI runner
# that ignores SIGHUP passes that on, and a daemon or a `vibrary train` honours it, so the tests of what a closed
# terminal does would wait for an exit that never comes. (Not a Popen preexec_fn: Python code run between fork
# and exec in a process with gRPC and Qt threads crashed the child now and then, SIGSEGV or SIGABRT.)
FROM_A_TERMINAL = (
    ["env", "--default-signal=HUP"]  # GNU coreutils 8.31 on; elsewhere (BSD, busybox) run the suite without nohup
    if subprocess.run(["env", "--default-signal=HUP", "true"], capture_output=True).returncode == 0
    else []
)


def start_daemon(home: Path, *extra: str, wrapper: Sequence[str] = ()) -> DaemonProcess:
    """`wrapper`: a command the daemon runs under (`nohup`)."""
    env = {**os.environ, "VIBRARY_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    said = tempfile.TemporaryFile()  # noqa: SIM115 (its stderr, for its whole life: what it says before its log)
    proc = subprocess.Popen(
        [*FROM_A_TERMINAL, *AS_USER, *wrapper, sys.executable, "-m", "vibrary.clients.cli", "daemon", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=said,
    )
    client = Client(home_dir=home, timeout=30)

    def up() -> bool:
        if proc.poll() is not None:
            said.seek(0)
            log = config.log_path(home)
            raise AssertionError(
                f"daemon exited with {proc.returncode}: {said.read().decode(errors='replace')[-3000:]}"
                f"{log.read_text()[-3000:] if log.exists() else f'(no {log}; home there: {home.exists()})'}"
            )
        try:
            grpc.channel_ready_future(client._channel).result(timeout=0.2)
            return True
        except grpc.FutureTimeoutError:
            return False

    wait_for(up, timeout=60)
    return DaemonProcess(home, proc, client)


@pytest.fixture
def daemon(model_home: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(model_home)
    yield d
    d.stop()
    if d.proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"daemon exited with {d.proc.returncode}:\n{d.log()}")


def self_signed(names: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 1) -> tuple[bytes, bytes]:
    """A certificate for these names, valid from 5 minutes ago for `days` (below 0: expired that long ago)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vibrary trainer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5) + datetime.timedelta(days=min(days, 0) * 2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) if n[0].isalpha() else x509.IPAddress(ipaddress.ip_address(n)) for n in names]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem
