"""Producing the planned model: prepare, quantize, verify, and walk the plan's fallbacks or keep float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from onnx import ModelProto

from autoptq import api
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan, load_tree, plan_model
from autoptq.devices.profiles import load_profile
from autoptq.model.calibration import Dataset, load_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.pipeline.produce import candidates, produce
from autoptq.techniques import static as static_module
from autoptq.techniques.common import QuantizationError
from autoptq.techniques.recipe import Recipe

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FLOAT_ACCURACY = 0.9833


@pytest.fixture(scope="module")
def digits() -> ModelGraph:
    return load_model(EXAMPLES / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def calibration(digits: ModelGraph) -> Dataset:
    return load_dataset(EXAMPLES / "calib.npz", digits)


@pytest.fixture(scope="module")
def validation(digits: ModelGraph) -> Dataset:
    return load_dataset(EXAMPLES / "val.npz", digits)


def plan_for(graph: ModelGraph, target: str, data: Dataset | None) -> Plan:
    return plan_model(graph, load_profile(target), load_tree(None), data)


# -- the shipped trained example -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "technique"), [("edgetpu", "full_int8"), ("gpu-fp16", "fp16")])
def test_digits_keeps_accuracy_within_one_point(
    digits: ModelGraph, calibration: Dataset, validation: Dataset, target: str, technique: str
) -> None:
    profile = load_profile(target)
    plan = plan_for(digits, target, calibration)
    assert plan.technique == technique
    outcome = produce(Job(digits, profile, calibration, validation), plan)
    assert not outcome.kept_float, outcome.reason
    assert outcome.technique == technique
    assert outcome.reason == f"the planned {technique} passed verification"
    verification = outcome.verification
    assert verification is not None and verification.passed
    assert verification.samples == 360
    assert verification.accuracy_float == pytest.approx(FLOAT_ACCURACY, abs=1e-3)
    assert verification.accuracy_candidate is not None
    assert verification.accuracy_candidate >= verification.accuracy_float - 0.01
    assert verification.size_ratio < 0.6
    assert outcome.applied is not None and outcome.applied.technique == technique
    if target == "edgetpu":
        assert outcome.applied.recipe.activation_dtype == "int8"
        assert [io.name for io in outcome.applied.integer_io] == ["input", "logits"]
    assert len(outcome.model_bytes) == verification.size_bytes


# -- fallbacks -------------------------------------------------------------------------------------------------------


def test_candidates_follow_the_plans_fallbacks(digits: ModelGraph, calibration: Dataset) -> None:
    plan = plan_for(digits, "edgetpu", calibration)
    found = candidates(Job(digits, load_profile("edgetpu"), calibration, calibration), plan)
    steps = [c.step for c in found]
    expected = [name for name in ["plan", *plan.fallbacks] if name in steps]
    assert steps == expected
    assert steps[:4] == ["plan", "bias_correction", "percentile_calibration", "entropy_calibration"]
    assert "int16x8" not in steps, "the Edge TPU has no 16-bit activations"
    assert [c.recipe.calibration_method for c in found[:4]] == ["minmax", "minmax", "percentile", "entropy"]
    assert [c.recipe.bias_correction for c in found[:3]] == [False, True, False]
    assert all(c.recipe.activation_dtype == "int8" for c in found)

    htp = plan_for(digits, "qualcomm-htp", calibration)
    htp_steps = [c.step for c in candidates(Job(digits, load_profile("qualcomm-htp"), calibration, calibration), htp)]
    assert "int16x8" in htp_steps


def test_nothing_passes_keeps_float_and_says_what_was_tried(
    digits: ModelGraph, calibration: Dataset, validation: Dataset
) -> None:
    plan = plan_for(digits, "edgetpu", calibration)
    outcome = produce(Job(digits, load_profile("edgetpu"), calibration, validation.take(40), min_sqnr_db=200), plan)
    assert outcome.kept_float
    assert outcome.technique == "none"
    assert outcome.planned_technique == "full_int8"
    assert outcome.model_bytes == (EXAMPLES / "digits_cnn.onnx").read_bytes()
    assert outcome.verification is None and outcome.applied is None
    tried = [a.step for a in outcome.attempts]
    assert tried == ["plan", "bias_correction", "percentile_calibration", "entropy_calibration"]
    assert not any(a.accepted for a in outcome.attempts)
    reason = outcome.reason
    assert reason.startswith("no candidate beat float")
    positions = [reason.index(f"{step} (full_int8)") for step in tried]
    assert positions == sorted(positions), "the reason lists the steps in the order tried"
    assert "below the floor 200" in reason
    assert "integers only" in reason


def test_a_failing_quantizer_falls_back_to_percentile(
    monkeypatch: pytest.MonkeyPatch, digits: ModelGraph, calibration: Dataset, validation: Dataset
) -> None:
    real = static_module.static_qdq
    methods: list[str] = []

    def minmax_breaks(model: ModelProto, recipe: Recipe, data: Dataset, technique: str, **options: Any) -> object:
        methods.append(recipe.calibration_method)
        if recipe.calibration_method == "minmax":
            raise QuantizationError("onnxruntime static quantization failed: simulated")
        return real(model, recipe, data, technique, **options)

    monkeypatch.setattr(static_module, "static_qdq", minmax_breaks)
    plan = plan_for(digits, "edgetpu", calibration)
    outcome = produce(Job(digits, load_profile("edgetpu"), calibration, validation.take(60)), plan)
    # Bias correction (the first fallback) quantizes with min-max ranges too, and fails the same way.
    assert methods == ["minmax", "minmax", "percentile"]
    assert not outcome.kept_float
    assert outcome.technique == "full_int8"
    assert outcome.applied is not None and outcome.applied.recipe.calibration_method == "percentile"
    steps = [(a.step, a.accepted) for a in outcome.attempts]
    assert steps == [("plan", False), ("bias_correction", False), ("percentile_calibration", True)]
    assert outcome.attempts[0].error == "onnxruntime static quantization failed: simulated"
    assert outcome.reason.startswith("fell back to percentile_calibration (full_int8) after: plan (full_int8): ")
    assert "simulated" in outcome.reason


def test_a_plan_that_keeps_float_tries_nothing(digits: ModelGraph, validation: Dataset) -> None:
    plan = plan_for(digits, "edgetpu", None)
    assert plan.technique == "none"
    outcome = produce(Job(digits, load_profile("edgetpu"), None, validation.take(8)), plan)
    assert outcome.kept_float and outcome.attempts == []
    assert outcome.preparation == [], "the float model is handed back unprepared, so no preparation is reported"
    assert outcome.reason.startswith("the plan keeps float")
    assert outcome.model_bytes == (EXAMPLES / "digits_cnn.onnx").read_bytes()


def test_produce_leaves_the_model_untouched(digits: ModelGraph, calibration: Dataset, validation: Dataset) -> None:
    before = digits.model.SerializeToString()
    plan = plan_for(digits, "gpu-fp16", calibration)
    produce(Job(digits, load_profile("gpu-fp16"), calibration, validation.take(20)), plan)
    assert digits.model.SerializeToString() == before


def test_a_technique_override_has_no_fallbacks(digits: ModelGraph, calibration: Dataset) -> None:
    options = api.QuantizeOptions(technique="int16x8")
    plan = api.plan_for(digits, load_profile("qualcomm-htp"), load_tree(None), calibration, options)
    assert plan.technique == "int16x8" and plan.fallbacks == []
    assert plan.recipe.activation_dtype in ("int16", "uint16")
    assert any("overridden" in w for w in plan.warnings)
