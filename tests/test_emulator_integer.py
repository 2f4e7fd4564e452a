"""The integer emulator: the fixed-point formulas on chosen values, the exact tier's lowering against the numpy
kernels (hypothesis) and against the golden reference on quantized graphs (bit for bit), the fast tier's kernel
inspection, x86's int16 pair saturation, and the trained digits model."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from autoptq.deploy import kernels
from autoptq.deploy.intgraph import DEVICE_DOMAIN, build_device_graph, lower
from autoptq.deploy.kernels import InputRounding, Rounding
from autoptq.deploy.lowering import FLOAT32_EXACT
from autoptq.devices.profiles import FixedOutputParams, HardwareProfile, load_profile
from autoptq.errors import AutoptqError, DataError
from autoptq.evaluate.emulators.integer import (
    FAST_FIDELITY,
    EmulationError,
    build_exact_model,
    emulate,
    exact_session,
    lsb_difference,
    output_scales,
    quantize_inputs,
)
from autoptq.evaluate.metrics import sqnr_db
from autoptq.model import zoo
from autoptq.model.activations import expose, session
from autoptq.model.calibration import Dataset
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor
from tests.golden_reference import run_golden

EDGETPU = load_profile("edgetpu")  # tflite_double
HTP = load_profile("qualcomm-htp")  # tflite_single
VNNI = load_profile("x86-vnni")  # float_rne, int32 accumulation
AVX2 = load_profile("x86-avx2")  # float_rne, int16 pair saturation
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
I32_MIN, I32_MAX = kernels.INT32_MIN, kernels.INT32_MAX
FIXED = {
    "Sigmoid": FixedOutputParams(scale=1 / 256, zero_point=-128),
    "Tanh": FixedOutputParams(scale=1 / 128, zero_point=0),
}
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- independent restatements of int8-arithmetic.md, in Python integers --------------------------------------------


def reference_srdhm(a: int, b: int) -> int:
    if a == b == I32_MIN:
        return I32_MAX
    product = a * b
    nudge = (1 << 30) if product >= 0 else 1 - (1 << 30)
    total = product + nudge
    return abs(total) // (1 << 31) * (1 if total >= 0 else -1)  # C division truncates toward zero


def reference_rdbpot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if (x & mask) > threshold else 0)


def reference_mbqm(x: int, real: float, rounding: Rounding) -> int:
    multiplier, exponent = kernels.quantize_multiplier(real, rounding)
    if rounding == "tflite_single":
        total = 31 - exponent
        return (x * multiplier + (1 << (total - 1))) >> total
    shifted = x
    if exponent > 0:  # x · 2^e in int32 arithmetic, which wraps
        shifted = ((x << exponent) + (1 << 31)) % (1 << 32) - (1 << 31)
    return reference_rdbpot(reference_srdhm(shifted, multiplier), max(-exponent, 0))


# --- multiplier encoding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("real", "expected"),
    [
        (0.5, (1 << 30, 0)),
        (0.75, (3 << 29, 0)),
        (1.0, (1 << 30, 1)),
        (3.0, (3 << 29, 2)),
        (0.5 + 2**-32, ((1 << 30) + 1, 0)),  # f·2^31 = 2^30 + 0.5 exactly: rounds away from zero
        (1 - 2**-40, (1 << 30, 1)),  # M rounds up to 2^31: halved, exponent + 1
        (2**-32, (1 << 30, -31)),  # the smallest exponent kept
        (2**-33, (0, 0)),  # exponent −32 < −31: the multiplier becomes 0
        (0.0, (0, 0)),
    ],
)
def test_multiplier_encoding(real: float, expected: tuple[int, int]) -> None:
    assert kernels.quantize_multiplier(real) == expected


def test_single_rounding_saturates_shifts_above_30() -> None:
    assert kernels.quantize_multiplier(2.0**40, "tflite_single") == (I32_MAX, 30)
    assert kernels.quantize_multiplier(2.0**40, "tflite_double") == (1 << 30, 41)


def test_a_negative_multiplier_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        kernels.quantize_multiplier(-0.5)


@given(st.floats(2**-31, 2**20))
def test_encoded_multipliers_are_within_half_an_lsb(real: float) -> None:
    multiplier, exponent = kernels.quantize_multiplier(real)
    assert 1 << 30 <= multiplier < 1 << 31
    assert abs(multiplier * 2.0 ** (exponent - 31) - real) <= 2.0 ** (exponent - 32)


# --- fixed-point primitives on chosen values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1 << 30, 1 << 30, 1 << 29),
        (1, 1 << 30, 1),  # +0.5 rounds up
        (-1, 1 << 30, 0),  # −0.5 rounds up as well (the nudge is 1 − 2^30)
        (-3, 1 << 30, -1),  # −1.5 → −1
        (-3, (1 << 30) + 1, -2),  # just past the tie
        (I32_MIN, I32_MIN, I32_MAX),  # the one saturating case
        (I32_MAX, I32_MAX, I32_MAX - 1),
        (I32_MIN, I32_MAX, -I32_MAX),
    ],
)
def test_srdhm(a: int, b: int, expected: int) -> None:
    assert reference_srdhm(a, b) == expected
    assert int(kernels.srdhm(np.array(a), np.array(b))) == expected


@pytest.mark.parametrize(
    ("x", "exponent", "expected"),
    [
        (5, 1, 3),  # 2.5 → 3: half away from zero
        (-5, 1, -3),
        (6, 2, 2),  # 1.5 → 2
        (-6, 2, -2),
        (5, 2, 1),  # 1.25 → 1
        (-7, 2, -2),  # −1.75 → −2
        (-9, 0, -9),  # no shift
        (1 << 30, 31, 1),  # 0.5 → 1 with the largest shift
        (-(1 << 30), 31, -1),
        ((1 << 30) - 1, 31, 0),
        (I32_MAX, 31, 1),
        (I32_MIN, 31, -1),
    ],
)
def test_rdbpot(x: int, exponent: int, expected: int) -> None:
    assert reference_rdbpot(x, exponent) == expected
    assert int(kernels.rdbpot(np.array(x), np.array(exponent))) == expected


@given(st.integers(I32_MIN, I32_MAX), st.integers(I32_MIN, I32_MAX), st.integers(0, 31))
def test_kernels_match_the_formulas(a: int, b: int, exponent: int) -> None:
    assert int(kernels.srdhm(np.array(a), np.array(b))) == reference_srdhm(a, b)
    assert int(kernels.rdbpot(np.array(a), np.array(exponent))) == reference_rdbpot(a, exponent)


def test_double_and_single_rounding_differ_where_double_rounding_bites() -> None:
    # x·M/2^31 = 1.59999 rounds to 2 in SRDHM; 2/4 = 0.5 then rounds to 1, while x·m = 0.39999 rounds to 0.
    x, multiplier, shift = np.array(2), np.array(1717986918), np.array(-2)
    assert int(kernels.multiply_by_quantized_multiplier(x, multiplier, shift, "tflite_double")) == 1
    assert int(kernels.multiply_by_quantized_multiplier(x, multiplier, shift, "tflite_single")) == 0


@pytest.mark.parametrize("rounding", ["tflite_double", "tflite_single"])
def test_left_shifts_for_multipliers_above_one(rounding: Rounding) -> None:
    assert reference_mbqm(3, 1.5, rounding) == 5  # 4.5 rounds up
    assert int(kernels.multiply_by_quantized_multiplier(np.array(3), 3 << 29, 1, rounding)) == 5


def test_double_rounding_left_shift_wraps_like_int32() -> None:
    assert reference_mbqm(1 << 30, 4.0, "tflite_double") == 0  # 2^30 · 8 wraps to 0 before SRDHM
    assert int(kernels.multiply_by_quantized_multiplier(np.array(1 << 30), 1 << 30, 3, "tflite_double")) == 0


def test_rounding_at_the_float_boundaries() -> None:
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, np.nextafter(np.float32(0.5), np.float32(0))])
    assert kernels.round_half_away(ties).tolist() == [1, 2, 3, -1, -2, 0, 0]
    quantized = kernels.quantize(
        np.array([0.5, 1.5, -0.5, 300.0]), scale=1.0, zero_point=0, dtype=np.int8, rounding="half_away"
    )
    assert quantized.tolist() == [1, 2, -1, 127]
    assert kernels.quantize(
        np.array([0.5, 1.5, -0.5]), scale=1.0, zero_point=0, dtype=np.int8, rounding="half_even"
    ).tolist() == [0, 2, 0]


# --- lowering against the kernels (device graphs of one node) -------------------------------------------------------


def device_model(node: NodeProto, inputs: dict[str, int], output: tuple[str, int], constants: dict) -> ModelProto:
    """A device graph of one node; every tensor is 1-D or 2-D of any size."""
    node.domain = DEVICE_DOMAIN
    graph = helper.make_graph(
        [node],
        "device",
        [tensor(name, ["rows", "columns"], elem_type) for name, elem_type in inputs.items()],
        [tensor(output[0], ["rows", "columns"], output[1])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DEVICE_DOMAIN, 1)])
    model.ir_version = 9
    return model


def lowered_run(device: ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    lowered = lower(device)
    onnx.checker.check_model(lowered)
    assert all(node.domain in ("", "ai.onnx") for node in lowered.graph.node)
    return exact_session(lowered).run(None, feeds)[0]


EDGE_ACCUMULATORS = np.array([I32_MIN, I32_MIN + 1, -(1 << 30), -7, -3, -2, -1, 0, 1, 2, 3, 7, 1 << 30, I32_MAX])
MULTIPLIERS = st.one_of(
    st.floats(2**-40, 2**12, allow_subnormal=False),
    st.sampled_from([0.0, 2**-33, 2**-32, 2**-31, 0.25, 0.5, 1 - 2**-40, 1.0, 1.5, 3.0, 1000.0]),
)


@PROPERTY
@given(
    acc=arrays(np.int32, st.tuples(st.integers(1, 6), st.just(3)), elements=st.integers(I32_MIN, I32_MAX)),
    reals=st.lists(MULTIPLIERS, min_size=3, max_size=3),
    rounding=st.sampled_from(["tflite_double", "tflite_single"]),
    zero_point=st.integers(-128, 127),
)
def test_lowered_fixed_point_requantization_matches_the_kernel(
    acc: np.ndarray, reals: list[float], rounding: Rounding, zero_point: int
) -> None:
    acc = np.concatenate([acc, np.repeat(EDGE_ACCUMULATORS[:, None], 3, axis=1)]).astype(np.int32)
    multipliers, shifts = kernels.quantize_multipliers(np.array(reals), rounding)
    node = helper.make_node(
        "Requantize",
        ["acc", "m", "e"],
        ["y"],
        rounding=rounding,
        input_zero_point=0,
        zero_point=zero_point,
        qmin=I32_MIN,
        qmax=I32_MAX,
        to=TensorProto.INT32,
    )
    device = device_model(node, {"acc": TensorProto.INT32}, ("y", TensorProto.INT32), {"m": multipliers, "e": shifts})
    expected = kernels.requantize(acc, multipliers, shifts, rounding=rounding, zero_point=zero_point)
    np.testing.assert_array_equal(lowered_run(device, {"acc": acc}), expected)
    formulas = [
        [reference_mbqm(int(v), real, rounding) + zero_point for v in acc[:, c]] for c, real in enumerate(reals)
    ]
    np.testing.assert_array_equal(np.clip(np.array(formulas, dtype=object).T, I32_MIN, I32_MAX), expected)


@PROPERTY
@given(
    acc=arrays(np.int32, st.tuples(st.integers(1, 6), st.just(2)), elements=st.integers(-(1 << 24), 1 << 24)),
    reals=st.lists(st.floats(2**-20, 4.0, width=32), min_size=2, max_size=2),
    zero_point=st.integers(-128, 127),
    to=st.sampled_from([TensorProto.INT8, TensorProto.UINT8]),
)
def test_lowered_float_requantization_matches_the_kernel(
    acc: np.ndarray, reals: list[float], zero_point: int, to: int
) -> None:
    low, high = kernels.integer_range(helper.tensor_dtype_to_np_dtype(to))
    multiplier = np.array(reals, np.float32)
    node = helper.make_node(
        "Requantize",
        ["acc", "m"],
        ["y"],
        rounding="float_rne",
        input_zero_point=0,
        zero_point=zero_point,
        qmin=low,
        qmax=high,
        to=to,
    )
    device = device_model(node, {"acc": TensorProto.INT32}, ("y", to), {"m": multiplier})
    expected = kernels.requantize(
        acc, multiplier, None, rounding="float_rne", zero_point=zero_point, qmin=low, qmax=high
    )
    np.testing.assert_array_equal(lowered_run(device, {"acc": acc}), expected)


@PROPERTY
@given(
    a=arrays(np.int8, (3, 4)),
    b=arrays(np.int8, (3, 4)),
    scales=st.lists(st.floats(2**-10, 1.0, width=32), min_size=3, max_size=3),
    zero_points=st.lists(st.integers(-128, 127), min_size=3, max_size=3),
    rounding=st.sampled_from(["tflite_double", "tflite_single", "float_rne"]),
    subtract=st.booleans(),
)
def test_lowered_add_matches_the_kernel(
    a: np.ndarray, b: np.ndarray, scales: list[float], zero_points: list[int], rounding: Rounding, subtract: bool
) -> None:
    twice = 2 * max(scales[0], scales[1])
    reals = [scales[0] / twice, scales[1] / twice, twice / ((1 << kernels.ADD_LEFT_SHIFT) * scales[2])]
    encoded = [
        kernels.quantize_multiplier(r, "tflite_single" if rounding == "tflite_single" else "tflite_double")
        for r in reals
    ]
    attributes = {
        "rounding": rounding,
        "a_zero_point": zero_points[0],
        "b_zero_point": zero_points[1],
        "zero_point": zero_points[2],
        "qmin": -128,
        "qmax": 127,
        "multipliers": [m for m, _ in encoded],
        "shifts": [e for _, e in encoded],
        "scale_ratios": [float(np.float32(s) / np.float32(scales[2])) for s in scales[:2]],
    }
    node = helper.make_node("IntAdd", ["a", "b"], ["y"], to=TensorProto.INT8, subtract=int(subtract), **attributes)
    device = device_model(node, {"a": TensorProto.INT8, "b": TensorProto.INT8}, ("y", TensorProto.INT8), {})
    expected = kernels.add(a, b, subtract=subtract, **attributes)
    np.testing.assert_array_equal(lowered_run(device, {"a": a, "b": b}), expected)


@PROPERTY
@given(
    values=arrays(np.float32, (1, 16), elements=st.floats(-300, 300, width=32)),
    rounding=st.sampled_from(["half_away", "half_even"]),
    zero_point=st.integers(-20, 20),
)
def test_lowered_input_quantization_matches_the_kernel(
    values: np.ndarray, rounding: InputRounding, zero_point: int
) -> None:
    ties = np.arange(-6, 7, dtype=np.float32)[None] * 0.25 + 0.125  # scale 0.25: k + 0.5 exactly
    values = np.concatenate([values, ties], axis=1)
    node = helper.make_node(
        "Quantize", ["x"], ["y"], scale=0.25, zero_point=zero_point, to=TensorProto.INT8, rounding=rounding
    )
    device = device_model(node, {"x": TensorProto.FLOAT}, ("y", TensorProto.INT8), {})
    expected = kernels.quantize(values, scale=0.25, zero_point=zero_point, dtype=np.int8, rounding=rounding)
    np.testing.assert_array_equal(lowered_run(device, {"x": values}), expected)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("elem_type", [TensorProto.INT8, TensorProto.UINT8], ids=["int8", "uint8"])
def test_lowered_average_pool_matches_the_kernel(elem_type: int, count_include_pad: int) -> None:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    low, high = kernels.integer_range(dtype)
    attributes = {
        "kernel_shape": [3, 2],
        "strides": [2, 1],
        "pads": [1, 0, 1, 1],
        "count_include_pad": count_include_pad,
        "offset": 128 if dtype == np.uint8 else 0,
        "zero_point": 7,
        "qmin": low,
        "qmax": high,
    }
    q = np.random.default_rng(8).integers(low, high + 1, (2, 3, 7, 5)).astype(dtype)
    node = helper.make_node("IntAveragePool", ["q"], ["y"], **attributes)
    node.domain = DEVICE_DOMAIN
    graph = helper.make_graph(
        [node], "device", [tensor("q", list(q.shape), elem_type)], [tensor("y", [2, 3, 4, 5], elem_type)]
    )
    device = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DEVICE_DOMAIN, 1)]
    )
    device.ir_version = 9
    attributes["count_include_pad"] = bool(count_include_pad)
    np.testing.assert_array_equal(lowered_run(device, {"q": q}), kernels.average_pool(q, **attributes))


# --- golden reference on quantized graphs --------------------------------------------------------------------------


def convnet(average_pool: bool = True) -> ModelProto:
    """Conv+Relu, depthwise+Clip(0, 6), 1x1 conv, residual Add, Sigmoid·x (LUT + Mul), MaxPool, AveragePool (or an
    Identity), Tanh, Concat of two scales, GlobalAveragePool, Gemm."""
    rng = np.random.default_rng(0)
    pool = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]} if average_pool else {}

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return const(name, rng.standard_normal(shape) * scale)

    make = helper.make_node
    nodes = [
        make("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        make("Relu", ["c1"], ["r1"], name="relu1"),
        make("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], strides=[2, 2], group=8),
        make("Clip", ["c2", "lo", "hi"], ["r2"], name="clip"),
        make("Conv", ["r2", "w3", "b3"], ["c3"], name="pw"),
        make("Add", ["r2", "c3"], ["a1"], name="add"),
        make("Sigmoid", ["a1"], ["s1"], name="sigmoid"),
        make("Mul", ["a1", "s1"], ["m1"], name="mul"),
        make("MaxPool", ["m1"], ["p1"], name="maxpool", kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        make("AveragePool" if average_pool else "Identity", ["p1"], ["p2"], name="avgpool", **pool),
        make("Tanh", ["p2"], ["t1"], name="tanh"),
        make("Concat", ["p2", "t1"], ["cat"], name="concat", axis=1),
        make("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        make("Flatten", ["gap"], ["flat"], name="flatten"),
        make("Gemm", ["flat", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        w("w1", (8, 3, 3, 3)),
        w("b1", (8,), 0.1),
        w("w2", (8, 1, 3, 3)),
        w("b2", (8,), 0.1),
        w("w3", (8, 8, 1, 1)),
        w("b3", (8,), 0.1),
        w("w4", (5, 16)),
        w("b4", (5,), 0.1),
        const("lo", 0.0),
        const("hi", 6.0),
    ]
    return build(nodes, [tensor("input", [1, 3, 8, 8])], [tensor("logits", [1, 5])], inits)


def matmuls() -> ModelProto:
    """MatMul with constant weights + bias Add + Relu, a batched MatMul of two activations, Transposes, Sub, Mul by a
    constant, Pad and Reshape."""
    rng = np.random.default_rng(0)
    make = helper.make_node
    nodes = [
        make("MatMul", ["input", "w1"], ["mm1"], name="mm1"),
        make("Add", ["mm1", "bias"], ["a1"], name="bias_add"),
        make("Relu", ["a1"], ["r1"], name="relu"),
        make("Transpose", ["r1"], ["t1"], name="transpose", perm=[0, 2, 1]),
        make("MatMul", ["r1", "t1"], ["mm2"], name="batch_matmul"),
        make("Transpose", ["mm2"], ["t2"], name="transpose2", perm=[0, 2, 1]),
        make("Sub", ["mm2", "t2"], ["s1"], name="sub"),
        make("Mul", ["s1", "factor"], ["m1"], name="scale"),
        make("Pad", ["m1", "pads"], ["padded"], name="pad"),
        make("Reshape", ["t1", "shape"], ["reshaped"], name="reshape"),
    ]
    inits = [
        const("w1", rng.standard_normal((16, 12)) * 0.3),
        const("bias", rng.standard_normal(12) * 0.2),
        const("factor", 0.75),
        const("pads", [0, 0, 1, 0, 0, 2], np.int64),
        const("shape", [1, 12, 4], np.int64),
    ]
    outputs = [tensor("padded", [1, 4, 7]), tensor("reshaped", [1, 12, 4])]
    return build(nodes, [tensor("input", [1, 4, 16])], outputs, inits)


def samples(model: ModelProto, count: int, seed: int, scale: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    value = model.graph.input[0]
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return [{value.name: (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(count)]


def quantized(
    model: ModelProto, activation: str, io: str, reduce_range: bool = False, data: list | None = None
) -> ModelProto:
    data = data or samples(model, 8, 0)
    recipe = Recipe(
        activation_dtype=activation,
        calibration_samples=len(data),
        io_dtype=io,
        reduce_range=reduce_range,
        fixed_output_params=FIXED if activation == "int8" else {},
    )
    return static_qdq(model, recipe, Dataset(data, None, "test"), "full_int8").model


def assert_golden_agrees(model: ModelProto, profile: HardwareProfile, feeds: list[dict]) -> None:
    device = build_device_graph(model, profile)
    runner = exact_session(lower(device.model))
    for sample in feeds:
        feed = quantize_inputs(model, sample)
        golden, exact = run_golden(device.model, feed), runner.run(None, feed)
        for name, want, got in zip(runner.get_outputs(), golden, exact, strict=True):
            assert want.dtype == got.dtype, name.name
            np.testing.assert_array_equal(got, want, err_msg=f"output {name.name} on {profile.name}")


CASES = [
    (EDGETPU, "int8", "int8"),
    (EDGETPU, "uint8", "float32"),  # in-graph input quantization (half away), uint8 as int8 + 128
    (HTP, "uint8", "uint8"),
    (VNNI, "uint8", "float32"),
    (AVX2, "uint8", "float32"),
]


@pytest.mark.parametrize(("profile", "activation", "io"), CASES, ids=[f"{c[0].name}-{c[1]}-{c[2]}" for c in CASES])
@pytest.mark.parametrize("graph", ["convnet", "matmuls"])
def test_exact_tier_agrees_with_the_golden_reference_bit_for_bit(
    graph: str, profile: HardwareProfile, activation: str, io: str
) -> None:
    # onnxruntime's QLinearAveragePool sums dequantized floats: approximate there (see the next test).
    float_model = convnet(profile.quantization.rounding != "float_rne") if graph == "convnet" else matmuls()
    model = quantized(float_model, activation, io)
    device = build_device_graph(model, profile)
    assert [f for f in device.findings if f.kind != "saturation_risk"] == [], "every node has an integer kernel"
    # Inputs beyond the calibration range saturate the input quantization and push accumulators to their extremes.
    assert_golden_agrees(model, profile, samples(float_model, 3, 1) + samples(float_model, 2, 2, scale=4.0))


def test_average_pooling_is_approximate_on_onnxruntime_devices() -> None:
    device = build_device_graph(quantized(convnet(), "uint8", "float32"), VNNI)
    assert [(f.node, f.kind) for f in device.findings] == [("avgpool", "approximate")]
    assert "AveragePool" not in device.exact_ops and "GlobalAveragePool" in device.exact_ops


def hand_qdq_conv(activation: str = "clip") -> ModelProto:
    """int8 in → Conv (per-channel weights) → Relu or Clip(0, 6) left in float before one QuantizeLinear (fused as
    an integer clamp) → MaxPool requantized to other parameters → Pad (constant real 0.5) → int8 out."""
    rng = np.random.default_rng(3)
    make = helper.make_node
    act = make("Clip", ["conv", "lo", "hi"], ["act"]) if activation == "clip" else make("Relu", ["conv"], ["act"])
    nodes = [
        make("DequantizeLinear", ["x", "x_scale", "x_zp"], ["x_real"]),
        make("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_real"], axis=0),
        make("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b_real"], axis=0),
        make("Conv", ["x_real", "w_real", "b_real"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        act,
        make("QuantizeLinear", ["act", "y_scale", "y_zp"], ["y"]),
        make("DequantizeLinear", ["y", "y_scale", "y_zp"], ["y_real"]),
        make("MaxPool", ["y_real"], ["pool"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        make("QuantizeLinear", ["pool", "p_scale", "p_zp"], ["p"]),
        make("DequantizeLinear", ["p", "p_scale", "p_zp"], ["p_real"]),
        make("Pad", ["p_real", "pads", "pad_value"], ["padded"], name="pad"),
        make("QuantizeLinear", ["padded", "p_scale", "p_zp"], ["out"]),
    ]
    w_scale = np.array([0.02, 0.004, 0.05, 0.001], np.float32)
    inits = [
        const("x_scale", 0.05),
        const("x_zp", -3, np.int8),
        const("w_q", rng.integers(-127, 128, (4, 2, 3, 3)), np.int8),
        const("w_scale", w_scale),
        const("w_zp", [0, 0, 0, 0], np.int8),
        const("b_q", rng.integers(-3000, 3000, 4), np.int32),
        const("b_scale", w_scale * np.float32(0.05)),
        const("b_zp", [0, 0, 0, 0], np.int32),
        const("lo", 0.0),
        const("hi", 6.0),
        const("y_scale", 0.05),
        const("y_zp", -100, np.int8),  # qf(6) = −100 + 120 = 20: Clip narrows the top
        const("p_scale", 0.06),
        const("p_zp", 5, np.int8),  # the clamped top, real 6.0, becomes 5 + 100 = 105
        const("pads", [0, 0, 1, 1, 0, 0, 0, 1], np.int64),
        const("pad_value", 0.5),
    ]
    return build(
        nodes, [tensor("x", [1, 2, 6, 6], TensorProto.INT8)], [tensor("out", [1, 4, 4, 4], TensorProto.INT8)], inits
    )


@pytest.mark.parametrize("activation", ["clip", "relu"])
@pytest.mark.parametrize("profile", [EDGETPU, HTP, VNNI], ids=lambda p: p.name)
def test_fused_clamps_rescales_and_pad_values(profile: HardwareProfile, activation: str) -> None:
    model = hand_qdq_conv(activation)
    device = build_device_graph(model, profile)
    assert device.findings == []
    requantize = [n for n in device.model.graph.node if n.op_type == "Requantize"]
    conv_bounds = {a.name: a.i for a in requantize[0].attribute if a.name in ("qmin", "qmax")}
    assert conv_bounds == ({"qmin": -100, "qmax": 20} if activation == "clip" else {"qmin": -100, "qmax": 127})
    assert len(requantize) == 2, "the MaxPool input is rescaled to the pooled tensor's parameters"
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.integers(-128, 128, (1, 2, 6, 6)).astype(np.int8)} for _ in range(4)]
    outputs = [run_golden(device.model, f)[0] for f in feeds]
    assert max(int(o.max()) for o in outputs) == (105 if activation == "clip" else 127)
    padded_value = int(kernels.quantize(np.array(0.5), scale=0.06, zero_point=5, dtype=np.int8, rounding="half_away"))
    assert all((o[:, :, 0, :] == padded_value).all() for o in outputs), "the Pad fills with the real 0.5"
    runner = exact_session(lower(device.model))
    for feed, want in zip(feeds, outputs, strict=True):
        np.testing.assert_array_equal(runner.run(None, feed)[0], want)


# --- x86 without VNNI: int16 pair saturation ------------------------------------------------------------------------


def saturating_matmul() -> ModelProto:
    """64 inputs near the top of their range against weights near ±max whose adjacent pairs share a sign: every pair
    of u8 × s8 products is about 2 · 255 · 120 > 32767."""
    rng = np.random.default_rng(5)
    signs = np.repeat(rng.choice([-1.0, 1.0], size=(32, 8)), 2, axis=0)
    weights = signs * rng.uniform(0.9, 1.0, size=(64, 8))
    return build(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        [tensor("x", [1, 64])],
        [tensor("y", [1, 8])],
        [const("w", weights)],
    )


def test_full_range_u8_s8_saturates_on_x86_without_vnni_and_reduce_range_fixes_it() -> None:
    float_model = saturating_matmul()
    data = [{"x": np.random.default_rng(s).uniform(0.85, 1.0, (1, 64)).astype(np.float32)} for s in range(8)]
    calibration = [{"x": np.zeros((1, 64), np.float32)}, *data]  # inputs on [0, 1]: the data sits near 255
    reference = [np.asarray(onnx.reference.ReferenceEvaluator(float_model).run(None, d)[0]) for d in data]

    def fidelity(model: ModelProto, profile: HardwareProfile, tier: str) -> float:
        outputs = [o[0] for o in emulate(model, profile, data, tier).outputs]
        return sqnr_db(np.concatenate(reference), np.concatenate(outputs))

    full = quantized(float_model, "uint8", "float32", data=calibration)
    full_exact = emulate(full, AVX2, data, "exact")
    assert [(f.node, f.kind, f.count) for f in full_exact.findings] == [("fc", "saturation_risk", 32 * 8)]
    assert "vpmaddubsw" in full_exact.fidelity_statement
    assert fidelity(full, AVX2, "exact") < 10  # the saturated pair sums wreck the output
    assert fidelity(full, VNNI, "exact") > 30  # the same model on int32-accumulating hardware is fine
    reduced = quantized(float_model, "uint8", "float32", reduce_range=True, data=calibration)
    assert emulate(reduced, AVX2, data[:1], "exact").findings == []
    assert fidelity(reduced, AVX2, "exact") > 30  # 7-bit weights: 255 · 63 · 2 < 32767, nothing saturates
    np.testing.assert_array_equal(
        np.concatenate([o[0] for o in emulate(reduced, AVX2, data, "exact").outputs]),
        np.concatenate([o[0] for o in emulate(reduced, VNNI, data, "exact").outputs]),
    )


def test_pair_saturation_follows_the_kh_kw_c_order_in_convolutions() -> None:
    x = np.full((1, 4, 3, 3), 255, np.uint8)
    w = np.zeros((1, 4, 1, 1), np.int8)
    w[0, :2] = 127  # channels 0 and 1 of the same tap form one pair: 2 · 255 · 127 saturates to 32767
    w[0, 2] = 127  # channel 2 pairs with channel 3 (weight 0): 32385 fits
    acc = kernels.conv_accumulate(
        x,
        w,
        None,
        x_zero_point=0,
        group=1,
        strides=[1, 1],
        pads=[0, 0, 0, 0],
        dilations=[1, 1],
        accumulation="int16_pairs",
    )
    assert int(acc[0, 0, 0, 0]) == 32767 + 255 * 127
    exact = kernels.conv_accumulate(
        x, w, None, x_zero_point=0, group=1, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1]
    )
    assert int(exact[0, 0, 0, 0]) == 3 * 255 * 127


@pytest.mark.parametrize("most", [False, True], ids=["one-saturating-pair", "most-pairs-saturating"])
@pytest.mark.parametrize("op_type", ["IntConv", "IntMatMul"])
def test_lowered_pair_saturation_matches_the_kernel(op_type: str, most: bool) -> None:
    """Both lowerings of int16 pair accumulation (the int32 sum minus the excess of the few pairs that can saturate,
    or every clamped pair summed directly) agree with the kernel; activations near 255, odd K, padding."""
    rng = np.random.default_rng(7)
    conv = op_type == "IntConv"
    weights = rng.integers(-40, 41, (6, 5, 3, 3) if conv else (45, 6))
    if most:
        weights = rng.choice([-127, 127], size=weights.shape)
    elif conv:
        weights[0, :2, 0, 0] = 127  # channels 0 and 1 of tap (0, 0): the first pair along (kh, kw, C)
    else:
        weights[:2, 0] = 127  # rows 0 and 1: the first pair along K
    x = rng.integers(200, 256, (2, 5, 6, 6) if conv else (3, 4, 45)).astype(np.uint8)
    bias = rng.integers(-5000, 5000, 6).astype(np.int32)
    if conv:
        attributes = {"group": 1, "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "x_zero_point": 3}
        exact = kernels.conv_accumulate(x, weights, bias, **attributes)
        expected = kernels.conv_accumulate(x, weights, bias, accumulation="int16_pairs", **attributes)
    else:
        attributes = {"a_zero_point": 3, "b_zero_point": 0}
        exact = kernels.matmul_accumulate(x, weights, bias, **attributes)
        expected = kernels.matmul_accumulate(x, weights, bias, accumulation="int16_pairs", **attributes)
    assert not np.array_equal(exact, expected), "some pair saturates"
    identity = kernels.quantize_multiplier(1.0)  # Requantize by 1 makes the accumulator a graph output
    requantize = {"rounding": "tflite_double", "input_zero_point": 0, "zero_point": 0, "qmin": I32_MIN, "qmax": I32_MAX}
    nodes = [
        helper.make_node(op_type, ["x", "w", "b"], ["acc"], accumulation="int16_pairs", **attributes),
        helper.make_node("Requantize", ["acc", "one", "zero"], ["y"], to=TensorProto.INT32, **requantize),
    ]
    for node in nodes:
        node.domain = DEVICE_DOMAIN
    constants = {"w": weights.astype(np.int8), "b": bias, "one": np.int32(identity[0]), "zero": np.int32(identity[1])}
    graph = helper.make_graph(
        nodes,
        "device",
        [tensor("x", list(x.shape), TensorProto.UINT8)],
        [tensor("y", list(expected.shape), TensorProto.INT32)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()],
    )
    device = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DEVICE_DOMAIN, 1)]
    )
    device.ir_version = 9
    np.testing.assert_array_equal(lowered_run(device, {"x": x}), expected)


CONV_TRANSPOSE_GEOMETRY = {
    "strides": [2, 3],
    "pads": [1, 0, 0, 2],
    "output_padding": [1, 0],
    "dilations": [1, 2],
    "x_zero_point": 3,
}
"""Every ONNX ConvTranspose attribute the kernel takes, with asymmetric values."""


def test_conv_transpose_kernel_follows_onnx_geometry() -> None:
    """The scatter-accumulation kernel against ONNX's own ConvTranspose (onnx.reference, float64: exact on these
    integers) on the centred input."""
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    weights = rng.integers(-127, 128, (3, 4, 3, 2)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 4).astype(np.int32)
    got = kernels.conv_transpose_accumulate(x, weights, bias, **CONV_TRANSPOSE_GEOMETRY)
    attributes = {k: v for k, v in CONV_TRANSPOSE_GEOMETRY.items() if k != "x_zero_point"}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attributes)
    graph = helper.make_graph(
        [node],
        "g",
        [tensor(n, None, TensorProto.DOUBLE) for n in ("x", "w", "b")],
        [tensor("y", None, TensorProto.DOUBLE)],
    )
    reference = onnx.reference.ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"x": x.astype(np.float64) - 3, "w": weights.astype(np.float64), "b": bias.astype(np.float64)}
    np.testing.assert_array_equal(got, reference.run(None, feeds)[0].astype(np.int64))


@pytest.mark.parametrize("in_channels", [3, 256], ids=["float32", "int64-channel-chunks"])
def test_lowered_conv_transpose_matches_the_kernel(in_channels: int) -> None:
    """The lowering's float ConvTranspose of integers is exact below 2^24; with 256 input channels of ±127 weights
    the bound is above it and the input channels are summed in int64 chunks."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (1, in_channels, 4, 5)).astype(np.int8)
    weights = rng.choice([-127, 127], size=(in_channels, 4, 3, 2)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 4).astype(np.int32)
    expected = kernels.conv_transpose_accumulate(x, weights, bias, **CONV_TRANSPOSE_GEOMETRY)
    bound = (128 + 3) * np.abs(weights.astype(np.int64)).sum(axis=(0, 2, 3)).max() + np.abs(bias).max()
    assert (bound >= FLOAT32_EXACT) == (in_channels == 256)
    identity = kernels.quantize_multiplier(1.0)  # Requantize by 1 makes the accumulator a graph output
    requantize = {"rounding": "tflite_double", "input_zero_point": 0, "zero_point": 0, "qmin": I32_MIN, "qmax": I32_MAX}
    nodes = [
        helper.make_node("IntConvTranspose", ["x", "w", "b"], ["acc"], **CONV_TRANSPOSE_GEOMETRY),
        helper.make_node("Requantize", ["acc", "one", "zero"], ["y"], to=TensorProto.INT32, **requantize),
    ]
    for node in nodes:
        node.domain = DEVICE_DOMAIN
    constants = {"w": weights, "b": bias, "one": np.int32(identity[0]), "zero": np.int32(identity[1])}
    graph = helper.make_graph(
        nodes,
        "device",
        [tensor("x", list(x.shape), TensorProto.INT8)],
        [tensor("y", list(expected.shape), TensorProto.INT32)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()],
    )
    device = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DEVICE_DOMAIN, 1)]
    )
    device.ir_version = 9
    np.testing.assert_array_equal(lowered_run(device, {"x": x}), expected)
    np.testing.assert_array_equal(run_golden(device, {"x": x})[0], expected)
    chunks = sum(node.op_type == "ConvTranspose" for node in lower(device).graph.node)
    assert chunks == (1 if in_channels == 3 else 2)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="models onnxruntime's x86 MLAS kernels")
def test_the_float_rne_exact_tier_reproduces_onnxruntime_bit_for_bit() -> None:
    """The onnxruntime model (float32 multipliers, half-to-even rounding, MLAS's GlobalAveragePool formula) against
    onnxruntime's own QLinearConv / QLinearGlobalAveragePool / QGemm on every quantized tensor. 7-bit weights keep
    this machine's u8 × s8 kernels out of int16 saturation, VNNI or not."""
    float_model = zoo.mobilenet_style(size=32, width=8, blocks=4)
    model = quantized(float_model, "uint8", "float32", reduce_range=True, data=samples(float_model, 8, 0))
    names = [node.output[0] for node in model.graph.node if node.op_type == "QuantizeLinear"]
    onnxruntime = session(expose(model, names))
    exact = exact_session(build_exact_model(expose(model, names), VNNI))
    for sample in samples(float_model, 3, 1):
        for name, want, got in zip(names, onnxruntime.run(names, sample), exact.run(names, sample), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)


# --- the trained example model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[ModelProto, list[dict], np.ndarray]:
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    with np.load(EXAMPLES / "calib.npz") as calib, np.load(EXAMPLES / "val.npz") as val:
        calibration = Dataset([{"input": x[None]} for x in calib["input"]], None, "calib.npz")
        validation = [{"input": x[None]} for x in val["input"]]
        labels = val["labels"]
    recipe = Recipe(activation_dtype="int8", calibration_samples=200, io_dtype="int8")
    return static_qdq(model, recipe, calibration, "full_int8").model, validation, labels


def test_digits_accuracy_and_tier_agreement_on_the_edge_tpu(digits: tuple[ModelProto, list[dict], np.ndarray]) -> None:
    model, validation, labels = digits
    exact = emulate(model, EDGETPU, validation, "exact")
    fast = emulate(model, EDGETPU, validation, "fast")
    accuracy = float(np.mean([o[0].argmax() == label for o, label in zip(exact.outputs, labels, strict=True)]))
    assert accuracy >= 0.983 - 0.01, "within 1 point of float (0.9833)"
    scale = output_scales(model)["logits"]
    assert scale is not None
    gap = lsb_difference(
        np.concatenate([o[0] for o in fast.outputs]), np.concatenate([o[0] for o in exact.outputs]), scale
    )
    assert gap["max_abs_lsb"] <= 2 and gap["differing_fraction"] < 0.1
    assert exact.tier == "exact" and "coral issue #503" in exact.fidelity_statement
    assert fast.tier == "fast" and FAST_FIDELITY in fast.fidelity_statement
    assert "QLinearConv" in fast.fidelity_statement


# --- findings, statements, errors ------------------------------------------------------------------------------------


def qdq_unary(op_type: str, elem_type: int = TensorProto.INT8) -> ModelProto:
    """int in → DequantizeLinear → op → QuantizeLinear → int out."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["x_real"]),
        helper.make_node(op_type, ["x_real"], ["y_real"], name=op_type.lower()),
        helper.make_node("QuantizeLinear", ["y_real", "s", "zp"], ["y"]),
    ]
    inits = [const("s", 0.05), const("zp", 0, dtype)]
    return build(nodes, [tensor("x", [1, 8], elem_type)], [tensor("y", [1, 8], elem_type)], inits)


def test_an_op_without_integer_kernel_is_reported_by_both_tiers() -> None:
    model = qdq_unary("Sqrt")  # no integer I/O recorded: the sample is fed as the integers it is
    sample = [{"x": np.arange(8, dtype=np.int8)[None]}]
    fast = emulate(model, EDGETPU, sample, "fast")
    assert [(f.node, f.kind) for f in fast.findings] == [("sqrt", "float_kernel")]
    assert "float_kernel" in fast.fidelity_statement
    exact = emulate(model, EDGETPU, sample, "exact")
    assert [(f.node, f.kind) for f in exact.findings] == [("sqrt", "approximate")]
    assert "Approximate" in exact.fidelity_statement and "sqrt" in exact.fidelity_statement
    np.testing.assert_allclose(exact.outputs[0][0], fast.outputs[0][0], atol=0.05 + 1e-6)  # within 1 LSB


def test_sigmoid_is_a_lookup_table_and_exact() -> None:
    device = build_device_graph(qdq_unary("Sigmoid"), EDGETPU)
    assert device.findings == [] and "Sigmoid" in device.exact_ops
    assert [n.op_type for n in device.model.graph.node] == ["Lut"]


def test_sixteen_bit_activations_are_refused_by_the_exact_tier() -> None:
    model = qdq_unary("Relu", TensorProto.INT16)
    with pytest.raises(EmulationError, match="only 8-bit"):
        build_exact_model(model, EDGETPU)
    assert issubclass(EmulationError, AutoptqError)


def test_an_fp16_profile_is_refused() -> None:
    gpu = load_profile("gpu-fp16")
    fp16 = gpu.model_copy(update={"quantization": gpu.quantization.model_copy(update={"rounding": "fp16_storage"})})
    with pytest.raises(EmulationError, match="fp16"):
        build_exact_model(qdq_unary("Relu"), fp16)


def test_bad_tier_and_missing_inputs() -> None:
    model = qdq_unary("Relu")
    with pytest.raises(AutoptqError, match="unknown tier"):
        emulate(model, EDGETPU, [], "reference")
    with pytest.raises(DataError, match="'x'"):
        emulate(model, EDGETPU, [{"other": np.zeros((1, 8), np.float32)}], "exact")


def test_lsb_difference() -> None:
    stats = lsb_difference(np.array([0.0, 0.5, 1.0, 2.0]), np.array([0.0, 0.5, 1.5, 3.0]), scale=0.5)
    assert stats == {"elements": 4.0, "differing_fraction": 0.5, "max_abs_lsb": 2.0, "mean_abs_lsb": 0.75}
