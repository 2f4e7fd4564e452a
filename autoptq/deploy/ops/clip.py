"""Relu and Clip on their own (right after a Conv, ConvTranspose, Gemm, MatMul, Add, Sub or Mul they fuse into that
op's clamp instead, `Builder.quantize_consumer`): a standard Clip of the integers between the quantized bounds when
input and output share parameters, else a `Requantize` clamped to them. Nothing of their own to lower."""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from autoptq.deploy.building import Builder, float32_ratio

# --- building --------------------------------------------------------------------------------------------------------


def build_clip(builder: Builder, node: NodeProto) -> str | None:
    consumer = builder.quantize_consumer(node.output[0], fuse=False)
    x = builder.views.get(node.input[0])
    if consumer is None or x is None or builder.clip_range(node) is None:
        return "its input, output or bounds are not quantized constants"
    out = consumer.params
    low, high = builder.clamp(out, node)
    source, params = x
    if params == out:
        bounds = [builder.const(np.array(v, dtype=out.dtype), f"{node.name}/bound") for v in (low, high)]
        builder.nodes.append(helper.make_node("Clip", [source, *bounds], [consumer.target], name=node.name))
        builder.declare(consumer.target, out.elem_type, params=out)
    else:
        real = np.array([np.float64(params.scale) / np.float64(out.scale)])
        floats = float32_ratio(params.scale, out.scale).reshape(1)
        builder.requantize(
            source, consumer.target, real, floats, out, (low, high), node.name, input_zero_point=params.zero_point
        )
    builder.absorb(consumer.quantize)
    return None
