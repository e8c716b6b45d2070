"""From shard bytes to the files a trained model is delivered as: shared by the gRPC trainer service and
the cloud job (trainer/s3job.py), so a model trained anywhere is checked and packaged the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
from vibrary.daemon.shards import Manifest, unpack
from vibrary.daemon.spectrogram import dequantize

from . import plots
from .export import exported, load_base, max_difference, to_onnx
from .known import load as load_known
from .options import Cancelled
from .train import Progress, TrainConfig, TrainResult, train


def train_to_files(
    manifest: Manifest,
    blobs: Iterable[bytes],
    name: str,
    base: str,
    config: TrainConfig,
    progress: Callable[[Progress], None] = lambda p: None,
    cancelled: Callable[[], bool] = lambda: False,
    checkpoint: Path | None = None,
) -> tuple[dict[str, bytes], TrainResult]:
    """Train on the manifest's shards (their bytes, in manifest order); returns RESULT_FILES and the result.
    The exported ONNX model is compared with the torch network before anything is returned. `checkpoint`:
    as in `train`."""
    parts = [unpack(blob, manifest.params, len(manifest.classes)) for blob in blobs]
    codes, labels, groups = (np.concatenate(column) for column in zip(*parts, strict=True))
    del parts  # the dataset once, not twice, for the hours it trains
    base_state, base_name = load_base(base or "demo")
    known = load_known(base or "demo")
    last = Progress("loading")

    def noted(p: Progress) -> None:
        nonlocal last
        last = p
        progress(p)

    result = train(
        manifest, codes, labels, groups, config, base_state, base_name, noted, cancelled, None, checkpoint, known
    )
    progress(replace(last, phase="exporting", eta_s=0.0))  # the epochs run stay said: a finished job read "0 of 0"
    name = name or manifest.name
    model = to_onnx(result, name)
    probe = dequantize(codes[: min(16, len(codes))], manifest.params)
    if not (diff := max_difference(exported(result), model, probe)) <= 1e-4:  # NaN: differs too
        raise ValueError(f"exported model differs from the trained one by {diff:.2g}")
    if cancelled():
        raise Cancelled("training cancelled")
    title = f"{name}: {len(manifest.classes)} classes, {result.train_clips} training clips"
    # a dataset too small to hold clips out trains on all of them: its matrix is of folds of them held out in
    # turn (train._folds_held_out), or of the training clips with no base to fit on, and says which
    matrix_title = (
        f"{name}\nheld-out clips"
        if result.val_clips
        else f"{name}\nclips held out in {result.folds} folds, in turn{STAND_IN if result.folds_stand_in else ''}"
        if result.folds
        else f"{name}\ntraining clips (none held out)"
    )
    files = {
        "model.onnx": model,
        "learning_curve.png": plots.learning_curve(result.history, title, fitted=bool(result.known)),
        "confusion_matrix.png": plots.confusion_matrix(result.confusion, manifest.classes, matrix_title),
    }
    return files, result


STAND_IN = ", each by a quick fit on the others"  # (new tags: a stand-in for the training over epochs)
