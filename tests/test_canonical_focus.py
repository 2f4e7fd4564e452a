"""The converter rewrites for detectors and residual exports: YOLOX/YOLOv5's Focus (four stride-2 Slices joined on
channels) becomes SpaceToDepth, and ONNX `Sum` becomes `Add`. Each rewrite keeps the outputs in float, is skipped
when the pattern does not match, and carries through the Edge TPU pipeline (audit, quantize, the written .tflite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import ModelProto, NodeProto, helper

from autoptq import api
from autoptq.devices.canonical import canonical_model
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.emulators.integer import build_exact_model, exact_session, quantize_inputs
from tests.conftest import build, const, tensor

RNG = np.random.default_rng(0)
TO_THE_END = np.iinfo(np.int64).max
"""The end an exporter writes for `x[..., s::2]` (PyTorch exports INT64_MAX)."""
YOLOX = [(0, 0), (1, 0), (0, 1), (1, 1)]
"""YOLOX's Focus order: x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]."""
SPACE_TO_DEPTH = [(0, 0), (0, 1), (1, 0), (1, 1)]
"""SpaceToDepth's channel blocks: offset (dy, dx) at block 2·dy + dx."""


def slices(offset: tuple[int, int], out: str, chained: bool, step: int = 2) -> tuple[list[NodeProto], list]:
    """`x[:, :, dy::step, dx::step]` as one Slice on axes (2, 3), or as two chained Slices as YOLOX's export has."""
    dy, dx = offset
    name = f"s{dy}{dx}"
    if not chained:
        node = helper.make_node("Slice", ["x", f"{name}/st", "end2", "axis_hw", f"step{step}2"], [out], name=name)
        return [node], [const(f"{name}/st", [dy, dx], np.int64)]
    rows = helper.make_node(
        "Slice", ["x", f"{name}/dy", "end1", "axis_h", f"step{step}"], [f"{name}/rows"], name=f"{name}h"
    )
    cols = helper.make_node("Slice", [f"{name}/rows", f"{name}/dx", "end1", "axis_w", f"step{step}"], [out], name=name)
    return [rows, cols], [const(f"{name}/dy", [dy], np.int64), const(f"{name}/dx", [dx], np.int64)]


def focus_model(
    order: list[tuple[int, int]], chained: bool = False, step: int = 2, shared: bool = False, opset: int = 13
) -> ModelProto:
    """Focus in `order` → Conv 3x3 → Relu; `shared`: the Concat is a graph output too (the weight cannot absorb it)."""
    nodes, inits = [], []
    for offset in order:
        made, params = slices(offset, f"part{offset[0]}{offset[1]}", chained, step)
        nodes += made
        inits += params
    height, width = 8 // step, 10 // step
    nodes += [
        helper.make_node("Concat", [f"part{dy}{dx}" for dy, dx in order], ["focus"], name="focus", axis=1),
        helper.make_node("Conv", ["focus", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inits += [
        const("end1", [TO_THE_END], np.int64),
        const("end2", [TO_THE_END, TO_THE_END], np.int64),
        const("axis_h", [2], np.int64),
        const("axis_w", [3], np.int64),
        const("axis_hw", [2, 3], np.int64),
        const(f"step{step}", [step], np.int64),
        const(f"step{step}2", [step, step], np.int64),
        const("w", RNG.standard_normal((6, 12, 3, 3)) * 0.3),
        const("b", RNG.standard_normal(6) * 0.1),
    ]
    outputs = [tensor("y", [1, 6, height, width])]
    if shared:
        outputs.append(tensor("focus", [1, 12, height, width]))
    return build(nodes, [tensor("x", [1, 3, 8, 10])], outputs, inits, opset=opset)


def outputs(model: ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def assert_same_outputs(model: ModelProto, rewritten: ModelProto) -> None:
    onnx.checker.check_model(rewritten)
    feed = {"x": RNG.standard_normal((1, 3, 8, 10)).astype(np.float32)}
    for before, after in zip(outputs(model, feed), outputs(rewritten, feed), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def op_types(model: ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# --- Focus → SpaceToDepth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chained", [False, True], ids=["one-slice", "yolox-export"])
@pytest.mark.parametrize("order", [YOLOX, SPACE_TO_DEPTH, list(reversed(YOLOX))], ids=["yolox", "s2d", "reversed"])
def test_focus_becomes_space_to_depth_with_the_order_in_the_conv_weight(
    order: list[tuple[int, int]], chained: bool
) -> None:
    model = focus_model(order, chained)
    rewritten, rewrites = canonical_model(model, ["focus_to_space_to_depth"])
    assert [(r.node, r.op_type, r.into) for r in rewrites] == [("focus", "Slice+Concat", ["SpaceToDepth"])]
    assert op_types(rewritten) == ["SpaceToDepth", "Conv", "Relu"]
    assert_same_outputs(model, rewritten)
    weight = {i.name: i for i in rewritten.graph.initializer}["w"]
    same = np.array_equal(onnx.numpy_helper.to_array(weight), onnx.numpy_helper.to_array(model.graph.initializer[-2]))
    assert same == (order == SPACE_TO_DEPTH)  # the weight is permuted only when the orders differ


@pytest.mark.parametrize("opset", [13, 18])  # Split takes num_outputs from opset 18 on
def test_a_concat_read_elsewhere_keeps_its_order_through_a_split(opset: int) -> None:
    model = focus_model(YOLOX, chained=True, shared=True, opset=opset)
    rewritten, rewrites = canonical_model(model, ["focus_to_space_to_depth"])
    assert [r.into for r in rewrites] == [["SpaceToDepth", "Split", "Concat"]]
    assert "Slice" not in op_types(rewritten)
    assert_same_outputs(model, rewritten)


def test_other_slices_are_left_alone() -> None:
    """Step-1 slices, a repeated offset, a branch read elsewhere, a Concat on another axis: not a Focus."""
    half_steps = focus_model(SPACE_TO_DEPTH, step=1)
    repeated = focus_model(SPACE_TO_DEPTH)
    starts = next(i for i in repeated.graph.initializer if i.name == "s11/st")
    starts.CopyFrom(const("s11/st", [0, 0], np.int64))  # x[..., ::2, ::2] twice, no x[..., 1::2, 1::2]
    read_elsewhere = focus_model(YOLOX, chained=True)
    read_elsewhere.graph.output.append(tensor("s00/rows", [1, 3, 4, 10]))
    other_axis = focus_model(YOLOX)
    next(n for n in other_axis.graph.node if n.op_type == "Concat").attribute[0].i = 2
    for model in (half_steps, repeated, read_elsewhere, other_axis):
        rewritten, rewrites = canonical_model(model, ["focus_to_space_to_depth"])
        assert rewrites == [] and rewritten is model


def test_an_odd_extent_is_not_a_focus() -> None:
    """x[..., 1::2] of an odd width is one column short of x[..., ::2]: SpaceToDepth would not be the same."""
    model = focus_model(YOLOX)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 9
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    assert canonical_model(model, ["focus_to_space_to_depth"])[1] == []


def test_edgetpu_runs_a_focus_model_whole() -> None:
    (literal,) = api.audit(focus_model(YOLOX, chained=True), "edgetpu", as_exported=True)
    assert literal.device_mac_fraction == 0.0 and literal.first_cut.op_type == "Slice"
    (canonical,) = api.audit(focus_model(YOLOX, chained=True), "edgetpu")
    assert canonical.compatible and canonical.device_mac_fraction == 1.0
    assert [r.rule for r in canonical.rewrites] == ["focus_to_space_to_depth"]


def test_edgetpu_quantizes_space_to_depth_in_integers_and_writes_it(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")
    from autoptq.deploy.tflite_writer import export_tflite
    from autoptq.evaluate.emulators.tflite_runtime import run_litert

    model = focus_model(YOLOX, chained=True)
    data = tmp_path / "calib.npz"
    np.savez(data, x=RNG.standard_normal((16, 3, 8, 10)).astype(np.float32))
    _, outcome = api.quantize(model, load_profile("edgetpu"), tmp_path / "m.onnx", data=data)
    assert outcome.technique == "full_int8", outcome.reason
    produced = onnx.load(tmp_path / "m.onnx")
    (s2d,) = [n for n in produced.graph.node if n.op_type == "SpaceToDepth"]
    producers = {o: n.op_type for n in produced.graph.node for o in n.output}
    readers = [n.op_type for n in produced.graph.node if s2d.output[0] in n.input]
    assert producers[s2d.input[0]] == "DequantizeLinear" and readers == ["QuantizeLinear"]
    assert outcome.device_file is not None and outcome.device_file.op_counts == {"CONV_2D": 1, "SPACE_TO_DEPTH": 1}
    profile = load_profile("edgetpu")
    feeds = [{"x": RNG.standard_normal((1, 3, 8, 10)).astype(np.float32)} for _ in range(4)]
    exact = exact_session(build_exact_model(produced, profile))
    for sample, litert in zip(feeds, run_litert(export_tflite(produced, profile), feeds), strict=True):
        np.testing.assert_array_equal(litert[0], exact.run(None, quantize_inputs(produced, sample))[0])


# --- Sum → Add -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "into"), [(1, ["Identity"]), (2, ["Add"]), (3, ["Add", "Add"])])
def test_sum_becomes_adds(count: int, into: list[str]) -> None:
    names = ["x", "bias", "scale"][:count]  # the constants broadcast over x, as Sum allows
    inits = [const("bias", RNG.standard_normal((3, 1, 1))), const("scale", RNG.standard_normal((1, 1, 10)))]
    nodes = [helper.make_node("Sum", names, ["s"], name="sum"), helper.make_node("Relu", ["s"], ["y"], name="relu")]
    model = build(nodes, [tensor("x", [1, 3, 8, 10])], [tensor("y", [1, 3, 8, 10])], inits)
    rewritten, rewrites = canonical_model(model, ["sum_of_two"])
    assert [(r.node, r.op_type, r.into) for r in rewrites] == [("sum", "Sum", into)]
    assert op_types(rewritten) == [*into, "Relu"]
    assert_same_outputs(model, rewritten)


def test_edgetpu_maps_a_residual_sum() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sum", ["x", "c"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    inits = [const("w", RNG.standard_normal((3, 3, 3, 3)) * 0.3), const("b", np.zeros(3))]
    model = build(nodes, [tensor("x", [1, 3, 8, 10])], [tensor("y", [1, 3, 8, 10])], inits)
    (literal,) = api.audit(model, "edgetpu", as_exported=True)
    (canonical,) = api.audit(model, "edgetpu")
    assert literal.first_cut.node == "residual" and canonical.compatible
