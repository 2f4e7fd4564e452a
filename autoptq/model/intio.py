"""Integer graph I/O: how a model whose inputs/outputs are integers maps them to real values, recorded in the
model's metadata so any later step (verification, emulators, `autoptq check`) can feed and read it."""

from __future__ import annotations

import json

from onnx import ModelProto, StringStringEntryProto
from pydantic import BaseModel

INTEGER_IO_KEY = "autoptq.integer_io"
"""metadata_props key holding the scale and zero point of integer graph inputs and outputs (JSON list)."""


class IOQuantization(BaseModel):
    """How a graph input or output that became integer maps to real values: real = scale * (q - zero_point)."""

    name: str
    dtype: str
    scale: float
    zero_point: int


def write_integer_io(model: ModelProto, integer_io: list[IOQuantization]) -> None:
    """Record integer I/O parameters in the model's metadata (replacing any previous record)."""
    entries = [e for e in model.metadata_props if e.key != INTEGER_IO_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    if integer_io:
        value = json.dumps([io.model_dump() for io in integer_io], sort_keys=True)
        model.metadata_props.append(StringStringEntryProto(key=INTEGER_IO_KEY, value=value))


def read_integer_io(model: ModelProto) -> list[IOQuantization]:
    """Integer I/O parameters recorded by autoptq in the model's metadata (empty for float I/O)."""
    for entry in model.metadata_props:
        if entry.key == INTEGER_IO_KEY:
            return [IOQuantization.model_validate(item) for item in json.loads(entry.value)]
    return []
