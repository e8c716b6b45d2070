"""Installed models: ONNX files under the home's models/ folder, their versions and which are active.

Each install is a new version; older versions stay on disk so that a rollback is one activation away.
The demo model shipped inside the package is registered on first use and active on a fresh home.
"""

from __future__ import annotations

import contextlib
import json
import logging
import unicodedata
from pathlib import Path
from typing import Any

from . import atomic, config
from .config import check_name
from .index import Index, ModelRow
from .infer import SUMMARY_KEY, Model, ModelError, sha256_file

log = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).parent / "builtin"


def install(
    index: Index, home_dir: Path, source: str, name: str = "", builtin: bool = False, active: bool = False
) -> ModelRow:
    """Validate an ONNX file (loads it, runs it once), copy it into the home, register a new version (and
    with `active`, activate it as it is registered)."""
    model = Model(source, threads=1, installing=True)  # raises ModelError with the reason when it does not fit
    name = unicodedata.normalize("NFC", name or model.info.name)  # (as modelref.parse_ref spells it)
    try:
        check_name(name, "model")
    except ValueError as e:
        raise ModelError(str(e)) from None
    digest = sha256_file(source)
    for row in index.models():
        if row.name == name and row.sha256 == digest:  # the same file installed twice is the same version
            if not row.builtin and sha256_file_or_none(row.path) != digest:  # its copy lost or damaged: restored
                restored = home_path(home_dir, name, digest)  # (in this home, not where a home copied had it)
                _copy(source, str(restored))
                index.set_model_path(row, str(restored))
            try:
                if active:
                    index.set_active(row, True)
                return index.model(row.name, row.version)
            except KeyError:  # removed by another command meanwhile: installed anew below
                break
    if builtin:
        target = source
    else:
        check_free_name(index, name)
        target = str(home_path(home_dir, name, digest))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        _copy(source, target)  # (weights in files beside it were refused when it loaded: the copy is the model)
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


def training_summary(row: ModelRow) -> dict[str, Any]:
    """What a version's training measured, from its file ({} for a model trained elsewhere, or a file not there):
    versions of the same tags told apart by more than their dates, when one is picked to go back to."""
    import onnx  # (here: every command imports this module, and one whose onnx is broken must still say why)

    try:
        meta = {p.key: p.value for p in onnx.load(row.path, load_external_data=False).metadata_props}
        found = json.loads(meta.get(SUMMARY_KEY, "{}"))
    except Exception:  # (a file gone or damaged: `models list` says so of it already)
        return {}
    return found if isinstance(found, dict) else {}


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


def remove(index: Index, home_dir: Path, row: ModelRow) -> ModelRow | None:
    """Forget a version and delete its file and plots; returns the version activated in its place. Only
    files in this home's models folder are deleted (a home copied from another had the other's paths)."""
    if row.builtin:
        raise ModelError(f"{row.ref} is built in; deactivate it instead")
    successor = index.remove_model(row)
    if any(m.path == row.path for m in index.models()):  # another version is this file (a home from before
        return successor  # add_model knew a file installed twice at once): it keeps it
    if not Path(row.path).resolve().is_relative_to(config.models_dir(home_dir).resolve()):
        return successor
    for path in [Path(row.path), *(Path(row.path).with_suffix(f".{plot}") for plot in PLOTS)]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # its model's folder, when it was the last version (else not empty)
        Path(row.path).parent.rmdir()
    return successor


def ensure_models(index: Index, home_dir: Path) -> list[ModelRow]:
    """Register the shipped models on a fresh home and activate them (returned); a home that has seen them
    keeps the user's choice. Each model is found where this home and this install keep it (_found_here); a
    new release's model takes the place of the one of its name it supersedes, active only if that one was (a
    `deactivate` was undone by an upgrade), and the one it supersedes is forgotten once inactive (its file
    went with the old install: it was listed as damaged, and could not be removed)."""
    shipped = {sha256_file(str(path)): path for path in sorted(BUILTIN_DIR.glob("*.onnx"))}
    _found_here(index, home_dir, shipped)
    rows = []
    for digest, path in shipped.items():
        models = index.models()
        if any(m.sha256 == digest for m in models):
            continue
        try:
            name = Model(str(path), threads=1).info.name  # (one transaction: installed and activated, or not)
            earlier = [m for m in models if m.builtin and m.name == name]
            active = not earlier or any(m.active for m in earlier)
            row = install(index, home_dir, str(path), builtin=True, active=active)
        except ModelError as e:  # a damaged install: every command would stop on it, even the ones that can help
            log.error("the built-in model %s cannot be used (%s): reinstall Vibrary", path.name, e)
            continue
        rows.append(row)
    # forgotten at once, though it stands in for the new one's re-tag (Index.hand_over): its file is this install's
    # now, the new version's, which it cannot stand in with
    superseded = {m.name for m in index.models() if m.builtin and m.sha256 in shipped}
    for m in index.models():
        if m.builtin and m.sha256 not in shipped and m.name in superseded and not m.active:
            log.info("built-in model %s is superseded by this version's: forgotten", m.ref)
            index.remove_model(m)
    return [index.model(r.name, r.version) for r in rows]


def _found_here(index: Index, home_dir: Path, shipped: dict[str, Path]) -> None:
    """Each model's path as this install and this home have it: a built-in one in this install (a venv made
    anew, a clone moved, pipx's upgrade: the path of the install that first saw it was kept, and once that
    was gone the model could neither be used nor installed again), and one of the user's in this home's
    models folder, where a home copied or moved holds its files (it used the old home's, and a removal here
    deleted them there)."""
    for m in index.models():
        here = str(shipped.get(m.sha256, "")) if m.builtin else str(home_path(home_dir, m.name, m.sha256))
        if here and here != m.path and Path(here).exists():
            index.set_model_path(m, here)


def home_path(home_dir: Path, name: str, digest: str) -> Path:
    """Where a model of the user's is kept in a home."""
    return config.models_dir(home_dir) / name / f"{digest[:16]}.onnx"
