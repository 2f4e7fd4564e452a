"""Device integer graph → standard ONNX ops that onnxruntime runs bit for bit (the exact tier).

Exactness rests on properties of IEEE arithmetic and of integer types, not on any kernel's summation order:

- float32 holds every integer of magnitude below 2^24, so a float Conv / MatMul of integer-valued tensors whose
  partial sums all stay below 2^24 is exact in any order (FMA or not). The bound is checked per output channel from
  the actual weights (`max|x − zp| · Σ|w| + |bias|`); above it the input channels are split into chunks whose
  convolutions are summed in int64, and MatMul runs in float64 (exact below 2^53).
- int64 Mul/Add/Sub are exact in range. uint64 arithmetic wraps modulo 2^64, so a signed value biased by 2^63 and
  shifted right (BitShift, unsigned only in ONNX) is an exact floor division by a power of two: the fixed-point
  requantizations are built from that, never from int64 Div's truncation on the large tensors.
- Cast of an integral float is exact; Round is round-half-to-even; Cast int64 → float32 rounds to nearest even.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.emulators import kernels
from autoptq.emulators.intgraph import DEVICE_DOMAIN, EmulationError

FLOAT32_EXACT = 1 << 24
"""Integers below this magnitude are exact in float32, and so are their sums while partial sums stay below it."""
MIN_OPSET = 13
"""Lowered ops take axes, shapes and bounds as inputs (ReduceSum, Slice, Clip): ONNX opset 13 and later."""
_NUMPY = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64,
    TensorProto.UINT64: np.uint64,
    TensorProto.INT32: np.int32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
}


def lower(device: ModelProto) -> ModelProto:
    """Standard-ONNX model computing the same integers as `device` (inputs and outputs unchanged)."""
    opset = next((o.version for o in device.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise EmulationError(f"exact tier: the model's opset {opset} is below {MIN_OPSET}; upgrade it first")
    lowering = _Lowering(device)
    for node in device.graph.node:
        if node.domain == DEVICE_DOMAIN:
            _LOWERINGS[node.op_type](lowering, node)
        else:
            lowering.copy(node)
    return lowering.finish()


def _attrs(node: NodeProto) -> dict[str, object]:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


class _Lowering:
    """Emits standard nodes; tracks each device tensor's lowered name and element type (an int32 accumulator may
    live as exact float32 or as int64) and converts on demand."""

    def __init__(self, device: ModelProto) -> None:
        graph = device.graph
        self.device = device
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, TensorProto] = {i.name: i for i in graph.initializer}
        self.types: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
        for value in (*graph.input, *graph.value_info, *graph.output):
            self.types[value.name] = value.type.tensor_type.elem_type
        self.lowered: dict[str, tuple[str, int]] = {name: (name, t) for name, t in self.types.items()}
        self._casts: dict[tuple[str, int], str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__l{self._count}"

    def const(self, array: np.ndarray | float | int, dtype: type, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype=dtype)), name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, output: str | None = None, **attrs: object) -> str:
        output = output or self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.fresh(f"{hint}/{op_type}"),
                                           **attrs))  # fmt: skip
        return output

    def bind(self, device_name: str, lowered: str, elem_type: int) -> None:
        self.lowered[device_name] = (lowered, elem_type)

    def value(self, device_name: str, elem_type: int) -> str:
        """The device tensor as `elem_type` (a Cast, made once, when it lives in another type)."""
        name, current = self.lowered[device_name]
        if current == elem_type:
            return name
        key = (device_name, elem_type)
        if key not in self._casts:
            self._casts[key] = self.op("Cast", [name], f"{device_name}/as{elem_type}", to=elem_type)
        return self._casts[key]

    def elem_type(self, device_name: str) -> int:
        return self.lowered[device_name][1]

    def centred(self, device_name: str, zero_point: int, elem_type: int = TensorProto.FLOAT) -> str:
        """`q − zp` as float32 (or float64): exact for 8-bit values."""
        value = self.value(device_name, elem_type)
        if zero_point == 0:
            return value
        return self.op("Sub", [value, self.const(zero_point, _NUMPY[elem_type])], f"{device_name}/centred")

    def emit_int(
        self, source: str, zero_point: int | np.ndarray, qmin: int, qmax: int, elem_type: int, output: str
    ) -> None:
        """`clamp(source + zero_point, qmin, qmax)` (int64 source) cast to the device type, named `output`."""
        shifted = source
        if np.any(np.asarray(zero_point) != 0):
            shifted = self.op("Add", [source, self.const(zero_point, np.int64)], output)
        bounds = [self.const(qmin, np.int64), self.const(qmax, np.int64)]
        clipped = self.op("Clip", [shifted, *bounds], output)
        self.op("Cast", [clipped], output, output=output, to=elem_type)
        self.bind(output, output, elem_type)

    def emit_float(self, source: str, zero_point: int, qmin: int, qmax: int, elem_type: int, output: str) -> None:
        """`clamp(round_half_even(source) + zero_point, qmin, qmax)` (float32 source) cast to the device type."""
        rounded = self.op("Round", [source], output)
        if zero_point:
            rounded = self.op("Add", [rounded, self.const(zero_point, np.float32)], output)
        bounds = [self.const(qmin, np.float32), self.const(qmax, np.float32)]
        clipped = self.op("Clip", [rounded, *bounds], output)
        self.op("Cast", [clipped], output, output=output, to=elem_type)
        self.bind(output, output, elem_type)

    def copy(self, node: NodeProto) -> None:
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [self.value(name, self.types[name]) if name else name for name in node.input]
        self.nodes.append(copy)
        for out in node.output:
            if out:
                self.bind(out, out, self.types.get(out, TensorProto.UNDEFINED))

    def finish(self) -> ModelProto:
        graph = self.device.graph
        used = {name for node in self.nodes for name in node.input}
        initializers = [init for name, init in self.initializers.items() if name in used]
        lowered = helper.make_graph(self.nodes, graph.name, list(graph.input), list(graph.output), initializers)
        opsets = [o for o in self.device.opset_import if o.domain != DEVICE_DOMAIN]
        model = helper.make_model(lowered, opset_imports=opsets)
        model.ir_version = self.device.ir_version
        return model


# --- fixed-point requantization --------------------------------------------------------------------------------------


def _multiply_by_quantized_multiplier(
    lowering: _Lowering, x: str, multiplier: np.ndarray, shift: np.ndarray, rounding: str, add: np.ndarray, hint: str
) -> str:
    """int64 `MBQM(x, M, e) + add` (see kernels.multiply_by_quantized_multiplier), via uint64 floor shifts.

    Double rounding: with `a = x · 2^left` wrapped to int32, `SRDHM(a, M) = ⌊(a·M + 2^30) / 2^31⌋` (gemmlowp's
    truncating form, rewritten); biased by 2^63 in uint64 the numerator is non-negative and the division a right
    shift, leaving SRDHM + 2^32. RDBPOT(h, r) is `⌊(h + 2^(r−1) − [h < 0]) / 2^r⌋` for r > 0, computed the same way
    with a 2^40 bias. Single rounding: `⌊(x·M + 2^(s−1)) / 2^s⌋` biased by 2^63."""
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    u64 = TensorProto.UINT64
    if rounding == "tflite_single":
        total = 31 - shift
        bias = np.left_shift(np.uint64(1), (total - 1).astype(np.uint64)) + np.uint64(1 << 63)
        product = lowering.op("Mul", [lowering.op("Cast", [x], hint, to=u64), lowering.const(multiplier, np.uint64)],
                              hint)  # fmt: skip
        shifted = lowering.op("BitShift", [lowering.op("Add", [product, lowering.const(bias, np.uint64)], hint),
                                           lowering.const(total, np.uint64)], hint, direction="RIGHT")  # fmt: skip
        offset = add - np.left_shift(np.int64(1), 63 - total)
        return lowering.op("Add", [lowering.op("Cast", [shifted], hint, to=TensorProto.INT64),
                                   lowering.const(offset, np.int64)], hint)  # fmt: skip
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    if np.any(left > 0):
        scaled = lowering.op("Mul", [x, lowering.const(np.left_shift(np.int64(1), left), np.int64)], hint)
        biased = lowering.op("Add", [scaled, lowering.const(1 << 31, np.int64)], hint)
        wrapped = lowering.op("Mod", [biased, lowering.const(1 << 32, np.int64)], hint)  # Python-style: non-negative
        x = lowering.op("Sub", [wrapped, lowering.const(1 << 31, np.int64)], hint)
    product = lowering.op("Mul", [lowering.op("Cast", [x], hint, to=u64), lowering.const(multiplier, np.uint64)], hint)
    nudged = lowering.op("Add", [product, lowering.const(np.uint64((1 << 63) + (1 << 30)), np.uint64)], hint)
    high = lowering.op("BitShift", [nudged, lowering.const(31, np.uint64)], hint, direction="RIGHT")  # SRDHM + 2^32
    if not np.any(right > 0):
        return lowering.op("Add", [lowering.op("Cast", [high], hint, to=TensorProto.INT64),
                                   lowering.const(add - (1 << 32), np.int64)], hint)  # fmt: skip
    negative = lowering.op("Cast", [lowering.op("Less", [high, lowering.const(1 << 32, np.uint64)], hint)], hint,
                           to=u64)  # fmt: skip
    if not np.all(right > 0):  # channels without a right shift must not round: their correction is zero
        negative = lowering.op("Mul", [negative, lowering.const(right > 0, np.uint64)], hint)
    half = np.left_shift(np.int64(1), right) >> 1
    biased = lowering.op("Add", [high, lowering.const(half + (1 << 40) - (1 << 32), np.uint64)], hint)
    corrected = lowering.op("Sub", [biased, negative], hint)
    divided = lowering.op("BitShift", [corrected, lowering.const(right, np.uint64)], hint, direction="RIGHT")
    offset = add - np.left_shift(np.int64(1), 40 - right)
    return lowering.op("Add", [lowering.op("Cast", [divided], hint, to=TensorProto.INT64),
                               lowering.const(offset, np.int64)], hint)  # fmt: skip


def _requantize(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    source, output = node.input[0], node.output[0]
    zero_point, qmin, qmax, to = (int(attrs[k]) for k in ("zero_point", "qmin", "qmax", "to"))  # type: ignore[call-overload]
    input_zero_point = int(attrs["input_zero_point"])  # type: ignore[call-overload]
    multiplier = lowering.constants[node.input[1]]
    if attrs["rounding"] == "float_rne":
        narrow = lowering.elem_type(source) in (TensorProto.INT8, TensorProto.UINT8)
        if narrow or input_zero_point == 0:
            value = lowering.centred(source, input_zero_point)
        else:
            wide = lowering.op("Sub", [lowering.value(source, TensorProto.INT64),
                                       lowering.const(input_zero_point, np.int64)], output)  # fmt: skip
            value = lowering.op("Cast", [wide], output, to=TensorProto.FLOAT)
        scaled = lowering.op("Mul", [value, lowering.const(multiplier, np.float32)], output)
        lowering.emit_float(scaled, zero_point, qmin, qmax, to, output)
        return
    value = lowering.value(source, TensorProto.INT64)
    if input_zero_point:
        value = lowering.op("Sub", [value, lowering.const(input_zero_point, np.int64)], output)
    shift = lowering.constants[node.input[2]]
    add = np.zeros(np.shape(shift), np.int64)
    scaled = _multiply_by_quantized_multiplier(lowering, value, multiplier, shift, str(attrs["rounding"]), add, output)
    lowering.emit_int(scaled, zero_point, qmin, qmax, to, output)


# --- accumulators ----------------------------------------------------------------------------------------------------


def _input_reach(lowering: _Lowering, name: str, zero_point: int) -> int:
    """Largest |q − zp| of an 8-bit input."""
    low, high = kernels.integer_range(_NUMPY[lowering.elem_type(name)])
    return max(zero_point - low, high - zero_point)


def _conv(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    x, output = node.input[0], node.output[0]
    weights = lowering.constants[node.input[1]].astype(np.int64)
    bias = lowering.constants[node.input[2]].astype(np.int64) if len(node.input) > 2 else None
    zero_point = int(attrs["x_zero_point"])  # type: ignore[call-overload]
    conv_attrs = {k: attrs[k] for k in ("group", "strides", "pads", "dilations")}
    conv_attrs["kernel_shape"] = list(weights.shape[2:])
    centred = lowering.centred(x, zero_point)
    if attrs["accumulation"] == "int16_pairs":
        _conv_pairs(lowering, node, centred, weights, bias, zero_point, conv_attrs)
        return
    reach = _input_reach(lowering, x, zero_point)
    bias_reach = np.abs(bias) if bias is not None else 0
    per_channel = np.abs(weights).sum(axis=(2, 3))  # (O, C/group)
    if np.max(reach * per_channel.sum(axis=1) + bias_reach) < FLOAT32_EXACT:
        inputs = [centred, lowering.const(weights, np.float32, f"{output}/w")]
        if bias is not None:
            inputs.append(lowering.const(bias, np.float32, f"{output}/b"))
        lowering.bind(output, lowering.op("Conv", inputs, output, **conv_attrs), TensorProto.FLOAT)
        return
    if conv_attrs["group"] != 1:
        raise EmulationError(f"exact tier: grouped convolution {node.name!r} has too long a reduction for float32")
    total = None
    for start, stop in _channel_chunks(reach * per_channel, node.name):
        part = lowering.op("Slice", [centred, lowering.const([start], np.int64), lowering.const([stop], np.int64),
                                     lowering.const([1], np.int64)], output)  # fmt: skip
        conv = lowering.op("Conv", [part, lowering.const(weights[:, start:stop], np.float32)], output, **conv_attrs)
        chunk = lowering.op("Cast", [conv], output, to=TensorProto.INT64)
        total = chunk if total is None else lowering.op("Add", [total, chunk], output)
    assert total is not None
    if bias is not None:
        total = lowering.op("Add", [total, lowering.const(bias.reshape(-1, 1, 1), np.int64)], output)
    lowering.bind(output, total, TensorProto.INT64)


def _channel_chunks(bounds: np.ndarray, name: str) -> list[tuple[int, int]]:
    """Split input channels so each chunk's partial sums stay below 2^24 for every output channel.

    bounds: (O, C) largest |contribution| of each input channel to each output channel."""
    chunks, start, running = [], 0, np.zeros(bounds.shape[0], np.int64)
    for channel in range(bounds.shape[1]):
        if np.any(bounds[:, channel] >= FLOAT32_EXACT):
            raise EmulationError(f"exact tier: convolution {name!r} has a kernel too large for exact float32 sums")
        if np.any(running + bounds[:, channel] >= FLOAT32_EXACT):
            chunks.append((start, channel))
            start, running = channel, np.zeros_like(running)
        running = running + bounds[:, channel]
    chunks.append((start, bounds.shape[1]))
    return chunks


def _conv_pairs(
    lowering: _Lowering,
    node: NodeProto,
    centred: str,
    weights: np.ndarray,
    bias: np.ndarray | None,
    zero_point: int,
    conv_attrs: dict[str, object],
) -> None:
    """u8 × s8 with int16 pair saturation: im2col by a one-hot convolution (exact: each output copies one input),
    pair products by a batched MatMul, then clamp to int16 and sum. K is ordered (kh, kw, C/group) per group."""
    output = node.output[0]
    group = int(conv_attrs["group"])  # type: ignore[call-overload]
    out_c, per_group, kh, kw = weights.shape
    k = kh * kw * per_group
    padded_k = k + k % 2
    onehot = np.zeros((group * padded_k, per_group, kh, kw), np.float32)
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                for c in range(per_group):
                    onehot[g * padded_k + (i * kw + j) * per_group + c, c, i, j] = 1
    patches = lowering.op("Conv", [centred, lowering.const(onehot, np.float32, f"{output}/im2col")], output,
                          **conv_attrs)  # fmt: skip
    raw = lowering.op("Add", [patches, lowering.const(zero_point, np.float32)], output)
    split = lowering.op("Reshape", [raw, lowering.const([0, group, padded_k // 2, 2, -1], np.int64)], output)
    pairs = lowering.op("Transpose", [split], output, perm=[0, 1, 2, 4, 3])  # (N, G, K/2, L, 2)
    ordered = weights.reshape(group, out_c // group, per_group, kh, kw).transpose(0, 1, 3, 4, 2)
    ordered = ordered.reshape(group, out_c // group, k)
    ordered = np.concatenate([ordered, np.zeros((group, out_c // group, padded_k - k), np.int64)], axis=2)
    pair_weights = ordered.reshape(group, out_c // group, padded_k // 2, 2).transpose(0, 2, 3, 1)  # (G, K/2, 2, O/G)
    sums = lowering.op("MatMul", [pairs, lowering.const(pair_weights, np.float32)], output)
    summed = _saturate_and_sum(lowering, sums, axis=2, hint=output)  # (N, G, L, O/G)
    channels_first = lowering.op("Transpose", [summed], output, perm=[0, 1, 3, 2])
    patch_shape = lowering.op("Shape", [patches], output)
    shape = lowering.op("Concat", [lowering.op("Slice", [patch_shape, lowering.const([0], np.int64),
                                                         lowering.const([1], np.int64)], output),
                                   lowering.const([out_c], np.int64),
                                   lowering.op("Slice", [patch_shape, lowering.const([2], np.int64),
                                                         lowering.const([4], np.int64)], output)],
                        output, axis=0)  # fmt: skip
    acc = lowering.op("Reshape", [channels_first, shape], output)
    correction = -zero_point * weights.reshape(out_c, -1).sum(axis=1) + (bias if bias is not None else 0)
    corrected = lowering.op("Add", [acc, lowering.const(correction.reshape(-1, 1, 1), np.float64)], output)
    lowering.bind(output, lowering.op("Cast", [corrected], output, to=TensorProto.INT64), TensorProto.INT64)


def _saturate_and_sum(lowering: _Lowering, sums: str, axis: int, hint: str) -> str:
    """Clamp pair sums to int16 and add them up over `axis` in float64 (exact)."""
    bounds = [lowering.const(kernels.INT16_MIN, np.float32), lowering.const(kernels.INT16_MAX, np.float32)]
    clipped = lowering.op("Cast", [lowering.op("Clip", [sums, *bounds], hint)], hint, to=TensorProto.DOUBLE)
    return lowering.op("ReduceSum", [clipped, lowering.const([axis], np.int64)], hint, keepdims=0)


def _matmul(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    a, b, output = node.input[0], node.input[1], node.output[0]
    a_zero_point = int(attrs["a_zero_point"])  # type: ignore[call-overload]
    if b not in lowering.constants:  # two activations: float64 is exact for any realistic K
        left = lowering.centred(a, a_zero_point, TensorProto.DOUBLE)
        right = lowering.centred(b, int(attrs["b_zero_point"]), TensorProto.DOUBLE)  # type: ignore[call-overload]
        product = lowering.op("MatMul", [left, right], output)
        lowering.bind(output, lowering.op("Cast", [product], output, to=TensorProto.INT64), TensorProto.INT64)
        return
    weights = lowering.constants[b].astype(np.int64)
    bias = lowering.constants[node.input[2]].astype(np.int64) if len(node.input) > 2 else np.zeros(0, np.int64)
    if attrs["accumulation"] == "int16_pairs":
        _matmul_pairs(lowering, node, weights, bias, a_zero_point)
        return
    reach = _input_reach(lowering, a, a_zero_point)
    exact32 = np.max(reach * np.abs(weights).sum(axis=0) + (np.abs(bias) if bias.size else 0)) < FLOAT32_EXACT
    elem_type, dtype = (TensorProto.FLOAT, np.float32) if exact32 else (TensorProto.DOUBLE, np.float64)
    result = lowering.op("MatMul", [lowering.centred(a, a_zero_point, elem_type), lowering.const(weights, dtype)],
                         output)  # fmt: skip
    if bias.size:
        result = lowering.op("Add", [result, lowering.const(bias, dtype)], output)
    if exact32:
        lowering.bind(output, result, TensorProto.FLOAT)
    else:
        lowering.bind(output, lowering.op("Cast", [result], output, to=TensorProto.INT64), TensorProto.INT64)


def _matmul_pairs(lowering: _Lowering, node: NodeProto, weights: np.ndarray, bias: np.ndarray, zero_point: int) -> None:
    """u8 × s8 with int16 pair saturation along K (the reduction axis), rows flattened to 2-D and restored."""
    a, output = node.input[0], node.output[0]
    k, n = weights.shape
    padded_k = k + k % 2
    rows = lowering.op("Reshape", [lowering.value(a, TensorProto.FLOAT), lowering.const([-1, k], np.int64)], output)
    if padded_k != k:
        rows = lowering.op("Pad", [rows, lowering.const([0, 0, 0, 1], np.int64)], output)
    pairs = lowering.op("Transpose", [lowering.op("Reshape", [rows, lowering.const([-1, padded_k // 2, 2], np.int64)],
                                                  output)], output, perm=[1, 0, 2])  # fmt: skip
    padded = np.concatenate([weights, np.zeros((padded_k - k, n), np.int64)], axis=0).reshape(padded_k // 2, 2, n)
    sums = lowering.op("MatMul", [pairs, lowering.const(padded, np.float32)], output)  # (K/2, R, N)
    summed = _saturate_and_sum(lowering, sums, axis=0, hint=output)
    correction = -zero_point * weights.sum(axis=0) + (bias if bias.size else 0)
    corrected = lowering.op("Add", [summed, lowering.const(correction, np.float64)], output)
    a_shape = lowering.op("Shape", [a], output)
    prefix = lowering.op("Slice", [a_shape, lowering.const([0], np.int64), lowering.const([-1], np.int64)], output)
    shape = lowering.op("Concat", [prefix, lowering.const([n], np.int64)], output, axis=0)
    restored = lowering.op("Reshape", [corrected, shape], output)
    lowering.bind(output, lowering.op("Cast", [restored], output, to=TensorProto.INT64), TensorProto.INT64)


def _mul(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    left = lowering.centred(node.input[0], int(attrs["a_zero_point"]))  # type: ignore[call-overload]
    right = lowering.centred(node.input[1], int(attrs["b_zero_point"]))  # type: ignore[call-overload]
    output = node.output[0]
    lowering.bind(output, lowering.op("Mul", [left, right], output), TensorProto.FLOAT)  # |product| <= 2^16: exact


# --- elementwise and pooling -----------------------------------------------------------------------------------------


def _add(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    output = node.output[0]
    zero_point, qmin, qmax, to = (int(attrs[k]) for k in ("zero_point", "qmin", "qmax", "to"))  # type: ignore[call-overload]
    combine = "Sub" if attrs["subtract"] else "Add"
    zero_points = [int(attrs["a_zero_point"]), int(attrs["b_zero_point"])]  # type: ignore[call-overload]
    if attrs["rounding"] == "float_rne":
        ratios = attrs["scale_ratios"]
        terms = [
            lowering.op("Mul", [lowering.centred(name, zp), lowering.const(ratio, np.float32)], output)
            for name, zp, ratio in zip(node.input, zero_points, ratios, strict=True)  # type: ignore[call-overload]
        ]
        lowering.emit_float(lowering.op(combine, terms, output), zero_point, qmin, qmax, to, output)
        return
    multipliers, shifts = attrs["multipliers"], attrs["shifts"]
    rounding = str(attrs["rounding"])
    scaled = []
    for index, (name, zp) in enumerate(zip(node.input, zero_points, strict=True)):
        widened = lowering.op("Mul", [lowering.value(name, TensorProto.INT64),
                                      lowering.const(1 << kernels.ADD_LEFT_SHIFT, np.int64)], output)  # fmt: skip
        shifted = lowering.op("Add", [widened, lowering.const(-zp << kernels.ADD_LEFT_SHIFT, np.int64)], output)
        scaled.append(_multiply_by_quantized_multiplier(lowering, shifted, np.array(multipliers[index]),  # type: ignore[index]
                                                        np.array(shifts[index]), rounding, np.array(0), output))  # type: ignore[index]  # fmt: skip
    raw = lowering.op(combine, scaled, output)
    result = _multiply_by_quantized_multiplier(lowering, raw, np.array(multipliers[2]), np.array(shifts[2]),  # type: ignore[index]
                                               rounding, np.array(zero_point), output)  # fmt: skip
    lowering.emit_int(result, 0, qmin, qmax, to, output)


def _lut(lowering: _Lowering, node: NodeProto) -> None:
    source, output = node.input[0], node.output[0]
    low, _ = kernels.integer_range(_NUMPY[lowering.elem_type(source)])
    index = lowering.value(source, TensorProto.INT32)
    if low:
        index = lowering.op("Add", [index, lowering.const(-low, np.int32)], output)
    table = lowering.constants[node.input[1]]
    lowering.op("Gather", [lowering.const(table, table.dtype.type), index], output, output=output)
    lowering.bind(output, output, lowering.types[output])


def _rounded_divide(lowering: _Lowering, total: str, count: str, hint: str) -> str:
    """TFLite's pooling division (int64): `(t ± n/2) / n`, sign of t, C truncation (= ONNX int Div)."""
    half = lowering.op("Div", [count, lowering.const(2, np.int64)], hint)
    positive = lowering.op("Greater", [total, lowering.const(0, np.int64)], hint)
    nudged = lowering.op("Where", [positive, lowering.op("Add", [total, half], hint),
                                   lowering.op("Sub", [total, half], hint)], hint)  # fmt: skip
    return lowering.op("Div", [nudged, count], hint)


def _average_pool(lowering: _Lowering, node: NodeProto) -> None:
    """Window sums by a ones-kernel float Conv on (N·C, 1, H, W) (exact: at most kh·kw·255), valid-element counts by
    the same Conv on ones, then the integer rounding division."""
    attrs = _attrs(node)
    source, output = node.input[0], node.output[0]
    kernel = list(attrs["kernel_shape"])  # type: ignore[call-overload]
    offset, zero_point = int(attrs["offset"]), int(attrs["zero_point"])  # type: ignore[call-overload]
    conv_attrs = {"kernel_shape": kernel, "strides": attrs["strides"], "pads": attrs["pads"]}
    ones_kernel = lowering.const(np.ones((1, 1, *kernel)), np.float32)
    values = lowering.centred(source, offset)
    planes = lowering.op("Reshape", [values, lowering.const([-1, 1, 0, 0], np.int64)], output)
    sums = lowering.op("Conv", [planes, ones_kernel], output, **conv_attrs)
    in_shape = lowering.op("Shape", [values], output)
    spatial = lowering.op("Slice", [in_shape, lowering.const([2], np.int64), lowering.const([4], np.int64)], output)
    one_plane = lowering.op("Concat", [lowering.const([1, 1], np.int64), spatial], output, axis=0)
    ones = lowering.op("ConstantOfShape", [one_plane], output, value=helper.make_tensor("one", TensorProto.FLOAT,
                                                                                           [1], [1.0]))  # fmt: skip
    counts = lowering.op("Cast", [lowering.op("Conv", [ones, ones_kernel], output, **conv_attrs)], output,
                         to=TensorProto.INT64)  # fmt: skip
    total = lowering.op("Cast", [sums], output, to=TensorProto.INT64)
    if attrs["count_include_pad"]:
        area = int(np.prod(kernel))
        missing = lowering.op("Sub", [lowering.const(area, np.int64), counts], output)
        padding = lowering.op("Mul", [missing, lowering.const(zero_point - offset, np.int64)], output)
        total = lowering.op("Add", [total, padding], output)
        counts = lowering.const(area, np.int64)
    pooled = _rounded_divide(lowering, total, counts, output)
    out_shape = lowering.op("Concat", [lowering.op("Slice", [in_shape, lowering.const([0], np.int64),
                                                             lowering.const([2], np.int64)], output),
                                       lowering.op("Slice", [lowering.op("Shape", [pooled], output),
                                                             lowering.const([2], np.int64),
                                                             lowering.const([4], np.int64)], output)],
                            output, axis=0)  # fmt: skip
    restored = lowering.op("Reshape", [pooled, out_shape], output)
    qmin, qmax = int(attrs["qmin"]), int(attrs["qmax"])  # type: ignore[call-overload]
    lowering.emit_int(restored, offset, qmin, qmax, lowering.types[output], output)


def _mean(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    source, output = node.input[0], node.output[0]
    axes = lowering.const(list(attrs["axes"]), np.int64)  # type: ignore[call-overload]
    zero_point, qmin, qmax, to = (int(attrs[k]) for k in ("zero_point", "qmin", "qmax", "to"))  # type: ignore[call-overload]
    input_zero_point = int(attrs["input_zero_point"])  # type: ignore[call-overload]
    total = lowering.op("ReduceSum", [lowering.value(source, TensorProto.INT64), axes], output, keepdims=1)
    dims = lowering.op("Gather", [lowering.op("Shape", [source], output), axes], output)
    count = lowering.op("ReduceProd", [dims], output, keepdims=0)
    if input_zero_point:
        offset = lowering.op("Mul", [count, lowering.const(input_zero_point, np.int64)], output)
        total = lowering.op("Sub", [total, offset], output)
    if attrs["rounding"] == "float_rne":
        denominator = lowering.op("Mul", [lowering.const(attrs["output_scale"], np.float32),
                                          lowering.op("Cast", [count], output, to=TensorProto.FLOAT)], output)  # fmt: skip
        factor = lowering.op("Div", [lowering.const(attrs["input_scale"], np.float32), denominator], output)
        scaled = lowering.op("Mul", [lowering.op("Cast", [total], output, to=TensorProto.FLOAT), factor], output)
        lowering.emit_float(scaled, zero_point, qmin, qmax, to, output)
        return
    scaled = _multiply_by_quantized_multiplier(lowering, total, np.array(attrs["multiplier"]),
                                               np.array(attrs["shift"]), str(attrs["rounding"]), np.array(0),
                                               output)  # fmt: skip
    lowering.emit_int(_rounded_divide(lowering, scaled, count, output), zero_point, qmin, qmax, to, output)


# --- boundaries ------------------------------------------------------------------------------------------------------


def _quantize(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    source, output = lowering.value(node.input[0], TensorProto.FLOAT), node.output[0]
    to, zero_point = int(attrs["to"]), int(attrs["zero_point"])  # type: ignore[call-overload]
    scale = lowering.const(attrs["scale"], np.float32)
    if attrs["rounding"] == "half_even":  # onnxruntime's own QuantizeLinear is the reference here
        zp = lowering.const(zero_point, _NUMPY[to])
        lowering.op("QuantizeLinear", [source, scale, zp], output, output=output)
        lowering.bind(output, output, to)
        return
    scaled = lowering.op("Div", [source, scale], output)
    magnitude = lowering.op("Abs", [scaled], output)
    whole = lowering.op("Floor", [magnitude], output)
    half_up = lowering.op("GreaterOrEqual", [lowering.op("Sub", [magnitude, whole], output),
                                             lowering.const(0.5, np.float32)], output)  # fmt: skip
    rounded = lowering.op("Add", [whole, lowering.op("Cast", [half_up], output, to=TensorProto.FLOAT)], output)
    signed = lowering.op("Mul", [rounded, lowering.op("Sign", [scaled], output)], output)
    low, high = kernels.integer_range(_NUMPY[to])
    shifted = lowering.op("Add", [signed, lowering.const(zero_point, np.float32)], output)
    bounds = [lowering.const(low, np.float32), lowering.const(high, np.float32)]
    lowering.op("Cast", [lowering.op("Clip", [shifted, *bounds], output)], output, output=output, to=to)
    lowering.bind(output, output, to)


def _dequantize(lowering: _Lowering, node: NodeProto) -> None:
    attrs = _attrs(node)
    source, output = node.input[0], node.output[0]
    dtype = _NUMPY[lowering.elem_type(source)]
    inputs = [lowering.value(source, lowering.elem_type(source)), lowering.const(attrs["scale"], np.float32),
              lowering.const(attrs["zero_point"], dtype)]  # fmt: skip
    lowering.op("DequantizeLinear", inputs, output, output=output)
    lowering.bind(output, output, TensorProto.FLOAT)


_LOWERINGS: dict[str, Callable[[_Lowering, NodeProto], None]] = {
    "Quantize": _quantize,
    "Dequantize": _dequantize,
    "IntConv": _conv,
    "IntMatMul": _matmul,
    "IntMul": _mul,
    "IntAdd": _add,
    "Requantize": _requantize,
    "Lut": _lut,
    "IntAveragePool": _average_pool,
    "IntMean": _mean,
}
"""Device op → its lowering (each emits standard nodes and binds the op's output)."""
