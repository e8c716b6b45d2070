"""Small datasets train without a validation split, and training without one keeps a trained epoch.

With a few clips per class the split lent validation 1–3 clips of each, and early stopping on that noise
ended runs after a handful of epochs (docs/figure3.md). Without validation every epoch of the budget runs
and the last one is kept: a loss above 1 (any fresh 3-class head) once compared worse than the initial
sentinel, and the untrained weights came back; later, patience counted on the noisy training loss still
ended a 24-clip training at its 9th epoch of 20 and kept the 4th. With validation, early stopping breaks
accuracy ties by the validation loss."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from vibrary.daemon import shards
from vibrary.trainer.train import SMALL_CLASS, TrainConfig, train

from tests.test_trainer import KINDS, P, spectrograms


def test_training_without_validation_runs_the_whole_budget_and_keeps_the_last_epoch() -> None:
    codes, labels, groups = spectrograms(6, 0)
    manifest = shards.write("noval", list(KINDS), P, codes, labels, groups)[0]
    config = TrainConfig(epochs=8, patience=1, val_fraction=0, seed=0)
    result = train(manifest, codes, labels, np.array(groups), config)
    assert result.val_clips == 0
    assert len(result.history) == 8 and result.best_epoch == 8


def test_only_datasets_with_a_small_class_skip_validation() -> None:
    codes, labels, groups = spectrograms(SMALL_CLASS, 0)
    manifest = shards.write("split", list(KINDS), P, codes, labels, groups)[0]
    config = TrainConfig(epochs=1, seed=0)  # the default val_fraction
    full = train(manifest, codes, labels, np.array(groups), config)
    assert full.val_clips > 0 and full.train_clips + full.val_clips == len(labels)
    assert "train_accuracy" not in full.summary()  # measured on the held-out clips only, not a 0.0
    keep = np.r_[np.flatnonzero(labels != 1), np.flatnonzero(labels == 1)[: SMALL_CLASS - 1]]  # one class short
    small = train(manifest, codes[keep], labels[keep], np.array(groups)[keep], config)
    assert small.val_clips == 0 and small.train_clips == len(keep)
    assert "val_accuracy" not in small.summary() and small.summary()["train_accuracy"] > 0


def test_early_stopping_breaks_accuracy_ties_by_validation_loss() -> None:
    """A few validation clips a class tie often; a tie with a lower loss is progress, not patience spent."""
    codes, labels, groups = spectrograms(SMALL_CLASS + 5, 0)
    manifest = shards.write("ties", list(KINDS), P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=10, patience=2, seed=0))
    accuracies = [h["val_accuracy"] for h in result.history]
    assert len(set(accuracies)) < len(accuracies)  # ties happened: the case this is about
    best = max(result.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert result.best_epoch == best["epoch"]


def test_a_training_whose_loss_diverges_fails_saying_so() -> None:
    """At a learning rate far too high the loss went NaN in the second epoch, the epochs ran on, and the
    export failed the job with "the familiarity bar is nan, not a similarity"."""
    codes, labels, groups = spectrograms(6, 0)
    manifest = shards.write("noval", list(KINDS), P, codes, labels, groups)[0]
    config = TrainConfig(epochs=4, val_fraction=0, seed=0, lr=1e6)
    with pytest.raises(ValueError, match=r"training diverged in epoch \d \(its loss is nan\): .* lower learning rate"):
        train(manifest, codes, labels, np.array(groups), config)
