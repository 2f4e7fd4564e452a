"""What real exports look like, in small constructed models: open dims (symbolic, -1), variable-width data, old
opsets, fp16 type trouble, and the rewrites a device's converter applies. Each failure class of the issue "Real
exported models" has a test here; the real models themselves are in tests/test_real_models.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import build, const, tensor
from onnx import helper

from autoptq import api
from autoptq.devices.canonical import canonical_model
from autoptq.devices.profiles import load_profile
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, load_dataset
from autoptq.model.graph import load_model, model_opset
from autoptq.model.shapes import bind, model_for_target, parse_input_shapes
from autoptq.techniques.common import calibration_samples
from autoptq.techniques.qdq import collect_ranges, static_qdq
from autoptq.techniques.recipe import Recipe

RNG = np.random.default_rng(7)


def paddle_style_cnn(opset: int = 11) -> onnx.ModelProto:
    """A detector-like CNN with its input declared `[-1, 3, -1, -1]` as paddle2onnx writes it: Conv-Relu-Conv and a
    per-pixel sigmoid map, so the output's H and W follow the input's."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["y"], name="sigmoid"),
    ]
    inits = [
        const("w1", RNG.standard_normal((32, 3, 3, 3)) * 0.3),
        const("b1", RNG.standard_normal(32) * 0.1),
        const("w2", RNG.standard_normal((1, 32, 3, 3)) * 0.1),
        const("b2", RNG.standard_normal(1) * 0.1),
    ]
    model = build(nodes, [tensor("x", [1, 3, 1, 1])], [tensor("y", [1, 1, 1, 1])], inits, opset=opset)
    for value in (*model.graph.input, *model.graph.output):
        for axis in (0, 2, 3):
            value.type.tensor_type.shape.dim[axis].dim_value = -1
    return model


def recogniser(width: str | int = "W") -> onnx.ModelProto:
    """A text-line recogniser: [1, 1, 32, W] in, one 10-class distribution per column out ([1, W, 10])."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c0"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("Conv", ["r0", "w2"], ["c"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c"], ["r"], name="relu2"),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0, name="pool_h"),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1], name="columns"),
        helper.make_node("MatMul", ["t", "proj"], ["y"], name="classify"),
    ]
    inits = [
        const("w", RNG.standard_normal((32, 1, 3, 3)) * 0.5),
        const("w2", RNG.standard_normal((32, 32, 3, 3)) * 0.1),
        const("proj", RNG.standard_normal((32, 10)) * 0.5),
    ]
    return build(nodes, [tensor("x", [1, 1, 32, width])], [tensor("y", [1, width, 10])], inits, opset=13)


def save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / name
    onnx.save(model, path)
    return path


def image_batch(count: int, height: int = 64, width: int = 64) -> np.ndarray:
    return RNG.uniform(0, 1, (count, 3, height, width)).astype(np.float32)


def width_folder(folder: Path, widths: list[int]) -> Path:
    folder.mkdir()
    for index, width in enumerate(widths):
        np.savez(folder / f"{index:03d}.npz", x=RNG.uniform(0, 1, (1, 1, 32, width)).astype(np.float32))
    return folder


# --- 1. symbolic batch ----------------------------------------------------------------------------------------------


def test_symbolic_batch_maps_on_the_edge_tpu_and_plans_full_int8(tmp_path: Path) -> None:
    model = zoo.mobilenet_style(size=32, width=8, blocks=2, batch="N")
    data = tmp_path / "calib.npz"
    np.savez(data, input=RNG.uniform(0, 1, (16, 1, 3, 32, 32)).astype(np.float32))
    (report,) = api.audit(model, "edgetpu")
    assert report.compatible and report.device_mac_fraction == 1.0
    (plan,) = api.plan(model, "edgetpu", data=data)
    assert plan.technique == "full_int8"
    graph = api.bound(api.as_graph(model))
    static = model_for_target(graph, static_shapes=True).graph.input[0].type.tensor_type.shape.dim[0]
    host = model_for_target(graph, static_shapes=False).graph.input[0].type.tensor_type.shape.dim[0]
    assert static.dim_value == 1  # the device compiles batch 1
    assert host.dim_param == "N"  # a host variant keeps the export's dynamic batch


# --- 2. dims declared as -1 ----------------------------------------------------------------------------------------


def test_minus_one_dims_are_open_and_accept_valid_data(tmp_path: Path) -> None:
    graph = load_model(paddle_style_cnn())
    assert graph.inputs[0].shape == ["x_dim0", 3, "x_dim2", "x_dim3"]
    data = tmp_path / "calib.npz"
    np.savez(data, x=image_batch(6))
    dataset = load_dataset(data, graph)  # refused before: "fixes at -1"
    assert dataset.samples[0]["x"].shape == (1, 3, 64, 64)


# --- 3. symbolic spatial dims counted from the data ----------------------------------------------------------------


def test_open_spatial_dims_are_counted_at_the_data_size() -> None:
    graph = load_model(paddle_style_cnn())
    bound = bind(graph, [{"x": image_batch(1, 48, 64)}])
    fixed = load_model(api.as_graph(paddle_style_cnn(), {"x": [1, 3, 48, 64]}).model)
    assert bound.total_macs == fixed.total_macs > 48 * 64 * (32 * 27 + 32 * 9)
    assert bound.binding is not None and bound.binding.unknown() == []


def test_a_dim_nothing_binds_stays_unknown_and_is_reported() -> None:
    (report,) = api.audit(paddle_style_cnn(), "edgetpu")
    assert {"x_dim2", "x_dim3"} <= set(report.dynamic_dims) and "x_dim0" not in report.dynamic_dims
    assert any("dim 2 unknown" in note for note in report.shape_notes)
    assert any("dim 0 = 1: an open batch axis" in note for note in report.shape_notes)
    assert not report.compatible  # the Edge TPU needs static sizes: never silently taken as 1


def test_input_shape_option_binds_and_is_checked(run_cli, tmp_path: Path) -> None:
    model = save(paddle_style_cnn(), tmp_path, "det.onnx")
    code, out, err = run_cli(["audit", model, "-t", "edgetpu", "--input-shape", "x=1,3,96,128", "-f", "json"])
    assert (code, err) == (0, "")
    assert '"total_macs": 14561280' in out and "x_dim2" not in out
    code, _, err = run_cli(["audit", model, "-t", "edgetpu", "--input-shape", "x=2,4,96,128"])
    assert code == 2 and "dim 1 is 4, but the model fixes it at 3" in err
    with pytest.raises(Exception, match="positive sizes"):
        parse_input_shapes(["x=1,3,-1,5"])


def test_minus_one_model_quantizes_for_x86_and_keeps_its_open_dims(tmp_path: Path) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, x=image_batch(10))
    _, outcome = api.quantize(paddle_style_cnn(), "x86-vnni", tmp_path / "out.onnx", data=data)
    assert outcome.technique != "none" or "slower" in outcome.reason
    produced = onnx.load(tmp_path / "out.onnx")
    dims = produced.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["x_dim0", 3, "x_dim2", "x_dim3"]


# --- 4. variable-shape data ----------------------------------------------------------------------------------------


def test_variable_width_folders_calibrate_and_verify_per_sample(tmp_path: Path) -> None:
    calib = width_folder(tmp_path / "calib", [20, 37, 64, 45, 52, 30])
    val = width_folder(tmp_path / "val", [24, 61, 33])
    _, outcome = api.quantize(recogniser(), "x86-vnni", tmp_path / "rec.onnx", data=calib, validation=val)
    assert outcome.verification is not None
    assert outcome.verification.samples == 3
    assert outcome.verification.fidelity[0].sqnr_db > 15
    session = ort.InferenceSession(str(tmp_path / "rec.onnx"), providers=["CPUExecutionProvider"])
    for width in (20, 99):
        (out,) = session.run(None, {"x": np.zeros((1, 1, 32, width), np.float32)})
        assert out.shape == (1, width, 10)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_calibration_method_takes_variable_shapes(tmp_path: Path, method: str) -> None:
    samples = [{"x": RNG.uniform(0, 1, (1, 1, 32, w)).astype(np.float32)} for w in (12, 40, 25, 33)]
    recipe = Recipe(calibration_method=method, calibration_samples=4)
    result = static_qdq(recogniser(), recipe, Dataset(samples, None, "widths"), "full_int8")
    assert any(node.op_type == "QuantizeLinear" for node in result.model.graph.node)


def test_streamed_minmax_ranges_equal_onnxruntime_batch_calibration(tmp_path: Path) -> None:
    """One sample per collect call gives onnxruntime's own min/max over all samples at once."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import load_tensors_data

    from autoptq.techniques.common import DatasetReader

    model_path = save(recogniser(32), tmp_path, "rec.onnx")
    data = Dataset([{"x": RNG.uniform(-1, 2, (1, 1, 32, 32)).astype(np.float32)} for _ in range(7)], None, "s")
    recipe = Recipe(calibration_method="minmax", calibration_samples=7)
    streamed = load_tensors_data(
        collect_ranges(model_path, calibration_samples(data, recipe, "t"), recipe, tmp_path, None)
    )
    batch = create_calibrator(model_path, None, str(tmp_path / "aug.onnx"), CalibrationMethod.MinMax)
    batch.collect_data(DatasetReader(data))
    expected = batch.compute_data()
    assert set(streamed.data) == set(expected.data)
    for name, ranges in expected.data.items():
        np.testing.assert_array_equal(streamed.data[name].range_value, ranges.range_value)


# --- 5. opset below 13 ----------------------------------------------------------------------------------------------


def test_opset_11_is_upgraded_for_per_channel_weights(tmp_path: Path) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, x=image_batch(12))
    _, outcome = api.quantize(paddle_style_cnn(opset=11), "edgetpu", tmp_path / "e.onnx", data=data)
    assert outcome.technique == "full_int8", outcome.reason
    upgrade = next(step for step in outcome.preparation if step.name == "upgrade opset")
    assert upgrade.applied and "11 -> 13" in upgrade.note
    produced = onnx.load(tmp_path / "e.onnx")
    assert model_opset(produced) >= 13
    per_axis = [n for n in produced.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert per_axis, "per-channel weights need per-axis DequantizeLinear"


def test_per_tensor_weights_where_the_model_stays_below_opset_13() -> None:
    samples = Dataset([{"x": image_batch(1)} for _ in range(4)], None, "s")
    model = load_model(paddle_style_cnn(opset=11)).model
    result = static_qdq(model, Recipe(per_channel=True, calibration_samples=4), samples, "full_int8")
    assert result.applied.recipe.per_channel is False
    assert any("per tensor" in note for note in result.applied.notes)
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])


# --- 6. fp16 conversion ---------------------------------------------------------------------------------------------


def paddle_style_upsampler() -> onnx.ModelProto:
    """Conv, then a nearest Resize whose roi and scales are initializers that the file also declares in value_info,
    as paddle2onnx writes them (`p2o.helper.constant.N`). onnxruntime's fp16 converter turns those initializers into
    fp16, declares them so, and appends a Cast back to fp32 for Resize after its reader: a pipeline that then infers
    types over the graph as written fails with "Inferred elem type differs from existing elem type: (1) vs (10)"."""
    roi, scales = "p2o.helper.constant.1", "p2o.helper.constant.0"
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="p2o.Conv.0"),
        helper.make_node(
            "Resize",
            ["c", roi, scales],
            ["r"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
            name="p2o.Resize.0",
        ),
        helper.make_node("Relu", ["r"], ["y"], name="p2o.Relu.0"),
    ]
    inits = [
        const("w", RNG.standard_normal((8, 3, 3, 3)) * 0.3),
        const(roi, np.zeros(0)),
        const(scales, np.array([1.0, 1.0, 2.0, 2.0])),
    ]
    model = build(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 8, 16, 16])], inits, opset=13)
    model.graph.value_info.extend([tensor(roi, [0]), tensor(scales, [4])])
    return model


def test_paddle_style_declared_initializer_types_convert_to_fp16(tmp_path: Path) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, x=image_batch(8, 8, 8))
    model = paddle_style_upsampler()
    _, outcome = api.quantize(model, "gpu-fp16", tmp_path / "h.onnx", data=data, validation=data)
    assert outcome.technique == "fp16", outcome.reason
    produced = onnx.load(tmp_path / "h.onnx")
    weight = next(i for i in produced.graph.initializer if i.name.startswith("w"))
    assert weight.data_type == onnx.TensorProto.FLOAT16
    scales = next(i for i in produced.graph.initializer if i.name == "p2o.helper.constant.0")
    assert scales.data_type == onnx.TensorProto.FLOAT  # Resize takes fp32 scales only
    x = image_batch(1, 8, 8)
    reference = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    converted = ort.InferenceSession(produced.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(converted, reference, rtol=1e-2, atol=1e-2)


# --- 7. the graph the device's converter sees -----------------------------------------------------------------------


def mobilenet_v3_style() -> onnx.ModelProto:
    """x / 255 at the input, then Conv with HardSwish written as x * HardSigmoid(x), then a classifier."""
    nodes = [
        helper.make_node("Div", ["x", "scale"], ["xs"], name="normalise"),
        helper.make_node("Conv", ["xs", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5, name="gate"),
        helper.make_node("Mul", ["c", "g"], ["h"], name="hswish"),
        helper.make_node("GlobalAveragePool", ["h"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc"),
    ]
    inits = [
        const("scale", np.array(255.0)),
        const("w0", RNG.standard_normal((64, 3, 3, 3)) * 0.3),
        const("w", RNG.standard_normal((64, 64, 3, 3)) * 0.05),
        const("fc", RNG.standard_normal((64, 4)) * 0.3),
        const("fcb", np.zeros(4)),
    ]
    return build(nodes, [tensor("x", [1, 3, 16, 16])], [tensor("y", [1, 4])], inits, opset=13)


def test_div_by_constant_and_hard_sigmoid_are_audited_as_the_converter_rewrites_them() -> None:
    (literal,) = api.audit(mobilenet_v3_style(), "edgetpu", as_exported=True)
    assert literal.first_cut is not None and literal.first_cut.node == "normalise"
    (canonical,) = api.audit(mobilenet_v3_style(), "edgetpu")
    assert canonical.compatible and canonical.device_mac_fraction == 1.0
    assert {(r.node, r.op_type, tuple(r.into)) for r in canonical.rewrites} == {
        ("normalise", "Div", ("Mul",)),
        ("gate", "HardSigmoid", ("Mul", "Add", "Clip")),
    }
    (x86,) = api.audit(mobilenet_v3_style(), "x86-vnni")
    assert x86.rewrites == []  # onnxruntime runs Div and HardSigmoid as they are


@pytest.mark.parametrize("rule", ["div_by_constant", "hard_sigmoid", "hard_swish"])
def test_each_rewrite_keeps_the_outputs(rule: str) -> None:
    model = mobilenet_v3_style()
    if rule == "hard_swish":
        gate = next(n for n in model.graph.node if n.name == "gate")
        gate.CopyFrom(helper.make_node("HardSwish", ["c"], ["g"], name="gate"))
        model.opset_import[0].version = 14
    rewritten, rewrites = canonical_model(model, [rule])
    assert rewrites and all(r.rule == rule for r in rewrites)
    onnx.checker.check_model(rewritten)
    feed = {"x": RNG.uniform(0, 255, (1, 3, 16, 16)).astype(np.float32)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, rewritten)]
    np.testing.assert_allclose(run[1].run(None, feed)[0], run[0].run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_edgetpu_variant_of_a_mobilenet_v3_style_model_is_full_int8(tmp_path: Path) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, x=RNG.uniform(0, 255, (16, 3, 16, 16)).astype(np.float32))
    plan, outcome = api.quantize(mobilenet_v3_style(), load_profile("edgetpu"), tmp_path / "m.onnx", data=data)
    assert plan.technique == "full_int8" and outcome.technique == "full_int8", outcome.reason
    produced = onnx.load(tmp_path / "m.onnx")
    assert not {"Div", "HardSigmoid"} & {n.op_type for n in produced.graph.node}


def paddle_shape_through_cast() -> onnx.ModelProto:
    """Paddle's classifier head: the Reshape target is Shape → Cast(int32) → Slice → Cast(int64) → Concat with a
    constant, where ONNX's data propagation stops (at the Cast); the batch is open, as exported."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"], name="pool"),
        helper.make_node("Shape", ["pooled"], ["dims"], name="shape"),
        helper.make_node("Cast", ["dims"], ["dims32"], to=onnx.TensorProto.INT32, name="to32"),
        helper.make_node("Slice", ["dims32", "zero", "one"], ["batch32"], name="batch"),
        helper.make_node("Cast", ["batch32"], ["batch"], to=onnx.TensorProto.INT64, name="to64"),
        helper.make_node("Concat", ["batch", "width"], ["target"], axis=-1, name="target"),
        helper.make_node("Reshape", ["pooled", "target"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc"),
    ]
    inits = [
        const("zero", np.array([0]), np.int64),
        const("one", np.array([1]), np.int64),
        const("width", np.array([8]), np.int64),
        const("w", np.random.default_rng(0).normal(0, 0.3, (8, 2))),
    ]
    return build(nodes, [tensor("x", ["n", 8, 4, 4])], [tensor("y", ["n", 2])], inits, opset=11)


def test_a_reshape_target_computed_through_cast_gets_its_static_shape_once_the_batch_is_bound() -> None:
    graph = bind(load_model(paddle_shape_through_cast()), [{"x": np.zeros((1, 8, 4, 4), np.float32)}])
    assert graph.tensors["flat"].shape == [1, 8] and graph.tensors["y"].shape == [1, 2]
    assert [n.op_type for n in graph.model.graph.node][:3] == ["GlobalAveragePool", "Shape", "Cast"]  # unchanged
    (report,) = api.audit(graph, ["tflite-int8"])
    assert report.first_cut is None and report.device_mac_fraction == 1.0
