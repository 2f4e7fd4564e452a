"""The graph a device's converter sees: the canonical rewrites it applies before mapping ops.

Exports write what the training framework had: a `Div` by a constant, `HardSigmoid`, `HardSwish`. A device's
converter (TFLite converter, Edge TPU compiler, QNN) rewrites those into ops it maps before it looks at support:
a division by a constant is a multiplication by its reciprocal, a hard sigmoid is `clip(alpha·x + beta, 0, 1)`, a
two-input `Sum` is an `Add`, and YOLOX/YOLOv5's "Focus" (four stride-2 slices joined on channels) is a space-to-depth.
Auditing the export literally cuts such a model at its first `Div`. Which rewrites a device's converter applies is
data: the profile's `converter_rewrites` names them; each is one small function here, exact in real arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.devices.profiles import HardwareProfile
from autoptq.model.graph import (
    ModelGraph,
    Rewrite,
    build_graph,
    copy_model,
    drop_unused_initializers,
    infer_shapes,
    model_opset,
)
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


def sum_of_two(model: ModelProto) -> list[Rewrite]:
    """`Sum(a, b)` → `Add(a, b)`, as every converter maps it; a longer Sum → a chain of Adds, `Sum(a)` → `Identity`."""
    return _expand(model, "Sum", "sum_of_two", _sum_nodes)


def _sum_nodes(node: NodeProto) -> list[NodeProto]:
    name, y = node.name or node.output[0], node.output[0]
    if len(node.input) == 1:
        return [helper.make_node("Identity", [node.input[0]], [y], name=name)]
    nodes, total = [], node.input[0]
    for i, addend in enumerate(node.input[1:], start=1):
        last = i == len(node.input) - 1
        out = y if last else f"{name}/sum{i}"
        nodes.append(helper.make_node("Add", [total, addend], [out], name=name if last else f"{name}/add{i}"))
        total = out
    return nodes


# --- Focus → SpaceToDepth --------------------------------------------------------------------------------------------

_Window = dict[int, range]
"""Axis → the indices a chain of Slices keeps along it (a 4-D tensor)."""


def focus_to_space_to_depth(model: ModelProto) -> list[Rewrite]:
    """YOLOX/YOLOv5 "Focus" → `SpaceToDepth(blocksize=2)`: a `Concat` on channels of the four `x[..., dy::2, dx::2]`
    of one 4-D tensor, each a chain of `Slice`s (opset ≥ 10, constant parameters) nothing else reads.

    `SpaceToDepth` puts offset (dy, dx) at channel block `2·dy + dx`; a Concat in another order (YOLOX's is (0, 0),
    (1, 0), (0, 1), (1, 1)) is restored by permuting the input channels of the Conv weight, when the Concat's only
    reader is a `group=1` Conv whose weight is an initializer only it reads. Otherwise a `Split` into the four blocks
    feeds the Concat in its order: exact too, and SPLIT and CONCATENATION map on the Edge TPU, where the strided
    slices do not. H and W must be static and even (the windows are checked against them)."""
    graph = model.graph
    concats = [n for n in graph.node if n.op_type == "Concat" and n.domain in ("", "ai.onnx") and len(n.input) == 4]
    if not concats:
        return []
    shapes = _static_shapes(infer_shapes(model))
    constants = _constants(model)
    producers = {out: node for node in graph.node for out in node.output}
    readers = _readers(model)
    replaced: dict[str, list[NodeProto]] = {}  # a node's first output → what stands in its place (nothing: removed)
    rewrites = []
    for concat in concats:
        branches = [_focus_branch(name, producers, readers, constants, shapes) for name in concat.input]
        if any(b is None for b in branches) or len({b[0] for b in branches}) != 1:
            continue
        axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
        blocks = [2 * dy + dx for _, (dy, dx), _ in branches]
        if axis not in (1, -3) or sorted(blocks) != [0, 1, 2, 3]:
            continue
        replaced.update({node.output[0]: [] for _, _, chain in branches for node in chain})
        nodes = _space_to_depth(model, concat, branches[0][0], blocks, readers)
        replaced[concat.output[0]] = nodes
        into = [n.op_type for n in nodes]
        rewrites.append(Rewrite(node=concat.name, op_type="Slice+Concat", into=into, rule="focus_to_space_to_depth"))
    if rewrites:
        kept = [new for node in graph.node for new in replaced.get(node.output[0], [node])]
        del graph.node[:]
        graph.node.extend(kept)
        values = [v for v in graph.value_info if replaced.get(v.name) != []]  # the slices' outputs are gone
        del graph.value_info[:]
        graph.value_info.extend(values)
        drop_unused_initializers(graph)  # the slices' starts, ends, axes and steps
    return rewrites


def _static_shapes(model: ModelProto) -> dict[str, list[int | None]]:
    graph = model.graph
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*graph.input, *graph.value_info, *graph.output)
        if v.type.tensor_type.HasField("shape")
    }


def _readers(model: ModelProto) -> dict[str, int]:
    """Tensor → how many node inputs and graph outputs read it."""
    counts: dict[str, int] = {}
    for name in [*(i for node in model.graph.node for i in node.input), *(o.name for o in model.graph.output)]:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _focus_branch(
    name: str,
    producers: dict[str, NodeProto],
    readers: dict[str, int],
    constants: dict[str, np.ndarray],
    shapes: dict[str, list[int | None]],
) -> tuple[str, tuple[int, int], list[NodeProto]] | None:
    """(source, (dy, dx), slices) when `name` is `source[:, :, dy::2, dx::2]` of a 4-D `source` with static even H
    and W, through a chain of Slices whose outputs nothing else reads; None otherwise."""
    chain: list[NodeProto] = []
    while (node := producers.get(name)) is not None and node.op_type == "Slice" and readers.get(name) == 1:
        chain.append(node)
        name = node.input[0]
    dims = shapes.get(name)
    if not chain or dims is None or len(dims) != 4:
        return None
    window: _Window = {}
    for node in chain:
        kept = _slice_window(node, constants, dims)
        if kept is None or window.keys() & kept.keys():
            return None
        window.update(kept)
    if any(window.get(axis, range(size or 0)) != range(size or 0) for axis, size in enumerate(dims[:2])):
        return None  # batch and channels are taken whole
    offsets = []
    for axis in (2, 3):
        kept, size = window.get(axis), dims[axis]
        if kept is None or size is None or size % 2 or kept.start not in (0, 1) or kept != range(kept.start, size, 2):
            return None
        offsets.append(kept.start)
    return name, (offsets[0], offsets[1]), chain


def _slice_window(node: NodeProto, constants: dict[str, np.ndarray], dims: Sequence[int | None]) -> _Window | None:
    """What an opset ≥ 10 Slice with constant starts/ends/axes/steps keeps along each axis it names (ONNX clamps
    starts and ends as Python's slices do for positive steps); None for other Slices or an axis of unknown size."""
    names = [*node.input[1:5], "", ""][:4]
    if not names[0] or not names[1] or any(n and n not in constants for n in names):
        return None
    starts, ends, axes, steps = (constants[n].reshape(-1).astype(np.int64) if n else None for n in names)
    axes = np.arange(len(starts)) if axes is None else axes % len(dims)
    steps = np.ones_like(starts) if steps is None else steps
    window: _Window = {}
    for axis, start, end, step in zip(axes.tolist(), starts.tolist(), ends.tolist(), steps.tolist(), strict=True):
        size = dims[axis]
        if size is None or step <= 0 or axis in window:
            return None
        window[axis] = range(size)[start:end:step]
    return window


def _space_to_depth(
    model: ModelProto, concat: NodeProto, source: str, blocks: list[int], readers: dict[str, int]
) -> list[NodeProto]:
    """The nodes computing `concat`'s output from `source` (Concat input k is channel block `blocks[k]` of
    `SpaceToDepth(source)`); a Conv weight that absorbs the block order is permuted in place."""
    graph = model.graph
    name, y = concat.name or concat.output[0], concat.output[0]
    conv = _folding_conv(model, y, readers) if blocks != [0, 1, 2, 3] else None
    if conv is not None:
        weight = next(init for init in graph.initializer if init.name == conv.input[1])
        permuted = _permuted_input_blocks(numpy_helper.to_array(weight), blocks)
        weight.CopyFrom(numpy_helper.from_array(permuted, weight.name))
    if blocks == [0, 1, 2, 3] or conv is not None:
        return [helper.make_node("SpaceToDepth", [source], [y], name=name, blocksize=2)]
    moved, parts = f"{name}/space_to_depth", [f"{name}/block{b}" for b in range(4)]
    equal = {"num_outputs": 4} if model_opset(model) >= 18 else {}  # before opset 18 Split splits equally by default
    reordered = NodeProto()
    reordered.CopyFrom(concat)
    reordered.input[:] = [parts[b] for b in blocks]
    return [
        helper.make_node("SpaceToDepth", [source], [moved], name=moved, blocksize=2),
        helper.make_node("Split", [moved], parts, name=f"{name}/split", axis=1, **equal),
        reordered,
    ]


def _folding_conv(model: ModelProto, tensor: str, readers: dict[str, int]) -> NodeProto | None:
    """The group=1 Conv that alone reads `tensor` as its data, with a weight initializer only it reads (None if not)."""
    if readers.get(tensor) != 1:
        return None
    conv = next((n for n in model.graph.node if tensor in n.input), None)
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or conv.input[0] != tensor:
        return None
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    weight = conv.input[1]
    inputs = {i.name for i in model.graph.input}  # an initializer that is also an input can be fed another value
    initializers = {init.name for init in model.graph.initializer}
    constant = weight in initializers and weight not in inputs and readers.get(weight) == 1
    return conv if group == 1 and constant else None


def _permuted_input_blocks(weight: np.ndarray, blocks: list[int]) -> np.ndarray:
    """The weight that reads SpaceToDepth's channel block `blocks[k]` where `weight` read the Concat's block k."""
    split = weight.reshape(weight.shape[0], 4, weight.shape[1] // 4, *weight.shape[2:])
    permuted = np.empty_like(split)
    permuted[:, blocks] = split
    return permuted.reshape(weight.shape)


REWRITES: dict[str, Callable[[ModelProto], list[Rewrite]]] = {
    "div_by_constant": div_by_constant,
    "hard_sigmoid": hard_sigmoid,
    "hard_swish": hard_swish,
    "sum_of_two": sum_of_two,
    "focus_to_space_to_depth": focus_to_space_to_depth,
}
"""The rewrites a profile's `converter_rewrites` may name."""
