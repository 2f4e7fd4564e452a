"""Verification: a quantized candidate must run, stay close to float, be smaller, and not be slower where measurable."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, helper, numpy_helper

from autoptq.devices.profiles import load_profile
from autoptq.evaluate.runner import ModelRunner, dequantize_output, measurable_here, measure_latency, quantize_input
from autoptq.evaluate.verify import DEFAULT_MIN_SQNR_DB, verify
from autoptq.model.calibration import Dataset, load_dataset
from autoptq.model.graph import load_model
from autoptq.model.intio import IOQuantization
from autoptq.techniques import REGISTRY
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
X86 = load_profile("x86-vnni")
EDGETPU = load_profile("edgetpu")
on_x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="latency is measured only on an x86-64 host")


@pytest.fixture(scope="module")
def digits() -> ModelProto:
    return onnx.load(str(EXAMPLES / "digits_cnn.onnx"))


@pytest.fixture(scope="module")
def digits_data(digits: ModelProto) -> tuple[Dataset, Dataset]:
    calibration = load_dataset(EXAMPLES / "calib.npz", load_model(digits))
    validation = load_dataset(EXAMPLES / "val.npz", load_model(digits))
    return calibration, validation.take(60)


@pytest.fixture(scope="module")
def digits_int8(digits: ModelProto, digits_data: tuple[Dataset, Dataset]) -> ModelProto:
    return REGISTRY["full_int8"].quantize(digits, Recipe(), digits_data[0], X86).model


def test_a_good_candidate_passes(digits: ModelProto, digits_data: tuple[Dataset, Dataset], digits_int8: ModelProto):
    result = verify(digits, digits_int8, [], digits_data[1], EDGETPU)
    assert result.passed, result.problems
    assert result.problems == []
    assert result.samples == 60
    assert result.min_sqnr_db == DEFAULT_MIN_SQNR_DB
    assert result.fidelity[0].name == "logits" and result.fidelity[0].sqnr_db > 25
    assert result.fidelity[0].top1_agreement is not None and result.fidelity[0].top1_agreement > 0.95
    assert result.size_bytes == digits_int8.ByteSize() and result.float_size_bytes == digits.ByteSize()
    assert result.size_ratio < 0.6
    assert result.latency is None and "not measured" in result.latency_note
    assert result.accuracy_float is not None and result.accuracy_candidate is not None
    assert abs(result.accuracy_float - result.accuracy_candidate) <= 0.05


def test_a_tampered_scale_fails_on_fidelity(
    digits: ModelProto, digits_data: tuple[Dataset, Dataset], digits_int8: ModelProto
) -> None:
    broken = ModelProto()
    broken.CopyFrom(digits_int8)
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    dequant = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
    scale = next(i for i in broken.graph.initializer if i.name == dequant.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 40, scale.name))

    result = verify(digits, broken, [], digits_data[1], EDGETPU)
    assert not result.passed
    assert any("SQNR" in p and "below the floor" in p and "'logits'" in p for p in result.problems), result.problems


def test_a_stricter_floor_rejects_a_good_candidate(
    digits: ModelProto, digits_data: tuple[Dataset, Dataset], digits_int8: ModelProto
) -> None:
    result = verify(digits, digits_int8, [], digits_data[1], EDGETPU, min_sqnr_db=80.0)
    assert not result.passed
    assert result.problems == [f"output 'logits' SQNR {result.fidelity[0].sqnr_db:.1f} dB is below the floor 80.0 dB"]


def _affine(extra: list | None = None, extra_inits: list | None = None, output: str = "y") -> ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc"), *(extra or [])]
    nodes.append(helper.make_node("Identity", ["mm" if output == "y" else output], ["y"], name="out"))
    inits = [const("w", rng.standard_normal((64, 10)) * 0.1), *(extra_inits or [])]
    return build(nodes, [tensor("x", [1, 64])], [tensor("y", [1, 10])], inits)


def _data(count: int = 8) -> Dataset:
    rng = np.random.default_rng(5)
    return Dataset([{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(count)], None, "test")


def test_a_candidate_emitting_nan_fails() -> None:
    reference = _affine()
    nan_model = _affine(
        [
            helper.make_node("Log", ["minus_one"], ["nan"], name="log"),
            helper.make_node("Add", ["mm", "nan"], ["poisoned"], name="poison"),
        ],
        [const("minus_one", -1.0)],
        output="poisoned",
    )
    result = verify(reference, nan_model, [], _data(), EDGETPU, float_size_bytes=10**6)
    assert not result.passed
    assert "output 'y' has NaN or inf" in result.problems
    assert not result.fidelity[0].finite


def test_a_candidate_that_does_not_run_fails() -> None:
    reference = _affine()
    broken = ModelProto()
    broken.CopyFrom(reference)
    broken.graph.node[0].op_type = "NoSuchOp"
    result = verify(reference, broken, [], _data(), EDGETPU)
    assert not result.passed
    assert len(result.problems) == 1 and result.problems[0].startswith("does not run in onnxruntime")


def test_a_candidate_larger_than_float_fails() -> None:
    tiny = build(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        [tensor("x", [1, 4])],
        [tensor("y", [1, 4])],
        [const("w", np.random.default_rng(0).standard_normal((4, 4)))],
    )
    quantized = REGISTRY["weight_only_int8"].quantize(tiny, Recipe(op_types_to_quantize=["MatMul"]), None, X86).model
    assert quantized.ByteSize() > tiny.ByteSize()
    data = Dataset([{"x": np.ones((1, 4), np.float32)}], None, "test")
    result = verify(tiny, quantized, [], data, EDGETPU)
    assert not result.passed
    assert result.size_ratio > 1
    assert any(p.startswith("file is not smaller than float") for p in result.problems), result.problems


def test_the_given_float_file_size_is_the_baseline() -> None:
    model = _affine()
    result = verify(model, model, [], _data(2), EDGETPU, float_size_bytes=model.ByteSize() * 2)
    assert result.passed, result.problems
    assert result.size_ratio == pytest.approx(0.5, abs=1e-3)
    assert result.fidelity[0].sqnr_db == 200.0


def _slow_copy(model: ModelProto) -> ModelProto:
    """The same function plus ~1.1M MACs of work on the input, added as 0 x sum(work) so nothing can drop it."""
    rng = np.random.default_rng(1)
    slow = ModelProto()
    slow.CopyFrom(model)
    graph = slow.graph
    mm = graph.node[0].output[0]
    graph.node.remove(graph.node[-1])  # the output Identity, rebuilt below
    graph.node.extend(
        [
            helper.make_node("MatMul", ["x", "side_w1"], ["side1"], name="side_fc1"),
            helper.make_node("Relu", ["side1"], ["side1r"], name="side_relu"),
            helper.make_node("MatMul", ["side1r", "side_w2"], ["side2"], name="side_fc2"),
            helper.make_node("ReduceSum", ["side2"], ["side_sum"], name="side_sum", keepdims=1),
            helper.make_node("Mul", ["side_sum", "zero"], ["side_zero"], name="side_zero"),
            helper.make_node("Add", [mm, "side_zero"], ["y"], name="out"),
        ]
    )
    graph.initializer.extend(
        [
            const("side_w1", rng.standard_normal((64, 1024)) * 0.1),
            const("side_w2", rng.standard_normal((1024, 1024)) * 0.03),
            const("zero", 0.0),
        ]
    )
    onnx.checker.check_model(slow)
    return slow


@on_x86_64
def test_measurable_here_on_an_x86_host() -> None:
    assert measurable_here(X86)
    assert not measurable_here(EDGETPU)


@on_x86_64
def test_a_slower_candidate_fails_on_a_host_target() -> None:
    fast = _affine()
    slow = _slow_copy(fast)
    data = _data(4)
    np.testing.assert_allclose(ModelRunner(slow).run(data.samples[0])[0], ModelRunner(fast).run(data.samples[0])[0])

    latency = measure_latency(ModelRunner(fast), ModelRunner(slow), data.samples[0], budget_s=0.2)
    assert latency.ratio > 2
    assert latency.runs >= 15 and latency.candidate_ms > latency.float_ms

    # Pretend the file is small, so slowness is the only problem.
    result = verify(fast, slow, [], data, X86, float_size_bytes=10**9)
    assert not result.passed
    assert result.latency is not None and result.latency.ratio > 1.05
    assert "measured on this machine" in result.latency_note
    assert result.problems == ["slower than float on the host (measured ratio above 1.05)"]

    unmeasured = verify(fast, slow, [], data, X86, measure=False, float_size_bytes=10**9)
    assert unmeasured.passed and unmeasured.latency is None


def test_a_device_target_is_not_timed() -> None:
    fast = _affine()
    result = verify(fast, _slow_copy(fast), [], _data(2), EDGETPU, float_size_bytes=10**9)
    assert result.passed
    assert result.latency is None


def test_integer_io_conversion_rounds_half_away_from_zero_and_clamps() -> None:
    io = IOQuantization(name="x", dtype="int8", scale=0.5, zero_point=-3)
    values = np.array([0.25, -0.25, 0.75, 1.0, 1000.0, -1000.0], np.float32)
    q = quantize_input(values, io)
    assert q.dtype == np.int8
    assert q.tolist() == [-2, -4, -1, -1, 127, -128]
    back = dequantize_output(q, io)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, [0.5, -0.5, 1.0, 1.0, 65.0, -62.5])


def test_model_runner_converts_integer_io(digits: ModelProto, digits_data: tuple[Dataset, Dataset]) -> None:
    result = REGISTRY["full_int8"].quantize(
        digits, Recipe(activation_dtype="int8", io_dtype="int8"), digits_data[0], EDGETPU
    )
    runner = ModelRunner(result.model, result.applied.integer_io)
    sample = digits_data[1].samples[0]
    fed = runner.feed(sample)
    assert fed["input"].dtype == np.int8
    assert runner.run(sample)[0].dtype == np.float32
    verdict = verify(digits, result.model, result.applied.integer_io, digits_data[1], EDGETPU)
    assert verdict.passed, verdict.problems
    assert verdict.fidelity[0].sqnr_db > 25
    # Without the I/O parameters the same model cannot be fed floats: that is caught, not crashed on.
    assert not verify(digits, result.model, [], digits_data[1], EDGETPU).passed
