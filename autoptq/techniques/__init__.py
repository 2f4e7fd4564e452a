"""Quantizers, one module per technique, found by name: adding a technique is adding a module and a line here.

Each is a thin, explicit layer over onnxruntime.quantization (or its fp16 converter) with the signature
`quantize(model, recipe, calibration, profile) -> QuantizationResult`.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx import ModelProto

from autoptq.devices.profiles import HardwareProfile
from autoptq.model.calibration import Dataset
from autoptq.techniques import fp16, full_int8, int16x8, weight_only
from autoptq.techniques.common import QuantizationResult
from autoptq.techniques.recipe import Recipe

Quantizer = Callable[[ModelProto, Recipe, Dataset | None, HardwareProfile], QuantizationResult]

QUANTIZERS: dict[str, Quantizer] = {
    "weight_only_int8": weight_only.quantize,
    "full_int8": full_int8.quantize,
    "fp16": fp16.quantize,
    "int16x8": int16x8.quantize,
}

__all__ = ["QUANTIZERS", "QuantizationResult", "Quantizer"]
