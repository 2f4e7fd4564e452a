"""Add and Sub of two quantized operands (activations or per-tensor constants): `IntAdd`, TFLite's int8 ADD / SUB
(20-bit headroom, both operands rescaled to the common scale `2·max(s1, s2)`, then to the output), or under
onnxruntime's arithmetic the float formula `round(r_a·(a − zp_a) ± r_b·(b − zp_b)) + zp` with float32 ratios."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder, float32_ratio
from autoptq.deploy.device_graph import NodeAttributes, QParams
from autoptq.deploy.lowering import Lowering
from autoptq.deploy.ops.quantize import multiply_by_quantized_multiplier

# --- building --------------------------------------------------------------------------------------------------------


def build_add(builder: Builder, node: NodeProto) -> str | None:
    consumer = builder.quantize_consumer(node.output[0], fuse=True)
    a_params, b_params = builder.operand_params(node.input[0]), builder.operand_params(node.input[1])
    if consumer is None or a_params is None or b_params is None:
        return "its inputs or output are not quantized"
    operands = [(builder.operand_tensor(n), p) for n, p in zip(node.input[:2], (a_params, b_params), strict=True)]
    bounds = builder.clamp(consumer.params, consumer.activation)
    int_add(builder, operands, consumer.target, consumer.params, bounds, node.name, node.op_type == "Sub")
    builder.absorb(consumer.quantize, consumer.activation)
    return None


def int_add(
    builder: Builder,
    operands: list[tuple[str, QParams]],
    target: str,
    out: QParams,
    bounds: tuple[int, int],
    hint: str,
    subtract: bool = False,
) -> None:
    """Emit TFLite's int8 ADD / SUB of two integer tensors into `target` (declared with `out`)."""
    (a_tensor, a_params), (b_tensor, b_params) = operands
    twice_max = 2 * max(np.float64(a_params.scale), np.float64(b_params.scale))
    reals = [
        a_params.scale / twice_max,
        b_params.scale / twice_max,
        twice_max / ((1 << kernels.ADD_LEFT_SHIFT) * np.float64(out.scale)),
    ]
    encoded = [kernels.quantize_multiplier(float(r), builder.rounding) for r in reals]
    low, high = bounds
    builder.emit(
        "IntAdd",
        [a_tensor, b_tensor],
        [target],
        hint,
        rounding=builder.rounding,
        a_zero_point=a_params.zero_point,
        b_zero_point=b_params.zero_point,
        zero_point=out.zero_point,
        qmin=low,
        qmax=high,
        to=out.elem_type,
        subtract=int(subtract),
        multipliers=[m for m, _ in encoded],
        shifts=[e for _, e in encoded],
        scale_ratios=[float(float32_ratio(p.scale, out.scale)) for p in (a_params, b_params)],
    )
    builder.declare(target, out.elem_type, params=out)


# --- lowering --------------------------------------------------------------------------------------------------------


def lower_add(lowering: Lowering, node: NodeProto) -> None:
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
            multiply_by_quantized_multiplier(
                lowering, shifted, np.array(multipliers[index]), np.array(shifts[index]), rounding, 0, output
            )
        )
    raw = lowering.op(combine, scaled, output)
    result = multiply_by_quantized_multiplier(
        lowering, raw, np.array(multipliers[2]), np.array(shifts[2]), rounding, zero_point, output
    )
    lowering.emit_int(result, 0, qmin, qmax, to, output)
