"""The same model, in a form onnxruntime's CPU kernels run faster; the model file itself is never touched.

onnxruntime's Elu kernel is slow (on the demo CNN its Elus took 45 % of the time), so each Elu is made
cheaper in two exact steps:

- an Elu whose only reader is a MaxPool moves after it: max commutes with any non-decreasing function, so
  pooling first and applying Elu to a quarter of the values (2x2 pools) gives the same numbers;
- Elu is computed as max(x, alpha·(exp(min(x, 0)) - 1)) through the vectorised Exp kernel. For
  0 < alpha <= 1 that is Elu: for x >= 0 the second term is 0 <= x; for x < 0 it is
  alpha·(e^x - 1) >= e^x - 1 > x.

The outputs match the graph as written to within float rounding (2e-7 on the demo CNN), and the demo CNN
costs 0.6 instead of 1.3 ms per clip on one thread. Anything the rewrite does not recognise is left as it is.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.shape_inference

_STANDARD = ("", "ai.onnx")


def faster_graph(path: str) -> bytes | None:
    """The rewritten model, serialized; None when there is nothing to rewrite or it is not ONNX."""
    try:
        model = onnx.load(path)
        if not any(n.op_type == "Elu" and n.domain in _STANDARD for n in model.graph.node):
            return None
        if max((o.version for o in model.opset_import if o.domain in _STANDARD), default=0) < 13:
            return None  # older opsets: Min and Max broadcast differently; leave such models alone
        moved = _pool_before_elu(model.graph)
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:  # not ONNX at all: onnxruntime will say why
        return None
    floats = {
        v.name
        for v in [*typed.graph.input, *typed.graph.value_info, *typed.graph.output]
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    if not (moved + _elu_through_exp(model.graph, floats)):
        return None
    return model.SerializeToString()


def _alpha(node: onnx.NodeProto) -> float:
    return next((a.f for a in node.attribute if a.name == "alpha"), 1.0)


def _unpadded_maxpool(node: onnx.NodeProto) -> bool:
    """A MaxPool whose every window lies inside its input, with no indices output."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type != "MaxPool" or node.domain not in _STANDARD or len([o for o in node.output if o]) != 1:
        return False
    if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"NOTSET", b"VALID"):
        return False
    return not any(attrs["pads"].ints) if "pads" in attrs else True


def _pool_before_elu(graph: onnx.GraphProto) -> int:
    """Swap Elu → MaxPool into MaxPool → Elu wherever the MaxPool is the Elu's only reader."""
    readers = Counter(name for n in graph.node for name in n.input)
    graph_outputs = {o.name for o in graph.output}
    pools = {n.input[0]: n for n in graph.node if _unpadded_maxpool(n)}
    held: dict[str, onnx.NodeProto] = {}  # an Elu waits here for its MaxPool
    nodes: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if (
            node.op_type == "Elu"
            and node.domain in _STANDARD
            and _alpha(node) >= 0  # non-decreasing
            and out in pools
            and readers[out] == 1
            and out not in graph_outputs
        ):
            held[out] = node
            continue
        if node.op_type == "MaxPool" and node.input and node.input[0] in held:
            elu = held.pop(node.input[0])
            pool, late_elu = onnx.NodeProto(), onnx.NodeProto()
            pool.CopyFrom(node)
            late_elu.CopyFrom(elu)
            pooled = f"{node.output[0]}__before_elu"
            pool.input[0], pool.output[0] = elu.input[0], pooled
            late_elu.input[0], late_elu.output[0] = pooled, node.output[0]
            nodes += [pool, late_elu]
            moved += 1
            continue
        nodes.append(node)
    if held:  # cannot happen in a topologically sorted graph; keep the original then
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    return moved


def _elu_through_exp(graph: onnx.GraphProto, floats: set[str]) -> int:
    nodes, changed = [], 0
    for node in graph.node:
        alpha = _alpha(node)
        if node.op_type != "Elu" or node.domain not in _STANDARD or not 0 < alpha <= 1 or node.input[0] not in floats:
            nodes.append(node)
            continue
        changed += 1
        x, y, tmp = node.input[0], node.output[0], f"{node.output[0]}__elu{changed}"
        constants = {"zero": 0.0, "one": 1.0, **({"alpha": alpha} if alpha != 1 else {})}
        graph.initializer.extend(
            onnx.numpy_helper.from_array(np.array(v, np.float32), f"{tmp}_{name}") for name, v in constants.items()
        )
        negative = f"{tmp}_minus_1"
        nodes += [
            onnx.helper.make_node("Min", [x, f"{tmp}_zero"], [f"{tmp}_min"]),
            onnx.helper.make_node("Exp", [f"{tmp}_min"], [f"{tmp}_exp"]),
            onnx.helper.make_node("Sub", [f"{tmp}_exp", f"{tmp}_one"], [negative]),
        ]
        if alpha != 1:
            nodes.append(onnx.helper.make_node("Mul", [negative, f"{tmp}_alpha"], [f"{tmp}_scaled"]))
            negative = f"{tmp}_scaled"
        nodes.append(onnx.helper.make_node("Max", [x, negative], [y]))
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return changed
