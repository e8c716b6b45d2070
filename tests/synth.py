"""Audio and models made on the spot for tests and benchmarks: no downloads, no torch.

`band_model` is a real, if tiny, classifier built with the onnx helper API: it averages each mel band over
time and says whether a clip's energy sits low (< 300 Hz), mid or high (> 3 kHz). Tones of known
frequency therefore have known correct tags, so tests can check tags, not just their presence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper
from vibrary.daemon.infer import (
    ACTIVATION_KEY,
    CLASSES_KEY,
    FAMILIAR_KEY,
    FAMILIARITY_OUTPUT,
    NAME_KEY,
    VERSION_KEY,
)
from vibrary.daemon.spectrogram import METADATA_KEY, SpectrogramParams, _hz_to_mel, _mel_to_hz

BANDS = {"low": 100.0, "mid": 1000.0, "high": 8000.0}  # a tone that each class must recognise
KINDS = ("tone", "noise", "thump")


def tone(freq: float, seconds: float = 1.0, sr: int = 44100, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t) * np.minimum(1.0, 20 * (seconds - t))  # short fade-out
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def write_tone(
    path: Path | str,
    freq: float,
    seconds: float = 1.0,
    sr: int = 44100,
    subtype: str = "PCM_16",
    channels: int = 1,
    amp: float = 0.5,
    fmt: str | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(freq, seconds, sr, amp, channels), sr, subtype=subtype, format=fmt)
    return path


def write_encoded(path: Path | str, audio: np.ndarray, sr: int, container: str, codec: str, **options: str) -> Path:
    """(frames, channels) float audio encoded by FFmpeg (PyAV) as libsndfile cannot: AAC or ALAC in an .m4a
    ("ipod"), a bare AAC stream ("adts"), ALAC in a .caf. `options`: the muxer's (movflags="faststart")."""
    import av

    layout = "stereo" if audio.shape[1] == 2 else "mono"
    with av.open(str(path), "w", format=container, options=options) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.T, np.float32), format="fltp", layout=layout)
        frame.sample_rate = sr
        for packets in (stream.encode(frame), stream.encode(None)):
            out.mux(packets)
    return Path(path)


def band_model(
    path: Path | str,
    name: str = "bands",
    version: int = 1,
    params: SpectrogramParams | None = None,
    classes: tuple[str, ...] = ("low", "mid", "high"),
    shift: int = 0,
    batch: int | str = "N",
    fails_on_audio: bool = False,
    familiar_from: float | None = None,
    fails_under_db: float | None = None,
) -> Path:
    """An ONNX model scoring (N, C, mels, frames) spectrograms as low / mid / high.

    `shift` rotates the class names: a different "version" that disagrees with the first one, which
    tests use to see that switching versions really changes the tags. `batch`: a fixed batch size, as a
    model exported without a dynamic batch axis has. `fails_on_audio`: onnxruntime raises on any real
    clip (a Gather indexed by the clip's quietest value, out of range below 0 dB) yet runs on the
    all-zero probe that an install checks, like a model with a bug its author never met.
    `fails_under_db`: onnxruntime raises on a batch whose spectrograms' mean level is below this (a tone's,
    mostly at the floor: about -78 dB) and runs on louder ones (noise) and on the probe: a model that fails
    on some files only.
    `familiar_from`: the model also outputs a familiarity, its best score (a pure 100 Hz tone: 1.0; white
    noise, whose energy is in every band: about 0.37), and counts clips from this one up as familiar.
    """
    params = params or SpectrogramParams()
    centres = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array(params.fmin)),
            _hz_to_mel(np.array(params.fmax or params.sample_rate / 2)),
            params.n_mels + 2,
        )
    )[1:-1]
    weights = np.zeros((params.n_mels, 3), np.float32)
    weights[centres < 300, 0] = 1.0 / max(1, (centres < 300).sum())
    weights[(centres >= 300) & (centres <= 3000), 1] = 1.0 / max(1, ((centres >= 300) & (centres <= 3000)).sum())
    weights[centres > 3000, 2] = 1.0 / max(1, (centres > 3000).sum())
    weights = np.roll(weights, shift, axis=1) * 0.5  # dB → logits: 10 dB more energy ≈ e^5 more likely
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes_t"], ["per_band"], keepdims=0),  # (N, C, mels)
        helper.make_node("ReduceMean", ["per_band", "axes_c"], ["bands"], keepdims=0),  # (N, mels)
        helper.make_node("Add", ["bands", "offset"], ["lifted"]),
        helper.make_node("MatMul", ["lifted", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    if fails_on_audio:
        nodes[-1:-1] = [
            helper.make_node("ReduceMin", ["x"], ["quietest"], keepdims=0),
            helper.make_node("Neg", ["quietest"], ["depth"]),
            helper.make_node("Cast", ["depth"], ["at"], to=TensorProto.INT64),
            helper.make_node("Gather", ["offset", "at"], ["picked"]),
            helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits", "nothing"], ["kept"]),
        ]
        nodes[-1] = helper.make_node("Softmax", ["kept"], ["scores"], axis=1)
    if fails_under_db is not None:
        nodes[-1:-1] = [
            helper.make_node("ReduceMean", ["x"], ["level"], keepdims=0),
            helper.make_node("Sub", ["floor_db", "level"], ["below"]),
            helper.make_node("Sign", ["below"], ["sign"]),
            helper.make_node("Relu", ["sign"], ["under"]),
            helper.make_node("Cast", ["under"], ["at"], to=TensorProto.INT64),  # 1: out of the offset's range
            helper.make_node("Gather", ["offset", "at"], ["picked"]),
            helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits", "nothing"], ["kept"]),
        ]
        nodes[-1] = helper.make_node("Softmax", ["kept"], ["scores"], axis=1)
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, len(classes)])]
    if familiar_from is not None:
        nodes.append(helper.make_node("ReduceMax", ["scores", "axes_c"], [FAMILIARITY_OUTPUT], keepdims=0))
        outputs.append(helper.make_tensor_value_info(FAMILIARITY_OUTPUT, TensorProto.FLOAT, [batch]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *params.shape])],
        outputs,
        initializer=[
            numpy_helper.from_array(np.array([3], np.int64), "axes_t"),
            numpy_helper.from_array(np.array([1], np.int64), "axes_c"),
            numpy_helper.from_array(np.array([params.top_db], np.float32), "offset"),
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(fails_under_db or 0.0, np.float32), "floor_db"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    meta = {
        CLASSES_KEY: json.dumps(list(classes)),
        METADATA_KEY: params.to_json(),
        NAME_KEY: name,
        VERSION_KEY: str(version),
        ACTIVATION_KEY: "none",
    }
    if familiar_from is not None:
        meta[FAMILIAR_KEY] = str(familiar_from)
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def sound(kind: str, rng: np.random.Generator, sr: int = 44100) -> np.ndarray:
    """Three kinds of one-shot a producer could tell apart: a pitched tone, a noise burst, a low thump."""
    n = int(sr * rng.uniform(0.3, 1.5))
    t = np.arange(n) / sr
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(300, 900) * t) * np.exp(-t * rng.uniform(1, 4))
    elif kind == "noise":
        x = rng.standard_normal(n) * np.exp(-t * rng.uniform(5, 20))
    else:
        freq = rng.uniform(45, 70) * (1 + 3 * np.exp(-t * 30))
        x = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t * rng.uniform(6, 12))
    return (x * rng.uniform(0.1, 0.9) / np.abs(x).max()).astype(np.float32)


def write_kinds(
    root: Path, per_kind: int, seed: int, folders: dict[str, str] | None = None, names: dict[str, str] | None = None
) -> list[Path]:
    """per_kind WAV files of each kind under root/<folder>/<name>_<seed>_<i>.wav (folder and name default to
    the kind: a test can spell them as a vendor would)."""
    rng = np.random.default_rng(seed)
    written = []
    for kind in KINDS:
        folder = root / (folders or {}).get(kind, kind)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_kind):
            path = folder / f"{(names or {}).get(kind, kind)}_{seed}_{i}.wav"
            sf.write(path, sound(kind, rng), 44100)
            written.append(path)
    return written
