"""fp16: onnxruntime's float16 converter with the profile's block list and an overflow guard.

The guard keeps in fp32 every node whose weights or calibrated activations exceed the fp16 range (65504), and says
which and why; the converter would otherwise clamp or overflow to inf silently.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from autoptq.activations import absolute_maxima
from autoptq.calibration import Dataset
from autoptq.profiles import HardwareProfile
from autoptq.quantizers.common import AppliedRecipe, QuantizationError, QuantizationResult, quiet
from autoptq.recipe import Recipe

FP16_MAX = 65504.0
HEADROOM = 0.5
"""Activations above half the fp16 range are kept in fp32 too: calibration data rarely shows the true maximum."""


def quantize(
    model: ModelProto, recipe: Recipe, calibration: Dataset | None, profile: HardwareProfile
) -> QuantizationResult:
    """Convert to fp16 (float I/O kept), except blocked op types and nodes that would overflow."""
    del profile  # the planner put the device's fp16 block list into the recipe
    excluded = {name: "excluded by the recipe" for name in recipe.nodes_to_exclude}
    excluded.update(_weight_overflows(model))
    notes: list[str] = []
    if calibration is not None and len(calibration):
        excluded.update(_activation_overflows(model, calibration))
    else:
        notes.append("no data: the overflow guard checked weights only, not activations")
    try:
        with quiet():
            converted = convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=list(recipe.fp16_op_block_list) or None,
                node_block_list=sorted(excluded) or None,
                disable_shape_infer=False,
            )
    except Exception as exc:  # the converter raises plain exceptions on graphs it cannot handle
        raise QuantizationError(f"fp16 conversion failed: {exc}") from exc
    blocked = set(recipe.fp16_op_block_list)
    kept = [n.name for n in model.graph.node if n.op_type in blocked and n.name not in excluded]
    excluded.update({name: "op type has no fp16 kernel on the device" for name in kept})
    return QuantizationResult(
        model=converted,
        applied=AppliedRecipe(
            technique="fp16",
            recipe=recipe,
            quantized_nodes=len(model.graph.node) - len(excluded),
            excluded=dict(sorted(excluded.items())),
            notes=notes,
        ),
    )


def _weight_overflows(model: ModelProto) -> dict[str, str]:
    large = {}
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if np.issubdtype(values.dtype, np.floating) and values.size and float(np.max(np.abs(values))) > FP16_MAX:
            large[init.name] = float(np.max(np.abs(values)))
    found = {}
    for node in model.graph.node:
        for name in node.input:
            if name in large:
                found[node.name] = f"weight {name!r} reaches {large[name]:.4g} > fp16 max {FP16_MAX:g}"
    return found


def _activation_overflows(model: ModelProto, calibration: Dataset) -> dict[str, str]:
    maxima = absolute_maxima(model, calibration)
    limit = FP16_MAX * HEADROOM
    found = {}
    for node in model.graph.node:
        for name in node.output:
            if maxima.get(name, 0.0) > limit:
                found[node.name] = (
                    f"output {name!r} reaches {maxima[name]:.4g} on calibration data, above {limit:g} "
                    f"(half the fp16 max {FP16_MAX:g})"
                )
    return found
