"""The weight-only recipe space: what each device allows, the default on CPUs, and what the quantizer makes of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from autoptq.api import QuantizeOptions, plan_for, split_data
from autoptq.decide.candidates import other_techniques_best, space_steps
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan, UserGoals, device_conformant_recipe, load_tree, plan_model
from autoptq.decide.tuning import Budget, tune
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.evaluation import Problem, slower
from autoptq.evaluate.metrics import OutputFidelity
from autoptq.evaluate.runner import LatencyMeasurement, measurable_here
from autoptq.evaluate.verify import Verification
from autoptq.model import zoo
from autoptq.model.calibration import Dataset
from autoptq.model.graph import load_model
from autoptq.pipeline.produce import TIE, TWIN_TIE, Attempt, best_measured, measured_contenders, produce, timed_as_twins
from autoptq.techniques import REGISTRY
from autoptq.techniques.recipe import Recipe
from autoptq.techniques.space import (
    conform_weight_only,
    device_int8_ops,
    full_int8_space,
    quantizable_nodes,
    weight_only_options,
    weight_only_space,
)


@pytest.fixture(scope="module")
def encoder() -> onnx.ModelProto:
    return zoo.text_encoder()


def token_data(count: int, seq: int = 16, vocab: int = 1000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        samples=[{"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64)} for _ in range(count)],
        labels=None,
        source="tokens",
    )


def allowed(options: list, knob: str) -> set[str]:
    return {o.value for o in options if o.knob == knob and o.allowed}


def test_each_knob_value_follows_the_device_rules(encoder: onnx.ModelProto) -> None:
    graph = load_model(encoder)
    x86 = weight_only_options(load_profile("x86-vnni"), graph)
    assert allowed(x86, "granularity") == {"per_channel", "per_tensor"}
    assert allowed(x86, "weight_dtype") == {"int8"}  # x86-vnni lists int8 weights only
    assert allowed(x86, "ops.dense") == {"on", "off"} and allowed(x86, "ops.embeddings") == {"on", "off"}
    conv = next(o for o in x86 if o.knob == "ops.conv" and o.value == "on")
    assert not conv.allowed and "no Conv node" in conv.why
    profile = load_profile("x86-vnni")
    rules = profile.quantization.model_copy(
        update={"weights": profile.quantization.weights.model_copy(update={"dtype": ["int8", "uint8"]})}
    )
    both = profile.model_copy(update={"quantization": rules})
    assert allowed(weight_only_options(both, graph), "weight_dtype") == {"int8", "uint8"}
    edgetpu = weight_only_options(load_profile("edgetpu"), graph)
    assert not any(o.allowed for o in edgetpu)  # integer-only: dynamic activations cannot run there
    assert all("integer-only" in o.why for o in edgetpu)


def test_only_embedding_tables_with_constant_float_weights_count(encoder: onnx.ModelProto) -> None:
    graph = load_model(encoder)
    assert quantizable_nodes(graph, "Gather") == ["word_embeddings"]
    assert len(quantizable_nodes(graph, "MatMul")) == 4
    # A convnet's Gather on shapes is not an embedding table.
    assert quantizable_nodes(load_model(zoo.small_convnet()), "Gather") == []


def test_space_enumerates_every_allowed_combination(encoder: onnx.ModelProto) -> None:
    graph = load_model(encoder)
    recipes = weight_only_space(load_profile("x86-vnni"), graph, Recipe())
    # 2 granularities x 1 dtype x 3 non-empty subsets of {dense, embeddings}
    assert len(recipes) == 6
    assert {tuple(r.op_types_to_quantize) for r in recipes} == {("MatMul",), ("Gather",), ("Gather", "MatMul")}
    assert len({r.model_dump_json() for r in recipes}) == 6


def test_conform_keeps_the_leaf_choice_where_allowed_and_downgrades_where_not(encoder: onnx.ModelProto) -> None:
    graph = load_model(encoder)
    x86 = load_profile("x86-vnni")
    default = conform_weight_only(Recipe(), x86, graph)
    assert default.per_channel and default.weight_dtype == "int8"
    assert default.op_types_to_quantize == ["Gather", "MatMul"]
    per_tensor = conform_weight_only(Recipe(per_channel=False, op_types_to_quantize=["MatMul"]), x86, graph)
    assert not per_tensor.per_channel and per_tensor.op_types_to_quantize == ["MatMul"]
    assert conform_weight_only(Recipe(weight_dtype="uint8"), x86, graph).weight_dtype == "int8"


def test_the_default_on_a_cpu_is_per_channel_int8_with_the_embedding_table(encoder: onnx.ModelProto) -> None:
    graph = load_model(encoder)
    profile = load_profile("x86-vnni")
    calibration, validation, _ = split_data(graph, token_data(40), None, synthetic=False)
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    assert plan.technique == "weight_only_int8"
    assert plan.recipe.per_channel and plan.recipe.weight_dtype == "int8"
    assert plan.recipe.op_types_to_quantize == ["Gather", "MatMul"]
    outcome = produce(Job(graph, profile, calibration, validation), plan, measure_latency=False)
    assert not outcome.kept_float and outcome.verification is not None
    # Every weight in 8 bits, the embedding table included: about a quarter of the float size.
    assert outcome.verification.size_ratio < 0.30
    assert outcome.verification.fidelity[0].cosine > 0.99


def test_per_channel_and_embedding_knobs_show_in_the_quantized_graph(encoder: onnx.ModelProto) -> None:
    profile = load_profile("x86-vnni")
    on = REGISTRY["weight_only_int8"].quantize(
        encoder, Recipe(op_types_to_quantize=["Gather", "MatMul"]), None, profile
    )
    off = REGISTRY["weight_only_int8"].quantize(
        encoder, Recipe(op_types_to_quantize=["MatMul"], per_channel=False), None, profile
    )

    def tables(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    on_tables, off_tables = tables(on.model), tables(off.model)
    # The embedding table is stored in 8 bits with the knob on, in float without it.
    assert any(v.dtype == np.uint8 and v.shape == (1000, 64) for v in on_tables.values())
    assert any(v.dtype == np.float32 and v.shape == (1000, 64) for v in off_tables.values())
    # Per-channel: one weight scale per output column; per-tensor: one.
    on_scales = [v for k, v in on_tables.items() if k.endswith("_scale") and v.ndim == 1 and v.size == 256]
    off_scales = [v for k, v in off_tables.items() if k.endswith("_scale") and v.size == 256]
    assert on_scales and not off_scales
    assert on.model.ByteSize() < off.model.ByteSize() * 0.6


def encoder_job_on_this_cpu(encoder: onnx.ModelProto) -> tuple[Job, Plan]:
    """The encoder's job and default plan on x86-vnni, where this machine stands in for it (else the test skips)."""
    graph = load_model(encoder)
    profile = load_profile("x86-vnni")
    if not measurable_here(profile):
        pytest.skip("this machine does not stand in for x86-vnni")
    calibration, validation, _ = split_data(graph, token_data(40), None, synthetic=False)
    return Job(graph, profile, calibration, validation), plan_for(
        graph, profile, load_tree(), calibration, QuantizeOptions()
    )


def test_the_default_on_a_measurable_cpu_is_the_best_measured_of_a_handful(
    encoder: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no host table: the roofline ranks the candidates
    outcome = produce(*encoder_job_on_this_cpu(encoder))
    steps = [a.step for a in outcome.attempts]
    # onnxruntime's quantize_dynamic defaults on this model are the per-tensor point of the space (no Conv here).
    assert steps[0] == "plan" and "weight-only per-tensor int8 Gather+MatMul" in steps
    assert "onnxruntime quantize_static defaults" in steps
    assert outcome.reason.startswith("best measured of")
    passed = [a for a in outcome.attempts if a.accepted]
    chosen = next(a for a in passed if a.verification == outcome.verification)
    assert chosen in passed
    fastest = min(a.verification.latency.ratio for a in passed)
    # A dynamic recipe and its weight-granularity twin run the same integer kernels: within TWIN_TIE they are one
    # speed (on this 30-microsecond encoder they time up to 10% apart), and the choice is judged on the faster.
    own = outcome.verification.latency.ratio
    twins = [a for a in passed if a.technique == chosen.technique and same_but_granularity(a.recipe, chosen.recipe)]
    twin = min(a.verification.latency.ratio for a in twins)
    assert (twin if own <= twin * (1 + TWIN_TIE) else own) <= fastest * (1 + TIE)


def test_search_first_keeps_the_plan_s_first_passing_candidate_timed_once(encoder: onnx.ModelProto) -> None:
    outcome = produce(*encoder_job_on_this_cpu(encoder), search="first")
    # One candidate built, verified and timed (the plan's own passes here), where the measured default tries a handful.
    assert [a.step for a in outcome.attempts] == ["plan"] and outcome.attempts[0].accepted
    assert outcome.reason == "the planned weight_only_int8 passed verification"
    assert outcome.verification is not None and outcome.verification.latency is not None


def test_search_first_is_refused_with_a_budget() -> None:
    with pytest.raises(ValueError, match="walks its own order"):
        QuantizeOptions(search="first", budget=Budget(min_sqnr_db=30.0))
    assert QuantizeOptions(search="first").search == "first"


def same_but_granularity(a: Recipe, b: Recipe) -> bool:
    return a.model_copy(update={"per_channel": b.per_channel}) == b


def attempt(step: str, ratio: float, size: int, sqnr: float) -> Attempt:
    verification = Verification(
        passed=True,
        samples=1,
        min_sqnr_db=10.0,
        fidelity=[OutputFidelity(name="y", sqnr_db=sqnr, cosine=1.0, max_abs_diff=0.0)],
        size_bytes=size,
        float_size_bytes=4000,
        size_ratio=size / 4000,
        latency=LatencyMeasurement(float_ms=1.0, candidate_ms=ratio, ratio=ratio, runs=15, machine="test"),
    )
    # A recipe of its own: candidates of one recipe share their kernels, and the choice compares them as one.
    recipe = Recipe(op_types_to_quantize=[step])
    return Attempt(step=step, technique="weight_only_int8", recipe=recipe, accepted=True, verification=verification)


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [("speed", "faithful"), ("size", "smallest"), ("accuracy", "most faithful, slow")],
)
def test_the_measured_choice_breaks_ties_on_fidelity(prefer: str, expected: str, encoder: onnx.ModelProto) -> None:
    passed = [
        (attempt("slow", 0.80, 1000, 30.0), b"a"),
        (attempt("faithful", 0.51, 1010, 25.0), b"b"),  # within 5% of the fastest and of the smallest
        (attempt("coarse", 0.50, 1000, 12.0), b"c"),
        (attempt("smallest", 0.70, 900, 15.0), b"d"),
        (attempt("most faithful, slow", 0.95, 3000, 40.0), b"e"),
    ]
    graph = load_model(encoder)
    plan = plan_model(graph, load_profile("x86-vnni"), load_tree(), None, UserGoals(prefer=prefer))
    best, _ = best_measured(passed, plan)
    assert best.step == expected


@pytest.mark.parametrize(("per_channel_ratio", "expected"), [(0.52, "per-channel"), (0.60, "per-tensor")])
def test_weight_granularity_twins_count_as_one_speed_within_ten_percent(
    per_channel_ratio: float, expected: str, encoder: onnx.ModelProto
) -> None:
    # MiniLM-L6: per-tensor weights time about 3% faster, per-channel keeps min cosine 0.99 where per-tensor keeps
    # 0.95. Within TWIN_TIE (10%) the twins are one speed and fidelity decides; beyond it, speed does.
    twins = []
    for step, ratio, sqnr in (("per-tensor", 0.48, 20.0), ("per-channel", per_channel_ratio, 30.0)):
        candidate = attempt(step, ratio, 1000, sqnr)
        recipe = Recipe(op_types_to_quantize=["MatMul"], per_channel=step == "per-channel")
        twins.append((candidate.model_copy(update={"recipe": recipe}), b""))
    plan = plan_model(load_model(encoder), load_profile("x86-vnni"), load_tree(), None, UserGoals(prefer="speed"))
    assert best_measured(twins, plan)[0].step == expected


def rejected(candidate: Attempt, *issues: Problem) -> Attempt:
    assert candidate.verification is not None
    verification = candidate.verification.model_copy(update={"passed": False, "issues": list(issues)})
    return candidate.model_copy(update={"accepted": False, "verification": verification})


def weight_only(step: str, ratio: float, sqnr: float, per_channel: bool) -> Attempt:
    recipe = Recipe(op_types_to_quantize=["MatMul"], per_channel=per_channel)
    return attempt(step, ratio, 1000, sqnr).model_copy(update={"recipe": recipe})


def test_a_twin_rejected_only_as_slower_than_float_takes_its_passing_twins_timing() -> None:
    # ppocr-cls on x86-vnni: per-channel weight-only MatMul measured 1.052x float (99.7 dB), its per-tensor twin
    # 1.018x (87.5 dB); one speed timed twice. Beyond TWIN_TIE, or rejected on anything else too, it stays out.
    below_floor = Problem(code="below_sqnr_floor", text="below the floor")
    per_tensor = weight_only("per-tensor", 1.018, 87.5, per_channel=False)
    pairs = [
        (per_tensor, b"t"),
        (rejected(weight_only("per-channel", 1.052, 99.7, per_channel=True), slower()), b"c"),
        (rejected(weight_only("per-channel far", 1.13, 99.7, per_channel=True), slower()), b"f"),
        (rejected(weight_only("per-channel poor", 1.05, 9.0, per_channel=True), slower(), below_floor), b"p"),
        (rejected(attempt("no twin", 1.06, 1000, 50.0), slower()), b"n"),
    ]
    judged = {a.step: a for a, _ in timed_as_twins(pairs)}
    readmitted = judged["per-channel"]
    assert readmitted.accepted and readmitted.verification is not None
    assert readmitted.verification.passed and readmitted.verification.issues == []
    assert readmitted.verification.latency == per_tensor.verification.latency  # type: ignore[union-attr]
    assert "timed alone 1.05x float" in readmitted.verification.latency_note  # its own timing, stated
    assert [step for step, a in judged.items() if a.accepted] == ["per-tensor", "per-channel"]
    assert judged["per-tensor"] == per_tensor


def test_the_contenders_are_as_fast_and_as_small_as_the_pick(encoder: onnx.ModelProto) -> None:
    # The candidates whose range variants the default builds: tied with the pick on speed and size, the pick first.
    passed = [
        (attempt("faithful", 0.51, 1010, 25.0), b"b"),
        (attempt("slow", 0.80, 1000, 30.0), b"a"),
        (attempt("coarse", 0.50, 1000, 12.0), b"c"),
        (attempt("smallest", 0.70, 900, 15.0), b"d"),
    ]
    plan = plan_model(load_model(encoder), load_profile("x86-vnni"), load_tree(), None, UserGoals(prefer="speed"))
    assert [a.step for a, _ in measured_contenders(passed, plan)] == ["faithful", "coarse"]


def test_full_int8_keeps_qdq_off_ops_without_int8_kernels_on_a_cpu() -> None:
    graph = load_model(zoo.transformer_block())
    x86 = load_profile("x86-vnni")
    int8_ops = device_int8_ops(x86, graph)
    assert "MatMul" in int8_ops and "LayerNormalization" not in int8_ops and "Erf" not in int8_ops
    recipe = device_conformant_recipe(Recipe(), "full_int8", x86, graph, None)
    assert recipe.op_types_to_quantize == int8_ops
    every = tuple(sorted({n.op_type for n in graph.compute_nodes()}))
    # An integer-only device quantizes every op, named (onnxruntime's default would leave Div, Erf... in float): a
    # float op would run on the host.
    edgetpu_recipe = device_conformant_recipe(Recipe(), "full_int8", load_profile("edgetpu"), graph, None)
    assert tuple(edgetpu_recipe.op_types_to_quantize) == every
    space = full_int8_space(x86, graph, Recipe())
    # uint8/int8 activations x per-channel/per-tensor x (device int8 ops, all ops) x (QDQ, QOperator)
    assert len(space) == 16 and {tuple(r.op_types_to_quantize) for r in space} == {tuple(int8_ops), every}
    edgetpu = load_profile("edgetpu")
    on_edgetpu = full_int8_space(edgetpu, graph, Recipe())
    rules = edgetpu.quantization
    assert len(on_edgetpu) == len(rules.activations.dtype) * len(rules.weights.granularity)
    assert all(r.op_types_to_quantize == [] for r in on_edgetpu)


def test_the_loop_walks_the_technique_s_space_before_its_fallbacks(encoder: onnx.ModelProto) -> None:
    graph = load_model(encoder)
    profile = load_profile("x86-vnni")
    calibration, validation, _ = split_data(graph, token_data(30), None, synthetic=False)
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    job = Job(graph, profile, calibration, calibration)
    steps = space_steps(job, plan.technique, plan.recipe)
    assert steps and all(s.technique == "weight_only_int8" and s.recipe != plan.recipe for s in steps)
    assert steps[0].recipe.per_channel  # the most faithful first
    # An unreachable budget: every step is tried. After the plan, the best of the other technique the leaf allows
    # (full int8), then the space of the technique that came closer, before the fallbacks.
    result = tune(Job(graph, profile, calibration, validation), plan, Budget(min_sqnr_db=199.0, max_trials=6))
    plan_trial, leader, *space = result.trials
    assert plan_trial.step == "plan" and leader.step == other_techniques_best(job, plan)[0].step
    assert leader.technique == "full_int8"
    closer = max((plan_trial, leader), key=lambda t: t.min_sqnr_db or -1e9)
    assert [t.step for t in space] == [s.step for s in space_steps(job, closer.technique, closer.recipe)[:4]]
    assert not result.within_budget
