"""Build a labelled dataset on this machine: audio files in, spectrogram shards out.

With `--labels folders` each file's label is its immediate parent folder under the given DIR (the layout
sample packs already use: `Drums/Kick/…`, `Drums/Snare/…`). Spectrograms come from the same decode and
log-mel code the daemon tags with, so a model trained on them is fed exactly what it learned from. Only the
8-bit spectrograms, the labels and anonymous folder ids are written: no audio, no paths.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import shards
from .decode import DecodeError, decode, is_audio_path
from .spectrogram import SpectrogramParams, log_mel, quantize


@dataclass(frozen=True)
class Example:
    path: str
    label: str
    group: str


@dataclass
class BuildReport:
    manifest: shards.Manifest
    audio_bytes: int
    failed: list[tuple[str, str]]
    per_class: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.audio_bytes / max(1, self.manifest.size)


def examples_from_folders(dirs: Sequence[str]) -> list[Example]:
    """Every audio file under DIR/<label>/…: label = its parent folder's name, group = that folder."""
    found = []
    for root in dirs:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"no such folder: {root}")
        for dirpath, subdirs, names in os.walk(root):
            subdirs.sort()
            if os.path.samefile(dirpath, root):
                continue  # files loose in DIR itself have no label folder
            label = os.path.basename(dirpath).strip().lower()
            for name in sorted(names):
                if is_audio_path(name):
                    found.append(Example(os.path.join(dirpath, name), label, shards.group_id(os.path.abspath(dirpath))))
    return found


def dataset_dir(home_dir: Path, name: str) -> Path:
    return home_dir / "datasets" / name


def build(
    home_dir: Path,
    name: str,
    examples: Sequence[Example],
    params: SpectrogramParams | None = None,
    workers: int = 0,
    progress: Callable[[int], None] = lambda n: None,
) -> BuildReport:
    """Compute every example's spectrogram and write the dataset's shards and manifest."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-' and '_'")
    params = params or SpectrogramParams()
    if not examples:
        raise ValueError("no audio files found: put examples in one folder per tag (DIR/<tag>/*.wav)")

    def one(example: Example) -> np.ndarray | str:
        try:
            return quantize(log_mel(decode(example.path, params), params), params)
        except DecodeError as e:
            return str(e)

    codes, labels, groups, failed, audio_bytes = [], [], [], [], 0
    classes = sorted({e.label for e in examples})
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for example, out in zip(examples, pool.map(one, examples), strict=True):
            progress(1)
            if isinstance(out, str):
                failed.append((example.path, out))
                continue
            codes.append(out)
            labels.append(classes.index(example.label))
            groups.append(example.group)
            audio_bytes += os.path.getsize(example.path)
    used = sorted({classes[i] for i in labels})
    remap = np.array([used.index(c) if c in used else -1 for c in classes])
    manifest, blobs = shards.write(
        name,
        used,
        params,
        np.stack(codes) if codes else np.zeros((0, *params.shape), np.uint8),
        remap[np.array(labels, dtype=np.int64)],
        groups,
    )
    manifest.check()
    folder = dataset_dir(home_dir, name)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    for digest, blob in blobs.items():
        (folder / "shards" / f"{digest}.npz").write_bytes(blob)
    (folder / "manifest.json").write_text(manifest.to_json())
    per_class = dict(sorted(Counter(classes[i] for i in labels).items()))
    report = {"audio_bytes": audio_bytes, "failed": failed, "per_class": per_class}
    (folder / "report.json").write_text(json.dumps(report))
    return BuildReport(manifest, audio_bytes, failed, per_class)


def load_report(home_dir: Path, name: str) -> BuildReport:
    """What `build` found, as it recorded it: the shards need not be read again."""
    manifest, _ = load(home_dir, name)
    raw = json.loads((dataset_dir(home_dir, name) / "report.json").read_text())
    failed = [(str(path), str(error)) for path, error in raw["failed"]]
    return BuildReport(manifest, int(raw["audio_bytes"]), failed, dict(raw["per_class"]))


def load(home_dir: Path, name: str) -> tuple[shards.Manifest, Path]:
    folder = dataset_dir(home_dir, name)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"no dataset {name!r}; create it with `vibrary dataset create {name} DIR...`")
    return shards.Manifest.from_json((folder / "manifest.json").read_text()), folder / "shards"
