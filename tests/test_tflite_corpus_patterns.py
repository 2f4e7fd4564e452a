"""The export patterns that stopped the corpus CNNs short of a .tflite, each in a small model built here: run-time
shape arithmetic (YOLOv8's anchors), a ConvTranspose with its bias as an Add and a BatchNormalization after it
(PP-OCR's DB head), a graph input read by slices (YOLOX's Focus) and an output that is an Identity (Paddle). Each
is prepared as the pipeline does for the `tflite-int8` target, quantized, written and run in LiteRT against the
exact tier."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import ModelProto, TensorProto, helper

from autoptq import api
from autoptq.deploy.tflite_writer import TfliteExportError, export_tflite
from autoptq.devices.canonical import float_model_for
from autoptq.model.calibration import Dataset
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from tests.conftest import build, const, tensor
from tests.test_tflite_writer import PROFILE, exact_outputs, max_lsb, quantize, samples, weights

pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")

from autoptq.evaluate.emulators.tflite_runtime import run_litert


def step_note(prepared_steps: list, name: str) -> tuple[bool, str]:
    step = next(s for s in prepared_steps if s.name == name)
    return step.applied, step.note


def litert_vs_exact(qdq: ModelProto, feeds: list[dict[str, np.ndarray]]) -> tuple[dict[str, int], int]:
    exported = export_tflite(qdq, PROFILE, {k: v.shape for k, v in feeds[0].items()})
    return exported.op_counts, max_lsb(run_litert(exported, feeds), exact_outputs(qdq, feeds))


# --- run-time shape arithmetic on a static target --------------------------------------------------------------------


def anchors_model() -> ModelProto:
    """A dynamic [batch, 3, h, w] model whose output adds an index ramp computed from shapes at run time, after a
    Reshape whose shape is computed too: Shape → Gather → Concat → Reshape, then Shape → Gather → Range → Cast."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["c_shape"], name="c_shape"),
        helper.make_node("Gather", ["c_shape", "zero"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], name="flat_shape", axis=0),
        helper.make_node("Reshape", ["c", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Shape", ["flat"], ["flat_dims"], name="flat_dims"),
        helper.make_node("Gather", ["flat_dims", "one"], ["length"], name="length", axis=0),
        helper.make_node("Range", ["start", "length", "delta"], ["ramp"], name="ramp"),
        helper.make_node("Cast", ["ramp"], ["ramp_float"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ramp_float", "step"], ["offsets"], name="offsets"),
        helper.make_node("Add", ["flat", "offsets"], ["y"], name="anchors"),
    ]
    inits = [
        const("w", weights(4, 3, 3, 3)),
        const("b", weights(4)),
        const("zero", [0], np.int64),
        const("one", 1, np.int64),
        const("minus_one", [-1], np.int64),
        const("start", 0, np.int64),
        const("delta", 1, np.int64),
        const("step", 0.01),
    ]
    return build(nodes, [tensor("x", ["batch", 3, "h", "w"])], [tensor("y", ["batch", "n"])], inits)


def data_of(shape: list[int], count: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)], None, "test")


def test_shape_arithmetic_becomes_constants_for_a_static_target() -> None:
    """Bound from the data (batch 1, 6x8) as the API does, the float model for the static-shape target folds every
    shape computation (in two passes: the second Shape reads a Reshape whose shape the first pass folded), so the
    quantizer never sees the ramp and the file is written and bit-exact."""
    calib = data_of([1, 3, 6, 8], 16, 1)
    graph = api.bound(api.as_graph(anchors_model()), calib)
    prepared = prepare(float_model_for(graph, PROFILE), calib.take(PREPARATION_SAMPLES))

    applied, note = step_note(prepared.steps, "fold constant weight paths")
    assert applied, note
    for folded in ("2 Shape", "1 Range", "1 Cast", "1 Concat"):
        assert folded in note
    assert [n.op_type for n in prepared.model.graph.node] == ["Conv", "Reshape", "Add"]
    ops, lsb = litert_vs_exact(quantize(prepared.model), list(data_of([1, 3, 6, 8], 4, 2).samples))
    assert ops == {"ADD": 1, "CONV_2D": 1, "RESHAPE": 1, "TRANSPOSE": 1}
    assert lsb == 0


def test_without_static_shapes_the_ramp_is_quantized_and_refused() -> None:
    """The same model prepared as exported (open dims): the ramp stays a run-time computation, the quantizer puts a
    QuantizeLinear on it, and the writer names that node instead of writing an almost-right file."""
    calib = data_of([1, 3, 6, 8], 16, 1)
    prepared = prepare(anchors_model(), calib.take(PREPARATION_SAMPLES))
    assert "Range" in {n.op_type for n in prepared.model.graph.node}
    with pytest.raises(TfliteExportError, match="it quantizes a tensor that is not a float graph input"):
        litert_vs_exact(quantize(prepared.model, data=calib.samples), list(data_of([1, 3, 6, 8], 2, 2).samples))


# --- ConvTranspose + bias Add + BatchNormalization -------------------------------------------------------------------


def upsampling_head(group: int, bias_shape: list[int]) -> ModelProto:
    """Conv → ConvTranspose (k 2, s 2, no bias) → Add(bias) → BatchNormalization → Relu, as paddle2onnx writes DB."""
    rng = np.random.default_rng(3)
    channels_in, channels_out = 4, 6
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="tconv", strides=[2, 2], group=group),
        helper.make_node("Add", ["t", "bias"], ["tb"], name="bias_add"),
        helper.make_node("BatchNormalization", ["tb", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    inits = [
        const("w", weights(channels_in, 3, 1, 1)),
        const("b", weights(channels_in)),
        const("wt", weights(channels_in, channels_out // group, 2, 2)),
        const("bias", rng.standard_normal(bias_shape) * 0.2),
        const("gamma", rng.uniform(0.5, 2.0, channels_out)),
        const("beta", rng.standard_normal(channels_out) * 0.2),
        const("mean", rng.standard_normal(channels_out) * 0.3),
        const("var", rng.uniform(0.2, 2.0, channels_out)),
    ]
    return build(nodes, [tensor("x", [1, 3, 5, 6])], [tensor("y", [1, channels_out, 10, 12])], inits)


@pytest.mark.parametrize("group", [1, 2])
def test_bias_add_and_batchnorm_fold_into_the_conv_transpose(group: int) -> None:
    """ConvTranspose weights are [C_in, C_out/group, kh, kw]: the BatchNorm scale applies along axis 1 (per group).
    Each fold is a verified preparation step: a wrong axis would change the outputs and be skipped."""
    model = upsampling_head(group, [1, 6, 1, 1])
    data = Dataset(samples(model, 4, 1), None, "test")
    prepared = prepare(model, data)

    assert step_note(prepared.steps, "fold bias Add") == (True, "folded 1 bias Add into the convolution before it")
    assert step_note(prepared.steps, "fold BatchNormalization") == (
        True,
        "folded 1 BatchNormalization into 1 ConvTranspose",
    )
    assert [n.op_type for n in prepared.model.graph.node] == ["Conv", "ConvTranspose", "Relu"]


def test_an_add_that_does_not_broadcast_per_channel_is_not_folded() -> None:
    """A [W]-shaped constant broadcasts along the width, not the channels: it is not a bias."""
    model = upsampling_head(1, [12])
    prepared = prepare(model, Dataset(samples(model, 4, 1), None, "test"))
    assert not step_note(prepared.steps, "fold bias Add")[0]
    assert "Add" in [n.op_type for n in prepared.model.graph.node]


def test_the_folded_upsampling_head_is_written_as_transpose_conv() -> None:
    model = upsampling_head(1, [1, 6, 1, 1])
    prepared = prepare(model, Dataset(samples(model, 4, 1), None, "test")).model
    ops, lsb = litert_vs_exact(quantize(prepared), samples(model, 6, 2))
    assert ops == {"CONV_2D": 1, "TRANSPOSE_CONV": 1}  # the Relu is the output range (ORT drops its Q/DQ)
    assert lsb == 0  # TRANSPOSE_CONV: TFLite's integer kernel in the exact tier


# --- a graph input read by slices, an output that is an Identity -----------------------------------------------------


def focus_model() -> ModelProto:
    """YOLOX's Focus: four stride-2 slices of the input, concatenated on channels, then a Conv; the output is an
    Identity of the Conv (as Paddle exports end)."""
    nodes = []
    for index, (row, col) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        nodes += [
            helper.make_node("Slice", ["x", f"r{row}", "end", "axis2", "two"], [f"s{index}a"], name=f"rows{index}"),
            helper.make_node(
                "Slice", [f"s{index}a", f"r{col}", "end", "axis3", "two"], [f"s{index}"], name=f"c{index}"
            ),
        ]
    nodes += [
        helper.make_node("Concat", ["s0", "s1", "s2", "s3"], ["focus"], name="focus", axis=1),
        helper.make_node("Conv", ["focus", "w", "b"], ["c"], name="conv"),
        helper.make_node("Identity", ["c"], ["y"], name="identity"),
    ]
    inits = [
        const("r0", [0], np.int64),
        const("r1", [1], np.int64),
        const("end", [1 << 30], np.int64),
        const("axis2", [2], np.int64),
        const("axis3", [3], np.int64),
        const("two", [2], np.int64),
        const("w", weights(5, 12, 1, 1)),
        const("b", weights(5)),
    ]
    return build(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 5, 4, 4])], inits)


def test_a_graph_input_read_by_slices_is_quantized_for_integer_io() -> None:
    """onnxruntime quantizes data movement only after a quantized tensor; for integer I/O the quantizer forces it,
    so the input is int8 and the slices are STRIDED_SLICE on int8, bit-exact."""
    qdq = quantize(focus_model())
    assert [i.type.tensor_type.elem_type for i in qdq.graph.input] == [TensorProto.INT8]
    ops, lsb = litert_vs_exact(qdq, samples(focus_model(), 4, 2))
    assert ops["STRIDED_SLICE"] == 8 and ops["CONV_2D"] == 1
    assert lsb == 0
