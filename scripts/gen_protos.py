"""Regenerate the checked-in gRPC code from proto/vibrary/v1/*.proto.

The generated modules are checked in so that installing Vibrary needs no protoc. protoc writes absolute
imports (`from vibrary.v1 import x_pb2`); the package is installed as `vibrary.proto`, so they are
rewritten as relative imports. `--check` regenerates into a temporary folder and fails when the
checked-in files differ (tests run it).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "vibrary" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every proto into out_dir; returns the generated files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted((out_dir / "vibrary" / "v1").glob("*_pb2*.py*"))
    for path in generated:
        text = re.sub(r"^from vibrary\.v1 import", "from . import", path.read_text(), flags=re.M)
        path.write_text(text)
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if checked-in code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = [p.name for p in generated if not _same(p, PACKAGE_DIR / p.name)]
        if args.check:
            if stale:
                print("stale generated code: " + ", ".join(stale), file=sys.stderr)
                return 1
            return 0
        for path in generated:
            (PACKAGE_DIR / path.name).write_text(path.read_text())
        print(f"wrote {len(generated)} files to {PACKAGE_DIR}")
    return 0


def _same(new: Path, old: Path) -> bool:
    return old.exists() and old.read_text() == new.read_text()


if __name__ == "__main__":
    raise SystemExit(main())
