"""HardSigmoid, and Div by one positive constant: affine maps with no int8 builtin of their own, built from the ops a
TFLite converter writes for them (`IntMul` + `Requantize`, `IntAdd`, a standard Min), which `mul.py` and `add.py`
lower; nothing of their own to lower."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper

from autoptq.deploy import kernels
from autoptq.deploy.building import Builder, float32_ratio
from autoptq.deploy.device_graph import NodeAttributes, QParams
from autoptq.deploy.ops.add import int_add

# --- building --------------------------------------------------------------------------------------------------------


def build_affine(builder: Builder, node: NodeProto) -> str | None:
    """HardSigmoid, or Div by one positive constant, as the int8 ops a TFLite converter writes (there is no
    HARD_SIGMOID builtin and no int8 DIV): MUL by a constant 127 at scale v/127 (the input rescaled by v), ADD
    beta with RELU, MINIMUM 1 when the output range goes past 1. Under other arithmetic the runtime computes the
    float op between dequantize and quantize, which is what the float path emulates."""
    if builder.rounding != "tflite_double":
        return "the runtime computes it in float between dequantize and quantize"
    consumer = builder.quantize_consumer(node.output[0], fuse=False)
    x = builder.views.get(node.input[0])
    if consumer is None or x is None:
        return "its input or output is not quantized"
    if node.op_type == "Div":
        divisor = _real_constant(builder, node.input[1])
        if divisor is None or divisor.size != 1 or float(divisor.reshape(-1)[0]) <= 0:
            return "only a division by one positive constant has an int8 form (MUL)"
        factor, offset = 1.0 / float(divisor.reshape(-1)[0]), 0.0
    else:
        attrs = NodeAttributes(node)
        factor, offset = attrs.real("alpha", 0.2), attrs.real("beta", 0.5)
        if factor <= 0 or offset <= 0:
            return "only HardSigmoid with positive alpha and beta has an int8 form"
    (source, params), out = x, consumer.params
    scaled = QParams(float(np.float32(params.scale * factor)), params.zero_point, params.dtype)
    product = consumer.target if node.op_type == "Div" else builder.fresh(f"{node.name}/scaled")
    _rescale_by_constant(builder, source, params, factor, product, out if node.op_type == "Div" else scaled, node)
    if node.op_type == "HardSigmoid":
        beta = _int8_constant(builder, 127, offset / 127, f"{node.name}/beta")
        top = out.scale * (out.bounds[1] - out.zero_point)
        one = out.zero_point + int(kernels.round_half_away(np.asarray(1.0 / out.scale)))
        summed = consumer.target if top <= 1.0 + out.scale / 2 else builder.fresh(f"{node.name}/sum")
        bounds = (max(out.bounds[0], out.zero_point), out.bounds[1])  # the fused RELU
        int_add(builder, [(product, scaled), beta], summed, out, bounds, node.name)
        builder.declared[summed] = (out.elem_type, builder.shapes.get(node.output[0]))
        if summed != consumer.target:
            limit = builder.const(np.array([one], out.dtype), f"{node.name}/one")
            builder.result.params[limit] = out
            builder.nodes.append(
                helper.make_node("Min", [summed, limit], [consumer.target], name=builder.fresh(f"{node.name}/min"))
            )
            builder.declare(consumer.target, out.elem_type, params=out)
    builder.absorb(consumer.quantize)
    return None


def _real_constant(builder: Builder, name: str) -> np.ndarray | None:
    """The real values of a constant input, float or quantized (as the float path materializes them)."""
    if name in builder.const_q:
        constant = builder.const_q[name]
        if not constant.per_tensor:
            return None
        centred = constant.values.astype(np.int64) - constant.zero_point.reshape(-1)[0]
        return centred.astype(np.float32) * constant.scale.reshape(-1)[0].astype(np.float32)
    return builder.constants.get(name)


def _int8_constant(builder: Builder, value: int, scale: float, hint: str) -> tuple[str, QParams]:
    """A one-element int8 constant operand and its parameters (zero point 0)."""
    params = QParams(float(np.float32(scale)), 0, np.dtype(np.int8))
    name = builder.const(np.array([value], np.int8), hint)
    builder.result.params[name] = params
    return name, params


def _rescale_by_constant(
    builder: Builder, source: str, params: QParams, factor: float, target: str, out: QParams, node: NodeProto
) -> None:
    """`source` times `factor` into `target`, as MUL by the constant 127 at scale factor/127."""
    constant, c_params = _int8_constant(builder, 127, factor / 127, f"{node.name}/factor")
    acc = builder.fresh(f"{node.name}/acc")
    builder.emit("IntMul", [source, constant], [acc], node.name, a_zero_point=params.zero_point, b_zero_point=0)
    builder.declared[acc] = (TensorProto.INT32, builder.shapes.get(node.output[0]))
    reals = np.array([np.float64(params.scale) * np.float64(c_params.scale) / np.float64(out.scale)])
    floats = float32_ratio(np.float32(params.scale) * np.float32(c_params.scale), out.scale).reshape(1)
    builder.requantize(acc, target, reals, floats, out, out.bounds, node.name)
    builder.declared[target] = (out.elem_type, builder.shapes.get(node.output[0]))
