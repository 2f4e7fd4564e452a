"""Techniques, one module each, found by name in one registry: adding a technique is adding a module with a
`Technique` subclass (`autoptq.techniques.base`) and a line here.

Each quantizer is a thin, explicit layer over onnxruntime.quantization (or its fp16 converter).
"""

from __future__ import annotations

from onnx import ModelProto

from autoptq.errors import AutoptqError
from autoptq.techniques.base import Technique
from autoptq.techniques.common import QuantizationResult
from autoptq.techniques.fp16 import Fp16
from autoptq.techniques.full_int8 import FullInt8
from autoptq.techniques.int16x8 import Int16x8
from autoptq.techniques.keep_float import KeepFloat
from autoptq.techniques.weight_only import WeightOnlyInt8

REGISTRY: dict[str, Technique] = {t.name: t for t in (WeightOnlyInt8(), FullInt8(), Fp16(), Int16x8(), KeepFloat())}
"""Every technique by name, in the order models are recognised (keeping float last)."""
KEEP_FLOAT = KeepFloat.name
"""The name of keeping the float model: every search's last resort."""


def by_name(name: str) -> Technique:
    """The technique named `name`."""
    found = REGISTRY.get(name)
    if found is None:
        raise AutoptqError(f"unknown technique {name!r} (known: {', '.join(REGISTRY)})")
    return found


def recognise(model: ModelProto) -> Technique:
    """Which technique produced a model, read from its operators and types."""
    return next(t for t in REGISTRY.values() if t.recognises(model))


def fallback_steps() -> set[str]:
    """Every fallback name a rules file may use: the techniques and their recipe steps."""
    return {*REGISTRY, *(step for t in REGISTRY.values() for step in t.steps())}


__all__ = ["KEEP_FLOAT", "REGISTRY", "QuantizationResult", "Technique", "by_name", "fallback_steps", "recognise"]
