"""Conv and ConvTranspose: `IntConv` / `IntConvTranspose` accumulators `Σ (x − zp_x)·w + b` in int32, then a
per-output-channel `Requantize` (with a fused Relu/Clip) to the QuantizeLinear that follows.

Lowering: a float convolution of the integers, exact while every partial sum stays below 2^24, else summed over
input-channel chunks in int64; x86's int16 pair saturation through `pairs.py`."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import EmulationError, NodeAttributes
from autoptq.deploy.lowering import FLOAT32_EXACT, Lowering
from autoptq.deploy.ops.pairs import accumulation_mode, reduce_pairs, risky_pairs, subtract_excess, use_excess

# --- building --------------------------------------------------------------------------------------------------------


def build_conv(builder: Builder, node: NodeProto) -> str | None:
    consumer = builder.quantize_consumer(node.output[0], fuse=True)
    x = builder.views.get(node.input[0])
    weights = builder.const_q.get(node.input[1])
    if consumer is None or x is None or weights is None:
        return "its input, weights or output are not quantized"
    if weights.values.ndim != 4:
        return "only 2-D convolutions are emulated"
    if not weights.per_tensor and weights.axis != 0:
        return "its weights are quantized along an axis other than the output channels"
    attrs = NodeAttributes(node)
    strides = attrs.integers("strides", [1, 1])
    dilations = attrs.integers("dilations", [1, 1])
    pads = builder.explicit_pads(attrs, node.input[0], weights.values.shape[2:], strides, dilations)
    if pads is None:
        return "auto_pad needs a static input shape"
    x_name, x_params = x
    out_channels = weights.values.shape[0]
    w_scale, w_zero = weights.along(out_channels)
    w = weights.values.astype(np.int64) - w_zero.reshape(-1, 1, 1, 1)
    bias = builder.bias(node, 2, x_params.scale, w_scale)
    acc = builder.fresh(f"{node.name}/acc")
    w_name = builder.weight_tensor(w, weights, f"{node.name}/w")
    builder.emit(
        "IntConv",
        [x_name, w_name, *bias],
        [acc],
        node.name,
        x_zero_point=x_params.zero_point,
        group=attrs.integer("group", 1),
        strides=strides,
        pads=pads,
        dilations=dilations,
        accumulation=accumulation_mode(builder, x_params, weights.values, weights.zero_point, node),
    )
    builder.declare(acc, TensorProto.INT32, like=consumer.target)
    builder.requantize_product(acc, consumer, x_params.scale, w_scale, node.name, (-1, 1, 1))
    return None


def build_conv_transpose(builder: Builder, node: NodeProto) -> str | None:
    """TFLite's int8 TRANSPOSE_CONV (reference_integer_ops::TransposeConv): int32 accumulation of
    `(x − zp)·w` scattered over the output, int32 bias at `s_in · s_w[o]`, per-output-channel requantization as
    CONV_2D. onnxruntime has no integer kernel for it and runs it in float between dequantize and quantize."""
    if builder.rounding == "float_rne":
        return "the runtime computes it in float between dequantize and quantize"
    consumer = builder.quantize_consumer(node.output[0], fuse=True)
    x = builder.views.get(node.input[0])
    weights = builder.const_q.get(node.input[1])
    if consumer is None or x is None or weights is None:
        return "its input, weights or output are not quantized"
    attrs = NodeAttributes(node)
    if weights.values.ndim != 4 or attrs.integer("group", 1) != 1:
        return "only ungrouped 2-D transposed convolutions are emulated"
    if not weights.per_tensor and weights.axis != 1:
        return "its weights are quantized along an axis other than the output channels (1)"
    if attrs.text("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in attrs.values:
        return "only explicit pads are emulated (no auto_pad, no output_shape)"
    x_name, x_params = x
    out_channels = weights.values.shape[1]
    w_scale, w_zero = weights.along(out_channels)
    w = weights.values.astype(np.int64) - w_zero.reshape(1, -1, 1, 1)
    bias = builder.bias(node, 2, x_params.scale, w_scale)
    acc = builder.fresh(f"{node.name}/acc")
    w_name = builder.weight_tensor(w, weights, f"{node.name}/w")
    builder.emit(
        "IntConvTranspose",
        [x_name, w_name, *bias],
        [acc],
        node.name,
        x_zero_point=x_params.zero_point,
        strides=attrs.integers("strides", [1, 1]),
        pads=attrs.integers("pads", [0, 0, 0, 0]),
        output_padding=attrs.integers("output_padding", [0, 0]),
        dilations=attrs.integers("dilations", [1, 1]),
    )
    builder.declare(acc, TensorProto.INT32, like=consumer.target)
    builder.requantize_product(acc, consumer, x_params.scale, w_scale, node.name, (-1, 1, 1))
    return None


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_conv(lowering: Lowering, node: NodeProto) -> None:
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
    risky = risky_pairs(pair_weights) if attrs.text("accumulation") == "int16_pairs" else np.zeros(0, np.int64)
    if risky.size and not use_excess(risky, pair_weights.shape[1]):
        every = np.arange(pair_weights.shape[1])
        shape = weights.shape
        clamped = _pair_reduction(lowering, output, centred, shape, pair_weights, every, zero_point, conv_attrs, False)
        correction = -zero_point * weights.reshape(weights.shape[0], -1).sum(axis=1) + (bias if bias.size else 0)
        total = lowering.op("Add", [clamped, lowering.const(correction.reshape(-1, 1, 1), np.float64)], output)
        lowering.bind(output, lowering.op("Cast", [total], output, to=TensorProto.INT64), TensorProto.INT64)
        return
    accumulator = _accumulator(lowering, node, centred, weights, bias, conv_attrs, "Conv")
    if not risky.size:
        lowering.bind(output, *accumulator)
        return
    selected = pair_weights[:, risky]
    excess = _pair_reduction(lowering, output, centred, weights.shape, selected, risky, zero_point, conv_attrs, True)
    subtract_excess(lowering, output, accumulator, excess)


def lower_conv_transpose(lowering: Lowering, node: NodeProto) -> None:
    """TFLite's TRANSPOSE_CONV accumulator: a float ConvTranspose of integers, exact under the same 2^24 bound as
    Conv (every output element, and every partial sum of it, is a sum of a subset of the products bounded there)."""
    attrs = NodeAttributes(node)
    weights = lowering.constants[node.input[1]].astype(np.int64)
    bias = lowering.constants[node.input[2]].astype(np.int64) if len(node.input) > 2 else np.zeros(0, np.int64)
    conv_attrs: dict[str, object] = {k: attrs.integers(k) for k in ("strides", "pads", "dilations", "output_padding")}
    conv_attrs.update(group=1, kernel_shape=list(weights.shape[2:]))
    centred = lowering.centred(node.input[0], attrs.integer("x_zero_point"))
    accumulator = _accumulator(lowering, node, centred, weights, bias, conv_attrs, "ConvTranspose")
    lowering.bind(node.output[0], *accumulator)


def _accumulator(
    lowering: Lowering,
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
    reach = lowering.input_reach(node.input[0], NodeAttributes(node).integer("x_zero_point"))
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


def _pair_reduction(
    lowering: Lowering,
    output: str,
    centred: str,
    shape: tuple[int, ...],
    pair_weights: np.ndarray,
    pair_indices: np.ndarray,
    zero_point: int,
    conv_attrs: dict[str, object],
    excess: bool,
) -> str:
    """`reduce_pairs` of the selected pairs (indices `pair_indices` along K/2) of raw u8 products, as float64
    (N, O, H', W').

    The raw u8 activations of those pairs come from a one-hot convolution (exact: each output copies one input, or
    0 in the padding, i.e. the zero point once re-offset); their pair sums from a batched MatMul."""
    op, const = lowering.op, lowering.const
    out_c, per_group, kh, kw = shape
    group, count = pair_weights.shape[0], len(pair_indices)
    onehot = np.zeros((group, count * 2, per_group, kh, kw), np.float32)
    for row, k in enumerate(np.stack([2 * pair_indices, 2 * pair_indices + 1], axis=1).reshape(-1)):
        tap, channel = divmod(int(k), per_group)
        if tap < kh * kw:  # the padding element of an odd K stays zero (its weight is zero too)
            onehot[:, row, channel, tap // kw, tap % kw] = 1
    patches = op("Conv", [centred, const(onehot.reshape(-1, per_group, kh, kw), np.float32)], output, **conv_attrs)
    raw = op("Add", [patches, const(zero_point, np.float32)], output)
    split = op("Reshape", [raw, const([0, group, count, 2, -1], np.int64)], output)
    pair_values = op("Transpose", [split], output, perm=[0, 1, 2, 4, 3])  # (N, G, P, L, 2)
    sums = op("MatMul", [pair_values, const(pair_weights, np.float32)], output)  # (N, G, P, L, O/G)
    reduced = op("Transpose", [reduce_pairs(lowering, sums, 2, output, excess, count)], output, perm=[0, 1, 3, 2])
    patch_shape = op("Shape", [patches], output)
    batch = op("Slice", [patch_shape, const([0], np.int64), const([1], np.int64)], output)
    spatial = op("Slice", [patch_shape, const([2], np.int64), const([4], np.int64)], output)
    return op("Reshape", [reduced, op("Concat", [batch, const([out_c], np.int64), spatial], output, axis=0)], output)
