"""What every emulator family returns."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoptq.intio import IOQuantization, read_integer_io, write_integer_io

Tier = Literal["fast", "exact", "fp16-storage", "host"]


class NodeFinding(BaseModel):
    """Something an emulator saw at one node: overflow, underflow, saturation, a kernel that did not run integer."""

    node: str
    kind: str
    detail: str
    count: int = 0


class EmulationResult(BaseModel):
    """Outputs under the device's arithmetic, per sample, as float (integer outputs dequantized), in graph output
    order, with the tier and a plain statement of what it reproduces and what it does not."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tier: Tier
    fidelity_statement: str
    output_names: list[str]
    outputs: list[list[np.ndarray]] = Field(repr=False)
    findings: list[NodeFinding] = Field(default_factory=list)


__all__ = ["EmulationResult", "IOQuantization", "NodeFinding", "Tier", "read_integer_io", "write_integer_io"]
