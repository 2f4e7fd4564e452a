"""Ops that only select, move or compare values (Reshape, Concat, Slice, Pad, MaxPool, ...): exact on integers of one
scale, so they stay standard ONNX ops running on the integers, after a `Requantize` of any input whose scale or zero
point differs from the output's. The lowering copies them as they are."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import NodeAttributes, QParams

DATA_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,),
    "Flatten": (0,),
    "Transpose": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Slice": (0,),
    "Pad": (0,),
    "Split": (0,),
    "Identity": (0,),
    "MaxPool": (0,),
    "DepthToSpace": (0,),
    "SpaceToDepth": (0,),
    "Resize": (0,),
    "Gather": (0,),
    "Expand": (0,),
    "Tile": (0,),
    "ReduceMax": (0,),
    "ReduceMin": (0,),
    "Concat": None,
    "Max": None,
    "Min": None,
}
"""Movement op → indices of its quantized inputs (None: all inputs). The other inputs (shapes, axes, pads) pass
through unchanged."""
MOVEMENT_OPS = frozenset(DATA_INPUTS)
"""Ops that only move or select values: exact on integers of one scale (and in float)."""

# --- building --------------------------------------------------------------------------------------------------------


def build_movement(builder: Builder, node: NodeProto) -> str | None:
    consumers = [builder.quantize_consumer(out, fuse=False) if out else None for out in node.output]
    if any(c is None for c, out in zip(consumers, node.output, strict=True) if out):
        return "its outputs are not all quantized"
    present = [c for c in consumers if c is not None]
    if not present or len({c.params for c in present}) != 1:
        return "its outputs are quantized with different parameters"
    out = present[0].params
    if node.op_type == "Resize" and NodeAttributes(node).text("mode", "nearest") != "nearest":
        return "only nearest-neighbour Resize keeps values"
    indices = DATA_INPUTS[node.op_type] or tuple(range(len(node.input)))
    operands = {i: params for i in indices if (params := builder.operand_params(node.input[i])) is not None}
    if len(operands) != len(indices):
        return "its data inputs are not quantized"
    if any(name in builder.views for i, name in enumerate(node.input) if i not in indices):
        return "a quantized tensor feeds one of its parameters"
    inputs = [
        builder.rescale(builder.operand_tensor(name), operands[i], out, node.name)
        if i in operands
        else builder.float_input(name)
        for i, name in enumerate(node.input)
    ]
    if node.op_type == "Pad":
        inputs = _pad_value(builder, node, inputs, out)
    outputs = [c.target if c is not None else "" for c in consumers]
    copy = helper.make_node(node.op_type, inputs, outputs, name=node.name)
    copy.attribute.extend(node.attribute)
    builder.nodes.append(copy)
    for c in present:
        builder.declare(c.target, out.elem_type, params=out)
        builder.absorb(c.quantize)
    return None


def _pad_value(builder: Builder, node: NodeProto, inputs: list[str], out: QParams) -> list[str]:
    """A constant-mode Pad fills with a real value: its integer in the output's parameters (real 0 → zp)."""
    if NodeAttributes(node).text("mode", "constant") != "constant":
        return inputs
    real = 0.0
    if len(node.input) > 2 and node.input[2] in builder.constants:
        real = float(builder.constants[node.input[2]].reshape(-1)[0])
    value = kernels.quantize(
        np.array(real), scale=out.scale, zero_point=out.zero_point, dtype=out.dtype, rounding="half_away"
    )
    padded = [*inputs, "", ""][: max(len(inputs), 3)]
    padded[2] = builder.const(np.asarray(value, dtype=out.dtype), f"{node.name}/pad_value")
    return padded
