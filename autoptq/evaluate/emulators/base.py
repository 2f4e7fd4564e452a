"""What every emulator family returns."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoptq.deploy.intgraph import NodeFinding
from autoptq.model.intio import IOQuantization, read_integer_io, write_integer_io

Tier = Literal["fast", "exact", "fp16-storage", "host", "litert", "tflm"]


class TierAgreement(BaseModel):
    """One output of the device file compared with the exact tier over all samples, or (`op` set) every op of one
    TFLite type re-run by the exact tier on the file's own inputs, `output` naming the op output that differs most."""

    output: str
    op: str | None = None
    elements: int
    bit_exact_fraction: float
    max_abs_lsb: float
    tolerance_lsb: int
    reason: str
    within_tolerance: bool


class EmulationResult(BaseModel):
    """Outputs under the device's arithmetic, per sample, as float (integer outputs dequantized), in graph output
    order, with the tier and a plain statement of what it reproduces and what it does not."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tier: Tier
    fidelity_statement: str
    output_names: list[str]
    outputs: list[list[np.ndarray]] = Field(repr=False)
    findings: list[NodeFinding] = Field(default_factory=list)
    agreement: list[TierAgreement] = Field(
        default_factory=list, description="a device-file tier (litert, tflm): its outputs vs the exact tier's"
    )
    arena_bytes: int | None = Field(default=None, description="tflm tier: the tensor arena the model needs")
    arena_recorded_bytes: int | None = Field(default=None, description="tflm tier: TFLM's recorded allocations")


__all__ = [
    "EmulationResult",
    "IOQuantization",
    "NodeFinding",
    "Tier",
    "TierAgreement",
    "read_integer_io",
    "write_integer_io",
]
