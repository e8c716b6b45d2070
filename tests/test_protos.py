"""Checked-in files made by scripts are current: the gRPC code is what the protos generate (a stale copy
would silently drop fields), and the CLI reference names every command and option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_protos() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_generated_modules_import_under_the_namespaced_package() -> None:
    from vibrary.proto import daemon_pb2, daemon_pb2_grpc

    assert daemon_pb2.DESCRIPTOR.package == "vibrary.v1"
    assert hasattr(daemon_pb2_grpc, "DaemonStub")
    assert "decoded" in daemon_pb2.Status.DESCRIPTOR.fields_by_name


def test_the_cli_reference_names_every_command_and_option() -> None:
    """docs/cli.md is where the options the README does not show are documented: a new one must be there."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
