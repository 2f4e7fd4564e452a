"""Small synthetic models of the common families, built with onnx.helper.

They exercise the analysis the way real exported models do (depthwise convolutions, attention blocks, recurrent
cells, weights routed through Transpose) and are used by the tests, the benchmarks and the decision matrix. Weights
are random but deterministic (seeded) and scaled so activations stay in a sane range.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # what onnxruntime 1.16+ loads


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        scale = np.sqrt(2.0 / max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def bias(self, size: int) -> str:
        return self.const((self.rng.standard_normal(size) * 0.05).astype(np.float32), "b")

    def op(self, op_type: str, inputs: list[str], n_outputs: int = 1, name: str | None = None, **attrs: object) -> str:
        node_name = name or self.name(op_type.lower())
        outputs = [f"{node_name}_out{i}" if i else f"{node_name}_out" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=node_name, **attrs))
        return outputs[0]

    def conv(self, x: str, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, group: int = 1) -> str:
        w = self.weight((c_out, c_in // group, kernel, kernel), fan_in=(c_in // group) * kernel * kernel)
        pad = kernel // 2
        return self.op(
            "Conv",
            [x, w, self.bias(c_out)],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=group,
        )

    def gemm(self, x: str, n_in: int, n_out: int) -> str:
        return self.op("Gemm", [x, self.weight((n_in, n_out), fan_in=n_in), self.bias(n_out)])

    def matmul(self, x: str, n_in: int, n_out: int) -> str:
        return self.op("MatMul", [x, self.weight((n_in, n_out), fan_in=n_in)])

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str) -> ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="autoptq.model.zoo"
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def _io(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def small_convnet(size: int = 32, classes: int = 10, seed: int = 0) -> ModelProto:
    """Two 3x3 convolutions with pooling and a classifier: a typical small vision model."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("input", 3, 16)])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Relu", [b.conv(x, 16, 32)])
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x])
    b.op("Gemm", [x, b.weight((32, classes), 32), b.bias(classes)], name="logits")
    return b.model([_io("input", [1, 3, size, size])], [_io("logits_out", [1, classes])], "small_convnet")


def mobilenet_style(
    size: int = 64,
    width: int = 16,
    blocks: int = 6,
    classes: int = 10,
    leaky_after_first: bool = False,
    batch: int | str = 1,
    seed: int = 0,
) -> ModelProto:
    """A MobileNet-v1-style network: a strided stem, depthwise-separable blocks with Relu6, pooling, classifier.

    `leaky_after_first` swaps the stem's activation for LeakyRelu (the classic Edge TPU first-cut culprit);
    `batch` may be a name to make the batch dimension dynamic.
    """
    b = _Builder(seed)
    x = b.conv("input", 3, width, stride=2)
    if leaky_after_first:
        x = b.op("LeakyRelu", [x], alpha=0.1)
    else:
        x = b.op("Clip", [x, b.const(np.array(0.0, np.float32), "lo"), b.const(np.array(6.0, np.float32), "hi")])
    channels = width
    for index in range(blocks):
        stride = 2 if index in (1, 3, 5, 7) else 1  # at most four downsamplings after the stem, as in MobileNet
        x = b.conv(x, channels, channels, stride=stride, group=channels)
        x = b.op("Clip", [x, b.const(np.array(0.0, np.float32), "lo"), b.const(np.array(6.0, np.float32), "hi")])
        out_channels = channels * 2 if stride == 2 else channels
        x = b.conv(x, channels, out_channels, kernel=1)
        x = b.op("Clip", [x, b.const(np.array(0.0, np.float32), "lo"), b.const(np.array(6.0, np.float32), "hi")])
        channels = out_channels
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x])
    x = b.op("Gemm", [x, b.weight((channels, classes), channels), b.bias(classes)], name="classifier")
    b.op("Softmax", [x], name="probs", axis=-1)
    return b.model([_io("input", [batch, 3, size, size])], [_io("probs_out", [batch, classes])], "mobilenet_style")


def transformer_block(seq: int = 32, dim: int = 64, heads: int = 4, ffn: int = 256, seed: int = 0) -> ModelProto:
    """One pre-norm transformer encoder block: attention with Softmax, an Erf-GELU feed-forward, residuals."""
    b = _Builder(seed)
    head_dim = dim // heads
    ln1 = b.op("LayerNormalization", ["input", b.const(np.ones(dim, np.float32)), b.bias(dim)], axis=-1)

    def heads_of(t: str) -> str:
        t = b.op("Reshape", [t, b.const(np.array([1, seq, heads, head_dim], np.int64), "shape")])
        return b.op("Transpose", [t], perm=[0, 2, 1, 3])

    q, k, v = (heads_of(b.matmul(ln1, dim, dim)) for _ in range(3))
    k_t = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = b.op("MatMul", [q, k_t])
    scores = b.op("Mul", [scores, b.const(np.array(1.0 / np.sqrt(head_dim), np.float32), "scale")])
    attn = b.op("Softmax", [scores], axis=-1)
    ctx = b.op("MatMul", [attn, v])
    ctx = b.op("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.const(np.array([1, seq, dim], np.int64), "shape")])
    x = b.op("Add", ["input", b.matmul(ctx, dim, dim)])
    ln2 = b.op("LayerNormalization", [x, b.const(np.ones(dim, np.float32)), b.bias(dim)], axis=-1)
    h = b.op("Add", [b.matmul(ln2, dim, ffn), b.bias(ffn)])
    erf = b.op("Erf", [b.op("Div", [h, b.const(np.array(np.sqrt(2.0), np.float32), "sqrt2")])])
    gelu = b.op("Mul", [b.op("Mul", [h, b.op("Add", [erf, b.const(np.array(1.0, np.float32), "one")])]),
                        b.const(np.array(0.5, np.float32), "half")])  # fmt: skip
    b.op("Add", [x, b.matmul(gelu, ffn, dim)], name="block")
    return b.model([_io("input", [1, seq, dim])], [_io("block_out", [1, seq, dim])], "transformer_block")


def text_encoder(
    vocab: int = 1000, seq: int = 16, dim: int = 64, ffn: int = 256, layers: int = 2, seed: int = 0
) -> ModelProto:
    """A tiny sentence encoder: token ids -> embedding table (Gather) + positions -> pre-norm feed-forward blocks
    (LayerNorm, MatMul, Relu) -> mean pooling: the pieces that decide weight-only quantization of a
    transformer encoder (MatMul weights and the embedding table)."""
    b = _Builder(seed)
    table = b.const((b.rng.standard_normal((vocab, dim)) * 0.5).astype(np.float32), "embeddings")
    x = b.op("Gather", [table, "input_ids"], name="word_embeddings")
    x = b.op("Add", [x, b.const((b.rng.standard_normal((1, seq, dim)) * 0.1).astype(np.float32), "positions")])
    for _ in range(layers):
        norm = b.op("LayerNormalization", [x, b.const(np.ones(dim, np.float32)), b.bias(dim)], axis=-1)
        h = b.op("Relu", [b.op("Add", [b.matmul(norm, dim, ffn), b.bias(ffn)])])
        x = b.op("Add", [x, b.matmul(h, ffn, dim)])
    b.op("ReduceMean", [x], axes=[1], keepdims=0, name="embedding")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])]
    return b.model(inputs, [_io("embedding_out", [1, dim])], "text_encoder")


def lstm_model(seq: int = 20, features: int = 32, hidden: int = 64, classes: int = 8, seed: int = 0) -> ModelProto:
    """A forward LSTM over a sequence, classifying from the last hidden state."""
    b = _Builder(seed)
    w = b.const((b.rng.standard_normal((1, 4 * hidden, features)) * 0.2).astype(np.float32))
    r = b.const((b.rng.standard_normal((1, 4 * hidden, hidden)) * 0.2).astype(np.float32))
    bias = b.const((b.rng.standard_normal((1, 8 * hidden)) * 0.05).astype(np.float32), "b")
    b.nodes.append(
        helper.make_node("LSTM", ["input", w, r, bias], ["lstm_y", "lstm_h"], name="lstm", hidden_size=hidden)
    )
    last = b.op("Reshape", ["lstm_h", b.const(np.array([1, hidden], np.int64), "shape")])
    b.op("Gemm", [last, b.weight((hidden, classes), hidden), b.bias(classes)], name="logits")
    return b.model([_io("input", [seq, 1, features])], [_io("logits_out", [1, classes])], "lstm_model")


def mlp(features: int = 64, hidden: int = 256, layers: int = 3, classes: int = 10, seed: int = 0) -> ModelProto:
    """Fully connected layers with Relu: weight-bound compute."""
    b = _Builder(seed)
    x, width = "input", features
    for _ in range(layers):
        x = b.op("Relu", [b.gemm(x, width, hidden)])
        width = hidden
    b.op("Gemm", [x, b.weight((width, classes), width), b.bias(classes)], name="logits")
    return b.model([_io("input", [1, features])], [_io("logits_out", [1, classes])], "mlp")


def transposed_weight_mlp(features: int = 32, hidden: int = 64, seed: int = 0) -> ModelProto:
    """An MLP whose weights reach MatMul through Constant -> Transpose -> Cast, as some exporters write them."""
    b = _Builder(seed)
    raw = (b.rng.standard_normal((hidden, features)) * 0.2).astype(np.float16)
    const = b.op("Constant", [], value=numpy_helper.from_array(raw, "raw"), name="weight_const")
    transposed = b.op("Transpose", [const], perm=[1, 0], name="weight_transpose")
    cast = b.op("Cast", [transposed], to=TensorProto.FLOAT, name="weight_cast")
    x = b.op("Relu", [b.op("MatMul", ["input", cast], name="fc1")])
    b.op("Gemm", [x, b.weight((hidden, 4), hidden), b.bias(4)], name="logits")
    return b.model([_io("input", [1, features])], [_io("logits_out", [1, 4])], "transposed_weight_mlp")


def loop_model(trips: int = 8, dim: int = 32, seed: int = 0) -> ModelProto:
    """A Loop whose body holds the compute (MatMul + Tanh) run a constant number of times."""
    b = _Builder(seed)
    weight = (b.rng.standard_normal((dim, dim)) * 0.1).astype(np.float32)
    body_w = numpy_helper.from_array(weight, "body_w")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state_in", "body_w"], ["mm"], name="body_matmul"),
            helper.make_node("Tanh", ["mm"], ["state_out"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [1]),
            _io("state_in", [1, dim]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [1]), _io("state_out", [1, dim])],
        [body_w],
    )
    trip_count = b.const(np.array(trips, np.int64), "trips")
    cond = b.const(np.array(True), "cond")
    b.nodes.append(helper.make_node("Loop", [trip_count, cond, "input"], ["loop_out"], name="loop", body=body))
    b.op("Relu", ["loop_out"], name="head")
    return b.model([_io("input", [1, dim])], [_io("head_out", [1, dim])], "loop_model")


def chain_of_blocks(blocks: int = 2500, dim: int = 16, seed: int = 0) -> ModelProto:
    """A long chain of small Conv/Relu/Add/Mul blocks, for measuring analysis time on 10,000+ node graphs."""
    b = _Builder(seed)
    x = "input"
    for _ in range(blocks):
        y = b.op("Relu", [b.conv(x, dim, dim, kernel=1)])
        y = b.op("Mul", [y, b.const(np.array(0.5, np.float32), "half")])
        x = b.op("Add", [x, y])
    b.op("Identity", [x], name="output")
    return b.model([_io("input", [1, dim, 8, 8])], [_io("output_out", [1, dim, 8, 8])], "chain_of_blocks")


FAMILIES: dict[str, Callable[[], ModelProto]] = {
    "small convnet (32x32, 1.7M MACs)": small_convnet,
    "MobileNet-style (224x224, width 32)": lambda: mobilenet_style(size=224, width=32, blocks=10, classes=1000),
    "transformer encoder block (128 x 256)": lambda: transformer_block(seq=128, dim=256, heads=4, ffn=1024),
    "LSTM (50 steps, 256 hidden)": lambda: lstm_model(seq=50, features=64, hidden=256),
    "MLP (784-1024-1024-10)": lambda: mlp(features=784, hidden=1024, layers=2),
}
"""The model families of the decision matrix, at sizes typical of deployed models."""
