"""An epoch's batches are of even sizes: a last batch of one clip took a full optimiser step on a clip mixed up
with itself, an outlier step the size of every other one (65 clips at batch 32 were 32, 32 and 1)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from vibrary.daemon import shards
from vibrary.trainer import train as train_module
from vibrary.trainer.train import TrainConfig, train

from tests.test_trainer import KINDS, P, spectrograms


def test_an_epoch_steps_on_batches_of_even_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class Counted(train_module.TagNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and torch.is_grad_enabled():  # the optimiser's batches, not batch-norm passes
                seen.append(len(x))
            return super().forward(x)

    monkeypatch.setattr(train_module, "TagNet", Counted)
    codes, labels, groups = spectrograms(11, 0)  # 33 clips
    manifest = shards.write("even", list(KINDS), P, codes, labels, groups)[0]
    config = TrainConfig(epochs=2, batch_size=16, val_fraction=0, seed=0)
    result = train(manifest, codes, labels, np.array(groups), config)
    assert result.train_clips == 33
    assert seen == [11, 11, 11] * 2  # the steps whole batches of 16 would take (3 an epoch), evenly filled
