"""Training data as it leaves the machine: labelled spectrograms, never audio, in content-addressed shards.

A dataset is a manifest (class names, spectrogram parameters, shard list) plus shards. Each shard is an
`.npz` archive of 8-bit log-mel codes, label indices and group ids (a hash of the source folder, used to
validate on unseen sources). Its members are LZMA-compressed: 1.3× smaller than `np.savez_compressed`'s
deflate on a typical pack (docs/upload-ratio.md), lossless, and still read by plain `np.load`, so shards
written before the change load as they did. Shards are named by the sha256 of their bytes, so an upload
that was interrupted resumes with the shards the trainer lacks, and a corrupt shard is caught on arrival.
The daemon writes this format and the trainer reads it; both import this module, so they cannot drift.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import check_new_classes, class_tags
from .spectrogram import SpectrogramParams

SHARD_CLIPS = 256
MAX_CLIP_VALUES = 1 << 20  # a clip's spectrogram: 2 channels × 256 bands × 2048 frames; the default is 96 × 259
# the least the trainer's network takes: it halves both axes four times, after frames averaged in pairs
# (trainer/network.py); smaller ones were taken, uploaded and queued, then failed "internal error: Output
# size is too small"
MIN_MELS, MIN_FRAMES = 16, 32
_ARRAYS = {"codes", "labels", "groups"}


MIN_EXAMPLES = 2  # of each tag: fewer, and a class can neither be learned nor told from the others


def too_few(per_class: dict[str, int]) -> str:
    """Why a dataset with these counts cannot train, or "" when it can."""
    thin = [f"{tag} ({n})" for tag, n in per_class.items() if n < MIN_EXAMPLES]
    return f"each tag needs at least {MIN_EXAMPLES} examples; too few: {', '.join(thin)}" if thin else ""


class ShardError(ValueError):
    """A shard or manifest that cannot be used; str() says why."""


@dataclass(frozen=True)
class ShardInfo:
    sha256: str
    clips: int
    size: int


@dataclass
class Manifest:
    name: str
    classes: list[str]
    params: SpectrogramParams
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def clips(self) -> int:
        return sum(s.clips for s in self.shards)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "classes": self.classes,
                "spectrogram": json.loads(self.params.to_json()),
                "shards": [s.__dict__ for s in self.shards],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """ShardError that names the field missing or wrong (a KeyError's repr said only "'spectrogram'")."""
        where = ""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            where = "spectrogram"
            params = SpectrogramParams.from_json(json.dumps(raw[where]))
            where = "shards"
            shards = [ShardInfo(str(s["sha256"]), int(s["clips"]), int(s["size"])) for s in _list(raw[where])]
            if odd := next((s for s in shards if s.clips < 1 or s.size < 1), None):
                raise ValueError(f"a shard of {odd.clips} clips in {odd.size} bytes")
            where = "name"
            name = str(raw[where])
            where = "classes"
            classes = _list(raw[where])  # a string would be a list of its letters
            if not all(isinstance(c, str) for c in classes):
                raise TypeError("not a list of names")
            manifest = cls(name, classes, params, shards)
        except KeyError as e:
            missing = f"no {where!r} field" if e.args[0] == where else f"field {where!r}: no {e.args[0]!r}"
            raise ShardError(f"bad dataset manifest: {missing}") from None
        except (TypeError, ValueError) as e:
            raise ShardError(f"bad dataset manifest: {f'field {where!r}: ' if where else ''}{e}") from None
        manifest.check()
        return manifest

    def check(self) -> None:
        """What makes a dataset trainable at all, said before any upload or training starts."""
        if self.clips == 0:
            raise ShardError(f"dataset {self.name!r} is empty")
        if len(self.classes) < 2:
            raise ShardError(f"dataset {self.name!r} has {len(self.classes)} class; a model needs at least 2")
        _, mels, frames = self.params.shape
        if mels < MIN_MELS or frames < MIN_FRAMES:
            # (frames: 1 + samples // hop)
            shortest = (MIN_FRAMES - 1) * self.params.hop_length / self.params.sample_rate
            raise ShardError(
                f"spectrograms of {mels} mel bands × {frames} frames are smaller than a trainer takes "
                f"({MIN_MELS} × {MIN_FRAMES}: clips of {shortest:.2f} s at this hop)"
            )
        values = int(np.prod(self.params.shape))
        if values > MAX_CLIP_VALUES:  # what a shard may unpack to follows from the shape: a client's say-so
            raise ShardError(  # (n_mels 10^6) made a 10 MB upload a 66 GB allocation on the trainer
                f"spectrograms of {self.params.shape} ({values} values a clip) are larger than a trainer takes "
                f"({MAX_CLIP_VALUES})"
            )

    def check_classes(self) -> None:
        """ShardError for class names the daemon would refuse the trained model for, said before the training,
        not after it; not at every load (check): a dataset made before these rules must still open, to be
        mended by a rename or a drop."""
        try:
            check_new_classes(class_tags(self.classes))
        except ValueError as e:
            raise ShardError(
                f"dataset {self.name!r}: classes: {e}: mend them with `vibrary dataset rename`, `merge` or `drop`"
            ) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def group_id(source: str) -> str:
    """A short, stable id for the folder a clip came from: the trainer needs groups, not paths."""
    return hashlib.blake2b(os.fsencode(source), digest_size=6).hexdigest()  # (a name from an old archive too)


def pack(codes: np.ndarray, labels: np.ndarray, groups: list[str]) -> bytes:
    if codes.dtype != np.uint8 or codes.ndim != 4:
        raise ShardError(f"codes must be uint8 (n, channels, mels, frames), not {codes.dtype} {codes.shape}")
    if not len(codes) == len(labels) == len(groups):
        raise ShardError("codes, labels and groups differ in length")
    buf = io.BytesIO()
    arrays = {"codes": codes, "labels": labels.astype(np.int16), "groups": np.array(groups, dtype="U16")}
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_LZMA) as z:
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buf.getvalue()


def unpack(data: bytes, params: SpectrogramParams, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, labels, groups) of one shard, checked against the dataset it claims to belong to. A shard
    that would unpack to more than SHARD_CLIPS clips' worth is refused unread: a few kB of compressed
    zeros can claim gigabytes, and the trainer that unpacked them would be killed, job after job."""
    most = SHARD_CLIPS * (int(np.prod(params.shape)) + 2 + 64) + 3 * 4096  # codes, labels, groups, headers
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            claimed = sum(member.file_size for member in z.infolist())
    except Exception as e:
        raise ShardError(f"corrupt shard: {e}") from None
    if claimed > most:
        raise ShardError(f"shard unpacks to {claimed} bytes, more than {SHARD_CLIPS} clips can take ({most})")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if set(z.files) != _ARRAYS:
                raise ShardError(f"shard holds {sorted(z.files)}, expected {sorted(_ARRAYS)}")
            codes, labels, groups = z["codes"], z["labels"], z["groups"]
    except ShardError:
        raise
    except Exception as e:  # zipfile, zlib and numpy each raise their own kind
        raise ShardError(f"corrupt shard: {e}") from None
    if codes.dtype != np.uint8 or codes.shape[1:] != params.shape:
        raise ShardError(f"shard spectrograms are {codes.dtype} {codes.shape[1:]}, expected uint8 {params.shape}")
    if not len(codes) == len(labels) == len(groups):
        raise ShardError("shard arrays differ in length")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ShardError(f"shard labels outside 0..{n_classes - 1}")
    return codes, labels.astype(np.int64), groups


def write(
    name: str, classes: list[str], params: SpectrogramParams, codes: np.ndarray, labels: np.ndarray, groups: list[str]
) -> tuple[Manifest, dict[str, bytes]]:
    """Split a labelled set into shards; returns the manifest and the shard bytes by sha256."""
    manifest = Manifest(name, list(classes), params)
    blobs: dict[str, bytes] = {}
    for start in range(0, len(labels), SHARD_CLIPS):
        stop = start + SHARD_CLIPS
        blob = pack(codes[start:stop], labels[start:stop], groups[start:stop])
        digest = sha256_bytes(blob)
        blobs[digest] = blob
        manifest.shards.append(ShardInfo(digest, len(labels[start:stop]), len(blob)))
    return manifest, blobs


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"not a list: {json.dumps(value)[:100]}")
    return value
