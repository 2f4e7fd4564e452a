"""The host emulator: the machine itself. The model runs as is in onnxruntime with pinned settings; latency
against float is measured side by side by `autoptq check` where this machine stands in for the target."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.emulators.base import EmulationResult
from autoptq.evaluate.runner import ModelRunner
from autoptq.model.intio import read_integer_io

STATEMENT = (
    "host tier: the model runs as is in onnxruntime's CPU provider on this machine (all graph optimizations, one "
    "thread). Reproduces onnxruntime's own kernels and rounding (float32 requantization, round half to even); on a "
    "different CPU than the target, integer kernels and their speed may differ (e.g. VNNI vs AVX2 u8 x s8 paths)."
)


def emulate(
    model: ModelProto,
    profile: HardwareProfile,
    samples: list[dict[str, np.ndarray]],
    tier: str = "host",
    deadline: Deadline = NO_DEADLINE,
) -> EmulationResult:
    """Run the model as is (`deadline` checked before each sample)."""
    del profile, tier
    runner = ModelRunner(model, read_integer_io(model))
    return EmulationResult(
        tier="host",
        fidelity_statement=STATEMENT,
        output_names=runner.output_names,
        outputs=[runner.run(sample) for sample in deadline.each(samples)],
    )
