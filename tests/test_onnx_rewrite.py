"""The faster graph the daemon runs computes what the model file says (daemon/onnx_rewrite.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from vibrary.daemon.infer import ModelError, _session
from vibrary.daemon.onnx_rewrite import faster_graph

DEMO = Path(__file__).resolve().parents[1] / "daemon" / "builtin" / "demo.onnx"


def _run(model: bytes | str, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _cnn(path: Path) -> Path:
    """Conv → Elu → MaxPool (swappable), Conv → Elu read twice (not swappable), an Elu that is a graph
    output, Elu alpha 0.5 and alpha 2 (the latter keeps onnxruntime's Elu)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2")
    conv: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], **conv),
        helper.make_node("Elu", ["c1"], ["e1"], alpha=0.5),
        helper.make_node("MaxPool", ["e1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], **conv),
        helper.make_node("Elu", ["c2"], ["e2"]),
        helper.make_node("MaxPool", ["e2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["e2"], ["m2"], axes=[2, 3], keepdims=0),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Elu", ["f"], ["big"], alpha=2.0),
        helper.make_node("Elu", ["m2"], ["out2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 20])],
        [
            helper.make_tensor_value_info("big", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("out2", TensorProto.FLOAT, None),
        ],
        [w1, w2],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_rewritten_cnn_computes_the_same_outputs(tmp_path: Path) -> None:
    path = _cnn(tmp_path / "t.onnx")
    rewritten = faster_graph(str(path))
    assert rewritten is not None
    ops = [n.op_type for n in onnx.load_from_string(rewritten).graph.node]
    assert ops.count("Elu") == 1  # only alpha 2 keeps onnxruntime's kernel
    assert ops.index("MaxPool") < ops.index("Exp")  # the first Elu now runs on the pooled values
    x = np.random.default_rng(1).standard_normal((3, 1, 16, 20)).astype(np.float32) * 3
    for ours, theirs in zip(_run(rewritten, x), _run(str(path), x), strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_demo_model_scores_are_unchanged() -> None:
    rewritten = faster_graph(str(DEMO))
    assert rewritten is not None
    x = np.random.default_rng(2).uniform(-80, 0, (4, 1, 96, 259)).astype(np.float32)
    ours, theirs = _run(rewritten, x)[0], _run(str(DEMO), x)[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"\x08\x07" * 50])
def test_what_is_not_onnx_is_left_to_onnxruntime(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert faster_graph(str(path)) is None


def test_a_model_without_elu_is_not_rewritten(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "r.onnx")
    assert faster_graph(str(tmp_path / "r.onnx")) is None


def test_a_rewritten_graph_that_does_not_load_falls_back_to_the_file(tmp_path: Path) -> None:
    """The rewrite's constants are float32: a double Elu does not load rewritten, and the model is then
    loaded as written (onnxruntime has no double Elu either, so its own complaint is what the user sees)."""
    graph = helper.make_graph(
        [helper.make_node("Elu", ["x"], ["y"])],
        "d",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])],
    )
    path = tmp_path / "d.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert faster_graph(str(path)) is not None
    with pytest.raises(ModelError, match=r"d\.onnx: not a loadable ONNX model .*Elu"):
        _session(str(path), 1)
