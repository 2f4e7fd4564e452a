"""QuantizeLinear / DequantizeLinear, the boundaries of the integer graph, and requantization.

Building: a DequantizeLinear of a constant makes a quantized constant (weights, bias) and of an activation an integer
view of it; neither emits a node until a float consumer needs the real values (`Builder.float_input`). A
QuantizeLinear of a float tensor becomes the device `Quantize`; of a quantized tensor, a rescale (`Requantize`).

Lowering: `Quantize`, `Dequantize` and `Requantize`, and the fixed-point multiply `IntAdd` and `IntMean` share.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder, ConstQ
from autoptq.deploy.device_graph import EmulationError, NodeAttributes
from autoptq.deploy.lowering import NUMPY_TYPES, Lowering

# --- building --------------------------------------------------------------------------------------------------------


def build_dequantize_linear(builder: Builder, node: NodeProto) -> None:
    source, output = node.input[0], node.output[0]
    if source in builder.constants:
        values = builder.constants[source]
        scale = builder.constants[node.input[1]].astype(np.float32)
        has_zero_point = len(node.input) > 2 and node.input[2]
        zero_point = builder.constants[node.input[2]] if has_zero_point else np.zeros(scale.shape, np.int64)
        axis = NodeAttributes(node).integer("axis", 1) % max(values.ndim, 1)
        builder.const_q[output] = ConstQ(values, scale, zero_point.astype(np.int64), axis)
        return
    params = builder.qparams(node)
    if params is None:
        raise EmulationError(f"exact tier: DequantizeLinear {node.name!r} of an activation is not per-tensor")
    builder.views[output] = (source, builder.require_8bit(params, node))
    builder.result.params.setdefault(source, params)


def build_quantize_linear(builder: Builder, node: NodeProto) -> None:
    params = builder.qparams(node)
    if params is None:
        raise EmulationError(f"exact tier: QuantizeLinear {node.name!r} of an activation is not per-tensor")
    params = builder.require_8bit(params, node)
    source, target = node.input[0], node.output[0]
    if source in builder.views:  # a quantized tensor requantized to other parameters
        builder.rescale(*builder.views[source], params, node.name or "requantize", target=target)
        return
    rounding = "half_even" if builder.rounding == "float_rne" else "half_away"
    builder.emit(
        "Quantize",
        [builder.float_input(source)],
        [target],
        f"{node.name}/quantize",
        scale=params.scale,
        zero_point=params.zero_point,
        to=params.elem_type,
        rounding=rounding,
    )
    builder.declare(target, params.elem_type, params=params)


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_quantize(lowering: Lowering, node: NodeProto) -> None:
    op, const = lowering.op, lowering.const
    attrs = NodeAttributes(node)
    source, output = lowering.value(node.input[0], TensorProto.FLOAT), node.output[0]
    to, zero_point = attrs.integer("to"), attrs.integer("zero_point")
    scale = const(attrs.real("scale"), np.float32)
    if attrs.text("rounding") == "half_even":  # onnxruntime's own QuantizeLinear: float32 division, half to even
        op("QuantizeLinear", [source, scale, const(zero_point, NUMPY_TYPES[to])], output, output=output)
        lowering.bind(output, output, to)
        return
    scaled = op("Div", [source, scale], output)
    magnitude = op("Abs", [scaled], output)
    whole = op("Floor", [magnitude], output)
    half_up = op("GreaterOrEqual", [op("Sub", [magnitude, whole], output), const(0.5, np.float32)], output)
    rounded = op("Add", [whole, op("Cast", [half_up], output, to=TensorProto.FLOAT)], output)
    signed = op("Mul", [rounded, op("Sign", [scaled], output)], output)
    low, high = kernels.integer_range(NUMPY_TYPES[to])
    shifted = op("Add", [signed, const(zero_point, np.float32)], output)
    clipped = op("Clip", [shifted, const(low, np.float32), const(high, np.float32)], output)
    op("Cast", [clipped], output, output=output, to=to)
    lowering.bind(output, output, to)


def lower_dequantize(lowering: Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    source, output = node.input[0], node.output[0]
    elem_type = lowering.elem_type(source)
    zero_point = lowering.const(attrs.integer("zero_point"), NUMPY_TYPES[elem_type])
    inputs = [lowering.value(source, elem_type), lowering.const(attrs.real("scale"), np.float32), zero_point]
    lowering.op("DequantizeLinear", inputs, output, output=output)
    lowering.bind(output, output, TensorProto.FLOAT)


def lower_requantize(lowering: Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    source, output = node.input[0], node.output[0]
    zero_point, qmin, qmax, to = (attrs.integer(k) for k in ("zero_point", "qmin", "qmax", "to"))
    input_zero_point = attrs.integer("input_zero_point")
    multiplier = lowering.constants[node.input[1]]
    if attrs.text("rounding") == "float_rne":
        if lowering.elem_type(source) in (TensorProto.INT8, TensorProto.UINT8) or input_zero_point == 0:
            value = lowering.centred(source, input_zero_point)
        else:
            wide = lowering.value(source, TensorProto.INT64)
            wide = lowering.op("Sub", [wide, lowering.const(input_zero_point, np.int64)], output)
            value = lowering.op("Cast", [wide], output, to=TensorProto.FLOAT)
        scaled = lowering.op("Mul", [value, lowering.const(multiplier, np.float32)], output)
        lowering.emit_float(scaled, zero_point, qmin, qmax, to, output)
        return
    value = lowering.value(source, TensorProto.INT64)
    if input_zero_point:
        value = lowering.op("Sub", [value, lowering.const(input_zero_point, np.int64)], output)
    shift = lowering.constants[node.input[2]]
    add = np.full(np.shape(shift), zero_point, np.int64)
    scaled = multiply_by_quantized_multiplier(lowering, value, multiplier, shift, attrs.text("rounding"), add, output)
    lowering.emit_int(scaled, 0, qmin, qmax, to, output)


def multiply_by_quantized_multiplier(
    lowering: Lowering,
    x: str,
    multiplier: np.ndarray,
    shift: np.ndarray,
    rounding: str,
    add: np.ndarray | int,
    hint: str,
) -> str:
    """int64 `MBQM(x, M, e) + add` (see kernels.multiply_by_quantized_multiplier) from exact floor shifts.

    Double rounding: with `a = x · 2^left` wrapped to int32, `SRDHM(a, M) = ⌊(a·M + 2^30) / 2^31⌋` (gemmlowp's
    truncating form rewritten: ties go up in both); `a·M + 2^30 + 2^62` is non-negative and below 2^63, so the
    division is a uint64 right shift, leaving SRDHM + 2^31. RDBPOT(h, r) is `⌊(h + 2^(r−1) − [h < 0]) / 2^r⌋` for
    r > 0, shifted the same way after a 2^40 bias. Single rounding: `⌊(x·M + 2^(s−1)) / 2^s⌋`, biased by 2^63 in
    wrapping uint64 arithmetic (the numerator may need 63 bits)."""
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    op, const = lowering.op, lowering.const
    u64, i64 = TensorProto.UINT64, TensorProto.INT64
    if rounding == "tflite_single":
        total = 31 - shift
        bias = np.left_shift(np.uint64(1), (total - 1).astype(np.uint64)) + np.uint64(1 << 63)
        product = op("Mul", [op("Cast", [x], hint, to=u64), const(multiplier, np.uint64)], hint)
        biased = op("Add", [product, const(bias, np.uint64)], hint)
        shifted = op("BitShift", [biased, const(total, np.uint64)], hint, direction="RIGHT")
        offset = add - np.left_shift(np.int64(1), 63 - total)
        return op("Add", [op("Cast", [shifted], hint, to=i64), const(offset, np.int64)], hint)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    if np.any(left > 0):  # x · 2^left in int32 arithmetic, which wraps
        scaled = op("Mul", [x, const(np.left_shift(np.int64(1), left), np.int64)], hint)
        wrapped = op("Mod", [op("Add", [scaled, const(1 << 31, np.int64)], hint), const(1 << 32, np.int64)], hint)
        x = op("Sub", [wrapped, const(1 << 31, np.int64)], hint)
    product = op("Mul", [x, const(multiplier, np.int64)], hint)  # |x·M| < 2^62
    biased = op("Cast", [op("Add", [product, const((1 << 62) + (1 << 30), np.int64)], hint)], hint, to=u64)
    high = op("BitShift", [biased, const(31, np.uint64)], hint, direction="RIGHT")  # SRDHM + 2^31
    if not np.any(right > 0):
        return op("Add", [op("Cast", [high], hint, to=i64), const(add - (1 << 31), np.int64)], hint)
    negative = op("Cast", [op("Less", [high, const(1 << 31, np.uint64)], hint)], hint, to=u64)
    if not np.all(right > 0):  # channels without a right shift take no rounding correction
        negative = op("Mul", [negative, const(right > 0, np.uint64)], hint)
    half = np.left_shift(np.int64(1), right) >> 1
    nudged = op("Sub", [op("Add", [high, const(half + (1 << 40) - (1 << 31), np.uint64)], hint), negative], hint)
    divided = op("BitShift", [nudged, const(right, np.uint64)], hint, direction="RIGHT")
    offset = add - np.left_shift(np.int64(1), 40 - right)
    return op("Add", [op("Cast", [divided], hint, to=i64), const(offset, np.int64)], hint)
