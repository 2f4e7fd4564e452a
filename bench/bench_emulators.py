"""The integer emulator's tiers side by side: speed against native onnxruntime, fast-vs-exact LSB differences, and
accuracy per tier on the trained digits model.

Models: MobileNet-style networks from `autoptq.model.zoo` (random weights, random N(0,1) inputs), each quantized for
edgetpu, mcu-cortex-m, qualcomm-htp and x86-avx2 (full-range 8-bit weights, and reduce_range 7-bit weights) with the
recipe autoptq's planner writes for that device (static QDQ, `autoptq.techniques.qdq.static_qdq`).

Per model and device, three runners of one inference each, built once and timed interleaved in one process (every
round runs each runner once, in a new random order; the cell is each runner's median):
- native: the QDQ model in onnxruntime (`autoptq.model.activations.session`: CPU, all graph optimizations, one
  thread) fed integers it already has: what the model costs on this CPU;
- fast tier: the same kind of session driven the way `autoptq.evaluate.emulators.integer.emulate(tier="fast")` drives
  it: a float sample quantized at integer inputs, integer outputs dequantized;
- exact tier: the lowered device-arithmetic model (`build_exact_model` + `exact_session`) driven the same way.
Each runner's outputs are first compared with `emulate()` itself, so the timed code is the tier's code. Setup is the
one-time cost of `emulate(model, profile, [], tier)` (building the device graph, lowering, creating the session).

LSB statistics compare the fast and exact tiers on N random samples: at the graph output (Softmax probabilities, one
LSB = 1/256) and at the integer logits feeding the Softmax, exposed as an extra output; on x86-avx2 the fast tier runs
this CPU's own u8 × s8 kernels while the exact tier models the target's int16 pair saturation. The digits part
quantizes examples/digits_cnn.onnx on examples/calib.npz and reports top-1 accuracy on examples/val.npz per tier.

Run: python bench/bench_emulators.py [--quick]   (writes bench/results/emulators.md and prints it)
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from benchlib import REPO_DIR, environment, markdown_table, parse_args, write_result
from onnx import ModelProto

from autoptq import api
from autoptq.decide.planner import device_conformant_recipe
from autoptq.deploy import kernels
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.evaluate.emulators.integer import build_exact_model, emulate, exact_session, lsb_difference, output_scales
from autoptq.evaluate.metrics import accuracy
from autoptq.evaluate.verify import ModelRunner
from autoptq.model import zoo
from autoptq.model.activations import expose, session
from autoptq.model.calibration import Dataset, load_dataset, synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.intio import read_integer_io
from autoptq.techniques.qdq import static_qdq
from autoptq.techniques.recipe import Recipe

NAME = "emulators"
EXACT_LIMIT = 30.0
"""The exact tier's speed goal (docs/ARCHITECTURE.md): within 30x of native onnxruntime."""
EXAMPLES = REPO_DIR / "examples"
ORDER_SEED = 0


@dataclass(frozen=True)
class Variant:
    """One device (and, for x86-avx2, one weight range)."""

    label: str
    target: str
    reduce_range: bool | None = None  # None: what the device calls for


VARIANTS = [
    Variant("edgetpu", "edgetpu"),
    Variant("mcu-cortex-m", "mcu-cortex-m"),
    Variant("qualcomm-htp", "qualcomm-htp"),
    Variant("x86-avx2 full range", "x86-avx2", reduce_range=False),
    Variant("x86-avx2 reduce_range", "x86-avx2", reduce_range=True),
]


@dataclass(frozen=True)
class Config:
    models: dict[str, Callable[[], ModelProto]]
    calibration_samples: int
    lsb_samples: int
    budget_s: float
    min_rounds: int
    digits_validation: int | None  # None: all 360


FULL = Config(
    models={
        "mobilenet_style(96, width 32, 6 blocks)": lambda: zoo.mobilenet_style(size=96, width=32, blocks=6),
        "mobilenet_style(160, width 32, 8 blocks)": lambda: zoo.mobilenet_style(size=160, width=32, blocks=8),
    },
    calibration_samples=32,
    lsb_samples=64,
    budget_s=4.0,
    min_rounds=30,
    digits_validation=None,
)
QUICK = Config(
    models={"mobilenet_style(96, width 32, 6 blocks)": lambda: zoo.mobilenet_style(size=96, width=32, blocks=6)},
    calibration_samples=8,
    lsb_samples=4,
    budget_s=0.4,
    min_rounds=10,
    digits_validation=120,
)


# --- quantization ----------------------------------------------------------------------------------------------------


def recipe_for(graph: ModelGraph, profile: HardwareProfile, data: Dataset, variant: Variant) -> tuple[Recipe, str]:
    """The planner's full-int8 recipe for the device (device-conformant full int8 where the plan keeps float)."""
    [plan] = api.plan(graph, profile, data=data)
    if plan.technique == "full_int8":
        recipe, source = plan.recipe, f"plan ({plan.leaf})"
    else:
        saturating = profile.quantization.int8_dot_product == "int16_pair_saturating"
        recipe = device_conformant_recipe(Recipe(reduce_range=saturating), "full_int8", profile, graph, data)
        source = f"device-conformant full_int8 (the plan keeps {plan.technique})"
    if variant.reduce_range is not None and variant.reduce_range != recipe.reduce_range:
        recipe = recipe.model_copy(update={"reduce_range": variant.reduce_range})
        source += f", reduce_range set to {variant.reduce_range}"
    return recipe, source


def quantized(graph: ModelGraph, profile: HardwareProfile, data: Dataset, variant: Variant) -> tuple[ModelProto, str]:
    recipe, source = recipe_for(graph, profile, data, variant)
    model = static_qdq(graph.model, recipe, data, "full_int8").model
    weights = "7-bit" if recipe.reduce_range else "8-bit"
    detail = f"{source}: {recipe.activation_dtype} activations, {recipe.io_dtype} I/O, {weights} weights"
    return model, detail


# --- the three runners -----------------------------------------------------------------------------------------------


class Runner:
    """One inference of one tier: float sample in, float outputs out (native: integer feed in, raw outputs out)."""

    def __init__(self, runner: ort.InferenceSession, model: ModelProto, native: bool = False) -> None:
        self.session = runner
        self.native = native
        self.io = {item.name: item for item in read_integer_io(model)}
        self.inputs = [value.name for value in model.graph.input]
        self.outputs = [value.name for value in model.graph.output]

    def feed(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """As `emulate` quantizes integer inputs: float32 division, round half away from zero."""
        feeds = {}
        for name in self.inputs:
            value = sample[name]
            if name in self.io:
                item = self.io[name]
                value = kernels.quantize(
                    value,
                    scale=item.scale,
                    zero_point=item.zero_point,
                    dtype=np.dtype(item.dtype),
                    rounding="half_away",
                )
            feeds[name] = value
        return feeds

    def __call__(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.native:  # `sample` is already the integer feed
            return self.session.run(self.outputs, sample)
        raw = self.session.run(self.outputs, self.feed(sample))
        return [
            kernels.dequantize(np.asarray(v), scale=self.io[n].scale, zero_point=self.io[n].zero_point)
            if n in self.io
            else np.asarray(v)
            for n, v in zip(self.outputs, raw, strict=True)
        ]


@dataclass
class Timing:
    native_ms: float
    fast_ms: float
    exact_ms: float
    rounds: int
    setup_fast_s: float
    setup_exact_s: float

    @property
    def fast_ratio(self) -> float:
        return self.fast_ms / self.native_ms

    @property
    def exact_ratio(self) -> float:
        return self.exact_ms / self.native_ms


def timed(model: ModelProto, profile: HardwareProfile, sample: dict[str, np.ndarray], config: Config) -> Timing:
    native = Runner(session(model), model, native=True)
    fast = Runner(session(model), model)
    exact = Runner(exact_session(build_exact_model(model, profile)), model)
    # The timed runners are the tiers: same outputs as emulate() itself.
    for runner, tier in ((fast, "fast"), (exact, "exact")):
        [want] = emulate(model, profile, [sample], tier).outputs
        for got, expected in zip(runner(sample), want, strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=f"{tier} runner differs from emulate()")
    setup = {}
    for tier in ("fast", "exact"):
        start = time.perf_counter()
        emulate(model, profile, [], tier)
        setup[tier] = time.perf_counter() - start
    integer_feed = native.feed(sample)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("native", lambda: native(integer_feed)),
        ("fast", lambda: fast(sample)),
        ("exact", lambda: exact(sample)),
    ]
    for _, call in calls:  # warm-up: first runs allocate
        call()
        call()
    times: dict[str, list[float]] = {name: [] for name, _ in calls}
    order = random.Random(ORDER_SEED)
    deadline = time.perf_counter() + config.budget_s
    while len(times["native"]) < config.min_rounds or time.perf_counter() < deadline:
        order.shuffle(calls)
        for name, call in calls:
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    return Timing(
        native_ms=median["native"],
        fast_ms=median["fast"],
        exact_ms=median["exact"],
        rounds=len(times["native"]),
        setup_fast_s=setup["fast"],
        setup_exact_s=setup["exact"],
    )


# --- fast vs exact in LSB --------------------------------------------------------------------------------------------


def integer_logits(model: ModelProto) -> str | None:
    """The quantized tensor feeding the final Softmax (through its DequantizeLinear), if there is one."""
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            dequantize = producers.get(node.input[0])
            if dequantize is not None and dequantize.op_type == "DequantizeLinear":
                return dequantize.input[0]
    return None


def lsb_rows(model: ModelProto, profile: HardwareProfile, samples: list[dict[str, np.ndarray]]) -> list[dict]:
    """Fast vs exact tier over `samples`: at each graph output (in its LSB) and at the integer logits."""
    logits = integer_logits(model)
    probed = expose(model, [logits]) if logits else model
    fast = emulate(probed, profile, samples, "fast").outputs
    exact = emulate(probed, profile, samples, "exact").outputs
    scales = output_scales(model)
    rows = []
    for index, name in enumerate([value.name for value in probed.graph.output]):
        scale = 1.0 if name == logits else scales.get(name)
        if scale is None:
            continue
        stats = lsb_difference(
            np.concatenate([f[index].reshape(1, -1) for f in fast]),
            np.concatenate([e[index].reshape(1, -1) for e in exact]),
            scale,
        )
        label = "integer logits (before Softmax)" if name == logits else f"output {name}"
        rows.append({"tensor": label, **stats})
    return rows


# --- the digits model on its real data -------------------------------------------------------------------------------


def digits_rows(config: Config) -> list[list[str]]:
    graph = load_model(EXAMPLES / "digits_cnn.onnx")
    calibration = load_dataset(EXAMPLES / "calib.npz", graph)
    validation = load_dataset(EXAMPLES / "val.npz", graph)
    if config.digits_validation is not None:
        validation = validation.take(config.digits_validation)
    labels = validation.labels
    assert labels is not None
    reference = ModelRunner(graph.model)
    float_accuracy = accuracy([reference.run(s)[0] for s in validation.samples], labels)
    rows = []
    for variant in VARIANTS:
        profile = load_profile(variant.target)
        model, detail = quantized(graph, profile, calibration, variant)
        native = ModelRunner(model, read_integer_io(model))
        cells = [accuracy([native.run(s)[0] for s in validation.samples], labels)]
        outputs = {tier: emulate(model, profile, validation.samples, tier).outputs for tier in ("fast", "exact")}
        cells += [accuracy([o[0] for o in outputs[tier]], labels) for tier in ("fast", "exact")]
        scale = output_scales(model)["logits"] or 1.0
        gap = lsb_difference(
            np.concatenate([o[0] for o in outputs["fast"]]), np.concatenate([o[0] for o in outputs["exact"]]), scale
        )
        rows.append(
            [
                variant.label,
                detail,
                f"{float_accuracy:.4f}",
                *(f"{value:.4f}" for value in cells),
                f"{100 * gap['differing_fraction']:.2f}% / {gap['max_abs_lsb']:.0f} / {gap['mean_abs_lsb']:.4f}",
            ]
        )
    return rows


# --- the run ---------------------------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    config = QUICK if args.quick else FULL
    speed_rows, lsb_table_rows, flagged = [], [], []
    for model_name, build in config.models.items():
        graph = load_model(build())
        calibration = synthetic_dataset(graph, config.calibration_samples, seed=0)
        samples = synthetic_dataset(graph, config.lsb_samples, seed=1).samples
        for variant in VARIANTS:
            profile = load_profile(variant.target)
            model, detail = quantized(graph, profile, calibration, variant)
            timing = timed(model, profile, samples[0], config)
            within = timing.exact_ratio <= EXACT_LIMIT
            if not within:
                flagged.append(f"{model_name} on {variant.label}: exact tier {timing.exact_ratio:.1f}x native")
            speed_rows.append(
                [
                    model_name,
                    variant.label,
                    detail,
                    f"{timing.native_ms:.3f}",
                    f"{timing.fast_ms:.3f} ({timing.fast_ratio:.2f}x)",
                    f"{timing.exact_ms:.3f} ({timing.exact_ratio:.1f}x)" + ("" if within else " **over 30x**"),
                    f"{timing.setup_fast_s:.2f} / {timing.setup_exact_s:.2f}",
                    str(timing.rounds),
                ]
            )
            for row in lsb_rows(model, profile, samples):
                lsb_table_rows.append(
                    [
                        model_name,
                        variant.label,
                        row["tensor"],
                        f"{int(row['elements']):,}",
                        f"{100 * row['differing_fraction']:.2f}%",
                        f"{row['max_abs_lsb']:.0f}",
                        f"{row['mean_abs_lsb']:.4f}",
                    ]
                )
            print(f"{model_name} / {variant.label}: exact {timing.exact_ratio:.1f}x native", file=sys.stderr)
    digits = digits_rows(config)
    text = render(config, args.quick, speed_rows, lsb_table_rows, digits, flagged)
    path = write_result(NAME, text)
    print(text)
    print(f"wrote {path.relative_to(REPO_DIR)}", file=sys.stderr)
    return 0


def render(
    config: Config,
    quick: bool,
    speed_rows: list[list[str]],
    lsb_table_rows: list[list[str]],
    digits: list[list[str]],
    flagged: list[str],
) -> str:
    verdict = (
        "Exact tier within 30x of native onnxruntime everywhere."
        if not flagged
        else "**Over the 30x goal:** " + "; ".join(flagged) + "."
    )
    speed = markdown_table(
        [
            "model",
            "device",
            "quantized as",
            "native ORT ms",
            "fast tier ms (x native)",
            "exact tier ms (x native)",
            "setup s fast / exact",
            "rounds",
        ],
        speed_rows,
    )
    lsb = markdown_table(
        ["model", "device", "tensor", "elements", "differing", "max abs LSB", "mean abs LSB"], lsb_table_rows
    )
    accuracy_table = markdown_table(
        [
            "device",
            "quantized as",
            "float",
            "native ORT",
            "fast tier",
            "exact tier",
            "fast vs exact logits: differing / max / mean LSB",
        ],
        digits,
    )
    validation = "all 360" if config.digits_validation is None else f"the first {config.digits_validation}"
    return "\n".join(
        [
            f"# Emulator tiers: speed, fast-vs-exact LSB, accuracy (bench_emulators{', quick' if quick else ''})",
            "",
            f"Measured {environment()}.",
            "- Timing: native onnxruntime (QDQ model, integer feed), the fast tier and the exact tier, each built once "
            f"and timed one inference at a time, interleaved in a new random order every round for >= "
            f"{config.min_rounds} rounds and {config.budget_s:g} s per model and device; cells are medians. Fast and "
            "exact include the tier's float-to-integer input quantization and output dequantization; their outputs "
            "were checked equal to `emulate()`'s before timing. Setup = `emulate(model, profile, [], tier)`.",
            f"- LSB: fast vs exact tier on {config.lsb_samples} random N(0,1) samples; zoo models calibrated on "
            f"{config.calibration_samples} other random samples (weights random too: fidelity is indicative).",
            f"- Digits: examples/digits_cnn.onnx calibrated on examples/calib.npz (200), accuracy on {validation} "
            "labelled samples of examples/val.npz.",
            "",
            "## Speed",
            "",
            verdict,
            "",
            speed,
            "",
            "## Fast vs exact tier, in LSB",
            "",
            "On x86-avx2 the fast tier is onnxruntime on this CPU (which has VNNI, so its u8 x s8 sums never saturate) "
            "while the exact tier models the target's int16 pair saturation: with full-range weights the two differ "
            "where pairs saturate; with reduce_range they agree bit for bit (the exact tier reproduces MLAS's float32 "
            "requantization). On the TFLite-style devices they differ by gemmlowp's fixed-point rounding vs "
            "onnxruntime's float rounding, compounded over the layers.",
            "",
            lsb,
            "",
            "## The digits model on its real validation data",
            "",
            accuracy_table,
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
