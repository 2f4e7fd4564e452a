"""Device integer graph → standard ONNX ops that onnxruntime runs bit for bit (the exact tier).

Exactness rests on properties of IEEE arithmetic and of integer types, not on any kernel's summation order:

- float32 holds every integer of magnitude below 2^24, so a float Conv / MatMul of integer-valued tensors whose
  partial sums all stay below 2^24 is exact in any order (FMA or not). The bound is checked per output channel from
  the actual weights (`max|x − zp| · Σ|w| + |bias|`); above it the input channels are split into chunks whose
  convolutions are summed in int64, and MatMul runs in float64 (exact below 2^53).
- int64 Mul/Add/Sub are exact in range. uint64 arithmetic wraps modulo 2^64, so a signed value biased by 2^63 and
  shifted right (BitShift, unsigned only in ONNX) is an exact floor division by a power of two: the fixed-point
  requantizations are built from that (int64 Div, slow and truncating, only divides the small pooled tensors).
- Cast of an integral float is exact; Round is round-half-to-even; Cast int64 → float32 rounds to nearest even.
- Clamps run on floats: onnxruntime 1.31's int64 Clip, Max and Min leave some values beyond the int32 range
  unclamped (measured: 2^31 + 100 passes [−128, 127]), while comparisons (Less, Greater) are correct.

Every lowering is checked bit for bit against the numpy kernels in the tests, through the golden reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.deploy import kernels
from autoptq.deploy.intgraph import DEVICE_DOMAIN, EmulationError, NodeAttributes

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
            if value.type.tensor_type.elem_type:
                self.types[value.name] = value.type.tensor_type.elem_type
        self.lowered: dict[str, tuple[str, int]] = {name: (name, t) for name, t in self.types.items()}
        self._casts: dict[tuple[str, int], str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__l{self._count}"

    def const(self, array: np.ndarray | float | int, dtype: type, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array, dtype=dtype), name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, output: str | None = None, **attrs: object) -> str:
        output = output or self.fresh(hint)
        node = helper.make_node(op_type, list(inputs), [output], name=self.fresh(f"{hint}/{op_type}"), **attrs)
        self.nodes.append(node)
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
        """`clamp(source + zero_point, qmin, qmax)` (int64 source) cast to the device type, named `output`.

        The clamp runs in float64 (see the module docstring): the conversion is exact below 2^53 and monotone above,
        which is all a clamp to int32-range bounds needs."""
        shifted = source
        if np.any(np.asarray(zero_point) != 0):
            shifted = self.op("Add", [source, self.const(zero_point, np.int64)], output)
        wide = self.op("Cast", [shifted], output, to=TensorProto.DOUBLE)
        clipped = self.op("Clip", [wide, self.const(qmin, np.float64), self.const(qmax, np.float64)], output)
        self.op("Cast", [clipped], output, output=output, to=elem_type)
        self.bind(output, output, elem_type)

    def emit_float(self, source: str, zero_point: int, qmin: int, qmax: int, elem_type: int, output: str) -> None:
        """`clamp(round_half_even(source) + zero_point, qmin, qmax)` (float32 source) cast to the device type; the
        bounds must be exact in float32 (8- and 16-bit outputs)."""
        if max(abs(qmin), abs(qmax)) > FLOAT32_EXACT:
            raise ValueError(f"float32 clamp bounds [{qmin}, {qmax}] are not exact in float32")
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
    lowering: _Lowering,
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


def _requantize(lowering: _Lowering, node: NodeProto) -> None:
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
    scaled = _multiply_by_quantized_multiplier(lowering, value, multiplier, shift, attrs.text("rounding"), add, output)
    lowering.emit_int(scaled, 0, qmin, qmax, to, output)


# --- accumulators ----------------------------------------------------------------------------------------------------


def _input_reach(lowering: _Lowering, name: str, zero_point: int) -> int:
    """Largest |q − zp| of an 8-bit input."""
    low, high = kernels.integer_range(_NUMPY[lowering.elem_type(name)])
    return max(zero_point - low, high - zero_point)


def _risky_pairs(pair_weights: np.ndarray) -> np.ndarray:
    """Indices p along K/2 of the pairs that can saturate int16 for some output (see kernels.saturable_pairs)."""
    risky = kernels.saturable_pairs(pair_weights)  # (..., K/2, O)
    return np.flatnonzero(risky.reshape(-1, *risky.shape[-2:]).any(axis=(0, 2)))


FLOAT32_EXACT_PAIRS = (1 << 24) // (1 << 16)
"""Up to this many pair terms, each below 2^16 in magnitude (a clamped sum, or the excess of a u8 x s8 pair sum over
int16), their total stays below 2^24 and float32 adds them exactly in any order."""


def _reduce_pairs(lowering: _Lowering, sums: str, axis: int, hint: str, excess: bool, count: int) -> str:
    """Over `axis` of `count` exact float32 pair sums s, exactly, as float64: `Σ clamp_int16(s)`, or with `excess`
    the saturation excess `Σ (s − clamp_int16(s))`. Summed in float32 while that is exact (it halves the traffic of
    the largest tensor of the lowering), else in float64."""
    bounds = [lowering.const(kernels.INT16_MIN, np.float32), lowering.const(kernels.INT16_MAX, np.float32)]
    reduced = lowering.op("Clip", [sums, *bounds], hint)
    if excess:
        reduced = lowering.op("Sub", [sums, reduced], hint)
    axes = lowering.const([axis], np.int64)
    if count <= FLOAT32_EXACT_PAIRS:
        total = lowering.op("ReduceSum", [reduced, axes], hint, keepdims=0)
        return lowering.op("Cast", [total], hint, to=TensorProto.DOUBLE)
    wide = lowering.op("Cast", [reduced], hint, to=TensorProto.DOUBLE)
    return lowering.op("ReduceSum", [wide, axes], hint, keepdims=0)


def _use_excess(risky: np.ndarray, pair_count: int) -> bool:
    """Whether to subtract the excess of the risky pairs from an int32 sum (cheap when few pairs can saturate)
    rather than sum every clamped pair directly (cheaper when most can)."""
    return 2 * len(risky) <= pair_count


def _subtract_excess(lowering: _Lowering, output: str, accumulator: tuple[str, int], excess: str) -> None:
    """Bind `output` to the int32-accumulated sum minus the saturation excess (int64)."""
    exact = lowering.op("Cast", [accumulator[0]], output, to=TensorProto.DOUBLE)
    saturated = lowering.op("Sub", [exact, excess], output)
    lowering.bind(output, lowering.op("Cast", [saturated], output, to=TensorProto.INT64), TensorProto.INT64)


def _conv(lowering: _Lowering, node: NodeProto) -> None:
    """Exact int32 accumulation. With `int16_pairs` (x86 without VNNI), where some pair can saturate: the clamped
    pair sums added up directly, or `Σ clamp(s_p) = Σ s_p − Σ (s_p − clamp(s_p))` with the last sum only over the
    pairs that can saturate, whichever touches fewer pairs."""
    attrs = NodeAttributes(node)
    x, output = node.input[0], node.output[0]
    weights = lowering.constants[node.input[1]].astype(np.int64)
    bias = lowering.constants[node.input[2]].astype(np.int64) if len(node.input) > 2 else np.zeros(0, np.int64)
    zero_point, group = attrs.integer("x_zero_point"), attrs.integer("group")
    conv_attrs: dict[str, object] = {k: attrs.integers(k) for k in ("strides", "pads", "dilations")}
    conv_attrs.update(group=group, kernel_shape=list(weights.shape[2:]))
    centred = lowering.centred(x, zero_point)
    pair_weights = kernels.conv_pair_weights(weights, group)
    risky = _risky_pairs(pair_weights) if attrs.text("accumulation") == "int16_pairs" else np.zeros(0, np.int64)
    if risky.size and not _use_excess(risky, pair_weights.shape[1]):
        every = np.arange(pair_weights.shape[1])
        shape = weights.shape
        pairs = _conv_pair_reduction(
            lowering, output, centred, shape, pair_weights, every, zero_point, conv_attrs, False
        )
        correction = -zero_point * weights.reshape(weights.shape[0], -1).sum(axis=1) + (bias if bias.size else 0)
        total = lowering.op("Add", [pairs, lowering.const(correction.reshape(-1, 1, 1), np.float64)], output)
        lowering.bind(output, lowering.op("Cast", [total], output, to=TensorProto.INT64), TensorProto.INT64)
        return
    accumulator = _conv_accumulator(lowering, node, centred, weights, bias, conv_attrs, "Conv")
    if not risky.size:
        lowering.bind(output, *accumulator)
        return
    selected = pair_weights[:, risky]
    excess = _conv_pair_reduction(
        lowering, output, centred, weights.shape, selected, risky, zero_point, conv_attrs, True
    )
    _subtract_excess(lowering, output, accumulator, excess)


def _conv_transpose(lowering: _Lowering, node: NodeProto) -> None:
    """TFLite's TRANSPOSE_CONV accumulator: a float ConvTranspose of integers, exact under the same 2^24 bound as
    Conv (every output element, and every partial sum of it, is a sum of a subset of the products bounded there)."""
    attrs = NodeAttributes(node)
    weights = lowering.constants[node.input[1]].astype(np.int64)
    bias = lowering.constants[node.input[2]].astype(np.int64) if len(node.input) > 2 else np.zeros(0, np.int64)
    conv_attrs: dict[str, object] = {k: attrs.integers(k) for k in ("strides", "pads", "dilations", "output_padding")}
    conv_attrs.update(group=1, kernel_shape=list(weights.shape[2:]))
    centred = lowering.centred(node.input[0], attrs.integer("x_zero_point"))
    accumulator = _conv_accumulator(lowering, node, centred, weights, bias, conv_attrs, "ConvTranspose")
    lowering.bind(node.output[0], *accumulator)


def _conv_accumulator(
    lowering: _Lowering,
    node: NodeProto,
    centred: str,
    weights: np.ndarray,
    bias: np.ndarray,
    conv_attrs: dict[str, object],
    op_type: str,
) -> tuple[str, int]:
    """`Σ (x − zp)·w + bias` of a Conv (weights (O, C/group, kh, kw)) or ConvTranspose (weights (C, O, kh, kw)) as
    exact float32 (bound below 2^24) or as int64 summed over input-channel chunks."""
    output = node.output[0]
    reach = _input_reach(lowering, node.input[0], NodeAttributes(node).integer("x_zero_point"))
    transposed = op_type == "ConvTranspose"
    per_channel = np.abs(weights).sum(axis=(2, 3))  # (O, C/group), or (C, O) transposed
    if transposed:
        per_channel = per_channel.T
    if np.max(reach * per_channel.sum(axis=1) + np.abs(bias).max(initial=0)) < FLOAT32_EXACT:
        inputs = [centred, lowering.const(weights, np.float32, f"{output}/w")]
        if bias.size:
            inputs.append(lowering.const(bias, np.float32, f"{output}/b"))
        return lowering.op(op_type, inputs, output, **conv_attrs), TensorProto.FLOAT
    if np.max(reach * per_channel.sum(axis=1)) < FLOAT32_EXACT:
        # Only the bias is beyond float32's exact range (a tiny weight scale makes it large): sum the products in
        # float32, exactly, and add the bias in int64.
        conv = lowering.op(op_type, [centred, lowering.const(weights, np.float32, f"{output}/w")], output, **conv_attrs)
        total = lowering.op("Cast", [conv], output, to=TensorProto.INT64)
        return lowering.op(
            "Add", [total, lowering.const(bias.reshape(-1, *[1] * (weights.ndim - 2)), np.int64)], output
        ), TensorProto.INT64
    if conv_attrs["group"] != 1:
        raise EmulationError(f"exact tier: grouped convolution {node.name!r} has too long a reduction for float32")
    total = None
    for start, stop in _channel_chunks(reach * per_channel, node.name):
        bounds = [lowering.const([start], np.int64), lowering.const([stop], np.int64), lowering.const([1], np.int64)]
        part = lowering.op("Slice", [centred, *bounds], output)
        chunk_weights = weights[start:stop] if transposed else weights[:, start:stop]
        conv = lowering.op(op_type, [part, lowering.const(chunk_weights, np.float32)], output, **conv_attrs)
        chunk = lowering.op("Cast", [conv], output, to=TensorProto.INT64)
        total = chunk if total is None else lowering.op("Add", [total, chunk], output)
    assert total is not None
    if bias.size:
        total = lowering.op(
            "Add", [total, lowering.const(bias.reshape(-1, *[1] * (weights.ndim - 2)), np.int64)], output
        )
    return total, TensorProto.INT64


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


def _conv_pair_reduction(
    lowering: _Lowering,
    output: str,
    centred: str,
    shape: tuple[int, ...],
    pair_weights: np.ndarray,
    pairs: np.ndarray,
    zero_point: int,
    conv_attrs: dict[str, object],
    excess: bool,
) -> str:
    """`_reduce_pairs` of the selected pairs (indices `pairs` along K/2) of raw u8 products, as float64
    (N, O, H', W').

    The raw u8 activations of those pairs come from a one-hot convolution (exact: each output copies one input, or
    0 in the padding, i.e. the zero point once re-offset); their pair sums from a batched MatMul."""
    op, const = lowering.op, lowering.const
    out_c, per_group, kh, kw = shape
    group, count = pair_weights.shape[0], len(pairs)
    onehot = np.zeros((group, count * 2, per_group, kh, kw), np.float32)
    for row, k in enumerate(np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)):
        tap, channel = divmod(int(k), per_group)
        if tap < kh * kw:  # the padding element of an odd K stays zero (its weight is zero too)
            onehot[:, row, channel, tap // kw, tap % kw] = 1
    patches = op("Conv", [centred, const(onehot.reshape(-1, per_group, kh, kw), np.float32)], output, **conv_attrs)
    raw = op("Add", [patches, const(zero_point, np.float32)], output)
    split = op("Reshape", [raw, const([0, group, count, 2, -1], np.int64)], output)
    pair_values = op("Transpose", [split], output, perm=[0, 1, 2, 4, 3])  # (N, G, P, L, 2)
    sums = op("MatMul", [pair_values, const(pair_weights, np.float32)], output)  # (N, G, P, L, O/G)
    reduced = op("Transpose", [_reduce_pairs(lowering, sums, 2, output, excess, count)], output, perm=[0, 1, 3, 2])
    patch_shape = op("Shape", [patches], output)
    batch = op("Slice", [patch_shape, const([0], np.int64), const([1], np.int64)], output)
    spatial = op("Slice", [patch_shape, const([2], np.int64), const([4], np.int64)], output)
    return op("Reshape", [reduced, op("Concat", [batch, const([out_c], np.int64), spatial], output, axis=0)], output)


def _matmul(lowering: _Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    a, b, output = node.input[0], node.input[1], node.output[0]
    a_zero_point = attrs.integer("a_zero_point")
    if b not in lowering.constants:  # two activations: float64 is exact for any realistic K
        left = lowering.centred(a, a_zero_point, TensorProto.DOUBLE)
        right = lowering.centred(b, attrs.integer("b_zero_point"), TensorProto.DOUBLE)
        product = lowering.op("MatMul", [left, right], output)
        lowering.bind(output, lowering.op("Cast", [product], output, to=TensorProto.INT64), TensorProto.INT64)
        return
    weights = lowering.constants[b].astype(np.int64)
    bias = lowering.constants[node.input[2]].astype(np.int64) if len(node.input) > 2 else np.zeros(0, np.int64)
    pair_weights = kernels.matmul_pair_weights(weights)  # (K/2, 2, N)
    risky = _risky_pairs(pair_weights) if attrs.text("accumulation") == "int16_pairs" else np.zeros(0, np.int64)
    if risky.size and not _use_excess(risky, pair_weights.shape[0]):
        pairs = _matmul_pair_reduction(lowering, node, pair_weights, np.arange(pair_weights.shape[0]), excess=False)
        correction = -a_zero_point * weights.sum(axis=0) + (bias if bias.size else 0)
        total = lowering.op("Add", [pairs, lowering.const(correction, np.float64)], output)
        lowering.bind(output, lowering.op("Cast", [total], output, to=TensorProto.INT64), TensorProto.INT64)
        return
    reach = _input_reach(lowering, a, a_zero_point)
    exact32 = np.max(reach * np.abs(weights).sum(axis=0) + np.abs(bias).max(initial=0)) < FLOAT32_EXACT
    elem_type, dtype = (TensorProto.FLOAT, np.float32) if exact32 else (TensorProto.DOUBLE, np.float64)
    centred = lowering.centred(a, a_zero_point, elem_type)
    result = lowering.op("MatMul", [centred, lowering.const(weights, dtype)], output)
    if bias.size:
        result = lowering.op("Add", [result, lowering.const(bias, dtype)], output)
    if not exact32:
        result, elem_type = lowering.op("Cast", [result], output, to=TensorProto.INT64), TensorProto.INT64
    if not risky.size:
        lowering.bind(output, result, elem_type)
        return
    excess = _matmul_pair_reduction(lowering, node, pair_weights, risky, excess=True)
    _subtract_excess(lowering, output, (result, elem_type), excess)


def _matmul_pair_reduction(
    lowering: _Lowering, node: NodeProto, pair_weights: np.ndarray, pairs: np.ndarray, excess: bool
) -> str:
    """`_reduce_pairs` of the selected pairs along K (the reduction axis) of raw u8 products, as float64 shaped
    like the output."""
    op, const = lowering.op, lowering.const
    a, output = node.input[0], node.output[0]
    k, n = lowering.constants[node.input[1]].shape
    rows = op("Reshape", [lowering.value(a, TensorProto.FLOAT), const([-1, k], np.int64)], output)
    if k % 2:
        rows = op("Pad", [rows, const([0, 0, 0, 1], np.int64)], output)
    columns = np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)
    selected = op("Gather", [rows, const(columns, np.int64)], output, axis=1)  # raw u8 values of the pairs
    split = op("Reshape", [selected, const([-1, len(pairs), 2], np.int64)], output)
    pair_values = op("Transpose", [split], output, perm=[1, 0, 2])  # (P, R, 2)
    sums = op("MatMul", [pair_values, const(pair_weights[pairs], np.float32)], output)  # (P, R, N)
    prefix = op("Slice", [op("Shape", [a], output), const([0], np.int64), const([-1], np.int64)], output)
    shape = op("Concat", [prefix, const([n], np.int64)], output, axis=0)
    return op("Reshape", [_reduce_pairs(lowering, sums, 0, output, excess, len(pairs)), shape], output)


def _mul(lowering: _Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    left = lowering.centred(node.input[0], attrs.integer("a_zero_point"))
    right = lowering.centred(node.input[1], attrs.integer("b_zero_point"))
    output = node.output[0]
    lowering.bind(output, lowering.op("Mul", [left, right], output), TensorProto.FLOAT)  # |product| <= 2^16: exact


# --- elementwise and pooling -----------------------------------------------------------------------------------------


def _add(lowering: _Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    output = node.output[0]
    zero_point, qmin, qmax, to = (attrs.integer(k) for k in ("zero_point", "qmin", "qmax", "to"))
    combine = "Sub" if attrs.integer("subtract") else "Add"
    zero_points = (attrs.integer("a_zero_point"), attrs.integer("b_zero_point"))
    if attrs.text("rounding") == "float_rne":
        terms = [
            lowering.op("Mul", [lowering.centred(name, zp), lowering.const(ratio, np.float32)], output)
            for name, zp, ratio in zip(node.input, zero_points, attrs.reals("scale_ratios"), strict=True)
        ]
        lowering.emit_float(lowering.op(combine, terms, output), zero_point, qmin, qmax, to, output)
        return
    multipliers, shifts, rounding = attrs.integers("multipliers"), attrs.integers("shifts"), attrs.text("rounding")
    scaled = []
    for index, (name, zp) in enumerate(zip(node.input, zero_points, strict=True)):
        wide = lowering.value(name, TensorProto.INT64)
        widened = lowering.op("Mul", [wide, lowering.const(1 << kernels.ADD_LEFT_SHIFT, np.int64)], output)
        shifted = lowering.op("Add", [widened, lowering.const(-zp << kernels.ADD_LEFT_SHIFT, np.int64)], output)
        scaled.append(
            _multiply_by_quantized_multiplier(
                lowering, shifted, np.array(multipliers[index]), np.array(shifts[index]), rounding, 0, output
            )
        )
    raw = lowering.op(combine, scaled, output)
    result = _multiply_by_quantized_multiplier(
        lowering, raw, np.array(multipliers[2]), np.array(shifts[2]), rounding, zero_point, output
    )
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
    """TFLite's pooling division (int64): `(t ± n/2) / n` by the sign of t, C truncation (= ONNX integer Div)."""
    op = lowering.op
    half = op("Div", [count, lowering.const(2, np.int64)], hint)
    positive = op("Greater", [total, lowering.const(0, np.int64)], hint)
    nudged = op("Where", [positive, op("Add", [total, half], hint), op("Sub", [total, half], hint)], hint)
    return op("Div", [nudged, count], hint)


def _average_pool(lowering: _Lowering, node: NodeProto) -> None:
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


def _mean(lowering: _Lowering, node: NodeProto) -> None:
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
    # TFLite's multiplier already divides by the element count (kernels.fold_count): one rounding.
    multiplier, shift = np.array(attrs.integer("multiplier")), np.array(attrs.integer("shift"))
    scaled = _multiply_by_quantized_multiplier(lowering, total, multiplier, shift, attrs.text("rounding"), 0, output)
    lowering.emit_int(scaled, zero_point, qmin, qmax, to, output)


# --- boundaries ------------------------------------------------------------------------------------------------------


def _quantize(lowering: _Lowering, node: NodeProto) -> None:
    op, const = lowering.op, lowering.const
    attrs = NodeAttributes(node)
    source, output = lowering.value(node.input[0], TensorProto.FLOAT), node.output[0]
    to, zero_point = attrs.integer("to"), attrs.integer("zero_point")
    scale = const(attrs.real("scale"), np.float32)
    if attrs.text("rounding") == "half_even":  # onnxruntime's own QuantizeLinear: float32 division, half to even
        op("QuantizeLinear", [source, scale, const(zero_point, _NUMPY[to])], output, output=output)
        lowering.bind(output, output, to)
        return
    scaled = op("Div", [source, scale], output)
    magnitude = op("Abs", [scaled], output)
    whole = op("Floor", [magnitude], output)
    half_up = op("GreaterOrEqual", [op("Sub", [magnitude, whole], output), const(0.5, np.float32)], output)
    rounded = op("Add", [whole, op("Cast", [half_up], output, to=TensorProto.FLOAT)], output)
    signed = op("Mul", [rounded, op("Sign", [scaled], output)], output)
    low, high = kernels.integer_range(_NUMPY[to])
    shifted = op("Add", [signed, const(zero_point, np.float32)], output)
    clipped = op("Clip", [shifted, const(low, np.float32), const(high, np.float32)], output)
    op("Cast", [clipped], output, output=output, to=to)
    lowering.bind(output, output, to)


def _dequantize(lowering: _Lowering, node: NodeProto) -> None:
    attrs = NodeAttributes(node)
    source, output = node.input[0], node.output[0]
    elem_type = lowering.elem_type(source)
    zero_point = lowering.const(attrs.integer("zero_point"), _NUMPY[elem_type])
    inputs = [lowering.value(source, elem_type), lowering.const(attrs.real("scale"), np.float32), zero_point]
    lowering.op("DequantizeLinear", inputs, output, output=output)
    lowering.bind(output, output, TensorProto.FLOAT)


_LOWERINGS: dict[str, Callable[[_Lowering, NodeProto], None]] = {
    "Quantize": _quantize,
    "Dequantize": _dequantize,
    "IntConv": _conv,
    "IntConvTranspose": _conv_transpose,
    "IntMatMul": _matmul,
    "IntMul": _mul,
    "IntAdd": _add,
    "Requantize": _requantize,
    "Lut": _lut,
    "IntAveragePool": _average_pool,
    "IntMean": _mean,
}
"""Device op → its lowering (each emits standard nodes and binds the op's output)."""
