"""Representative data: loading `.npz` files or folders of them, validated against the model's inputs.

Formats:
- one `.npz` with an array per model input, samples stacked on the leading axis (which is also the batch axis when
  the model's batch is 1 or symbolic), and optionally `labels` with one entry per sample;
- a folder of `.npz` files holding one sample each (for inputs whose shapes vary between samples), each optionally
  with a scalar `labels`.
Everything is loaded with `allow_pickle=False`; problems are reported in one line naming the file and the array.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoptq.errors import DataError
from autoptq.model.graph import ModelGraph, TensorInfo, machine_memory_bytes
from autoptq.model.images import ImagePreprocessing, image_files, load_images

LABELS = "labels"

_ONNX_TO_NUMPY = {
    "float": "float32",
    "float32": "float32",
    "float16": "float16",
    "double": "float64",
    "float64": "float64",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "bool": "bool",
}


@dataclass(frozen=True)
class Dataset:
    """Validated samples, each a feed dict ready for an onnxruntime session (batch of one)."""

    samples: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    source: str
    synthetic: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def split(self, first: int) -> tuple[Dataset, Dataset]:
        """The first `first` samples and the rest (for calibration vs held-out verification)."""
        head_labels = None if self.labels is None else self.labels[:first]
        tail_labels = None if self.labels is None else self.labels[first:]
        return (
            Dataset(self.samples[:first], head_labels, self.source, self.synthetic),
            Dataset(self.samples[first:], tail_labels, self.source, self.synthetic),
        )

    def take(self, count: int) -> Dataset:
        """The first `count` samples."""
        return self.split(count)[0]


def load_dataset(path: str | Path, graph: ModelGraph, preprocessing: ImagePreprocessing | None = None) -> Dataset:
    """Load representative data from a `.npz` file, a folder of `.npz` samples, or (with `preprocessing`) a folder
    of images, and validate it against `graph`."""
    path = Path(path)
    if path.is_dir() and (preprocessing is not None or (image_files(path) and not any(path.glob("*.npz")))):
        return _load_images(path, graph, preprocessing)
    if path.is_dir():
        return _load_folder(path, graph)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    arrays = _read_npz(path)
    return _from_stacked(arrays, graph, str(path))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (expected arrays saved with numpy.savez)")
    _check_declared_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: holds object arrays, which are not loaded for safety ({exc})") from exc
        raise DataError(f"{path}: cannot be read as .npz ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as .npz ({exc})") from exc
    # numpy returns the raw bytes of a zip member that is not a .npy file.
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise DataError(f"{path}: member {name!r} is not a .npy array (expected arrays saved with numpy.savez)")
    return arrays


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_declared_sizes(path: Path) -> None:
    """Refuse a member whose .npy header declares more data than the member holds, or than this machine's memory,
    before numpy allocates it (a 100-byte header can declare 2^40 elements)."""
    memory = machine_memory_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as stream:
                    read_header = _HEADER_READERS.get(np.lib.format.read_magic(stream))
                    if read_header is None:  # a newer format version: numpy's own checks apply
                        continue
                    shape, _, dtype = read_header(stream)
                    header = stream.tell()
                declared = math.prod(shape) * dtype.itemsize
                name = info.filename.removesuffix(".npy")
                if declared > memory or declared > info.file_size - header:
                    raise DataError(
                        f"{path}: member {name!r} declares shape {list(shape)} of {dtype} ({declared:,} bytes) but "
                        f"holds {info.file_size - header:,} bytes (this machine has {memory:,})"
                    )
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as .npz ({' '.join(str(exc).split())})") from exc


def _check_names(arrays: dict[str, np.ndarray], graph: ModelGraph, source: str) -> None:
    expected = [t.name for t in graph.inputs]
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise DataError(
            f"{source}: no array for model input {missing[0]!r}; arrays present: {sorted(arrays)}; "
            f"model inputs: {expected}"
        )
    extra = sorted(n for n in arrays if n not in expected and n != LABELS)
    if extra:
        raise DataError(
            f"{source}: unexpected array {extra[0]!r}; model inputs are {expected} (plus optional 'labels')"
        )


def _from_stacked(arrays: dict[str, np.ndarray], graph: ModelGraph, source: str) -> Dataset:
    _check_names(arrays, graph, source)
    counts = {name: int(a.shape[0]) if a.ndim else 0 for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{source}: arrays disagree on the number of samples: {counts}")
    count = next(iter(counts.values()))
    if count == 0:
        raise DataError(f"{source}: holds no samples")
    empty = sorted(name for name, a in arrays.items() if a.size == 0)
    if empty:  # before one entry per sample is made: shape (2**62, 0) declares 2**62 samples of nothing
        raise DataError(f"{source}: array {empty[0]!r} is empty (shape {list(arrays[empty[0]].shape)})")
    samples: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for tensor in graph.inputs:
        array = arrays[tensor.name]
        _check_array(array, tensor, source, stacked=True)
        per_sample_rank = len(tensor.shape or [])
        for i in range(count):
            # Rank one more than the model's: the leading axis only counts samples. Same rank: it is the batch axis.
            samples[i][tensor.name] = array[i] if array.ndim == per_sample_rank + 1 else array[i : i + 1]
    labels = arrays.get(LABELS)
    if labels is not None:
        _check_labels(labels, count, source, graph)
    return Dataset(samples, labels, source)


def _check_array(array: np.ndarray, tensor: TensorInfo, source: str, stacked: bool) -> None:
    expected_dtype = _ONNX_TO_NUMPY.get(tensor.dtype)
    if expected_dtype is not None and array.dtype != np.dtype(expected_dtype):
        raise DataError(
            f"{source}: array {tensor.name!r} is {array.dtype}, the model input is {expected_dtype} "
            f"(convert with .astype(np.{expected_dtype}))"
        )
    shape = tensor.shape
    if shape is not None:
        given = list(array.shape[1:]) if stacked else list(array.shape)
        if len(given) == len(shape):
            compare = given
        elif len(given) == len(shape) - 1 and stacked:
            compare = [1, *given]
        else:
            want = "[samples, " + ", ".join(map(str, shape)) + "]" if stacked else str(shape)
            raise DataError(f"{source}: array {tensor.name!r} has shape {list(array.shape)}, expected {want}")
        for axis, (got, want) in enumerate(zip(compare, shape, strict=True)):
            if isinstance(want, int) and got != want:
                if axis == 0 and len(given) < len(shape):
                    # Samples without a batch axis are batches of one: not what a model with a fixed batch needs.
                    raise DataError(
                        f"{source}: array {tensor.name!r} has shape {list(array.shape)}: each sample lacks the "
                        f"batch axis, which the model input {tensor.name!r} {shape} fixes at {want}"
                    )
                raise DataError(
                    f"{source}: array {tensor.name!r} has shape {list(array.shape)}: dimension {axis} of each sample "
                    f"is {got}, the model input {tensor.name!r} {shape} needs {want}"
                )
    if array.size == 0:
        raise DataError(f"{source}: array {tensor.name!r} is empty (shape {list(array.shape)})")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array.reshape(-1)))[0])
        position = np.unravel_index(bad, array.shape)
        raise DataError(
            f"{source}: array {tensor.name!r} holds non-finite values (first at index {tuple(map(int, position))})"
        )


def _check_labels(labels: np.ndarray, count: int, source: str, graph: ModelGraph) -> None:
    if labels.ndim == 0 or labels.shape[0] != count:
        raise DataError(
            f"{source}: 'labels' has shape {list(labels.shape)}, expected [{count}] (one class per sample) or "
            f"[{count}, ...] (per-sample reference data for a --metric)"
        )
    if labels.ndim > 1:
        # Reference data only a user metric reads (a detector's boxes, [samples, M, 4]): numbers, one entry a sample.
        if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
            raise DataError(f"{source}: 'labels' must hold numbers, got {labels.dtype}")
        return
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: 'labels' must be integer class indices, got {labels.dtype}")
    classes = _class_count(graph)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (classes is not None and high >= classes):
        bound = f"0 to {classes - 1} (the model's first output has {classes} classes)" if classes else "0 or more"
        raise DataError(f"{source}: 'labels' range from {low} to {high}; class indices must be {bound}")


def _class_count(graph: ModelGraph) -> int | None:
    """Classes of a [batch, classes] first output, when its size is static."""
    shape = graph.outputs[0].shape if graph.outputs else None
    if shape and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    return None


def _load_folder(folder: Path, graph: ModelGraph) -> Dataset:
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise DataError(f"{folder}: folder holds no .npz samples")
    samples: list[dict[str, np.ndarray]] = []
    labels: list[int] = []
    for file in files:
        arrays = _read_npz(file)
        _check_names(arrays, graph, str(file))
        sample: dict[str, np.ndarray] = {}
        for tensor in graph.inputs:
            array = arrays[tensor.name]
            rank = len(tensor.shape or [])
            if array.ndim == rank - 1:
                array = array[np.newaxis]  # a sample saved without its batch axis
            _check_array(array, tensor, str(file), stacked=False)
            sample[tensor.name] = array
        samples.append(sample)
        if LABELS in arrays:
            label = arrays[LABELS]
            if label.size != 1 or not np.issubdtype(label.dtype, np.integer):
                raise DataError(
                    f"{file}: 'labels' must be one integer class index, got shape {list(label.shape)} of {label.dtype}"
                )
            labels.append(int(label.reshape(-1)[0]))
    if labels and len(labels) != len(files):
        raise DataError(f"{folder}: only {len(labels)} of {len(files)} samples carry 'labels'")
    if labels:
        _check_labels(np.asarray(labels, np.int64), len(files), str(folder), graph)
    return Dataset(samples, np.asarray(labels, np.int64) if labels else None, str(folder))


def _load_images(folder: Path, graph: ModelGraph, preprocessing: ImagePreprocessing | None) -> Dataset:
    if preprocessing is None:
        raise DataError(
            f"{folder}: a folder of images needs a declared preprocessing, e.g. "
            "--preprocess size=224x224,layout=NCHW,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
        )
    if len(graph.inputs) != 1:
        raise DataError(f"{folder}: images can feed a model with one input; this one has {len(graph.inputs)}")
    images, labels = load_images(folder, preprocessing)
    arrays: dict[str, np.ndarray] = {graph.inputs[0].name: images}
    if labels is not None:
        arrays[LABELS] = labels
    return _from_stacked(arrays, graph, str(folder))


def synthetic_dataset(graph: ModelGraph, count: int, seed: int = 0) -> Dataset:
    """Random samples shaped like the model's inputs (symbolic dims as 1): only when the user asks for it."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for tensor in graph.inputs:
            shape = [d if isinstance(d, int) else 1 for d in tensor.shape or []]
            dtype = np.dtype(_ONNX_TO_NUMPY.get(tensor.dtype, "float32"))
            if np.issubdtype(dtype, np.floating):
                sample[tensor.name] = rng.standard_normal(shape).astype(dtype)
            else:
                sample[tensor.name] = rng.integers(0, 2, size=shape).astype(dtype)
        samples.append(sample)
    return Dataset(samples, None, f"synthetic (seed {seed})", synthetic=True)
