"""ReduceMean over the spatial axes (and GlobalAveragePool, `pool.py`): `IntMean`, TFLite's int8 MEAN (the integer
sum requantized by `s_in / (s_out · n)`, the element count n folded into the multiplier) or onnxruntime's
QLinearGlobalAveragePool (the integer sum times that ratio in float32, rounded half to even)."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import NodeAttributes
from autoptq.deploy.lowering import Lowering
from autoptq.deploy.ops.quantize import multiply_by_quantized_multiplier

# --- building --------------------------------------------------------------------------------------------------------


def build_reduce_mean(builder: Builder, node: NodeProto) -> str | None:
    attrs = NodeAttributes(node)
    shape = builder.shapes.get(node.input[0])
    axes = attrs.values.get("axes")
    if len(node.input) > 1 and node.input[1]:
        axes = builder.constants.get(node.input[1])
    if shape is None or axes is None or not attrs.integer("keepdims", 1):
        return "only a spatial mean with kept dimensions is emulated"
    wanted = sorted(int(a) % len(shape) for a in np.asarray(axes).reshape(-1))
    if len(shape) != 4 or wanted != [2, 3]:
        return "only a spatial mean with kept dimensions is emulated"
    return emit_mean(builder, node, wanted)


def emit_mean(builder: Builder, node: NodeProto, axes: list[int]) -> str | None:
    """The `IntMean` of `node`'s input over `axes` (kept) into its QuantizeLinear; None, or why it cannot be."""
    consumer = builder.quantize_consumer(node.output[0], fuse=False)
    x = builder.views.get(node.input[0])
    if consumer is None or x is None:
        return "its input or output is not quantized"
    out = consumer.params
    source, params = x
    multiplier, shift = 0, 0
    if builder.rounding != "float_rne":
        ratio = np.float64(params.scale) / np.float64(out.scale)
        multiplier, shift = kernels.quantize_multiplier(float(ratio), builder.rounding)
        shape = builder.shapes.get(node.input[0]) or []
        sizes = [shape[a] if a < len(shape) else None for a in axes]
        if not all(isinstance(d, int) and d > 0 for d in sizes):
            return "TFLite's MEAN folds the element count into its multiplier: the reduced size must be static"
        multiplier, shift = fold_count(multiplier, shift, int(np.prod(sizes)))
    low, high = out.bounds
    builder.emit(
        "IntMean",
        [source],
        [consumer.target],
        node.name,
        axes=axes,
        rounding=builder.rounding,
        input_zero_point=params.zero_point,
        zero_point=out.zero_point,
        qmin=low,
        qmax=high,
        to=out.elem_type,
        multiplier=multiplier,
        shift=shift,
        input_scale=params.scale,
        output_scale=out.scale,
    )
    builder.declare(consumer.target, out.elem_type, params=out)
    builder.absorb(consumer.quantize)
    return None


def fold_count(multiplier: int, shift: int, count: int) -> tuple[int, int]:
    """TFLite's int8 MEAN: the multiplier (M, e) of `s_in / s_out` with the division by the element count folded in,
    `M' = ⌊M · 2^k / count⌋`, `e' = e − k`, `k = min(⌊log2 count⌋, 32, 31 + e)`: one rounding, in the multiply."""
    bits = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << bits) // count, shift - bits


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_mean(lowering: Lowering, node: NodeProto) -> None:
    op, const = lowering.op, lowering.const
    attrs = NodeAttributes(node)
    source, output = node.input[0], node.output[0]
    axes = const(attrs.integers("axes"), np.int64)
    zero_point, qmin, qmax, to = (attrs.integer(k) for k in ("zero_point", "qmin", "qmax", "to"))
    total = op("ReduceSum", [lowering.value(source, TensorProto.INT64), axes], output, keepdims=1)
    count = op("ReduceProd", [op("Gather", [op("Shape", [source], output), axes], output)], output, keepdims=0)
    if attrs.integer("input_zero_point"):
        offset = op("Mul", [count, const(attrs.integer("input_zero_point"), np.int64)], output)
        total = op("Sub", [total, offset], output)
    if attrs.text("rounding") == "float_rne":
        real_count = op("Cast", [count], output, to=TensorProto.FLOAT)
        scale = op("Mul", [const(attrs.real("output_scale"), np.float32), real_count], output)
        factor = op("Div", [const(attrs.real("input_scale"), np.float32), scale], output)
        scaled = op("Mul", [op("Cast", [total], output, to=TensorProto.FLOAT), factor], output)
        lowering.emit_float(scaled, zero_point, qmin, qmax, to, output)
        return
    # TFLite's multiplier already divides by the element count (fold_count): one rounding.
    multiplier, shift = np.array(attrs.integer("multiplier")), np.array(attrs.integer("shift"))
    scaled = multiply_by_quantized_multiplier(lowering, total, multiplier, shift, attrs.text("rounding"), 0, output)
    lowering.emit_int(scaled, zero_point, qmin, qmax, to, output)
