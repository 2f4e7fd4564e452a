"""Accuracy-aware planning: sensitivity, the greedy walk, the Pareto choice, budgets and their limits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoptq.api import QuantizeOptions, plan_for
from autoptq.deadline import NO_DEADLINE, Deadline
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan, load_tree
from autoptq.decide.tuning import (
    SENSITIVITY_SAMPLES,
    STOPPED_BY_TIME_BUDGET,
    Budget,
    Trial,
    TuningResult,
    choose,
    pareto_front,
    search_evaluator,
    tune,
)
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.evaluator import Evaluator
from autoptq.model.calibration import Dataset, load_dataset
from autoptq.model.graph import ModelGraph, load_model
from bench.search_baselines import ExhaustiveSearch, every_subset_search
from tests.conftest import dense_head_convnet

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WIDTH = 32


def _one_bad_layer() -> tuple[ModelGraph, Dataset, Dataset]:
    """Three dense layers; the first has one huge weight (fed by a near-silent input feature), so per-tensor int8
    weights crush all its other weights: that one node explains the loss."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((WIDTH, WIDTH)) * 0.3).astype(np.float32)
    w1[5, 7] = 100.0
    w2 = (rng.standard_normal((WIDTH, WIDTH)) * 0.3).astype(np.float32)
    w3 = (rng.standard_normal((WIDTH, 10)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "one_bad_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)

    def sample() -> dict[str, np.ndarray]:
        x = rng.standard_normal((1, WIDTH)).astype(np.float32)
        x[0, 5] *= 0.003
        return {"x": x}

    samples = [sample() for _ in range(96)]
    return load_model(model), Dataset(samples[:64], None, "calibration"), Dataset(samples[64:], None, "validation")


def _per_tensor_plan(graph: ModelGraph, target: str, calibration: Dataset) -> Plan:
    profile = load_profile(target)
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions(technique="full_int8"))
    recipe = plan.recipe.model_copy(update={"per_channel": False})
    return plan.model_copy(
        update={"recipe": recipe, "fallbacks": ["percentile_calibration", "exclude_sensitive", "none"]}
    )


@pytest.fixture(scope="module")
def bad_layer() -> tuple[ModelGraph, Dataset, Dataset]:
    return _one_bad_layer()


def test_the_loop_finds_the_one_sensitive_node(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    result = tune(Job(graph, load_profile("qualcomm-htp"), calibration, validation), plan, Budget(min_sqnr_db=20))
    assert not result.trials[0].meets_budget  # the default recipe misses the budget
    assert result.sensitivity[0].node == "fc1"  # ranked most sensitive
    chosen = result.trials[result.chosen]
    assert result.within_budget and chosen.excluded == ["fc1"]  # the fewest exclusions that meet the budget
    assert chosen.min_sqnr_db is not None and chosen.min_sqnr_db >= 20
    assert "exclude 1" in chosen.step and result.stopped_by == "walk complete"
    # Re-audited on the device: the float node moves the cut, so the verdict says where.
    assert "first cut at fc1" in chosen.device_verdict
    assert all(t.latency_ms is not None for t in result.trials)


def test_an_unreachable_budget_returns_the_closest_and_marks_it(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    result = tune(Job(graph, load_profile("qualcomm-htp"), calibration, validation), plan, Budget(min_sqnr_db=60))
    assert not result.within_budget
    assert "NO candidate meets the budget" in result.message
    chosen = result.trials[result.chosen]
    # Float (or every node on the host) is no deployment for an integer-only device: the closest quantized one wins.
    assert chosen.technique == "full_int8" and chosen.runnable
    best = max((t for t in result.trials if t.runnable and t.error is None), key=lambda t: t.min_sqnr_db or -1e9)
    assert chosen.index == best.index
    assert not any(t.meets_budget for t in result.trials)


def test_trial_and_time_budgets_stop_the_search(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    profile = load_profile("qualcomm-htp")
    by_trials = tune(Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=60, max_trials=2))
    assert len(by_trials.trials) == 2 and by_trials.stopped_by == "trial budget"
    by_time = tune(Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=60, time_budget_s=0.0))
    assert len(by_time.trials) == 1 and by_time.stopped_by == "time budget"
    assert not by_time.within_budget  # and still a result


class FakeClock:
    """A clock that moves only when a test moves it: deadlines pass when the test says, not with wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _expire_on_evaluation(
    job: Job, clock: FakeClock, expire: Callable[[list[dict]], bool]
) -> tuple[Evaluator, list[dict]]:
    """The search's evaluator, wrapped so that the clock jumps an hour ahead when an evaluation starts for which
    `expire(calls so far, this one last)` holds: the deadline then passes inside that evaluation, before its first
    sample. Returns the evaluator and the keyword arguments of every evaluation, in order."""
    evaluator = search_evaluator(job)
    original = evaluator.evaluate
    calls: list[dict] = []

    def evaluate(*args, **kwargs):
        calls.append(kwargs)
        if expire(calls):
            clock.now += 3600.0
        return original(*args, **kwargs)

    evaluator.evaluate = evaluate  # type: ignore[method-assign]
    return evaluator, calls


def test_a_deadline_passing_inside_a_trial_abandons_it(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    job = Job(graph, load_profile("qualcomm-htp"), calibration, validation)
    clock = FakeClock()
    # The deadline passes as the second trial's emulation starts (an hour into a one-minute budget).
    evaluator, calls = _expire_on_evaluation(job, clock, lambda calls: len(calls) == 2)
    lines: list[str] = []
    result = tune(
        job,
        plan,
        Budget(min_sqnr_db=60, time_budget_s=60),
        progress=lines.append,
        evaluator=evaluator,
        deadline=Deadline(60, clock),
    )
    assert result.stopped_by == "time budget"
    assert len(calls) == 2  # nothing was evaluated after the deadline passed
    assert calls[0]["deadline"] is NO_DEADLINE  # the first trial always completes
    assert len(result.trials) == 2  # the walk stopped inside trial 2: no third
    first, abandoned = result.trials
    assert first.error is None and first.min_sqnr_db is not None
    # Abandoned in its per-sample loop: recorded, with nothing measured, never within budget and never chosen.
    assert abandoned.abandoned and abandoned.error == STOPPED_BY_TIME_BUDGET
    assert abandoned.min_sqnr_db is None and abandoned.size_bytes is None and not abandoned.meets_budget
    assert result.chosen == first.index and abandoned.index not in result.pareto
    assert not result.within_budget and "NO candidate meets the budget" in result.message
    assert result.evaluation is not None and result.model_bytes  # the chosen trial's, complete
    assert STOPPED_BY_TIME_BUDGET in lines[-1] and "failed" not in lines[-1]


def test_an_abandoned_trial_never_displaces_the_best_so_far(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    job = Job(graph, load_profile("qualcomm-htp"), calibration, validation)
    budget = Budget(min_sqnr_db=15, time_budget_s=60)  # per-channel weights (trial 2, 18.3 dB) meet it
    unbounded = tune(job, plan, budget.model_copy(update={"time_budget_s": None}), search_class=ExhaustiveSearch)
    assert unbounded.trials[1].meets_budget and len(unbounded.trials) > 3
    clock = FakeClock()
    evaluator, _ = _expire_on_evaluation(job, clock, lambda calls: len(calls) == 3)
    result = tune(job, plan, budget, evaluator=evaluator, search_class=ExhaustiveSearch, deadline=Deadline(60, clock))
    assert result.stopped_by == "time budget" and len(result.trials) == 3
    assert _without_seconds(result.trials[:2]) == _without_seconds(unbounded.trials[:2])  # the same trials so far
    abandoned = result.trials[2]
    assert abandoned.abandoned and abandoned.step == unbounded.trials[2].step and not abandoned.meets_budget
    assert result.within_budget and result.chosen == 1  # the best so far, not the trial in flight


def _without_seconds(trials: list[Trial]) -> list[dict]:
    return [t.model_dump(exclude={"seconds"}) for t in trials]


def test_a_deadline_passing_in_the_sensitivity_ranking_stops_the_walk(
    bad_layer: tuple[ModelGraph, Dataset, Dataset],
) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    job = Job(graph, load_profile("qualcomm-htp"), calibration, validation)
    clock = FakeClock()

    # The ranking's evaluations are the host-tier ones on SENSITIVITY_SAMPLES samples: the first node's ends it.
    def ranking(kwargs: dict) -> bool:
        return kwargs.get("samples") == SENSITIVITY_SAMPLES

    evaluator, calls = _expire_on_evaluation(job, clock, lambda calls: ranking(calls[-1]))
    result = tune(
        job, plan, Budget(min_sqnr_db=20, time_budget_s=60), evaluator=evaluator, deadline=Deadline(60, clock)
    )
    assert result.stopped_by == "time budget"
    assert sum(ranking(c) for c in calls) == 1  # no node after the one in progress
    assert result.sensitivity == [] and not any(t.excluded for t in result.trials)
    assert not any(t.abandoned for t in result.trials)  # no trial was in flight
    assert all(t.error is None for t in result.trials)


def _scale_varying_convnet() -> tuple[ModelGraph, Dataset, Dataset]:
    """A convnet (Conv, Relu, Flatten, a dense head; no biases) fed samples of two magnitudes a thousand apart. On
    x86-vnni the plan is full int8, whose calibrated activation ranges are the large samples': every small sample
    quantizes to zero and its top-1 is lost, whatever the static recipe. Weight-only int8 quantizes activations per
    run, so it keeps every top-1."""
    rng = np.random.default_rng(0)
    channels, side = 8, 32
    model = dense_head_convnet(rng, channels, side)
    # Large samples first: onnxruntime's histogram collector (percentile, entropy calibration) keeps the first
    # sample's bin width, so a tiny first sample makes a million-bin histogram and a minute-long entropy search.
    samples = [
        {"x": (rng.standard_normal((1, channels, side, side)) * (1e-3 if i % 2 else 1.0)).astype(np.float32)}
        for i in range(64)
    ]
    return load_model(model), Dataset(samples[:32], None, "calibration"), Dataset(samples[32:], None, "validation")


@pytest.fixture(scope="module")
def scale_varying() -> tuple[ModelGraph, Dataset, Dataset]:
    return _scale_varying_convnet()


def _x86_tune(data: tuple[ModelGraph, Dataset, Dataset], budget: Budget) -> TuningResult:
    graph, calibration, validation = data
    profile = load_profile("x86-vnni")
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    assert plan.technique == "full_int8" and "weight_only_int8" in plan.fallbacks  # the default tree's leaf
    return tune(Job(graph, profile, calibration, validation), plan, budget)


def test_another_technique_s_best_comes_right_after_the_plan(
    scale_varying: tuple[ModelGraph, Dataset, Dataset],
) -> None:
    # Two trials: the plan, then weight-only's best (not a point of the full-int8 space, none of which meets it).
    result = _x86_tune(scale_varying, Budget(min_top1_agreement=0.95, max_trials=2))
    plan, second = result.trials
    assert plan.technique == "full_int8" and not plan.meets_budget
    assert plan.top1_agreement is not None and plan.top1_agreement < 0.75  # the small samples' top-1 is lost
    assert second.technique == "weight_only_int8" and second.meets_budget
    assert result.within_budget and result.chosen == second.index


def test_once_a_technique_meets_the_budget_the_spaces_of_those_that_missed_are_skipped(
    scale_varying: tuple[ModelGraph, Dataset, Dataset],
) -> None:
    result = _x86_tune(scale_varying, Budget(min_top1_agreement=0.95))
    assert result.within_budget and result.trials[result.chosen].technique == "weight_only_int8"
    assert result.stopped_by == "walk complete"
    # Full int8 missed with its plan, weight-only met it: no point of the full-int8 space is tried, only the leaf's
    # full-int8 fallbacks the cost model predicts faster (calibration steps, same kernels as the plan).
    static = [t.step for t in result.trials if t.technique == "full_int8"]
    assert static[0] == "plan" and set(static[1:]) <= {
        "bias_correction",
        "percentile_calibration",
        "entropy_calibration",
    }
    # Nor the weight-only recipes with Conv: dynamic Conv is the slow path x86-vnni's rules mark, which the cost
    # model does not price (predicted faster than the pick here, measured about 4x float) and no trial measured.
    dynamic = [t.recipe.op_types_to_quantize for t in result.trials if t.technique == "weight_only_int8" and t.recipe]
    assert dynamic and not any("Conv" in ops for ops in dynamic)


def test_the_closest_technique_s_space_is_walked_first(scale_varying: tuple[ModelGraph, Dataset, Dataset]) -> None:
    # Out of reach: weight-only came closer than full int8 (higher SQNR), so its recipe space comes next.
    result = _x86_tune(scale_varying, Budget(min_sqnr_db=199.0, max_trials=4))
    plan, leader, *space = result.trials
    assert leader.technique == "weight_only_int8"
    assert leader.min_sqnr_db is not None and plan.min_sqnr_db is not None and leader.min_sqnr_db > plan.min_sqnr_db
    assert [t.technique for t in space] == ["weight_only_int8"] * 2
    assert len({f"{t.technique} {t.recipe}" for t in result.trials}) == 4  # nothing tried twice
    assert result.stopped_by == "trial budget" and not result.within_budget


def test_exhaustive_search_agrees_with_the_greedy_choice(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    profile = load_profile("qualcomm-htp")
    greedy = tune(Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=20))
    exhaustive = tune(
        Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=20), search_class=ExhaustiveSearch
    )
    assert len(exhaustive.trials) > len(greedy.trials)
    assert exhaustive.trials[exhaustive.chosen].excluded == greedy.trials[greedy.chosen].excluded


def test_greedy_matches_an_exhaustive_search_over_every_subset(bad_layer: tuple[ModelGraph, Dataset, Dataset]) -> None:
    graph, calibration, validation = bad_layer
    plan = _per_tensor_plan(graph, "qualcomm-htp", calibration)
    profile = load_profile("qualcomm-htp")
    greedy = tune(Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=20))
    every = tune(
        Job(graph, profile, calibration, validation),
        plan,
        Budget(min_sqnr_db=20, max_trials=100),
        search_class=every_subset_search(3),
    )
    assert sum(1 for t in every.trials if t.step.startswith("exclude {")) == 7  # 2^3 - 1 subsets
    assert every.trials[every.chosen].excluded == greedy.trials[greedy.chosen].excluded == ["fc1"]


def test_the_shipped_example_meets_a_tight_budget_with_the_fewest_exclusions() -> None:
    graph = load_model(EXAMPLES / "digits_cnn.onnx")
    calibration = load_dataset(EXAMPLES / "calib.npz", graph)
    validation = load_dataset(EXAMPLES / "val.npz", graph)
    profile = load_profile("edgetpu")
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    result = tune(Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=45, max_drop=0.0))
    assert result.within_budget
    assert result.tier == "exact"  # the numbers of the .tflite autoptq writes for edgetpu, bit for bit
    chosen = result.trials[result.chosen]
    assert len(chosen.excluded) == 1
    # Fewest: no trial with fewer exclusions met the budget.
    assert not any(t.meets_budget for t in result.trials if len(t.excluded) < len(chosen.excluded))
    assert chosen.accuracy is not None and result.float_accuracy is not None
    assert chosen.accuracy >= result.float_accuracy  # max_drop 0 met on the emulator


def _trial(index: int, quality: float, latency: float, size: int, meets: bool = True) -> Trial:
    return Trial(
        index=index,
        step=f"t{index}",
        technique="full_int8",
        recipe=None,
        min_sqnr_db=quality,
        latency_ms=latency,
        latency_ratio=latency,
        size_bytes=size,
        meets_budget=meets,
    )


def test_pareto_front_and_objectives() -> None:
    trials = [
        _trial(0, quality=30, latency=1.0, size=100),  # fast and small
        _trial(1, quality=40, latency=2.0, size=200),  # more accurate, slower, larger
        _trial(2, quality=29, latency=1.5, size=150),  # dominated by 0
        _trial(3, quality=45, latency=3.0, size=90, meets=False),  # smallest and best, but out of budget
    ]
    front = pareto_front(trials)
    assert set(front) == {0, 1, 3}
    assert choose(trials, front, "speed") == (0, True)
    assert choose(trials, front, "accuracy") == (1, True)
    assert choose(trials, front, "size") == (0, True)  # 3 is smaller but not within budget
    nothing = [t.model_copy(update={"meets_budget": False}) for t in trials]
    index, within = choose(nothing, pareto_front(nothing), "speed")
    assert not within and index == 3  # the closest: best quality


def test_cli_budget_writes_trials_to_output_and_manifest(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "variants"
    code, _, stderr = run_cli(
        [
            "variants",
            str(EXAMPLES / "digits_cnn.onnx"),
            "--targets",
            "edgetpu",
            "--data",
            str(EXAMPLES / "calib.npz"),
            "--val",
            str(EXAMPLES / "val.npz"),
            "--min-sqnr",
            "45",
            "--time-budget",
            "5m",
            "-o",
            str(out),
        ]
    )
    assert code == 0, stderr
    assert "trial 1: plan" in stderr  # progress
    manifest = json.loads((out / "manifest.json").read_text())
    tuning = manifest["variants"][0]["tuning"]
    assert tuning["within_budget"] and tuning["budget"]["min_sqnr_db"] == 45
    assert tuning["trials"][0]["step"] == "plan"
    assert all("seconds" not in t for t in tuning["trials"])  # timings stay out of the deterministic manifest
    assert "| # | step |" in (out / "report.md").read_text()


def test_a_budget_not_hit_prints_and_writes_what_no_budget_does(run_cli, tmp_path: Path) -> None:
    """The deadline only ever stops work: while it has not passed, every output is byte for byte the one of a run
    without it (the manifest also records the budget given)."""
    runs = {}
    for name, budget in (("bounded", ["--time-budget", "1h"]), ("unbounded", [])):
        out = tmp_path / name
        code, stdout, stderr = run_cli(
            ["variants", str(EXAMPLES / "digits_cnn.onnx"), "--targets", "edgetpu", "--data",
             str(EXAMPLES / "calib.npz"), "--val", str(EXAMPLES / "val.npz"), "--min-sqnr", "45", *budget,
             "-o", str(out)]
        )  # fmt: skip
        assert code == 0, stderr
        manifest = json.loads((out / "manifest.json").read_text())
        tuning = manifest["variants"][0]["tuning"]
        assert tuning["stopped_by"] == "walk complete"
        tuning["budget"]["time_budget_s"] = None
        runs[name] = (
            stdout.replace(str(out), "OUT"),
            stderr,
            manifest,
            *((out / f).read_bytes() for f in ("edgetpu/model.onnx", "report.md", "report.html")),
        )
    assert runs["bounded"] == runs["unbounded"]


@pytest.mark.parametrize(("text", "phrase"), [("10x", "duration"), ("-1m", "duration")])
def test_bad_time_budget_is_a_usage_error(run_cli, tmp_path: Path, text: str, phrase: str) -> None:
    code, _, stderr = run_cli(
        ["quantize", str(EXAMPLES / "digits_cnn.onnx"), "-t", "edgetpu", "-d", str(EXAMPLES / "calib.npz"),
         "--max-drop", "0.01", "--time-budget", text, "-o", str(tmp_path / "o.onnx")]
    )  # fmt: skip
    assert code == 2 and phrase in stderr and not (tmp_path / "o.onnx").exists()
