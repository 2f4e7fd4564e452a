"""The graph a device's converter sees: the canonical rewrites it applies before mapping ops.

Exports write what the training framework had: a `Div` by a constant, `HardSigmoid`, `HardSwish`. A device's
converter (TFLite converter, Edge TPU compiler, QNN) rewrites those into ops it maps before it looks at support:
a division by a constant is a multiplication by its reciprocal, and a hard sigmoid is `clip(alpha·x + beta, 0, 1)`.
Auditing the export literally cuts such a model at its first `Div`. Which rewrites a device's converter applies is
data: the profile's `converter_rewrites` names them; each is one small function here, exact in real arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.devices.profiles import HardwareProfile
from autoptq.model.graph import ModelGraph, Rewrite, build_graph, copy_model, infer_shapes, model_opset
from autoptq.model.shapes import model_for_target


def canonical_model(model: ModelProto, rules: list[str]) -> tuple[ModelProto, list[Rewrite]]:
    """`model` with the named rewrites applied (a copy; the input is unchanged) and what each changed."""
    if not rules:
        return model, []
    result = copy_model(model)
    rewrites: list[Rewrite] = []
    for rule in rules:
        rewrites += REWRITES[rule](result)
    return (result, rewrites) if rewrites else (model, [])


def device_graph(graph: ModelGraph, profile: HardwareProfile) -> ModelGraph:
    """The analysis graph as `profile`'s converter would see it (the same graph when it rewrites nothing)."""
    model, rewrites = canonical_model(graph.model, list(profile.converter_rewrites))
    if not rewrites:
        return graph
    rewritten = build_graph(infer_shapes(model), graph.path)
    rewritten.source_files = graph.source_files
    rewritten.declared_model = graph.declared
    rewritten.user_shapes = graph.user_shapes
    rewritten.binding = graph.binding
    rewritten.rewrites = rewrites
    return rewritten


def float_model_for(graph: ModelGraph, profile: HardwareProfile) -> ModelProto:
    """The float model to quantize and verify for a target: bound as the device compiles it (autoptq.model.shapes) and
    rewritten as its converter does."""
    model = model_for_target(graph, profile.shapes.static)
    return canonical_model(model, list(profile.converter_rewrites))[0]


def _constants(model: ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def div_by_constant(model: ModelProto) -> list[Rewrite]:
    """`Div(x, c)` with a constant, non-zero float `c` → `Mul(x, 1/c)`."""
    constants = _constants(model)
    rewrites = []
    for node in model.graph.node:
        divisor = constants.get(node.input[1]) if node.op_type == "Div" and len(node.input) == 2 else None
        if divisor is None or not np.issubdtype(divisor.dtype, np.floating) or np.any(divisor == 0):
            continue
        reciprocal = f"{node.name or node.output[0]}/reciprocal"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / divisor).astype(divisor.dtype), reciprocal))
        node.op_type = "Mul"
        node.input[1] = reciprocal
        rewrites.append(Rewrite(node=node.name, op_type="Div", into=["Mul"], rule="div_by_constant"))
    return rewrites


def hard_sigmoid(model: ModelProto) -> list[Rewrite]:
    """`HardSigmoid(x; alpha, beta)` → `Clip(Add(Mul(x, alpha), beta), 0, 1)`."""
    return _expand(model, "HardSigmoid", "hard_sigmoid", lambda node: _hard_sigmoid_nodes(model, node, gate=False))


def hard_swish(model: ModelProto) -> list[Rewrite]:
    """`HardSwish(x)` → `Mul(x, Clip(Add(Mul(x, 1/6), 0.5), 0, 1))`."""
    return _expand(model, "HardSwish", "hard_swish", lambda node: _hard_sigmoid_nodes(model, node, gate=True))


def _expand(
    model: ModelProto, op_type: str, rule: str, replacement: Callable[[NodeProto], list[NodeProto]]
) -> list[Rewrite]:
    nodes: list[NodeProto] = []
    rewrites = []
    for node in model.graph.node:
        if node.op_type != op_type or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        expanded = replacement(node)
        nodes += expanded
        rewrites.append(Rewrite(node=node.name, op_type=op_type, into=[n.op_type for n in expanded], rule=rule))
    if rewrites:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewrites


def _hard_sigmoid_nodes(model: ModelProto, node: NodeProto, gate: bool) -> list[NodeProto]:
    name, x, y = node.name or node.output[0], node.input[0], node.output[0]
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1 / 6 if gate else 0.2)
    beta = next((a.f for a in node.attribute if a.name == "beta"), 0.5)
    scalars = {f"{name}/alpha": alpha, f"{name}/beta": beta, f"{name}/zero": 0.0, f"{name}/one": 1.0}
    for scalar, value in scalars.items():
        model.graph.initializer.append(helper.make_tensor(scalar, TensorProto.FLOAT, [], [value]))
    sigmoid_out = f"{name}/hard_sigmoid" if gate else y
    clip_name = f"{name}/clip" if gate else name
    if model_opset(model) >= 11:
        clip = helper.make_node("Clip", [f"{name}/add", f"{name}/zero", f"{name}/one"], [sigmoid_out], name=clip_name)
    else:
        clip = helper.make_node("Clip", [f"{name}/add"], [sigmoid_out], name=clip_name, min=0.0, max=1.0)
    nodes = [
        helper.make_node("Mul", [x, f"{name}/alpha"], [f"{name}/mul"], name=f"{name}/mul"),
        helper.make_node("Add", [f"{name}/mul", f"{name}/beta"], [f"{name}/add"], name=f"{name}/add"),
        clip,
    ]
    if gate:
        nodes.append(helper.make_node("Mul", [x, sigmoid_out], [y], name=name))
    return nodes


REWRITES: dict[str, Callable[[ModelProto], list[Rewrite]]] = {
    "div_by_constant": div_by_constant,
    "hard_sigmoid": hard_sigmoid,
    "hard_swish": hard_swish,
}
"""The rewrites a profile's `converter_rewrites` may name."""
