"""Training with val_fraction=0 (every example trains, as tiny datasets want) must keep a trained epoch.

The best epoch is then the one with the lowest training loss; a loss above 1 (any fresh 3-class head) once
compared worse than the initial sentinel, and the untrained weights came back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from vibrary.daemon import shards
from vibrary.trainer.train import TrainConfig, train

from tests.test_trainer import KINDS, P, spectrograms


def test_training_without_validation_keeps_a_trained_epoch() -> None:
    codes, labels, groups = spectrograms(6, 0)
    manifest = shards.write("noval", list(KINDS), P, codes, labels, groups)[0]
    result = train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=3, val_fraction=0, seed=0))
    assert result.val_clips == 0
    assert result.best_epoch >= 1
    assert result.history[result.best_epoch - 1]["train_loss"] == min(h["train_loss"] for h in result.history)
