"""Emulators, one module per arithmetic family, found by the profile's `emulator` name.

Each module has `emulate(model, profile, samples, tier, deadline=NO_DEADLINE) -> EmulationResult` (the deadline is
checked before each sample); `integer` has the `exact` and `fast` tiers, `fp16` the `fp16-storage` tier, `host` the
`host` tier.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np
from onnx import ModelProto

from autoptq.deadline import Deadline
from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.emulators.base import EmulationResult


class Emulator(Protocol):
    """A family's `emulate`."""

    def __call__(
        self,
        model: ModelProto,
        profile: HardwareProfile,
        samples: list[dict[str, np.ndarray]],
        tier: str,
        deadline: Deadline = ...,
    ) -> EmulationResult: ...


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
