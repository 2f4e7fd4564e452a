"""AveragePool and GlobalAveragePool. AveragePool: `IntAveragePool`, TFLite's integer AVERAGE_POOL_2D (the raw sum
of the int8 values, a rounding division by the count, then a rescale when the output's parameters differ);
onnxruntime averages in float32, which the float path emulates. GlobalAveragePool is a spatial mean (`mean.py`)."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper

from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import NodeAttributes
from autoptq.deploy.lowering import Lowering
from autoptq.deploy.ops.mean import emit_mean

# --- building --------------------------------------------------------------------------------------------------------


def build_global_average_pool(builder: Builder, node: NodeProto) -> str | None:
    shape = builder.shapes.get(node.input[0])
    if shape is None:
        return "the input rank is unknown"
    return emit_mean(builder, node, list(range(2, len(shape))))


def build_average_pool(builder: Builder, node: NodeProto) -> str | None:
    if builder.rounding == "float_rne":
        return "onnxruntime averages in float32"
    consumer = builder.quantize_consumer(node.output[0], fuse=False)
    x = builder.views.get(node.input[0])
    if consumer is None or x is None:
        return "its input or output is not quantized"
    attrs = NodeAttributes(node)
    kernel = attrs.integers("kernel_shape")
    dilations = attrs.integers("dilations", [1] * len(kernel))
    if len(kernel) != 2 or attrs.integer("ceil_mode", 0) or any(d != 1 for d in dilations):
        return "only 2-D average pooling without ceil_mode or dilations is emulated"
    strides = attrs.integers("strides", [1, 1])
    pads = builder.explicit_pads(attrs, node.input[0], kernel, strides, dilations)
    if pads is None:
        return "auto_pad needs a static input shape"
    out = consumer.params
    source, params = x
    pooled = consumer.target if params == out else builder.fresh(f"{node.name}/pooled")
    low, high = params.bounds
    builder.emit(
        "IntAveragePool",
        [source],
        [pooled],
        node.name,
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        count_include_pad=attrs.integer("count_include_pad", 0),
        offset=128 if params.dtype == np.uint8 else 0,
        zero_point=params.zero_point,
        qmin=low,
        qmax=high,
    )
    builder.declare(pooled, params.elem_type, like=consumer.target, params=params)
    if pooled != consumer.target:
        builder.rescale(pooled, params, out, node.name, target=consumer.target)
    builder.absorb(consumer.quantize)
    return None


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_average_pool(lowering: Lowering, node: NodeProto) -> None:
    """Window sums by a ones-kernel float Conv over (N·C, 1, H, W) planes (exact: at most kh·kw·255), valid-element
    counts by the same Conv over ones, then the integer rounding division."""
    op, const = lowering.op, lowering.const
    attrs = NodeAttributes(node)
    source, output = node.input[0], node.output[0]
    kernel = attrs.integers("kernel_shape")
    offset, zero_point = attrs.integer("offset"), attrs.integer("zero_point")
    conv_attrs = {"kernel_shape": kernel, "strides": attrs.integers("strides"), "pads": attrs.integers("pads")}
    ones_kernel = const(np.ones((1, 1, *kernel)), np.float32)
    values = lowering.centred(source, offset)
    planes = op("Reshape", [values, const([-1, 1, 0, 0], np.int64)], output)
    sums = op("Conv", [planes, ones_kernel], output, **conv_attrs)
    in_shape = op("Shape", [values], output)
    spatial = op("Slice", [in_shape, const([2], np.int64), const([4], np.int64)], output)
    one_plane = op("Concat", [const([1, 1], np.int64), spatial], output, axis=0)
    ones = op("ConstantOfShape", [one_plane], output, value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1]))
    counts = op("Cast", [op("Conv", [ones, ones_kernel], output, **conv_attrs)], output, to=TensorProto.INT64)
    total = op("Cast", [sums], output, to=TensorProto.INT64)
    if attrs.integer("count_include_pad"):
        area = int(np.prod(kernel))
        missing = op("Sub", [const(area, np.int64), counts], output)
        padding = op("Mul", [missing, const(zero_point - offset, np.int64)], output)
        total = op("Add", [total, padding], output)
        counts = const(area, np.int64)
    pooled = _rounded_divide(lowering, total, counts, output)
    channels = op("Slice", [in_shape, const([0], np.int64), const([2], np.int64)], output)
    pooled_spatial = op("Slice", [op("Shape", [pooled], output), const([2], np.int64), const([4], np.int64)], output)
    restored = op("Reshape", [pooled, op("Concat", [channels, pooled_spatial], output, axis=0)], output)
    lowering.emit_int(restored, offset, attrs.integer("qmin"), attrs.integer("qmax"), lowering.types[output], output)


def _rounded_divide(lowering: Lowering, total: str, count: str, hint: str) -> str:
    """TFLite's pooling division (int64): `(t ± n/2) / n` by the sign of t, C truncation (= ONNX integer Div)."""
    op = lowering.op
    half = op("Div", [count, lowering.const(2, np.int64)], hint)
    positive = op("Greater", [total, lowering.const(0, np.int64)], hint)
    nudged = op("Where", [positive, op("Add", [total, half], hint), op("Sub", [total, half], hint)], hint)
    return op("Div", [nudged, count], hint)
