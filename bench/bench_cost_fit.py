"""Calibrate the latency roofline on published figures: the Coral Edge TPU benchmark table.

The models of coral.ai/docs/edgetpu/benchmarks are rebuilt as *shape-only* ONNX graphs: every layer of the published
architecture (MobileNet v1/v2, Inception v1/v4, ResNet-50, VGG16, SSDLite-MobileNet v2, and two held-out checks), with
initializers that carry a dtype and dims but no values. The cost model only reads MACs, parameter counts, op counts
and activation sizes, which the graph analysis takes from shapes; VGG16's 138M parameters therefore cost nothing to
build. The graphs are analysed with `build_graph(infer_shapes(model))` (the ONNX checker, which wants values, is
skipped): they are not runnable models.

Then:
- the Edge TPU's fixed overhead and effective int8 MAC rate are fitted to the USB Accelerator column (least squares
  of ln(estimate / published) over six models), with the per-op overhead, streaming bandwidth and cache held at the
  profile's values; other choices (per-op overhead free, streaming and cache free, the SSD included) are reported as
  a sensitivity table;
- leave-one-out refits give the predictive error; VGG19 and ResNet-152 are held out (checked, not fitted); MobileNet
  v2 SSD is excluded from the fit (its post-processing runs on the host CPU, outside the graph) but still reported;
- the tables themselves come from estimate_latency with the *shipped* profile, so they check the YAML constants;
- the arm-a53 fp32 efficiency is fitted to the "Embedded CPU" column (Cortex-A53); the desktop-CPU column is compared
  with the x86 profiles as a cross-check only (docs/cost-model.md says why it is not fitted).

The tables are printed and written to bench/results/cost_fit.md.

Run: python bench/bench_cost_fit.py [--quick]
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, ValueInfoProto, helper

from autoptq.devices.cost import LatencyEstimate, estimate_latency
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile, Precision, load_profile
from autoptq.model.graph import ModelGraph, build_graph, infer_shapes

NAME = "cost_fit"
CLASSES = 1000

# --- shape-only model builder ---


@dataclass(frozen=True)
class Act:
    """An activation tensor: its name, channels and spatial size (NCHW, batch 1)."""

    name: str
    c: int
    h: int
    w: int


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow SAME padding: (output size, pad before, pad after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def _valid(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class Net:
    """Accumulates nodes and shape-only initializers; tracks shapes so layers chain without shape inference."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[ValueInfoProto] = []
        self.outputs: list[ValueInfoProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _weight(self, dims: Sequence[int]) -> str:
        tensor = TensorProto()
        tensor.name = self._name("w")
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(int(d) for d in dims)  # shape only: no values (see the module docstring)
        self.initializers.append(tensor)
        return tensor.name

    def _node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def input(self, channels: int, size: int) -> Act:
        self.inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size]))
        return Act("input", channels, size, size)

    def _window(self, x: Act, k: tuple[int, int], stride: int, pad: str) -> tuple[int, int, list[int]]:
        if pad == "valid":
            return _valid(x.h, k[0], stride), _valid(x.w, k[1], stride), [0, 0, 0, 0]
        oh, top, bottom = _same_pads(x.h, k[0], stride)
        ow, left, right = _same_pads(x.w, k[1], stride)
        return oh, ow, [top, left, bottom, right]

    def conv(
        self, x: Act, c_out: int, k: int | tuple[int, int] = 3, stride: int = 1, group: int = 1, pad: str = "same",
        act: bool = True,
    ) -> Act:  # fmt: skip
        """Conv (+ bias, BatchNorm folded) and, with `act`, a Relu."""
        kernel = (k, k) if isinstance(k, int) else k
        oh, ow, pads = self._window(x, kernel, stride, pad)
        w = self._weight([c_out, x.c // group, *kernel])
        b = self._weight([c_out])
        y = self._node("Conv", [x.name, w, b], kernel_shape=list(kernel), strides=[stride, stride], pads=pads,
                       group=group)  # fmt: skip
        if act:
            y = self._node("Relu", [y])
        return Act(y, c_out, oh, ow)

    def dw(self, x: Act, stride: int = 1, act: bool = True) -> Act:
        """Depthwise 3x3 convolution."""
        return self.conv(x, x.c, 3, stride, group=x.c, act=act)

    def pool(self, x: Act, kind: str = "MaxPool", k: int = 3, stride: int = 2, pad: str = "same") -> Act:
        oh, ow, pads = self._window(x, (k, k), stride, pad)
        extra: dict[str, Any] = {"count_include_pad": 0} if kind == "AveragePool" else {}
        y = self._node(kind, [x.name], kernel_shape=[k, k], strides=[stride, stride], pads=pads, **extra)
        return Act(y, x.c, oh, ow)

    def add(self, a: Act, b: Act, act: bool = False) -> Act:
        y = self._node("Add", [a.name, b.name])
        return Act(self._node("Relu", [y]) if act else y, a.c, a.h, a.w)

    def concat(self, parts: Sequence[Act]) -> Act:
        return Act(
            self._node("Concat", [p.name for p in parts], axis=1), sum(p.c for p in parts), parts[0].h, parts[0].w
        )

    def flatten(self, x: Act) -> Act:
        return Act(self._node("Flatten", [x.name], axis=1), x.c * x.h * x.w, 1, 1)

    def gemm(self, x: Act, n_out: int, act: bool = False) -> Act:
        y = self._node("Gemm", [x.name, self._weight([x.c, n_out]), self._weight([n_out])])
        return Act(self._node("Relu", [y]) if act else y, n_out, 1, 1)

    def classifier(self, x: Act, hidden: Sequence[int] = ()) -> None:
        """Global average pool (unless already flat), fully connected layers, Softmax: the graph's output."""
        x = self.flatten(self._gap(x) if x.h > 1 and not hidden else x)
        for width in hidden:
            x = self.gemm(x, width, act=True)
        self.finish([self._node("Softmax", [self.gemm(x, CLASSES).name], axis=-1)])

    def _gap(self, x: Act) -> Act:
        return Act(self._node("GlobalAveragePool", [x.name]), x.c, 1, 1)

    def finish(self, outputs: Sequence[str]) -> None:
        self.outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]

    def graph(self) -> ModelGraph:
        g = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_cost_fit")
        model.ir_version = 9
        return build_graph(infer_shapes(model))


def mobilenet_v1() -> Net:
    """MobileNet v1 1.0 224 (Howard et al. 2017, Table 1)."""
    net = Net("mobilenet_v1")
    x = net.conv(net.input(3, 224), 32, 3, 2)
    for c, s in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]:
        x = net.conv(net.dw(x, s), c, 1)
    net.classifier(x)
    return net


def _inverted_residual(net: Net, x: Act, t: int, c: int, s: int) -> tuple[Act, Act]:
    """MobileNet v2 block; returns (output, expansion output)."""
    e = net.conv(x, x.c * t, 1) if t != 1 else x
    y = net.conv(net.dw(e, s), c, 1, act=False)
    return (net.add(x, y) if s == 1 and x.c == c else y), e


MOBILENET_V2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
"""(expansion t, channels c, repeats n, first stride s): Sandler et al. 2018, Table 2."""


def _mobilenet_v2_body(net: Net, size: int) -> tuple[Act, Act]:
    """The MobileNet v2 feature extractor; returns (the 1280-channel output, the expansion of block 13)."""
    x = net.conv(net.input(3, size), 32, 3, 2)
    tap = x
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            x, e = _inverted_residual(net, x, t, c, s if i == 0 else 1)
            if c == 160 and i == 0:
                tap = e  # 576 channels at stride 16: SSDLite's first feature map
    return net.conv(x, 1280, 1), tap


def mobilenet_v2() -> Net:
    """MobileNet v2 1.0 224."""
    net = Net("mobilenet_v2")
    x, _ = _mobilenet_v2_body(net, 224)
    net.classifier(x)
    return net


def ssdlite_mobilenet_v2() -> Net:
    """SSDLite on MobileNet v2 at 300x300 (Sandler et al. 2018, section 6.2): depthwise-separable extra layers and
    box/class heads on six feature maps (19, 10, 5, 3, 2, 1), 91 COCO classes; the anchor decoding and NMS
    (TFLite_Detection_PostProcess on the CPU) are not part of the graph."""
    net = Net("ssdlite_mobilenet_v2")
    x, tap = _mobilenet_v2_body(net, 300)
    maps = [tap, x]
    for mid, out in [(256, 512), (128, 256), (128, 256), (64, 128)]:
        x = net.conv(net.dw(net.conv(x, mid, 1), 2), out, 1)
        maps.append(x)
    boxes, scores = [], []
    for feature, anchors in zip(maps, [3, 6, 6, 6, 6, 6], strict=True):
        boxes.append(net.flatten(net.conv(net.dw(feature), anchors * 4, 1, act=False)))
        scores.append(net.flatten(net.conv(net.dw(feature), anchors * 91, 1, act=False)))
    net.finish([net.concat(boxes).name, net.concat(scores).name])
    return net


def inception_v1() -> Net:
    """Inception v1 (GoogLeNet, TF-slim variant: 3x3 instead of 5x5 in the third branch) at 224."""
    net = Net("inception_v1")
    x = net.pool(net.conv(net.input(3, 224), 64, 7, 2))
    x = net.pool(net.conv(net.conv(x, 64, 1), 192, 3))

    def mixed(x: Act, b0: int, b1a: int, b1: int, b2a: int, b2: int, b3: int) -> Act:
        return net.concat(
            [
                net.conv(x, b0, 1),
                net.conv(net.conv(x, b1a, 1), b1, 3),
                net.conv(net.conv(x, b2a, 1), b2, 3),
                net.conv(net.pool(x, k=3, stride=1), b3, 1),
            ]
        )

    x = mixed(mixed(x, 64, 96, 128, 16, 32, 32), 128, 128, 192, 32, 96, 64)
    x = net.pool(x)
    for spec in [(192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
                 (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)]:  # fmt: skip
        x = mixed(x, *spec)
    x = net.pool(x, k=2)
    x = mixed(mixed(x, 256, 160, 320, 32, 128, 128), 384, 192, 384, 48, 128, 128)
    net.classifier(x)
    return net


def inception_v4() -> Net:
    """Inception v4 at 299 (Szegedy et al. 2016, figures 3-9): stem, 4 x A, reduction A, 7 x B, reduction B, 3 x C."""
    net = Net("inception_v4")
    c = net.conv
    x = c(c(c(net.input(3, 299), 32, 3, 2, pad="valid"), 32, 3, pad="valid"), 64, 3)
    x = net.concat([net.pool(x, pad="valid"), c(x, 96, 3, 2, pad="valid")])
    x = net.concat(
        [
            c(c(x, 64, 1), 96, 3, pad="valid"),
            c(c(c(c(x, 64, 1), 64, (1, 7)), 64, (7, 1)), 96, 3, pad="valid"),
        ]
    )
    x = net.concat([c(x, 192, 3, 2, pad="valid"), net.pool(x, pad="valid")])
    for _ in range(4):
        x = net.concat(
            [
                c(x, 96, 1),
                c(c(x, 64, 1), 96, 3),
                c(c(c(x, 64, 1), 96, 3), 96, 3),
                c(net.pool(x, "AveragePool", stride=1), 96, 1),
            ]
        )
    x = net.concat(
        [c(x, 384, 3, 2, pad="valid"), c(c(c(x, 192, 1), 224, 3), 256, 3, 2, pad="valid"), net.pool(x, pad="valid")]
    )
    for _ in range(7):
        x = net.concat(
            [
                c(x, 384, 1),
                c(c(c(x, 192, 1), 224, (1, 7)), 256, (7, 1)),
                c(c(c(c(c(x, 192, 1), 192, (7, 1)), 224, (1, 7)), 224, (7, 1)), 256, (1, 7)),
                c(net.pool(x, "AveragePool", stride=1), 128, 1),
            ]
        )
    x = net.concat(
        [
            c(c(x, 192, 1), 192, 3, 2, pad="valid"),
            c(c(c(c(x, 256, 1), 256, (1, 7)), 320, (7, 1)), 320, 3, 2, pad="valid"),
            net.pool(x, pad="valid"),
        ]
    )
    for _ in range(3):
        b1 = c(x, 384, 1)
        b2 = c(c(c(x, 384, 1), 448, (3, 1)), 512, (1, 3))
        x = net.concat(
            [
                c(x, 256, 1),
                c(b1, 256, (1, 3)),
                c(b1, 256, (3, 1)),
                c(b2, 256, (1, 3)),
                c(b2, 256, (3, 1)),
                c(net.pool(x, "AveragePool", stride=1), 256, 1),
            ]
        )
    net.classifier(x)
    return net


def _resnet(name: str, size: int, blocks: Sequence[int]) -> Net:
    """Bottleneck ResNet (He et al. 2016) with projection shortcuts and the stride on the 3x3 convolution."""
    net = Net(name)
    x = net.pool(net.conv(net.input(3, size), 64, 7, 2))
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        for i in range(count):
            stride = 2 if i == 0 and stage > 0 else 1
            shortcut = net.conv(x, width * 4, 1, stride, act=False) if i == 0 else x
            y = net.conv(net.conv(net.conv(x, width, 1), width, 3, stride), width * 4, 1, act=False)
            x = net.add(shortcut, y, act=True)
    net.classifier(x)
    return net


def resnet50_299() -> Net:
    """ResNet-50 v1 at 299x299 (the Coral benchmark's input size)."""
    return _resnet("resnet50_v1_299", 299, [3, 4, 6, 3])


def resnet152_299() -> Net:
    """ResNet-152 at 299 (the benchmark lists the pre-activation V2: same layers, MACs and parameters)."""
    return _resnet("resnet152_299", 299, [3, 8, 36, 3])


def _vgg(name: str, convs: Sequence[int]) -> Net:
    """VGG (Simonyan & Zisserman 2015) at 224: 3x3 convolutions, five max pools, three fully connected layers."""
    net = Net(name)
    x = net.input(3, 224)
    for count, width in zip(convs, [64, 128, 256, 512, 512], strict=True):
        for _ in range(count):
            x = net.conv(x, width, 3)
        x = net.pool(x, k=2)
    net.classifier(x, hidden=[4096, 4096])
    return net


def vgg16() -> Net:
    return _vgg("vgg16", [2, 2, 3, 3, 3])


def vgg19() -> Net:
    return _vgg("vgg19", [2, 2, 4, 4, 4])


# --- the published figures ---


@dataclass(frozen=True)
class Published:
    """One row of coral.ai/docs/edgetpu/benchmarks (Table 1, time per inference in ms) and the model's size."""

    name: str
    build: Callable[[], Net]
    macs_g: float
    """commonly cited multiply-accumulates (billions), for comparison with the built graph"""
    params_m: float
    """commonly cited parameters (millions)"""
    usb_ms: float
    """Desktop CPU + USB Accelerator (USB 3.0) with Edge TPU"""
    devboard_ms: float
    """Dev Board (Cortex-A53 host, PCIe) with Edge TPU"""
    desktop_cpu_ms: float
    """Desktop CPU alone (TFLite)"""
    embedded_cpu_ms: float
    """Embedded CPU alone: quad Cortex-A53 at 1.5 GHz (TFLite)"""
    role: str = "fit"
    """fit: used by the fit; held-out: checked, not fitted; excluded: not comparable (see note)"""
    note: str = ""


SSD_NOTE = (
    "its anchor decoding and NMS run on the host CPU and are not in the graph: 7.2 ms with a desktop host, 14 ms on "
    "the Dev Board's Cortex-A53, while MobileNet v2 alone takes 2.6 ms on both"
)
PUBLISHED: list[Published] = [
    Published("MobileNet v1 224", mobilenet_v1, 0.569, 4.2, 2.4, 2.4, 53, 164),
    Published("MobileNet v2 224", mobilenet_v2, 0.300, 3.5, 2.6, 2.6, 51, 122),
    Published("Inception v1 224", inception_v1, 1.5, 6.6, 3.4, 4.1, 90, 392),
    Published("ResNet-50 v1 299", resnet50_299, 7.3, 25.6, 49, 56, 484, 1763),
    Published("Inception v4 299", inception_v4, 12.3, 42.7, 85, 102, 700, 3157),
    Published("VGG16 224", vgg16, 15.5, 138.0, 296, 343, 867, 4595),
    Published("MobileNet v2 SSD", ssdlite_mobilenet_v2, 0.8, 4.3, 7.2, 14, 106, 282, "excluded", SSD_NOTE),
    Published("VGG19 224", vgg19, 19.6, 143.7, 308, 357, 1060, 5538, "held-out"),
    Published("ResNet-152 v2 299", resnet152_299, 20.3, 60.2, 128, 151, 1823, 5499, "held-out"),
]
"""Latencies from coral.ai/docs/edgetpu/benchmarks (edgetpu.md); sizes from the architecture papers (ResNet MACs at
299 scaled from 224 by the spatial area; SSD: the SSDLite row of the MobileNet v2 paper)."""

FIT = [p for p in PUBLISHED if p.role == "fit"]


@cache
def model_graph(name: str) -> ModelGraph:
    """The shape-only graph of a published model, by its name in PUBLISHED."""
    entry = next(p for p in PUBLISHED if p.name == name)
    return entry.build().graph()


def conv_macs(graph: ModelGraph) -> int:
    """MACs of the Conv and Gemm nodes only (the figure papers cite; element ops excluded)."""
    return sum(n.macs for n in graph.compute_nodes() if n.op_type in ("Conv", "Gemm"))


# --- the Edge TPU fit ---


@dataclass(frozen=True)
class Features:
    """What estimate_latency reads from a fully mapped model on the Edge TPU."""

    macs: int
    ops: int
    params: int
    link_bytes: int
    crossings: int


def edgetpu_features(graph: ModelGraph, profile: HardwareProfile) -> Features:
    coverage = analyse(graph, profile)
    if not coverage.compatible:
        unmapped = [n.name for n in coverage.nodes if not n.on_device][:3]
        raise RuntimeError(f"{graph.model.graph.name}: not fully mapped on {profile.name}: {unmapped}")
    return Features(
        macs=coverage.total_macs,
        ops=len(coverage.nodes),
        params=coverage.memory.device_param_bytes,
        link_bytes=coverage.transfer_bytes,
        crossings=coverage.transitions + 1,
    )


@dataclass(frozen=True)
class Constants:
    """The Edge TPU constants the fit can move (the host link and the crossing overhead stay assumed)."""

    fixed: float
    """fixed overhead per invocation, s"""
    rate: float
    """effective int8 MAC/s"""
    per_op: float
    """per-op overhead, s"""
    stream: float
    """streaming bandwidth of parameters beyond the cache, bytes/s"""
    cache: float
    """parameter cache, bytes"""


RANGES: dict[str, tuple[float, float]] = {
    "fixed": (0.0, 4e-3),
    "rate": (0.05e12, 2.0e12),  # at most the 2e12 MAC/s peak (4 TOPS)
    "per_op": (0.0, 3e-5),
    "stream": (3.0e8, 6.0e8),
    "cache": (6.0e6, 8.4e6),  # 6-8 MiB usable per compiler logs
}


def closed_form_ms(f: Features, k: Constants, link: float, crossing_s: float) -> float:
    """estimate_latency of a fully mapped model, in closed form: the fit searches over this; `main` asserts that it
    agrees with estimate_latency, which produces the tables."""
    work = f.macs / k.rate + f.ops * k.per_op
    stream = max(0.0, f.params - k.cache) / k.stream
    return 1e3 * (k.fixed + max(work, stream) + f.link_bytes / link + f.crossings * crossing_s)


def fit_edgetpu(
    feats: Sequence[Features], published_ms: Sequence[float], base: Constants, link: float, crossing_s: float,
    free: Sequence[str] = ("fixed", "rate"),
) -> Constants:  # fmt: skip
    """Least squares of ln(predicted / published) over the `free` constants (the others stay at `base`): a grid,
    refined three times around its best point."""
    columns = {key: np.array([getattr(f, key) for f in feats], float) for key in ("macs", "ops", "params")}
    io = np.array([f.link_bytes / link + f.crossings * crossing_s for f in feats])
    target = np.log(np.array(published_ms) * 1e-3)
    ranges = {key: (RANGES[key] if key in free else (getattr(base, key),) * 2) for key in RANGES}
    best = dict.fromkeys(RANGES, 0.0)
    for _ in range(4):
        axes = [np.linspace(lo, hi, 25) if key in free else np.array([lo]) for key, (lo, hi) in ranges.items()]
        grid = dict(zip(ranges, np.meshgrid(*axes, indexing="ij", sparse=True), strict=True))
        error: np.ndarray = np.zeros(())
        for i in range(len(feats)):
            work = columns["macs"][i] / grid["rate"] + columns["ops"][i] * grid["per_op"]
            stream = np.maximum(columns["params"][i] - grid["cache"], 0.0) / grid["stream"]
            error = error + (np.log(grid["fixed"] + np.maximum(work, stream) + io[i]) - target[i]) ** 2
        index = np.unravel_index(np.argmin(error), error.shape)
        best = {key: float(axis[i]) for key, axis, i in zip(ranges, axes, index, strict=True)}
        for key in free:
            lo, hi = ranges[key]
            step = (hi - lo) / 24
            ranges[key] = (max(best[key] - 2 * step, RANGES[key][0]), min(best[key] + 2 * step, RANGES[key][1]))
    return Constants(**best)


def constants_of(profile: HardwareProfile) -> Constants:
    return Constants(
        fixed=profile.cost.fixed_overhead_s,
        rate=profile.precisions["int8"].effective_macs_per_s,
        per_op=profile.cost.per_op_overhead_s,
        stream=profile.memory.streamed_bandwidth_bytes_per_s or math.inf,
        cache=float(profile.memory.parameter_cache_bytes or 0),
    )


def with_constants(profile: HardwareProfile, k: Constants) -> HardwareProfile:
    """The profile with these constants (the rate as an efficiency of the int8 peak)."""
    int8 = profile.precisions["int8"]
    precisions = {**profile.precisions, "int8": int8.model_copy(update={"efficiency": k.rate / int8.peak_macs_per_s})}
    cost = profile.cost.model_copy(update={"fixed_overhead_s": k.fixed, "per_op_overhead_s": k.per_op})
    memory = profile.memory.model_copy(
        update={"streamed_bandwidth_bytes_per_s": k.stream, "parameter_cache_bytes": int(k.cache)}
    )
    return profile.model_copy(update={"precisions": precisions, "cost": cost, "memory": memory})


def device_estimate(graph: ModelGraph, profile: HardwareProfile) -> LatencyEstimate:
    """estimate_latency with every mapped node at the precision the device runs it at (int8 on the Edge TPU)."""
    coverage = analyse(graph, profile)
    precision_of: dict[str, Precision] = {n.name: n.precision or "fp32" for n in coverage.nodes}
    return estimate_latency(graph, coverage, profile, precision_of)


def float_estimate(graph: ModelGraph, profile: HardwareProfile) -> LatencyEstimate:
    """estimate_latency of the whole model in fp32 on a CPU profile."""
    coverage = analyse(graph, profile)
    return estimate_latency(graph, coverage, profile, {n.name: "fp32" for n in coverage.nodes})


def errors(ratios: Sequence[float]) -> str:
    """Median and max |ln ratio| of estimate / published, and the extreme ratios."""
    logs = [abs(math.log(r)) for r in ratios]
    return (
        f"median |ln ratio| {statistics.median(logs):.3f} (x{math.exp(statistics.median(logs)):.2f}), max "
        f"{max(logs):.3f} (x{math.exp(max(logs)):.2f}), ratios {min(ratios):.2f}-{max(ratios):.2f}"
    )


def needed_uncertainty(ratios: Sequence[float]) -> float:
    """The smallest half-width u with every published / estimate inside [1 / (1 + u), 1 + u]."""
    return max(max(r, 1 / r) for r in ratios) - 1


def inside(ratio: float, uncertainty: float) -> bool:
    return 1 / (1 + uncertainty) <= ratio <= 1 + uncertainty


def leave_one_out(
    models: Sequence[Published], feats: dict[str, Features], base: Constants, link: float, crossing_s: float,
    free: Sequence[str],
) -> dict[str, float]:  # fmt: skip
    """estimate / published for each model, predicted by a fit of the others."""
    ratios = {}
    for p in models:
        rest = [q for q in models if q is not p]
        k = fit_edgetpu([feats[q.name] for q in rest], [q.usb_ms for q in rest], base, link, crossing_s, free)
        ratios[p.name] = closed_form_ms(feats[p.name], k, link, crossing_s) / p.usb_ms
    return ratios


# --- CPUs ---


def with_fp32_efficiency(profile: HardwareProfile, efficiency: float) -> HardwareProfile:
    precisions = {
        **profile.precisions,
        "fp32": profile.precisions["fp32"].model_copy(update={"efficiency": efficiency}),
    }
    return profile.model_copy(update={"precisions": precisions})


def fit_fp32_efficiency(profile: HardwareProfile, models: Sequence[Published], column: str) -> float:
    """fp32 efficiency minimising the squared ln error of float_estimate against `column` (golden-section search;
    estimate_latency itself is evaluated, per-op overheads and the DRAM roofline included)."""

    def loss(efficiency: float) -> float:
        prof = with_fp32_efficiency(profile, efficiency)
        return sum(
            math.log(float_estimate(model_graph(p.name), prof).estimate_ms / getattr(p, column)) ** 2 for p in models
        )

    lo, hi = 0.01, 1.0
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        lo, hi = (lo, b) if loss(a) < loss(b) else (a, hi)
    return (lo + hi) / 2


# --- the report ---


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _label(p: Published) -> str:
    return p.name if p.role == "fit" else f"{p.name} ({p.role})"


def _describe(k: Constants) -> str:
    return (
        f"fixed {k.fixed * 1e3:.3g} ms, {k.rate / 1e12:.3g}e12 MAC/s (efficiency {k.rate / 2e12:.3g} of the 2e12 "
        f"peak), per op {k.per_op * 1e6:.3g} us, streaming {k.stream / 1e6:.0f} MB/s beyond {k.cache / 1e6:.2f} MB"
    )


def report() -> list[str]:
    """Fit, check and describe; returns the Markdown lines."""
    from benchlib import environment, markdown_table  # the bench folder's helper, importable when run as a script

    lines = ["# Cost model fit: published Edge TPU and CPU latencies", "", f"Environment: {environment()}", ""]
    shipped = load_profile("edgetpu")
    link = shipped.memory.host_link_bandwidth_bytes_per_s or math.inf
    crossing_s = shipped.cost.transfer_overhead_s
    graphs = {p.name: model_graph(p.name) for p in PUBLISHED}
    feats = {p.name: edgetpu_features(graphs[p.name], shipped) for p in PUBLISHED}

    lines += ["## Models as built (shape-only graphs)", ""]
    rows = [
        [_label(p), f"{p.macs_g:.3g}", f"{conv_macs(graphs[p.name]) / 1e9:.3g}", f"{feats[p.name].macs / 1e9:.3g}",
         f"{p.params_m:.3g}", f"{feats[p.name].params / 1e6:.3g}", str(feats[p.name].ops),
         f"{feats[p.name].link_bytes / 1e3:.0f}"]
        for p in PUBLISHED
    ]  # fmt: skip
    lines += [
        markdown_table(["model", "cited GMACs", "built conv+FC GMACs", "built GMACs with element ops",
                        "cited M params", "built M params", "ONNX nodes", "I/O kB (int8)"], rows),
        "",
    ]  # fmt: skip

    # Edge TPU: the main fit, then the shipped constants checked against the published figures.
    base = constants_of(shipped)
    main_free = ("fixed", "rate")
    fitted = fit_edgetpu([feats[p.name] for p in FIT], [p.usb_ms for p in FIT], base, link, crossing_s, main_free)
    check = with_constants(shipped, fitted)
    for p in PUBLISHED:  # the closed form searched over is estimate_latency
        code, closed = (
            device_estimate(graphs[p.name], check).estimate_ms,
            closed_form_ms(feats[p.name], fitted, link, crossing_s),
        )
        assert math.isclose(code, closed, rel_tol=1e-9), (p.name, code, closed)
    lines += [
        "## Edge TPU (USB Accelerator column)",
        "",
        f"Fit ({len(FIT)} models; fixed overhead and effective MAC/s free; per-op overhead, streaming bandwidth and "
        f"cache at the profile's values; host link {link / 1e6:.0f} MB/s and {crossing_s * 1e3:.2g} ms per crossing, "
        f"assumed): {_describe(fitted)}.",
        "",
        f"Shipped profile: {_describe(base)}; uncertainty {shipped.cost.uncertainty}.",
        "",
    ]
    u = shipped.cost.uncertainty
    loo = leave_one_out(FIT, feats, base, link, crossing_s, main_free)
    estimates = {p.name: device_estimate(graphs[p.name], shipped) for p in PUBLISHED}
    ratio = {p.name: estimates[p.name].estimate_ms / p.usb_ms for p in PUBLISHED}
    rows = []
    for p in PUBLISHED:
        e = estimates[p.name]
        rows.append([
            _label(p), _ms(p.usb_ms), _ms(e.estimate_ms), f"{ratio[p.name]:.2f}", f"{_ms(e.low_ms)}-{_ms(e.high_ms)}",
            "yes" if e.low_ms <= p.usb_ms <= e.high_ms else "no", f"{loo[p.name]:.2f}" if p.name in loo else "-",
            f"{e.device_ms:.3g} / {e.transfer_ms:.3g}",
        ])  # fmt: skip
    lines += [
        markdown_table(["model", "published ms", "estimate ms", "estimate / published", "range ms",
                        "published in range", "leave-one-out estimate / published", "device / transfer+stream ms"],
                       rows),
        "",
    ]  # fmt: skip
    held = [p for p in PUBLISHED if p.role == "held-out"]
    excluded = [p for p in PUBLISHED if p.role == "excluded"]
    lines += [
        f"- Fitted models, shipped constants: {errors([ratio[p.name] for p in FIT])}.",
        f"- Leave-one-out (refit without the model, predict it): {errors(list(loo.values()))}.",
        f"- Held out ({', '.join(p.name for p in held)}): {errors([ratio[p.name] for p in held])}.",
        *(f"- Excluded: {p.name}, estimate / published {ratio[p.name]:.2f}: {p.note}." for p in excluded),
        f"- Half-width needed to cover: the fitted models {needed_uncertainty([ratio[p.name] for p in FIT]):.2f}, "
        f"their leave-one-out predictions {needed_uncertainty(list(loo.values())):.2f}, the held-out models "
        f"{needed_uncertainty([ratio[p.name] for p in held]):.2f}. At the shipped {u}: published inside the range "
        f"for {sum(inside(ratio[p.name], u) for p in PUBLISHED)} of {len(PUBLISHED)} models, leave-one-out "
        f"{sum(inside(r, u) for r in loo.values())} of {len(loo)}.",
        "",
    ]

    lines += ["### Sensitivity: other choices of free constants and models", ""]
    earlier = dataclasses.replace(base, rate=0.7e12)  # the rate of the earlier edgetpu.md fit, without I/O terms
    variants = [
        ("fixed, rate (shipped choice)", main_free, FIT, base),
        ("fixed, rate, per_op", ("fixed", "rate", "per_op"), FIT, base),
        ("fixed, rate, stream, cache", ("fixed", "rate", "stream", "cache"), FIT, base),
        ("fixed, rate; SSD included", main_free, [*FIT, *excluded], base),
        ("fixed, rate, per_op; SSD included", ("fixed", "rate", "per_op"), [*FIT, *excluded], base),
        ("fixed only; rate held at the earlier 0.7e12", ("fixed",), FIT, earlier),
    ]
    rows = []
    for label, free, models, start in variants:
        k = fit_edgetpu([feats[p.name] for p in models], [p.usb_ms for p in models], start, link, crossing_s, free)
        in_sample = [closed_form_ms(feats[p.name], k, link, crossing_s) / p.usb_ms for p in models]
        loo_v = leave_one_out(models, feats, start, link, crossing_s, free) if len(free) <= 3 else {}
        rows.append([label, _describe(k), errors(in_sample), errors(list(loo_v.values())) if loo_v else "-"])
    lines += [markdown_table(["free constants", "fitted", "in-sample", "leave-one-out"], rows), ""]

    dev = [estimates[p.name].estimate_ms / p.devboard_ms for p in PUBLISHED]
    lines += [
        "Dev Board column (the same chip on PCIe with a Cortex-A53 host), shipped constants, not fitted: estimate / "
        "published " + ", ".join(f"{p.name} {r:.2f}" for p, r in zip(PUBLISHED, dev, strict=True)) + ".",
        "",
    ]

    # CPUs.
    a53 = load_profile("arm-a53")
    fit_a53 = fit_fp32_efficiency(a53, FIT, "embedded_cpu_ms")
    fit_a53_mnv2 = fit_fp32_efficiency(a53, [PUBLISHED[1]], "embedded_cpu_ms")
    lines += [
        "## CPUs (fp32 roofline, estimate_latency of the whole model on the CPU profile)",
        "",
        f"arm-a53 fp32 efficiency (peak {a53.precisions['fp32'].peak_macs_per_s:.3g} MAC/s): fitted to the "
        f"{len(FIT)} embedded-CPU figures {fit_a53:.3f}; to MobileNet v2's 122 ms alone {fit_a53_mnv2:.3f}; shipped "
        f"{a53.precisions['fp32'].efficiency:.3g} (uncertainty {a53.cost.uncertainty}).",
        "",
    ]
    rows = []
    summary = []
    for label, profile, column in [
        ("arm-a53", a53, "embedded_cpu_ms"),
        ("x86-avx2", load_profile("x86-avx2"), "desktop_cpu_ms"),
        ("x86-vnni", load_profile("x86-vnni"), "desktop_cpu_ms"),
    ]:
        r = {p.name: float_estimate(graphs[p.name], profile).estimate_ms / getattr(p, column) for p in PUBLISHED}
        rows += [[label, _label(p), _ms(getattr(p, column)), _ms(r[p.name] * getattr(p, column)), f"{r[p.name]:.2f}"]
                 for p in PUBLISHED]  # fmt: skip
        summary.append(
            f"- {label} (shipped) against the {'embedded' if 'embedded' in column else 'desktop'}-CPU column, fitted "
            f"models: {errors([r[p.name] for p in FIT])}; half-width needed "
            f"{needed_uncertainty([r[p.name] for p in FIT]):.2f}, shipped {profile.cost.uncertainty}."
        )
    lines += [markdown_table(["profile", "model", "published ms", "estimate ms", "estimate / published"], rows), ""]
    lines += [
        *summary,
        "",
        "The CPU columns are TFLite runs of the benchmark's models (\"all models running on both CPU and Edge TPU are "
        'the TensorFlow Lite versions"); whether float or quantized, and how many threads, is not stated. They '
        "calibrate arm-a53's fp32 rate (the host the Edge TPU falls back to) and only cross-check the x86 profiles, "
        "whose runtime (onnxruntime), CPU and threading differ from the benchmark's.",
    ]
    return lines


def main() -> None:
    from benchlib import parse_args, write_result

    parse_args(__doc__ or NAME)  # --quick is accepted for uniformity: the whole fit takes seconds
    lines = report()
    print("\n".join(lines))
    print(f"\nwritten {write_result(NAME, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
