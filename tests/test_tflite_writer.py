"""The TFLite writer held to the exact tier: small models of each op family built here, quantized for a `format:
tflite` profile, written as .tflite, run in LiteRT (reference kernels) and TFLite Micro, and compared element by
element with the exact tier's integers."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import ModelProto, helper, numpy_helper

from autoptq import api
from autoptq.deploy.intgraph import build_device_graph
from autoptq.deploy.tflite_writer import TfliteExportError, export_tflite
from autoptq.devices.canonical import canonical_model
from autoptq.devices.profiles import FixedOutputParams, load_profile
from autoptq.errors import AutoptqError
from autoptq.evaluate.emulators.integer import build_exact_model, exact_session, quantize_inputs
from autoptq.model.calibration import Dataset
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor

pytest.importorskip("tflite", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")
pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")
pytest.importorskip("tflite_micro", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")

from autoptq.evaluate.emulators.tflite_runtime import run_litert, run_tflm

PROFILE = load_profile("tflite-int8")
FIXED = {
    "Softmax": FixedOutputParams(scale=1 / 256, zero_point=-128),
    "Sigmoid": FixedOutputParams(scale=1 / 256, zero_point=-128),
    "Tanh": FixedOutputParams(scale=1 / 128, zero_point=0),
}
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _weights_from_a_fresh_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test draws its models' weights from the same fresh seed, so a test's model does not depend on which
    tests ran before it (`-k`, a failure re-run, another order)."""
    monkeypatch.setattr(sys.modules[__name__], "RNG", np.random.default_rng(0))


def weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def samples(model: ModelProto, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        sample = {}
        for value in model.graph.input:
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            sample[value.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(sample)
    return out


def quantize(
    model: ModelProto, per_channel: bool = True, dtype: str = "int8", data: list[dict[str, np.ndarray]] | None = None
) -> ModelProto:
    data = data or samples(model, 16, 1)
    recipe = Recipe(
        activation_dtype=dtype,
        calibration_samples=len(data),
        io_dtype=dtype,
        per_channel=per_channel,
        fixed_output_params=FIXED,
        # Every op of the model, including those onnxruntime leaves in float by default (Max, Min, Tanh, HardSwish).
        op_types_to_quantize=sorted({node.op_type for node in model.graph.node}),
    )
    return static_qdq(model, recipe, Dataset(data, None, "test"), "full_int8").model


def exact_outputs(qdq: ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    session = exact_session(build_exact_model(qdq, PROFILE))
    return [session.run(None, quantize_inputs(qdq, sample)) for sample in feeds]


def max_lsb(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> int:
    return max(
        int(np.abs(x.astype(np.int64) - y.astype(np.int64)).max())
        for sample_a, sample_b in zip(a, b, strict=True)
        for x, y in zip(sample_a, sample_b, strict=True)
    )


def written_ops(model: ModelProto, per_channel: bool = True) -> tuple[dict[str, int], int, int]:
    """(ops written, max LSB LiteRT vs exact tier, max LSB TFLM vs exact tier) on fresh samples."""
    qdq = quantize(model, per_channel)
    exported = export_tflite(qdq, PROFILE)
    feeds = samples(model, 6, 2)
    exact = exact_outputs(qdq, feeds)
    return exported.op_counts, max_lsb(run_litert(exported, feeds), exact), max_lsb(run_tflm(exported, feeds), exact)


# --- models, one per op family ---------------------------------------------------------------------------------------


def conv_model() -> ModelProto:
    """CONV_2D (SAME pads + Relu), CONV_2D stride 2 with pads that are not SAME (PAD), DEPTHWISE + Clip(0, 6)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["y"], name="relu6"),
    ]
    inits = [
        const("w1", weights(6, 3, 3, 3)),
        const("b1", weights(6)),
        const("w2", weights(8, 6, 3, 3)),
        const("b2", weights(8)),
        const("w3", weights(8, 1, 3, 3)),
        const("b3", weights(8)),
        const("lo", 0.0),
        const("hi", 6.0),
    ]
    return build(nodes, [tensor("x", [1, 3, 10, 10])], [tensor("y", [1, 8, 5, 5])], inits)


def dense_model() -> ModelProto:
    """FULLY_CONNECTED from a Gemm (transB) and a MatMul, with Relu fused."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="fc1", transB=1),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [const("w1", weights(12, 16)), const("b1", weights(12)), const("w2", weights(12, 5))]
    return build(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 5])], inits)


def arithmetic_model() -> ModelProto:
    """ADD (residual, fused Relu), SUB, MUL of two activations and by a constant, MINIMUM / MAXIMUM."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu"),
        helper.make_node("Sub", ["ar", "c"], ["s"], name="sub"),
        helper.make_node("Mul", ["s", "c"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "k"], ["mk"], name="mul_const"),
        helper.make_node("Max", ["mk", "c"], ["mx"], name="max"),
        helper.make_node("Min", ["mx", "x"], ["y"], name="min"),
    ]
    inits = [const("w", weights(4, 4, 3, 3)), const("b", weights(4)), const("k", np.float32(0.7))]
    return build(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits)


def pooling_model() -> ModelProto:
    """MAX_POOL_2D, AVERAGE_POOL_2D (no padding), MEAN (GlobalAveragePool), RESHAPE to [1, C]."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["mp"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["y"], name="flatten"),
    ]
    inits = [const("w", weights(6, 3, 3, 3)), const("b", weights(6))]
    return build(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 6])], inits)


def movement_model() -> ModelProto:
    """CONCATENATION over channels, PAD, TRANSPOSE, RESHAPE of a 4-D tensor (TRANSPOSE to ONNX order first)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Conv", ["x", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Concat", ["c1", "c2"], ["cat"], name="concat", axis=1),
        helper.make_node("Pad", ["cat", "pads"], ["p"], name="pad"),
        helper.make_node("Transpose", ["p"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", ["t", "shape"], ["y"], name="reshape"),
    ]
    inits = [
        const("w1", weights(3, 2, 1, 1)),
        const("b1", weights(3)),
        const("w2", weights(5, 2, 1, 1)),
        const("b2", weights(5)),
        const("pads", [0, 0, 1, 0, 0, 0, 0, 2], np.int64),
        const("shape", [1, 8, -1], np.int64),
    ]
    return build(nodes, [tensor("x", [1, 2, 4, 5])], [tensor("y", [1, 8, 35])], inits)


def slice_split_model() -> ModelProto:
    """STRIDED_SLICE (a window of H and W, steps of 2 on W) and SPLIT_V along channels, then CONCATENATION."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Slice", ["c", "starts", "ends", "axes", "steps"], ["s"], name="slice"),
        helper.make_node("Split", ["s", "sizes"], ["a", "b2"], name="split", axis=1),
        helper.make_node("Concat", ["b2", "a"], ["y"], name="concat", axis=1),
    ]
    inits = [
        const("w", weights(6, 3, 1, 1)),
        const("b", weights(6)),
        const("starts", [1, 0], np.int64),
        const("ends", [-1, 7], np.int64),
        const("axes", [2, 3], np.int64),
        const("steps", [1, 2], np.int64),
        const("sizes", [2, 4], np.int64),
    ]
    return build(nodes, [tensor("x", [1, 3, 6, 7])], [tensor("y", [1, 6, 4, 4])], inits, opset=13)


def focus_model(shared: bool) -> ModelProto:
    """YOLOX's Focus (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2] joined on channels)
    → Conv + Relu, as the Edge TPU's converter rewrites it: SPACE_TO_DEPTH, then the Conv weight permuted to its
    channel order, or (`shared`: a second Conv reads the Concat) SPLIT_V + CONCATENATION in YOLOX's order."""
    offsets = [(0, 0), (1, 0), (0, 1), (1, 1)]
    nodes = [
        helper.make_node("Slice", ["x", f"start{dy}{dx}", "ends", "axes", "steps"], [f"x{dy}{dx}"], name=f"s{dy}{dx}")
        for dy, dx in offsets
    ]
    nodes += [
        helper.make_node("Concat", [f"x{dy}{dx}" for dy, dx in offsets], ["focus"], name="focus", axis=1),
        helper.make_node("Conv", ["focus", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inits = [const(f"start{dy}{dx}", [dy, dx], np.int64) for dy, dx in offsets]
    inits += [
        const("ends", [np.iinfo(np.int64).max] * 2, np.int64),
        const("axes", [2, 3], np.int64),
        const("steps", [2, 2], np.int64),
        const("w", weights(6, 12, 3, 3)),
        const("b", weights(6)),
    ]
    outputs = [tensor("y", [1, 6, 3, 4])]
    if shared:
        nodes.append(helper.make_node("Conv", ["focus", "w2"], ["z"], name="conv2"))
        inits.append(const("w2", weights(2, 12, 1, 1)))
        outputs.append(tensor("z", [1, 2, 3, 4]))
    model = build(nodes, [tensor("x", [1, 3, 6, 8])], outputs, inits, opset=13)
    return canonical_model(model, ["focus_to_space_to_depth"])[0]


def softmax_model(seed: int = 0, softmax: bool = True) -> ModelProto:
    """SOFTMAX after a FULLY_CONNECTED (or the FULLY_CONNECTED alone), weights drawn from their own seed (not the
    module's stream, whose state depends on which tests ran before)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g" if softmax else "y"], name="fc", transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1))
    w, b = (rng.standard_normal(shape) * 0.3 for shape in ((10, 16), (10,)))
    inits = [const("w", (w * 4).astype(np.float32)), const("b", b.astype(np.float32))]
    return build(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 10])], inits)


def activation_model() -> ModelProto:
    """LOGISTIC and TANH (fixed output parameters), and HARD_SWISH."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
        helper.make_node("Tanh", ["c"], ["t"], name="tanh"),
        helper.make_node("HardSwish", ["c"], ["h"], name="hardswish"),
    ]
    inits = [const("w", weights(4, 3, 1, 1) * 5), const("b", weights(4))]
    outputs = [tensor(name, [1, 4, 5, 5]) for name in ("s", "t", "h")]
    return build(nodes, [tensor("x", [1, 3, 5, 5])], outputs, inits)


def resize_model(mode: str, coordinate: str) -> ModelProto:
    """RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR, 2x."""
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinate}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor" if coordinate == "asymmetric" else "round_prefer_floor"
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Resize", ["c", "", "scales"], ["y"], name="resize", **attrs),
    ]
    inits = [const("w", weights(4, 3, 1, 1)), const("b", weights(4)), const("scales", [1, 1, 2, 2])]
    return build(nodes, [tensor("x", [1, 3, 4, 5])], [tensor("y", [1, 4, 8, 10])], inits, opset=13)


# --- LiteRT and TFLM against the exact tier --------------------------------------------------------------------------


def test_convolutions_are_bit_exact() -> None:
    ops, litert, tflm = written_ops(conv_model())
    assert ops == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "PAD": 1}
    assert (litert, tflm) == (0, 0)


def test_per_tensor_fully_connected_is_bit_exact_in_tflm() -> None:
    """LiteRT's reference FULLY_CONNECTED requantizes in double, `round(acc · s_in·s_w / s_out)` (one rounding);
    TFLM, like CONV_2D and the exact tier, uses the fixed-point multiplier (two roundings)."""
    ops, litert, tflm = written_ops(dense_model(), per_channel=False)
    assert ops == {"FULLY_CONNECTED": 2}
    assert tflm == 0 and litert <= 1  # the stated tolerance (tflite_runtime.agreement)


def test_per_channel_fully_connected_is_bit_exact_in_tflm() -> None:
    qdq = quantize(dense_model())
    exported = export_tflite(qdq, PROFILE)
    feeds = samples(dense_model(), 40, 3)
    exact = exact_outputs(qdq, feeds)
    assert max_lsb(run_tflm(exported, feeds), exact) == 0
    assert max_lsb(run_litert(exported, feeds), exact) <= 1  # the stated tolerance (tflite_runtime.agreement)


def test_litert_rounds_a_fully_connected_tie_once_and_softmax_amplifies_it() -> None:
    """On these weights one logit is 2713 · 0.0057127 = 15.498 before the zero point: the fixed-point multiplier
    rounds it twice (SRDHM to 1984 = 15.5 · 2^7, then the shift: 16), LiteRT's double once (15). TFLM agrees with the
    exact tier; in LiteRT the 1-LSB step at the logits (scale 0.091) moves the SOFTMAX output by 5 LSB."""
    fully_connected = written_ops(softmax_model(7, softmax=False), per_channel=False)
    assert fully_connected == ({"FULLY_CONNECTED": 1}, 1, 0)
    _, litert, tflm = written_ops(softmax_model(7), per_channel=False)
    assert tflm == 0 and litert == 5


def test_arithmetic_is_bit_exact() -> None:
    ops, litert, tflm = written_ops(arithmetic_model())
    # QUANTIZE: Max/Min inputs of other parameters than the output are requantized first (int8 → int8)
    assert ops == {"ADD": 1, "CONV_2D": 1, "MAXIMUM": 1, "MINIMUM": 1, "MUL": 2, "QUANTIZE": 4, "SUB": 1}
    assert (litert, tflm) == (0, 0)


def test_pools_and_mean_are_bit_exact() -> None:
    ops, litert, tflm = written_ops(pooling_model())
    assert ops["MAX_POOL_2D"] == ops["AVERAGE_POOL_2D"] == ops["MEAN"] == 1
    assert (litert, tflm) == (0, 0)


@pytest.mark.parametrize(("height", "width"), [(3, 5), (15, 20)])
def test_mean_folds_the_element_count_into_its_multiplier_bit_exactly(height: int, width: int) -> None:
    """TFLite's int8 MEAN divides by the element count inside its multiplier (one rounding); dividing after the
    requantization (two roundings) differed by 1 LSB on ~1-20% of 64 channels at these sizes."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["y"], name="gap"),
    ]
    inits = [const("w", weights(64, 3, 1, 1)), const("b", weights(64))]
    model = build(nodes, [tensor("x", [1, 3, height, width])], [tensor("y", [1, 64, 1, 1])], inits)
    ops, litert, tflm = written_ops(model)
    assert ops == {"CONV_2D": 1, "MEAN": 1}
    assert litert == 0 and tflm == 0


def test_data_movement_keeps_onnx_element_order() -> None:
    ops, litert, tflm = written_ops(movement_model())
    assert ops["CONCATENATION"] == ops["PAD"] == 1 and ops["RESHAPE"] == 1
    assert (litert, tflm) == (0, 0)


def test_slice_and_split_are_bit_exact() -> None:
    ops, litert, tflm = written_ops(slice_split_model())
    assert ops["STRIDED_SLICE"] == ops["SPLIT_V"] == ops["CONCATENATION"] == 1
    assert (litert, tflm) == (0, 0)


@pytest.mark.parametrize("shared", [False, True], ids=["weight-permuted", "split-concat"])
def test_focus_as_space_to_depth_is_bit_exact(shared: bool) -> None:
    ops, litert, tflm = written_ops(focus_model(shared))
    expected = {"CONV_2D": 2, "CONCATENATION": 1, "SPLIT_V": 1} if shared else {"CONV_2D": 1}
    expected["SPACE_TO_DEPTH"] = 1
    assert ops == expected  # no STRIDED_SLICE, no float step around SPACE_TO_DEPTH
    assert (litert, tflm) == (0, 0)


def test_hard_sigmoid_and_division_by_a_constant_are_bit_exact() -> None:
    """The exact tier emulates the int8 MUL / ADD / MINIMUM the writer decomposes them into (no float step)."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("HardSigmoid", ["c"], ["h"], name="hardsigmoid", alpha=1 / 6, beta=0.5),
        helper.make_node("Div", ["h", "six"], ["y"], name="div"),
    ]
    inits = [const("w", weights(4, 3, 1, 1) * 5), const("b", weights(4)), const("six", np.float32(6.0))]
    model = build(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 4, 5, 5])], inits)
    ops, litert, tflm = written_ops(model)
    assert ops == {"ADD": 1, "CONV_2D": 1, "MUL": 2} or ops == {"ADD": 1, "CONV_2D": 1, "MINIMUM": 1, "MUL": 2}
    assert litert == 0 and tflm == 0


@pytest.mark.parametrize(
    ("pads", "kernel", "bias", "activation"),
    [
        ([0, 0, 0, 0], 2, True, "Relu"),
        ([0, 0, 0, 0], 2, False, "Sigmoid"),
        ([1, 1, 1, 1], 4, False, "Relu"),
        ([1, 1, 1, 1], 4, True, "Sigmoid"),
    ],
)
def test_transpose_conv_is_bit_exact(pads: list[int], kernel: int, bias: bool, activation: str) -> None:
    """TRANSPOSE_CONV, VALID (k 2, s 2, no pads) and SAME (k 4, s 2, pads 1), per-channel weights, with and without
    bias: the exact tier runs TFLite's integer kernel (int32 scatter-accumulation, int32 bias, CONV_2D's per-channel
    requantization). Computed in float instead it was 1 LSB off, which a LOGISTIC after it can amplify."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node(
            "ConvTranspose", ["c", "wt", *(["bt"] if bias else [])], ["t"], name="tconv", strides=[2, 2], pads=pads
        ),
        helper.make_node(activation, ["t"], ["y"], name="activation"),
    ]
    inits = [const("w", weights(4, 3, 1, 1)), const("b", weights(4)), const("wt", weights(4, 5, kernel, kernel))]
    inits += [const("bt", weights(5))] if bias else []
    model = build(nodes, [tensor("x", [1, 3, 4, 5])], [tensor("y", [1, 5, 8, 10])], inits)
    qdq = quantize(model)
    assert "ConvTranspose" in build_device_graph(qdq, PROFILE).exact_ops
    ops, litert, tflm = written_ops(model)
    # The Relu is the output range of the TRANSPOSE_CONV (onnxruntime drops its Q/DQ pair).
    assert ops == {"CONV_2D": 1, "TRANSPOSE_CONV": 1, **({"LOGISTIC": 1} if activation == "Sigmoid" else {})}
    assert (litert, tflm) == (0, 0)


def test_a_relu_kept_before_the_transpose_conv_output_is_fused_bit_exactly() -> None:
    """A Relu between ConvTranspose and its QuantizeLinear that narrows the int8 range (zero point −100) is fused:
    TRANSPOSE_CONV version 4 with RELU (op_version.cc), bit-exact in LiteRT and TFLM. onnxruntime's quantizer drops
    a Relu it can express as the output range, so the QDQ model is edited to keep one."""
    import tflite

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("ConvTranspose", ["c", "wt", "bt"], ["t"], name="tconv", strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["y"], name="relu"),
    ]
    inits = [const("w", weights(4, 3, 1, 1)), const("b", weights(4)), const("wt", weights(4, 5, 2, 2))]
    model = build(nodes, [tensor("x", [1, 3, 4, 5])], [tensor("y", [1, 5, 8, 10])], [*inits, const("bt", weights(5))])
    qdq = quantize(model)
    tconv = next(n for n in qdq.graph.node if n.op_type == "ConvTranspose")
    quantize_linear = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tconv.output[0])
    tconv.output[0] = "tconv_raw"
    position = list(qdq.graph.node).index(tconv) + 1
    qdq.graph.node.insert(position, helper.make_node("Relu", ["tconv_raw"], [quantize_linear.input[0]], name="kept"))
    zero_point = next(i for i in qdq.graph.initializer if i.name == quantize_linear.input[2])
    zero_point.CopyFrom(numpy_helper.from_array(np.array(-100, np.int8), zero_point.name))

    exported = export_tflite(qdq, PROFILE)
    file = tflite.Model.GetRootAsModel(exported.content, 0)
    codes = [file.OperatorCodes(i) for i in range(file.OperatorCodesLength())]
    assert {(c.BuiltinCode(), c.Version()) for c in codes} == {
        (tflite.BuiltinOperator.CONV_2D, 3),
        (tflite.BuiltinOperator.TRANSPOSE_CONV, 4),
    }
    feeds = samples(model, 6, 2)
    exact = exact_outputs(qdq, feeds)
    assert min(int(sample[0].min()) for sample in exact) == -100  # the clamp bites
    assert max_lsb(run_litert(exported, feeds), exact) == 0
    assert max_lsb(run_tflm(exported, feeds), exact) == 0


def test_softmax_within_the_stated_tolerance() -> None:
    ops, litert, tflm = written_ops(softmax_model(), per_channel=False)
    assert ops == {"FULLY_CONNECTED": 1, "SOFTMAX": 1}
    assert litert <= 1 and tflm <= 1


def test_activations_within_the_stated_tolerance() -> None:
    ops, litert, tflm = written_ops(activation_model())
    assert ops == {"CONV_2D": 1, "HARD_SWISH": 1, "LOGISTIC": 1, "TANH": 1}
    assert litert <= 1 and tflm <= 1


@pytest.mark.parametrize(("mode", "coordinate"), [("nearest", "asymmetric"), ("nearest", "half_pixel")])
def test_nearest_resize_is_bit_exact(mode: str, coordinate: str) -> None:
    ops, litert, tflm = written_ops(resize_model(mode, coordinate))
    assert ops == {"CONV_2D": 1, "RESIZE_NEAREST_NEIGHBOR": 1}
    assert (litert, tflm) == (0, 0)


def test_bilinear_resize_within_the_stated_tolerance() -> None:
    ops, litert, tflm = written_ops(resize_model("linear", "half_pixel"))
    assert ops == {"CONV_2D": 1, "RESIZE_BILINEAR": 1}
    assert litert <= 1 and tflm <= 1


@pytest.mark.parametrize("model", [conv_model, arithmetic_model, pooling_model])
def test_uint8_models_are_written_as_int8_with_uint8_io(model) -> None:
    """uint8 tensors become int8 (q − 128) inside the file, with a QUANTIZE at the uint8 input and output."""
    float_model = model()
    qdq = quantize(float_model, dtype="uint8")
    exported = export_tflite(qdq, PROFILE)
    assert [io.dtype for io in (*exported.inputs, *exported.outputs)] == ["uint8", "uint8"]
    assert exported.op_counts["QUANTIZE"] >= 2
    feeds = samples(float_model, 4, 2)
    exact = exact_outputs(qdq, feeds)
    assert max_lsb(run_litert(exported, feeds), exact) == max_lsb(run_tflm(exported, feeds), exact) == 0


# --- the file itself -------------------------------------------------------------------------------------------------


def test_the_file_is_deterministic_and_follows_the_schema() -> None:
    import tflite

    qdq = quantize(conv_model())
    first, second = export_tflite(qdq, PROFILE), export_tflite(qdq, PROFILE)
    assert first.content == second.content
    model = tflite.Model.GetRootAs(first.content, 0)
    assert tflite.Model.ModelBufferHasIdentifier(first.content, 0) and model.Version() == 3
    assert model.Buffers(0).DataLength() == 0  # the empty sentinel
    graph = model.Subgraphs(0)
    types = {graph.Tensors(i).Type() for i in range(graph.TensorsLength())}
    assert types <= {tflite.TensorType.INT8, tflite.TensorType.INT32}  # fully int8: no float tensor
    codes = {model.OperatorCodes(i).BuiltinCode(): model.OperatorCodes(i).Version() for i in range(3)}
    assert codes[tflite.BuiltinOperator.CONV_2D] == 3 and codes[tflite.BuiltinOperator.DEPTHWISE_CONV_2D] == 3
    axes = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
        if code in (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D):
            quantization = graph.Tensors(op.Inputs(1)).Quantization()
            axes[code] = quantization.QuantizedDimension()
            assert quantization.ScaleLength() == quantization.ZeroPointLength() > 1  # per-axis: a zp per scale
    assert axes == {tflite.BuiltinOperator.CONV_2D: 0, tflite.BuiltinOperator.DEPTHWISE_CONV_2D: 3}


def test_an_op_without_a_tflite_kernel_is_an_error_naming_the_node() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("LeakyRelu", ["c"], ["y"], name="leaky", alpha=0.1),
    ]
    model = build(
        nodes,
        [tensor("x", [1, 2, 4, 4])],
        [tensor("y", [1, 2, 4, 4])],
        [const("w", weights(2, 2, 1, 1)), const("b", weights(2))],
    )
    with pytest.raises(TfliteExportError, match="'leaky'"):
        export_tflite(quantize(model), PROFILE)


def test_profiles_without_tflite_rounding_are_refused() -> None:
    with pytest.raises(AutoptqError, match="tflite_double"):
        export_tflite(quantize(dense_model()), load_profile("qualcomm-htp"))


def test_a_wrong_fixed_output_is_refused() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["y"], name="sigmoid")]
    model = build(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 8])])
    data = samples(model, 8, 1)
    recipe = Recipe(activation_dtype="int8", calibration_samples=8, io_dtype="int8")  # no fixed output params
    qdq = static_qdq(model, recipe, Dataset(data, None, "test"), "full_int8").model
    with pytest.raises(TfliteExportError, match="LOGISTIC needs output scale"):
        export_tflite(qdq, PROFILE)


# --- the shipped example, end to end ---------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def example_variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`autoptq variants` of the shipped example for the two TFLite devices and one ONNX target."""
    folder = tmp_path_factory.mktemp("variants")
    for name in ("digits_cnn.onnx", "calib.npz", "val.npz"):
        shutil.copy2(EXAMPLES / name, folder / name)
    api.make_variants(
        folder / "digits_cnn.onnx",
        ["edgetpu", "mcu-cortex-m", "x86-vnni"],
        folder / "out",
        data=folder / "calib.npz",
        validation=folder / "val.npz",
    )
    return folder


def test_variants_write_model_tflite_beside_the_onnx_for_tflite_targets(example_variants: Path) -> None:
    out = example_variants / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    by_target = {v["target"]: v for v in manifest["variants"]}
    for target in ("edgetpu", "mcu-cortex-m"):
        content = (out / target / "model.tflite").read_bytes()
        entry = by_target[target]["device_file"]
        assert entry["path"] == f"{target}/model.tflite" and (out / target / "model.onnx").is_file()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest() and entry["size_bytes"] == len(content)
        assert by_target[target]["sha256"] == hashlib.sha256((out / target / "model.onnx").read_bytes()).hexdigest()
    assert by_target["edgetpu"]["device_file"]["next_step"] == "edgetpu_compiler model.tflite"
    # Flatten → Gemm: the weights' rows are permuted to NHWC order instead of a TRANSPOSE (which the Edge TPU lacks)
    assert by_target["edgetpu"]["device_file"]["op_counts"] == {
        "CONV_2D": 3,
        "FULLY_CONNECTED": 1,
        "PAD": 1,
        "RESHAPE": 1,
    }
    assert "next step: `edgetpu_compiler model.tflite`" in (out / "report.md").read_text()
    assert by_target["x86-vnni"]["device_file"] is None and not (out / "x86-vnni" / "model.tflite").exists()


def test_the_example_on_litert_keeps_float_accuracy(example_variants: Path) -> None:
    report = api.check(
        example_variants / "out" / "edgetpu" / "model.onnx",
        "edgetpu",
        example_variants / "digits_cnn.onnx",
        example_variants / "val.npz",
        tier="litert",
    )
    assert report.tier == "litert" and report.passed, report.failures
    assert report.accuracy is not None and report.accuracy.float - report.accuracy.emulated <= 0.01
    (agreement,) = [a for a in report.agreement if a.op is None]
    assert agreement.elements == 3600 and agreement.within_tolerance and agreement.bit_exact_fraction > 0.99
    per_op = {a.op: a for a in report.agreement if a.op is not None}
    # PAD and the NHWC flatten have no tensor in the exact tier: they are recomputed with the op that reads them.
    assert set(per_op) == {"CONV_2D", "PAD+CONV_2D", "RESHAPE+FULLY_CONNECTED"}
    assert per_op["CONV_2D"].max_abs_lsb == 0 and per_op["PAD+CONV_2D"].max_abs_lsb == 0
    assert per_op["RESHAPE+FULLY_CONNECTED"].max_abs_lsb <= 1


def test_tflm_runs_the_mcu_variant_and_the_ram_estimate_is_within_20_percent(example_variants: Path) -> None:
    quantized = example_variants / "out" / "mcu-cortex-m" / "model.onnx"
    reference, data = example_variants / "digits_cnn.onnx", example_variants / "val.npz"
    measured = api.check(quantized, "mcu-cortex-m", reference, data, tier="tflm")
    assert measured.passed and measured.agreement[0].max_abs_lsb == 0  # TFLM rounds as the exact tier: bit for bit
    assert measured.memory.ram_basis.startswith("tensor arena measured in TFLite Micro")
    estimated = api.check(quantized, "mcu-cortex-m", reference, data)  # exact tier: the arena is estimated
    assert estimated.memory.ram_basis.startswith("TFLM tensor arena estimated")
    ratio = estimated.memory.arena_bytes / measured.memory.arena_bytes
    assert 0.8 <= ratio <= 1.2, (estimated.memory.arena_bytes, measured.memory.arena_bytes)


def test_quantize_writes_the_tflite_beside_its_output(example_variants: Path, run_cli) -> None:
    folder = example_variants
    output = folder / "digits.mcu.onnx"
    code, out, _ = run_cli(
        [
            "quantize",
            folder / "digits_cnn.onnx",
            "-t",
            "mcu-cortex-m",
            "--data",
            folder / "calib.npz",
            "--val",
            folder / "val.npz",
            "-o",
            output,
        ]
    )
    assert code == 0 and output.is_file() and output.with_suffix(".tflite").is_file()
    assert "device file:" in out


def test_check_tier_litert_on_an_onnx_target_is_a_usage_error(example_variants: Path, run_cli) -> None:
    folder = example_variants
    code, _, err = run_cli(
        [
            "check",
            folder / "out" / "x86-vnni" / "model.onnx",
            "-t",
            "qualcomm-htp",
            "--reference",
            folder / "digits_cnn.onnx",
            "--data",
            folder / "val.npz",
            "--tier",
            "litert",
        ]
    )
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_without_the_extra_the_tiers_say_what_to_install(
    example_variants: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if LiteRT were not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    folder = example_variants
    code, _, err = run_cli(
        [
            "check",
            folder / "out" / "edgetpu" / "model.onnx",
            "-t",
            "edgetpu",
            "--reference",
            folder / "digits_cnn.onnx",
            "--data",
            folder / "val.npz",
            "--tier",
            "litert",
        ]
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "pip install 'autoptq[tflite]'" in line


# --- per op: each op of the file re-run by the exact tier on LiteRT's own inputs --------------------------------------


def per_op_rows(model: ModelProto, lowered: ModelProto | None = None, dtype: str = "int8") -> dict[str, object]:
    from autoptq.evaluate.emulators.tflite_runtime import run_litert_per_op

    qdq = quantize(model, per_channel=False, dtype=dtype)
    exported = export_tflite(qdq, PROFILE)
    lowered = lowered if lowered is not None else build_exact_model(qdq, PROFILE)
    _, rows = run_litert_per_op(exported, lowered, qdq, samples(model, 6, 2))
    return {row.op: row for row in rows}


def test_per_op_the_softmax_answers_only_for_its_own_rounding() -> None:
    """End to end LiteRT's softmax output is 5 LSB off (a FULLY_CONNECTED tie rounded once, amplified); on its own
    inputs the SOFTMAX is within 1 LSB, and the FULLY_CONNECTED's 1 LSB is its stated double rounding."""
    rows = per_op_rows(softmax_model(7))
    assert set(rows) == {"FULLY_CONNECTED", "SOFTMAX"}
    assert rows["FULLY_CONNECTED"].max_abs_lsb == 1 and rows["FULLY_CONNECTED"].tolerance_lsb == 1
    assert rows["SOFTMAX"].max_abs_lsb <= 1 and rows["SOFTMAX"].tolerance_lsb == 1


def test_per_op_pins_a_wrong_kernel_to_its_op_and_nowhere_else() -> None:
    """A deliberately wrong exact-tier kernel (the second convolution's output negated) shows at that op only: every
    later op reads LiteRT's own values, so nothing downstream inherits the error."""
    model = conv_model()
    qdq = quantize(model, per_channel=False)
    exported = export_tflite(qdq, PROFILE)
    lowered = build_exact_model(qdq, PROFILE)
    convs = [name for name, op in exported.tensor_ops.items() if op == "CONV_2D"]
    target = convs[1]
    producer = next(node for node in lowered.graph.node if target in node.output)
    producer.output[:] = [f"{target}/raw" if name == target else name for name in producer.output]
    lowered.graph.node.append(helper.make_node("Neg", [f"{target}/raw"], [target], name="wrong"))
    rows = per_op_rows(model, lowered)
    (failing,) = [op for op, row in rows.items() if not row.within_tolerance]
    assert "CONV_2D" in failing and rows[failing].output == target
    assert all(row.max_abs_lsb == 0 for row in per_op_rows(model).values())


def test_per_op_reads_uint8_device_tensors_written_as_int8() -> None:
    rows = per_op_rows(arithmetic_model(), dtype="uint8")
    assert rows and all(row.max_abs_lsb == 0 for row in rows.values())
