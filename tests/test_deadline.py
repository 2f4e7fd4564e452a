"""The time budget's deadline: the loops that take it stop before their next unit of work once it has passed, on a
fake clock (no test waits for wall time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import autoptq.evaluate.evaluator as evaluator_module
from autoptq.deadline import NO_DEADLINE, Deadline, OutOfTime
from autoptq.decide.sensitivity import rank_nodes
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.evaluator import TIMING_BUDGET_S, Evaluator
from autoptq.evaluate.runner import LatencyMeasurement, measurable_here
from autoptq.model.calibration import Dataset
from autoptq.techniques import by_name
from autoptq.techniques.fp16 import convert
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe


class FakeClock:
    """Moves only when told to: `tick` per reading (0 by default), or by hand."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((8, 8)) * 0.3).astype(np.float32) for _ in range(2)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w1"], ["y"], name="fc1"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _data(count: int = 6) -> Dataset:
    rng = np.random.default_rng(1)
    return Dataset([{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(count)], None, "data")


def _passed() -> Deadline:
    clock = FakeClock()
    deadline = Deadline(1.0, clock)
    clock.now = 2.0
    return deadline


def test_a_deadline_passes_on_its_clock_only() -> None:
    clock = FakeClock()
    deadline = Deadline(10.0, clock)
    assert not deadline.passed() and deadline.left() == 10.0
    assert deadline.cap(TIMING_BUDGET_S) == TIMING_BUDGET_S
    clock.now = 9.75
    assert deadline.cap(TIMING_BUDGET_S) == pytest.approx(0.25)  # capped by the time left
    clock.now = 10.0
    assert not deadline.passed()  # passed means beyond it, as the budget's check always was
    clock.now = 10.5
    assert deadline.passed() and deadline.cap(TIMING_BUDGET_S) == 0.0
    with pytest.raises(OutOfTime):
        deadline.check()
    assert not NO_DEADLINE.passed() and NO_DEADLINE.cap(3.0) == 3.0


def test_each_stops_before_starting_the_next_item() -> None:
    clock = FakeClock(tick=1.0)  # every reading one second later: the creation reads 1, the deadline is at 3.5
    deadline = Deadline(2.5, clock)
    started: list[int] = []

    def work():
        for i in range(10):
            started.append(i)  # a lazy unit of work (e.g. one sample's inference) starts here
            yield i

    with pytest.raises(OutOfTime):
        for _ in deadline.each(work()):
            pass
    assert started == [0, 1]  # checks at 2 and 3 let two units start; the third check (4) stops the loop


def test_out_of_time_is_no_exception_a_handler_could_take_for_a_failure() -> None:
    # The evaluator turns any Exception on the host into "does not run in onnxruntime"; a stop must get through.
    assert not issubclass(OutOfTime, Exception)
    evaluator = Evaluator(_model(), load_profile("arm-a76"), _data())
    with pytest.raises(OutOfTime):
        evaluator.evaluate(_model(), tier="host", measure=False, deadline=_passed())


def test_calibration_stops_part_way_and_leaves_no_cache(tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    clock = FakeClock(tick=1.0)
    with pytest.raises(OutOfTime):
        static_qdq(_model(), Recipe(), _data(), "full_int8", calibration_cache=cache, deadline=Deadline(3.5, clock))
    assert not cache.exists()  # a later trial calibrates again instead of reading partial ranges
    static_qdq(_model(), Recipe(), _data(), "full_int8", calibration_cache=cache)
    assert cache.is_file()


def test_fp16_overflow_guard_takes_the_deadline() -> None:
    with pytest.raises(OutOfTime):
        convert(_model(), Recipe(), _data(), deadline=_passed())
    with pytest.raises(OutOfTime):
        by_name("fp16").quantize(_model(), Recipe(), _data(), load_profile("gpu-fp16"), deadline=_passed())


def test_the_ranking_stops_before_the_next_node(tmp_path: Path) -> None:
    clock = FakeClock()
    deadline = Deadline(60.0, clock)
    measured: list[int] = []

    def output_sqnr(model: onnx.ModelProto) -> float:
        measured.append(len(model.graph.node))
        clock.now = 120.0  # the deadline passes while the first node is measured
        return 30.0

    with pytest.raises(OutOfTime):
        rank_nodes(_model(), Recipe(), "full_int8", _data(), _data(), output_sqnr, tmp_path / "c.json", deadline)
    assert len(measured) == 1  # fc1 was never quantized


@pytest.mark.skipif(not measurable_here(load_profile("x86-vnni")), reason="x86-vnni is timed on an x86_64 machine")
def test_the_latency_timing_is_capped_by_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    budgets: list[float] = []

    def fake_measure(reference, candidate, sample, budget_s):
        budgets.append(budget_s)
        return LatencyMeasurement(float_ms=1.0, candidate_ms=1.0, ratio=1.0, runs=15, machine="test")

    monkeypatch.setattr(evaluator_module, "measure_latency", fake_measure)
    evaluator = Evaluator(_model(), load_profile("x86-vnni"), _data())
    clock = FakeClock()
    deadline = Deadline(100.0, clock)
    evaluator.evaluate(_model(), deadline=deadline)
    clock.now = 99.9
    evaluator.evaluate(_model(), deadline=deadline)
    assert budgets[0] == TIMING_BUDGET_S and budgets[1] == pytest.approx(0.1)
