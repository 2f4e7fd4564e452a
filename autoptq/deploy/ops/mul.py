"""Mul of two quantized operands (activations or per-tensor constants): the `IntMul` product
`(a − zp_a)·(b − zp_b)` in int32, then a `Requantize` by `s_a · s_b / s_out` (with a fused Relu/Clip)."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import NodeAttributes
from autoptq.deploy.lowering import Lowering

# --- building --------------------------------------------------------------------------------------------------------


def build_mul(builder: Builder, node: NodeProto) -> str | None:
    consumer = builder.quantize_consumer(node.output[0], fuse=True)
    a_params, b_params = builder.operand_params(node.input[0]), builder.operand_params(node.input[1])
    if consumer is None or a_params is None or b_params is None:
        return "its inputs or output are not quantized"
    acc = builder.fresh(f"{node.name}/acc")
    builder.emit(
        "IntMul",
        [builder.operand_tensor(node.input[0]), builder.operand_tensor(node.input[1])],
        [acc],
        node.name,
        a_zero_point=a_params.zero_point,
        b_zero_point=b_params.zero_point,
    )
    builder.declare(acc, TensorProto.INT32, like=consumer.target)
    builder.requantize_product(acc, consumer, a_params.scale, np.array([b_params.scale], np.float32), node.name, ())
    return None


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_mul(lowering: Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    left = lowering.centred(node.input[0], attrs.integer("a_zero_point"))
    right = lowering.centred(node.input[1], attrs.integer("b_zero_point"))
    output = node.output[0]
    lowering.bind(output, lowering.op("Mul", [left, right], output), TensorProto.FLOAT)  # |product| <= 2^16: exact
