"""Training options the demo model and transfer learning rely on: a second task through its own head on the
same body (how the demo model learns effects beside instruments), and a frozen pretrained body."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vibrary.daemon import shards  # noqa: E402
from vibrary.daemon.infer import Model  # noqa: E402
from vibrary.trainer.export import to_onnx  # noqa: E402
from vibrary.trainer.network import TagNet  # noqa: E402
from vibrary.trainer.train import AuxTask, TrainConfig, TrainResult, train  # noqa: E402

from tests.test_trainer import KINDS, P, spectrograms  # noqa: E402


def _tremolo_codes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A second task the first one knows nothing of: a steady tone, or the same tone pulsing at 6 Hz."""
    from vibrary.daemon.spectrogram import log_mel, quantize

    rng = np.random.default_rng(seed)
    t = np.arange(P.n_samples) / P.sample_rate
    codes, labels = [], []
    for i in range(n):
        tone = np.sin(2 * np.pi * rng.uniform(200, 800) * t).astype(np.float32) * 0.5
        pulsing = i % 2 == 1
        if pulsing:
            tone *= (0.5 + 0.5 * np.sin(2 * np.pi * 6 * t)).astype(np.float32)
        codes.append(quantize(log_mel(tone[None], P), P))
        labels.append(int(pulsing))
    return np.stack(codes), np.array(labels)


def test_an_auxiliary_task_trains_the_body_and_is_not_exported(tmp_path: object) -> None:
    codes, labels, groups = spectrograms(4, 0)
    manifest = shards.write("main", list(KINDS), P, codes, labels, groups)[0]
    config = TrainConfig(epochs=2, val_fraction=0, seed=0)
    aux_codes, aux_labels = _tremolo_codes(8, 1)

    def run(aux_labels: np.ndarray) -> TrainResult:
        return train(
            manifest, codes, labels, np.array(groups), config, aux=AuxTask(aux_codes, aux_labels, ["steady", "tremolo"])
        )

    with_aux, scrambled = run(aux_labels), run(aux_labels[::-1].copy())
    # both runs draw the same random numbers: only what the second task's labels taught the body differs
    assert not torch.equal(with_aux.net.features[0].weight, scrambled.net.features[0].weight)
    assert with_aux.train_clips == len(labels)
    assert set(with_aux.net.state_dict()) == set(TagNet(len(KINDS)).state_dict())  # no second head inside
    path = tmp_path / "m.onnx"  # type: ignore[operator]
    path.write_bytes(to_onnx(with_aux, "main"))
    assert list(Model(str(path)).info.classes) == list(KINDS)


def test_a_body_learning_rate_of_zero_freezes_the_pretrained_body() -> None:
    codes, labels, groups = spectrograms(4, 0)
    manifest = shards.write("frozen", list(KINDS), P, codes, labels, groups)[0]
    base = train(manifest, codes, labels, np.array(groups), TrainConfig(epochs=1, val_fraction=0, seed=1))
    state = {k: v.clone() for k, v in base.net.state_dict().items()}
    tuned = train(
        manifest, codes, labels, np.array(groups), TrainConfig(epochs=2, val_fraction=0, seed=2, body_lr=0.0), state
    )
    after = tuned.net.state_dict()
    assert torch.equal(after["features.0.weight"], state["features.0.weight"])
    assert torch.equal(after["embed.0.weight"], state["embed.0.weight"])
    assert not torch.equal(after["head.weight"], state["head.weight"])  # the new head did learn


def test_the_random_eq_leaves_silence_silent_and_the_peak_at_zero_db() -> None:
    from vibrary.trainer.augment import _equalise

    clip = torch.full((2, 1, 96, 40), -80.0)
    clip[..., :20] = torch.linspace(-60.0, 0.0, 96)[None, None, :, None]  # a sound, then zero padding
    clip[1] -= 30.0  # a quiet clip: each is referenced to its own peak
    clip[1].clamp_(min=-80.0)
    gains = torch.tensor([[4.0, -2.0, 1.0], [-4.0, 1.0, 0.5]], dtype=torch.float64)
    out = _equalise(clip, -80.0, gains, torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert torch.equal(out[..., 20:], clip[..., 20:])  # what was silent stays at the floor
    for eq, before in zip(out, clip, strict=True):
        assert float(eq.max()) == 0.0 and float(eq.min()) >= -80.0  # referenced to its peak, as the daemon's
        assert not torch.allclose(eq[..., :20], before[..., :20])
    assert not torch.allclose(out[0, ..., :20], out[1, ..., :20])  # each clip its own curve
