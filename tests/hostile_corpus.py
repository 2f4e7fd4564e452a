"""Builders of hostile inputs (models, data, profiles, rules) shared by the hostile-input tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import ModelProto, TensorProto, helper, numpy_helper

from autoptq.devices.profiles import profiles_dir
from autoptq.io.resources import data_dir


def tiny_model(weight: float = 1.0, opset: int = 17, classes: int = 4) -> ModelProto:
    """x[1,4] @ w[4,classes] -> y: a valid classifier-shaped model in one node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])
    w = numpy_helper.from_array(np.full((4, classes), weight, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "tiny", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def write_tiny(folder: Path, name: str = "model.onnx", **kwargs: Any) -> Path:
    path = folder / name
    onnx.save(tiny_model(**kwargs), str(path))
    return path


def write_data(folder: Path, name: str = "data.npz", samples: int = 20, **extra: np.ndarray) -> Path:
    path = folder / name
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((samples, 1, 4), dtype=np.float32), **extra)
    return path


def profile_dict(name: str = "x86-vnni") -> dict[str, Any]:
    """A shipped profile as a dict, to mutate."""
    return yaml.safe_load((profiles_dir() / f"{name}.yaml").read_text())


def write_profile(folder: Path, profile: dict[str, Any] | str, name: str = "device.yaml") -> Path:
    path = folder / name
    path.write_text(profile if isinstance(profile, str) else yaml.safe_dump(profile, sort_keys=False))
    return path


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A flow sequence of anchored levels, each `width` aliases of the one before: width**levels nodes expanded."""
    parts = [f"&l0 [{', '.join(['lol'] * width)}]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def bomb_profile() -> str:
    """A profile whose `ops.MatMul.int8.constraints[0].in` is a billion-laughs bomb (where the issue found it)."""
    base = {key: value for key, value in profile_dict().items() if key != "ops"}
    text = yaml.safe_dump(base, sort_keys=False)
    return text + f"ops:\n  MatMul:\n    int8:\n      constraints:\n        - {{attribute: x, in: {alias_bomb()}}}\n"


def bomb_rules() -> str:
    text = (data_dir("rules") / "post_training.yaml").read_text()
    return text + f"\nbomb: {alias_bomb()}\n"


def deep_yaml(depth: int = 20_000) -> str:
    return "name: deep\nops: " + "[" * depth + "]" * depth + "\n"


def npz_with_header(path: Path, shape: tuple[int, ...], payload: bytes = b"\0" * 64) -> Path:
    """An .npz whose `x.npy` header declares `shape` over a few bytes of payload."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer.write(payload)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", buffer.getvalue())
    return path


def external_data_model(folder: Path, offset: str | None = None, length: str | None = None) -> Path:
    """The tiny model with its weight in `weights.bin`, the offset/length fields replaced as given."""
    path = folder / "ext.onnx"
    onnx.save(
        tiny_model(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        entries = {e.key: e for e in tensor.external_data}
        for key, value in (("offset", offset), ("length", length)):
            if value is None:
                continue
            if key in entries:
                entries[key].value = value
            else:
                tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders): to prove nothing else was written or changed."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}
