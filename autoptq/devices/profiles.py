"""Hardware profiles: the pydantic schema of a device, and loading the shipped profiles or a user's YAML file."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from autoptq.errors import ProfileError
from autoptq.io import safeyaml
from autoptq.io.resources import data_dir
from autoptq.schema import StrictModel

Precision = Literal["fp32", "fp16", "int8", "int16"]
"""What an op computes in: `int16` means 16-bit activations with 8-bit weights (the 16x8 scheme)."""

ConstraintCheck = Literal[
    "same_dilation_xy",
    "constant_weights",
    "not_over_batch",
    "strides_all_one",
    "squeeze_leading_only",
    "alpha_innermost_only",
    "no_constant_inputs_except_zeros",
    "depthwise_or_group_one",
]
"""Named structural checks; their meaning is implemented in `autoptq.devices.coverage` (one small function each)."""


PROFILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""A profile's name becomes a folder of `variants` output: no separator, no dot (so never `..`, `manifest.json` or
an absolute path), not empty."""


class FixedOutputParams(StrictModel):
    """Quantization parameters a device imposes on an op's output (e.g. Softmax output scale 1/256, zero point -128)."""

    scale: float = Field(gt=0, allow_inf_nan=False)
    zero_point: int


class Constraint(StrictModel):
    """One limitation of an op at one precision. Exactly one kind of rule per entry.

    - `check`: a named structural check (see `ConstraintCheck`);
    - `attribute` with `in`: the ONNX attribute must take one of these values (its ONNX default when absent);
    - `max_elements`: no input or output tensor may have more elements;
    - `max_effective_rank`: at most this many dimensions larger than 1 in any input or output;
    - `note`: why the constraint exists, shown in reasons.
    """

    check: ConstraintCheck | None = None
    attribute: str | None = None
    in_: list[Any] | None = Field(default=None, alias="in")
    default: Any = None
    max_elements: int | None = Field(default=None, ge=0)
    max_effective_rank: int | None = Field(default=None, ge=0)
    note: str | None = None

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _exactly_one_rule(self) -> Constraint:
        kinds = [
            self.check is not None,
            self.attribute is not None,
            self.max_elements is not None,
            self.max_effective_rank is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError(
                "a constraint needs exactly one of: check, attribute (with in), max_elements, max_effective_rank"
            )
        if (self.attribute is None) != (self.in_ is None):
            raise ValueError("'attribute' and 'in' go together")
        return self


class PrecisionSupport(StrictModel):
    """An op runs at this precision when every constraint holds."""

    constraints: list[Constraint] = Field(default_factory=list)


class PrecisionThroughput(StrictModel):
    """How fast the device computes at one precision."""

    peak_macs_per_s: float = Field(gt=0, allow_inf_nan=False, description="peak multiply-accumulates per second")
    efficiency: float = Field(
        default=1.0, gt=0, le=1, allow_inf_nan=False, description="fraction of peak reached on real layers"
    )

    @property
    def effective_macs_per_s(self) -> float:
        """Sustained MAC/s used by the cost model."""
        return self.peak_macs_per_s * self.efficiency


class TensorRule(StrictModel):
    """How one kind of tensor must be quantized for the device."""

    dtype: list[Literal["int8", "uint8", "int16", "uint16", "int32", "float16", "float32"]]
    granularity: list[Literal["per_tensor", "per_channel"]] = Field(default_factory=lambda: ["per_tensor"])
    symmetric: bool = False


class QuantizationRules(StrictModel):
    """What the device's integer arithmetic requires of a quantized model."""

    activations: TensorRule
    weights: TensorRule
    bias: Literal["int32", "float32"] = "int32"
    rounding: Literal["tflite_double", "tflite_single", "float_rne", "fp16_storage"] = "float_rne"
    fixed_output_params: dict[str, FixedOutputParams] = Field(default_factory=dict)
    io_dtype: Literal["float32", "int8", "uint8"] = "float32"
    int8_dot_product: Literal["int32_accumulate", "int16_pair_saturating"] = Field(
        default="int32_accumulate",
        description="int16_pair_saturating: u8 x s8 pair sums saturate to int16 (x86 without VNNI)",
    )


class ShapeRules(StrictModel):
    """Shape limits of the device."""

    static: bool = False
    max_effective_rank: int | None = Field(
        default=None, ge=0, description="at most this many dimensions may exceed 1 in any tensor"
    )


class MemorySpec(StrictModel):
    """Memory sizes (bytes) and bandwidths (bytes per second)."""

    # Sizes may be 0 (no such memory); bandwidths divide, so they must be positive. All finite.
    parameter_cache_bytes: int | None = Field(default=None, ge=0, description="on-chip memory that caches parameters")
    ram_bytes: int | None = Field(default=None, ge=0)
    flash_bytes: int | None = Field(default=None, ge=0)
    dram_bandwidth_bytes_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    streamed_bandwidth_bytes_per_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="rate at which parameters beyond the cache are streamed each inference",
    )
    host_link_bandwidth_bytes_per_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="device <-> host transfer rate for tensors crossing a partition",
    )


class CostSpec(StrictModel):
    """Constants of the latency estimate (a roofline), with where they came from."""

    fixed_overhead_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    per_op_overhead_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    transfer_overhead_s: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="per device <-> host crossing"
    )
    uncertainty: float = Field(
        default=0.5, ge=0, allow_inf_nan=False, description="relative half-width of the reported range"
    )
    basis: str = Field(default="", description="where the constants come from")


class HardwareProfile(StrictModel):
    """A device, as data: what it runs, at which precision, under which rules, and how fast."""

    name: str = Field(
        pattern=PROFILE_NAME_PATTERN,
        description="names the device and its output folder in `variants`: letters, digits, '-' and '_'",
    )
    description: str
    kind: Literal["accelerator", "cpu", "gpu", "npu", "mcu"]
    integer_only: bool
    precisions: dict[Precision, PrecisionThroughput]
    runs_any_op_at: list[Precision] = Field(
        default_factory=list,
        description="precisions at which ops absent from the op table still run (a CPU runs every ONNX op in fp32)",
    )
    quantization: QuantizationRules
    ops: dict[str, dict[Precision, PrecisionSupport]] = Field(default_factory=dict)
    shapes: ShapeRules = Field(default_factory=ShapeRules)
    converter_rewrites: list[
        Literal["div_by_constant", "hard_sigmoid", "hard_swish", "sum_of_two", "focus_to_space_to_depth"]
    ] = Field(
        default_factory=list,
        description="rewrites the device's converter applies before mapping ops (autoptq.devices.canonical)",
    )
    partitioning: Literal["first_cut", "any_subgraph"] = "any_subgraph"
    memory: MemorySpec = Field(default_factory=MemorySpec)
    cost: CostSpec = Field(default_factory=CostSpec)
    host: str | None = Field(default=None, description="profile that runs what the device cannot")
    architecture: Literal["x86_64", "aarch64"] | None = Field(
        default=None, description="instruction set of a CPU profile: latency is measured when this machine matches"
    )
    format: Literal["onnx", "tflite"] = Field(
        default="onnx",
        description="the deployable file: onnx (the QDQ model), or tflite (model.tflite written beside it)",
    )
    emulator: Literal["integer", "fp16", "host"]
    sources: list[str] = Field(default_factory=list, description="public facts this profile encodes")

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        for op, by_precision in self.ops.items():
            for precision in by_precision:
                if precision not in self.precisions:
                    raise ValueError(f"ops.{op}: precision {precision!r} is not among the device's precisions")
        for precision in self.runs_any_op_at:
            if precision not in self.precisions:
                raise ValueError(f"runs_any_op_at: precision {precision!r} is not among the device's precisions")
        if self.integer_only and any(p in self.precisions for p in ("fp32", "fp16")):
            raise ValueError("an integer_only device cannot list fp32 or fp16 precisions")
        return self

    def precisions_for(self, op_type: str) -> dict[Precision, PrecisionSupport]:
        """Precisions at which `op_type` may run, with their constraints (none for ops run generically).

        `runs_any_op_at` covers the ONNX domains (`Conv`, `ai.onnx.ml.X`) and onnxruntime's own (`com.microsoft.X`):
        an op of any other domain runs only where the op table lists it."""
        table = dict(self.ops.get(op_type, {}))
        domain = op_type.rpartition(".")[0]
        if domain in GENERIC_DOMAINS:
            for precision in self.runs_any_op_at:
                table.setdefault(precision, PrecisionSupport())
        return table


GENERIC_DOMAINS = frozenset({"", "ai.onnx.ml", "com.microsoft", "autoptq.float"})
"""Op domains whose ops a CPU or GPU runtime has kernels for (the key of an op is `domain.Op` outside ai.onnx);
`autoptq.float` marks the standard ops a recipe keeps in float (see `autoptq.devices.device_rules`)."""


def profiles_dir() -> Path:
    """The folder of shipped profiles."""
    return data_dir("hardware_profiles")


def shipped_profile_names() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a shipped profile by name, or a user's profile from a YAML path.

    Raises ProfileError with one line naming the file and the offending key.
    """
    return _load_profile_file(profile_file(name_or_path))


def profile_file(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped profile name or a user's profile path, resolved (an input outputs must spare)."""
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if looks_like_path:
        return Path(text).resolve()
    path = profiles_dir() / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(shipped_profile_names())
        raise ProfileError(f"unknown target {text!r}; known targets: {known} (or pass a path to a YAML profile)")
    return path


@cache
def _load_profile_file(path: Path) -> HardwareProfile:
    if not path.is_file():
        raise ProfileError(f"{path}: profile file not found")
    try:
        raw = safeyaml.load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ProfileError(f"{path}: not valid YAML ({safeyaml.describe(exc)})") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping, got {type(raw).__name__}")
    try:
        return HardwareProfile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(f"{path}: {describe_validation_error(exc)}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first offending key and what is wrong with it."""
    errors = exc.errors()
    # A misspelt key shows up twice (the unknown spelling and the missing real key): name the spelling.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if err["type"] == "missing":
        return f"missing key {where!r}"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def profile_json_schema() -> str:
    """The JSON Schema of a hardware profile, for editors validating users' YAML."""
    schema = HardwareProfile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "autoptq hardware profile"
    return json.dumps(schema, indent=2, sort_keys=True)
