"""autoptq: pick, produce and verify the post-training quantization of an ONNX model for a target device."""

from __future__ import annotations

from autoptq._version import __version__
from autoptq.api import QuantizeOptions, audit, make_variants, plan, quantize
from autoptq.coverage import CoverageReport
from autoptq.errors import AutoptqError, DataError, ModelLoadError, OutputError, ProfileError, RulesError
from autoptq.graph import ModelGraph, load_model
from autoptq.planner import Plan, UserGoals
from autoptq.profiles import HardwareProfile, load_profile

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
