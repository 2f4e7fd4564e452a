"""Emulators, one module per arithmetic family, found by the profile's `emulator` name.

Each module has `emulate(model, profile, samples, tier) -> EmulationResult`; `integer` has the `exact` and `fast`
tiers, `fp16` the `fp16-storage` tier, `host` the `host` tier.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
from onnx import ModelProto

from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.emulators.base import EmulationResult

Emulator = Callable[[ModelProto, HardwareProfile, list[dict[str, np.ndarray]], str], EmulationResult]

TIERS: dict[str, tuple[str, ...]] = {
    "integer": ("exact", "fast", "litert", "tflm"),
    "fp16": ("fp16-storage",),
    "host": ("host",),
}
"""Tiers of each family, the default first (litert / tflm run the .tflite of a `format: tflite` profile)."""


def emulator_for(family: str) -> Emulator:
    """The `emulate` function of an emulator family (imported on first use: families are independent)."""
    if family not in TIERS:
        raise KeyError(f"unknown emulator family {family!r}")
    return importlib.import_module(f"autoptq.evaluate.emulators.{family}").emulate


__all__ = ["TIERS", "EmulationResult", "Emulator", "emulator_for"]
