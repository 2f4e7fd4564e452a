"""The recipe: everything a quantizer will use, spelled out. Written by the planner, read by the quantizers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from autoptq.devices.profiles import FixedOutputParams
from autoptq.schema import StrictModel


def _registered(name: str) -> str:
    # Imported here: the registry imports the technique modules, which import this one.
    from autoptq.techniques import REGISTRY

    if name not in REGISTRY:
        raise ValueError(f"unknown technique {name!r} (known: {', '.join(REGISTRY)})")
    return name


TechniqueName = Annotated[str, AfterValidator(_registered)]
"""A technique's name, one of `autoptq.techniques.REGISTRY` (`none`: keep the float model)."""

QuantDtype = Literal["int8", "uint8", "int16", "uint16", "float16", "float32"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
QuantFormat = Literal["qdq", "qoperator"]
"""How a static model spells its integer ops: QuantizeLinear/DequantizeLinear pairs around float ops (QDQ, what
every runtime reads) or QLinear* ops (QOperator, onnxruntime's CPU kernels only)."""


class Recipe(StrictModel):
    """The full set of quantizer settings for one technique.

    Fields that do not apply to a technique keep their defaults and are ignored by its quantizer (e.g. calibration for
    `weight_only_int8`).
    """

    activation_dtype: QuantDtype = "uint8"
    weight_dtype: QuantDtype = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    calibration_method: CalibrationMethod = "minmax"
    calibration_percentile: float = 99.999
    calibration_samples: int = Field(default=200, ge=1)
    op_types_to_quantize: list[str] = Field(default_factory=list)
    nodes_to_exclude: list[str] = Field(default_factory=list)
    reduce_range: bool = False
    fixed_output_params: dict[str, FixedOutputParams] = Field(default_factory=dict)
    io_dtype: QuantDtype = "float32"
    fp16_op_block_list: list[str] = Field(default_factory=list)
    quant_format: QuantFormat = "qdq"
    smooth_quant: bool = False
    smooth_quant_alpha: float = Field(default=0.5, ge=0, le=1)
    float_output_joins: bool = Field(
        default=False,
        description="keep in float an output's Concat of parts whose calibrated ranges differ by more than 16x "
        "(boxes and scores in one tensor), where the device has a float host; a host-less .tflite returns the parts "
        "as int8 outputs for the application to join (autoptq.techniques.output_joins)",
    )
    bias_correction: bool = Field(
        default=False,
        description="static int8: subtract each Conv/ConvTranspose/Gemm's mean output shift under quantization, "
        "measured on the calibration data, from its float bias, then quantize again with the same ranges "
        "(empirical bias correction, Nagel et al. 2019; autoptq.techniques.bias_correction)",
    )


class RecipeOverrides(StrictModel):
    """A partial recipe as written in a rules file: only the keys it sets are applied over the defaults."""

    activation_dtype: QuantDtype | None = None
    weight_dtype: QuantDtype | None = None
    activation_symmetric: bool | None = None
    weight_symmetric: bool | None = None
    per_channel: bool | None = None
    calibration_method: CalibrationMethod | None = None
    calibration_percentile: float | None = None
    calibration_samples: int | None = Field(default=None, ge=1)
    op_types_to_quantize: list[str] | None = None
    nodes_to_exclude: list[str] | None = None
    reduce_range: bool | None = None
    io_dtype: QuantDtype | None = None
    fp16_op_block_list: list[str] | None = None
    quant_format: QuantFormat | None = None
    smooth_quant: bool | None = None
    smooth_quant_alpha: float | None = Field(default=None, ge=0, le=1)
    bias_correction: bool | None = None

    def apply_to(self, recipe: Recipe) -> Recipe:
        """Return `recipe` with the keys this override sets replaced."""
        return recipe.model_copy(update=self.model_dump(exclude_none=True))


class RecipeFile(StrictModel):
    """One replayable recipe: the target it was chosen for, the technique and its full recipe (`none`: float).

    Written by `autoptq plan --format yaml`, read by `autoptq quantize --recipe` (also from a variants manifest)."""

    target: str
    technique: TechniqueName
    recipe: Recipe | None = None

    @model_validator(mode="after")
    def _has_recipe(self) -> RecipeFile:
        if self.technique != "none" and self.recipe is None:
            raise ValueError(f"technique {self.technique} needs a recipe")
        return self
