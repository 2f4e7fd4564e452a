"""Table ops (Sigmoid, Tanh): `Lut`, the 256-entry table of the activation from the input's to the output's
quantization (TFLite's PopulateLookupTable or onnxruntime's, by the profile's rounding: kernels.activation_table),
indexed by the 8-bit input."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder
from autoptq.deploy.lowering import NUMPY_TYPES, Lowering

FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"Sigmoid": kernels.sigmoid, "Tanh": kernels.tanh}
"""Op type → the function its table holds."""

# --- building --------------------------------------------------------------------------------------------------------


def build_lookup(builder: Builder, node: NodeProto) -> str | None:
    consumer = builder.quantize_consumer(node.output[0], fuse=False)
    x = builder.views.get(node.input[0])
    if consumer is None or x is None:
        return "its input or output is not quantized"
    out = consumer.params
    source, params = x
    table = kernels.activation_table(
        FUNCTIONS[node.op_type],
        input_scale=params.scale,
        input_zero_point=params.zero_point,
        input_dtype=params.dtype,
        output_scale=out.scale,
        output_zero_point=out.zero_point,
        output_dtype=out.dtype,
        rounding=builder.rounding,
    )
    lut = builder.emit("Lut", [source, builder.const(table, f"{node.name}/table")], [consumer.target], node.name)
    builder.result.functions[lut] = node.op_type
    builder.declare(consumer.target, out.elem_type, params=out)
    builder.absorb(consumer.quantize)
    return None


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_lut(lowering: Lowering, node: NodeProto) -> None:
    """A Gather of the table at `q − qmin` (int32 indices)."""
    source, output = node.input[0], node.output[0]
    low, _ = kernels.integer_range(NUMPY_TYPES[lowering.elem_type(source)])
    index = lowering.value(source, TensorProto.INT32)
    if low:
        index = lowering.op("Add", [index, lowering.const(-low, np.int32)], output)
    table = lowering.constants[node.input[1]]
    lowering.op("Gather", [lowering.const(table, table.dtype.type), index], output, output=output)
    lowering.bind(output, output, lowering.types[output])
