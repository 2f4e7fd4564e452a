"""Empirical bias correction (autoptq.techniques.bias_correction): it removes the mean output shift that per-tensor
int8 weights leave, compares a fused Relu's node before the activation, is deterministic, and replays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import ModelProto, TensorProto, helper, numpy_helper

from autoptq.model.calibration import Dataset
from autoptq.techniques.bias_correction import correction_sites, with_shifted_biases
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL, CALIB, VAL = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "calib.npz", EXAMPLES / "val.npz"
RunCli = Callable[[list[str]], tuple[int, str, str]]


def shifted_convnet(seed: int = 0) -> ModelProto:
    """Conv (no bias) -> Relu -> Conv (bias, an output) -> Gemm (no bias). The first conv has one output channel
    with weights 50x larger than the others, so one per-tensor scale rounds the small channels coarsely; on positive
    inputs their rounding error does not average out, which shifts their output means."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.02
    w1[0] *= 50
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1
    b2 = rng.standard_normal(8).astype(np.float32) * 0.05
    w3 = rng.standard_normal((8 * 8 * 8, 5)).astype(np.float32) * 0.05
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3"], ["y"], name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "shifted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 8, 8, 8]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5]),
        ],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("b2", b2), ("w3", w3))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def positive_inputs(count: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset([{"x": rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(count)], None, "test")


def outputs(model: ModelProto, data: Dataset) -> np.ndarray:
    """The second conv's output (the Gemm's averages the per-channel shifts away into noise)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["c2"], sample)[0] for sample in data.samples])


PER_TENSOR = Recipe(activation_dtype="uint8", per_channel=False, calibration_samples=64)


def test_bias_correction_removes_the_mean_shift_of_per_tensor_int8() -> None:
    model, calibration, held_out = shifted_convnet(), positive_inputs(64, 1), positive_inputs(64, 2)
    reference = outputs(model, held_out)
    errors = {}
    for corrected in (False, True):
        recipe = PER_TENSOR.model_copy(update={"bias_correction": corrected})
        result = static_qdq(model, recipe, calibration, "full_int8")
        errors[corrected] = outputs(result.model, held_out) - reference
    shift = {k: float(np.abs(e.mean(axis=(0, 2, 3))).mean()) for k, e in errors.items()}
    sqnr = {k: 10 * np.log10((reference**2).sum() / (e**2).sum()) for k, e in errors.items()}
    # Held-out data: the correction learned on the calibration samples carries over.
    assert shift[True] < 0.5 * shift[False], shift
    assert sqnr[True] > sqnr[False] + 1.0, sqnr


def test_the_float_model_gains_biases_and_nothing_else() -> None:
    model = shifted_convnet()
    result = static_qdq(model, PER_TENSOR.model_copy(update={"bias_correction": True}), positive_inputs(16, 1),
                        "full_int8")  # fmt: skip
    plain = static_qdq(model, PER_TENSOR, positive_inputs(16, 1), "full_int8")

    # Same compute ops (only the added biases' DequantizeLinears are new): the device's op rules see the same graph.
    def compute(m: ModelProto) -> list[str]:
        return [n.op_type for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]

    assert compute(result.model) == compute(plain.model)
    bias_dequantized = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(bias_dequantized) == len([n for n in plain.model.graph.node if n.op_type == "DequantizeLinear"]) + 2
    convs = {n.name: n for n in result.model.graph.node if n.op_type in ("Conv", "Gemm")}
    assert all(len(n.input) == 3 and n.input[2] for n in convs.values())
    assert any(note.startswith("bias correction: 3 nodes") for note in result.applied.notes), result.applied.notes


def test_a_fused_relu_is_compared_before_the_activation() -> None:
    model = shifted_convnet()
    quantized = static_qdq(model, PER_TENSOR, positive_inputs(8, 1), "full_int8").model
    assert "Relu" not in {n.op_type for n in quantized.graph.node}, "onnxruntime fuses the Relu into conv1's output"
    sites = {s.node: s for s in correction_sites(model, quantized)}
    assert sorted(sites) == ["conv1", "conv2", "gemm"]
    # conv1's output was renamed to the Relu's: its own output (pre-activation), not the clipped DequantizeLinear.
    assert sites["conv1"].quantized_tensor == "r1"
    # conv2 writes a graph output: onnxruntime renames its own output and the DequantizeLinear writes "c2".
    assert sites["conv2"].quantized_tensor == "c2"
    assert sites["gemm"].axis == -1


def test_shifted_biases_subtract_per_channel_and_scale_by_beta() -> None:
    model = shifted_convnet()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.attribute.append(helper.make_attribute("beta", 2.0))
    shifts = {"conv1": np.arange(8, dtype=np.float64), "conv2": np.ones(8), "gemm": np.full(5, 4.0)}
    corrected = with_shifted_biases(model, shifts)
    constants = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    nodes = {n.name: n for n in corrected.graph.node}
    b2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b2"))
    np.testing.assert_array_equal(constants[nodes["conv1"].input[2]], -np.arange(8, dtype=np.float32))
    np.testing.assert_allclose(constants[nodes["conv2"].input[2]], b2 - 1, rtol=1e-6)
    np.testing.assert_array_equal(constants[nodes["gemm"].input[2]], np.full(5, -2.0, np.float32))
    assert len(model.graph.node[0].input) == 2, "the caller's model is left as it was"
    onnx.checker.check_model(corrected)


def test_bias_correction_is_deterministic() -> None:
    model, calibration = shifted_convnet(), positive_inputs(32, 1)
    recipe = PER_TENSOR.model_copy(update={"bias_correction": True})
    first = static_qdq(model, recipe, calibration, "full_int8").model.SerializeToString(deterministic=True)
    second = static_qdq(model, recipe, calibration, "full_int8").model.SerializeToString(deterministic=True)
    assert first == second


def test_a_bias_corrected_recipe_round_trips_through_yaml_and_replays_byte_for_byte(
    tmp_path: Path, run_cli: RunCli
) -> None:
    recipe = tmp_path / "recipe.yaml"
    assert run_cli(["plan", MODEL, "-t", "edgetpu", "--data", CALIB, "-f", "yaml", "-o", recipe])[0] == 0
    document = yaml.safe_load(recipe.read_text())
    assert document["recipe"]["bias_correction"] is False
    document["recipe"]["bias_correction"] = True
    edited = tmp_path / "corrected.yaml"
    edited.write_text(yaml.safe_dump(document))
    made = []
    for name in ("a.onnx", "b.onnx"):
        code, stdout, stderr = run_cli(["quantize", MODEL, "--recipe", edited, "--data", CALIB, "--val", VAL,
                                        "-o", tmp_path / name, "-f", "json"])  # fmt: skip
        assert code == 0, stderr
        assert '"bias_correction": true' in stdout
        made.append((tmp_path / name).read_bytes())
    assert made[0] == made[1]
    plain = tmp_path / "plain.onnx"
    assert run_cli(["quantize", MODEL, "--recipe", recipe, "--data", CALIB, "--val", VAL, "-o", plain])[0] == 0
    assert plain.read_bytes() != made[0], "the knob changes the model"


@pytest.mark.parametrize("per_channel", [False, True])
def test_bias_correction_reuses_the_ranges_file(tmp_path: Path, per_channel: bool) -> None:
    model, calibration = shifted_convnet(), positive_inputs(16, 1)
    cache = tmp_path / "ranges.json"
    recipe = PER_TENSOR.model_copy(update={"per_channel": per_channel})
    static_qdq(model, recipe, calibration, "full_int8", calibration_cache=cache)
    written = cache.read_bytes()
    corrected = static_qdq(model, recipe.model_copy(update={"bias_correction": True}), calibration, "full_int8",
                           calibration_cache=cache)  # fmt: skip
    assert cache.read_bytes() == written
    # The activation scales are the calibrated ones: the same QuantizeLinear scales as without the correction.
    plain = static_qdq(model, recipe, calibration, "full_int8", calibration_cache=cache)

    def scales(m: ModelProto) -> dict[str, float]:
        constants = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        return {n.input[0]: float(constants[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}

    assert scales(corrected.model) == scales(plain.model)
