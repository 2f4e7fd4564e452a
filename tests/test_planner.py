"""The planner: facts, the default decision tree leaf by leaf, device-conformant recipes, predictions, the matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import build, const, tensor
from onnx import ModelProto, helper

from autoptq.decide.planner import (
    FACTS,
    Plan,
    UserGoals,
    decision_matrix,
    load_tree,
    plan_model,
)
from autoptq.decide.rules import RuleSet
from autoptq.devices.profiles import HardwareProfile, load_profile, profiles_dir, shipped_profile_names
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.techniques.weight_only import DYNAMIC_QUANT_OPS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _sigmoid_convnet() -> ModelProto:
    """Conv -> Sigmoid -> pooling -> Gemm -> Softmax: both ops with device-fixed output parameters."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], name="fc"),
        helper.make_node("Softmax", ["g"], ["probs"], name="softmax", axis=-1),
    ]
    initializers = [
        const("cw", rng.standard_normal((32, 3, 3, 3)) * 0.2),
        const("cb", np.zeros(32)),
        const("gw", rng.standard_normal((32, 10)) * 0.2),
        const("gb", np.zeros(10)),
    ]
    return build(nodes, [tensor("input", [1, 3, 48, 48])], [tensor("probs", [1, 10])], initializers)


def _late_cut_convnet() -> ModelProto:
    """A convnet whose last op (LeakyRelu) has no Edge TPU mapping: almost all MACs run before the cut."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], name="fc"),
        helper.make_node("LeakyRelu", ["g"], ["out"], name="head", alpha=0.1),
    ]
    initializers = [
        const("cw", rng.standard_normal((32, 3, 3, 3)) * 0.2),
        const("cb", np.zeros(32)),
        const("gw", rng.standard_normal((32, 10)) * 0.2),
        const("gb", np.zeros(10)),
    ]
    return build(nodes, [tensor("input", [1, 3, 48, 48])], [tensor("out", [1, 10])], initializers)


def _shared_weight_mlp() -> ModelProto:
    """Two MatMuls reading the same 512 x 512 initializer (tied weights): 1 MiB stored once."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="mm2"),
    ]
    w = np.random.default_rng(0).standard_normal((512, 512)) * 0.05
    return build(nodes, [tensor("x", [1, 512])], [tensor("y", [1, 512])], [const("w", w)])


MODELS: dict[str, Callable[[], ModelProto | Path]] = {
    "digits": lambda: EXAMPLES / "digits_cnn.onnx",
    "small_convnet": zoo.small_convnet,
    "mobilenet": zoo.mobilenet_style,
    "transformer": zoo.transformer_block,
    "lstm": lambda: zoo.lstm_model(seq=50, features=64, hidden=256),
    "mlp": lambda: zoo.mlp(features=512, hidden=1024, layers=2),
    "loop": lambda: zoo.loop_model(trips=64, dim=256),
    "conv_chain": lambda: zoo.chain_of_blocks(blocks=20, dim=64),
    "sigmoid_convnet": _sigmoid_convnet,
    "shared_weight_mlp": _shared_weight_mlp,
    "late_cut_convnet": _late_cut_convnet,
}


@cache
def graph_of(name: str) -> ModelGraph:
    return load_model(MODELS[name]())


@cache
def tree() -> RuleSet:
    return load_tree()


def data_for(graph: ModelGraph, count: int = 8) -> Dataset:
    """Real-looking (not synthetic) representative data: zeros shaped like the inputs."""
    samples = [
        {t.name: np.zeros([d if isinstance(d, int) else 1 for d in t.shape or []], np.float32) for t in graph.inputs}
        for _ in range(count)
    ]
    return Dataset(samples, None, "test data")


def slow_int8_profile(folder: Path) -> Path:
    """A CPU profile (x86-vnni's, renamed) whose int8 arithmetic is slower than its fp32."""
    raw = yaml.safe_load((profiles_dir() / "x86-vnni.yaml").read_text(encoding="utf-8"))
    raw["name"] = "slow-int8-cpu"
    raw["description"] = "a CPU whose int8 kernels are slower than fp32"
    raw["precisions"]["int8"] = {"peak_macs_per_s": 1.0e10, "efficiency": 0.25}
    path = folder / "slow-int8-cpu.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def plan_for(
    model: str, target: str | Path, with_data: bool = False, goals: UserGoals | None = None, samples: int = 8
) -> Plan:
    graph = graph_of(model)
    data = data_for(graph, samples) if with_data else None
    return plan_model(graph, load_profile(target), tree(), data, goals)


@dataclass(frozen=True)
class LeafCase:
    leaf: str
    technique: str
    model: str
    target: str  # shipped profile name, or "slow-int8-cpu" for the profile written by slow_int8_profile
    with_data: bool
    goals: UserGoals = field(default_factory=UserGoals)


LEAF_CASES = [
    LeafCase("refuse_without_data", "none", "mobilenet", "edgetpu", with_data=False),
    LeafCase("keep_float_falls_back", "none", "transformer", "edgetpu", with_data=True),
    LeafCase("int16x8_device", "int16x8", "transformer", "qualcomm-htp", with_data=True),
    LeafCase("full_int8_device", "full_int8", "mobilenet", "edgetpu", with_data=True),
    LeafCase("keep_float_control_flow", "none", "loop", "x86-vnni", with_data=True),
    LeafCase("fp16_gpu", "fp16", "mobilenet", "gpu-fp16", with_data=True),
    LeafCase("weight_only_for_size", "weight_only_int8", "digits", "x86-vnni", False, UserGoals(prefer="size")),
    LeafCase("keep_float_too_small", "none", "digits", "x86-vnni", with_data=True),
    LeafCase("keep_float_no_int8", "none", "small_convnet", "slow-int8-cpu", with_data=True),
    LeafCase("fp16_cpu", "fp16", "small_convnet", "arm-a76", with_data=False),
    LeafCase("weight_only_dense_layers", "weight_only_int8", "small_convnet", "x86-vnni", with_data=False),
    LeafCase("keep_float_needs_data", "none", "conv_chain", "x86-vnni", with_data=False),
    LeafCase("full_int8_reduce_range", "full_int8", "small_convnet", "x86-avx2", with_data=True),
    LeafCase("full_int8_cpu", "full_int8", "small_convnet", "x86-vnni", with_data=True),
    LeafCase("weight_only_reduce_range", "weight_only_int8", "transformer", "x86-avx2", with_data=True),
    LeafCase("weight_only", "weight_only_int8", "lstm", "x86-vnni", with_data=True),
]


def plan_case(case: LeafCase, folder: Path) -> Plan:
    target: str | Path = slow_int8_profile(folder) if case.target == "slow-int8-cpu" else case.target
    return plan_for(case.model, target, case.with_data, case.goals)


# --- the default tree, leaf by leaf ---


@pytest.mark.parametrize("case", LEAF_CASES, ids=[c.leaf for c in LEAF_CASES])
def test_leaf_reached(case: LeafCase, tmp_path: Path) -> None:
    plan = plan_case(case, tmp_path)
    assert plan.leaf == case.leaf, [(s.node, s.facts, s.answer) for s in plan.trace]
    assert plan.technique == case.technique
    leaf = tree().leaves[case.leaf]
    assert plan.summary == leaf.summary
    assert plan.fallbacks == leaf.fallbacks
    assert plan.target == case.target


def test_every_leaf_of_the_default_tree_is_reached(tmp_path: Path) -> None:
    reached = {plan_case(case, tmp_path).leaf for case in LEAF_CASES}
    assert reached == set(tree().leaf_ids())


def test_trace_follows_the_tree(tmp_path: Path) -> None:
    """Each step names its node, exactly the facts its condition reads with the planner's values, and its answer
    leads to the next step (or to the leaf)."""
    for case in LEAF_CASES:
        plan = plan_case(case, tmp_path)
        rules = tree()
        expected_node = rules.start
        for step in plan.trace:
            assert step.node == expected_node
            node = rules.nodes[step.node]
            assert step.question == node.question
            assert list(step.facts) == node.when.fact_names()
            assert all(plan.facts[name] == value for name, value in step.facts.items())
            assert step.answer == node.when.holds(step.facts)
            expected_node = node.yes if step.answer else node.no
        assert expected_node == plan.leaf


def test_facts_cover_the_catalogue_with_the_declared_types() -> None:
    assert all(key == spec.name for key, spec in FACTS.items())
    python_types = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}
    for model, target, with_data in [("mobilenet", "edgetpu", True), ("transformer", "x86-vnni", False)]:
        plan = plan_for(model, target, with_data, UserGoals(max_drop=0.01, max_size_bytes=10**6))
        assert set(plan.facts) == set(FACTS)
        for name, value in plan.facts.items():
            if value is None:
                continue
            assert isinstance(value, python_types[FACTS[name].type]), name
            assert FACTS[name].type == "bool" or not isinstance(value, bool), name


def test_user_and_data_facts() -> None:
    plan = plan_for("digits", "x86-vnni", with_data=True, goals=UserGoals(max_drop=0.02, prefer="accuracy"))
    assert plan.facts["data.samples"] == 8
    assert plan.facts["data.labels"] is False and plan.facts["data.synthetic"] is False
    assert plan.facts["user.max_drop"] == 0.02 and plan.facts["user.prefer"] == "accuracy"
    assert plan.facts["user.max_size_bytes"] is None
    bare = plan_for("digits", "x86-vnni")
    assert bare.facts["data.samples"] == 0 and bare.facts["user.max_drop"] is None


# --- integer-only devices ---


def test_edgetpu_full_int8_recipe_is_device_conformant() -> None:
    plan = plan_for("mobilenet", "edgetpu", with_data=True)
    recipe = plan.recipe
    assert plan.technique == "full_int8"
    assert recipe.activation_dtype == "int8"
    assert recipe.weight_dtype == "int8" and recipe.weight_symmetric and recipe.per_channel
    assert recipe.io_dtype == "int8"
    # mobilenet_style ends in Softmax and has no Sigmoid/Tanh: only the ops present get fixed parameters.
    assert {op: (p.scale, p.zero_point) for op, p in recipe.fixed_output_params.items()} == {"Softmax": (1 / 256, -128)}
    assert recipe.calibration_samples == 8  # never more than the samples given


def test_fixed_output_params_for_sigmoid_and_softmax() -> None:
    for target in ("edgetpu", "mcu-cortex-m"):
        plan = plan_for("sigmoid_convnet", target, with_data=True)
        assert plan.leaf == "full_int8_device"
        params = {op: (p.scale, p.zero_point) for op, p in plan.recipe.fixed_output_params.items()}
        assert params == {"Softmax": (1 / 256, -128), "Sigmoid": (1 / 256, -128)}


@pytest.mark.parametrize("target", ["edgetpu", "mcu-cortex-m", "qualcomm-htp"])
@pytest.mark.parametrize("model", ["mobilenet", "transformer", "mlp"])
def test_integer_only_devices_refuse_without_data(target: str, model: str) -> None:
    plan = plan_for(model, target, with_data=False)
    assert plan.technique == "none" and plan.leaf == "refuse_without_data"
    assert "--data" in plan.summary and "representative data" in plan.summary
    assert ".npz" in plan.summary
    assert [s.node for s in plan.trace] == ["integer_only", "integer_has_data"]
    assert plan.trace[-1].facts == {"data.samples": 0} and plan.trace[-1].answer is False


def test_htp_int8_uses_the_devices_activation_dtype() -> None:
    plan = plan_for("mobilenet", "qualcomm-htp", with_data=True)
    assert plan.leaf == "full_int8_device"
    assert plan.recipe.activation_dtype == "uint8"  # the leaf asks int8; the HTP takes uint8/uint16
    assert plan.recipe.io_dtype == "uint8"


def test_tight_accuracy_budget_picks_16x8_where_supported() -> None:
    tight = plan_for("mobilenet", "qualcomm-htp", with_data=True, goals=UserGoals(max_drop=0.001))
    assert tight.leaf == "int16x8_device"
    assert tight.recipe.activation_dtype == "uint16" and tight.recipe.weight_dtype == "int8"
    loose = plan_for("mobilenet", "qualcomm-htp", with_data=True, goals=UserGoals(max_drop=0.02))
    assert loose.leaf == "full_int8_device"
    edgetpu = plan_for("mobilenet", "edgetpu", with_data=True, goals=UserGoals(max_drop=0.001))
    assert edgetpu.leaf == "full_int8_device"  # no 16-bit activations on the Edge TPU


def test_transformer_on_edgetpu_falls_back_so_none_with_the_reason() -> None:
    plan = plan_for("transformer", "edgetpu", with_data=True)
    assert plan.technique == "none"
    step = plan.trace[-1]
    assert step.node == "integer_runs_most" and not step.answer
    assert step.facts["coverage.device_mac_fraction"] < 0.5
    assert "falls back" in plan.summary


# --- GPUs and CPUs ---


@pytest.mark.parametrize("model", ["mobilenet", "transformer", "lstm", "mlp", "digits"])
@pytest.mark.parametrize("with_data", [False, True])
def test_fp16_accelerated_gpu_gets_fp16(model: str, with_data: bool) -> None:
    plan = plan_for(model, "gpu-fp16", with_data)
    assert plan.technique == "fp16" and plan.leaf == "fp16_gpu"
    assert plan.recipe.io_dtype == "float32"


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2", "arm-a53", "arm-a76"])
def test_cpu_conv_heavy_with_data_gets_static_int8(target: str) -> None:
    plan = plan_for("mobilenet", target, with_data=True)
    assert plan.technique == "full_int8"
    assert plan.recipe.activation_dtype == "uint8" and plan.recipe.weight_dtype == "int8"
    assert plan.recipe.per_channel and plan.recipe.io_dtype == "float32"
    assert plan.recipe.fixed_output_params == {}
    assert plan.recipe.reduce_range is (target == "x86-avx2")


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2", "arm-a53", "arm-a76"])
@pytest.mark.parametrize(("model", "ops"), [("transformer", ["MatMul"]), ("lstm", ["Gemm", "LSTM"])])
@pytest.mark.parametrize("with_data", [False, True])
def test_cpu_weight_bound_gets_weight_only_without_conv(
    target: str, model: str, ops: list[str], with_data: bool
) -> None:
    plan = plan_for(model, target, with_data)
    assert plan.technique == "weight_only_int8"
    assert plan.recipe.op_types_to_quantize == ops
    assert set(plan.recipe.op_types_to_quantize) <= set(DYNAMIC_QUANT_OPS)
    assert plan.recipe.reduce_range is (target == "x86-avx2")


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2", "arm-a53"])
def test_cpu_convnet_without_data_quantizes_dense_layers_only(target: str) -> None:
    plan = plan_for("mobilenet", target, with_data=False)
    assert plan.leaf == "weight_only_dense_layers"
    assert plan.recipe.op_types_to_quantize == ["Gemm"]  # the classifier; never Conv (ConvInteger is slow)


def test_conv_only_model_without_data_keeps_float_and_asks_for_data() -> None:
    plan = plan_for("conv_chain", "x86-vnni")
    assert plan.leaf == "keep_float_needs_data" and plan.technique == "none"
    assert "--data" in plan.summary


def test_weight_only_without_any_matching_op_keeps_a_non_empty_op_list(tmp_path: Path) -> None:
    """An empty op_types_to_quantize means "every op type" to onnxruntime: it must not appear for a conv-only
    model, whose weight-only plan (from a user's tree) then warns that it changes nothing."""
    rules = tmp_path / "dense.yaml"
    rules.write_text(
        "version: 1\nstart: dense\nnodes: []\nleaves:\n  - id: dense\n    technique: weight_only_int8\n"
        "    summary: dense layers only\n    recipe: {op_types_to_quantize: [MatMul, Gemm]}\n",
        encoding="utf-8",
    )
    plan = plan_model(graph_of("conv_chain"), load_profile("x86-vnni"), load_tree(rules))
    assert plan.leaf == "dense"
    assert plan.recipe.op_types_to_quantize == ["Gemm", "MatMul"]
    assert any("would change nothing" in w for w in plan.warnings)
    assert plan.predicted.size_bytes == plan.predicted.float_size_bytes


def test_arm_a76_convnet_without_data_gets_fp16_with_blocked_ops() -> None:
    plan = plan_for("small_convnet", "arm-a76")
    assert plan.leaf == "fp16_cpu"
    profile = load_profile("arm-a76")
    ops = {n.op_type for n in graph_of("small_convnet").compute_nodes()}
    assert plan.recipe.fp16_op_block_list == sorted(op for op in ops if "fp16" not in profile.precisions_for(op))


def test_too_small_model_is_kept_float_with_the_reason() -> None:
    plan = plan_for("digits", "x86-vnni", with_data=True)
    assert plan.technique == "none" and plan.leaf == "keep_float_too_small"
    step = next(s for s in plan.trace if s.node == "worth_quantizing")
    assert not step.answer and step.facts["model.macs"] < 1_000_000
    assert "too small" in plan.summary
    sized = plan_for("digits", "x86-vnni", goals=UserGoals(prefer="size"))
    assert sized.leaf == "weight_only_for_size"
    assert sized.recipe.op_types_to_quantize == ["Conv", "Gemm"]
    assert sized.predicted.size_bytes < sized.predicted.float_size_bytes


def test_compute_in_control_flow_is_kept_float() -> None:
    plan = plan_for("loop", "x86-vnni", with_data=True)
    assert plan.technique == "none" and plan.leaf == "keep_float_control_flow"
    assert plan.facts["model.control_flow"] is True
    assert plan.facts["model.control_flow_mac_fraction"] >= 0.5
    assert plan.trace[-1].node == "compute_in_control_flow" and plan.trace[-1].answer


def test_int8_slower_than_float_is_kept_float(tmp_path: Path) -> None:
    plan = plan_for("small_convnet", slow_int8_profile(tmp_path), with_data=True)
    assert plan.leaf == "keep_float_no_int8"
    assert plan.facts["device.int8_accelerated"] is False
    assert plan.facts["device.int8_speedup"] < 1


# --- predictions ---


def _size_ratio(plan: Plan) -> float:
    return plan.predicted.size_bytes / plan.predicted.float_size_bytes


@pytest.mark.parametrize(
    ("model", "target", "with_data", "technique"),
    [
        ("mlp", "x86-vnni", True, "weight_only_int8"),
        ("mlp", "edgetpu", True, "full_int8"),
        ("lstm", "x86-avx2", False, "weight_only_int8"),
        ("lstm", "mcu-cortex-m", True, "full_int8"),
        ("shared_weight_mlp", "x86-vnni", False, "weight_only_int8"),
    ],
)
def test_weight_heavy_int8_is_a_quarter_of_float(model: str, target: str, with_data: bool, technique: str) -> None:
    plan = plan_for(model, target, with_data, UserGoals(prefer="size"))
    assert plan.technique == technique
    assert 0.24 <= _size_ratio(plan) <= 0.28
    graph = graph_of(model)
    assert plan.predicted.float_size_bytes == (
        graph.path.stat().st_size if graph.path is not None else graph.model.ByteSize()
    )


@pytest.mark.parametrize("model", ["mlp", "lstm", "shared_weight_mlp", "mobilenet"])
def test_fp16_is_half_of_float(model: str) -> None:
    plan = plan_for(model, "gpu-fp16")
    assert plan.technique == "fp16"
    assert 0.49 <= _size_ratio(plan) <= 0.55


def test_qdq_overhead_is_included_for_small_tensors() -> None:
    """The digits CNN's weights are small: Q/DQ pairs and scales keep its int8 size well above a quarter."""
    plan = plan_for("digits", "edgetpu", with_data=True)
    assert 0.28 < _size_ratio(plan) < 0.5


def test_keeping_float_predicts_the_float_size_and_latency() -> None:
    plan = plan_for("digits", "x86-vnni")
    assert plan.technique == "none"
    assert plan.predicted.size_bytes == plan.predicted.float_size_bytes
    assert plan.predicted.latency_ratio == 1.0
    assert plan.predicted.latency_ms == plan.predicted.float_latency_ms


@pytest.mark.parametrize("with_data", [False, True])
def test_mcu_has_no_latency_ratio(with_data: bool) -> None:
    plan = plan_for("mobilenet", "mcu-cortex-m", with_data)
    assert plan.predicted.latency_ratio is None
    assert plan.predicted.float_latency_ms is None
    assert "no ratio" in plan.predicted.basis
    low, high = plan.predicted.latency_ms
    assert 0 < low < high
    assert not any("latency of the float model" in w for w in plan.warnings)


def test_integer_only_device_with_a_host_compares_against_the_host() -> None:
    plan = plan_for("mobilenet", "edgetpu", with_data=True)
    assert plan.predicted.latency_ratio is not None and plan.predicted.float_latency_ms is not None
    assert "arm-a53" in plan.predicted.basis
    assert plan.predicted.label == "estimate"
    slower = plan_for("digits", "edgetpu", with_data=True)
    assert slower.predicted.latency_ratio > 1
    assert any("its host arm-a53: quantizing may make it slower" in w for w in slower.warnings)


def test_int8_speeds_up_large_models_on_cpus() -> None:
    for model, target, with_data in [("mobilenet", "x86-vnni", True), ("transformer", "x86-vnni", False)]:
        plan = plan_for(model, target, with_data)
        assert plan.predicted.latency_ratio is not None and plan.predicted.latency_ratio < 1


# --- warnings ---


def test_size_budget_warning() -> None:
    plan = plan_for("mlp", "x86-vnni", goals=UserGoals(max_size_bytes=100_000))
    assert plan.facts["user.max_size_bytes"] == 100_000
    assert any("exceeds the budget of 100000 B" in w for w in plan.warnings)
    roomy = plan_for("mlp", "x86-vnni", goals=UserGoals(max_size_bytes=10**9))
    assert not any("budget" in w for w in roomy.warnings)


def test_synthetic_data_is_flagged() -> None:
    graph = graph_of("mobilenet")
    plan = plan_model(graph, load_profile("edgetpu"), tree(), synthetic_dataset(graph, 4))
    assert plan.facts["data.synthetic"] is True
    assert any(w.startswith("SYNTHETIC calibration data") for w in plan.warnings)


def test_first_cut_warning_on_partial_coverage() -> None:
    plan = plan_for("late_cut_convnet", "edgetpu", with_data=True)
    assert plan.leaf == "full_int8_device"
    assert plan.facts["coverage.compatible"] is False
    assert any(w.startswith("falls back at head (LeakyRelu)") for w in plan.warnings)
    whole = plan_for("sigmoid_convnet", "edgetpu", with_data=True)
    assert whole.facts["coverage.compatible"] is True
    assert not any(w.startswith("falls back at") for w in whole.warnings)


# --- the decision matrix ---


@pytest.fixture(scope="module")
def matrix() -> dict[tuple[str, bool, str], tuple[str, str]]:
    profiles: list[HardwareProfile] = [load_profile(name) for name in shipped_profile_names()]
    cells = decision_matrix(tree(), profiles)
    return {(c.family.split(" ")[0], c.with_data, c.target): (c.technique, c.leaf) for c in cells}


@pytest.mark.parametrize(
    ("family", "with_data", "target", "technique", "leaf"),
    [
        ("MobileNet-style", True, "edgetpu", "full_int8", "full_int8_device"),
        ("MobileNet-style", False, "edgetpu", "none", "refuse_without_data"),
        ("MobileNet-style", True, "gpu-fp16", "fp16", "fp16_gpu"),
        ("transformer", False, "gpu-fp16", "fp16", "fp16_gpu"),
        ("small", True, "x86-avx2", "full_int8", "full_int8_reduce_range"),
        ("MobileNet-style", True, "x86-avx2", "full_int8", "full_int8_reduce_range"),
        ("MobileNet-style", True, "x86-vnni", "full_int8", "full_int8_cpu"),
        ("transformer", True, "x86-vnni", "weight_only_int8", "weight_only"),
        ("transformer", False, "x86-vnni", "weight_only_int8", "weight_only"),
        ("transformer", True, "edgetpu", "none", "keep_float_falls_back"),
        ("LSTM", True, "x86-avx2", "weight_only_int8", "weight_only_reduce_range"),
    ],
)
def test_decision_matrix_cells(
    matrix: dict[tuple[str, bool, str], tuple[str, str]],
    family: str,
    with_data: bool,
    target: str,
    technique: str,
    leaf: str,
) -> None:
    assert matrix[(family, with_data, target)] == (technique, leaf)


def test_decision_matrix_covers_every_family_target_and_data_case(
    matrix: dict[tuple[str, bool, str], tuple[str, str]],
) -> None:
    assert len(matrix) == len(zoo.FAMILIES) * 2 * len(shipped_profile_names())
    gpu = {key: value for key, value in matrix.items() if key[2] == "gpu-fp16"}
    assert {technique for technique, _ in gpu.values()} == {"fp16"}


# --- docs/planning.md stays accurate ---

PLANNING_DOC = Path(__file__).resolve().parents[1] / "docs" / "planning.md"


def test_planning_doc_fact_table_matches_the_catalogue() -> None:
    text = PLANNING_DOC.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{name}` | {spec.type} | {spec.description} |" for name, spec in FACTS.items()]


def test_planning_doc_example_tree_loads(tmp_path: Path) -> None:
    text = PLANNING_DOC.read_text(encoding="utf-8")
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example, encoding="utf-8")
    rules = load_tree(path)
    assert rules.leaf_ids() == ["int8_leaf", "refuse_leaf", "cpu_leaf"]
    graph = graph_of("mobilenet")
    assert plan_model(graph, load_profile("edgetpu"), rules, data_for(graph)).leaf == "int8_leaf"
    assert plan_model(graph, load_profile("x86-vnni"), rules).leaf == "cpu_leaf"


def test_the_share_of_macs_a_device_must_run_is_read_from_the_tree(tmp_path: Path) -> None:
    """The search holds integer-only candidates to the tree's own threshold (not a restated constant), and the
    plan's JSON does not carry it."""
    shipped = tree()
    assert shipped.lower_bound("coverage.device_mac_fraction") == 0.5
    text = (
        (Path(shipped.source))
        .read_text()
        .replace(
            '{fact: coverage.device_mac_fraction, op: ">=", value: 0.5}',
            '{fact: coverage.device_mac_fraction, op: ">=", value: 0.9}',
        )
    )
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(text)
    graph = load_model(zoo.small_convnet())
    plan = plan_model(graph, load_profile("edgetpu"), load_tree(stricter), synthetic_dataset(graph, 8))
    assert plan.device_share_floor == 0.9
    assert "device_share_floor" not in plan.model_dump_json()
    assert shipped.lower_bound("model.macs") is not None and shipped.lower_bound("device.name") is None
