"""Files replaced whole (daemon/atomic.py): a write that fails leaves the previous version and nothing else.
A full disk is played by a file-size limit (RLIMIT_FSIZE) in a child process: its writes past the limit
fail with EFBIG as they would with ENOSPC (Python ignores SIGXFSZ)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from vibrary.daemon import atomic, config, registry
from vibrary.daemon.index import Index


def _with_a_full_disk(code: str, limit: int, **names: object) -> str:
    """Run `code` in a child whose files cannot grow past `limit` bytes from where #LIMIT stands; what it
    printed."""
    setup = f"import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    values = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    done = subprocess.run(
        [sys.executable, "-c", values + textwrap.dedent(code).replace("#LIMIT\n", setup)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_replaced_file_is_the_new_one_and_keeps_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    atomic.write(path, "old")
    atomic.write(path, b"new", mode=0o600)
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600
    assert os.listdir(tmp_path) == ["token.json"]


def test_an_error_while_writing_leaves_the_previous_file_and_no_part(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text("the dataset's labels")
    with pytest.raises(RuntimeError), atomic.writing(path) as f:
        f.write(b"half of the new labe")
        raise RuntimeError("cut")
    assert path.read_text() == "the dataset's labels" and os.listdir(tmp_path) == ["labels.json"]


def test_a_read_error_while_copying_names_the_source_and_leaves_the_target(tmp_path: Path) -> None:
    """A failing drive's EIO carries no file name: it was said of the model being installed, not of the file
    it was read from. /proc/self/mem answers its first byte with EIO, as a bad sector does."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"before")
    with pytest.raises(OSError) as raised:
        atomic.copy(Path("/proc/self/mem"), target)
    assert raised.value.errno == errno.EIO and raised.value.filename == "/proc/self/mem"
    assert target.read_bytes() == b"before" and not list(tmp_path.glob("*.part"))
    source = tmp_path / "big.onnx"
    source.write_bytes(os.urandom(atomic.CHUNK * 2 + 5))  # more than one read
    atomic.copy(source, target)
    assert target.read_bytes() == source.read_bytes()


def test_a_full_disk_mid_write_leaves_the_previous_file_and_no_part(tmp_path: Path) -> None:
    """A config written in place was left cut short (the daemon then refused to start); a model copied to
    a `.part` on a full disk left the part behind, taking the space the user was short of."""
    path = tmp_path / "config.json"
    config.Settings(workers=3).save(tmp_path)
    said = _with_a_full_disk(
        """
        from pathlib import Path
        from vibrary.daemon import atomic, config
        #LIMIT
        for what in (lambda: config.Settings(workers=5, nice=19).save(Path(folder)),
                     lambda: atomic.copy(Path(big), Path(folder) / "copy.bin")):
            try:
                what()
            except OSError as e:
                print(e.errno, e.filename)
        """,
        limit=path.stat().st_size - 10,
        big=str(registry.BUILTIN_DIR / "demo.onnx"),
        folder=str(tmp_path),
    )
    # each names the file it could not write (a full disk's own words named none)
    assert said.splitlines() == [f"{errno.EFBIG} {path}", f"{errno.EFBIG} {tmp_path / 'copy.bin'}"]
    assert config.Settings.load(tmp_path).workers == 3 and os.listdir(tmp_path) == ["config.json"]


def test_a_model_that_does_not_fit_on_the_disk_is_not_installed_and_leaves_nothing(home: Path) -> None:
    index = Index(config.index_path(home))
    index.close()
    models = config.models_dir(home)
    said = _with_a_full_disk(
        """
        from pathlib import Path
        from vibrary.daemon import config, registry
        from vibrary.daemon.index import Index
        index = Index(config.index_path(Path(home)))
        #LIMIT
        try:
            registry.install(index, Path(home), str(registry.BUILTIN_DIR / "demo.onnx"), "mine")
        except OSError as e:
            print(e.errno)
        """,
        limit=64 * 1024,
        home=str(home),
    )
    assert said.split() == [str(errno.EFBIG)]
    assert [p.name for p in models.rglob("*") if p.is_file()] == []
    index = Index(config.index_path(home))
    try:
        assert [m.name for m in index.models() if m.name == "mine"] == []
    finally:
        index.close()


def test_two_writers_of_one_file_each_publish_a_whole_one(tmp_path: Path) -> None:
    """Both wrote `NAME.part`: the second's start unlinked the first's, and the first, done, published the
    second's half-written file under the name (then the second failed, FileNotFoundError)."""
    target = tmp_path / "tokens.json"
    first, second = atomic.writing(target), atomic.writing(target)
    first.__enter__().write(b'{"a": 1}')
    late = second.__enter__()
    late.write(b'{"b": [1, 2,')
    late.flush()
    first.__exit__(None, None, None)
    assert target.read_bytes() == b'{"a": 1}'
    late.write(b" 3]}")
    second.__exit__(None, None, None)
    assert target.read_bytes() == b'{"b": [1, 2, 3]}' and not list(tmp_path.glob("*.part"))


def test_a_part_left_by_a_write_cut_off_an_hour_ago_is_removed_by_the_next(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    old, fresh = tmp_path / "config.json.0123456789ab.part", tmp_path / "config.json.ba9876543210.part"
    for part in (old, fresh):
        part.write_bytes(b"cut off")
    os.utime(old, (time.time() - 2 * atomic.STALE_S,) * 2)
    atomic.write(target, "{}")
    assert not old.exists() and fresh.exists()  # (another process may still be writing that one)
