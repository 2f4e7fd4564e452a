"""An output that joins parts of very different ranges (a detector's boxes and scores in one tensor) is kept float
where the device has a float host, and returned as its int8 parts by a host-less .tflite: one 8-bit scale would
leave the scores a level or two."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import ModelProto, helper

from autoptq.decide.planner import device_conformant_recipe
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.model.calibration import Dataset
from autoptq.model.graph import load_model
from autoptq.techniques.output_joins import mixed_output_joins
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe
from tests.conftest import build, const, save, tensor

CHANNELS = 4


def detector_head(box_gain: float, extra_use: bool = False) -> ModelProto:
    """Boxes (x·gain) and scores (sigmoid) concatenated on channels into the one output, as YOLOv8's head does."""
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["boxes"], name="boxes"),
        helper.make_node("Sigmoid", ["x"], ["scores"], name="scores"),
        helper.make_node("Concat", ["boxes", "scores"], ["joined"], name="join", axis=1),
        helper.make_node("Reshape", ["joined", "shape"], ["y"], name="flat"),
    ]
    outputs = [tensor("y", [1, 2 * CHANNELS * 16])]
    if extra_use:
        nodes.append(helper.make_node("Relu", ["joined"], ["also"], name="also"))
        outputs.append(tensor("also", [1, 2 * CHANNELS, 16]))
    initializers = [const("gain", box_gain), const("shape", [1, -1], np.int64)]
    return build(nodes, [tensor("x", [1, CHANNELS, 16])], outputs, initializers)


def samples(count: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.normal(0, 2, (1, CHANNELS, 16)).astype(np.float32)} for _ in range(count)]
    return Dataset(samples=feeds, labels=None, source="test")


def score_error(model: ModelProto, reference: ModelProto, data: Dataset) -> float:
    """The largest error on the scores half of the output."""
    ran = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    half = CHANNELS * 16
    return max(
        float(np.abs(ran.run(["y"], s)[0][:, half:] - ref.run(["y"], s)[0][:, half:]).max()) for s in data.samples
    )


def test_the_join_at_the_output_is_kept_float_and_the_scores_survive() -> None:
    model, data = detector_head(box_gain=100.0), samples(16)
    kept = static_qdq(model, Recipe(float_output_joins=True, calibration_samples=16), data, "full_int8")
    assert kept.applied.recipe.nodes_to_exclude == ["join", "flat"]
    assert kept.applied.excluded["join"] == "an output joining parts of very different ranges"
    assert any("output 'y' joins parts whose ranges differ" in note for note in kept.applied.notes)
    assert score_error(kept.model, model, data) < 0.01  # the sigmoid's own scale: 1/255
    # The failure it prevents: the scores on the boxes' scale are a level or two apart.
    joined = static_qdq(model, Recipe(float_output_joins=False, calibration_samples=16), data, "full_int8")
    assert joined.applied.recipe.nodes_to_exclude == []
    assert score_error(joined.model, model, data) > 0.5


def test_parts_of_similar_ranges_stay_quantized() -> None:
    model, data = detector_head(box_gain=0.2), samples(16)
    result = static_qdq(model, Recipe(float_output_joins=True, calibration_samples=16), data, "full_int8")
    assert result.applied.recipe.nodes_to_exclude == []


def test_a_join_also_used_inside_the_graph_is_left_alone() -> None:
    # Keeping it float would only move the single scale to its other user.
    model = detector_head(box_gain=100.0, extra_use=True)
    ranges = {"boxes": (-600.0, 600.0), "scores": (0.0, 1.0), "joined": (-600.0, 600.0)}
    assert mixed_output_joins(model, ranges) == []
    found = mixed_output_joins(detector_head(box_gain=100.0), ranges)
    assert [(j.output, j.nodes, round(j.ratio)) for j in found] == [("y", ["join", "flat"], 1200)]


def test_the_join_is_kept_float_where_a_host_or_the_application_runs_it(tmp_path: object) -> None:
    graph = load_model(save(detector_head(box_gain=100.0), tmp_path))  # type: ignore[arg-type]
    # A host-less .tflite returns the parts (see below); an integer-only device with neither would keep it integer.
    cases = (("x86-vnni", True), ("arm-a53", True), ("edgetpu", True), ("mcu-cortex-m", True), ("tflite-int8", True))
    for target, expected in cases:
        recipe = device_conformant_recipe(Recipe(), "full_int8", load_profile(target), graph, samples(4))
        assert recipe.float_output_joins is expected, target


def conv_detector_head() -> ModelProto:
    """A convolution feeding the head of `detector_head`: what an accelerator runs before its output join."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["features"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["features", "rows"], ["x"], name="rows"),
        *detector_head(box_gain=100.0).graph.node,
    ]
    initializers = [
        const("w", rng.normal(0, 0.3, (CHANNELS, 3, 3, 3))),
        const("b", np.zeros(CHANNELS)),
        const("rows", [1, CHANNELS, -1], np.int64),
        *detector_head(box_gain=100.0).graph.initializer,
    ]
    return build(nodes, [tensor("image", [1, 3, 4, 4])], [tensor("y", [1, 2 * CHANNELS * 16])], initializers)


def quantized_for(
    model: ModelProto, profile: HardwareProfile, folder: object
) -> tuple[list[dict[str, np.ndarray]], ModelProto]:
    """Twelve image feeds and `model` quantized to full int8 with `profile`'s conformant recipe on them."""
    rng = np.random.default_rng(4)
    feeds = [{"image": rng.normal(0, 2, (1, 3, 4, 4)).astype(np.float32)} for _ in range(12)]
    graph = load_model(save(model, folder))  # type: ignore[arg-type]
    recipe = device_conformant_recipe(Recipe(), "full_int8", profile, graph, Dataset(feeds, None, "test"))
    return feeds, static_qdq(model, recipe, Dataset(feeds, None, "test"), "full_int8").model


def test_an_accelerator_with_a_host_writes_the_join_as_float_ops_after_a_dequantize(tmp_path: object) -> None:
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")
    from autoptq.deploy.tflite_writer import export_tflite
    from autoptq.devices.device_rules import check_device_rules
    from autoptq.evaluate.emulators.integer import build_exact_model, exact_session, quantize_inputs
    from autoptq.evaluate.emulators.tflite_runtime import run_litert

    model, edgetpu = conv_detector_head(), load_profile("edgetpu")
    feeds, qdq = quantized_for(model, edgetpu, tmp_path)
    assert check_device_rules(qdq, edgetpu).passed  # the float join is the host's work, not a violation
    exported = export_tflite(qdq, edgetpu)
    assert exported.op_counts["DEQUANTIZE"] == 2 and exported.outputs[0].dtype == "float32"
    exact = exact_session(build_exact_model(qdq, edgetpu))
    litert = run_litert(exported, feeds)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    half = CHANNELS * 16
    for feed, ran in zip(feeds, litert, strict=True):
        emulated = exact.run(None, quantize_inputs(qdq, feed))[0]
        assert np.array_equal(ran[0], emulated)  # a float copy of the same integers on both
        scores = reference.run(["y"], feed)[0][:, half:]
        assert np.abs(ran[0][:, half:] - scores).max() < 0.05  # one scale for both parts: about 2.3


def test_a_host_less_file_returns_the_int8_parts_and_the_application_joins_them(tmp_path: object) -> None:
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed: pip install 'autoptq[tflite]'")
    from autoptq.deploy.device_file import device_file
    from autoptq.deploy.tflite_writer import export_tflite
    from autoptq.devices.device_rules import check_device_rules
    from autoptq.evaluate.emulators.integer import emulate
    from autoptq.evaluate.emulators.tflite_runtime import emulate as litert_tier
    from autoptq.evaluate.emulators.tflite_runtime import model_outputs, run_litert, run_tflm

    model, profile = conv_detector_head(), load_profile("tflite-int8")
    feeds, qdq = quantized_for(model, profile, tmp_path)
    rules = check_device_rules(qdq, profile)
    assert rules.passed  # the float join is the application's work, not a violation
    assert rules.coverage is not None and "the application does it" in rules.coverage.first_cut.reason

    exported = export_tflite(qdq, profile)
    assert "DEQUANTIZE" not in exported.op_counts and "CONCATENATION" not in exported.op_counts
    assert [io.dtype for io in exported.outputs] == ["int8", "int8"]  # int8 I/O, as the profile says
    assert len({io.scale for io in exported.outputs}) == 2  # each part keeps its own scale
    (join,) = exported.output_joins
    assert join.output == "y" and join.parts == [io.name for io in exported.outputs]
    assert join.steps == ["Concat(axis=1)", "Reshape"]
    assert "dequantize each with its own scale" in join.statement()

    joined = model_outputs(exported, run_litert(exported, feeds))
    on_mcu = model_outputs(exported, run_tflm(exported, feeds[:3]))  # TFLite Micro finds its outputs by position
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(on_mcu, joined, strict=False))
    exact = emulate(qdq, profile, feeds, "exact").outputs
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    half = CHANNELS * 16
    for feed, ran, emulated in zip(feeds, joined, exact, strict=True):
        assert ran[0].shape == (1, 2 * CHANNELS * 16)
        assert np.array_equal(ran[0], emulated[0])  # the same integers, joined alike
        # The scores' own scale (1/256) plus the convolution's rounding; one scale for both parts is about 2.3.
        assert np.abs(ran[0][:, half:] - reference.run(["y"], feed)[0][:, half:]).max() < 0.05

    statement = litert_tier(qdq, profile, feeds[:2], "litert").fidelity_statement
    assert "Output 'y' is the join of the file's 2 int8 outputs, as the application does it" in statement

    summary, content = device_file(qdq.SerializeToString(), False, profile, "out/model.tflite")
    assert content == exported.content and summary is not None
    assert summary.output_joins == [join.statement()]
