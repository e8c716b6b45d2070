"""Where Vibrary keeps its state, and the daemon's tunables.

Everything lives under one home folder ($VIBRARY_HOME, else the platform's user data folder), so two homes
never interfere and two daemons can run side by side.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import platformdirs

from . import atomic

QUERY_WORDS = frozenset({"or", "and", "not"})  # a search's own words (clients/query.py): no tag can be one
# characters of a tag at most, a dataset's or a model's class: a folder's name, so that `--labels folders` takes
# any folder (a tag of 1 MB was taken)
LONGEST_TAG = 255


def tag_key(text: str) -> str:
    """A tag as it is stored and searched: case aside, as people type tags, and in one Unicode form (a tag
    pasted from a macOS folder name spells é as e and an accent, and found nothing)."""
    return unicodedata.normalize("NFC", text.strip()).lower()


MOST_CLASSES = 10_000  # a model's classes, at most (every search, count and reply lists them)
# control characters (C0, DEL, C1), the bidi marks, overrides and isolates (which reorder what a terminal shows),
# invisible spaces and breaks, and lone surrogates (which no reply can carry: a class "a\ud800" broke every
# ListModels); the zero width (non-)joiners of Persian words and emoji sequences stay
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def class_tags(names: object) -> tuple[str, ...]:
    """A model's class names as the tags they are (`Kick` is kick), or ValueError for names no search could
    find or tell apart. Every model loaded is held to this; `check_new_classes` adds what only models made
    or installed from now on are (a model that worked before an upgrade goes on working)."""
    # (an exporter's id2label object gave the tags "0" and "1"; a string, a tag of each letter)
    classes = tuple(names) if isinstance(names, list) else ()
    if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ValueError("must be a non-empty list of names")
    classes = tuple(tag_key(c) for c in classes)
    unsearchable = [c for c in classes if c in QUERY_WORDS or c.startswith("-") or "|" in c]
    if unsearchable:  # `vibrary search or` is a usage error, `-snare` leaves snare out: such a tag is never found
        raise ValueError(f"class names {unsearchable} read as search syntax (OR AND NOT, -, |): rename them")
    twice = sorted(c for c, n in Counter(classes).items() if n > 1)  # (count() a class: 497 s for 200,000)
    if twice:
        raise ValueError(f"names {', '.join(map(repr, twice))} more than once")
    return classes


def check_new_classes(classes: tuple[str, ...]) -> None:
    """ValueError for class names a model made or installed now may not have: a shared model's names reached
    terminals raw (colours, a window title, forged lines), and 200,000 classes cost every start and file."""
    if len(classes) > MOST_CLASSES:
        raise ValueError(f"{len(classes):,} classes; {MOST_CLASSES:,} at most")
    if odd := next((c for c in classes if len(c) > LONGEST_TAG or _UNPRINTABLE.search(c)), None):
        raise ValueError(f"class name {odd[:40]!r} is longer than {LONGEST_TAG} characters or holds control characters")


LONGEST_NAME = 100  # characters of a dataset's or a model's name


def check_name(name: str, what: str = "dataset") -> None:
    """Dataset and model names become folder and file names of the home: nothing that could leave it.
    Here, beside the home's layout, so that the registry and the trainer service need not load datasets."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{what} name {name!r}: use letters, digits, '-' and '_', with at least one letter or digit")
    if len(name) > LONGEST_NAME:
        raise ValueError(f"{what} name of {len(name)} characters: {LONGEST_NAME} at most")


def disk_trouble(folder: str) -> str:
    """What is wrong with the disk holding `folder`, in words, or "" when nothing is seen: its errors came as
    "disk I/O error" or "[Errno 28] No space left on device", naming neither the disk nor what to do."""
    folder = _nearest(folder)
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return f"the disk holding {folder} is read-only: make it writable, or set VIBRARY_HOME to a folder on another"
    if (free := st.f_bavail * st.f_frsize) < DISK_LOW_BYTES:
        return f"the disk holding {folder} is full ({free:,} bytes free): free some space and try again"
    return ""


DISK_LOW_BYTES = 1 << 20  # free bytes below which a disk's error is taken for a full disk


def read_only(folder: str) -> bool:
    """Whether the disk holding `folder` is mounted read-only: nothing at all can be written there (a nearly
    full one may still take a daemon whose index is made)."""
    try:
        return bool(os.statvfs(_nearest(folder)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _nearest(folder: str) -> str:
    """The folder, or the nearest one above it that exists: a home not made yet is on its parent's disk."""
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def home(create: bool = True) -> Path:
    """$VIBRARY_HOME, or the platform's user data folder; made (mode 0700) unless `create` is False, as
    for a client that only looks for a daemon there."""
    root = os.environ.get("VIBRARY_HOME") or platformdirs.user_data_dir("vibrary", appauthor=False)
    path = Path(root).expanduser().absolute()
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except (FileExistsError, NotADirectoryError):  # it said "[Errno 17] File exists: '/path'"
            up = (path, *path.parents)
            if link := next((p for p in up if p.is_symlink() and not p.exists()), None):  # a drive not plugged in
                raise NotADirectoryError(
                    f"{link} links to {os.readlink(link)}, which is not there (a drive not mounted?): mount it, or set"
                    " VIBRARY_HOME to a folder"
                ) from None
            file = next((p for p in up if p.exists() and not p.is_dir()), path)
            raise NotADirectoryError(
                f"{file} is a file, so the home {path} cannot be a folder: set VIBRARY_HOME to a folder"
            ) from None
    return path


# the most each setting may be: beyond, a traceback (100000 workers: "can't start new thread"), or files that
# wait for decades (a settle_s of 1e9), or a score no tag reaches (a store_min_score of 5)
MOST = {
    "workers": 64,
    "batch_size": 1024,
    "queue_size": 100_000,
    "nice": 19,
    "settle_s": 3600,
    "store_min_score": 1,
    "rescan_hours": 24 * 365,
}


@dataclass
class Settings:
    """Daemon tunables; `config.json` in the home overrides the defaults, flags override both."""

    workers: int = 0  # decode/spectrogram threads; 0: one per core
    batch_size: int = 8  # clips per onnxruntime call: larger batches only grow onnxruntime's memory
    queue_size: int = 64  # files in flight between the index and the workers: memory stays bounded
    # a file still being written is read when its writer closes it, or after this long without change where the
    # system does not report closes (macOS, Windows); on Linux a writer that keeps it open is waited for longer
    # (watch.WRITER_OPEN_S)
    settle_s: float = 1.0
    nice: int = 10  # OS priority of the daemon: the DAW always wins (0: CPU and I/O priority left as they are)
    cache_max_mb: int = 2048  # spectrogram cache size, the least recently written evicted first
    store_min_score: float = 0.02  # scores below this are not stored (except each model's best tag)
    rescan_hours: float = 6.0  # every watch is scanned again this often, for what no event said; 0: at start only

    @classmethod
    def load(cls, home_dir: Path) -> Settings:
        path = home_dir / "config.json"
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f'{path}: expected an object of settings, e.g. {{"workers": 2}}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        for name, value in raw.items():
            kind = type(getattr(cls, name))  # the default's type: int, or float (which takes an int too)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float) if kind is float else int)
                or not math.isfinite(value)  # JSON's NaN and 1e999 (inf): a settle_s of inf left files pending
            ):
                raise ValueError(f"{path}: {name} must be {'a number' if kind is float else 'a whole number'}")
            least = 1 if name in ("batch_size", "queue_size") else 0
            if value < least:
                raise ValueError(f"{path}: {name} must be {least} or more")
            if value > MOST.get(name, value):
                raise ValueError(f"{path}: {name} must be {MOST[name]} or less")
        return cls(**raw)

    def save(self, home_dir: Path) -> None:
        atomic.write(home_dir / "config.json", json.dumps(asdict(self), indent=2) + "\n")

    @property
    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


def index_path(home_dir: Path) -> Path:
    return home_dir / "index.sqlite"


def cache_path(home_dir: Path) -> Path:
    return home_dir / "spectrograms.sqlite"


def models_dir(home_dir: Path) -> Path:
    return home_dir / "models"


def socket_path(home_dir: Path) -> Path:
    return home_dir / "daemon.sock"


SOCKET_PATH_MAX = 100  # bytes: sockaddr_un holds 104-108, depending on the OS


def unix_target(path: Path | str) -> str:
    """The gRPC address of a Unix socket: a URI, so a home named `Beats #2` or `100%` is percent-encoded
    (as written, the daemon listened where no client looked, or did not start). ValueError for a path too
    long to be a socket's: the daemon cannot listen there, and gRPC's own words for it are noise."""
    if len(str(path).encode()) > SOCKET_PATH_MAX:
        raise ValueError(
            f"socket path too long for a Unix socket ({len(str(path).encode())} bytes, {SOCKET_PATH_MAX} at most): "
            f"{path}; set VIBRARY_HOME to a shorter folder"
        )
    return "unix:" + urllib.parse.quote(str(path), safe="/")


def log_path(home_dir: Path) -> Path:
    return home_dir / "daemon.log"


def lock_path(home_dir: Path) -> Path:
    """Held by the running daemon (an flock): who it is, and whether one runs at all."""
    return home_dir / "daemon.lock"


def failing_path(home_dir: Path) -> Path:
    """The active models set aside for failing on every file they were given (pipeline.FAILS_AFTER), as
    {id: [ref, error]}: aside again at a restart (loaded anew, each failed its first files again, and every
    file indexed meanwhile was read again for it), until the active models change."""
    return home_dir / "failing.json"


def failing(home_dir: Path, active: dict[int, str]) -> dict[int, tuple[str, str]]:
    """The models set aside as failing_path holds them, {id: (ref, error)}, while the active models ({id:
    ref}) are those they were set aside among (else {}: a change of them gives each its chance again, one
    made by `vibrary models` while the daemon was down too); ValueError for a damaged file."""
    try:
        saved = json.loads(failing_path(home_dir).read_text())
        among = {int(i): str(ref) for i, ref in saved["active"].items()}
        aside = {int(i): (str(ref), str(error)) for i, (ref, error) in saved["aside"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, TypeError, AttributeError, KeyError) as e:
        raise ValueError(str(e)) from None
    return aside if among == active else {}


def save_failing(home_dir: Path, active: dict[int, str], aside: dict[int, tuple[str, str]]) -> None:
    """failing_path as `failing` reads it; none set aside: no file."""
    path = failing_path(home_dir)
    if aside:
        atomic.write(path, json.dumps({"active": active, "aside": {i: list(why) for i, why in aside.items()}}))
    else:
        path.unlink(missing_ok=True)


def paused_path(home_dir: Path) -> Path:
    """Present while indexing is paused: a marker file, so a restarted daemon stays paused."""
    return home_dir / "paused"


def training_path(home_dir: Path) -> Path:
    """The daemon's training on record (`training.JobRecord`): the next start collects it or says it was cut off."""
    return home_dir / "training.json"
