"""The deployable file of a `format: tflite` target: `model.tflite` written beside the QDQ ONNX by `quantize` and
`variants` (the ONNX stays for inspection), with its hash and the next step on the device's toolchain."""

from __future__ import annotations

import hashlib
from typing import Literal

import onnx
from pydantic import BaseModel, Field

from autoptq.devices.profiles import HardwareProfile
from autoptq.errors import AutoptqError

NEXT_STEPS = {"edgetpu": "edgetpu_compiler {name}"}
"""Profile name → the command that takes the written file further ({name}: the file name)."""


class DeviceFile(BaseModel):
    """The device's own file for one target, or why it was not written."""

    format: Literal["tflite"] = "tflite"
    path: str | None = Field(default=None, description="where it was written (relative in a manifest)")
    sha256: str | None = None
    size_bytes: int | None = None
    op_counts: dict[str, int] = Field(default_factory=dict, description="TFLite builtin op → count")
    error: str | None = Field(default=None, description="why no file was written")
    next_step: str | None = Field(default=None, description="the device toolchain's next command, if any")
    output_joins: list[str] = Field(
        default_factory=list,
        description="outputs the file returns in int8 parts, and how the application joins them (no float host)",
    )


def device_file(
    model_bytes: bytes,
    kept_float: bool,
    profile: HardwareProfile,
    path: str,
    input_shapes: dict[str, list[int]] | None = None,
) -> tuple[DeviceFile | None, bytes | None]:
    """(summary, bytes) of the `.tflite` of a produced model on a `format: tflite` profile; (None, None) for other
    formats. A quantized model the writer cannot express gets a summary with the error and no bytes; a float model
    (nothing beat float) gets no file either, since these devices run integers only. `input_shapes` (the data's)
    fix a dynamic model's dimensions."""
    if profile.format != "tflite":
        return None, None
    if kept_float:
        return DeviceFile(error="no .tflite: the output is the float model, which this device cannot run"), None
    from autoptq.deploy.tflite_writer import export_tflite  # the tflite extra is needed only here

    try:
        exported = export_tflite(onnx.load_from_string(model_bytes), profile, input_shapes)
    except AutoptqError as exc:
        return DeviceFile(error=f"no .tflite: {exc}"), None
    except Exception as exc:  # a writer bug must not cost the user the verified ONNX model: say so instead
        return DeviceFile(error=f"no .tflite: the writer failed ({type(exc).__name__}: {exc}); please report it"), None
    name = path.rsplit("/", 1)[-1]
    step = NEXT_STEPS.get(profile.name)
    summary = DeviceFile(
        path=path,
        sha256=hashlib.sha256(exported.content).hexdigest(),
        size_bytes=len(exported.content),
        op_counts=exported.op_counts,
        next_step=step.format(name=name) if step else None,
        output_joins=[join.statement() for join in exported.output_joins],
    )
    return summary, exported.content
