"""devices.coverage: per-node statuses, the rank/shape/dtype rules, named checks, partitioning and memory fit."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import get_args

import numpy as np
import onnx
import pytest
import yaml
from conftest import build, const, tensor
from onnx import TensorProto, helper

from autoptq.devices.coverage import CHECKS, STATUS_TEXT, CoverageReport, analyse, peak_activation_bytes
from autoptq.devices.profiles import ConstraintCheck, load_profile, shipped_profile_names
from autoptq.model import zoo
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.shapes import bind
from autoptq.report.text import render_audit

# Sizes pinned: the hand-computed numbers below depend on them.
MOBILENET = {"size": 64, "width": 16, "blocks": 6, "classes": 10}
MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mobilenet": lambda: zoo.mobilenet_style(**MOBILENET),
    "mobilenet leaky": lambda: zoo.mobilenet_style(**MOBILENET, leaky_after_first=True),
    "mobilenet dynamic batch": lambda: zoo.mobilenet_style(**MOBILENET, batch="N"),
    "lstm": lambda: zoo.lstm_model(seq=20, features=32, hidden=64, classes=8),
    "loop": lambda: zoo.loop_model(trips=8, dim=32),
    "transposed-weight mlp": lambda: zoo.transposed_weight_mlp(features=32, hidden=64),
}
FAMILIES: dict[str, Callable[[], onnx.ModelProto]] = {**zoo.FAMILIES, **MODELS}


@cache
def family_graph(name: str) -> ModelGraph:
    return load_model(FAMILIES[name]())


def audit(model: onnx.ModelProto | ModelGraph, target: str) -> CoverageReport:
    graph = model if isinstance(model, ModelGraph) else load_model(model)
    return analyse(graph, load_profile(target))


def verdict(report: CoverageReport, name: str):
    return next(n for n in report.nodes if n.name == name)


# --- the MobileNet story on the Edge TPU ----------------------------------------------------------


def test_mobilenet_maps_fully_on_edgetpu() -> None:
    graph = family_graph("mobilenet")
    report = audit(graph, "edgetpu")
    assert report.compatible and report.runnable
    assert report.device_mac_fraction == 1.0
    assert report.device_op_fraction == 1.0
    assert report.mac_fraction_by_precision == {"int8": 1.0}
    assert report.first_cut is None
    assert report.mac_fraction_before_first_cut == 1.0
    assert [(s.on, s.nodes) for s in report.segments] == [("device", len(graph.compute_nodes()))]
    assert report.device_segments == 1 and report.transitions == 0
    assert all(n.status == "mapped" and n.precision == "int8" for n in report.nodes)
    assert report.total_macs == graph.total_macs
    assert {row.status for row in report.op_summary} == {"Mapped to edgetpu"}
    assert report.dynamic_dims == []


def test_leaky_relu_after_the_stem_cuts_the_graph() -> None:
    graph = family_graph("mobilenet leaky")
    report = audit(graph, "edgetpu")
    names = [n.name for n in graph.compute_nodes()]
    stem, leaky = graph.node(names[0]), graph.node(names[1])
    assert (stem.op_type, leaky.op_type) == ("Conv", "LeakyRelu")

    assert not report.compatible and report.runnable  # the Dev Board's CPU takes the rest
    assert report.first_cut is not None
    assert (report.first_cut.node, report.first_cut.op_type) == (leaky.name, "LeakyRelu")
    assert "LeakyRelu is not in the edgetpu op table" in report.first_cut.reason
    # Only the stem runs on the device: by hand, 32*32*16 outputs x 27 MACs out of the model's 2,043,146.
    assert stem.macs == 32 * 32 * 16 * 27
    assert report.device_mac_fraction == pytest.approx(stem.macs / graph.total_macs)
    assert report.device_mac_fraction < 0.25
    assert report.mac_fraction_before_first_cut == report.device_mac_fraction
    assert report.device_op_fraction == pytest.approx(1 / len(names))
    assert verdict(report, leaky.name).status == "unsupported_op"
    after = report.nodes[2:]
    assert after and all(n.status == "after_cut" and not n.on_device for n in after)
    assert all(repr(leaky.name) in n.reason for n in after)
    assert [(s.on, s.nodes) for s in report.segments] == [("device", 1), ("host", len(names) - 1)]
    assert report.transitions == 1
    rows = {(r.operator, r.status): r.count for r in report.op_summary}
    assert rows[("LeakyRelu", "Operation not supported")] == 1
    assert rows[("Conv", "Mapped to edgetpu")] == 1
    assert rows[("Conv", "More than one subgraph is not supported")] == 12
    assert STATUS_TEXT["after_cut"] == "More than one subgraph is not supported"


def test_a_late_unsupported_op_is_harmless() -> None:
    model = zoo.mobilenet_style(**MOBILENET)
    model.graph.node.append(helper.make_node("ArgMax", ["probs_out"], ["label"], name="argmax", axis=1))
    del model.graph.output[:]
    model.graph.output.append(tensor("label", [1, 1], TensorProto.INT64))
    report = audit(model, "edgetpu")
    assert report.first_cut is not None and report.first_cut.node == "argmax"
    assert not report.compatible
    assert report.device_mac_fraction > 0.999
    assert [s.on for s in report.segments] == ["device", "host"]


def test_open_batch_is_bound_to_one_for_the_audit() -> None:
    graph = bind(family_graph("mobilenet dynamic batch"), None)
    edgetpu = audit(graph, "edgetpu")
    assert edgetpu.compatible and edgetpu.dynamic_dims == []
    assert edgetpu.device_mac_fraction == 1.0


def test_dynamic_batch_is_flagged_on_edgetpu_but_runs_on_x86() -> None:
    graph = family_graph("mobilenet dynamic batch")
    edgetpu = audit(graph, "edgetpu")
    assert not edgetpu.compatible
    assert edgetpu.dynamic_dims == ["N"]
    assert edgetpu.nodes[0].status == "dynamic_shape"
    assert "'N'" in edgetpu.nodes[0].reason
    assert edgetpu.first_cut is not None and edgetpu.first_cut.node == edgetpu.nodes[0].name
    assert edgetpu.device_mac_fraction == 0.0

    x86 = audit(graph, "x86-vnni")
    assert x86.compatible
    assert x86.device_mac_fraction == 1.0
    assert x86.dynamic_dims == ["N"]  # reported even where it does no harm


def test_rank_rule_on_edgetpu() -> None:
    model = zoo.mobilenet_style(**MOBILENET, batch=2)
    report = audit(model, "edgetpu")
    first = report.nodes[0]
    assert first.status == "unsupported_shape"
    assert "rank rule" in first.reason and "4 dimensions larger than 1" in first.reason
    assert "allows 3" in first.reason
    assert not report.compatible
    # The microcontroller's kernels handle 4-D tensors: the same model maps there.
    assert audit(model, "mcu-cortex-m").compatible


# --- the named checks -----------------------------------------------------------------------------

F = TensorProto.FLOAT
Case = Callable[[], onnx.ModelProto]


def _conv(dilations: list[int] | None = None, group: int = 1) -> onnx.ModelProto:
    attrs: dict = {"kernel_shape": [3, 3], "group": group}
    if dilations:
        attrs["dilations"] = dilations
        attrs["pads"] = [dilations[0], dilations[1]] * 2
    else:
        attrs["pads"] = [1] * 4
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="n", **attrs)
    return build(
        [node], [tensor("x", [1, 8, 8, 8])], [tensor("y", [1, 8, 8, 8])], [const("w", np.ones((8, 8 // group, 3, 3)))]
    )


def _matmul(constant: bool) -> onnx.ModelProto:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="n")
    if constant:
        return build([node], [tensor("x", [1, 8])], [tensor("y", [1, 4])], [const("w", np.ones((8, 4)))])
    return build([node], [tensor("x", [1, 8]), tensor("w", [8, 4])], [tensor("y", [1, 4])])


def _reduce_mean(axes: list[int]) -> onnx.ModelProto:
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="n", keepdims=0)
    out = [d for i, d in enumerate([2, 4, 6]) if i not in axes]
    return build([node], [tensor("x", [2, 4, 6])], [tensor("y", out)], [const("axes", axes, np.int64)], opset=18)


def _pad(pads: list[int], axes: list[int] | None = None, batch: int = 1) -> onnx.ModelProto:
    shape = [batch, 3, 1, 8]
    inputs = ["x", "pads"] + (["", "axes"] if axes is not None else [])
    axes_ = axes if axes is not None else list(range(4))
    n = len(axes_)
    out = list(shape)
    for i, a in enumerate(axes_):
        out[a] += pads[i] + pads[i + n]
    inits = [const("pads", pads, np.int64)] + ([const("axes", axes, np.int64)] if axes is not None else [])
    node = helper.make_node("Pad", inputs, ["y"], name="n")
    return build([node], [tensor("x", shape)], [tensor("y", out)], inits, opset=18)


def _slice(steps: list[int]) -> onnx.ModelProto:
    inits = [const(k, v, np.int64) for k, v in (("st", [0, 0]), ("en", [4, 8]), ("ax", [1, 2]), ("sp", steps))]
    node = helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"], name="n")
    out = [1, 4, len(range(0, 8, steps[1]))]
    return build([node], [tensor("x", [1, 6, 8])], [tensor("y", out)], inits)


def _squeeze(shape: list[int], axes: list[int] | None) -> onnx.ModelProto:
    out = [d for i, d in enumerate(shape) if not (d == 1 and (axes is None or i in axes))]
    inputs = ["x"] + (["axes"] if axes is not None else [])
    inits = [const("axes", axes, np.int64)] if axes is not None else []
    node = helper.make_node("Squeeze", inputs, ["y"], name="n")
    return build([node], [tensor("x", shape)], [tensor("y", out)], inits)


def _prelu(slope_shape: list[int]) -> onnx.ModelProto:
    node = helper.make_node("PRelu", ["x", "slope"], ["y"], name="n")
    shape = [1, 4, 5, 6]
    return build([node], [tensor("x", shape)], [tensor("y", shape)], [const("slope", np.ones(slope_shape))])


def _concat(constant: str | None) -> onnx.ModelProto:
    node = helper.make_node("Concat", ["x", "z"], ["y"], name="n", axis=1)
    if constant is None:
        return build([node], [tensor("x", [1, 4]), tensor("z", [1, 4])], [tensor("y", [1, 8])])
    value = np.zeros((1, 4)) if constant == "zeros" else np.ones((1, 4))
    return build([node], [tensor("x", [1, 4])], [tensor("y", [1, 8])], [const("z", value)])


# (check, passing model, failing model, a phrase of the failure); every model's node under test is named "n".
CHECK_CASES: list[tuple[str, Case, Case, str]] = [
    ("same_dilation_xy", lambda: _conv([2, 2]), lambda: _conv([1, 2]), "differ between x and y"),
    ("same_dilation_xy", lambda: _conv(), lambda: _conv([1, 2]), "dilations [1, 2]"),
    ("constant_weights", lambda: _matmul(True), lambda: _matmul(False), "activation, not constant weights"),
    ("not_over_batch", lambda: _reduce_mean([1]), lambda: _reduce_mean([0]), "reduces over the batch"),
    (
        "not_over_batch",
        lambda: _pad([0, 0, 1, 1, 0, 0, 1, 1]),
        lambda: _pad([1, 0, 0, 0, 0, 0, 0, 0]),
        "pads the batch",
    ),
    ("not_over_batch", lambda: _pad([1, 1], [3], 2), lambda: _pad([1, 0], [0], 2), "pads the batch"),
    ("strides_all_one", lambda: _slice([1, 1]), lambda: _slice([1, 2]), "not all 1"),
    ("squeeze_leading_only", lambda: _squeeze([1, 1, 16], [0, 1]), lambda: _squeeze([1, 16, 1], [2]), "not only"),
    ("squeeze_leading_only", lambda: _squeeze([1, 1, 16], None), lambda: _squeeze([1, 16, 1], None), "not only"),
    ("alpha_innermost_only", lambda: _prelu([4, 1, 1]), lambda: _prelu([1, 1, 6]), "more than the channel"),
    ("alpha_innermost_only", lambda: _prelu([1]), lambda: _prelu([5, 6]), "more than the channel"),
    ("no_constant_inputs_except_zeros", lambda: _concat("zeros"), lambda: _concat("ones"), "only as zeros"),
    ("no_constant_inputs_except_zeros", lambda: _concat(None), lambda: _concat("ones"), "only as zeros"),
    ("depthwise_or_group_one", lambda: _conv(group=8), lambda: _conv(group=2), "group=2"),
    ("depthwise_or_group_one", lambda: _conv(group=1), lambda: _conv(group=4), "group=4"),
]


def test_every_named_check_is_implemented_and_tested() -> None:
    assert set(CHECKS) == set(get_args(ConstraintCheck))
    assert {case[0] for case in CHECK_CASES} == set(CHECKS)


@pytest.mark.parametrize(("check", "passing", "failing", "phrase"), CHECK_CASES)
def test_named_check(check: str, passing: Case, failing: Case, phrase: str) -> None:
    good, bad = load_model(passing()), load_model(failing())
    assert CHECKS[check](good.node("n"), good) is None
    problem = CHECKS[check](bad.node("n"), bad)
    assert problem is not None and phrase in problem
    # The Edge TPU profile uses every check: the verdicts follow, with the profile's note in the reason.
    assert verdict(audit(good, "edgetpu"), "n").status == "mapped"
    failed = verdict(audit(bad, "edgetpu"), "n")
    # A structural limit means the op as written is not one the device has; only size/rank rules are shape issues.
    assert failed.status == "unsupported_op"
    assert phrase in failed.reason and "(" in failed.reason


def test_softmax_max_elements() -> None:
    def softmax(shape: list[int]) -> onnx.ModelProto:
        node = helper.make_node("Softmax", ["x"], ["y"], name="n", axis=-1)
        return build([node], [tensor("x", shape)], [tensor("y", shape)])

    assert verdict(audit(softmax([1, 16000]), "edgetpu"), "n").status == "mapped"
    too_big = verdict(audit(softmax([1, 16001]), "edgetpu"), "n")
    assert too_big.status == "unsupported_shape"
    assert "16001 elements, limit 16000" in too_big.reason
    two_d = verdict(audit(softmax([1, 4, 10]), "edgetpu"), "n")
    assert two_d.status == "unsupported_shape" and "SOFTMAX: 1-D input only" in two_d.reason


def test_matmul_of_two_activations() -> None:
    report = audit(_matmul(False), "edgetpu")
    node = verdict(report, "n")
    assert not node.on_device and not report.compatible
    assert "constant weights" in node.reason and "BATCH_MATMUL" in node.reason
    assert audit(_matmul(True), "edgetpu").compatible
    assert audit(_matmul(False), "qualcomm-htp").compatible  # QNN MatMul takes two dynamic inputs


def test_attribute_constraints() -> None:
    def lstm(direction: str) -> onnx.ModelProto:
        d = 2 if direction == "bidirectional" else 1
        node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="n", hidden_size=4, direction=direction)
        inits = [const("W", np.ones((d, 16, 3))), const("R", np.ones((d, 16, 4)))]
        return build([node], [tensor("x", [5, 1, 3])], [tensor("y", [5, d, 1, 4])], inits)

    assert verdict(audit(lstm("forward"), "edgetpu"), "n").status == "mapped"
    bidi = verdict(audit(lstm("bidirectional"), "edgetpu"), "n")
    assert bidi.status == "unsupported_op"
    assert "direction='bidirectional', must be one of ['forward']" in bidi.reason


def test_integer_tensors_are_an_unsupported_dtype_on_integer_devices() -> None:
    node = helper.make_node("Add", ["a", "b"], ["y"], name="n")
    i64 = TensorProto.INT64
    model = build([node], [tensor("a", [1, 4], i64), tensor("b", [1, 4], i64)], [tensor("y", [1, 4], i64)])
    node_verdict = verdict(audit(model, "edgetpu"), "n")
    assert node_verdict.status == "unsupported_dtype" and "int64" in node_verdict.reason
    assert audit(model, "x86-vnni").compatible  # a CPU runs anything


def test_weight_path_ops_are_folded_not_judged() -> None:
    # Transpose and Cast are not in the Edge TPU table, but here they only transform a weight.
    report = audit(family_graph("transposed-weight mlp"), "edgetpu")
    assert report.compatible
    assert [n.name for n in report.nodes] == ["fc1", "relu1", "logits"]


def test_control_flow_is_an_unsupported_op_on_edgetpu_and_fatal_on_the_mcu() -> None:
    edgetpu = audit(family_graph("loop"), "edgetpu")
    assert edgetpu.first_cut is not None and edgetpu.first_cut.op_type == "Loop"
    assert edgetpu.runnable  # falls back to the host
    mcu = audit(family_graph("loop"), "mcu-cortex-m")
    assert not mcu.compatible and not mcu.runnable  # no host to fall back to


# --- partitioning ---------------------------------------------------------------------------------


def _abs_in_the_middle() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("Abs", ["a"], ["b"], name="abs"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inits = [const("w1", np.ones((8, 4, 1, 1))), const("w2", np.ones((6, 8, 1, 1)))]
    return build(nodes, [tensor("x", [1, 4, 8, 8])], [tensor("y", [1, 6, 8, 8])], inits)


def test_any_subgraph_partitioning_counts_transitions_and_bytes() -> None:
    report = audit(_abs_in_the_middle(), "qualcomm-htp")
    assert [(s.on, s.first_node, s.last_node) for s in report.segments] == [
        ("device", "conv1", "conv1"),
        ("host", "abs", "abs"),
        ("device", "conv2", "relu"),
    ]
    assert report.device_segments == 2
    assert report.transitions == 2
    # int8 bytes: input x (4*8*8) in, a (8*8*8) out, b (8*8*8) back in, y (6*8*8) out.
    assert report.transfer_bytes == 256 + 512 + 512 + 384
    macs = {"conv1": 512 * 4, "abs": 512, "conv2": 384 * 8, "relu": 384}
    assert report.total_macs == sum(macs.values())
    assert report.device_mac_fraction == pytest.approx((macs["conv1"] + macs["conv2"] + macs["relu"]) / 6016)
    assert report.first_cut is not None and report.first_cut.node == "abs"
    assert not report.compatible and report.runnable
    assert [n.status for n in report.nodes] == ["mapped", "unsupported_op", "mapped", "mapped"]


def test_bytes_crossing_count_every_tensor_between_two_nodes() -> None:
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="split", axis=1),  # on the HTP
        helper.make_node("Max", ["a", "b"], ["y"], name="max"),  # not in its table: on the CPU
    ]
    model = build(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 4])], [const("sizes", [4, 4], np.int64)])
    report = audit(model, "qualcomm-htp")
    assert [n.on_device for n in report.nodes] == [True, False]
    assert report.transitions == 1
    assert report.transfer_bytes == 8 + 4 + 4  # x in; a and b out


def test_first_cut_partitioning_of_the_same_model() -> None:
    report = audit(_abs_in_the_middle(), "edgetpu")
    assert [n.status for n in report.nodes] == ["mapped", "unsupported_op", "after_cut", "after_cut"]
    assert report.device_segments == 1 and report.transitions == 1
    assert report.transfer_bytes == 256 + 512  # the input in, conv1's output out


def test_user_profile_yaml(tmp_path: Path) -> None:
    profile = {
        "name": "tiny-npu",
        "description": "an NPU that runs convolutions only",
        "kind": "npu",
        "integer_only": True,
        "precisions": {"int8": {"peak_macs_per_s": 1.0e9}},
        "quantization": {"activations": {"dtype": ["int8"]}, "weights": {"dtype": ["int8"]}},
        "ops": {"Conv": {"int8": {}}, "Relu": {"int8": {}}},
        "partitioning": "any_subgraph",
        "host": "arm-a53",
        "emulator": "integer",
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(profile))
    report = analyse(load_model(_abs_in_the_middle()), load_profile(path))
    assert report.target == "tiny-npu"
    assert [n.on_device for n in report.nodes] == [True, False, True, True]
    assert report.transitions == 2


# --- memory ---------------------------------------------------------------------------------------


def test_lstm_on_the_microcontroller() -> None:
    graph = family_graph("lstm")
    report = audit(graph, "mcu-cortex-m")
    lstm = verdict(report, "lstm")
    assert lstm.status == "mapped" and lstm.precision == "int8"  # a forward LSTM: UNIDIRECTIONAL_SEQUENCE_LSTM
    assert report.compatible and report.runnable
    mem = report.memory
    # int8 activations: the input (20*1*32), Y (20*1*1*64) and Y_h (1*1*64) are live while the LSTM runs.
    assert mem.peak_activation_bytes == 20 * 32 + 20 * 64 + 64
    assert (mem.ram_bytes, mem.fits_ram) == (512 * 1024, True)
    # int8 weights: W, R and B of the LSTM, the classifier, the Reshape's 2-element shape.
    params = 4 * 64 * 32 + 4 * 64 * 64 + 8 * 64 + 64 * 8 + 8 + 2
    assert mem.device_param_bytes == params
    assert (mem.flash_bytes, mem.fits_flash) == (2 * 1024 * 1024, True)
    assert mem.parameter_cache_bytes is None and mem.streamed_param_bytes == 0
    text = render_audit([report], "table")
    assert "of RAM 512.00 KiB (fits)" in text and "Weights in flash" in text


def test_activations_that_do_not_fit_the_microcontroller_ram() -> None:
    node = helper.make_node("Relu", ["x"], ["y"], name="n")
    model = build([node], [tensor("x", [1, 8, 256, 256])], [tensor("y", [1, 8, 256, 256])])
    report = audit(model, "mcu-cortex-m")
    assert report.memory.peak_activation_bytes == 2 * 8 * 256 * 256
    assert report.memory.fits_ram is False
    assert "does NOT fit" in render_audit([report], "table")


def test_peak_activation_bytes_follows_tensor_lifetimes() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),  # x, a live
        helper.make_node("Relu", ["a"], ["b"], name="r2"),  # x is dead after r1 ... unless read again
        helper.make_node("Add", ["b", "x"], ["y"], name="add"),  # x, b, y live
    ]
    graph = load_model(build(nodes, [tensor("x", [1, 100])], [tensor("y", [1, 100])]))
    assert peak_activation_bytes(graph) == 3 * 400  # at r2: x, a, b; at add: x, b, y
    assert peak_activation_bytes(graph, itemsize=1) == 3 * 100


def test_peak_activation_counts_what_subgraphs_read() -> None:
    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node("Concat", ["h", "h"], [name], axis=1)
        return helper.make_graph([node], name, [], [tensor(name, [1, 200])])

    nodes = [
        helper.make_node("Sigmoid", ["x"], ["h"], name="pre"),
        helper.make_node("Relu", ["x"], ["m"], name="mid"),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=branch("t"), else_branch=branch("e")),
    ]
    inputs = [tensor("c", [], TensorProto.BOOL), tensor("x", [1, 100])]
    graph = load_model(build(nodes, inputs, [tensor("y", [1, 200]), tensor("m", [1, 100])]))
    # While the If runs, `h` (read only inside its branches) is live with c, m and y.
    assert peak_activation_bytes(graph) == 1 + 400 + 400 + 800


@pytest.fixture(scope="module")
def big_weights() -> ModelGraph:
    """A 2600x2600 int8 weight (6.76 MB > the Edge TPU's 6.5 MB cache) dequantized into a MatMul."""
    n = 2600
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    inits = [const("wq", np.ones((n, n)), np.int8), const("scale", 0.01)]
    return load_model(build(nodes, [tensor("x", [1, n])], [tensor("y", [1, n])], inits))


def test_parameters_above_the_edgetpu_cache_are_streamed(big_weights: ModelGraph) -> None:
    report = audit(big_weights, "edgetpu")
    assert report.compatible  # streamed parameters are slow, not a fallback
    mem = report.memory
    assert mem.device_param_bytes == 2600 * 2600
    assert mem.parameter_cache_bytes == 6_500_000
    assert mem.streamed_param_bytes == 2600 * 2600 - 6_500_000
    assert "streamed 253.91 KiB" in render_audit([report], "table")
    # A device with a larger cache keeps them all on chip.
    assert audit(big_weights, "qualcomm-htp").memory.streamed_param_bytes == 0


# --- every shipped profile x every zoo family -----------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("target", shipped_profile_names())
def test_every_profile_audits_every_family(target: str, family: str) -> None:
    graph = family_graph(family)
    report = audit(graph, target)
    assert report.target == target
    assert [n.name for n in report.nodes] == [n.name for n in graph.compute_nodes()]
    assert report.total_macs == graph.total_macs > 0
    assert 0.0 <= report.device_mac_fraction <= 1.0 and 0.0 <= report.device_op_fraction <= 1.0
    assert report.compatible == all(n.on_device for n in report.nodes)
    assert report.compatible == (report.first_cut is None)
    assert sum(s.nodes for s in report.segments) == len(report.nodes)
    assert sum(s.macs for s in report.segments) == report.total_macs
    assert all(n.status in STATUS_TEXT and n.reason for n in report.nodes)
    assert all((n.precision is not None) == n.on_device for n in report.nodes)
    assert sum(r.count for r in report.op_summary) == len(report.nodes)
    assert report.memory.peak_activation_bytes > 0
    for fmt in ("table", "json", "markdown", "sarif"):
        assert render_audit([report], fmt)
