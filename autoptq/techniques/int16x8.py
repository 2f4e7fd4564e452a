"""16x8: 16-bit activations with 8-bit weights (static QDQ), for devices that run them and models where int8
activations lose too much. onnxruntime raises the model to opset 21 for 16-bit QuantizeLinear."""

from __future__ import annotations

from onnx import ModelProto

from autoptq.devices.profiles import HardwareProfile
from autoptq.model.calibration import Dataset
from autoptq.techniques.common import QuantizationError, QuantizationResult
from autoptq.techniques.full_int8 import static_qdq
from autoptq.techniques.recipe import Recipe


def quantize(
    model: ModelProto, recipe: Recipe, calibration: Dataset | None, profile: HardwareProfile
) -> QuantizationResult:
    """Static QDQ with int16/uint16 activations and int8 weights."""
    if "int16" not in profile.precisions:
        raise QuantizationError(f"{profile.name} does not run 16-bit activations: int16x8 does not apply")
    if recipe.activation_dtype not in ("int16", "uint16"):
        recipe = recipe.model_copy(update={"activation_dtype": "int16"})
    return static_qdq(model, recipe, calibration, "int16x8")
