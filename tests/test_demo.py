"""The built-in demo model: active on a fresh home, tagging with no set-up, and the base for transfer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf
from vibrary.daemon.infer import Model
from vibrary.daemon.registry import BUILTIN_DIR
from vibrary.daemon.spectrogram import SpectrogramParams

from tests.conftest import json_lines, vibrary


def _training_script_classes() -> list[str]:
    """The class list the corpus is built and the demo model trained with (scripts/build_corpus.py, which
    train_demo.py imports), not a copy of it."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "build_corpus.py"
    spec = importlib.util.spec_from_file_location("build_corpus", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CLASSES)


CLASSES = _training_script_classes()


def test_shipped_model_describes_itself() -> None:
    model = Model(str(BUILTIN_DIR / "demo.onnx"))
    assert model.info.name == "demo"
    assert list(model.info.classes) == CLASSES and len(CLASSES) == 15
    assert model.info.params == SpectrogramParams()
    assert (BUILTIN_DIR / "demo.onnx").stat().st_size < 5_000_000  # a few MB at most, inside the package


def _thump(sr: int = 44100) -> np.ndarray:
    """A kick drum as every drum machine makes one: a sine sweeping down from ~150 Hz, decaying fast."""
    t = np.arange(int(0.6 * sr)) / sr
    freq = 50 + 100 * np.exp(-t * 25)
    return (0.9 * np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t * 8)).astype(np.float32)


def test_a_fresh_home_tags_with_the_demo_model(home: Path, tmp_path: Path) -> None:
    listed = json_lines(vibrary("models", "list", "--json", home=home).stdout)
    assert [(m["name"], m["active"], m["builtin"]) for m in listed] == [("demo", True, True)]
    sf.write(tmp_path / "808.wav", _thump(), 44100)
    sf.write(tmp_path / "noise.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 22050).astype(np.float32), 44100)
    lines = {Path(x["path"]).name: x for x in json_lines(vibrary("tag", "--json", str(tmp_path), home=home).stdout)}
    assert set(lines) == {"808.wav", "noise.wav"}
    for line in lines.values():
        assert line["error"] is None and line["tags"][0]["model"] == "demo"
        assert all(t["tag"] in CLASSES for t in line["tags"])
    assert lines["808.wav"]["tags"][0]["tag"] in ("kick", "tom")


def test_transfer_from_the_demo_model() -> None:
    import pytest

    torch = pytest.importorskip("torch")
    from vibrary.trainer.export import load_base
    from vibrary.trainer.network import TagNet
    from vibrary.trainer.train import _load_base

    base, name = load_base("demo")
    assert name == "demo" and base is not None
    net = TagNet(4)
    _load_base(net, base)
    assert torch.equal(net.features[0].weight, base["features.0.weight"])


def test_the_network_code_computes_what_the_shipped_model_computes() -> None:
    """The shipped checkpoint in today's TagNet gives the shipped ONNX model's scores: a change to the
    network's layers that is not exactly equivalent (their order, a pooling, the input scaling) fails here."""
    import pytest

    pytest.importorskip("torch")
    from vibrary.daemon.spectrogram import dequantize
    from vibrary.trainer.export import load_base, max_difference
    from vibrary.trainer.network import TagNet, WithSoftmax

    base, _ = load_base("demo")
    assert base is not None
    net = TagNet(len(CLASSES))
    net.load_state_dict(base)
    params = SpectrogramParams()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (8, *params.shape), dtype=np.uint8)
    codes[:4, :, :, 100:] = 255  # short clips: silence after the sound, as the daemon's zero padding gives
    onnx_bytes = (BUILTIN_DIR / "demo.onnx").read_bytes()
    assert max_difference(WithSoftmax(net), onnx_bytes, dequantize(codes, params)) < 1e-4
