"""The measured host cost model: calibrate-host writes a table; predictions scale the fp32 roofline by its ratios."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from autoptq.decide.hostcost import HostTable, KernelTiming, load_table, machine_id, model_shapes, predicted_ratio
from autoptq.devices.cost import node_seconds
from autoptq.devices.profiles import load_profile
from autoptq.model import zoo
from autoptq.model.graph import load_model
from autoptq.techniques.recipe import Recipe
from tests.conftest import save

RunCli = Callable[[list[str]], tuple[int, str, str]]


def table(matmul_ratio: float) -> HostTable:
    return HostTable(
        machine=machine_id(),
        onnxruntime_version="test",
        timings=[
            KernelTiming(
                kernel="MatMul",
                shape=[16, 64, 256],
                macs=16 * 64 * 256,
                fp32_ms=0.01,
                ratio={"weight_only_int8": matmul_ratio, "full_int8": 1.0},
            ),
        ],
    )


def test_model_shapes_are_the_model_s_matmuls() -> None:
    shapes = model_shapes(load_model(zoo.text_encoder()))
    assert set(shapes) == {("MatMul", (16, 64, 256)), ("MatMul", (16, 256, 64))}


def test_prediction_scales_the_quantized_nodes_by_the_measured_ratio() -> None:
    graph = load_model(zoo.text_encoder())
    profile = load_profile("x86-vnni")
    times = {n.name: node_seconds(n, "fp32", profile) + profile.cost.per_op_overhead_s for n in graph.compute_nodes()}
    matmul = sum(t for name, t in times.items() if graph.node(name).op_type == "MatMul")
    expected = (sum(times.values()) - matmul + 0.25 * matmul) / sum(times.values())
    recipe = Recipe(op_types_to_quantize=["MatMul"])
    assert predicted_ratio(graph, profile, "weight_only_int8", recipe, table(0.25)) == pytest.approx(expected)
    # Nothing quantized (all MatMuls excluded): the ratio is 1.
    names = [n.name for n in graph.compute_nodes() if n.op_type == "MatMul"]
    excluded = recipe.model_copy(update={"nodes_to_exclude": names})
    assert predicted_ratio(graph, profile, "weight_only_int8", excluded, table(0.25)) == pytest.approx(1.0)


def test_calibrate_host_writes_a_table_for_the_model(tmp_path: Path, run_cli: RunCli) -> None:
    model = save(zoo.text_encoder(), tmp_path)
    cache = tmp_path / "cache" / "host.json"
    code, stdout, stderr = run_cli(["calibrate-host", model, "--cache", cache])
    assert code == 0, stderr
    written = load_table(cache)
    assert written is not None and written.machine == machine_id()
    assert {tuple(t.shape) for t in written.timings} == {(16, 64, 256), (16, 256, 64)}
    assert all(set(t.ratio) == {"weight_only_int8", "full_int8"} and t.fp32_ms > 0 for t in written.timings)
    assert "Wrote" in stdout
    # A table for another machine is ignored.
    other = written.model_copy(update={"machine": "elsewhere"})
    cache.write_text(other.model_dump_json())
    assert load_table(cache) is None


def test_calibrate_host_refuses_a_bad_model(tmp_path: Path, run_cli: RunCli) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    cache = tmp_path / "host.json"
    code, _, stderr = run_cli(["calibrate-host", bad, "--cache", cache])
    assert code == 2 and stderr.count("\n") == 1 and not cache.exists()
