"""autoptq: pick, produce and verify the post-training quantization of an ONNX model for a target device."""

from __future__ import annotations

from autoptq.api import audit, plan
from autoptq.coverage import CoverageReport
from autoptq.errors import AutoptqError, DataError, ModelLoadError, OutputError, ProfileError, RulesError
from autoptq.graph import ModelGraph, load_model
from autoptq.planner import Plan, UserGoals
from autoptq.profiles import HardwareProfile, load_profile

__version__ = "0.1.0"

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
    "RulesError",
    "UserGoals",
    "__version__",
    "audit",
    "load_model",
    "load_profile",
    "plan",
]
