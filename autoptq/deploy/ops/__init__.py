"""The integer emulator's op handlers, one module per op family, each with how the op is built from the QDQ model
(on a `Builder`) and how its device op is lowered to standard ONNX (on a `Lowering`), side by side. This registry
maps op types to them; `autoptq.deploy.intgraph` dispatches through it."""

from __future__ import annotations

from collections.abc import Callable

from onnx import NodeProto

from autoptq.deploy.building import Builder
from autoptq.deploy.lowering import Lowering
from autoptq.deploy.ops import add, affine, clip, conv, lookup, matmul, mean, movement, mul, pool, quantize

BoundaryBuilder = Callable[[Builder, NodeProto], None]
"""Records where integers begin or end (raises EmulationError when the quantization cannot be emulated)."""
KernelBuilder = Callable[[Builder, NodeProto], str | None]
"""Emits the op's integer kernel and returns None, or returns why the op stays in float (having emitted nothing)."""
Lowerer = Callable[[Lowering, NodeProto], None]
"""Emits the standard nodes of a device op and binds its output."""

BOUNDARIES: dict[str, BoundaryBuilder] = {
    "DequantizeLinear": quantize.build_dequantize_linear,
    "QuantizeLinear": quantize.build_quantize_linear,
}
"""Standard QDQ op → its builder. Boundaries are not kernels: they never run in float nor count as exact ops."""

KERNELS: dict[str, KernelBuilder] = {
    "Conv": conv.build_conv,
    "ConvTranspose": conv.build_conv_transpose,
    "Gemm": matmul.build_gemm,
    "MatMul": matmul.build_matmul,
    "Add": add.build_add,
    "Sub": add.build_add,
    "Mul": mul.build_mul,
    "HardSigmoid": affine.build_affine,
    "Div": affine.build_affine,
    "Relu": clip.build_clip,
    "Clip": clip.build_clip,
    "Sigmoid": lookup.build_lookup,
    "Tanh": lookup.build_lookup,
    "GlobalAveragePool": pool.build_global_average_pool,
    "AveragePool": pool.build_average_pool,
    "ReduceMean": mean.build_reduce_mean,
    **dict.fromkeys(movement.DATA_INPUTS, movement.build_movement),
}
"""Standard op type → the builder emitting its integer kernel (any other op runs in float)."""

LOWERINGS: dict[str, Lowerer] = {
    "Quantize": quantize.lower_quantize,
    "Dequantize": quantize.lower_dequantize,
    "Requantize": quantize.lower_requantize,
    "IntConv": conv.lower_conv,
    "IntConvTranspose": conv.lower_conv_transpose,
    "IntMatMul": matmul.lower_matmul,
    "IntAdd": add.lower_add,
    "IntMul": mul.lower_mul,
    "Lut": lookup.lower_lut,
    "IntAveragePool": pool.lower_average_pool,
    "IntMean": mean.lower_mean,
}
"""Device op → its lowering (standard ops of the device graph are copied as they are)."""
