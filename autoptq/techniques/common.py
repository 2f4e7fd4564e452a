"""What the quantizers share: the result type, reading back what onnxruntime wrote, the calibration
reader with its progress bar, and the mapping of recipe dtypes to onnxruntime's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress

from autoptq.errors import AutoptqError, DataError
from autoptq.model.calibration import Dataset
from autoptq.model.intio import IOQuantization
from autoptq.techniques.recipe import Recipe

QUANT_TYPES: dict[str, QuantType] = {
    "int8": QuantType.QInt8,
    "uint8": QuantType.QUInt8,
    "int16": QuantType.QInt16,
    "uint16": QuantType.QUInt16,
}
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class QuantizationError(AutoptqError):
    """The quantizer itself failed on this model (the message says where)."""


class AppliedRecipe(BaseModel):
    """The recipe as actually applied, with what was left out and why."""

    technique: str
    recipe: Recipe
    quantized_nodes: int = 0
    excluded: dict[str, str] = Field(default_factory=dict, description="node -> why it stayed in float")
    notes: list[str] = Field(default_factory=list)
    integer_io: list[IOQuantization] = Field(default_factory=list)


class QuantizationResult(BaseModel):
    """A quantized model and the recipe actually applied."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: ModelProto
    applied: AppliedRecipe


class DatasetReader(CalibrationDataReader):
    """Feeds calibration samples to onnxruntime, with a progress bar on an interactive terminal."""

    def __init__(self, dataset: Dataset, label: str = "calibrating") -> None:
        self._samples = dataset.samples
        self._index = 0
        self._progress: Progress | None = None
        if sys.stderr.isatty() and self._samples:
            self._progress = Progress(transient=True)
            self._task = self._progress.add_task(label, total=len(self._samples))
            self._progress.start()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._samples):
            self.close()
            return None
        sample = self._samples[self._index]
        self._index += 1
        if self._progress is not None:
            self._progress.advance(self._task)
        return sample

    def close(self) -> None:
        """Take the progress bar off the terminal (at the end, or when calibration stops part way)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def rewind(self) -> None:
        self._index = 0

    def __len__(self) -> int:
        return len(self._samples)


def calibration_samples(data: Dataset | None, recipe: Recipe, technique: str) -> Dataset:
    """The samples a static quantizer calibrates on; a clear error without data."""
    if data is None or len(data) == 0:
        raise DataError(
            f"{technique} needs representative data to calibrate activation ranges: pass --data calib.npz "
            "(an array per model input, samples stacked on the first axis)"
        )
    return data.take(recipe.calibration_samples)


def load_result(path: Path) -> ModelProto:
    """Read a quantizer's output back into memory (with any external data it wrote)."""
    if not path.is_file():
        raise QuantizationError("the quantizer wrote no model")
    return onnx.load(str(path))
