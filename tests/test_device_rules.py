"""autoptq.devices.device_rules: a device-conformant QDQ model passes; each rule broken on purpose is reported at
the right node; the per-op table and parameter memory of the quantized graph."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from conftest import build, const, save, tensor
from onnx import ModelProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from autoptq.decide.planner import device_conformant_recipe
from autoptq.devices.device_rules import RULES, DeviceRulesResult, check_device_rules
from autoptq.devices.profiles import HardwareProfile, load_profile, shipped_profile_names
from autoptq.model import zoo
from autoptq.model.calibration import synthetic_dataset
from autoptq.model.graph import load_model
from autoptq.model.ortio import quiet
from autoptq.report.text import render_device_rules
from autoptq.techniques.common import DatasetReader
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe


def quantize(model: ModelProto, target: str = "edgetpu", **changes: object) -> ModelProto:
    """`model` quantized with the recipe conformant to `target`, with `changes` applied to that recipe."""
    graph = load_model(model)
    data = synthetic_dataset(graph, 16)
    recipe = device_conformant_recipe(Recipe(activation_dtype="int8"), "full_int8", load_profile(target), graph, data)
    return static_qdq(model, recipe.model_copy(update=changes), data, "full_int8").model


def audit(model: ModelProto, target: str | HardwareProfile = "edgetpu") -> DeviceRulesResult:
    return check_device_rules(model, load_profile(target) if isinstance(target, str) else target)


def violated(result: DeviceRulesResult, rule: str) -> set[str]:
    """Names of the nodes that break `rule`."""
    return {v.node for v in result.violations if v.rule == rule}


def copy(model: ModelProto) -> ModelProto:
    return ModelProto.FromString(model.SerializeToString())


@cache
def mobilenet_qdq() -> ModelProto:
    return quantize(zoo.mobilenet_style())


def concat_model() -> ModelProto:
    """Two convolutions of very different output ranges, concatenated."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w_small"], ["small"], name="conv_small", pads=[1] * 4),
        helper.make_node("Conv", ["input", "w_large"], ["large"], name="conv_large", pads=[1] * 4),
        helper.make_node("Concat", ["small", "large"], ["output"], name="concat", axis=1),
    ]
    weights = [
        const("w_small", rng.standard_normal((4, 3, 3, 3)) * 0.05),
        const("w_large", rng.standard_normal((4, 3, 3, 3)) * 3.0),
    ]
    return build(nodes, [tensor("input", [1, 3, 8, 8])], [tensor("output", [1, 8, 8, 8])], weights)


def sigmoid_tanh_model() -> ModelProto:
    """A convolution feeding a Sigmoid and a Tanh whose outputs are added."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
        helper.make_node("Tanh", ["c"], ["t"], name="tanh"),
        helper.make_node("Add", ["s", "t"], ["output"], name="add"),
    ]
    weights = [const("w", rng.standard_normal((4, 3, 3, 3)) * 0.5)]
    return build(nodes, [tensor("input", [1, 3, 8, 8])], [tensor("output", [1, 4, 8, 8])], weights)


def channel_scale_model() -> ModelProto:
    """A convolution whose output is multiplied by a constant per-channel scale."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Mul", ["c", "channel_scale"], ["output"], name="scale_mul"),
    ]
    weights = [
        const("w", rng.standard_normal((4, 3, 3, 3)) * 0.3),
        const("channel_scale", np.array([0.5, 1.0, 2.0, 4.0]).reshape(1, 4, 1, 1)),
    ]
    return build(nodes, [tensor("input", [1, 3, 8, 8])], [tensor("output", [1, 4, 8, 8])], weights)


def with_weight_granularity(profile: HardwareProfile, granularity: list[str]) -> HardwareProfile:
    rules = profile.quantization
    weights = rules.weights.model_copy(update={"granularity": granularity})
    return profile.model_copy(update={"quantization": rules.model_copy(update={"weights": weights})})


# --- a conformant model passes ----------------------------------------------------------------------


def test_conformant_mobilenet_passes_on_edgetpu_with_every_op_mapped() -> None:
    result = audit(mobilenet_qdq())
    assert result.passed and result.violations == []
    assert {row.status for row in result.op_summary} == {"Mapped to edgetpu"}
    quantized_counts = {row.operator: row.count for row in result.op_summary}
    float_counts = Counter(n.op_type for n in load_model(zoo.mobilenet_style()).compute_nodes())
    # onnxruntime folds Clip(0, 6) into the producer's output range, as the converter fuses RELU6 into CONV_2D.
    assert quantized_counts == {op: count for op, count in float_counts.items() if op != "Clip"}
    assert result.coverage is not None and result.coverage.compatible and result.coverage.first_cut is None


def test_rules_applying_to_edgetpu_follow_its_profile() -> None:
    scopes = {s.rule: s for s in audit(mobilenet_qdq()).rules}
    assert list(scopes) == list(RULES)
    assert not scopes["activation_symmetric"].applies
    assert scopes["activation_symmetric"].basis == "quantization.activations.symmetric: false"
    assert all(scopes[r].applies for r in ("integer_compute", "bias", "fixed_output", "rank"))
    assert not scopes["same_scale"].applies  # it requantizes (QUANTIZE int8 -> int8)


def test_conformant_small_convnet_passes_on_every_shipped_profile() -> None:
    for target in shipped_profile_names():
        result = audit(quantize(zoo.small_convnet(), target), target)
        assert result.passed, (target, result.violations)


def test_float_io_shows_the_boundary_quantize_on_device_and_dequantize_on_the_host() -> None:
    result = audit(quantize(zoo.mobilenet_style(), io_dtype="float32"))
    rows = {row.operator: row.status for row in result.op_summary}
    assert result.passed
    assert rows["QuantizeLinear"] == "Mapped to edgetpu"
    assert rows["DequantizeLinear"] == "Operation is working on an unsupported data type"
    assert result.coverage is not None and result.coverage.first_cut is not None
    assert result.coverage.first_cut.op_type == "DequantizeLinear"  # the last op: everything else is on the device


def test_parameter_memory_counts_int8_weights_and_int32_biases() -> None:
    graph = load_model(zoo.mobilenet_style())
    expected = 0
    for node in graph.nodes():
        if node.op_type in ("Conv", "Gemm"):
            expected += graph.tensors[node.inputs[1]].numel() or 0  # int8 weights: 1 byte each
            expected += 4 * (graph.tensors[node.inputs[2]].numel() or 0)  # int32 biases: 4 bytes each
    result = audit(mobilenet_qdq())
    assert result.on_chip_param_bytes == expected
    assert result.streamed_param_bytes == 0
    assert result.parameter_cache_bytes == 6_500_000


def test_parameters_beyond_the_cache_are_streamed() -> None:
    edgetpu = load_profile("edgetpu")
    small = edgetpu.model_copy(update={"memory": edgetpu.memory.model_copy(update={"parameter_cache_bytes": 1000})})
    result = audit(mobilenet_qdq(), small)
    total = audit(mobilenet_qdq()).on_chip_param_bytes
    assert (result.on_chip_param_bytes, result.streamed_param_bytes) == (1000, total - 1000)


# --- each rule broken on purpose --------------------------------------------------------------------


def test_asymmetric_weights_break_weight_symmetric() -> None:
    # onnxruntime keeps per-channel int8 weights symmetric whatever WeightSymmetric says: per tensor shows it.
    result = audit(quantize(zoo.small_convnet(), weight_symmetric=False, per_channel=False))
    assert violated(result, "weight_symmetric") == {"conv3", "conv8", "logits"}
    detail = next(v.detail for v in result.violations if v.node == "conv3")
    assert "zero point" in detail and "symmetric int8 weights need 0" in detail


def test_int16_activations_break_activation_dtype_on_edgetpu() -> None:
    result = audit(quantize(zoo.small_convnet(), activation_dtype="int16"))
    assert "conv3" in violated(result, "activation_dtype")
    assert any("is int16" in v.detail for v in result.violations)


def test_uint8_activations_break_activation_dtype_where_int8_is_required() -> None:
    result = audit(quantize(zoo.small_convnet(), "mcu-cortex-m", activation_dtype="uint8"), "mcu-cortex-m")
    assert violated(result, "activation_dtype") >= {"conv3", "maxpool5", "logits"}
    assert all("must be int8" in v.detail for v in result.violations if v.rule == "activation_dtype")


def test_softmax_without_the_fixed_output_override_breaks_fixed_output() -> None:
    result = audit(quantize(zoo.mobilenet_style(), fixed_output_params={}))
    assert violated(result, "fixed_output") == {"probs"}
    detail = next(v.detail for v in result.violations if v.rule == "fixed_output")
    assert "scale 1/256, zero point -128" in detail


def test_sigmoid_and_tanh_at_their_fixed_outputs_pass_and_break_without_them() -> None:
    assert audit(quantize(sigmoid_tanh_model())).passed
    # uint8 tensors carry the same reals with the zero point shifted by 128.
    assert audit(quantize(sigmoid_tanh_model(), activation_dtype="uint8")).passed
    result = audit(quantize(sigmoid_tanh_model(), fixed_output_params={}))
    assert violated(result, "fixed_output") == {"sigmoid", "tanh"}
    assert any("Tanh outputs at scale 1/128, zero point 0" in v.detail for v in result.violations)


def test_per_channel_weights_where_the_profile_allows_per_tensor_only() -> None:
    per_tensor_only = with_weight_granularity(load_profile("edgetpu"), ["per_tensor"])
    result = audit(quantize(zoo.small_convnet(), per_channel=True), per_tensor_only)
    assert violated(result, "weight_granularity") == {"conv3", "conv8", "logits"}
    assert audit(quantize(zoo.small_convnet(), per_channel=False), per_tensor_only).passed


def test_per_channel_scales_on_an_op_without_per_axis_weights(tmp_path: Path) -> None:
    model = channel_scale_model()
    target = tmp_path / "quantized.onnx"
    data = synthetic_dataset(load_model(model), 8)
    with quiet():
        quantize_static(
            str(save(model, tmp_path)),
            str(target),
            DatasetReader(data),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True, "TensorQuantOverrides": {"channel_scale": [{"axis": 1}]}},
        )
    result = audit(onnx.load(str(target)))
    assert violated(result, "weight_granularity") == {"scale_mul"}
    assert (
        "allowed only on the weights of BatchNormalization, Conv, ConvTranspose, Gemm, MatMul"
        in result.violations[0].detail
    )


def test_a_float_node_between_qdq_breaks_integer_compute_and_cuts_the_graph() -> None:
    result = audit(quantize(zoo.small_convnet(), nodes_to_exclude=["conv8"]))
    # onnxruntime leaves the Relu after the excluded Conv in float too.
    assert violated(result, "integer_compute") == {"conv8", "relu9"}
    coverage = result.coverage
    assert coverage is not None and coverage.first_cut is not None and coverage.first_cut.node == "conv8"
    statuses = {n.name: n.status for n in coverage.nodes}
    assert statuses["conv8"] == statuses["relu9"] == "unsupported_dtype"
    assert statuses["logits"] == "after_cut"


def test_a_float_node_is_no_violation_where_the_device_runs_float() -> None:
    result = audit(quantize(zoo.small_convnet(), "gpu-fp16", nodes_to_exclude=["conv8"]), "gpu-fp16")
    assert "integer_compute" not in {v.rule for v in result.violations}
    assert {row.status for row in result.op_summary} == {"Mapped to gpu-fp16"}


def test_an_unquantized_model_breaks_integer_compute_everywhere_on_edgetpu() -> None:
    result = audit(zoo.small_convnet())
    assert violated(result, "integer_compute") == {n.name for n in load_model(zoo.small_convnet()).compute_nodes()}
    assert {row.status for row in result.op_summary} == {"Operation is working on an unsupported data type"}
    assert result.on_chip_param_bytes == 0


def test_a_bias_on_the_wrong_scale_breaks_bias() -> None:
    model = copy(mobilenet_qdq())
    producers = {out: node for node in model.graph.node for out in node.output}
    conv = next(node for node in model.graph.node if node.name == "conv3")
    scale_name = producers[conv.input[2]].input[1]
    scale = next(init for init in model.graph.initializer if init.name == scale_name)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale_name))
    result = audit(model)
    assert violated(result, "bias") == {"conv3"}
    assert "input scale" in result.violations[0].detail and "weight scale" in result.violations[0].detail


def test_concat_of_differently_scaled_inputs_breaks_same_scale_where_the_device_cannot_requantize() -> None:
    edgetpu = load_profile("edgetpu")
    no_requantize = edgetpu.model_copy(update={"ops": {k: v for k, v in edgetpu.ops.items() if k != "QuantizeLinear"}})
    # The join is quantized here (on a device with a host it would otherwise stay float, see test_output_joins).
    result = audit(quantize(concat_model(), float_output_joins=False), no_requantize)
    assert violated(result, "same_scale") == {"concat"}
    assert "Concat keeps one scale and zero point" in result.violations[0].detail


def test_concat_of_differently_scaled_inputs_is_requantized_on_the_edge_tpu() -> None:
    # The converter (and autoptq's TFLite writer) puts a QUANTIZE int8 -> int8 before the input on another scale.
    result = audit(quantize(concat_model(), float_output_joins=False))
    assert not violated(result, "same_scale")
    scope = next(s for s in result.rules if s.rule == "same_scale")
    assert not scope.applies and "QUANTIZE requantizes" in scope.basis


def test_same_scale_ops_from_onnxruntime_keep_one_scale() -> None:
    # MaxPool and Flatten get their input's parameters from onnxruntime: no same_scale violation.
    assert not violated(audit(quantize(zoo.small_convnet())), "same_scale")


def test_dynamic_shapes_break_static_shapes() -> None:
    result = audit(quantize(zoo.mobilenet_style(batch="N")))
    assert "conv3" in violated(result, "static_shapes")
    assert "needs static shapes" in next(v.detail for v in result.violations if v.rule == "static_shapes")


def test_more_than_three_dimensions_larger_than_one_break_rank() -> None:
    result = audit(quantize(zoo.mobilenet_style(batch=2)))
    assert "conv3" in violated(result, "rank")
    assert "has 4 dimensions larger than 1; edgetpu allows 3" in result.violations[0].detail


def test_asymmetric_activations_break_activation_symmetric_where_the_profile_requires_it() -> None:
    scopes = {s.rule: s.applies for s in audit(mobilenet_qdq(), "gpu-fp16").rules}
    assert scopes["activation_symmetric"] and not scopes["integer_compute"] and not scopes["bias"]
    result = audit(quantize(zoo.small_convnet(), "gpu-fp16", activation_symmetric=False), "gpu-fp16")
    assert "conv3" in violated(result, "activation_symmetric")


# --- rendering --------------------------------------------------------------------------------------


def test_render_device_rules_prints_the_compiler_style_table_and_violations() -> None:
    text = render_device_rules(audit(quantize(zoo.small_convnet(), nodes_to_exclude=["conv8"])))
    for expected in (
        "Device rules: FAILED (2 violations)",
        "Operator",
        "Count",
        "Status",
        "Mapped to edgetpu",
        "Operation is working on an unsupported data type",
        "On-chip memory used for caching model parameters",
        "Off-chip memory used for streaming uncached model parameters: 0 B",
        "integer_compute",
        "conv8",
    ):
        assert expected in text


def test_a_quantized_batchnorm_has_an_int32_bias_and_a_weight_like_scale() -> None:
    """A BatchNormalization the preparation cannot fold (after a Relu): onnxruntime quantizes its scale like a
    weight and its B as an int32 bias at input scale x scale's scale, which every integer device takes."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
    ]
    inits = [
        const("w", rng.standard_normal((4, 3, 3, 3)) * 0.3),
        const("b", np.zeros(4)),
        const("gamma", rng.uniform(0.5, 1.5, 4)),
        const("beta", rng.standard_normal(4) * 0.1),
        const("mean", rng.standard_normal(4) * 0.1),
        const("var", rng.uniform(0.5, 1.5, 4)),
    ]
    model = build(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], inits, opset=13)
    data = synthetic_dataset(load_model(model), 4)
    recipe = Recipe(calibration_samples=4, op_types_to_quantize=["Conv", "Relu", "BatchNormalization"])
    quantized = static_qdq(model, recipe, data, "full_int8").model
    assert any(i.data_type == onnx.TensorProto.INT32 and i.name.startswith("beta") for i in quantized.graph.initializer)
    for target in ("x86-vnni", "edgetpu"):
        assert not audit(quantized, target).violations
