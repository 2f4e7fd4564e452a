"""x86's int16 pair saturation (u8 × s8 dot products without VNNI), shared by the Conv and MatMul families: which
kernels accumulate in pairs and what can saturate (building), and the exact reductions of clamped pair sums their
lowerings are made of. Not an op of its own: `conv.py` and `matmul.py` call it."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import NodeAttributes, NodeFinding, QParams
from autoptq.deploy.kernels import Accumulation
from autoptq.deploy.lowering import Lowering

FLOAT32_EXACT_PAIRS = (1 << 24) // (1 << 16)
"""Up to this many pair terms, each below 2^16 in magnitude (a clamped sum, or the excess of a u8 x s8 pair sum over
int16), their total stays below 2^24 and float32 adds them exactly in any order."""

# --- building --------------------------------------------------------------------------------------------------------


def accumulation_mode(
    builder: Builder, x: QParams, weights: np.ndarray, zero_point: np.ndarray, node: NodeProto
) -> Accumulation:
    """int16 pair saturation (x86 without VNNI) hits u8 × s8 GEMM kernels with symmetric weights; depthwise
    kernels (one input channel per group) and s8 × s8 kernels accumulate in int32 directly. `weights` are
    convolution (O, C/g, kh, kw) or MatMul (K, N) integers; pairs that can saturate are reported."""
    group = NodeAttributes(node).integer("group", 1)
    depthwise = weights.ndim == 4 and group > 1 and weights.shape[1] == 1
    if not builder.pairs or x.dtype != np.uint8 or weights.dtype != np.int8 or np.any(zero_point) or depthwise:
        return "int32"
    builder.result.saturating_nodes.append(node.name)
    pairs = kernels.conv_pair_weights(weights, group) if weights.ndim == 4 else kernels.matmul_pair_weights(weights)
    risky = int(kernels.saturable_pairs(pairs).sum())
    if risky:
        detail = (
            f"{risky} (weight pair, output) combinations can saturate int16 in u8 × s8 pair sums (255 · "
            "(|w_a| + |w_b|) > 32767); 7-bit weights (reduce_range) avoid it"
        )
        builder.result.findings.append(NodeFinding(node=node.name, kind="saturation_risk", detail=detail, count=risky))
    return "int16_pairs"


# --- lowering --------------------------------------------------------------------------------------------------------


def risky_pairs(pair_weights: np.ndarray) -> np.ndarray:
    """Indices p along K/2 of the pairs that can saturate int16 for some output (see kernels.saturable_pairs)."""
    risky = kernels.saturable_pairs(pair_weights)  # (..., K/2, O)
    return np.flatnonzero(risky.reshape(-1, *risky.shape[-2:]).any(axis=(0, 2)))


def reduce_pairs(lowering: Lowering, sums: str, axis: int, hint: str, excess: bool, count: int) -> str:
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


def use_excess(risky: np.ndarray, pair_count: int) -> bool:
    """Whether to subtract the excess of the risky pairs from an int32 sum (cheap when few pairs can saturate)
    rather than sum every clamped pair directly (cheaper when most can)."""
    return 2 * len(risky) <= pair_count


def subtract_excess(lowering: Lowering, output: str, accumulator: tuple[str, int], excess: str) -> None:
    """Bind `output` to the int32-accumulated sum minus the saturation excess (int64)."""
    exact = lowering.op("Cast", [accumulator[0]], output, to=TensorProto.DOUBLE)
    saturated = lowering.op("Sub", [exact, excess], output)
    lowering.bind(output, lowering.op("Cast", [saturated], output, to=TensorProto.INT64), TensorProto.INT64)
