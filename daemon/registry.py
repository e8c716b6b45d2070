"""Installed models: ONNX files under the home's models/ folder, their versions and which are active.

Each install is a new version; older versions stay on disk so that a rollback is one activation away.
The demo model shipped inside the package is registered on first use and active on a fresh home.
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from pathlib import Path

from . import atomic, config
from .config import check_name
from .index import Index, ModelRow
from .infer import Model, ModelError, sha256_file

log = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).parent / "builtin"


def install(
    index: Index, home_dir: Path, source: str, name: str = "", builtin: bool = False, active: bool = False
) -> ModelRow:
    """Validate an ONNX file (loads it, runs it once), copy it into the home, register a new version (and
    with `active`, activate it as it is registered)."""
    model = Model(source, threads=1)  # raises ModelError with the reason when it does not fit
    name = unicodedata.normalize("NFC", name or model.info.name)  # (as modelref.parse_ref spells it)
    try:
        check_name(name, "model")
    except ValueError as e:
        raise ModelError(str(e)) from None
    digest = sha256_file(source)
    for row in index.models():
        if row.name == name and row.sha256 == digest:  # the same file installed twice is the same version
            if not row.builtin and sha256_file_or_none(row.path) != digest:  # its copy lost or damaged: restored
                _copy(source, row.path)
            if active:
                index.set_active(row, True)
            return index.model(row.name, row.version)
    if builtin:
        target = source
    else:
        check_free_name(index, name)
        folder = config.models_dir(home_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        target = str(folder / f"{digest[:16]}.onnx")
        _copy(source, target)
        try:  # as copied: one whose weights lie in files beside it (ONNX external data) loaded there, not here
            Model(target, threads=1)
        except ModelError as e:
            Path(target).unlink(missing_ok=True)
            raise ModelError(f"{e}; its weights must be inside the .onnx file, not in files beside it") from None
    return index.add_model(name, target, digest, model.info.classes, model.info.params.to_json(), builtin, active)


def _copy(source: str, target: str) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    atomic.copy(Path(source), Path(target))  # never a half-written model under its final name


def sha256_file_or_none(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def usable(row: ModelRow) -> bool:
    """Whether the model's file is still there as installed (models list and status say when not)."""
    return sha256_file_or_none(row.path) == row.sha256


def check_free_name(index: Index, name: str) -> None:
    """A model installed or trained under a built-in model's name (`models install --name demo`, a dataset
    called `demo`) became that model's next version, and activating it deactivated the built-in one: its 15
    instrument tags left every search without a word. One named as another but for case (`Demo`, `Moods`) was a
    model of its own beside it (`--model Moods`: "no model Moods"), and one folder on macOS's disks."""
    models = index.models()
    held = any(m.name == name for m in models)  # (a home from before the refusal may hold twins: each goes on)
    for m in models:
        if m.builtin and m.name.casefold() == name.casefold():
            raise ModelError(
                f"model name {name!r} is the built-in model's: yours would replace it; give it another name"
            )
        if m.name != name and m.name.casefold() == name.casefold() and not held:
            raise ModelError(
                f"model {m.name!r} is installed, and names that differ only in case would be two models: "
                f"use {m.name!r} for a new version of it (--name {m.name}), or another name"
            )


PLOTS = ("learning_curve.png", "confusion_matrix.png")  # a trained model's plots, beside its file


def remove(index: Index, row: ModelRow) -> ModelRow | None:
    """Forget a version and delete its file and plots; returns the version activated in its place."""
    if row.builtin:
        raise ModelError(f"{row.ref} is built in; deactivate it instead")
    successor = index.remove_model(row)
    if any(m.path == row.path for m in index.models()):  # another version is this file (a home from before
        return successor  # add_model knew a file installed twice at once): it keeps it
    for path in [Path(row.path), *(Path(row.path).with_suffix(f".{plot}") for plot in PLOTS)]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # its model's folder, when it was the last version (else not empty)
        Path(row.path).parent.rmdir()
    return successor


def ensure_builtin(index: Index, home_dir: Path) -> list[ModelRow]:
    """Register the shipped models on a fresh home and activate them; a home that has seen them keeps
    the user's choice."""
    rows = []
    known = {m.sha256 for m in index.models()}
    for path in sorted(BUILTIN_DIR.glob("*.onnx")):
        if sha256_file(str(path)) in known:
            continue
        try:
            row = install(index, home_dir, str(path), builtin=True, active=True)
        except ModelError as e:  # a damaged install: every command would stop on it, even the ones that can help
            log.error("the built-in model %s cannot be used (%s): reinstall Vibrary", path.name, e)
            continue
        rows.append(row)
    return rows
