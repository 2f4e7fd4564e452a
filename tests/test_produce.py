"""Producing the planned model: prepare, quantize, verify, and walk the plan's fallbacks or keep float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import ModelProto

from autoptq import api
from autoptq.decide import candidates as candidates_module
from autoptq.decide.candidates import measured_choices
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan, load_tree, plan_model
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.runner import measurable_here
from autoptq.model.calibration import Dataset, load_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.pipeline import produce as produce_module
from autoptq.pipeline.produce import candidates, produce
from autoptq.techniques import static as static_module
from autoptq.techniques.common import QuantizationError
from autoptq.techniques.recipe import Recipe
from tests.conftest import dense_head_convnet

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


def _convnet_with_outliers_in_calibration() -> tuple[ModelGraph, Dataset, Dataset]:
    """A convnet (Conv, Relu, a dense head) that full int8 runs about 0.7x float on x86-vnni (weight-only about
    0.83x). Its calibration samples are N(0,1) with one value in 2,000 sixty times larger, its validation samples
    clean: min-max ranges stretch to the outliers (about 11 dB output SQNR), entropy ranges do not (about 24 dB)."""
    rng = np.random.default_rng(0)
    channels, side = 8, 32
    model = dense_head_convnet(rng, channels, side)
    inputs = rng.standard_normal((24, 1, channels, side, side))
    inputs[:16][rng.random(inputs[:16].shape) < 0.0005] *= 60
    samples = [{"x": sample.astype(np.float32)} for sample in inputs]
    return load_model(model), Dataset(samples[:16], None, "calibration"), Dataset(samples[16:], None, "validation")


@pytest.fixture(scope="module")
def outliers() -> tuple[ModelGraph, Dataset, Dataset]:
    if not measurable_here(load_profile("x86-vnni")):
        pytest.skip("this machine does not stand in for x86-vnni")
    return _convnet_with_outliers_in_calibration()


def _chosen(outcome: Any) -> Any:
    return next(a for a in outcome.attempts if a.verification is outcome.verification)


def test_the_measured_pick_takes_its_most_faithful_ranges(outliers: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = outliers
    outcome = produce(
        Job(graph, load_profile("x86-vnni"), calibration, validation), plan_for(graph, "x86-vnni", calibration)
    )
    chosen = _chosen(outcome)
    assert chosen.technique == "full_int8"
    # The pick's recipe with every other calibration method x bias correction, named after it, judged untimed: the
    # same kernels, so the pick's measured latency.
    pick = chosen.step.split(" + ")[0]
    variants = [a for a in outcome.attempts if a.step.startswith(f"{pick} + ")]
    assert sorted(a.step.removeprefix(f"{pick} + ") for a in variants) == [
        "entropy calibration",
        "entropy calibration + bias correction",
        "minmax calibration + bias correction",
        "percentile calibration",
        "percentile calibration + bias correction",
    ]
    measured = next(a for a in outcome.attempts if a.step == pick and a.accepted)
    assert all(a.verification.latency == measured.verification.latency for a in variants)
    # Entropy ranges ignore the outliers: far more faithful than the min-max pick, and chosen.
    assert chosen.step.startswith(f"{pick} + entropy calibration")
    assert sqnr(chosen) > sqnr(measured) + 6


def test_a_faster_candidate_rejected_on_fidelity_alone_passes_with_other_ranges(
    outliers: tuple[ModelGraph, Dataset, Dataset],
) -> None:
    # A floor of 13 dB: every min-max static candidate (about 11 dB) fails it, weight-only (about 40 dB) passes.
    graph, calibration, validation = outliers
    job = Job(graph, load_profile("x86-vnni"), calibration, validation, min_sqnr_db=13.0)
    outcome = produce(job, plan_for(graph, "x86-vnni", calibration))
    static = [a for a in outcome.attempts if a.technique == "full_int8" and " + " not in a.step]
    assert static and not any(a.accepted for a in static)
    assert all({p.code for p in a.verification.issues} == {"below_sqnr_floor"} for a in static if a.verification)
    # The static candidates ran faster than weight-only: with entropy ranges one passes and is chosen.
    chosen = _chosen(outcome)
    base = next(a for a in static if chosen.step.startswith(f"{a.step} + "))
    assert chosen.technique == "full_int8" and "entropy calibration" in chosen.step
    assert chosen.verification.latency == base.verification.latency and sqnr(chosen) >= 13.0
    assert any(a.technique == "weight_only_int8" and a.accepted for a in outcome.attempts)


def sqnr(attempt: Any) -> float:
    return min(f.sqnr_db for f in attempt.verification.fidelity)


def test_the_handful_times_each_weight_only_candidate_at_both_granularities(
    outliers: tuple[ModelGraph, Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(candidates_module, "MEASURED_CHOICES", 2)  # the plan and weight-only's best: no room left
    graph, calibration, validation = outliers
    job = Job(graph, load_profile("x86-vnni"), calibration, validation)
    plan = plan_for(graph, "x86-vnni", calibration)
    handful = measured_choices(candidates(job, plan), job, plan)
    dynamic = [c.recipe for c in handful if c.technique == "weight_only_int8" and "defaults" not in c.step]
    assert dynamic
    for recipe in dynamic:
        assert recipe.model_copy(update={"per_channel": not recipe.per_channel}) in dynamic


def test_range_knobs_leave_the_kernels_and_formats_do_not() -> None:
    # What decides that two candidates share one latency (the range variants and the candidates rejected on
    # fidelity inherit the timing of a passed candidate with the same kernels).
    base = Recipe(per_channel=True, op_types_to_quantize=["Conv"])
    ranged = base.model_copy(update={"calibration_method": "entropy", "bias_correction": True})
    assert produce_module._kernels(ranged) == produce_module._kernels(base)
    assert produce_module._kernels(base.model_copy(update={"quant_format": "qoperator"})) != produce_module._kernels(
        base
    )
    assert produce_module._kernels(base.model_copy(update={"per_channel": False})) != produce_module._kernels(base)
