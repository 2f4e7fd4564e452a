"""Handing models to onnxruntime's file-based tools: a private scratch folder, a model saved there, and their
logging kept quiet (warnings reach the user through notes instead)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import ModelProto


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private temporary folder for onnxruntime's file-based quantizers."""
    with tempfile.TemporaryDirectory(prefix="autoptq-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's logging and prints (warnings reach the user through notes instead)."""
    logger = logging.getLogger()
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(previous)


def save_for_ort(model: ModelProto, folder: Path, name: str = "input.onnx") -> Path:
    """Write a model where onnxruntime's quantizers can read it."""
    path = folder / name
    onnx.save(model, str(path))
    return path
