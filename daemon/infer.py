"""Run ONNX models on batches of spectrograms; each model describes itself in its ONNX metadata.

A model file carries its class names, version and the spectrogram parameters it was trained on
(`metadata_props`), so the daemon never guesses what to feed it or how to name its outputs, and a model
that does not fit (wrong input shape, class count that disagrees with its output) is refused with a clear
reason before it can tag anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from .config import check_new_classes, class_tags
from .onnx_rewrite import faster_graph, uses_external_data
from .spectrogram import METADATA_KEY, SpectrogramParams

CLASSES_KEY = "vibrary.classes"
NAME_KEY = "vibrary.name"
VERSION_KEY = "vibrary.version"
# "none": the graph already outputs scores in [0, 1]; "softmax" / "sigmoid": it outputs logits.
ACTIVATION_KEY = "vibrary.activation"
# A model may also say whether a clip is like its examples at all (trainer/network.py WithSoftmax): an output
# of each clip's familiarity, and the familiarity that makes a clip one of its classes. A file it finds
# unfamiliar keeps its best tag as a guess, but has none of the model's tags in searches.
FAMILIARITY_OUTPUT = "familiarity"
FAMILIAR_KEY = "vibrary.familiar_from"
SUMMARY_KEY = "vibrary.training"  # what its training measured (a JSON object: trainer/train.py TrainResult.summary)

# Clips per onnxruntime run. A CNN's activations for a few clips stay in the CPU's caches; for eight they
# do not, and one thread then spends more per clip (demo CNN: 0.63 ms per clip in runs of 1-4, 0.75-0.8
# in runs of 8). The pipeline's batch still sets how many files go to the index per transaction.
RUN_CLIPS = 2

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A model file that cannot be used; str() says why."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    classes: tuple[str, ...]
    params: SpectrogramParams
    activation: str = "none"
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    familiar_from: float | None = None  # None: the model does not tell (every clip counts as familiar)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session(path: str, threads: int) -> ort.InferenceSession:
    if not os.path.isfile(path):  # onnxruntime's words were "[ONNXRuntimeError] : 3 : NO_SUCHFILE"
        raise ModelError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must sleep
    options.log_severity_level = 4  # fatal only: a run's error is raised with its words, which were also printed
    if uses_external_data(path):  # (an installed model is its .onnx file alone: such a model cannot work there)
        raise ModelError(
            f"{os.path.basename(path)}: its weights lie in files beside it (ONNX external data); save the model"
            " with its weights inside the .onnx file"
        )
    faster = faster_graph(path)
    if faster is not None:
        try:
            return ort.InferenceSession(faster, options, providers=["CPUExecutionProvider"])
        except Exception:  # whatever the rewrite missed, the model as written still runs
            log.warning("%s: rewritten graph does not load; running it as written", os.path.basename(path))
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for every kind of bad file
        raise ModelError(f"{os.path.basename(path)}: not a loadable ONNX model ({e})") from None


LONGEST_READ_S, FASTEST_RATE = 60.0, 192_000  # what a model may have every file decoded to, at most
MOST_FIXED_BATCH = 256  # a model exported with a fixed batch size is fed that many clips a run, padded


def check_installable(model: Model) -> None:
    """What a model installed from now on must be, beyond loading and running (ModelError if not): checked at
    install only, so that a model that worked before an upgrade goes on working. A shared model's class
    names reached terminals raw (config.check_new_classes); a fixed batch of 20,000 (1.8 GB to tag six files)
    cost every start and every file."""
    source = model.info.name
    try:
        check_new_classes(model.info.classes)
    except ValueError as e:
        raise ModelError(f"{source}: {e}") from None
    params = model.info.params  # every file is decoded to this length, in each worker: 3,000 s took 1.2 GB
    if params.duration_s > LONGEST_READ_S or params.sample_rate > FASTEST_RATE:
        raise ModelError(
            f"{source}: reads {params.duration_s:g} s of every file at {params.sample_rate:,} Hz; at most"
            f" {LONGEST_READ_S:g} s at {FASTEST_RATE:,} Hz"
        )
    if model._fixed > MOST_FIXED_BATCH:
        raise ModelError(
            f"{source}: a fixed batch size of {model._fixed:,}; export it with a dynamic batch axis, or"
            f" {MOST_FIXED_BATCH} at most"
        )


def parse_metadata(meta: dict[str, str], source: str) -> ModelInfo:
    try:
        listed = json.loads(meta[CLASSES_KEY])
        params = SpectrogramParams.from_json(meta[METADATA_KEY])
    except KeyError as e:
        raise ModelError(f"{source}: metadata_props lacks {e.args[0]!r}; not a Vibrary model") from None
    except (ValueError, TypeError) as e:
        raise ModelError(f"{source}: bad Vibrary metadata ({e})") from None
    try:
        classes = class_tags(listed)
    except ValueError as e:
        raise ModelError(f"{source}: {CLASSES_KEY}: {e}") from None
    activation = meta.get(ACTIVATION_KEY, "none")
    if activation not in ("none", "softmax", "sigmoid"):
        raise ModelError(f"{source}: unknown {ACTIVATION_KEY} {activation!r}")
    try:
        version = int(meta.get(VERSION_KEY, "1"))
    except ValueError:
        raise ModelError(f"{source}: {VERSION_KEY} must be an integer") from None
    name = meta.get(NAME_KEY) or os.path.splitext(os.path.basename(source))[0]
    familiar_from = None
    if FAMILIAR_KEY in meta:
        try:
            familiar_from = float(meta[FAMILIAR_KEY])
        except ValueError:
            familiar_from = math.nan
        if not -1.0 <= familiar_from <= 1.0:  # a cosine similarity; NaN would make every file unfamiliar
            raise ModelError(f"{source}: {FAMILIAR_KEY} must be a number from -1 to 1, not {meta[FAMILIAR_KEY]!r}")
    return ModelInfo(name, version, classes, params, activation, dict(meta), familiar_from)


class Model:
    """A loaded model: scores (N, classes) for spectrograms (N, channels, mels, frames)."""

    def __init__(self, path: str, threads: int = 0, installing: bool = False) -> None:
        """`installing`: held to what a model installed from now on must be (check_installable), before it is
        run once (a fixed batch of 20,000 was run at install before it was refused)."""
        self.path = path
        self.session = _session(path, threads or (os.cpu_count() or 1))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = parse_metadata(meta, os.path.basename(path))
        self._input = self.session.get_inputs()[0]
        outputs = [o.name for o in self.session.get_outputs()]
        if (FAMILIARITY_OUTPUT in outputs) != (self.info.familiar_from is not None):
            raise ModelError(
                f"{self.info.name}: a {FAMILIARITY_OUTPUT!r} output and a {FAMILIAR_KEY} bar come together"
                " (one is missing)"
            )
        scores = [name for name in outputs if name != FAMILIARITY_OUTPUT][:1]
        self._outputs = scores + ([FAMILIARITY_OUTPUT] if self.info.familiar_from is not None else [])
        if installing:
            check_installable(self)
        self._check_shapes()

    def _check_shapes(self) -> None:
        want = self.info.params.shape
        dims = self._input.shape
        if len(dims) != 4 or any(isinstance(d, int) and d != w for d, w in zip(dims[1:], want, strict=True)):
            fits = ", ".join(map(str, want))
            raise ModelError(f"{self.info.name}: input shape {dims} does not fit spectrograms of shape [N, {fits}]")
        try:
            probe = np.zeros((self._fixed or 1, *want), dtype=np.float32)  # (a batch of 2**40: MemoryError)
            out, *familiarity = self.session.run(self._outputs, {self._input.name: probe})
        except Exception as e:
            raise ModelError(f"{self.info.name}: fails on a spectrogram of shape {want} ({e})") from None
        if out.shape != (len(probe), len(self.info.classes)):
            raise ModelError(
                f"{self.info.name}: outputs shape {list(out.shape[1:])} but names {len(self.info.classes)} classes"
            )
        if familiarity and familiarity[0].shape != (len(probe),):
            raise ModelError(f"{self.info.name}: {FAMILIARITY_OUTPUT!r} must be one number a clip")
        if not all(np.isfinite(o).all() for o in (out, *familiarity)):  # NaN scores cannot even be stored
            raise ModelError(f"{self.info.name}: outputs that are not numbers (NaN or infinite) for a silent clip")
        if self.info.activation == "none" and not -1e-3 <= float(out.min()) <= float(out.max()) <= 1 + 1e-3:
            raise ModelError(
                f"{self.info.name}: scores from {out.min():.3g} to {out.max():.3g}, not 0 to 1 (a model that outputs"
                f" logits says so: {ACTIVATION_KEY} softmax or sigmoid)"
            )

    @property
    def _fixed(self) -> int:
        """The batch size a model exported without a dynamic batch axis takes; 0 for any."""
        first = self._input.shape[0]
        return first if isinstance(first, int) and first > 0 else 0

    def predict(self, specs: np.ndarray) -> np.ndarray:
        """Scores (N, classes)."""
        return self.predict_familiar(specs)[0]

    def predict_familiar(self, specs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N, classes), and whether each clip is like the model's examples (FAMILIAR_KEY; every
        clip is, for a model that does not say)."""
        specs = np.ascontiguousarray(specs, np.float32)
        step = self._fixed or RUN_CLIPS
        runs = [np.zeros((0, len(self.info.classes)), np.float32)]
        familiar = [np.ones(0, bool)]
        for i in range(0, len(specs), step):
            chunk = specs[i : i + step]
            if self._fixed and len(chunk) < step:  # a fixed batch size: the last chunk padded (rows dropped after)
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            out, *familiarity = self.session.run(self._outputs, {self._input.name: chunk})
            runs.append(out[: len(specs) - i])
            seen = familiarity[0][: len(specs) - i] >= self.info.familiar_from if familiarity else True
            familiar.append(np.broadcast_to(seen, len(runs[-1])))
        scores: np.ndarray = np.concatenate(runs)
        if self.info.activation == "softmax":
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = shifted / shifted.sum(axis=1, keepdims=True)
        elif self.info.activation == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
        return np.asarray(scores, dtype=np.float32), np.concatenate(familiar)


def ranked_tags(scores: np.ndarray, classes: tuple[str, ...], min_score: float) -> list[tuple[str, float]]:
    """One clip's tags, best first: those scoring at least min_score, and always the best one."""
    order = np.argsort(-scores, kind="stable")
    return [(classes[i], float(scores[i])) for rank, i in enumerate(order) if rank == 0 or scores[i] >= min_score]
