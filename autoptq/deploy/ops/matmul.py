"""Gemm and MatMul: `IntMatMul` accumulators `(a − zp_a) @ (b − zp_b) + bias` in int32, with constant weights
(per-column requantization) or two activations (per-tensor), then a `Requantize` (with a fused Relu/Clip) to the
QuantizeLinear that follows.

Lowering: a float32 MatMul of the integers while every partial sum stays below 2^24, else float64 (exact below
2^53); x86's int16 pair saturation through `pairs.py`."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import NodeAttributes
from autoptq.deploy.lowering import FLOAT32_EXACT, Lowering
from autoptq.deploy.ops.pairs import accumulation_mode, reduce_pairs, risky_pairs, subtract_excess, use_excess

# --- building --------------------------------------------------------------------------------------------------------


def build_gemm(builder: Builder, node: NodeProto) -> str | None:
    attrs = NodeAttributes(node)
    if attrs.integer("transA", 0) or attrs.real("alpha", 1.0) != 1.0 or attrs.real("beta", 1.0) != 1.0:
        return "Gemm with transA, alpha or beta is not emulated"
    return _build_matmul_like(builder, node, transpose=bool(attrs.integer("transB", 0)), bias_index=2)


def build_matmul(builder: Builder, node: NodeProto) -> str | None:
    return _build_matmul_like(builder, node, transpose=False, bias_index=None)


def _build_matmul_like(builder: Builder, node: NodeProto, transpose: bool, bias_index: int | None) -> str | None:
    consumer = builder.quantize_consumer(node.output[0], fuse=True)
    a = builder.views.get(node.input[0])
    weights = builder.const_q.get(node.input[1])
    b = builder.views.get(node.input[1])
    if consumer is None or a is None or (weights is None and b is None):
        return "its inputs or output are not quantized"
    a_name, a_params = a
    acc = builder.fresh(f"{node.name}/acc")
    if weights is not None:
        n_axis = 0 if transpose else 1
        if weights.values.ndim != 2:
            return "only 2-D constant weights are emulated"
        if not weights.per_tensor and weights.axis != n_axis:
            return "its weights are quantized along the reduction axis"
        w_scale, w_zero = weights.along(weights.values.shape[n_axis])
        w_raw = weights.values.T if transpose else weights.values
        w = w_raw.astype(np.int64) - w_zero.reshape(1, -1)
        bias = builder.bias(node, bias_index, a_params.scale, w_scale)
        w_name = builder.weight_tensor(w, weights, f"{node.name}/w")
        builder.emit(
            "IntMatMul",
            [a_name, w_name, *bias],
            [acc],
            node.name,
            a_zero_point=a_params.zero_point,
            b_zero_point=0,
            accumulation=accumulation_mode(builder, a_params, w_raw, weights.zero_point, node),
        )
        channel_shape: tuple[int, ...] = (-1,)
    else:
        assert b is not None
        if transpose or (bias_index is not None and len(node.input) > bias_index and node.input[bias_index]):
            return "a Gemm of two activations is not emulated"
        b_name, b_params = b
        w_scale = np.array([b_params.scale], np.float32)
        builder.emit(
            "IntMatMul",
            [a_name, b_name],
            [acc],
            node.name,
            a_zero_point=a_params.zero_point,
            b_zero_point=b_params.zero_point,
            accumulation="int32",
        )
        channel_shape = ()
    builder.declare(acc, TensorProto.INT32, like=consumer.target)
    builder.requantize_product(acc, consumer, a_params.scale, w_scale, node.name, channel_shape)
    return None


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_matmul(lowering: Lowering, node: NodeProto) -> None:
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
    risky = risky_pairs(pair_weights) if attrs.text("accumulation") == "int16_pairs" else np.zeros(0, np.int64)
    if risky.size and not use_excess(risky, pair_weights.shape[0]):
        clamped = _pair_reduction(lowering, node, pair_weights, np.arange(pair_weights.shape[0]), excess=False)
        correction = -a_zero_point * weights.sum(axis=0) + (bias if bias.size else 0)
        total = lowering.op("Add", [clamped, lowering.const(correction, np.float64)], output)
        lowering.bind(output, lowering.op("Cast", [total], output, to=TensorProto.INT64), TensorProto.INT64)
        return
    reach = lowering.input_reach(a, a_zero_point)
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
    excess = _pair_reduction(lowering, node, pair_weights, risky, excess=True)
    subtract_excess(lowering, output, (result, elem_type), excess)


def _pair_reduction(
    lowering: Lowering, node: NodeProto, pair_weights: np.ndarray, pair_indices: np.ndarray, excess: bool
) -> str:
    """`reduce_pairs` of the selected pairs (indices `pair_indices`) along K (the reduction axis) of raw u8
    products, as float64 shaped like the output."""
    op, const = lowering.op, lowering.const
    a, output = node.input[0], node.output[0]
    k, n = lowering.constants[node.input[1]].shape
    rows = op("Reshape", [lowering.value(a, TensorProto.FLOAT), const([-1, k], np.int64)], output)
    if k % 2:
        rows = op("Pad", [rows, const([0, 0, 0, 1], np.int64)], output)
    columns = np.stack([2 * pair_indices, 2 * pair_indices + 1], axis=1).reshape(-1)
    selected = op("Gather", [rows, const(columns, np.int64)], output, axis=1)  # raw u8 values of the pairs
    split = op("Reshape", [selected, const([-1, len(pair_indices), 2], np.int64)], output)
    pair_values = op("Transpose", [split], output, perm=[1, 0, 2])  # (P, R, 2)
    sums = op("MatMul", [pair_values, const(pair_weights[pair_indices], np.float32)], output)  # (P, R, N)
    prefix = op("Slice", [op("Shape", [a], output), const([0], np.int64), const([-1], np.int64)], output)
    shape = op("Concat", [prefix, const([n], np.int64)], output, axis=0)
    reduced = reduce_pairs(lowering, sums, 0, output, excess, len(pair_indices))
    return op("Reshape", [reduced, shape], output)
