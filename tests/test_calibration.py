"""Representative data: stacked .npz files, folders of one-sample .npz files, labels, and every way data can fail to
match the model (one-line DataError naming the array or the problem)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import build, const, tensor
from onnx import helper

from autoptq.errors import DataError
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, load_dataset, synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def digits() -> ModelGraph:
    """The example model: one input 'input' [1, 1, 8, 8] float32."""
    return load_model(EXAMPLES / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def seq_model() -> ModelGraph:
    """A MatMul over a symbolic sequence dimension: input 'x' [1, 'seq', 16]."""
    model = build(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [tensor("x", [1, "seq", 16])],
        [tensor("y", [1, "seq", 8])],
        [const("w", np.ones((16, 8)))],
    )
    return load_model(model)


@pytest.fixture(scope="module")
def batch4_model() -> ModelGraph:
    """A fixed batch of four: input 'x' [4, 16]."""
    model = build(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [tensor("x", [4, 16])],
        [tensor("y", [4, 8])],
        [const("w", np.ones((16, 8)))],
    )
    return load_model(model)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _images(count: int, shape: tuple[int, ...] = (1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


# --- stacked .npz ---


@pytest.mark.parametrize("per_sample", [(1, 8, 8), (1, 1, 8, 8)], ids=["without_batch_axis", "with_batch_axis"])
def test_stacked_npz_batch_one(tmp_path: Path, digits: ModelGraph, per_sample: tuple[int, ...]) -> None:
    images = _images(12, per_sample)
    labels = np.arange(12, dtype=np.int64) % 10
    data = load_dataset(_npz(tmp_path / "calib.npz", input=images, labels=labels), digits)
    assert len(data) == 12
    assert all(set(s) == {"input"} and s["input"].shape == (1, 1, 8, 8) for s in data.samples)
    np.testing.assert_array_equal(data.samples[3]["input"].reshape(-1), images[3].reshape(-1))
    np.testing.assert_array_equal(data.labels, labels)
    assert not data.synthetic
    assert data.source == str(tmp_path / "calib.npz")


def test_shipped_example_data_loads(digits: ModelGraph) -> None:
    data = load_dataset(EXAMPLES / "calib.npz", digits)
    assert len(data) == 200
    assert data.samples[0]["input"].shape == (1, 1, 8, 8)


def test_stacked_npz_symbolic_batch(tmp_path: Path) -> None:
    graph = load_model(zoo.mobilenet_style(size=32, blocks=2, batch="N"))
    assert graph.has_dynamic_shapes
    data = load_dataset(_npz(tmp_path / "c.npz", input=_images(5, (3, 32, 32))), graph)
    assert len(data) == 5
    assert {s["input"].shape for s in data.samples} == {(1, 3, 32, 32)}


def test_stacked_npz_fixed_batch_larger_than_one(tmp_path: Path, batch4_model: ModelGraph) -> None:
    data = load_dataset(_npz(tmp_path / "ok.npz", x=np.ones((3, 4, 16), np.float32)), batch4_model)
    assert [s["x"].shape for s in data.samples] == [(4, 16)] * 3
    # Without the batch axis each sample would be a batch of one, which this model does not take.
    with pytest.raises(DataError, match=r"'x'.*batch axis.*fixes at 4"):
        load_dataset(_npz(tmp_path / "bad.npz", x=np.ones((3, 16), np.float32)), batch4_model)


# --- folders of one-sample .npz ---


def test_folder_of_samples_with_varying_sequence_length(tmp_path: Path, seq_model: ModelGraph) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    lengths = [3, 7, 5]
    for index, length in enumerate(lengths):
        sample = np.full((length, 16), index, np.float32)
        if index == 1:
            sample = sample[np.newaxis]  # saved with its batch axis: also accepted
        _npz(folder / f"s{index}.npz", x=sample, labels=np.array(index + 1))
    (folder / "notes.txt").write_text("ignored: not an .npz")
    data = load_dataset(folder, seq_model)
    assert [s["x"].shape for s in data.samples] == [(1, length, 16) for length in lengths]
    np.testing.assert_array_equal(data.labels, [1, 2, 3])
    assert data.source == str(folder)


def test_folder_of_samples_dynamic_batch_model(tmp_path: Path) -> None:
    graph = load_model(zoo.mobilenet_style(size=32, blocks=2, batch="N"))
    for index in range(3):
        _npz(tmp_path / f"{index:03d}.npz", input=_images(1, (3, 32, 32)))
    data = load_dataset(tmp_path, graph)
    assert len(data) == 3 and data.labels is None
    assert {s["input"].shape for s in data.samples} == {(1, 3, 32, 32)}


def test_folder_without_labels_everywhere_is_rejected(tmp_path: Path, seq_model: ModelGraph) -> None:
    _npz(tmp_path / "a.npz", x=np.ones((2, 16), np.float32), labels=np.array(1))
    _npz(tmp_path / "b.npz", x=np.ones((2, 16), np.float32))
    with pytest.raises(DataError, match="only 1 of 2 samples carry 'labels'"):
        load_dataset(tmp_path, seq_model)


@pytest.mark.parametrize(
    ("label", "fragment"),
    [(np.array([], np.int64), "one integer class index"), (np.array(2.5), "float64"), (np.array([1, 2]), "[2]")],
    ids=["empty", "float", "two_values"],
)
def test_folder_bad_label(tmp_path: Path, seq_model: ModelGraph, label: np.ndarray, fragment: str) -> None:
    _npz(tmp_path / "a.npz", x=np.ones((2, 16), np.float32), labels=label)
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path, seq_model)
    assert "'labels'" in str(info.value) and fragment in str(info.value)


# --- problems: one line, naming the file and the array or the problem ---


def _stacked_cases() -> list[tuple[str, dict[str, np.ndarray], str]]:
    ok = _images(4)
    nan = ok.copy()
    nan[2, 0, 3, 4] = np.nan
    inf = ok.copy()
    inf[0, 0, 0, 1] = -np.inf
    return [
        ("wrong_name", {"image": ok}, "no array for model input 'input'"),
        ("extra_array", {"input": ok, "mask": ok}, "unexpected array 'mask'"),
        ("wrong_shape", {"input": _images(4, (1, 9, 8))}, "array 'input' has shape [4, 1, 9, 8]"),
        ("wrong_rank", {"input": _images(4, (8,))}, "array 'input' has shape [4, 8]"),
        ("float64", {"input": ok.astype(np.float64)}, "array 'input' is float64, the model input is float32"),
        ("int_input", {"input": np.ones((4, 1, 8, 8), np.int64)}, "array 'input' is int64"),
        ("nan", {"input": nan}, "array 'input' holds non-finite values (first at index (2, 0, 3, 4))"),
        ("inf", {"input": inf}, "array 'input' holds non-finite values"),
        ("no_samples", {"input": _images(0)}, "holds no samples"),
        ("labels_too_short", {"input": ok, "labels": np.arange(3)}, "'labels': 3"),
        ("labels_float", {"input": ok, "labels": np.zeros(4)}, "'labels' must be integer class indices"),
        ("labels_scalar", {"input": ok, "labels": np.array(1)}, "'labels': 0"),
    ]


@pytest.mark.parametrize(
    ("arrays", "fragment"), [c[1:] for c in _stacked_cases()], ids=[c[0] for c in _stacked_cases()]
)
def test_stacked_problems(tmp_path: Path, digits: ModelGraph, arrays: dict[str, np.ndarray], fragment: str) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_dataset(path, digits)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(str(path)) and "\n" not in message


def test_empty_sample_in_folder(tmp_path: Path, seq_model: ModelGraph) -> None:
    _npz(tmp_path / "a.npz", x=np.ones((3, 16), np.float32))
    _npz(tmp_path / "b.npz", x=np.ones((0, 16), np.float32))
    with pytest.raises(DataError, match=r"b\.npz: array 'x' is empty"):
        load_dataset(tmp_path, seq_model)


def test_folder_sample_of_wrong_feature_size(tmp_path: Path, seq_model: ModelGraph) -> None:
    _npz(tmp_path / "a.npz", x=np.ones((3, 15), np.float32))
    with pytest.raises(DataError, match=r"a\.npz: array 'x' has shape \[1, 3, 15\]: dimension 2"):
        load_dataset(tmp_path, seq_model)


def _write_object_npz(path: Path) -> None:
    np.savez(path, input=np.array([{"a": 1}, None], dtype=object))


def _write_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"input": np.zeros((1, 1, 8, 8), np.float32)}))


def _write_npy(path: Path) -> None:
    with path.open("wb") as stream:
        np.save(stream, _images(2))


def _write_text(path: Path) -> None:
    path.write_text("input,0.1,0.2\n")


def _write_raw_zip_member(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input", b"not an array")


def _write_corrupt_npy_member(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("input.npy", b"\x93NUMPY garbage")


@pytest.mark.parametrize(
    ("write", "fragment"),
    [
        (_write_object_npz, "holds object arrays, which are not loaded for safety"),
        (_write_pickle, "not an .npz file"),
        (_write_npy, "not an .npz file"),
        (_write_text, "not an .npz file"),
        (_write_raw_zip_member, "member 'input' is not a .npy array"),
        (_write_corrupt_npy_member, "cannot be read as .npz"),
    ],
    ids=["object_array", "pickle", "npy", "text", "raw_zip_member", "corrupt_npy_member"],
)
def test_unreadable_files(tmp_path: Path, digits: ModelGraph, write: object, fragment: str) -> None:
    path = tmp_path / "data.npz"
    write(path)  # type: ignore[operator]
    with pytest.raises(DataError) as info:
        load_dataset(path, digits)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_path_and_empty_folder(tmp_path: Path, digits: ModelGraph) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "absent.npz", digits)
    with pytest.raises(DataError, match=r"folder holds no \.npz samples"):
        load_dataset(tmp_path, digits)


# --- Dataset and synthetic data ---


def test_split_and_take(tmp_path: Path, digits: ModelGraph) -> None:
    labels = np.arange(10, dtype=np.int64)
    data = load_dataset(_npz(tmp_path / "d.npz", input=_images(10), labels=labels), digits)
    head, tail = data.split(7)
    assert (len(head), len(tail)) == (7, 3)
    np.testing.assert_array_equal(head.labels, labels[:7])
    np.testing.assert_array_equal(tail.labels, labels[7:])
    assert head.samples[0] is data.samples[0] and tail.samples[0] is data.samples[7]
    assert head.source == tail.source == data.source
    assert len(data.take(4)) == 4
    unlabelled = Dataset(data.samples, None, "x")
    assert unlabelled.split(5)[1].labels is None


def test_split_keeps_the_synthetic_flag(digits: ModelGraph) -> None:
    head, tail = synthetic_dataset(digits, 6).split(2)
    assert head.synthetic and tail.synthetic


def test_synthetic_dataset_is_flagged_and_shaped(seq_model: ModelGraph) -> None:
    data = synthetic_dataset(seq_model, 5, seed=3)
    assert data.synthetic
    assert "synthetic" in data.source
    assert len(data) == 5 and data.labels is None
    assert {s["x"].shape for s in data.samples} == {(1, 1, 16)}  # the symbolic dimension taken as 1
    assert {s["x"].dtype for s in data.samples} == {np.dtype(np.float32)}
    again = synthetic_dataset(seq_model, 5, seed=3)
    other = synthetic_dataset(seq_model, 5, seed=4)
    np.testing.assert_array_equal(data.samples[4]["x"], again.samples[4]["x"])
    assert not np.array_equal(data.samples[4]["x"], other.samples[4]["x"])
