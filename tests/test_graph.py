"""autoptq.model.graph: loading (safely), shapes, MACs, parameters and activation bytes, control flow, external data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import build, const, save, tensor
from onnx import TensorProto, helper

from autoptq.errors import ModelLoadError
from autoptq.model import zoo
from autoptq.model.graph import ModelGraph, build_graph, dtype_itemsize, load_model

F = TensorProto.FLOAT


def single(node: onnx.NodeProto, inputs, out_shape, initializers=(), opset: int = 17) -> ModelGraph:
    """Load a one-node model whose first output has `out_shape`."""
    outputs = [tensor(node.output[0], out_shape)]
    return load_model(build([node], inputs, outputs, initializers, opset))


# --- MACs, checked by hand ------------------------------------------------------------------------


def test_conv_macs_params_and_bytes() -> None:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g = single(
        node, [tensor("x", [1, 3, 8, 8])], [1, 8, 8, 8], [const("w", np.ones((8, 3, 3, 3))), const("b", [0] * 8)]
    )
    info = g.node("conv")
    assert info.macs == 8 * 8 * 8 * 3 * 3 * 3
    assert info.macs_exact
    assert info.weight_inputs == ["w", "b"]
    assert info.param_count == 8 * 3 * 3 * 3 + 8
    assert info.param_bytes == 4 * (8 * 3 * 3 * 3 + 8)
    assert info.activation_bytes == 8 * 8 * 8 * 4  # the float32 output
    assert g.total_macs == info.macs
    assert g.param_bytes == info.param_bytes


@pytest.mark.parametrize(
    ("group", "c_out", "expected"),
    [
        (8, 8, 8 * 8 * 8 * 3 * 3),  # depthwise: one input channel per output
        (8, 16, 16 * 8 * 8 * 3 * 3),  # depthwise with channel multiplier 2
        (2, 8, 8 * 8 * 8 * (8 // 2) * 3 * 3),  # grouped: c_in / group input channels per output
    ],
)
def test_grouped_and_depthwise_conv_macs(group: int, c_out: int, expected: int) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1] * 4, group=group)
    w = const("w", np.ones((c_out, 8 // group, 3, 3)))
    g = single(node, [tensor("x", [1, 8, 8, 8])], [1, c_out, 8, 8], [w])
    assert g.node("conv").macs == expected


def test_conv1d_macs() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3], pads=[1, 1])
    g = single(node, [tensor("x", [1, 3, 10])], [1, 8, 10], [const("w", np.ones((8, 3, 3)))])
    assert g.node("conv").macs == 10 * 8 * 3 * 3


@pytest.mark.parametrize(
    ("group", "weight_shape", "out_shape", "expected"),
    [
        # every input element is scattered into c_out/group output channels x kernel positions
        (1, (4, 6, 3, 3), [1, 6, 11, 11], 4 * 5 * 5 * 6 * 3 * 3),
        (2, (4, 3, 3, 3), [1, 6, 11, 11], 4 * 5 * 5 * 3 * 3 * 3),
    ],
)
def test_conv_transpose_macs(group: int, weight_shape: tuple, out_shape: list[int], expected: int) -> None:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", strides=[2, 2], group=group)
    g = single(node, [tensor("x", [1, 4, 5, 5])], out_shape, [const("w", np.ones(weight_shape))])
    assert g.tensors["y"].shape == out_shape
    assert g.node("deconv").macs == expected


def test_gemm_macs_plain_and_transposed() -> None:
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    g = single(node, [tensor("x", [1, 64])], [1, 10], [const("w", np.ones((64, 10))), const("b", np.zeros(10))])
    assert g.node("fc").macs == 64 * 10
    assert g.node("fc").param_count == 64 * 10 + 10

    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=1, transB=1)
    g = single(node, [tensor("x", [5, 4])], [4, 6], [const("w", np.ones((6, 5)))])
    assert g.node("fc").macs == 4 * 6 * 5  # M=4 rows of A^T, N=6, K=5


def test_batched_matmul_macs() -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="bmm")
    g = single(node, [tensor("a", [2, 3, 4, 5]), tensor("b", [2, 3, 5, 6])], [2, 3, 4, 6])
    assert g.node("bmm").macs == 2 * 3 * 4 * 6 * 5
    assert g.node("bmm").param_count == 0  # two activations: no weights


def test_matmul_with_vector_operand() -> None:
    node = helper.make_node("MatMul", ["a", "v"], ["y"], name="mv")
    g = single(node, [tensor("a", [4, 5])], [4], [const("v", np.ones(5))])
    assert g.node("mv").macs == 4 * 5


@pytest.mark.parametrize(
    ("attrs", "x_shape", "directions"),
    [({}, [7, 2, 3], 1), ({"direction": "bidirectional"}, [7, 2, 3], 2), ({"layout": 1}, [2, 7, 3], 1)],
)
def test_lstm_macs(attrs: dict, x_shape: list[int], directions: int) -> None:
    seq, batch, features, hidden = 7, 2, 3, 5
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=hidden, **attrs)
    w = const("W", np.ones((directions, 4 * hidden, features)))
    r = const("R", np.ones((directions, 4 * hidden, hidden)))
    out = [batch, seq, directions, hidden] if attrs.get("layout") else [seq, directions, batch, hidden]
    g = single(node, [tensor("x", x_shape)], out, [w, r])
    info = g.node("lstm")
    assert info.macs == directions * seq * batch * 4 * hidden * (features + hidden)
    assert info.param_count == directions * 4 * hidden * (features + hidden)


def test_gru_macs() -> None:
    seq, batch, features, hidden = 7, 2, 3, 5
    node = helper.make_node("GRU", ["x", "W", "R"], ["y"], name="gru", hidden_size=hidden)
    w, r = const("W", np.ones((1, 3 * hidden, features))), const("R", np.ones((1, 3 * hidden, hidden)))
    g = single(node, [tensor("x", [seq, batch, features])], [seq, 1, batch, hidden], [w, r])
    assert g.node("gru").macs == seq * batch * 3 * hidden * (features + hidden)


def test_pooling_and_element_ops() -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p"], ["a"], name="avgpool", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "bias"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["y"], name="flatten"),
    ]
    model = build(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 3])], [const("bias", np.ones((3, 1, 1)))])
    g = load_model(model)
    out_elems = 3 * 4 * 4
    assert g.node("maxpool").macs == out_elems * 4
    assert g.node("avgpool").macs == out_elems * 9
    assert g.node("relu").macs == out_elems
    assert g.node("add").macs == out_elems
    assert g.node("gap").macs == out_elems  # one per input element
    assert g.node("flatten").macs == 0  # data movement
    assert all(n.macs_exact for n in g.nodes())


def test_small_convnet_totals_by_hand() -> None:
    g = load_model(zoo.small_convnet(size=32, classes=10))
    conv1 = 32 * 32 * 16 * 3 * 9
    pool = 16 * 16 * 16 * 4
    conv2 = 16 * 16 * 32 * 16 * 9
    relus = 16 * 32 * 32 + 32 * 16 * 16
    gap = 32 * 16 * 16
    gemm = 32 * 10
    assert g.total_macs == conv1 + pool + conv2 + relus + gap + gemm
    params = (16 * 3 * 9 + 16) + (32 * 16 * 9 + 32) + (32 * 10 + 10)
    assert sum(n.param_count for n in g.compute_nodes()) == params
    assert g.param_bytes == 4 * params


# --- tensors, shapes, attributes, order -----------------------------------------------------------


def test_node_records_op_attributes_and_tensors() -> None:
    g = load_model(zoo.small_convnet(size=32, classes=10))
    first = g.nodes()[0]
    assert first.op_type == "Conv"
    assert first.domain == ""
    assert first.attributes["kernel_shape"] == [3, 3]
    assert first.attributes["pads"] == [1, 1, 1, 1]
    assert first.inputs[0] == "input"
    out = g.tensors[first.outputs[0]]
    assert out.dtype == "float"
    assert out.shape == [1, 16, 32, 32]  # from shape inference: the model declares no value_info
    assert g.inputs[0].name == "input"
    assert g.outputs[0].shape == [1, 10]
    assert g.opset == zoo.OPSET
    assert g.symbolic_dims == []
    assert not g.has_dynamic_shapes


def test_symbolic_dims_are_kept_and_reported() -> None:
    g = load_model(zoo.mobilenet_style(size=64, width=16, batch="N"))
    assert g.symbolic_dims == ["N"]
    assert g.has_dynamic_shapes
    assert g.inputs[0].shape == ["N", 3, 64, 64]
    first = g.nodes()[0]
    assert g.tensors[first.outputs[0]].shape == ["N", 16, 32, 32]
    assert not first.macs_exact  # counted with the unknown batch taken as 1
    assert first.macs == 32 * 32 * 16 * 3 * 9


def test_custom_domain_op_keeps_its_domain() -> None:
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.acme", level=3)
    graph = helper.make_graph([node], "g", [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    model.ir_version = 9
    info = load_model(model).node("fancy")
    assert (info.domain, info.key, info.attributes) == ("com.acme", "com.acme.FancyOp", {"level": 3})


def test_topological_order_follows_the_file_and_the_edges() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="a"),
        helper.make_node("Sigmoid", ["x"], ["b"], name="b"),
        helper.make_node("Add", ["a", "b"], ["c"], name="c"),
        helper.make_node("Relu", ["c"], ["d"]),  # unnamed
        helper.make_node("Relu", ["d"], ["e"], name="a_dup"),
    ]
    g = load_model(build(nodes, [tensor("x", [1, 4])], [tensor("e", [1, 4])]))
    assert g.order == ["a", "b", "c", "Relu_3", "a_dup"]
    position = {name: i for i, name in enumerate(g.order)}
    assert all(position[u] < position[v] for u, v in g.graph.edges())
    assert g.graph.edges["a", "c"]["tensor"] == "a"


def test_an_edge_carries_every_tensor_between_two_nodes() -> None:
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="split", axis=1),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    model = build(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 4])], [const("sizes", [4, 4], np.int64)])
    edge = load_model(model).graph.edges["split", "add"]
    assert edge["tensors"] == ["a", "b"]
    assert edge["tensor"] == "a"


def test_duplicate_node_names_are_made_unique_in_the_graph_and_refused_on_load() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n"), helper.make_node("Relu", ["a"], ["y"], name="n")]
    model = build(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    g = build_graph(model)  # a produced model is analysed with unique names
    assert g.order == ["n", "n__1"]
    assert g.graph.has_edge("n", "n__1")
    with pytest.raises(ModelLoadError, match="node name 'n' is used by 2 nodes"):
        load_model(model)  # onnxruntime would refuse it later


def test_dtype_itemsize() -> None:
    assert [dtype_itemsize(d) for d in ("float", "float16", "int8", "int64", "bool")] == [4, 2, 1, 8, 1]
    assert dtype_itemsize("string") == 0
    assert dtype_itemsize("nonsense") == 0


# --- weights through constant chains --------------------------------------------------------------


def test_weights_through_constant_transpose_cast_chain() -> None:
    g = load_model(zoo.transposed_weight_mlp(features=32, hidden=64))
    path = [g.node(n) for n in ("weight_const", "weight_transpose", "weight_cast")]
    assert all(n.weight_path and n.macs == 0 for n in path)
    assert [n.name for n in g.compute_nodes()] == ["fc1", "relu1", "logits"]
    fc1 = g.node("fc1")
    assert fc1.weight_inputs == ["weight_cast_out"]
    assert fc1.param_count == 32 * 64
    assert fc1.param_bytes == 32 * 64 * 4  # float32 after the Cast
    assert fc1.macs == 32 * 64
    assert "weight_cast_out" in g.constants
    assert g.tensors["weight_cast_out"].shape == [32, 64]


@pytest.mark.parametrize("chain", ["Identity", "Reshape", "DequantizeLinear"])
def test_weights_through_identity_reshape_dequantize(chain: str) -> None:
    if chain == "Identity":
        inits = [const("w0", np.ones((8, 4)))]
        path = helper.make_node("Identity", ["w0"], ["w"], name="path")
    elif chain == "Reshape":
        inits = [const("w0", np.ones(32)), const("shape", [8, 4], np.int64)]
        path = helper.make_node("Reshape", ["w0", "shape"], ["w"], name="path")
    else:
        inits = [const("w0", np.ones((8, 4)), np.int8), const("scale", 0.1)]
        path = helper.make_node("DequantizeLinear", ["w0", "scale"], ["w"], name="path")
    mm = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    g = load_model(build([path, mm], [tensor("x", [1, 8])], [tensor("y", [1, 4])], inits))
    assert g.node("path").weight_path
    assert g.node("mm").weight_inputs == ["w"]
    assert g.node("mm").param_count == 32
    assert [n.name for n in g.compute_nodes()] == ["mm"]


def test_op_on_an_activation_is_not_a_weight_path() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["t", "w"], ["y"], name="mm"),
    ]
    g = load_model(build(nodes, [tensor("x", [8, 1])], [tensor("y", [1, 4])], [const("w", np.ones((8, 4)))]))
    assert not g.node("t").weight_path
    assert "t" not in g.constants


# --- control flow ---------------------------------------------------------------------------------


def test_loop_counts_trips_times_body() -> None:
    g = load_model(zoo.loop_model(trips=8, dim=32))
    loop = g.node("loop")
    assert loop.subgraph is not None
    assert loop.subgraph.op_counts == {"MatMul": 1, "Tanh": 1, "Identity": 1}
    body = 32 * 32 + 32  # MatMul [1,32]x[32,32] + Tanh
    assert loop.macs == 8 * body
    assert loop.macs_exact
    assert loop.subgraph.macs_per == "call"
    assert loop.subgraph.param_count == 32 * 32  # the body's weight
    assert loop.param_count >= 32 * 32
    assert g.total_macs == 8 * body + 32  # + the Relu head


def test_loop_with_data_dependent_trip_count_counts_per_iteration() -> None:
    model = zoo.loop_model(trips=8, dim=32)
    model.graph.input.append(tensor("M", [], TensorProto.INT64))
    model.graph.node[0].input[0] = "M"
    loop = load_model(model).node("loop")
    assert loop.subgraph is not None and loop.subgraph.macs_per == "iteration"
    assert loop.macs == 32 * 32 + 32
    assert not loop.macs_exact


def test_loop_body_with_a_symbolic_dim_is_not_exact() -> None:
    model = zoo.loop_model(trips=8, dim=32)
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    for value in [*body.input, *body.output]:
        if value.name in ("state_in", "state_out"):
            value.type.tensor_type.shape.dim[0].dim_param = "B"
    loop = load_model(model).node("loop")
    assert loop.macs == 8 * (32 * 32 + 32)  # the unknown dimension taken as 1
    assert loop.subgraph is not None and not loop.subgraph.macs_exact
    assert not loop.macs_exact


def _if_model() -> onnx.ModelProto:
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["t"], name="then_mm")], "then", [], [tensor("t", [1, 4])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["e"], name="else_relu")], "else", [], [tensor("e", [1, 4])]
    )
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["h"], name="pre"),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
    ]
    inputs = [tensor("c", [], TensorProto.BOOL), tensor("x", [1, 4])]
    return build(nodes, inputs, [tensor("y", [1, 4])], [const("W", np.ones((4, 4)))])


def test_if_records_both_branches_and_counts_the_costlier() -> None:
    g = load_model(_if_model())
    node = g.node("branch")
    assert node.subgraph is not None
    assert node.subgraph.op_counts == {"MatMul": 1, "Relu": 1}
    assert node.macs == 4 * 4  # MatMul [1,4]x[4,4] beats Relu's 4
    assert node.subgraph.param_count == 16  # W, read from the outer scope by the then-branch
    # The branch reads `h` from the outer scope: the edge keeps the execution order right.
    assert g.graph.has_edge("pre", "branch")
    assert g.order == ["pre", "branch"]


def test_scan_counts_iterations_times_body() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "xi"], ["s_out"], name="acc"),
            helper.make_node("Identity", ["s_out"], ["yo"], name="copy"),
        ],
        "body",
        [tensor("s_in", [4]), tensor("xi", [4])],
        [tensor("s_out", [4]), tensor("yo", [4])],
    )
    scan = helper.make_node("Scan", ["s0", "xs"], ["sf", "ys"], name="scan", body=body, num_scan_inputs=1)
    model = build([scan], [tensor("s0", [4]), tensor("xs", [5, 4])], [tensor("sf", [4]), tensor("ys", [5, 4])])
    node = load_model(model).node("scan")
    assert node.subgraph is not None and node.subgraph.op_counts == {"Add": 1, "Identity": 1}
    assert node.macs == 5 * 4


# --- external data --------------------------------------------------------------------------------


def _external(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(
        zoo.mlp(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def _relocate(path: Path, location: str, name: str = "moved.onnx", **extra: str) -> Path:
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
            elif entry.key in extra:
                entry.value = extra[entry.key]
    out = path.parent / name
    onnx.save(proto, str(out))
    return out


def test_external_data_in_the_model_folder_loads(tmp_path: Path) -> None:
    path = _external(tmp_path)
    assert (path.parent / "weights.bin").stat().st_size > 500_000
    assert path.stat().st_size < 10_000
    g = load_model(path)
    inline = load_model(zoo.mlp())
    assert g.param_bytes == inline.param_bytes > 0
    assert g.total_macs == inline.total_macs
    assert np.array_equal(g.constant_value("w1"), inline.constant_value("w1"))


def test_external_data_in_a_subfolder_loads(tmp_path: Path) -> None:
    path = _external(tmp_path)
    (path.parent / "data").mkdir()
    os.replace(path.parent / "weights.bin", path.parent / "data" / "weights.bin")
    assert load_model(_relocate(path, "data/weights.bin")).param_bytes == load_model(zoo.mlp()).param_bytes


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, where: str) -> None:
    path = _external(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((path.parent / "weights.bin").read_bytes())  # a perfectly valid file, in the wrong place
    if where == "parent":
        location = "../outside.bin"
    elif where == "absolute":
        location = str(outside)
    else:
        (path.parent / "link.bin").symlink_to(outside)
        location = "link.bin"
    bad = _relocate(path, location)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(bad)


def test_missing_external_data_file(tmp_path: Path) -> None:
    path = _external(tmp_path)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(path)


def test_truncated_external_data_file(tmp_path: Path) -> None:
    path = _external(tmp_path)
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(path)


# --- bad input ------------------------------------------------------------------------------------


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="not a file"):
        load_model(tmp_path)


def _first_half_of_a_model() -> bytes:
    raw = zoo.small_convnet().SerializeToString()
    return raw[: len(raw) // 2]


@pytest.mark.parametrize(
    "content",
    [lambda: b"", lambda: b"\x00" * 64, lambda: os.urandom(2048), lambda: b"name: not onnx\n", _first_half_of_a_model],
    ids=["empty", "zeros", "random", "text", "truncated"],
)
def test_not_an_onnx_model(tmp_path: Path, content: Callable[[], bytes]) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content())
    with pytest.raises(ModelLoadError, match="not an ONNX model") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_checker_failure_is_one_line(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["undefined"], ["y"], name="relu")
    graph = helper.make_graph([node], "g", [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    with pytest.raises(ModelLoadError, match="fails the ONNX checker") as info:
        load_model(save(model, tmp_path))
    assert "\n" not in str(info.value)


def test_loading_leaves_the_proto_and_the_file_untouched(tmp_path: Path) -> None:
    model = zoo.small_convnet()
    before = model.SerializeToString()
    load_model(model)
    assert model.SerializeToString() == before  # shape inference worked on a copy
    path = save(model, tmp_path)
    stat = path.stat()
    load_model(path)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
