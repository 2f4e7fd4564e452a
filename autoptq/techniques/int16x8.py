"""16x8: 16-bit activations with 8-bit weights (static QDQ), for devices that run them and models where int8
activations lose too much. onnxruntime raises the model to opset 21 for 16-bit QuantizeLinear."""

from __future__ import annotations

from typing import ClassVar

from autoptq.devices.profiles import HardwareProfile, QuantizationRules
from autoptq.model.calibration import Dataset
from autoptq.techniques.common import QuantizationError
from autoptq.techniques.recipe import QuantDtype, Recipe
from autoptq.techniques.static import StaticQdq


class Int16x8(StaticQdq):
    """Static QDQ with int16/uint16 activations and int8 weights."""

    name: ClassVar[str] = "int16x8"
    precision = "int16"
    wide_activations: ClassVar[bool] = True

    def activation_dtype(self, base: Recipe, allowed: list[QuantDtype]) -> QuantDtype:
        del base
        return next((d for d in allowed if d in ("int16", "uint16")), "int16")

    def io_dtype(self, activation_dtype: QuantDtype, rules: QuantizationRules) -> QuantDtype:
        del rules
        return activation_dtype  # 16-bit I/O for 16x8

    def fallback_recipe(self, plan_recipe: Recipe, profile: HardwareProfile, data: Dataset | None) -> Recipe | None:
        del plan_recipe
        return Recipe() if "int16" in profile.precisions and data is not None else None

    def checked(self, recipe: Recipe, profile: HardwareProfile) -> Recipe:
        if "int16" not in profile.precisions:
            raise QuantizationError(f"{profile.name} does not run 16-bit activations: int16x8 does not apply")
        if recipe.activation_dtype not in ("int16", "uint16"):
            recipe = recipe.model_copy(update={"activation_dtype": "int16"})
        return recipe
