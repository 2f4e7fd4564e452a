"""The fp16 emulator: storage rounding of every activation as numpy's float16 rounds it, overflow and underflow counted
per node by that same rounding, nodes autoptq's fp16 quantizer kept in fp32 left unrounded, outputs in graph order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, TensorProto, helper

from autoptq.devices.profiles import load_profile
from autoptq.evaluate.emulators import emulator_for
from autoptq.evaluate.emulators.fp16 import FP16_MAX, STATEMENT, emulate, rounding_losses
from autoptq.model.calibration import Dataset
from autoptq.model.intio import read_integer_io
from autoptq.techniques.fp16 import convert
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor

GPU = load_profile("gpu-fp16")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
make = helper.make_node


def fp16(values: np.ndarray) -> np.ndarray:
    """Storage rounding: to float16 (round to nearest even, overflow to inf, underflow to zero) and back."""
    with np.errstate(over="ignore"):
        return np.asarray(values, np.float32).astype(np.float16).astype(np.float32)


# --- storage rounding ------------------------------------------------------------------------------------------------

A = np.array([1 / 3, -2.7182817, 1e-3, 1000.5, 7.0, -0.1, 3.0e-6, 1.0], np.float32)
B = np.array([0.1, 1e-4, -0.5, 33.3, -1.0, 2.0, 0.0, -1024.25], np.float32)
C = np.array([3.0, 7.0, -11.0, 0.3, 1e-2, 13.0, 0.7, 2.5], np.float32)


def elementwise() -> ModelProto:
    """Mul, Add, Div, Relu, Sub, Abs: IEEE-exact in fp32, so numpy can restate every step bit for bit. Outputs listed
    out of execution order, one of them an intermediate read by later nodes."""
    nodes = [
        make("Mul", ["x", "a"], ["mul"], name="mul"),
        make("Add", ["mul", "b"], ["add"], name="add"),
        make("Div", ["add", "c"], ["div"], name="div"),
        make("Relu", ["div"], ["relu"], name="relu"),
        make("Sub", ["relu", "mul"], ["sub"], name="sub"),
        make("Abs", ["sub"], ["abs"], name="abs"),
    ]
    outputs = [tensor(name, [1, 8]) for name in ("abs", "mul", "relu")]
    return build(nodes, [tensor("x", [1, 8])], outputs, [const("a", A), const("b", B), const("c", C)])


def numpy_fp16(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same graph in numpy: fp32 arithmetic on fp16-stored operands, each result stored in fp16."""
    x, a, b, c = fp16(x), fp16(A), fp16(B), fp16(C)
    mul = fp16(x * a)
    add = fp16(mul + b)
    div = fp16(add / c)
    relu = fp16(np.maximum(div, 0))
    sub = fp16(relu - mul)
    return {"mul": mul, "add": add, "relu": relu, "abs": fp16(np.abs(sub))}


def samples(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    spread = [rng.standard_normal((1, 8)) * 10.0 ** rng.integers(-6, 1, (1, 8)) for _ in range(count)]
    # Exact fp16 ties at the input (to even: 1, 1 + 2^-9, 2048, 2052, 2^-23), placed where the products stay small.
    ties = [np.array([[1 + 2**-11, 1 + 3 * 2**-11, 2049, 0.5, -(1 + 2**-11), 0.1, 2051, 3 * 2**-25]])]
    return [{"x": np.asarray(v, np.float32)} for v in [*spread, *ties]]


@pytest.mark.parametrize("converted", [False, True], ids=["float-model", "converted-by-autoptq"])
def test_storage_rounding_matches_numpy_float16_rounding_of_every_activation(converted: bool) -> None:
    model = elementwise()
    feeds = samples(24)
    if converted:
        result = convert(model, Recipe(), Dataset(feeds, None, "feeds"))
        assert result.applied.excluded == {}  # every node converted
        model = result.model
        assert all(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
    result = emulate(model, GPU, feeds)
    assert result.tier == "fp16-storage" and result.fidelity_statement == STATEMENT
    assert result.output_names == ["abs", "mul", "relu"]
    for feed, outputs in zip(feeds, result.outputs, strict=True):
        want = numpy_fp16(feed["x"])
        for name, got in zip(result.output_names, outputs, strict=True):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want[name], err_msg=name)
            np.testing.assert_array_equal(got, fp16(got), err_msg=f"{name} is fp16-representable")


def test_the_fp16_device_is_found_through_the_registry() -> None:
    assert GPU.emulator == "fp16" and emulator_for(GPU.emulator) is emulate


# --- overflow and underflow ------------------------------------------------------------------------------------------


def overflowing() -> ModelProto:
    """amplify = x · 300.5 overflows for |x| ≥ 220; half = amplify · 0.5 reads an inf it did not make; shrink = x ·
    2^-12 · 2^-13 lands below the smallest fp16 subnormal for small x."""
    nodes = [
        make("Mul", ["x", "big"], ["amplified"], name="amplify"),
        make("Mul", ["amplified", "half"], ["halved"], name="half"),
        make("Mul", ["x", "s1"], ["scaled"], name="scale"),
        make("Mul", ["scaled", "s2"], ["shrunk"], name="shrink"),
    ]
    inits = [const("big", 300.5), const("half", 0.5), const("s1", 2.0**-12), const("s2", 2.0**-13)]
    return build(nodes, [tensor("x", [1, 6])], [tensor("halved", [1, 6]), tensor("shrunk", [1, 6])], inits)


def test_overflow_and_underflow_are_reported_per_node_with_counts() -> None:
    # x · 300.5: 220 → 66110 (inf), 218 → 65509 (rounds to 65504: no overflow), -220 → -inf, 1 → 300.5.
    # x · 2^-25 (after the exact 2^-12 step): 1 → 2^-25, a tie that rounds to even, zero; 0.4 → below it, zero;
    # 4 → 2^-23, a subnormal that survives; 0 → 0 (nothing flushed).
    x = np.array([[220.0, 218.0, -220.0, 1.0, 0.4, 0.0]], np.float32)
    result = emulate(overflowing(), GPU, [{"x": x}, {"x": x}, {"x": np.full((1, 6), 4.0, np.float32)}])
    halved, shrunk = result.outputs[0]
    np.testing.assert_array_equal(halved[0, :4], [np.inf, 32752.0, -np.inf, 150.25])
    np.testing.assert_array_equal(halved, fp16(fp16(fp16(x) * np.float32(300.5)) * np.float32(0.5)))
    np.testing.assert_array_equal(shrunk[0, 3:], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(shrunk, fp16(fp16(fp16(x) * np.float32(2.0**-12)) * np.float32(2.0**-13)))
    np.testing.assert_array_equal(result.outputs[2][1], np.full((1, 6), 2.0**-23, np.float32))
    found = {(f.node, f.kind): f.count for f in result.findings}
    assert found == {("amplify", "overflow"): 2 * 2, ("shrink", "underflow"): 2 * 2}, "half only read an inf"
    [overflow] = [f for f in result.findings if f.kind == "overflow"]
    assert overflow.detail == f"4 values beyond ±{FP16_MAX:g} became inf"


def test_the_rounding_boundaries() -> None:
    values = np.array([65504, 65519.99, 65520, -65520, np.inf, 2.0**-25, -(2.0**-25), 2.0**-25 * 1.001, 0.0])
    assert rounding_losses(values.astype(np.float32)) == (2, 2)
    assert rounding_losses(np.array([1, 2], np.int64)) == (0, 0)


def test_weights_beyond_the_fp16_range_are_reported_in_a_float_model() -> None:
    model = build(
        [make("Mul", ["x", "w"], ["y"], name="scale"), make("Add", ["y", "tiny"], ["z"], name="offset")],
        [tensor("x", [1, 3])],
        [tensor("z", [1, 3])],
        [const("w", [1e5, 2.0, -7e4]), const("tiny", [1e-9, 0.5, 0.0])],
    )
    result = emulate(model, GPU, [{"x": np.ones((1, 3), np.float32)}])
    np.testing.assert_array_equal(result.outputs[0][0], [[np.inf, 2.5, -np.inf]])
    assert [(f.node, f.kind, f.count) for f in result.findings] == [
        ("scale", "overflow", 2),
        ("offset", "underflow", 1),
    ]
    assert "weight 'w'" in result.findings[0].detail


# --- a model converted by autoptq's fp16 quantizer, with its overflow guard ------------------------------------------


def guarded() -> ModelProto:
    """small = x · 3.3 fits fp16; big = small · 10001.7 reaches ~1e5 (beyond fp16); back = big · 0.00123 returns to
    ~100, read by add."""
    nodes = [
        make("Mul", ["x", "a"], ["m1"], name="small"),
        make("Mul", ["m1", "b"], ["m2"], name="big"),
        make("Mul", ["m2", "c"], ["m3"], name="back"),
        make("Add", ["m3", "d"], ["y"], name="add"),
    ]
    inits = [const("a", np.full(8, 3.3)), const("b", np.full(8, 10001.7)), const("c", np.full(8, 0.00123))]
    return build(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 8])], [*inits, const("d", np.full(8, 0.1))])


def test_nodes_the_converter_kept_in_fp32_are_not_rounded() -> None:
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.uniform(1, 3, (1, 8)).astype(np.float32)} for _ in range(8)]
    float_model = guarded()
    converted = convert(float_model, Recipe(), Dataset(feeds, None, "calibration"))
    assert set(converted.applied.excluded) == {"big", "back"}  # the overflow guard: big's output, back's input
    assert "above 32752" in converted.applied.excluded["big"]
    result = emulate(converted.model, GPU, feeds)
    assert result.findings == [] and result.output_names == ["y"]
    f32 = np.float32
    for feed, [got] in zip(feeds, result.outputs, strict=True):
        m1 = fp16(fp16(feed["x"]) * fp16(f32(3.3)))  # converted: input cast and storage rounding
        m3 = (m1 * f32(10001.7)) * f32(0.00123)  # kept in fp32: unrounded
        want = fp16(fp16(m3) + fp16(f32(0.1)))  # back to fp16 at the converter's cast
        np.testing.assert_array_equal(got, want)
    # The same float model run as if every node were fp16 overflows exactly where the guard stepped in.
    unguarded = emulate(float_model, GPU, feeds)
    big = [fp16(fp16(fp16(f["x"]) * fp16(f32(3.3))) * fp16(f32(10001.7))) for f in feeds]
    beyond = sum(int(np.count_nonzero(np.isinf(values))) for values in big)
    assert beyond > 8  # about half of the 64 values
    assert [(f.node, f.kind, f.count) for f in unguarded.findings] == [("big", "overflow", beyond)]
    assert np.isinf(np.concatenate([o[0] for o in unguarded.outputs])).sum() == beyond


# --- graph outputs, non-float tensors, integer I/O --------------------------------------------------------------------


def test_outputs_keep_their_names_order_and_non_float_types() -> None:
    """Shapes, indices and masks are not float: they are not rounded (a Reshape must still get its int64 shape)."""
    nodes = [
        make("Mul", ["x", "a"], ["scaled"], name="mul"),
        make("Shape", ["scaled"], ["shape"], name="shape"),
        make("Reshape", ["scaled", "shape"], ["reshaped"], name="reshape"),
        make("ArgMax", ["reshaped"], ["index"], name="argmax", axis=1, keepdims=1),
        make("Greater", ["reshaped", "zero"], ["positive"], name="greater"),
    ]
    outputs = [
        tensor("index", [1, 1], TensorProto.INT64),
        tensor("reshaped", [1, 5]),
        tensor("positive", [1, 5], TensorProto.BOOL),
        tensor("shape", [2], TensorProto.INT64),
    ]
    model = build(nodes, [tensor("x", [1, 5])], outputs, [const("a", np.full(5, 0.1)), const("zero", 0.0)])
    x = np.array([[1.0, -2.0, 3.0001, 3.0, -0.5]], np.float32)
    result = emulate(model, GPU, [{"x": x}])
    assert result.output_names == ["index", "reshaped", "positive", "shape"]
    index, reshaped, positive, shape = result.outputs[0]
    np.testing.assert_array_equal(reshaped, fp16(fp16(x) * fp16(np.float32(0.1))))
    assert index.dtype == np.int64 and index.tolist() == [[2]]
    assert positive.dtype == np.bool_ and positive.tolist() == [[True, False, True, True, False]]
    assert shape.dtype == np.int64 and shape.tolist() == [1, 5]


def test_a_full_int8_model_with_integer_io_runs_on_the_fp16_emulator() -> None:
    """An Edge TPU model (int8 input and output) checked against an fp16 device: fed floats, returns floats."""
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    with np.load(EXAMPLES / "calib.npz") as calib, np.load(EXAMPLES / "val.npz") as val:
        calibration = Dataset([{"input": x[None]} for x in calib["input"][:64]], None, "calib.npz")
        feeds, labels = [{"input": x[None]} for x in val["input"][:100]], val["labels"][:100]
    recipe = Recipe(activation_dtype="int8", io_dtype="int8", calibration_samples=64)
    quantized = static_qdq(model, recipe, calibration, "full_int8").model
    assert quantized.graph.input[0].type.tensor_type.elem_type == TensorProto.INT8
    result = emulate(quantized, GPU, feeds)
    logits = np.concatenate([o[0] for o in result.outputs])
    assert logits.dtype == np.float32 and logits.shape == (100, 10)
    assert np.mean(logits.argmax(axis=1) == labels) >= 0.95
    scale = next(io.scale for io in read_integer_io(quantized) if io.name == "logits")
    np.testing.assert_allclose(logits / scale, np.rint(logits / scale), atol=1e-3)  # whole LSBs: dequantized int8
