"""Turn a trained network into the ONNX file the daemon runs, and prove the two compute the same thing.

The file carries everything the daemon needs in `metadata_props` (class names, spectrogram parameters,
name, version, training summary), so a model can never be fed spectrograms it was not trained on. The
torch checkpoint of the body travels beside it only for the built-in model, as the base for transfer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from vibrary.daemon.infer import (
    ACTIVATION_KEY,
    CLASSES_KEY,
    FAMILIAR_KEY,
    FAMILIARITY_OUTPUT,
    NAME_KEY,
    SUMMARY_KEY,
    VERSION_KEY,
)
from vibrary.daemon.spectrogram import METADATA_KEY

from .network import TagNet, WithSoftmax
from .options import base_path
from .train import TrainResult


def to_onnx(result: TrainResult, name: str, version: int = 1) -> bytes:
    net = exported(result)
    outputs = ["scores"] if net.centroids is None else ["scores", FAMILIARITY_OUTPUT]
    example = torch.zeros((2, *result.params.shape))
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (example,),
        buf,  # type: ignore[arg-type]  # a file object works, and spares a temporary file
        dynamo=False,
        input_names=["spectrogram"],
        output_names=outputs,
        dynamic_axes={"spectrogram": {0: "batch"}, **{out: {0: "batch"} for out in outputs}},
        opset_version=17,
    )
    model = onnx.load_from_string(buf.getvalue())
    meta = {
        CLASSES_KEY: json.dumps(result.classes),
        METADATA_KEY: result.params.to_json(),
        NAME_KEY: name,
        VERSION_KEY: str(version),
        ACTIVATION_KEY: "none",
        SUMMARY_KEY: json.dumps(result.summary()),
    }
    if net.centroids is not None:
        if not -1.0 <= result.familiar_from <= 1.0:  # embeddings gone NaN: the daemon would refuse the model
            raise ValueError(f"the familiarity bar is {result.familiar_from}, not a similarity")
        meta[FAMILIAR_KEY] = f"{result.familiar_from:.6f}"
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def exported(result: TrainResult) -> WithSoftmax:
    """The network as the ONNX file computes it: scores, and familiarity when the training measured it."""
    centroids = None if result.centroids is None else torch.from_numpy(result.centroids)
    return WithSoftmax(result.net, centroids).eval()


def max_difference(net: WithSoftmax, onnx_bytes: bytes, x: np.ndarray) -> float:
    """Largest |torch − onnxruntime| output on x (`net`: what was exported, `exported(result)`, not the bare
    TagNet, whose logits would be compared with scores): the export must not change what the model says."""
    assert isinstance(net, WithSoftmax), "max_difference(exported(result), ...)"
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(x))
    expected = out if isinstance(out, tuple) else (out,)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})
    return max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got, strict=True))


def load_base(base: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """'none', 'demo' (the built-in model's checkpoint) or a path to a checkpoint saved by save_base."""
    path = base_path(base)
    if path is None:
        return None, "none"
    return torch.load(path, map_location="cpu", weights_only=True), base


def load_net(base: str, strict: bool = True) -> TagNet:
    """A checkpoint's network (`base` as load_base takes it), for a script that scores or probes it; `strict`
    False leaves out weights it has no place for (an auxiliary head an older checkpoint kept)."""
    state, _ = load_base(base)
    if state is None:
        raise ValueError(f"base {base!r} holds no network")
    net = TagNet(state["head.weight"].shape[0])
    net.load_state_dict(state, strict=strict)
    return net


def save_base(result: TrainResult, path: Path) -> None:
    torch.save(result.net.state_dict(), path)
