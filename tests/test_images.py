"""Calibration from a folder of images with a declared preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from autoptq.errors import DataError
from autoptq.model.calibration import load_dataset
from autoptq.model.graph import load_model
from autoptq.model.images import parse_preprocessing

PIL = pytest.importorskip("PIL.Image")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _digit_images(folder: Path, count: int = 30) -> np.ndarray:
    """Write validation digits as 8-bit PNGs in class subfolders; return their labels in file order."""
    with np.load(EXAMPLES / "val.npz", allow_pickle=False) as data:
        images, labels = data["input"][:count], data["labels"][:count]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / f"class_{label}").mkdir(exist_ok=True)
        pixels = np.round(image[0] * 255).astype(np.uint8)
        PIL.fromarray(pixels, mode="L").save(folder / f"class_{label}" / f"{index:03d}.png")
    return labels


def test_images_in_class_folders_feed_the_model_with_labels(tmp_path: Path) -> None:
    labels = _digit_images(tmp_path)
    graph = load_model(EXAMPLES / "digits_cnn.onnx")
    data = load_dataset(tmp_path, graph, parse_preprocessing("size=8x8,color=L,layout=NCHW,scale=1/255"))
    assert len(data) == len(labels)
    assert data.samples[0]["input"].shape == (1, 1, 8, 8) and data.samples[0]["input"].dtype == np.float32
    # Labels follow the sorted class folders, which here are the digits themselves.
    order = sorted(range(len(labels)), key=lambda i: (f"class_{labels[i]}", f"{i:03d}"))
    assert list(data.labels) == [int(labels[i]) for i in order]
    session = ort.InferenceSession(str(EXAMPLES / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    predictions = [int(np.argmax(session.run(None, s)[0])) for s in data.samples]
    assert np.mean(np.asarray(predictions) == data.labels) >= 0.9


def test_normalisation_follows_the_declared_mean_std_and_layout(tmp_path: Path) -> None:
    PIL.fromarray(np.full((4, 6, 3), 200, np.uint8), mode="RGB").save(tmp_path / "a.png")
    spec = parse_preprocessing("size=4x6,layout=NHWC,scale=1/255,mean=0.5/0.5/0.5,std=0.25/0.25/0.25")
    from autoptq.model.images import load_images

    images, labels = load_images(tmp_path, spec)
    assert labels is None and images.shape == (1, 1, 4, 6, 3)
    np.testing.assert_allclose(images[0, 0, 0, 0], (200 / 255 - 0.5) / 0.25, rtol=1e-6)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("size=8by8", "size must look like"),
        ("size=8x8,mean=a", "not a number"),
        ("size=8x8,layout=CHW", "layout"),
        ("size=8x8,mean=1/2/3/4", "mean needs 1 or 3"),
        ("size=8x8,std=0", "std must not be 0"),
        ("layout", "key=value"),
    ],
)
def test_bad_preprocessing_is_one_clear_error(text: str, phrase: str) -> None:
    with pytest.raises(DataError, match=phrase):
        parse_preprocessing(text)


def test_a_folder_of_images_without_preprocessing_is_refused(tmp_path: Path) -> None:
    _digit_images(tmp_path, count=3)
    with pytest.raises(DataError, match="needs a declared preprocessing"):
        load_dataset(tmp_path, load_model(EXAMPLES / "digits_cnn.onnx"))


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_dataset(tmp_path, load_model(EXAMPLES / "digits_cnn.onnx"), parse_preprocessing("size=8x8,color=L"))
