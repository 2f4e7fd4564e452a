"""What the static (calibrated QDQ) techniques share: full int8 and 16x8 differ only in their activation type, which
ops they name, and the device's fixed output parameters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, get_args

from onnx import ModelProto, TensorProto

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.devices.profiles import HardwareProfile, QuantizationRules
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph
from autoptq.model.ops import QDQ_OPS
from autoptq.techniques.base import (
    RecipeStep,
    SpacePoint,
    Technique,
    border_elements,
    per_channel_step,
    precision_borders,
)
from autoptq.techniques.common import QuantizationResult
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import CalibrationMethod, QuantDtype, Recipe
from autoptq.techniques.space import quant_formats

WIDE_TYPES = (TensorProto.INT16, TensorProto.UINT16)


def _calibration_step(method: str) -> RecipeStep:
    def step(recipe: Recipe) -> Recipe:
        return recipe.model_copy(update={"calibration_method": method})

    return step


def bias_correction_step(recipe: Recipe) -> Recipe | None:
    """The fallback step to bias correction (None: the recipe already has it). It moves float bias values, not
    kernels or ranges: a range step, as cheap as two more quantizations of the same recipe."""
    return None if recipe.bias_correction else recipe.model_copy(update={"bias_correction": True})


class StaticQdq(Technique):
    """Static QDQ: weights and activations quantized with ranges calibrated on representative data."""

    calibrated: ClassVar[bool] = True
    recipe_keys: ClassVar[tuple[str, ...]] = (
        "activation_dtype", "weight_dtype", "activation_symmetric", "weight_symmetric", "per_channel",
        "calibration_method", "calibration_samples", "op_types_to_quantize", "nodes_to_exclude", "reduce_range",
        "fixed_output_params", "io_dtype", "float_output_joins", "bias_correction",
    )  # fmt: skip
    range_steps: ClassVar[frozenset[str]] = frozenset(
        {"bias_correction", "percentile_calibration", "entropy_calibration"}
    )
    wide_activations: ClassVar[bool] = False
    """16-bit activations (what tells its models apart)."""

    def activation_dtype(self, base: Recipe, allowed: list[QuantDtype]) -> QuantDtype:
        """The activation type on a device that allows `allowed`."""
        raise NotImplementedError

    def device_fields(
        self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, present_ops: set[str]
    ) -> dict[str, object]:
        """Fields only this technique fills in from the device (none by default)."""
        del base, profile, graph, present_ops
        return {}

    def io_dtype(self, activation_dtype: QuantDtype, rules: QuantizationRules) -> QuantDtype:
        """The type at an integer-only device's graph I/O."""
        del activation_dtype
        return rules.io_dtype

    def conform(self, base: Recipe, profile: HardwareProfile, graph: ModelGraph, data: Dataset | None) -> Recipe:
        rules = profile.quantization
        present_ops = {n.op_type for n in graph.compute_nodes()}
        wanted = self.activation_dtype(base, rules.activations.dtype)
        update: dict[str, object] = {
            "activation_dtype": wanted,
            "weight_dtype": next((d for d in rules.weights.dtype if d in ("int8", "uint8")), "int8"),
            "weight_symmetric": rules.weights.symmetric or base.weight_symmetric,
            "activation_symmetric": rules.activations.symmetric,
        }
        if rules.int8_dot_product == "int16_pair_saturating":
            update["reduce_range"] = True  # 7-bit weights: u8 x s8 pair sums then fit int16
        if base.per_channel and "per_channel" not in rules.weights.granularity:
            update["per_channel"] = False
        update.update(self.device_fields(base, profile, graph, present_ops))
        if base.quant_format not in quant_formats(profile):
            update["quant_format"] = "qdq"  # QOperator ops only run on onnxruntime's CPU kernels
        # An integer-only device takes the activation type at its I/O, a CPU keeps float I/O.
        integer_io = profile.integer_only and rules.io_dtype != "float32"
        update["io_dtype"] = self.io_dtype(wanted, rules) if integer_io else "float32"
        if data is not None:
            update["calibration_samples"] = min(base.calibration_samples, len(data))
        return base.model_copy(update=update)

    def steps(self) -> Mapping[str, RecipeStep]:
        return {
            "per_channel": per_channel_step,
            "bias_correction": bias_correction_step,
            "percentile_calibration": _calibration_step("percentile"),
            "entropy_calibration": _calibration_step("entropy"),
        }

    def range_variants(self, recipe: Recipe) -> list[SpacePoint]:
        """Every other calibration method x bias correction: they move ranges and float biases, not kernels, so each
        runs at the recipe's speed and size. Crossed, not one step at a time: on ddddocr-det (x86-avx2) percentile
        ranges with bias correction measured 21.6 dB, percentile alone 18.9 dB."""
        found: list[SpacePoint] = []
        for method in get_args(CalibrationMethod):
            for bias in (False, True):
                variant = recipe.model_copy(update={"calibration_method": method, "bias_correction": bias})
                if variant != recipe:
                    found.append((f"{method} calibration" + (" + bias correction" if bias else ""), variant))
        return found

    def boundaries(self, graph: ModelGraph, converted: set[str], recipe: Recipe) -> tuple[int, int]:
        tensors = precision_borders(graph, converted, float_io=recipe.io_dtype == "float32")
        return len(tensors), border_elements(graph, tensors)

    def checked(self, recipe: Recipe, profile: HardwareProfile) -> Recipe:
        """The recipe as this technique's quantizer takes it on `profile` (a clear error where it cannot apply)."""
        del profile  # the planner already made the recipe device-conformant
        return recipe

    def quantize(
        self,
        model: ModelProto,
        recipe: Recipe,
        calibration: Dataset | None,
        profile: HardwareProfile,
        calibration_cache: Path | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> QuantizationResult:
        return self.quantize_nodes(
            model, self.checked(recipe, profile), calibration, calibration_cache, deadline=deadline
        )

    def quantize_nodes(
        self,
        model: ModelProto,
        recipe: Recipe,
        calibration: Dataset | None,
        calibration_cache: Path | None = None,
        nodes: list[str] | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> QuantizationResult:
        """Static QDQ of every node the recipe names, or only of `nodes` (per-node sensitivity)."""
        return static_qdq(
            model,
            recipe,
            calibration,
            self.name,
            calibration_cache=calibration_cache,
            nodes_to_quantize=nodes,
            deadline=deadline,
        )

    def recognises(self, model: ModelProto) -> bool:
        if not QDQ_OPS & {node.op_type for node in model.graph.node}:
            return False
        wide = any(init.data_type in WIDE_TYPES for init in model.graph.initializer)
        return wide == self.wide_activations
