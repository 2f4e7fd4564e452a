"""autoptq: pick, produce and verify the post-training quantization of an ONNX model for a target device."""

from __future__ import annotations

from autoptq._version import __version__
from autoptq.api import QuantizeOptions, audit, make_variants, plan, quantize
from autoptq.decide.planner import Plan, UserGoals
from autoptq.devices.coverage import CoverageReport
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.errors import AutoptqError, DataError, ModelLoadError, OutputError, ProfileError, RulesError
from autoptq.model.graph import ModelGraph, load_model

__all__ = [
    "AutoptqError",
    "CoverageReport",
    "DataError",
    "HardwareProfile",
    "ModelGraph",
    "ModelLoadError",
    "OutputError",
    "Plan",
    "ProfileError",
    "QuantizeOptions",
    "RulesError",
    "UserGoals",
    "__version__",
    "audit",
    "load_model",
    "load_profile",
    "make_variants",
    "plan",
    "quantize",
]
