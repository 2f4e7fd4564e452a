"""Knobs of the recipe space beyond the first ones (issue 11): the QOperator format on onnxruntime CPU targets,
calibration ranges shared between static candidates, the measured check of a cost-guess float plan, and the early
stop of calibration fallbacks that cannot help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoptq.api import QuantizeOptions, plan_for
from autoptq.decide.candidates import Candidate, candidates, measured_choices, predicted_too_slow
from autoptq.decide.hostcost import (
    HostTable,
    NodeTiming,
    calibrate_host,
    machine_id,
    predicted_ratio,
    signature,
    write_table,
)
from autoptq.decide.job import Job
from autoptq.decide.planner import HOST_TABLE_BASIS, UserGoals, device_conformant_recipe, load_tree, plan_model
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.evaluation import Problem
from autoptq.evaluate.metrics import sqnr_db
from autoptq.evaluate.runner import ModelRunner, measurable_here
from autoptq.evaluate.verify import Verification
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, load_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.pipeline.produce import Attempt, _calibration_can_help, produce
from autoptq.techniques import qdq
from autoptq.techniques.common import QuantizationError
from autoptq.techniques.qdq import ranges_file, static_qdq
from autoptq.techniques.recipe import Recipe
from autoptq.techniques.space import full_int8_space, quant_formats, smooth_quant_installed, smooth_quant_offered

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def digits() -> ModelGraph:
    return load_model(EXAMPLES / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def calibration(digits: ModelGraph) -> Dataset:
    return load_dataset(EXAMPLES / "calib.npz", digits).take(32)


@pytest.fixture(scope="module")
def validation(digits: ModelGraph) -> Dataset:
    return load_dataset(EXAMPLES / "val.npz", digits).take(16)


def test_qoperator_is_offered_only_where_onnxruntime_s_cpu_runs_the_model() -> None:
    assert quant_formats(load_profile("x86-vnni")) == ["qdq", "qoperator"]
    assert quant_formats(load_profile("arm-a76")) == ["qdq", "qoperator"]
    for name in ("edgetpu", "mcu-cortex-m", "tflite-int8", "gpu-fp16"):
        assert quant_formats(load_profile(name)) == ["qdq"], name
    graph = load_model(zoo.transformer_block())
    x86 = full_int8_space(load_profile("x86-vnni"), graph, Recipe())
    assert {r.quant_format for r in x86} == {"qdq", "qoperator"}
    assert all(r.quant_format == "qdq" for r in full_int8_space(load_profile("edgetpu"), graph, Recipe()))
    # The device's rules stay the hard limit: a QOperator recipe is made QDQ for a device that cannot read it.
    asked = Recipe(quant_format="qoperator")
    assert device_conformant_recipe(asked, "full_int8", load_profile("edgetpu"), graph, None).quant_format == "qdq"
    assert device_conformant_recipe(asked, "full_int8", load_profile("x86-vnni"), graph, None).quant_format == (
        "qoperator"
    )


def test_qoperator_writes_qlinear_ops_with_the_same_outputs_as_qdq(
    digits: ModelGraph, calibration: Dataset, validation: Dataset, tmp_path: Path
) -> None:
    recipe = Recipe(per_channel=True)
    qdq = static_qdq(digits.model, recipe, calibration, "full_int8", calibration_cache=tmp_path / "r.json").model
    qop_recipe = recipe.model_copy(update={"quant_format": "qoperator"})
    qop = static_qdq(digits.model, qop_recipe, calibration, "full_int8", calibration_cache=tmp_path / "r.json")
    ops = {n.op_type for n in qop.model.graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert "QLinearConv" not in {n.op_type for n in qdq.graph.node}
    assert qop.applied.quantized_nodes >= 2
    float_runner, qdq_runner, qop_runner = ModelRunner(digits.model), ModelRunner(qdq), ModelRunner(qop.model)
    reference = np.concatenate([float_runner.run(s)[0] for s in validation.samples])
    from_qdq = np.concatenate([qdq_runner.run(s)[0] for s in validation.samples])
    from_qop = np.concatenate([qop_runner.run(s)[0] for s in validation.samples])
    # Same integer arithmetic in two spellings: both close to float, and to each other.
    assert sqnr_db(reference, from_qop) > 20
    assert sqnr_db(from_qdq, from_qop) > 30


def test_static_candidates_share_one_calibration_per_method(
    monkeypatch: pytest.MonkeyPatch, digits: ModelGraph, calibration: Dataset, validation: Dataset
) -> None:
    profile = load_profile("x86-vnni")
    if not measurable_here(profile):
        pytest.skip("this machine does not stand in for x86-vnni")
    calls: list[str] = []
    real = qdq.collect_ranges

    def counting(source: Path, samples: Dataset, recipe: Recipe, folder: Path, cache: Path | None, *rest: Any) -> Any:
        calls.append(recipe.calibration_method)
        assert recipe.op_types_to_quantize == [], "a shared cache holds the ranges of every tensor"
        return real(source, samples, recipe, folder, cache, *rest)

    monkeypatch.setattr(qdq, "collect_ranges", counting)
    plan = plan_for(digits, profile, load_tree(), calibration, QuantizeOptions(technique="full_int8"))
    outcome = produce(Job(digits, profile, calibration, validation), plan)
    static = [a for a in outcome.attempts if a.technique == "full_int8" and a.verification is not None]
    assert len(static) >= 2, "the measured handful has several static candidates"
    assert calls == ["minmax"], "one min-max calibration for all of them"


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_the_ranges_cache_drops_the_histograms_and_quantizes_to_the_same_bytes(
    digits: ModelGraph, calibration: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    recipe = Recipe(calibration_method=method)
    lean, full = tmp_path / "lean.json", tmp_path / "full.json"
    lean_model = static_qdq(digits.model, recipe, calibration, "full_int8", calibration_cache=lean).model
    monkeypatch.setattr(qdq, "without_histograms", lambda ranges: ranges)
    full_model = static_qdq(digits.model, recipe, calibration, "full_int8", calibration_cache=full).model
    assert '"hist"' in full.read_text() and '"hist"' not in lean.read_text()
    if method == "entropy":  # its 2048-bin histogram per tensor: 645 kB against 1 kB of ranges here
        assert lean.stat().st_size * 100 < full.stat().st_size
    assert lean_model.SerializeToString(deterministic=True) == full_model.SerializeToString(deterministic=True)


def test_names_of_shared_range_caches_follow_what_changes_the_ranges() -> None:
    base = Recipe()
    assert ranges_file(base) == ranges_file(base.model_copy(update={"per_channel": False, "quant_format": "qoperator"}))
    assert ranges_file(base) == ranges_file(base.model_copy(update={"activation_dtype": "int8"}))
    entropy = base.model_copy(update={"calibration_method": "entropy"})
    assert ranges_file(entropy) != ranges_file(entropy.model_copy(update={"activation_dtype": "uint16"}))
    assert ranges_file(base) != ranges_file(base.model_copy(update={"calibration_samples": 7}))
    percentile = base.model_copy(update={"calibration_method": "percentile"})
    assert ranges_file(percentile) != ranges_file(percentile.model_copy(update={"calibration_percentile": 99.9}))


def test_a_float_plan_stays_float_without_trying_anything(
    digits: ModelGraph, calibration: Dataset, validation: Dataset
) -> None:
    # The digits CNN on x86 ("too small"): every recipe measures 1.04-1.05x (weight-only) or ~1.3x (static) float,
    # so the tree's float stands rather than a choice that timing noise would flip from run to run.
    profile = load_profile("x86-vnni")
    plan = plan_for(digits, profile, load_tree(), calibration, QuantizeOptions())
    assert plan.technique == "none" and plan.leaf == "keep_float_too_small"
    job = Job(digits, profile, calibration, validation)
    assert candidates(job, plan) == []
    assert measured_choices([], job, plan) == []
    outcome = produce(Job(digits, profile, calibration, validation), plan)
    assert outcome.kept_float and outcome.attempts == []


def _failed(problems: list[Problem], technique: str = "full_int8") -> Attempt:
    verification = Verification(
        passed=False, issues=problems, samples=1, min_sqnr_db=10.0, size_bytes=1, float_size_bytes=2, size_ratio=0.5
    )
    return Attempt(step="plan", technique=technique, recipe=Recipe(), accepted=False, verification=verification)


def test_calibration_fallbacks_run_only_where_a_fidelity_failure_could_be_fixed() -> None:
    percentile = Candidate(
        step="percentile_calibration", technique="full_int8", recipe=Recipe(calibration_method="percentile")
    )
    slower = Problem(code="slower", text="slower than float on the host (measured ratio above 1.05)")
    low = Problem(code="below_sqnr_floor", text="output 'y' SQNR 3.0 dB is below the floor 10.0 dB")
    assert not _calibration_can_help(percentile, [_failed([slower])])
    assert not _calibration_can_help(percentile, [_failed([low, slower])]), "faster kernels are not calibration's"
    assert not _calibration_can_help(percentile, [_failed([low], technique="weight_only_int8")])
    assert _calibration_can_help(percentile, [_failed([slower]), _failed([low])])
    broken = Attempt(
        step="plan",
        technique="full_int8",
        recipe=Recipe(),
        accepted=False,
        error="quantizer failed",
        error_code="build_failed",
    )
    assert _calibration_can_help(percentile, [broken])
    skipped = broken.model_copy(
        update={"error": "skipped: no static candidate failed on fidelity alone", "error_code": "skipped"}
    )
    assert not _calibration_can_help(percentile, [skipped])


def test_smooth_quant_is_offered_on_matmul_heavy_models_where_installed() -> None:
    block = load_model(zoo.transformer_block())
    convnet = load_model(zoo.small_convnet(size=16))
    x86 = load_profile("x86-vnni")
    if not smooth_quant_installed():
        assert not smooth_quant_offered(x86, block)
        with pytest.raises(QuantizationError, match="smoothquant"):
            static_qdq(block.model, Recipe(smooth_quant=True), token_free_data(block), "full_int8")
        return
    assert smooth_quant_offered(x86, block) and not smooth_quant_offered(x86, convnet)
    assert not smooth_quant_offered(load_profile("edgetpu"), block), "its inserted Muls stay float"
    smoothed = [r for r in full_int8_space(x86, block, Recipe()) if r.smooth_quant]
    assert smoothed and all(r.per_channel and r.activation_dtype == "uint8" for r in smoothed)


@pytest.mark.skipif(not smooth_quant_installed(), reason="needs autoptq[smoothquant] (neural-compressor 2.x)")
def test_smooth_quant_keeps_the_float_function_and_its_muls_float() -> None:
    block = load_model(zoo.transformer_block())
    data = token_free_data(block)
    recipe = Recipe(smooth_quant=True, op_types_to_quantize=["MatMul"])
    result = static_qdq(block.model, recipe, data, "full_int8")
    added = [n for n in result.model.graph.node if n.name in result.applied.recipe.nodes_to_exclude]
    assert added and all(n.op_type == "Mul" for n in added)
    float_out = np.concatenate([ModelRunner(block.model).run(s)[0] for s in data.samples])
    quant_out = np.concatenate([ModelRunner(result.model).run(s)[0] for s in data.samples])
    assert sqnr_db(float_out, quant_out) > 15


def token_free_data(graph: ModelGraph, count: int = 8) -> Dataset:
    """Random float inputs for a model whose inputs are all float (the zoo's transformer block)."""
    rng = np.random.default_rng(0)
    samples = [
        {t.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in t.shape]).astype(np.float32)}
        for t in graph.inputs
        for _ in range(count)
    ]
    return Dataset(samples=samples, labels=None, source="random")


def test_the_plan_s_latency_ratio_comes_from_the_host_table_once_calibrated(
    digits: ModelGraph, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    profile = load_profile("x86-vnni")
    if not measurable_here(profile):
        pytest.skip("this machine does not stand in for x86-vnni")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    goals = UserGoals(prefer="size")  # the digits CNN's leaf is then weight-only, which the table times
    roofline = plan_model(digits, profile, load_tree(), None, goals)
    assert roofline.technique == "weight_only_int8" and HOST_TABLE_BASIS not in roofline.predicted.basis
    table = calibrate_host(profile, EXAMPLES / "digits_cnn.onnx", budget_s=0.1)
    write_table(table)
    hosted = plan_model(digits, profile, load_tree(), None, goals)
    expected = predicted_ratio(digits, profile, hosted.technique, hosted.recipe, table)
    assert hosted.predicted.latency_ratio == round(expected, 3)
    assert hosted.predicted.basis.endswith(HOST_TABLE_BASIS)
    # A device this machine does not stand in for keeps the roofline, table or not.
    arm = plan_model(digits, load_profile("arm-a76"), load_tree(), None, goals)
    assert HOST_TABLE_BASIS not in arm.predicted.basis


def test_the_measured_handful_screens_out_a_candidate_far_below_the_floor(
    digits: ModelGraph, calibration: Dataset, validation: Dataset
) -> None:
    profile = load_profile("x86-vnni")
    if not measurable_here(profile):
        pytest.skip("this machine does not stand in for x86-vnni")
    plan = plan_for(digits, profile, load_tree(), calibration, QuantizeOptions(technique="full_int8"))
    # The digits CNN quantizes at ~40-50 dB: a 200 dB floor is missed on the first samples by every candidate.
    outcome = produce(Job(digits, profile, calibration, validation, min_sqnr_db=200.0), plan)
    assert outcome.kept_float and outcome.attempts
    for attempt in outcome.attempts:
        assert attempt.verification is None and attempt.error is not None
        assert "on the first 4 validation samples" in attempt.error and "below the floor 200 dB" in attempt.error
    # At the default floor the same candidates are verified in full (the screen lets them through).
    normal = produce(Job(digits, profile, calibration, validation), plan)
    assert all(a.verification is not None for a in normal.attempts if a.error is None)
    assert not any("validation samples" in (a.error or "") for a in normal.attempts)


def test_a_size_rejection_before_verification_stops_the_calibration_fallbacks() -> None:
    percentile = Candidate(
        step="percentile_calibration", technique="full_int8", recipe=Recipe(calibration_method="percentile")
    )
    larger = Attempt(
        step="plan",
        technique="full_int8",
        recipe=Recipe(),
        accepted=False,
        error="file is not smaller than float (10 B vs 8 B): not verified further",
        error_code="not_smaller",
    )
    assert not _calibration_can_help(percentile, [larger])
    low = larger.model_copy(
        update={
            "error": "output SQNR 0.0 dB on the first 4 validation samples, more than 3 dB",
            "error_code": "below_sqnr_floor",
        }
    )
    assert _calibration_can_help(percentile, [low])


def test_the_handful_leaves_unbuilt_what_the_host_table_predicts_slower_than_float(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    profile = load_profile("x86-vnni")
    if not measurable_here(profile):
        pytest.skip("this machine does not stand in for x86-vnni")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    graph = load_model(zoo.mobilenet_style())
    data = token_free_data(graph, 8)
    # A table covering every node: weight-only int8 (ConvInteger, dynamic Gemm) 10x float, static int8 twice as fast.
    int8 = {"weight_only_int8": 10.0, "full_int8": 0.5, "full_int8:qoperator": 0.5}
    timings = [
        NodeTiming(signature=key, op_type=node.op_type, macs=node.macs, fp32_ms=1.0, int8_ms=int8,
                   border_ns_per_element=0.0)
        for node in graph.compute_nodes()
        if (key := signature(graph, node)) is not None
    ]  # fmt: skip
    write_table(HostTable(machine=machine_id(), onnxruntime_version="test", timings=timings))
    plan = plan_for(graph, profile, load_tree(), data, QuantizeOptions())
    job = Job(graph, profile, data, data)
    choices = measured_choices(candidates(job, plan), job, plan)
    assert any(c.technique == "weight_only_int8" for c in choices)
    outcome = produce(job, plan)
    unbuilt = [a for a in outcome.attempts if a.error and a.error.startswith("not built: the host table")]
    assert unbuilt and {a.technique for a in unbuilt} == {"weight_only_int8"}
    assert all(a.verification is None and a.applied is None for a in unbuilt)
    built = [a for a in outcome.attempts if a not in unbuilt]
    assert built and all(a.technique == "full_int8" for a in built)
    # Without a table (or one for other nodes) every candidate of the handful is built.
    (tmp_path / "autoptq").rename(tmp_path / "elsewhere")
    assert predicted_too_slow(choices, job) == []
