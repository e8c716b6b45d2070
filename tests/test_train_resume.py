"""A training cut off between epochs goes on from its checkpoint and ends with the model it would have
made uncut; a checkpoint of another training, or a torn one, is never resumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vibrary.daemon import shards  # noqa: E402
from vibrary.trainer.export import load_base  # noqa: E402
from vibrary.trainer.train import AuxTask, Cancelled, Progress, TrainConfig, TrainResult, train  # noqa: E402

from tests.test_train_aux import _tremolo_codes  # noqa: E402
from tests.test_trainer import KINDS, P, spectrograms  # noqa: E402

CODES, LABELS, GROUPS = spectrograms(4, 0)
VALIDATED = spectrograms(26, 0)  # enough clips per class (SMALL_CLASS) for a validation split
AUX = AuxTask(*_tremolo_codes(8, 1), ["steady", "tremolo"])  # its head and its draws must resume too


def _train(
    config: TrainConfig, checkpoint: Path, epochs_seen: list[int], stop_after: int = 0, base: str = "none"
) -> TrainResult:
    codes, labels, groups = (CODES, LABELS, GROUPS) if config.val_fraction == 0 else VALIDATED

    def progress(p: Progress) -> None:
        epochs_seen.append(p.epoch)

    manifest = shards.write("resume", list(KINDS), P, codes, labels, groups)[0]
    base_state, base_name = load_base(base)
    return train(
        manifest,
        codes,
        labels,
        np.array(groups),
        config,
        base_state,
        base_name,
        progress=progress,
        cancelled=lambda: stop_after > 0 and epochs_seen[-1:] == [stop_after],
        aux=AUX if base == "none" else None,
        checkpoint=checkpoint,
    )


@pytest.mark.parametrize(
    ("val_fraction", "base"),
    [(0.0, "none"), (0.34, "demo")],  # every clip trains, effects head; or validation and the demo base
    ids=["all-clips-aux", "validation-demo-base"],
)
def test_a_training_cut_off_goes_on_from_its_last_epoch_to_the_same_model(
    tmp_path: Path, val_fraction: float, base: str
) -> None:
    config = TrainConfig(epochs=4, val_fraction=val_fraction, seed=0, patience=4)
    uncut = _train(config, tmp_path / "uncut.pt", [], base=base)
    first: list[int] = []
    with pytest.raises(Cancelled):
        _train(config, tmp_path / "cut.pt", first, stop_after=2, base=base)
    assert first == [1, 2] and (tmp_path / "cut.pt").exists()
    second: list[int] = []
    resumed = _train(config, tmp_path / "cut.pt", second, base=base)
    assert second == [2, 3, 4]  # where it stands at once, then the epochs left
    assert resumed.val_clips == uncut.val_clips and (resumed.val_clips > 0) == (val_fraction > 0)
    assert resumed.val_accuracy == uncut.val_accuracy
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in uncut.history]
    assert resumed.best_epoch == uncut.best_epoch
    assert (resumed.resumed_from_epoch, uncut.resumed_from_epoch) == (2, 0)
    for name, weight in uncut.net.state_dict().items():
        assert torch.equal(weight, resumed.net.state_dict()[name]), name


def test_a_checkpoint_of_another_training_or_a_torn_one_starts_afresh(tmp_path: Path) -> None:
    checkpoint = tmp_path / "c.pt"
    with pytest.raises(Cancelled):
        _train(TrainConfig(epochs=3, val_fraction=0, seed=0), checkpoint, [], stop_after=1)
    other: list[int] = []
    _train(TrainConfig(epochs=3, val_fraction=0, seed=1), checkpoint, other)  # another seed: another training
    assert other == [1, 2, 3]
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # the seed-1 run's, finished: intact, it runs nothing
    torn: list[int] = []
    _train(TrainConfig(epochs=3, val_fraction=0, seed=1), checkpoint, torn)
    assert torn == [1, 2, 3]
