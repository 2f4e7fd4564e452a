"""Each technique runs, honours every recipe knob, and returns the recipe it actually applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from autoptq.devices.profiles import FixedOutputParams, load_profile
from autoptq.errors import DataError
from autoptq.evaluate.metrics import sqnr_db
from autoptq.evaluate.runner import ModelRunner
from autoptq.model import zoo
from autoptq.model.calibration import Dataset
from autoptq.techniques import REGISTRY
from autoptq.techniques.common import QuantizationError, QuantizationResult
from autoptq.techniques.fp16 import FP16_MAX
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, tensor

X86 = load_profile("x86-vnni")
EDGETPU = load_profile("edgetpu")
GPU = load_profile("gpu-fp16")
HTP = load_profile("qualcomm-htp")


def dataset(model: ModelProto, count: int = 16, seed: int = 0, scale: float = 1.0, offset: float = 0.0) -> Dataset:
    rng = np.random.default_rng(seed)
    specs = [
        (v.name, [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim])
        for v in model.graph.input
    ]
    samples = [
        {name: (rng.standard_normal(dims) * scale + offset).astype(np.float32) for name, dims in specs}
        for _ in range(count)
    ]
    return Dataset(samples, None, "test")


def initializers(model: ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def ops(model: ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def weight_dequantizers(model: ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """int8 weight initializer name -> (quantized values, scale, zero point), for every DequantizeLinear of one."""
    inits = initializers(model)
    found = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            values = inits[node.input[0]]
            if values.dtype in (np.int8, np.uint8):
                found[node.input[0]] = (values, inits[node.input[1]], inits[node.input[2]])
    return found


def activation_quantizers(model: ModelProto) -> dict[str, tuple[float, np.ndarray]]:
    """Quantized activation -> (scale, zero point) of its QuantizeLinear."""
    inits = initializers(model)
    return {
        node.input[0]: (float(inits[node.input[1]]), inits[node.input[2]])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear"
    }


def fidelity(float_model: ModelProto, result: QuantizationResult, data: Dataset) -> float:
    reference = ModelRunner(float_model)
    candidate = ModelRunner(result.model, result.applied.integer_io)
    ref = np.concatenate([reference.run(s)[0].reshape(1, -1) for s in data.samples])
    got = np.concatenate([candidate.run(s)[0].reshape(1, -1) for s in data.samples])
    return sqnr_db(ref, got)


@pytest.fixture(scope="module")
def convnet() -> ModelProto:
    return zoo.small_convnet(size=16)


@pytest.fixture(scope="module")
def convnet_data(convnet: ModelProto) -> Dataset:
    return dataset(convnet)


@pytest.fixture(scope="module")
def conv_matmul() -> ModelProto:
    """Conv -> Relu -> Flatten -> MatMul: one op of each kind dynamic quantization handles."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "mw"], ["y"], name="fc"),
    ]
    inits = [
        const("cw", rng.standard_normal((4, 3, 3, 3)) * 0.3),
        const("cb", rng.standard_normal(4) * 0.1),
        const("mw", rng.standard_normal((256, 10)) * 0.1),
    ]
    return build(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 10])], inits)


# -- weight-only int8 -----------------------------------------------------------------------------------------------


def test_weight_only_quantizes_only_the_named_op_types(conv_matmul: ModelProto) -> None:
    original = conv_matmul.SerializeToString()
    result = REGISTRY["weight_only_int8"].quantize(conv_matmul, Recipe(op_types_to_quantize=["MatMul"]), None, X86)
    assert conv_matmul.SerializeToString() == original
    assert "MatMulInteger" in ops(result.model)
    assert "ConvInteger" not in ops(result.model)
    assert "Conv" in ops(result.model)
    assert initializers(result.model)["cw"].dtype == np.float32
    assert result.applied.technique == "weight_only_int8"
    assert result.applied.quantized_nodes == 1
    assert result.applied.recipe.op_types_to_quantize == ["MatMul"]

    conv_only = REGISTRY["weight_only_int8"].quantize(conv_matmul, Recipe(op_types_to_quantize=["Conv"]), None, X86)
    assert "ConvInteger" in ops(conv_only.model)
    assert "MatMulInteger" not in ops(conv_only.model)


def test_weight_only_refuses_op_types_the_model_lacks(conv_matmul: ModelProto) -> None:
    with pytest.raises(QuantizationError, match="Gemm"):
        REGISTRY["weight_only_int8"].quantize(conv_matmul, Recipe(op_types_to_quantize=["Gemm"]), None, X86)


def test_weight_only_excluded_node_stays_float(conv_matmul: ModelProto) -> None:
    recipe = Recipe(op_types_to_quantize=["MatMul", "Conv"], nodes_to_exclude=["fc"])
    result = REGISTRY["weight_only_int8"].quantize(conv_matmul, recipe, None, X86)
    assert "ConvInteger" in ops(result.model)
    assert "MatMulInteger" not in ops(result.model)
    assert initializers(result.model)["mw"].dtype == np.float32
    assert result.applied.excluded == {"fc": "excluded by the recipe"}


# -- full int8 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("uint8", np.uint8), ("int8", np.int8)])
def test_full_int8_activation_dtype(convnet: ModelProto, convnet_data: Dataset, dtype: str, numpy_dtype: type) -> None:
    original = convnet.SerializeToString()
    result = REGISTRY["full_int8"].quantize(convnet, Recipe(activation_dtype=dtype), convnet_data, X86)
    assert convnet.SerializeToString() == original
    activations = activation_quantizers(result.model)
    assert activations, "no activation was quantized"
    assert {zp.dtype for _, zp in activations.values()} == {np.dtype(numpy_dtype)}
    assert result.applied.technique == "full_int8"
    assert result.applied.recipe.activation_dtype == dtype
    assert result.applied.quantized_nodes >= 3
    assert fidelity(convnet, result, convnet_data) > 20


def test_full_int8_per_channel_shows_in_the_weight_scales(convnet: ModelProto, convnet_data: Dataset) -> None:
    per_channel = REGISTRY["full_int8"].quantize(convnet, Recipe(per_channel=True), convnet_data, X86)
    per_tensor = REGISTRY["full_int8"].quantize(convnet, Recipe(per_channel=False), convnet_data, X86)
    conv_weights = {n.input[1] for n in convnet.graph.node if n.op_type == "Conv"}
    channels = {
        n.input[1]: initializers(convnet)[n.input[1]].shape[0] for n in convnet.graph.node if n.op_type == "Conv"
    }
    found_channel = {k.removesuffix("_quantized"): v for k, v in weight_dequantizers(per_channel.model).items()}
    found_tensor = {k.removesuffix("_quantized"): v for k, v in weight_dequantizers(per_tensor.model).items()}
    assert conv_weights <= set(found_channel) and conv_weights <= set(found_tensor)
    for name in conv_weights:
        assert found_channel[name][1].shape == (channels[name],)
        assert found_tensor[name][1].size == 1


def test_full_int8_symmetric_weights_have_zero_point_zero(convnet: ModelProto, convnet_data: Dataset) -> None:
    for per_channel in (True, False):
        result = REGISTRY["full_int8"].quantize(
            convnet, Recipe(weight_symmetric=True, per_channel=per_channel), convnet_data, X86
        )
        weights = weight_dequantizers(result.model)
        assert weights
        for values, _, zero_point in weights.values():
            assert values.dtype == np.int8
            assert np.all(zero_point == 0)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_full_int8_each_calibration_method_runs(convnet: ModelProto, convnet_data: Dataset, method: str) -> None:
    result = REGISTRY["full_int8"].quantize(convnet, Recipe(calibration_method=method), convnet_data, X86)
    assert f"({method})" in " ".join(result.applied.notes)
    assert result.applied.recipe.calibration_method == method
    # Entropy (KL) clips the long tails of random-input activations, the logits included, so it trades SQNR here;
    # on the real example it stays close (see test_entropy_calibration_differs_from_minmax_on_real_data).
    assert fidelity(convnet, result, convnet_data) > (5 if method == "entropy" else 15)


def test_entropy_calibration_differs_from_minmax_on_real_data() -> None:
    from autoptq.model.calibration import load_dataset
    from autoptq.model.graph import load_model

    examples = Path(__file__).resolve().parents[1] / "examples"
    graph = load_model(examples / "digits_cnn.onnx")
    data = load_dataset(examples / "calib.npz", graph)
    ranges = {
        method: activation_quantizers(
            REGISTRY["full_int8"].quantize(graph.model, Recipe(calibration_method=method), data, X86).model
        )
        for method in ("minmax", "entropy")
    }
    scales = {m: sorted(scale for scale, _ in q.values()) for m, q in ranges.items()}
    # A proper KL search picks narrower ranges than min/max on some tensors (onnxruntime's own 128/128 bins could
    # only ever return min/max).
    assert scales["entropy"] != scales["minmax"]
    assert sum(scales["entropy"]) < sum(scales["minmax"])


def test_full_int8_percentile_clips_the_range(convnet: ModelProto, convnet_data: Dataset) -> None:
    minmax = activation_quantizers(REGISTRY["full_int8"].quantize(convnet, Recipe(), convnet_data, X86).model)
    clipped = activation_quantizers(
        REGISTRY["full_int8"]
        .quantize(convnet, Recipe(calibration_method="percentile", calibration_percentile=90.0), convnet_data, X86)
        .model
    )
    assert clipped["input"][0] < 0.7 * minmax["input"][0]


def test_full_int8_calibration_samples_limit(convnet: ModelProto, convnet_data: Dataset) -> None:
    result = REGISTRY["full_int8"].quantize(convnet, Recipe(calibration_samples=3), convnet_data, X86)
    assert "calibrated on 3 samples (minmax)" in result.applied.notes


def test_full_int8_reduce_range_uses_7_bit_weights(convnet: ModelProto, convnet_data: Dataset) -> None:
    full = weight_dequantizers(
        REGISTRY["full_int8"].quantize(convnet, Recipe(per_channel=False), convnet_data, X86).model
    )
    reduced = weight_dequantizers(
        REGISTRY["full_int8"].quantize(convnet, Recipe(per_channel=False, reduce_range=True), convnet_data, X86).model
    )
    assert max(int(np.abs(v.astype(np.int32)).max()) for v, _, _ in full.values()) == 127
    assert max(int(np.abs(v.astype(np.int32)).max()) for v, _, _ in reduced.values()) <= 64


def test_full_int8_excluded_node_stays_float(convnet: ModelProto, convnet_data: Dataset) -> None:
    result = REGISTRY["full_int8"].quantize(convnet, Recipe(nodes_to_exclude=["logits"]), convnet_data, X86)
    logits = next(n for n in result.model.graph.node if n.name == "logits")
    inits = initializers(result.model)
    assert logits.op_type == "Gemm"
    assert inits[logits.input[1]].dtype == np.float32, "the excluded Gemm's weight must stay a float initializer"
    assert inits[logits.input[2]].dtype == np.float32
    producers = {out: n for n in result.model.graph.node for out in n.output}
    assert "logits_out" not in producers or producers["logits_out"].op_type != "DequantizeLinear"
    assert result.applied.excluded == {"logits": "excluded by the recipe"}
    quantized = REGISTRY["full_int8"].quantize(convnet, Recipe(), convnet_data, X86)
    assert result.applied.quantized_nodes < quantized.applied.quantized_nodes


def test_full_int8_needs_data(convnet: ModelProto) -> None:
    with pytest.raises(DataError, match="representative data"):
        REGISTRY["full_int8"].quantize(convnet, Recipe(), None, X86)


@pytest.fixture(scope="module")
def mobilenet() -> ModelProto:
    return zoo.mobilenet_style(size=32, width=8, blocks=2)


@pytest.mark.parametrize(("dtype", "zero_point"), [("int8", -128), ("uint8", 0)])
def test_fixed_softmax_output_quantization(mobilenet: ModelProto, dtype: str, zero_point: int) -> None:
    recipe = Recipe(
        activation_dtype=dtype, fixed_output_params={"Softmax": FixedOutputParams(scale=1 / 256, zero_point=-128)}
    )
    result = REGISTRY["full_int8"].quantize(mobilenet, recipe, dataset(mobilenet), EDGETPU)
    softmax = next(n for n in result.model.graph.node if n.op_type == "Softmax")
    quant = next(
        n for n in result.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0]
    )
    inits = initializers(result.model)
    assert float(inits[quant.input[1]]) == 1 / 256
    assert inits[quant.input[2]].dtype == np.dtype(dtype)
    assert int(inits[quant.input[2]]) == zero_point
    assert any("fixed output quantization" in note for note in result.applied.notes)


def test_integer_io_for_the_edgetpu(mobilenet: ModelProto) -> None:
    data = dataset(mobilenet, count=24)
    recipe = Recipe(
        activation_dtype="int8",
        io_dtype="int8",
        fixed_output_params={"Softmax": FixedOutputParams(scale=1 / 256, zero_point=-128)},
    )
    result = REGISTRY["full_int8"].quantize(mobilenet, recipe, data, EDGETPU)
    assert [i.type.tensor_type.elem_type for i in result.model.graph.input] == [TensorProto.INT8]
    assert [o.type.tensor_type.elem_type for o in result.model.graph.output] == [TensorProto.INT8]
    io = {item.name: item for item in result.applied.integer_io}
    assert set(io) == {"input", "probs_out"}
    assert io["probs_out"].dtype == "int8"
    assert io["probs_out"].scale == 1 / 256 and io["probs_out"].zero_point == -128
    assert io["input"].dtype == "int8" and io["input"].scale > 0 and -128 <= io["input"].zero_point <= 127
    # The boundary QuantizeLinear/DequantizeLinear are gone: the model takes and returns integers.
    assert all(n.input[0] != "input" for n in result.model.graph.node if n.op_type == "QuantizeLinear")
    runner = ModelRunner(result.model, result.applied.integer_io)
    assert runner.session.get_inputs()[0].type == "tensor(int8)"
    float_runner = ModelRunner(mobilenet)
    for sample in data.samples[:8]:
        got, want = runner.run(sample)[0], float_runner.run(sample)[0]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=3 / 256)
    assert fidelity(mobilenet, result, data) > 25


# -- fp16 -----------------------------------------------------------------------------------------------------------


def _types(model: ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def test_fp16_converts_and_respects_the_block_list(mobilenet: ModelProto) -> None:
    data = dataset(mobilenet, count=4)
    original = mobilenet.SerializeToString()
    result = REGISTRY["fp16"].quantize(mobilenet, Recipe(fp16_op_block_list=["Softmax"]), data, GPU)
    assert mobilenet.SerializeToString() == original
    types = _types(result.model)
    softmax = next(n for n in result.model.graph.node if n.op_type == "Softmax")
    assert types[softmax.input[0]] == TensorProto.FLOAT
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert types[conv.input[1]] == TensorProto.FLOAT16
    # The GPU runs Softmax in fp16: the recipe, not the device, keeps it in fp32.
    assert result.applied.excluded == {"probs": "op type kept in fp32 by the recipe (precision-sensitive)"}
    # Float I/O is kept.
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert fidelity(mobilenet, result, data) > 40

    unblocked = REGISTRY["fp16"].quantize(mobilenet, Recipe(), data, GPU)
    softmax = next(n for n in unblocked.model.graph.node if n.op_type == "Softmax")
    assert _types(unblocked.model)[softmax.input[0]] == TensorProto.FLOAT16
    assert unblocked.applied.excluded == {}


def _overflowing_model() -> ModelProto:
    """MatMul with large weights (intermediate ~1e5, above the fp16 range), then a division back to ~10."""
    nodes = [
        helper.make_node("MatMul", ["x", "big_w"], ["big"], name="big_matmul"),
        helper.make_node("Div", ["big", "divisor"], ["y"], name="shrink"),
    ]
    inits = [const("big_w", np.full((4, 4), 3.0e4)), const("divisor", 1.0e4)]
    return build(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])], inits)


def test_fp16_overflow_guard_keeps_the_overflowing_node_in_fp32() -> None:
    model = _overflowing_model()
    data = dataset(model, count=4, scale=0.1, offset=1.5)
    result = REGISTRY["fp16"].quantize(model, Recipe(), data, GPU)
    assert "big_matmul" in result.applied.excluded
    reason = result.applied.excluded["big_matmul"]
    largest = max(float(np.abs(s["x"].sum(axis=1) * 3.0e4).max()) for s in data.samples)
    assert "'big'" in reason and f"{largest:.4g}" in reason
    assert f"{FP16_MAX:g}" in reason
    # Evaluated without onnxruntime's CPU cast elimination, as an fp16 device computes it: no inf may appear.
    evaluator = ReferenceEvaluator(result.model)
    reference = ModelRunner(model)
    for sample in data.samples:
        (got,) = evaluator.run(None, sample)
        assert np.all(np.isfinite(got)), "the overflowing activation reached an fp16 tensor"
        np.testing.assert_allclose(got, reference.run(sample)[0], rtol=2e-3)


def test_fp16_keeps_weights_beyond_the_fp16_range_in_fp32() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "huge"], ["scaled"], name="scale_up"),
        helper.make_node("Mul", ["scaled", "tiny"], ["y"], name="scale_down"),
    ]
    model = build(
        nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])], [const("huge", [1.0e5] * 4), const("tiny", 2.0**-16)]
    )
    result = REGISTRY["fp16"].quantize(model, Recipe(), None, GPU)
    assert "scale_up" in result.applied.excluded
    assert "'huge'" in result.applied.excluded["scale_up"] and "1e+05" in result.applied.excluded["scale_up"]
    assert any("weights only" in note for note in result.applied.notes)
    inits = {i.name: i for i in result.model.graph.initializer}
    assert inits["huge"].data_type == TensorProto.FLOAT
    assert float(numpy_helper.to_array(inits["huge"]).max()) == 1.0e5
    sample = {"x": np.full((1, 4), 0.5, np.float32)}
    np.testing.assert_allclose(ModelRunner(result.model).run(sample)[0], 0.5e5 * 2.0**-16, rtol=1e-3)


# -- int16x8 --------------------------------------------------------------------------------------------------------


def test_int16x8_on_qualcomm_htp(convnet: ModelProto, convnet_data: Dataset) -> None:
    result = REGISTRY["int16x8"].quantize(convnet, Recipe(activation_dtype="uint16"), convnet_data, HTP)
    activations = activation_quantizers(result.model)
    assert activations
    assert {zp.dtype for _, zp in activations.values()} == {np.dtype(np.uint16)}
    assert {v.dtype for v, _, _ in weight_dequantizers(result.model).values()} == {np.dtype(np.int8)}
    assert result.applied.technique == "int16x8"
    assert fidelity(convnet, result, convnet_data) > 35


def test_int16x8_forces_16_bit_activations(convnet: ModelProto, convnet_data: Dataset) -> None:
    result = REGISTRY["int16x8"].quantize(convnet, Recipe(activation_dtype="uint8"), convnet_data, HTP)
    assert result.applied.recipe.activation_dtype == "int16"
    assert {zp.dtype for _, zp in activation_quantizers(result.model).values()} == {np.dtype(np.int16)}


def test_int16x8_refuses_a_profile_without_int16(convnet: ModelProto, convnet_data: Dataset) -> None:
    with pytest.raises(QuantizationError, match="16-bit"):
        REGISTRY["int16x8"].quantize(convnet, Recipe(), convnet_data, X86)
    with pytest.raises(QuantizationError):
        REGISTRY["int16x8"].quantize(convnet, Recipe(), convnet_data, EDGETPU)


def test_fp16_guard_covers_large_graph_inputs() -> None:
    nodes = [helper.make_node("Div", ["x", "divisor"], ["y"], name="shrink")]
    model = build(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])], [const("divisor", 1.0e3)])
    data = Dataset([{"x": np.full((1, 4), 1.0e5, np.float32)}], None, "test")
    result = REGISTRY["fp16"].quantize(model, Recipe(), data, GPU)
    assert "input 'x' reaches 1e+05" in result.applied.excluded["shrink"]
    (got,) = ReferenceEvaluator(result.model).run(None, data.samples[0])
    np.testing.assert_allclose(got, 100.0, rtol=1e-6)


def test_fp16_reports_the_converters_own_block_list_whatever_the_recipe() -> None:
    nodes = [
        helper.make_node("Max", ["x", "floor"], ["m"], name="clamp"),
        helper.make_node("Softmax", ["m"], ["y"], name="probs", axis=-1),
    ]
    model = build(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])], [const("floor", np.zeros(4))])
    for block_list in ([], ["Softmax"]):
        result = REGISTRY["fp16"].quantize(model, Recipe(fp16_op_block_list=block_list), None, GPU)
        assert result.applied.excluded["clamp"] == "onnxruntime's fp16 converter keeps this op type in fp32"
        assert _types(result.model)["floor"] == TensorProto.FLOAT
        assert ("probs" in result.applied.excluded) == bool(block_list)


@pytest.mark.parametrize(
    ("technique", "recipe", "profile"),
    [
        ("weight_only_int8", Recipe(op_types_to_quantize=["Conv", "Gemm"]), X86),
        ("full_int8", Recipe(activation_dtype="int8", io_dtype="int8"), EDGETPU),
        ("fp16", Recipe(), GPU),
        ("fp16", Recipe(fp16_op_block_list=["Gemm"]), GPU),
        ("int16x8", Recipe(), HTP),
    ],
)
def test_every_technique_writes_a_valid_onnx_model(
    convnet: ModelProto, convnet_data: Dataset, technique: str, recipe: Recipe, profile: object
) -> None:
    result = REGISTRY[technique].quantize(convnet, recipe, convnet_data, profile)
    onnx.checker.check_model(result.model, full_check=True)  # includes: nodes topologically sorted
    assert result.applied.technique == technique
    assert result.applied.recipe.model_dump(exclude={"activation_dtype"}) == recipe.model_dump(
        exclude={"activation_dtype"}
    )


def test_integer_io_keeps_a_float_output_when_its_producer_is_excluded(
    convnet: ModelProto, convnet_data: Dataset
) -> None:
    recipe = Recipe(activation_dtype="int8", io_dtype="int8", nodes_to_exclude=["logits"])
    result = REGISTRY["full_int8"].quantize(convnet, recipe, convnet_data, EDGETPU)
    assert [io.name for io in result.applied.integer_io] == ["input"]
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT8
    assert result.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "output 'logits_out' stays float: it is not produced by a DequantizeLinear" in result.applied.notes
    assert fidelity(convnet, result, convnet_data) > 20


def test_the_fp16_search_offers_the_precision_sensitive_ops_in_fp32(mobilenet: ModelProto) -> None:
    """The fp16 block-list knob: the accuracy loop's fp16 point beyond the plan keeps Softmax (and the other
    range-sensitive ops present) in fp32; a model without such ops has no second point."""
    from autoptq.model.graph import load_model

    graph = load_model(mobilenet)
    (point,) = REGISTRY["fp16"].search_space(Recipe(), GPU, graph, None)
    label, recipe = point
    assert recipe.fp16_op_block_list == ["Softmax"] and "Softmax kept in fp32" in label
    result = REGISTRY["fp16"].quantize(mobilenet, recipe, dataset(mobilenet, count=4), GPU)
    assert "op type kept in fp32 by the recipe" in result.applied.excluded["probs"]
    convnet = load_model(zoo.small_convnet())
    assert REGISTRY["fp16"].search_space(Recipe(), GPU, convnet, None) == []
