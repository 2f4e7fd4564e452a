"""The host emulator: the model as is in onnxruntime on this machine, so its outputs are onnxruntime's, bit for bit,
for float models and for models with integer graph I/O (fed and read as real values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import ModelProto, helper

from autoptq.devices.profiles import load_profile, shipped_profile_names
from autoptq.evaluate.emulators import emulator_for
from autoptq.evaluate.emulators.host import STATEMENT, emulate
from autoptq.model.calibration import Dataset
from autoptq.model.intio import read_integer_io
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HOSTS = [name for name in shipped_profile_names() if load_profile(name).emulator == "host"]
VNNI = load_profile("x86-vnni")


def onnxruntime_session(model: ModelProto) -> ort.InferenceSession:
    """onnxruntime as the host emulator states it runs: CPU provider, all graph optimizations, one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def digits() -> tuple[ModelProto, Dataset, list[dict[str, np.ndarray]]]:
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    with np.load(EXAMPLES / "calib.npz") as calib, np.load(EXAMPLES / "val.npz") as val:
        calibration = Dataset([{"input": x[None]} for x in calib["input"][:64]], None, "calib.npz")
        validation = [{"input": x[None]} for x in val["input"][:60]]
    return model, calibration, validation


def test_the_shipped_host_profiles() -> None:
    assert {"x86-vnni", "arm-a53", "arm-a76"} <= set(HOSTS)
    assert emulator_for("host") is emulate


@pytest.mark.parametrize("target", HOSTS)
def test_a_float_model_gives_onnxruntimes_outputs_exactly(target: str, digits: tuple) -> None:
    model, _, validation = digits
    result = emulate(model, load_profile(target), validation)
    assert result.tier == "host" and result.fidelity_statement == STATEMENT and result.findings == []
    assert result.output_names == ["logits"]
    runner = onnxruntime_session(model)
    for sample, outputs in zip(validation, result.outputs, strict=True):
        [want] = runner.run(None, sample)
        [got] = outputs
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_several_outputs_keep_their_order_and_types() -> None:
    make = helper.make_node
    nodes = [
        make("MatMul", ["x", "w"], ["scores"], name="fc"),
        make("ArgMax", ["scores"], ["label"], name="argmax", axis=1, keepdims=0),
        make("Tanh", ["scores"], ["squashed"], name="tanh"),
    ]
    rng = np.random.default_rng(0)
    outputs = [tensor("squashed", [2, 5]), tensor("label", [2], onnx.TensorProto.INT64), tensor("scores", [2, 5])]
    model = build(nodes, [tensor("x", [2, 7])], outputs, [const("w", rng.standard_normal((7, 5)))])
    samples = [{"x": rng.standard_normal((2, 7)).astype(np.float32)} for _ in range(4)]
    result = emulate(model, VNNI, samples)
    assert result.output_names == ["squashed", "label", "scores"]
    runner = onnxruntime_session(model)
    for sample, got in zip(samples, result.outputs, strict=True):
        want = runner.run(None, sample)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_an_integer_io_model_gives_onnxruntimes_outputs_exactly(io_dtype: str, digits: tuple) -> None:
    """Inputs quantized as a device's host does (round half away from zero), outputs dequantized: the integers that
    ran are exactly onnxruntime's."""
    model, calibration, validation = digits
    recipe = Recipe(activation_dtype=io_dtype, io_dtype=io_dtype, calibration_samples=len(calibration))
    quantized = static_qdq(model, recipe, calibration, "full_int8").model
    io = {item.name: item for item in read_integer_io(quantized)}
    assert set(io) == {"input", "logits"} and io["input"].dtype == io_dtype
    result = emulate(quantized, VNNI, validation)
    runner = onnxruntime_session(quantized)
    dtype = np.dtype(io_dtype)
    info = np.iinfo(dtype)
    for sample, [got] in zip(validation, result.outputs, strict=True):
        x = sample["input"].astype(np.float32) / np.float32(io["input"].scale)
        rounded = np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))  # half away from zero
        q = np.clip(rounded + io["input"].zero_point, info.min, info.max).astype(dtype)
        [raw] = runner.run(None, {"input": q})
        assert raw.dtype == dtype
        out = io["logits"]
        np.testing.assert_array_equal(got, ((raw.astype(np.float64) - out.zero_point) * out.scale).astype(np.float32))
        np.testing.assert_array_equal(np.rint(got.astype(np.float64) / out.scale) + out.zero_point, raw)


def test_the_fidelity_statement_warns_about_other_cpus() -> None:
    assert "on a different CPU than the target" in STATEMENT and "VNNI vs AVX2" in STATEMENT
