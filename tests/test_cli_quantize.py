"""`autoptq quantize`, `autoptq plan --apply` and `autoptq variants` end to end on the shipped example."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto

import autoptq
from autoptq.evaluate.runner import ModelRunner
from autoptq.model.intio import read_integer_io

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RunCli = Callable[[list[object]], tuple[int, str, str]]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A private copy of the example model, so its bytes and mtime can be watched."""
    source = tmp_path / "input" / "digits_cnn.onnx"
    source.parent.mkdir()
    shutil.copy2(EXAMPLES / "digits_cnn.onnx", source)
    return source


CALIB = EXAMPLES / "calib.npz"
VAL = EXAMPLES / "val.npz"


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


# -- autoptq quantize -------------------------------------------------------------------------------------------------


def test_quantize_for_the_edgetpu(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    before = snapshot(model)
    out = tmp_path / "out" / "digits_int8.onnx"
    out.parent.mkdir()
    code, stdout, stderr = run_cli(["quantize", model, "--target", "edgetpu", "--data", CALIB, "--val", VAL, "-o", out])
    assert code == 0, stdout + stderr
    assert f"Produced: full_int8 -> {out}" in stdout
    assert "accuracy: float 0.9833, quantized" in stdout
    assert snapshot(model) == before
    assert leftovers(out.parent) == []
    produced = onnx.load(str(out))
    onnx.checker.check_model(produced)
    assert produced.graph.input[0].type.tensor_type.elem_type == TensorProto.INT8
    integer_io = read_integer_io(produced)
    assert [io.name for io in integer_io] == ["input", "logits"]
    # The written model reproduces the float model through its recorded integer I/O.
    data = np.load(VAL)
    float_runner, runner = ModelRunner(onnx.load(str(model))), ModelRunner(produced, integer_io)
    agree = [
        np.argmax(float_runner.run({"input": x[None]})[0]) == np.argmax(runner.run({"input": x[None]})[0])
        for x in data["input"][:50]
    ]
    assert np.mean(agree) >= 0.96


def test_quantize_with_a_technique_override(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "htp16.onnx"
    code, stdout, stderr = run_cli(
        ["quantize", model, "-t", "qualcomm-htp", "-d", CALIB, "--technique", "int16x8", "-o", out, "-f", "json"]
    )
    assert code == 0, stdout + stderr
    document = json.loads(stdout)
    result = document["results"][0]
    assert result["technique"] == "int16x8" and result["planned_technique"] == "int16x8"
    assert result["applied"]["recipe"]["activation_dtype"] in ("int16", "uint16")
    assert [a["step"] for a in result["attempts"]] == ["plan"]
    produced = onnx.load(str(out))
    zero_points = {i.data_type for i in produced.graph.initializer if i.name.endswith("_zero_point")}
    assert zero_points & {TensorProto.INT16, TensorProto.UINT16}


def test_quantize_that_cannot_beat_float_writes_float_and_exits_1(run_cli: RunCli, model: Path, tmp_path: Path):
    # The tiny digits model in int8 runs ~1.3x slower than float on this CPU: verification measures it and refuses;
    # the calibration fallbacks cannot change speed, so they are skipped, not retried.
    out = tmp_path / "kept.onnx"
    code, stdout, _ = run_cli(["quantize", model, "-t", "x86-vnni", "-d", CALIB, "--technique", "full_int8", "-o", out])
    assert code == 1
    assert "Produced: none (float model kept)" in stdout
    assert "rejected plan (full_int8): slower than float on the host" in stdout
    assert out.read_bytes() == model.read_bytes()


def test_quantize_with_an_unreachable_budget_writes_the_closest_and_exits_1(
    run_cli: RunCli, model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "closest.onnx"
    code, stdout, stderr = run_cli(["quantize", model, "-t", "edgetpu", "-d", CALIB, "--min-sqnr", "200", "-o", out])
    assert code == 1
    assert "BUDGET NOT MET" in stdout and "NO candidate meets the budget" in stdout
    assert "trial 1: plan (full_int8)" in stderr  # progress goes to stderr
    produced = onnx.load(str(out))
    assert any(node.op_type == "QuantizeLinear" for node in produced.graph.node)  # a device model, not float


def test_quantize_refuses_to_overwrite_the_input(run_cli: RunCli, model: Path) -> None:
    before = snapshot(model)
    code, _, stderr = run_cli(["quantize", model, "-t", "edgetpu", "-d", CALIB, "-o", model])
    assert code == 2
    assert "refusing to overwrite the input model" in stderr
    assert snapshot(model) == before
    # The same file through another spelling of its path.
    code, _, _ = run_cli(
        ["quantize", model, "-t", "edgetpu", "-d", CALIB, "-o", model.parent / ".." / "input" / model.name]
    )
    assert code == 2
    assert snapshot(model) == before
    assert leftovers(model.parent) == []


def test_quantize_refuses_a_directory_as_output(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    code, _, stderr = run_cli(["quantize", model, "-t", "edgetpu", "-d", CALIB, "-o", folder])
    assert code == 2
    assert "is a directory" in stderr
    assert list(folder.iterdir()) == []


def test_quantize_without_data_for_an_integer_only_target_refuses(run_cli: RunCli, model: Path, tmp_path: Path):
    out = tmp_path / "nodata.onnx"
    code, stdout, stderr = run_cli(["quantize", model, "-t", "edgetpu", "-o", out])
    assert code in (0, 1), stderr
    assert "Traceback" not in stdout + stderr and "internal error" not in stderr
    assert "Produced: none (float model kept)" in stdout
    assert "representative data" in stdout and "--data" in stdout


def test_quantize_with_synthetic_calibration_warns_loudly(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "synthetic.onnx"
    code, stdout, stderr = run_cli(["quantize", model, "-t", "edgetpu", "--synthetic-calibration", "-o", out])
    assert code in (0, 1), stderr
    assert "WARNING: calibrated on SYNTHETIC data" in stdout
    assert out.is_file()


def test_plan_apply_produces_the_planned_model(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    before = snapshot(model)
    out = tmp_path / "applied.onnx"
    code, stdout, stderr = run_cli(["plan", model, "-t", "gpu-fp16", "-d", CALIB, "--apply", "-o", out])
    assert code == 0, stdout + stderr
    assert "Technique: fp16" in stdout
    assert f"Produced: fp16 -> {out}" in stdout
    produced = onnx.load(str(out))
    onnx.checker.check_model(produced)
    assert any(i.data_type == TensorProto.FLOAT16 for i in produced.graph.initializer)
    assert snapshot(model) == before
    assert leftovers(tmp_path) == []


def test_plan_apply_json_is_one_document(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    code, stdout, stderr = run_cli(
        ["plan", model, "-t", "gpu-fp16", "-d", CALIB, "--apply", "-o", tmp_path / "a.onnx", "-f", "json"]
    )
    assert code == 0, stderr
    json.loads(stdout)


def test_plan_apply_needs_an_output(run_cli: RunCli, model: Path) -> None:
    code, _, stderr = run_cli(["plan", model, "-t", "gpu-fp16", "-d", CALIB, "--apply"])
    assert code == 2
    assert "--apply needs" in stderr


# -- autoptq variants -------------------------------------------------------------------------------------------------

TARGETS = ["edgetpu", "x86-vnni", "gpu-fp16"]


def run_variants(run_cli: RunCli, model: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return run_cli(["variants", model, "--targets", ",".join(TARGETS), "--data", CALIB, "-o", out, *extra])


def test_variants_writes_every_file_with_a_truthful_manifest(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    before = snapshot(model)
    out = tmp_path / "variants"
    code, stdout, stderr = run_variants(run_cli, model, out)
    assert code == 0, stdout + stderr
    assert snapshot(model) == before
    for target in TARGETS:
        assert (out / target / "model.onnx").is_file()
    assert {p.name for p in out.iterdir()} == {
        *TARGETS,
        "manifest.json",
        "report.md",
        "report.html",
        "measurements.json",
    }
    assert leftovers(out) == []

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["autoptq_version"] == autoptq.__version__
    assert manifest["onnx_version"] == onnx.__version__
    assert manifest["onnxruntime_version"] == onnxruntime.__version__
    assert manifest["input_model"] == {
        "name": "digits_cnn.onnx",
        "sha256": sha256_of(model),
        "size_bytes": model.stat().st_size,
    }
    assert manifest["data"]["synthetic"] is False
    assert manifest["data"]["source"] == "calib.npz"
    variants = {v["target"]: v for v in manifest["variants"]}
    assert list(variants) == TARGETS
    for target, variant in variants.items():
        for key in ("target", "technique", "recipe", "path", "size_bytes", "sha256", "verification", "warnings"):
            assert key in variant, (target, key)
        path = out / variant["path"]
        assert variant["path"] == f"{target}/model.onnx"
        assert variant["sha256"] == sha256_of(path)
        assert variant["size_bytes"] == path.stat().st_size
        onnx.checker.check_model(onnx.load(str(path)))
    assert variants["edgetpu"]["technique"] == "full_int8"
    assert variants["edgetpu"]["verification"]["passed"] is True
    assert variants["edgetpu"]["recipe"]["io_dtype"] == "int8"
    assert variants["gpu-fp16"]["technique"] == "fp16"
    assert variants["x86-vnni"]["kept_float"] is True
    assert variants["x86-vnni"]["sha256"] == sha256_of(model), "float kept means the input bytes, unchanged"
    assert variants["x86-vnni"]["recipe"] is None
    assert variants["x86-vnni"]["preparation"] == [], "the float model was handed back unprepared"

    report = (out / "report.md").read_text()
    assert report.startswith("# Variants of digits_cnn.onnx")
    for target in TARGETS:
        assert f"## {target}:" in report
    measurements = json.loads((out / "measurements.json").read_text())
    assert set(measurements) == set(TARGETS)
    for target in TARGETS:
        assert f"{target}/model.onnx" in stdout


def test_variants_are_deterministic(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_variants(run_cli, model, first)[0] == 0
    assert run_variants(run_cli, model, second)[0] == 0
    for target in TARGETS:
        assert (first / target / "model.onnx").read_bytes() == (second / target / "model.onnx").read_bytes(), target
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert (first / "report.md").read_bytes() == (second / "report.md").read_bytes()
    manifest = (first / "manifest.json").read_text()
    assert str(tmp_path) not in manifest and str(EXAMPLES) not in manifest, "no absolute paths in the manifest"


def test_variants_rerun_into_the_same_folder_replaces_the_files(run_cli: RunCli, model: Path, tmp_path: Path):
    out = tmp_path / "again"
    assert run_variants(run_cli, model, out)[0] == 0
    manifest = (out / "manifest.json").read_bytes()
    assert run_variants(run_cli, model, out)[0] == 0
    assert (out / "manifest.json").read_bytes() == manifest
    assert leftovers(out) == []


def test_variants_refuses_the_input_file_as_output_folder(run_cli: RunCli, model: Path) -> None:
    before = snapshot(model)
    code, _, stderr = run_variants(run_cli, model, model)
    assert code == 2
    assert "autoptq: error:" in stderr
    assert snapshot(model) == before


def test_variants_refuses_an_output_folder_that_would_overwrite_the_input(run_cli: RunCli, tmp_path: Path) -> None:
    folder = tmp_path / "edgetpu"
    folder.mkdir()
    victim = folder / "model.onnx"
    shutil.copy2(EXAMPLES / "digits_cnn.onnx", victim)
    before = snapshot(victim)
    code, _, stderr = run_variants(run_cli, victim, tmp_path)
    assert code == 2
    assert "refusing to overwrite the input model" in stderr
    assert snapshot(victim) == before


def test_variants_with_synthetic_calibration_is_flagged(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    code, _, stderr = run_cli(
        ["variants", model, "--targets", "edgetpu,gpu-fp16", "--synthetic-calibration", "-o", out]
    )
    assert code in (0, 1), stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["synthetic"] is True
    edgetpu = next(v for v in manifest["variants"] if v["target"] == "edgetpu")
    assert any("SYNTHETIC" in w for w in edgetpu["warnings"])
    assert "SYNTHETIC" in (out / "report.md").read_text()


def test_variants_with_synthetic_calibration_warns_on_the_console(run_cli: RunCli, model: Path, tmp_path: Path):
    code, stdout, stderr = run_cli(
        ["variants", model, "--targets", "edgetpu", "--synthetic-calibration", "-o", tmp_path / "synthetic"]
    )
    assert code in (0, 1), stderr
    assert "SYNTHETIC" in stdout + stderr


def test_variants_without_data_refuses_integer_only_targets(run_cli: RunCli, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "nodata"
    code, stdout, stderr = run_cli(["variants", model, "--targets", "edgetpu,gpu-fp16", "-o", out])
    assert code in (0, 1), stderr
    assert "Traceback" not in stdout + stderr and "internal error" not in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    edgetpu = next(v for v in manifest["variants"] if v["target"] == "edgetpu")
    assert edgetpu["planned_technique"] == "none" and edgetpu["kept_float"] is True
    assert "representative data" in edgetpu["reason"]
    assert manifest["data"] is None
