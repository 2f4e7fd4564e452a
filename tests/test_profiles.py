"""Hardware profiles: the shipped YAML files validate and encode the key device facts; bad files fail clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoptq.devices.profiles import (
    HardwareProfile,
    load_profile,
    profile_json_schema,
    profiles_dir,
    shipped_profile_names,
)
from autoptq.errors import ProfileError

SHIPPED = shipped_profile_names()
EXPECTED = {
    "arm-a53",
    "arm-a76",
    "edgetpu",
    "gpu-fp16",
    "mcu-cortex-m",
    "qualcomm-htp",
    "x86-avx2",
    "x86-vnni",
}


def _minimal_profile() -> dict[str, Any]:
    """A small valid profile, as it would be read from YAML."""
    return {
        "name": "toy-npu",
        "description": "a toy integer-only NPU",
        "kind": "npu",
        "integer_only": True,
        "precisions": {"int8": {"peak_macs_per_s": 1.0e11, "efficiency": 0.5}},
        "quantization": {
            "activations": {"dtype": ["int8"], "granularity": ["per_tensor"], "symmetric": False},
            "weights": {"dtype": ["int8"], "granularity": ["per_channel"], "symmetric": True},
            "rounding": "tflite_double",
            "fixed_output_params": {"Softmax": {"scale": 0.00390625, "zero_point": -128}},
            "io_dtype": "int8",
        },
        "ops": {
            "Conv": {"int8": {"constraints": [{"check": "same_dilation_xy"}]}},
            "Resize": {"int8": {"constraints": [{"attribute": "mode", "in": ["nearest"], "default": "nearest"}]}},
        },
        "shapes": {"static": True, "max_effective_rank": 3},
        "partitioning": "first_cut",
        "host": None,
        "emulator": "integer",
        "sources": ["a datasheet"],
    }


def _write(tmp_path: Path, data: dict[str, Any], filename: str = "profile.yaml") -> Path:
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message
    return message


# --- shipped profiles -------------------------------------------------------------------------------------------


def test_the_expected_profiles_are_shipped() -> None:
    assert set(SHIPPED) >= EXPECTED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_is_named_after_its_file(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, HardwareProfile)
    assert profile.name == name
    assert (profiles_dir() / f"{name}.yaml").is_file()
    assert profile.description


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_cites_sources(name: str) -> None:
    profile = load_profile(name)
    assert profile.sources
    assert all(source.strip() for source in profile.sources)
    assert profile.cost.basis.strip()


@pytest.mark.parametrize("name", SHIPPED)
def test_host_is_a_shipped_profile_or_null(name: str) -> None:
    profile = load_profile(name)
    assert profile.host is None or profile.host in SHIPPED
    assert profile.host != name


@pytest.mark.parametrize("name", SHIPPED)
def test_integer_only_devices_have_no_float_precisions(name: str) -> None:
    profile = load_profile(name)
    if profile.integer_only:
        assert not {"fp32", "fp16"} & set(profile.precisions)
        assert profile.runs_any_op_at == []
    else:
        assert "fp32" in profile.runs_any_op_at


@pytest.mark.parametrize("name", SHIPPED)
def test_op_tables_only_use_declared_precisions(name: str) -> None:
    profile = load_profile(name)
    assert profile.ops
    for by_precision in profile.ops.values():
        assert set(by_precision) <= set(profile.precisions)


def test_edgetpu_key_facts() -> None:
    tpu = load_profile("edgetpu")
    assert tpu.kind == "accelerator"
    assert tpu.integer_only
    assert set(tpu.precisions) == {"int8"}
    # Fitted to Coral's published latencies with the fixed overhead (docs/cost-model.md): within the 2e12 peak.
    assert tpu.precisions["int8"].effective_macs_per_s == pytest.approx(1.56e12, rel=0.05)
    assert tpu.cost.fixed_overhead_s == pytest.approx(1.3e-3, rel=0.1)
    assert tpu.partitioning == "first_cut"
    assert tpu.shapes.static
    assert tpu.shapes.max_effective_rank == 3
    assert tpu.host == "arm-a53"
    assert tpu.emulator == "integer"
    for unsupported in ("LeakyRelu", "HardSwish", "Transpose", "DequantizeLinear", "Gather", "DepthToSpace"):
        assert unsupported not in tpu.ops
        assert tpu.precisions_for(unsupported) == {}
    softmax = tpu.ops["Softmax"]["int8"].constraints
    assert {c.max_elements for c in softmax if c.max_elements is not None} == {16000}
    assert {c.max_effective_rank for c in softmax if c.max_effective_rank is not None} == {1}
    assert "same_dilation_xy" in {c.check for c in tpu.ops["Conv"]["int8"].constraints}
    lstm = tpu.ops["LSTM"]["int8"].constraints[0]
    assert (lstm.attribute, lstm.in_, lstm.default) == ("direction", ["forward"], "forward")
    fixed = tpu.quantization.fixed_output_params
    assert (fixed["Softmax"].scale, fixed["Softmax"].zero_point) == (1 / 256, -128)
    assert (fixed["Sigmoid"].scale, fixed["Sigmoid"].zero_point) == (1 / 256, -128)
    assert (fixed["Tanh"].scale, fixed["Tanh"].zero_point) == (1 / 128, 0)
    assert tpu.quantization.weights.symmetric
    assert tpu.quantization.rounding == "tflite_double"
    assert tpu.quantization.io_dtype == "int8"
    assert tpu.memory.parameter_cache_bytes == 6_500_000


def test_x86_avx2_saturates_and_vnni_does_not() -> None:
    assert load_profile("x86-avx2").quantization.int8_dot_product == "int16_pair_saturating"
    assert load_profile("x86-vnni").quantization.int8_dot_product == "int32_accumulate"


@pytest.mark.parametrize("name", ["x86-vnni", "x86-avx2"])
def test_x86_cpus_accelerate_neither_fp16_nor_int16(name: str) -> None:
    cpu = load_profile(name)
    assert set(cpu.precisions) == {"fp32", "int8"}
    assert cpu.precisions["int8"].effective_macs_per_s > cpu.precisions["fp32"].effective_macs_per_s


def test_gpu_accelerates_fp16_beyond_fp32() -> None:
    gpu = load_profile("gpu-fp16")
    rates = {p: t.effective_macs_per_s for p, t in gpu.precisions.items()}
    assert rates["fp16"] > rates["fp32"]
    assert gpu.emulator == "fp16"
    assert gpu.quantization.activations.symmetric


def test_mcu_has_no_fallback_processor() -> None:
    mcu = load_profile("mcu-cortex-m")
    assert mcu.host is None
    assert mcu.integer_only
    assert mcu.memory.ram_bytes == 512 * 1024


def test_qualcomm_htp_runs_16x8() -> None:
    htp = load_profile("qualcomm-htp")
    assert set(htp.precisions) == {"int8", "int16"}
    assert htp.precisions["int16"].effective_macs_per_s < htp.precisions["int8"].effective_macs_per_s
    assert "uint16" in htp.quantization.activations.dtype
    assert set(htp.precisions_for("MatMul")) == {"int8", "int16"}


# --- user profiles and errors -----------------------------------------------------------------------------------


def test_user_yaml_loads_by_path(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal_profile(), "my-device.yaml")
    profile = load_profile(str(path))
    assert profile.name == "toy-npu"
    assert profile.ops["Resize"]["int8"].constraints[0].in_ == ["nearest"]
    assert load_profile(path) == profile


def test_unknown_top_level_key(tmp_path: Path) -> None:
    data = _minimal_profile() | {"colour": "red"}
    assert "unknown key 'colour'" in _load_error(_write(tmp_path, data))


def test_unknown_nested_key(tmp_path: Path) -> None:
    data = _minimal_profile()
    data["quantization"]["activations"]["symetric"] = True
    assert "unknown key 'quantization.activations.symetric'" in _load_error(_write(tmp_path, data))


def test_misspelt_required_nested_key(tmp_path: Path) -> None:
    data = _minimal_profile()
    data["quantization"]["activations"]["dtyp"] = data["quantization"]["activations"].pop("dtype")
    assert "quantization.activations.dtyp" in _load_error(_write(tmp_path, data))


def test_missing_required_key(tmp_path: Path) -> None:
    data = _minimal_profile()
    del data["emulator"]
    assert "missing key 'emulator'" in _load_error(_write(tmp_path, data))


def test_wrong_type(tmp_path: Path) -> None:
    data = _minimal_profile()
    data["precisions"]["int8"]["peak_macs_per_s"] = "fast"
    assert "precisions.int8.peak_macs_per_s" in _load_error(_write(tmp_path, data))


def test_integer_only_device_with_fp32(tmp_path: Path) -> None:
    data = _minimal_profile()
    data["precisions"]["fp32"] = {"peak_macs_per_s": 1.0e9}
    assert "integer_only" in _load_error(_write(tmp_path, data))


def test_op_table_with_undeclared_precision(tmp_path: Path) -> None:
    data = _minimal_profile()
    data["ops"]["Conv"]["fp16"] = {}
    message = _load_error(_write(tmp_path, data))
    assert "ops.Conv" in message
    assert "fp16" in message


def test_constraint_with_two_kinds(tmp_path: Path) -> None:
    data = _minimal_profile()
    data["ops"]["Conv"]["int8"]["constraints"] = [{"check": "same_dilation_xy", "max_elements": 100}]
    message = _load_error(_write(tmp_path, data))
    assert "ops.Conv.int8.constraints.0" in message
    assert "exactly one" in message


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: toy\nprecisions: {int8: [unclosed\n", encoding="utf-8")
    assert "not valid YAML" in _load_error(path)


def test_python_object_tag_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        f"name: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n",
        encoding="utf-8",
    )
    assert "not valid YAML" in _load_error(path)
    assert not marker.exists()


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- edgetpu\n", encoding="utf-8")
    assert "mapping" in _load_error(path)


def test_missing_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert "not found" in _load_error(path)


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("no-such-device")
    message = str(info.value)
    assert "no-such-device" in message
    for name in SHIPPED:
        assert name in message


# --- JSON schema ------------------------------------------------------------------------------------------------


def test_json_schema_parses_and_forbids_additional_properties() -> None:
    schema = json.loads(profile_json_schema())
    assert schema["additionalProperties"] is False
    assert {"name", "precisions", "quantization", "emulator"} <= set(schema["required"])
    objects = [d for d in schema["$defs"].values() if "properties" in d]
    assert objects
    assert all(d.get("additionalProperties") is False for d in objects)
    constraint = schema["$defs"]["Constraint"]["properties"]
    assert "in" in constraint
