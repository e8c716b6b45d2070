"""Who is calling the trainer: per-user tokens, stored only as salted hashes.

A trainer on the network is shared by people who must not see each other's data. Each user gets a random
token (`vibrary trainer token add USER` prints it once); the trainer keeps a salted sha256 of it in
`tokens.json` under its data folder, so a copy of that folder does not let anyone in. The single
`--token` of earlier versions still works: it is the user "default". With neither, only a loopback
trainer is served, to the user "local" (a trainer on the network whose last token is removed serves
nobody). Tokens are read again when the file changes, so adding or
removing a user needs no restart. Nothing here imports torch: the CLI manages tokens without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from pathlib import Path

from vibrary.daemon import atomic

log = logging.getLogger(__name__)

USER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
LOCAL = "local"  # the one user of a trainer open on loopback without tokens
DEFAULT = "default"  # the user of the single --token


def tokens_path(data: Path) -> Path:
    return data / "tokens.json"


def _hash(salt: str, token: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + token.encode()).hexdigest()


def check_user(user: str) -> str:
    if not USER.fullmatch(user):  # (match let a trailing newline through)
        raise ValueError(f"bad user name {user!r}: 1–32 of a-z 0-9 _ . - (starting with a letter or digit)")
    return user


def _load(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {check_user(u): {"salt": str(e["salt"]), "sha256": str(e["sha256"])} for u, e in raw["users"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a token file ({e})") from None


def _save(path: Path, users: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(path, json.dumps({"users": users}, indent=1), mode=0o600)


def add_token(data: Path, user: str) -> str:
    """A new token for user (replacing any earlier one); the token itself is returned, never stored."""
    if user in (LOCAL, DEFAULT):
        raise ValueError(f"{user!r} is reserved (the user of an open loopback trainer or of --token)")
    users = _load(tokens_path(data))
    token = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    users[check_user(user)] = {"salt": salt, "sha256": _hash(salt, token)}
    _save(tokens_path(data), users)
    return token


def open_jobs(data: Path) -> int:
    """Jobs of an open trainer's callers (the local user) queued or training: a first token closes the trainer
    to them, and the `vibrary train` that waits for one cannot collect its model."""
    records = (data / "tenants" / LOCAL / "jobs").glob("*/job.json")
    states = []
    for record in records:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            states.append(json.loads(record.read_text()).get("job", {}).get("state"))
    return sum(state in ("QUEUED", "RUNNING") for state in states)


def remove_token(data: Path, user: str) -> bool:
    users = _load(tokens_path(data))
    if users.pop(user, None) is None:
        return False
    _save(tokens_path(data), users)
    return True


def leftover(data: Path, user: str) -> Path | None:
    """The folder of jobs and shards a user left when their token was removed (None: none, or they hold a token
    now): a new token of the same name must not inherit them (another person's models and spectrograms)."""
    folder = data / "tenants" / user
    if user in (LOCAL, DEFAULT):  # never in tokens.json: their folders are in use (add_token refuses the names)
        return None
    return folder if folder.is_dir() and user not in _load(tokens_path(data)) else None


def set_aside(folder: Path) -> Path:
    """A removed user's folder (`leftover`) moved where no trainer serves it from: data/removed/USER-WHEN."""
    name = f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target = folder.parent.parent / "removed" / name
    target.parent.mkdir(mode=0o700, exist_ok=True)
    n = 1
    while target.exists() or target.is_symlink():  # (twice in a second: the first one's was replaced)
        n += 1
        target = target.with_name(f"{name}.{n}")  # (a user's name may hold dots: j.doe)
    folder.rename(target)
    return target


def list_users(data: Path) -> list[str]:
    return sorted(_load(tokens_path(data)))


class Tenants:
    """Maps the `authorization: Bearer <token>` of a call to its user, or None for a stranger."""

    def __init__(self, data: Path, token: str = "", open_ok: bool = True, own: bool = False) -> None:
        self._path = tokens_path(data)
        self._token = token
        self._open_ok = open_ok  # False off loopback: removing the last token locks everyone out
        # the daemon's own trainer: the users of tokens.json are `trainer serve`'s, not its; its one caller, the
        # local user, comes with `token` (a run's own)
        self._own = own
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict[str, str]] = {}
        self._damaged = False
        self._reload(starting=True)

    def _reload(self, starting: bool = False) -> None:
        """tokens.json read again when it changed. One that cannot be read (an admin's edit left a trailing
        comma; an editor caught halfway through writing it) stops a trainer from starting; a running one says
        why once, lets no call in until it is mended (the edit may have been a revocation), and keeps its
        running jobs going (they failed: "revoked" is asked each batch)."""
        try:
            st = self._path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._users = _load(self._path) if stamp else {}
                    self._damaged = False
                except ValueError as e:
                    if starting:
                        raise
                    log.error("%s: no call is let in until it is mended; running jobs go on", e)
                    self._damaged = True
                self._stamp = stamp

    @property
    def open(self) -> bool:
        """True when no token at all is configured: every caller is the local user."""
        self._reload()
        return not self._token and (self._own or not self._users)

    def has_users(self) -> bool:
        """Whether tokens.json names any user (beside them, the one of --token is held to a user's share)."""
        self._reload()
        return bool(self._users)

    def revoked(self, user: str) -> bool:
        """Whether `user` was one of tokens.json's and is no more (`vibrary trainer token remove`). Asked
        every batch: the local and default users, never in tokens.json, cost no look at the file."""
        if user in (LOCAL, DEFAULT):
            return False
        self._reload()
        return user not in self._users

    def user(self, authorization: str) -> str | None:
        self._reload()
        if self._damaged and not self._own:
            return None
        if self.open:
            return LOCAL if self._open_ok else None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":  # as daemon/rpc.py reads it: schemes ignore case
            return None
        given = given.strip()
        found = None
        if self._token and hmac.compare_digest(given.encode(), self._token.encode()):
            found = LOCAL if self._own else DEFAULT
        if self._own:
            return found
        for name, entry in self._users.items():  # every entry is compared: the time says nothing
            if hmac.compare_digest(_hash(entry["salt"], given), entry["sha256"]):
                found = name
        return found
