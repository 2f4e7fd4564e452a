"""Full integer quantization: int8 weights and activations between Q/DQ pairs (static QDQ, `techniques.qdq`), with
the device's fixed output parameters and the op set it runs at int8."""

from __future__ import annotations

from typing import ClassVar

from autoptq.devices.profiles import FixedOutputParams, HardwareProfile
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.techniques.base import SpacePoint
from autoptq.techniques.recipe import QuantDtype, Recipe
from autoptq.techniques.space import device_int8_ops, full_int8_space
from autoptq.techniques.static import StaticQdq


def static_label(recipe: Recipe) -> str:
    """How the search and the report name a full-int8 point of the recipe space."""
    granularity = "per-channel" if recipe.per_channel else "per-tensor"
    ops = "+".join(recipe.op_types_to_quantize) if recipe.op_types_to_quantize else "all ops"
    spelled = (" QOperator" if recipe.quant_format == "qoperator" else "") + (
        " SmoothQuant" if recipe.smooth_quant else ""
    )
    return f"{recipe.activation_dtype} activations {granularity} {ops}{spelled}"


class FullInt8(StaticQdq):
    """Full integer: int8 weights and activations, every op the device runs in int8 between Q/DQ pairs."""

    name: ClassVar[str] = "full_int8"
    host_timed: ClassVar[bool] = True

    def activation_dtype(self, base: Recipe, allowed: list[QuantDtype]) -> QuantDtype:
        if base.activation_dtype in allowed:
            return base.activation_dtype
        return next((d for d in allowed if d in ("int8", "uint8")), base.activation_dtype)

    def device_fields(
        self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, present_ops: set[str]
    ) -> dict[str, object]:
        fields: dict[str, object] = {
            "fixed_output_params": {
                op: FixedOutputParams(scale=p.scale, zero_point=p.zero_point)
                for op, p in profile.quantization.fixed_output_params.items()
                if op in present_ops
            },
            # A float processor runs the join at the output: the CPU itself, or the host an accelerator hands its
            # tail to. A host-less TFLite file returns the parts as int8 outputs, which the application joins.
            "float_output_joins": not profile.integer_only or profile.host is not None or profile.format == "tflite",
        }
        if base.op_types_to_quantize:
            return fields
        if profile.integer_only:
            # An integer-only device quantizes everything: a float op would go to the host. Named explicitly, since
            # onnxruntime's default is the op types it has special handlers for, which leaves Sub, ReduceMean,
            # LSTM... in float.
            fields["op_types_to_quantize"] = sorted(present_ops)
        else:
            # Q/DQ only around ops the device runs as int8 kernels: elsewhere they are pure overhead.
            int8_ops = device_int8_ops(profile, graph)
            if int8_ops and set(int8_ops) != present_ops:
                fields["op_types_to_quantize"] = int8_ops
        return fields

    def fallback_recipe(self, plan_recipe: Recipe, profile: HardwareProfile, data: Dataset | None) -> Recipe | None:
        if data is None:
            return None
        return Recipe(
            activation_dtype="uint8", reduce_range=profile.quantization.int8_dot_product != "int32_accumulate"
        )

    def onnxruntime_default(self, profile: HardwareProfile, data: Dataset | None) -> SpacePoint | None:
        # `quantize_static`'s defaults: QDQ, int8 activations and weights, per tensor, min-max.
        del profile
        if data is None:
            return None
        return "onnxruntime quantize_static defaults", Recipe(activation_dtype="int8", per_channel=False)

    def choice_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        if data is None:
            return []
        base = Recipe(calibration_method=plan_recipe.calibration_method)
        # SmoothQuant is left to the accuracy loop: it calibrates twice (the smoother, then the smoothed graph), and
        # on MiniLM static MatMul + SmoothQuant kept cosine 0.953 where weight-only keeps 0.99 at the same speed.
        return [
            (f"full int8 {static_label(r)}", r) for r in full_int8_space(profile, graph, base) if not r.smooth_quant
        ]

    def search_space(
        self, plan_recipe: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None
    ) -> list[SpacePoint]:
        if data is None:
            return []
        base = plan_recipe.model_copy(update={"op_types_to_quantize": []})
        return [(f"full int8 {static_label(r)}", r) for r in full_int8_space(profile, graph, base)]

    def known_slow(self, recipe: Recipe, profile: HardwareProfile, int8_ops: set[str]) -> int:
        # Activations other than the device's preferred (first listed) dtype, and Q/DQ pairs around ops the device
        # has no int8 kernel for: measured on the corpus on x86-vnni, int8 activations 1.5x float where uint8 is
        # 0.46x (ddddocr-det).
        preferred = profile.quantization.activations.dtype[0]
        beyond = bool(int8_ops) and not set(recipe.op_types_to_quantize or ["*"]) <= int8_ops
        return int(recipe.activation_dtype != preferred) + int(beyond and not profile.integer_only)

    def kernel_recipe(self, op_type: str, samples: int) -> Recipe:
        del op_type  # a one-node model: every op is the kernel
        return Recipe(activation_dtype="uint8", calibration_samples=samples)
