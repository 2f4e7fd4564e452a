"""Shared helpers: run the command line in-process, save models, build one-graph models with onnx.helper."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from autoptq.cli import main

Shape = Sequence[int | str] | None


def save(model: ModelProto, tmp_path: Path, name: str = "model.onnx") -> Path:
    """Write `model` to `tmp_path / name` and return the path."""
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def tensor(name: str, shape: Shape, dtype: int = TensorProto.FLOAT) -> ValueInfoProto:
    """A graph input/output description."""
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name: str, array: object, dtype: type = np.float32) -> TensorProto:
    """An initializer."""
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def build(
    nodes: list[NodeProto],
    inputs: list[ValueInfoProto],
    outputs: list[ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    opset: int = 17,
) -> ModelProto:
    """A checked single-graph model (IR 9, default domain at `opset`)."""
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def dense_head_convnet(rng: np.random.Generator, channels: int = 8, side: int = 32) -> ModelProto:
    """Conv (16 3x3 filters, same padding), Relu, Flatten and a dense head to 10 classes; no biases. Random weights
    small enough that activations stay near unit scale."""
    conv = (rng.standard_normal((16, channels, 3, 3)) * 0.2).astype(np.float32)
    head = (rng.standard_normal((16 * side * side, 10)) * 0.02).astype(np.float32)
    return build(
        [
            helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "head_w"], ["y"], name="head"),
        ],
        [tensor("x", [1, channels, side, side])],
        [tensor("y", [1, 10])],
        [const("conv_w", conv), const("head_w", head)],
    )


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """Run `autoptq.cli.main(args)` and return (exit code, stdout, stderr)."""

    def run(args: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
