"""`autoptq check` and `autoptq.api.check`: the trained digits model quantized and checked for every shipped profile,
the command line's JSON, exit codes and output file, and x86's u8 × s8 saturation seen through a check."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, helper

from autoptq import api
from autoptq.devices.profiles import load_profile, shipped_profile_names
from autoptq.errors import AutoptqError
from autoptq.evaluate.runner import measurable_here
from autoptq.model.calibration import Dataset
from autoptq.pipeline.check import CheckReport
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, save, tensor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOAT_ACCURACY = 0.9833  # examples/README.md
DEFAULT_TIER = {"integer": "exact", "fp16": "fp16-storage", "host": "host"}
X86 = platform.machine() in ("x86_64", "AMD64")
RunCli = Callable[[list[object]], tuple[int, str, str]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Private copies of the example files (a bad -o must never reach the shipped ones) and one quantized model per
    shipped profile, produced by `autoptq.api.quantize` with the example's calibration and validation data."""
    folder = tmp_path_factory.mktemp("check")
    paths = {name: folder / name for name in ("digits_cnn.onnx", "calib.npz", "val.npz")}
    for name, path in paths.items():
        shutil.copy2(EXAMPLES / name, path)
    found = {"model": paths["digits_cnn.onnx"], "calib": paths["calib.npz"], "val": paths["val.npz"]}
    for target in shipped_profile_names():
        found[target] = folder / f"digits.{target}.onnx"
    return found


@pytest.fixture(scope="module")
def produced(files: dict[str, Path]) -> dict[str, tuple[api.Plan, api.Outcome]]:
    return {
        target: api.quantize(files["model"], target, files[target], data=files["calib"], validation=files["val"])
        for target in shipped_profile_names()
    }


_REPORTS: dict[tuple[str, str | None], CheckReport] = {}


def checked(files: dict[str, Path], target: str, tier: str | None = None) -> CheckReport:
    """`api.check` of the model produced for `target`, on `target` (memoized: each check runs once per session)."""
    key = (target, tier)
    if key not in _REPORTS:
        _REPORTS[key] = api.check(files[target], target, reference=files["model"], data=files["val"], tier=tier)
    return _REPORTS[key]


# --- every shipped profile, end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", shipped_profile_names())
def test_the_digits_model_quantized_and_checked_for_every_shipped_profile(
    target: str, files: dict[str, Path], produced: dict[str, tuple[api.Plan, api.Outcome]]
) -> None:
    profile = load_profile(target)
    plan, outcome = produced[target]
    if outcome.kept_float:
        # The plan may keep float (a 62k-MAC model gains nothing from int8 on a CPU): what was written is the float
        # model, and it is checked on the target as it is.
        assert plan.technique == "none" and not profile.integer_only, outcome.reason
        assert outcome.reason.startswith("the plan keeps float: The model is too small"), outcome.reason
        assert onnx.load(files[target]) == onnx.load(files["model"])
    else:
        assert outcome.technique == {"integer": "full_int8", "fp16": "fp16"}[profile.emulator]
    report = checked(files, target)
    assert report.target == target
    assert report.tier == DEFAULT_TIER[profile.emulator]
    assert report.fidelity_statement.startswith(f"{report.tier} tier:")
    # Device rules: every model autoptq produced for a device (or float where the device runs float) conforms.
    assert report.device_rules.passed and report.device_rules.violations == []
    # Accuracy on the 360 labelled validation digits: the emulated device within one point of float.
    assert report.accuracy is not None
    assert report.accuracy.float == pytest.approx(FLOAT_ACCURACY, abs=5e-4)
    assert report.accuracy.emulated >= report.accuracy.float - 0.01
    assert report.accuracy.drop == pytest.approx(report.accuracy.float - report.accuracy.emulated, abs=1e-6)
    [fidelity] = report.fidelity
    assert fidelity.name == "logits" and fidelity.finite
    assert fidelity.sqnr_db > 25 and fidelity.cosine > 0.99 and fidelity.max_abs_diff < 2
    assert fidelity.top1_agreement is not None and fidelity.top1_agreement >= 0.98
    low, high = report.latency.estimate_ms
    assert 0 < low < high and report.latency.label == "estimate"
    assert (report.latency.measured_ratio is not None) == measurable_here(profile)
    assert report.memory.on_chip_param_bytes > 0 and report.memory.peak_activation_bytes > 0
    if profile.memory.ram_bytes is not None:
        assert report.memory.fits_ram is True
    assert report.passed and report.failures == []
    if outcome.kept_float and profile.emulator == "integer":
        # A float model on an integer emulator runs its ops in float32, each reported as such.
        assert {f.kind for f in report.findings} == {"float_op"}
    elif profile.emulator != "integer":
        assert report.findings == []


def test_the_fast_tier_on_the_edge_tpu_agrees_with_the_exact_tier(files: dict[str, Path], produced: dict) -> None:
    exact, fast = checked(files, "edgetpu"), checked(files, "edgetpu", "fast")
    assert (exact.tier, fast.tier) == ("exact", "fast")
    assert "TFLite's reference integer kernels" in exact.fidelity_statement
    assert "QLinearConv" in fast.fidelity_statement and "within ~1 LSB per layer" in fast.fidelity_statement
    # The tier changes the arithmetic, nothing else: the same rules, estimates and memory.
    assert fast.device_rules == exact.device_rules and fast.memory == exact.memory
    assert fast.latency.estimate_ms == exact.latency.estimate_ms
    assert fast.accuracy is not None and exact.accuracy is not None
    assert abs(fast.accuracy.emulated - exact.accuracy.emulated) <= 2 / 360  # at most two of 360 digits flip
    assert fast.accuracy.emulated >= fast.accuracy.float - 0.01
    assert abs(fast.fidelity[0].sqnr_db - exact.fidelity[0].sqnr_db) < 1.0
    assert exact.findings == []  # every op has an integer kernel in the exact tier
    # onnxruntime leaves some int8-activation kernels in float32 (here the 1-channel stem conv and the Gemm): the fast
    # tier names them, since there it can differ from the device by more than an LSB.
    assert {f.kind for f in fast.findings} <= {"float_kernel"}
    if fast.findings:
        assert f"{len(fast.findings)} compute node(s) ran in float32" in fast.fidelity_statement


def test_the_checks_of_the_integer_devices_agree_with_their_tflite_rounding(
    files: dict[str, Path], produced: dict
) -> None:
    edgetpu, mcu = checked(files, "edgetpu"), checked(files, "mcu-cortex-m")
    htp = checked(files, "qualcomm-htp")
    assert "gemmlowp double-rounding" in edgetpu.fidelity_statement
    assert "gemmlowp double-rounding" in mcu.fidelity_statement
    assert "TFLITE_SINGLE_ROUNDING" in htp.fidelity_statement
    assert mcu.memory.fits_flash is True and mcu.memory.flash_bytes is not None
    assert edgetpu.memory.streamed_param_bytes == 0 and edgetpu.memory.parameter_cache_bytes is not None


# --- the command line -------------------------------------------------------------------------------------------------


def cli_check(files: dict[str, Path], model: str | Path, *extra: object) -> list[object]:
    model_path = files[model] if isinstance(model, str) else model
    return ["check", model_path, "--reference", files["model"], "--data", files["val"], *extra]


def test_json_for_two_targets(run_cli: RunCli, files: dict[str, Path], produced: dict) -> None:
    code, out, err = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu", "-t", "x86-vnni", "--format", "json"))
    assert code == 0, out + err
    document = json.loads(out)
    assert document["kind"] == "check" and document["schema_version"] == 1
    results = {r["target"]: r for r in document["results"]}
    assert list(results) == ["edgetpu", "x86-vnni"]
    for result in results.values():
        assert {"target", "tier", "device_rules", "fidelity", "accuracy", "latency", "memory"} <= set(result)
        assert {"passed", "violations"} <= set(result["device_rules"])
        assert result["device_rules"]["passed"] is True and result["device_rules"]["violations"] == []
        [output] = result["fidelity"]
        assert {"name", "sqnr_db", "cosine", "max_abs_diff", "top1_agreement"} <= set(output)
        assert output["name"] == "logits" and output["top1_agreement"] >= 0.98
        assert set(result["accuracy"]) == {"float", "emulated", "drop"}
        assert result["accuracy"]["float"] == pytest.approx(FLOAT_ACCURACY, abs=5e-4)
        assert result["accuracy"]["emulated"] >= result["accuracy"]["float"] - 0.01
        low, high = result["latency"]["estimate_ms"]
        assert 0 < low < high and "measured_ratio" in result["latency"]
        assert {"on_chip_param_bytes", "streamed_param_bytes", "peak_activation_bytes"} <= set(result["memory"])
        assert result["passed"] is True
    assert results["edgetpu"]["tier"] == "exact" and results["x86-vnni"]["tier"] == "host"
    assert results["edgetpu"]["latency"]["measured_ratio"] is None  # nothing here stands in for an Edge TPU
    if X86:  # this machine stands in for an x86 CPU: the quantized model was timed against float side by side
        assert results["x86-vnni"]["latency"]["measured_ratio"] > 0
        assert "measured side by side" in results["x86-vnni"]["latency"]["measured_note"]


def test_the_fast_tier_on_the_command_line_and_the_table(
    run_cli: RunCli, files: dict[str, Path], produced: dict
) -> None:
    code, out, err = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu", "--tier", "fast", "-f", "json"))
    assert code == 0, err
    assert json.loads(out)["results"][0]["tier"] == "fast"
    code, out, err = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu"))
    assert code == 0, err
    assert "Target: edgetpu  tier: exact  verdict: PASS" in out
    assert "Device rules: passed" in out and "Accuracy: float 0.9833" in out and "Latency (estimate):" in out


def test_a_uint8_model_fails_the_int8_only_microcontroller(
    run_cli: RunCli, files: dict[str, Path], produced: dict
) -> None:
    """qualcomm-htp takes uint8 activations, mcu-cortex-m int8 only: the rules fail, the emulation still runs."""
    code, out, err = run_cli(cli_check(files, "qualcomm-htp", "-t", "mcu-cortex-m", "-f", "json"))
    assert code == 1, err
    [result] = json.loads(out)["results"]
    assert result["passed"] is False and result["device_rules"]["passed"] is False
    violations = result["device_rules"]["violations"]
    assert violations and {v["rule"] for v in violations} == {"activation_dtype"}
    assert any("is uint8; mcu-cortex-m activations must be int8" in v["detail"] for v in violations)
    assert any(f.startswith("device rule activation_dtype") for f in result["failures"])
    assert result["accuracy"]["emulated"] >= FLOAT_ACCURACY - 0.01  # the numbers are still there to read


def test_a_float_model_fails_the_edge_tpu(run_cli: RunCli, files: dict[str, Path]) -> None:
    code, out, err = run_cli(cli_check(files, "model", "-t", "edgetpu"))
    assert code == 1, err
    assert "verdict: FAIL" in out and "Device rules: FAILED" in out
    assert "integer_compute at conv1 (Conv)" in out and "edgetpu computes on integers only" in out


@pytest.fixture(scope="module")
def lossy(files: dict[str, Path]) -> Path:
    """The digits model for the Edge TPU with per-tensor weights and activation ranges clipped at the 90th
    percentile: device-conformant, but it loses a few points of accuracy."""
    calibration = api.load_data(files["calib"], api.as_graph(files["model"]))
    recipe = Recipe(
        activation_dtype="int8",
        io_dtype="int8",
        per_channel=False,
        calibration_method="percentile",
        calibration_percentile=90.0,
    )
    model = static_qdq(onnx.load(files["model"]), recipe, calibration, "full_int8").model
    path = files["model"].parent / "digits.lossy.onnx"
    onnx.save(model, path)
    return path


def test_budgets_fail_with_exit_1(run_cli: RunCli, files: dict[str, Path], produced: dict, lossy: Path) -> None:
    code, out, _ = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu", "--min-sqnr", "100", "-f", "json"))
    assert code == 1
    [result] = json.loads(out)["results"]
    assert result["device_rules"]["passed"] is True
    assert result["failures"] == [
        f"output 'logits': SQNR {result['fidelity'][0]['sqnr_db']:.1f} dB below --min-sqnr 100.0"
    ]
    code, _, _ = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu", "--min-sqnr", "20", "--max-drop", "0"))
    assert code == 0  # 41 dB and no accuracy lost
    code, out, _ = run_cli(cli_check(files, lossy, "-t", "edgetpu", "--max-drop", "0", "-f", "json"))
    assert code == 1
    [result] = json.loads(out)["results"]
    drop = result["accuracy"]["drop"]
    assert drop > 0 and result["device_rules"]["passed"] is True
    assert result["failures"] == [f"accuracy drop {drop:.4f} exceeds --max-drop 0.0"]
    code, _, _ = run_cli(cli_check(files, lossy, "-t", "edgetpu", "--max-drop", "1%"))
    assert code == 1
    code, _, _ = run_cli(cli_check(files, lossy, "-t", "edgetpu", "--max-drop", str(round(drop + 0.01, 3))))
    assert code == 0


def test_bad_input_exits_2(run_cli: RunCli, files: dict[str, Path], produced: dict, tmp_path: Path) -> None:
    base = ["--reference", files["model"], "--data", files["val"]]
    cases: list[tuple[list[object], str]] = [
        (["check", files["gpu-fp16"], "-t", "gpu-fp16", "--tier", "fast", *base], "does not apply to gpu-fp16"),
        (["check", files["x86-vnni"], "-t", "x86-vnni", "--tier", "exact", *base], "its tiers: host"),
        (["check", files["edgetpu"], "-t", "edgetpu", "--tier", "reference", *base], "its tiers: exact, fast"),
        (["check", tmp_path / "missing.onnx", "-t", "edgetpu", *base], "no such file"),
        (["check", files["edgetpu"], "-t", "no-such-device", *base], "no-such-device"),
        (["check", files["edgetpu"], "-t", "edgetpu", "--reference", tmp_path / "nope.onnx", "-d", files["val"]], ""),
        (["check", files["edgetpu"], "-t", "edgetpu", "-r", files["model"], "-d", tmp_path / "nope.npz"], "no such"),
    ]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    cases.append((["check", garbage, "-t", "edgetpu", *base], "garbage.onnx"))
    wrong_shape, wrong_name = tmp_path / "shape.npz", tmp_path / "name.npz"
    np.savez(wrong_shape, input=np.zeros((3, 1, 9, 9), np.float32))
    np.savez(wrong_name, pixels=np.zeros((3, 1, 8, 8), np.float32))
    for data, message in ((wrong_shape, "needs 8"), (wrong_name, "no array for model input 'input'")):
        cases.append((["check", files["edgetpu"], "-t", "edgetpu", "-r", files["model"], "-d", data], message))
    for args, message in cases:
        code, out, err = run_cli(args)
        assert code == 2, (args, out, err)
        assert out == "" and err.startswith("autoptq: error:"), (args, err)
        assert message in err, (args, err)


def test_a_quantized_model_that_does_not_match_its_reference_exits_2(
    run_cli: RunCli, files: dict[str, Path], tmp_path: Path
) -> None:
    other = build(
        [helper.make_node("Relu", ["pixels"], ["logits"])], [tensor("pixels", [1, 10])], [tensor("logits", [1, 10])]
    )
    code, _, err = run_cli(cli_check(files, save(other, tmp_path), "-t", "x86-vnni"))
    assert code == 2
    assert "input 'pixels' is not an input of the reference model" in err


def test_output_file(run_cli: RunCli, files: dict[str, Path], produced: dict, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("an older report\n")
    code, out, err = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu", "-f", "json", "-o", report))
    assert code == 0, err
    assert report.read_text() == out and json.loads(out)["results"][0]["target"] == "edgetpu"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # written through a temporary file and a rename
    # Refused before any work: the inputs, a folder, a missing folder; the existing file stays as it was.
    before = {path: path.read_bytes() for path in (files["edgetpu"], files["model"])}
    for target in (files["edgetpu"], files["model"], tmp_path, tmp_path / "missing" / "r.json"):
        code, out, err = run_cli(cli_check(files, "edgetpu", "-t", "edgetpu", "-o", target))
        assert code == 2 and out == "", err
        assert "refusing to overwrite the input model" in err or "folder" in err or "directory" in err, err
    assert {path: path.read_bytes() for path in before} == before
    # A failing check (exit 1) still writes its report; a usage error (exit 2) leaves the old one alone.
    code, _, _ = run_cli(cli_check(files, "model", "-t", "edgetpu", "-o", report))
    assert code == 1 and "Device rules: FAILED" in report.read_text()
    kept = report.read_text()
    code, _, _ = run_cli(cli_check(files, "edgetpu", "-t", "gpu-fp16", "--tier", "fast", "-o", report))
    assert code == 2 and report.read_text() == kept


def test_output_file_refuses_to_overwrite_the_data(run_cli: RunCli, files: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "val.npz"
    shutil.copy2(files["val"], data)
    before = data.read_bytes()
    code, _, _ = run_cli(["check", files["model"], "-t", "x86-vnni", "-r", files["model"], "-d", data, "-o", data])
    assert data.read_bytes() == before
    assert code == 2


def test_non_finite_emulated_outputs_fail_the_check() -> None:
    """A weight beyond the fp16 range becomes inf on an fp16 device: the check reports it and fails."""
    model = build(
        [helper.make_node("Mul", ["x", "w"], ["y"], name="scale")],
        [tensor("x", [1, 4])],
        [tensor("y", [1, 4])],
        [const("w", np.full(4, 1e5))],
    )
    data = Dataset([{"x": np.ones((1, 4), np.float32)}], None, "ones")
    report = api.check(model, "gpu-fp16", model, data)
    assert not report.passed and not report.fidelity[0].finite
    assert report.failures == ["output 'y' is NaN or inf under the emulator"]
    assert [(f.node, f.kind, f.count) for f in report.findings] == [("scale", "overflow", 4)]


def test_json_stays_valid_when_an_output_is_not_finite(run_cli: RunCli, tmp_path: Path) -> None:
    model = build(
        [helper.make_node("Mul", ["x", "w"], ["y"], name="scale")],
        [tensor("x", [1, 4])],
        [tensor("y", [1, 4])],
        [const("w", np.full(4, 1e5))],
    )
    path = save(model, tmp_path)
    np.savez(tmp_path / "x.npz", x=np.ones((2, 1, 4), np.float32))
    code, out, _ = run_cli(["check", path, "-t", "gpu-fp16", "-r", path, "-d", tmp_path / "x.npz", "-f", "json"])
    assert code == 1
    json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


# --- x86 without VNNI: int16 pair saturation, seen through `check` ----------------------------------------------------


def saturating_gemm() -> ModelProto:
    """Gemm 128 → 16 whose weights sit near ±max with adjacent pairs along K sharing a sign: with u8 inputs near
    255, every pair of u8 × s8 products is about 2 · 255 · 120 > 32767."""
    rng = np.random.default_rng(11)
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(64, 16)), 2, axis=0)
    weights = signs * rng.uniform(0.9, 1.0, size=(128, 16))
    return build(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")],
        [tensor("x", [1, 128])],
        [tensor("y", [1, 16])],
        [const("w", weights), const("b", rng.standard_normal(16) * 0.1)],
    )


def vnni_here() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return X86 and cpuinfo.is_file() and any(f in cpuinfo.read_text() for f in ("avx512_vnni", "avx_vnni"))


@pytest.fixture(scope="module")
def saturation() -> tuple[ModelProto, Dataset, dict[bool, ModelProto]]:
    float_model = saturating_gemm()
    rng = np.random.default_rng(3)
    samples = [{"x": rng.uniform(0.85, 1.0, (1, 128)).astype(np.float32)} for _ in range(12)]
    # Calibrated on [0, 1]: the data uses the top of the uint8 range.
    calibration = Dataset([{"x": np.zeros((1, 128), np.float32)}, *samples], None, "calibration")
    models = {
        reduce_range: static_qdq(
            float_model,
            Recipe(activation_dtype="uint8", reduce_range=reduce_range, calibration_samples=len(calibration)),
            calibration,
            "full_int8",
        ).model
        for reduce_range in (False, True)
    }
    return float_model, Dataset(samples, None, "held out"), models


def test_full_range_weights_saturate_on_x86_avx2_and_reduce_range_does_not(
    saturation: tuple[ModelProto, Dataset, dict[bool, ModelProto]],
) -> None:
    float_model, data, models = saturation
    full = api.check(models[False], "x86-avx2", float_model, data, min_sqnr_db=20)
    assert full.tier == "exact" and full.device_rules.passed
    assert full.fidelity[0].sqnr_db < 10  # the saturated int16 pair sums wreck the output
    assert [(f.node, f.kind, f.count) for f in full.findings] == [("fc", "saturation_risk", 64 * 16)]
    assert "vpmaddubsw" in full.fidelity_statement
    assert not full.passed and full.failures[0].startswith("output 'y': SQNR")
    reduced = api.check(models[True], "x86-avx2", float_model, data, min_sqnr_db=20)
    assert reduced.tier == "exact" and reduced.passed
    assert reduced.fidelity[0].sqnr_db > 30 and reduced.findings == []  # 7-bit weights: 255 · 63 · 2 < 32767
    # The fast tier is onnxruntime on this CPU: it only sees the saturation when this CPU saturates too.
    fast = api.check(models[False], "x86-avx2", float_model, data, tier="fast")
    assert "not modelled unless this CPU lacks VNNI" in fast.fidelity_statement
    if vnni_here():
        assert fast.fidelity[0].sqnr_db > 30


@pytest.mark.skipif(not vnni_here(), reason="the host tier runs onnxruntime on this CPU, which needs VNNI here")
def test_full_range_weights_are_fine_on_x86_vnni(
    saturation: tuple[ModelProto, Dataset, dict[bool, ModelProto]],
) -> None:
    float_model, data, models = saturation
    report = api.check(models[False], "x86-vnni", float_model, data, min_sqnr_db=20)
    assert report.tier == "host" and report.passed and report.findings == []
    assert report.fidelity[0].sqnr_db > 30
    assert report.latency.measured_ratio is not None


def test_api_check_errors(files: dict[str, Path], produced: dict) -> None:
    with pytest.raises(AutoptqError, match="does not apply"):
        api.check(files["edgetpu"], "x86-vnni", files["model"], files["val"], tier="fast")
    model = onnx.load(files["edgetpu"])
    del model.graph.output[:]
    model.graph.output.extend([tensor("a", [1, 10]), tensor("b", [1, 10])])
    with pytest.raises(AutoptqError, match="do not match the reference model's"):
        api.check(model, "edgetpu", files["model"], files["val"])


def test_a_qoperator_model_is_checked_on_the_fast_tier_saying_why(files: dict[str, Path], tmp_path: Path) -> None:
    """onnxruntime's QOperator format (a recipe knob for its CPU targets) names its own integer kernels: the exact
    tier, which rewrites QDQ models, hands over to the fast tier (onnxruntime itself) instead of failing."""
    model = onnx.load(str(files["model"]))
    arrays = np.load(files["calib"])
    name = model.graph.input[0].name
    samples = Dataset([{name: arrays[name][i : i + 1]} for i in range(16)], None, "calib")
    recipe = Recipe(calibration_samples=16, activation_dtype="uint8", quant_format="qoperator", reduce_range=True)
    quantized = static_qdq(model, recipe, samples, "full_int8").model
    assert any(n.op_type.startswith("QLinear") for n in quantized.graph.node)
    path = save(quantized, tmp_path, "qoperator.onnx")
    report = api.check(path, "x86-avx2", reference=files["model"], data=files["val"])
    assert report.tier == "fast"
    assert "QOperator format" in report.fidelity_statement
    assert report.fidelity[0].sqnr_db > 20
