"""The shipped example model (examples/digits_cnn.onnx) and its calibration / validation data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL_PATH = EXAMPLES / "digits_cnn.onnx"
CALIB_PATH = EXAMPLES / "calib.npz"
VAL_PATH = EXAMPLES / "val.npz"

ALLOWED_OPS = {"Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Gemm"}
MAX_FILE_BYTES = 1_000_000


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(MODEL_PATH)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def test_model_is_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 9
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}
    assert {n.op_type for n in model.graph.node} <= ALLOWED_OPS
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_model_io_signature(model: onnx.ModelProto) -> None:
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 1, 8, 8]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 10]


def test_files_are_small() -> None:
    for path in (MODEL_PATH, CALIB_PATH, VAL_PATH):
        assert path.stat().st_size < MAX_FILE_BYTES, path.name


def test_calibration_data() -> None:
    calib = _load_npz(CALIB_PATH)
    assert set(calib) == {"input"}
    x = calib["input"]
    assert x.shape == (200, 1, 8, 8)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_validation_accuracy_onnxruntime() -> None:
    val = _load_npz(VAL_PATH)
    x, labels = val["input"], val["labels"]
    assert x.shape == (360, 1, 8, 8) and x.dtype == np.float32
    assert labels.shape == (360,) and labels.dtype == np.int64
    session = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    preds = np.array([session.run(["logits"], {"input": x[i : i + 1]})[0].argmax() for i in range(len(x))])
    accuracy = float((preds == labels).mean())
    assert accuracy >= 0.95, f"top-1 accuracy {accuracy:.4f}"
