"""QDQ model → device integer graph (`build_device_graph`): the quantized model rewritten as the integer kernels a
TFLite-style device runs; device integer graph → standard ONNX (`lower`).

Every DequantizeLinear → op → QuantizeLinear group the device computes in integers becomes nodes of the custom
domain `autoptq.device`, each carrying its integer parameters (zero points, per-channel int32 multipliers and shifts,
clamp bounds, rounding and accumulation modes) as attributes and initializers:

| device op | computes |
|---|---|
| `Quantize(x)` | real → integer at a float boundary (`rounding`: half_away as TFLite, half_even as onnxruntime) |
| `Dequantize(q)` | integer → real, as DequantizeLinear |
| `IntConv(x, w, b)` | 2-D convolution accumulator `Σ (x − zp_x)·w + b` (`accumulation`: int32 or int16_pairs) |
| `IntConvTranspose(x, w, b)` | 2-D transposed convolution accumulator (TFLite TRANSPOSE_CONV), int32 |
| `IntMatMul(a, b, bias)` | `(a − zp_a) @ (b − zp_b) + bias` (Gemm, MatMul with constant or activation weights) |
| `IntMul(a, b)` | `(a − zp_a)·(b − zp_b)` |
| `Requantize(acc, M, e)` | `clamp(requant(acc − input_zp) + zp, qmin, qmax)` per channel; also rescales tensors |
| `IntAdd(a, b)` | TFLite Add/Sub (20-bit headroom, common scale `2·max(s1, s2)`), or the onnxruntime float formula |
| `Lut(q, table)` | 256-entry activation table (Sigmoid, Tanh) |
| `IntAveragePool(q)` | TFLite integer AveragePool (raw sum, rounding division) |
| `IntMean(q)` | TFLite Mean / onnxruntime QLinearGlobalAveragePool (GlobalAveragePool, spatial ReduceMean) |

Ops that keep scale (MaxPool, Reshape, Concat, Slice, Pad, ...) stay standard ONNX ops running on the integers,
after a `Requantize` of any input whose scale or zero point differs from the output's. Relu/Clip fuse into the
producer's clamp. Anything else between DequantizeLinear and QuantizeLinear runs as dequantize → float op → quantize
(reported as approximate); ops the quantizer left in float stay float.

`lower` turns this graph into standard ONNX ops that onnxruntime runs bit for bit (the exact tier; why they are
exact: `autoptq.deploy.lowering`); the tests run it as is with `onnx.reference.ReferenceEvaluator` and the numpy
kernels of `autoptq.deploy.kernels` (the golden reference). uint8 tensors are treated as the int8 tensors a TFLite
converter writes (values and zero point − 128): the arithmetic depends only on `q − zp` except AveragePool's raw
sum, which uses the int8 values.

How each op is built and how its device op is lowered are side by side in its module of `autoptq.deploy.ops`, on
the shared machinery of `autoptq.deploy.building` (`Builder`) and `autoptq.deploy.lowering` (`Lowering`); this
module runs the two passes, dispatching through the registry of `autoptq.deploy.ops`, and is the public face of the
device graph (its vocabulary is defined in `autoptq.deploy.device_graph`).
"""

from __future__ import annotations

from onnx import ModelProto, NodeProto, TensorProto

from autoptq.deploy.building import Builder
from autoptq.deploy.device_graph import DEVICE_DOMAIN, DeviceGraph, EmulationError, NodeAttributes, NodeFinding, QParams
from autoptq.deploy.lowering import MIN_OPSET, Lowering
from autoptq.deploy.ops import BOUNDARIES, KERNELS, LOWERINGS
from autoptq.deploy.ops.movement import MOVEMENT_OPS
from autoptq.devices.profiles import HardwareProfile

__all__ = [
    "DEVICE_DOMAIN",
    "MOVEMENT_OPS",
    "DeviceGraph",
    "EmulationError",
    "NodeAttributes",
    "NodeFinding",
    "QParams",
    "build_device_graph",
    "lower",
]

_QUIET_FLOAT_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "Range", "Cast", *MOVEMENT_OPS})
"""Float-path ops not worth a finding: shape arithmetic and data movement are exact in float too."""


def build_device_graph(model: ModelProto, profile: HardwareProfile) -> DeviceGraph:
    """Rewrite a QDQ model into the integer arithmetic of `profile` (see the module docstring).

    Raises EmulationError for what cannot be emulated at all (16-bit activations, per-channel activation
    quantization, a profile without integer requantization)."""
    rounding = profile.quantization.rounding
    if rounding == "fp16_storage":
        raise EmulationError(f"profile {profile.name!r} computes in fp16: use the fp16 emulator, not the integer one")
    operator_format = sorted({n.op_type for n in model.graph.node if n.op_type.startswith("QLinear")})
    if operator_format:
        # QOperator models name onnxruntime's own integer kernels: the fast tier runs exactly those.
        raise EmulationError(
            f"exact tier: the model is in onnxruntime's QOperator format ({', '.join(operator_format)}); the exact "
            "tier rewrites QDQ models"
        )
    pairs = profile.quantization.int8_dot_product == "int16_pair_saturating"
    builder = Builder(model, rounding, pairs)
    for node in builder.source.graph.node:  # in order: a handler may absorb the nodes that follow it
        if id(node) not in builder.absorbed and node.op_type != "Constant":
            _build_node(builder, node)
    for value in builder.source.graph.output:  # a float output still an integer view or a constant is materialized
        builder.float_input(value.name)
    return builder.finish()


def _build_node(builder: Builder, node: NodeProto) -> None:
    standard = node.domain in ("", "ai.onnx")
    boundary = BOUNDARIES.get(node.op_type) if standard else None
    if boundary is not None:
        boundary(builder, node)
        return
    kernel = KERNELS.get(node.op_type) if standard else None
    reason = kernel(builder, node) if kernel is not None else "no integer kernel is emulated for this op"
    if reason is None:
        builder.result.exact_ops.add(node.op_type)
    else:
        _build_in_float(builder, node, reason)


def _build_in_float(builder: Builder, node: NodeProto, reason: str) -> None:
    """`node` as is on float inputs (its integer ones dequantized): an `approximate` finding between dequantize and
    quantize, else a `float_op` one unless the op is quiet."""
    quantized_in = any(name in builder.views for name in node.input)
    quantized_out = any(u.op_type == "QuantizeLinear" for o in node.output for u in builder.consumers.get(o, []))
    copy = NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [builder.float_input(name) for name in node.input]
    builder.nodes.append(copy)
    for out in node.output:
        if out:
            builder.float_ready.add(out)
            builder.declare(out, builder.types.get(out, TensorProto.UNDEFINED))
    if quantized_in and quantized_out:
        detail = (
            f"{node.op_type} runs in float32 between dequantize and quantize ({reason}); typically within "
            "1 LSB of the device's integer kernel"
        )
        builder.finding(node, "approximate", detail)
    elif node.op_type not in _QUIET_FLOAT_OPS:
        builder.finding(node, "float_op", f"{node.op_type} left in float32 by the quantizer; emulated in float32")


def lower(device: ModelProto) -> ModelProto:
    """Standard-ONNX model computing the same integers as `device` (inputs and outputs unchanged)."""
    opset = next((o.version for o in device.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise EmulationError(f"exact tier: the model's opset {opset} is below {MIN_OPSET}; upgrade it first")
    lowering = Lowering(device)
    for node in device.graph.node:
        if node.domain == DEVICE_DOMAIN:
            LOWERINGS[node.op_type](lowering, node)
        else:
            lowering.copy(node)
    return lowering.finish()
