"""Quantizers side by side on x86-vnni: float, onnxruntime's plain defaults, and autoptq's verified choice.

For each model: (a) the float model, (b) `quantize_dynamic` with its defaults (every op type it knows), (c)
`quantize_static` with its defaults (QDQ, MinMax, QInt8 activations and weights, per-tensor), (d) autoptq's choice
through `autoptq.api.quantize(model, "x86-vnni", ...)`, which may keep float. Every method gets the same float file,
the same calibration samples and the same held-out samples.

Latency is a ratio against float measured side by side in this one process: every session (float, a second float
session as a noise control, and each method's model) has the same pinned options (one intra-op thread, all graph
optimizations; autoptq.model.activations.session) and they run round-robin, one inference each per round, in a new
random order every round; the ratio is the median candidate time over the median float time, and the reported ratio is
the median over a few trials with fresh sessions. Absolute float times are context only.

Run: python bench/bench_quantizers.py [--quick]
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from benchlib import REPO_DIR, environment, markdown_table, parse_args, write_result
from onnx import ModelProto
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

from autoptq.api import QuantizeOptions, quantize
from autoptq.devices.profiles import load_profile
from autoptq.evaluate.evaluation import SLOWER_TOLERANCE
from autoptq.evaluate.evaluator import Evaluator
from autoptq.evaluate.runner import ModelRunner
from autoptq.evaluate.verify import DEFAULT_MIN_SQNR_DB
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, load_dataset, synthetic_dataset
from autoptq.model.graph import load_model
from autoptq.model.ortio import quiet
from autoptq.techniques.common import IOQuantization

NAME = "bench_quantizers"
TARGET = "x86-vnni"
SLOWER_RATIO = 1 + SLOWER_TOLERANCE
"""Latency ratios above this count as slower than float (autoptq's own tolerance for timer noise)."""
ACCURACY_DROP = 0.01
"""With labels, losing more than this much top-1 accuracy counts as less faithful."""
EXAMPLES = REPO_DIR / "examples"
REASON_CHARS = 110
ORDER_SEED = 0


@dataclass(frozen=True)
class Config:
    """Models and sample counts of one run."""

    models: dict[str, Callable[[], ModelProto]]
    calibration_samples: int
    held_out_samples: int
    digits_calibration: int | None
    latency_budget_s: float
    trials: int = 3
    min_rounds: int = 30
    max_rounds: int = 20_000


FULL = Config(
    models={
        "mobilenet_style(112, width 32, 8 blocks, 100 classes)": lambda: zoo.mobilenet_style(
            size=112, width=32, blocks=8, classes=100
        ),
        "small_convnet(64x64)": lambda: zoo.small_convnet(size=64),
        "transformer_block(seq 64, dim 256, ffn 1024)": lambda: zoo.transformer_block(
            seq=64, dim=256, heads=4, ffn=1024
        ),
        "lstm_model(50 steps, 64 -> 256)": lambda: zoo.lstm_model(seq=50, features=64, hidden=256),
        "mlp(784-1024-1024-10)": lambda: zoo.mlp(features=784, hidden=1024, layers=2),
    },
    calibration_samples=64,
    held_out_samples=16,
    digits_calibration=None,
    latency_budget_s=5.0,
)
QUICK = Config(
    models={
        "small_convnet(32x32)": lambda: zoo.small_convnet(size=32),
        "mlp(64-256-256-10)": lambda: zoo.mlp(features=64, hidden=256, layers=2),
    },
    calibration_samples=16,
    held_out_samples=8,
    digits_calibration=32,
    latency_budget_s=0.3,
    trials=2,
    min_rounds=15,
)


@dataclass(frozen=True)
class Case:
    """One model with its float file and data."""

    name: str
    float_path: Path
    calibration: Dataset
    held_out: Dataset
    inputs: str


@dataclass(frozen=True)
class Produced:
    """A method's model: its bytes, what it is, and how its integer graph I/O (if any) maps to real values."""

    model_bytes: bytes
    detail: str
    integer_io: list[IOQuantization] = field(default_factory=list)
    kept_float: bool = False
    reason: str = ""


@dataclass
class Row:
    """One method's measurements on one model (None where not measured)."""

    method: str
    detail: str = ""
    error: str | None = None
    size_bytes: int | None = None
    latency_ratio: float | None = None
    latency_range: tuple[float, float] | None = None
    min_sqnr_db: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    kept_float: bool = False
    reason: str = ""
    runner: ModelRunner | None = None
    model_bytes: bytes = b""
    integer_io: list[IOQuantization] = field(default_factory=list)

    def fresh_runner(self) -> ModelRunner:
        """A new session on this row's model (a fresh allocation for each latency trial)."""
        return ModelRunner(onnx.load_model_from_string(self.model_bytes), self.integer_io)


class SamplesReader(CalibrationDataReader):
    """Feeds a Dataset's samples to onnxruntime's static quantizer."""

    def __init__(self, data: Dataset) -> None:
        self._samples = iter(data.samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)


def short(exc: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


# --- cases --------------------------------------------------------------------------------------------------------


def zoo_case(index: int, name: str, build: Callable[[], ModelProto], config: Config, folder: Path) -> Case:
    """A zoo model saved to a file, with random-normal calibration and held-out samples (seeded)."""
    path = folder / f"model{index}_float.onnx"
    onnx.save(build(), str(path))
    graph = load_model(path)
    data = synthetic_dataset(graph, config.calibration_samples + config.held_out_samples, seed=0)
    calibration, held_out = data.split(config.calibration_samples)
    return Case(name, path, calibration, held_out, "random N(0,1)")


def digits_case(config: Config) -> Case:
    """The example digits CNN with its real calibration and labelled validation data."""
    path = EXAMPLES / "digits_cnn.onnx"
    graph = load_model(path)
    calibration = load_dataset(EXAMPLES / "calib.npz", graph)
    if config.digits_calibration is not None:
        calibration = calibration.take(config.digits_calibration)
    held_out = load_dataset(EXAMPLES / "val.npz", graph)
    return Case("examples/digits_cnn.onnx", path, calibration, held_out, "real digits")


# --- methods ------------------------------------------------------------------------------------------------------


def run_float(case: Case, folder: Path) -> Produced:
    """The float model itself."""
    del folder
    return Produced(case.float_path.read_bytes(), "reference", kept_float=True)


def run_ort_dynamic(case: Case, folder: Path) -> Produced:
    """onnxruntime quantize_dynamic with every default (all op types it knows)."""
    target = folder / "ort_dynamic.onnx"
    with quiet():
        quantize_dynamic(str(case.float_path), str(target))
    return Produced(target.read_bytes(), "quantize_dynamic defaults")


def run_ort_static(case: Case, folder: Path) -> Produced:
    """onnxruntime quantize_static with every default (QDQ, MinMax, QInt8/QInt8, per-tensor)."""
    target = folder / "ort_static.onnx"
    with quiet():
        quantize_static(str(case.float_path), str(target), SamplesReader(case.calibration))
    return Produced(target.read_bytes(), "quantize_static defaults")


def run_autoptq(case: Case, folder: Path) -> Produced:
    """autoptq's plan, quantizer, verification and fallbacks for the target."""
    target = folder / "autoptq.onnx"
    plan, outcome = quantize(
        case.float_path, TARGET, target, data=case.calibration, validation=case.held_out, options=QuantizeOptions()
    )
    if outcome.kept_float and plan.technique == "none":
        detail = f"kept float (the plan: none, leaf {plan.leaf})"
    elif outcome.kept_float:
        rejected = len(outcome.attempts)
        detail = f"kept float (plan: {plan.technique}, leaf {plan.leaf}; all {rejected} candidates rejected)"
    elif outcome.technique == plan.technique:
        detail = f"{outcome.technique} (leaf {plan.leaf})"
    else:
        detail = f"{outcome.technique} (fallback; plan {plan.technique} from leaf {plan.leaf} rejected)"
    integer_io = outcome.applied.integer_io if outcome.applied else []
    return Produced(target.read_bytes(), detail, integer_io, kept_float=outcome.kept_float, reason=outcome.reason)


METHODS: dict[str, Callable[[Case, Path], Produced]] = {
    "float": run_float,
    "ort dynamic": run_ort_dynamic,
    "ort static QDQ": run_ort_static,
    "autoptq": run_autoptq,
}
BASELINES = ("ort dynamic", "ort static QDQ")
CONTROL = "float (control)"


# --- measurements -------------------------------------------------------------------------------------------------


def produce_rows(case: Case, folder: Path) -> list[Row]:
    """Run every method; each succeeds with a loaded runner or carries its error."""
    rows = []
    for method, run in METHODS.items():
        row = Row(method)
        try:
            produced = run(case, folder)
            row.detail, row.kept_float, row.reason = produced.detail, produced.kept_float, produced.reason
            row.model_bytes, row.integer_io = produced.model_bytes, produced.integer_io
            row.size_bytes = len(produced.model_bytes)
            row.runner = row.fresh_runner()
        except Exception as exc:  # a method that fails is a result, reported with its reason
            row.error = short(exc)
        rows.append(row)
    return rows


def measure_fidelity(rows: list[Row], case: Case) -> None:
    """Min SQNR and top-1 agreement against float on the held-out samples, and accuracy where labels exist."""
    assert rows[0].runner is not None, "the float model must run"
    evaluator = Evaluator(onnx.load_model_from_string(rows[0].model_bytes), load_profile(TARGET), case.held_out)
    for row in rows:
        if row.runner is None:
            continue
        model = onnx.load_model_from_string(row.model_bytes)
        evaluation = evaluator.evaluate(model, row.integer_io, measure=False)
        broken = evaluation.problem("not_runnable")
        if broken is not None:  # a model that loads but cannot run the samples
            row.error, row.runner = broken.text, None
            continue
        row.accuracy = evaluation.accuracy_candidate
        if row is rows[0]:
            continue
        row.min_sqnr_db = evaluation.lowest_sqnr_db
        agreements = [o.top1_agreement for o in evaluation.fidelity if o.top1_agreement is not None]
        row.top1_agreement = min(agreements) if agreements else None


def interleaved_medians(
    runners: dict[str, ModelRunner], sample: dict[str, np.ndarray], config: Config
) -> tuple[dict[str, float], int]:
    """Median seconds per runner, run round-robin for one trial's share of the budget, in a fresh random order every
    round (a fixed or rotated order would always give each session the same predecessor, whose cache footprint
    shifts its time by several percent); and the number of rounds."""
    names = list(runners)
    shuffler = random.Random(ORDER_SEED)
    feeds = {name: runners[name].feed(sample) for name in names}
    for _ in range(3):  # warm-up: first runs allocate
        for name in names:
            runners[name].session.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + config.latency_budget_s / config.trials
    rounds = 0
    while rounds < config.min_rounds or (time.perf_counter() < deadline and rounds < config.max_rounds):
        shuffler.shuffle(names)
        for name in names:
            start = time.perf_counter()
            runners[name].session.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}, rounds


@dataclass(frozen=True)
class Timing:
    """What the latency loop measured for one model: float's median, the control's ratios, rounds per trial."""

    float_s: float
    control: list[float]
    rounds: list[int]


def measure_latency(rows: list[Row], case: Case, config: Config) -> Timing:
    """Fill each row's latency ratio against float: the median over trials, each with fresh sessions (so one
    session's memory placement does not bias a ratio), of median candidate time / median float time."""
    measured = [row for row in rows if row.runner is not None]
    ratios: dict[str, list[float]] = {row.method: [] for row in measured}
    control: list[float] = []
    float_s: list[float] = []
    rounds: list[int] = []
    for _ in range(config.trials):
        runners = {row.method: row.fresh_runner() for row in measured}
        runners[CONTROL] = rows[0].fresh_runner()
        gc.collect()
        medians, count = interleaved_medians(runners, case.held_out.samples[0], config)
        for method in ratios:
            ratios[method].append(medians[method] / medians["float"])
        control.append(medians[CONTROL] / medians["float"])
        float_s.append(medians["float"])
        rounds.append(count)
        del runners
    for row in measured:
        row.latency_ratio = statistics.median(ratios[row.method])
        row.latency_range = (min(ratios[row.method]), max(ratios[row.method]))
    return Timing(statistics.median(float_s), control, rounds)


# --- verdicts -----------------------------------------------------------------------------------------------------


def losses(row: Row, float_row: Row) -> list[str]:
    """Ways `row` is worse than the float model: failed, slower, bigger, less faithful."""
    if row.error is not None:
        return ["failed"]
    if row.kept_float or row is float_row:
        return []
    found = []
    if row.latency_ratio is not None and row.latency_ratio > SLOWER_RATIO:
        found.append(f"slower ({row.latency_ratio:.2f}x)")
    if row.size_bytes is not None and float_row.size_bytes and row.size_bytes > float_row.size_bytes:
        found.append(f"bigger ({row.size_bytes / float_row.size_bytes:.2f}x)")
    if row.min_sqnr_db is not None and row.min_sqnr_db < DEFAULT_MIN_SQNR_DB:
        found.append(f"less faithful (SQNR {row.min_sqnr_db:.1f} dB)")
    elif (
        row.accuracy is not None
        and float_row.accuracy is not None
        and row.accuracy < float_row.accuracy - ACCURACY_DROP
    ):
        found.append(f"less accurate ({row.accuracy:.3f} vs {float_row.accuracy:.3f})")
    return found


def autoptq_holds(row: Row, float_row: Row) -> bool:
    """The headline: autoptq's output is float itself, or not slower (within tolerance) and not bigger."""
    if row.error is not None:
        return False
    if row.kept_float:
        return True
    small = row.size_bytes is not None and float_row.size_bytes is not None and row.size_bytes <= float_row.size_bytes
    fast = row.latency_ratio is not None and row.latency_ratio <= SLOWER_RATIO
    return small and fast


def headline(case: Case, rows: list[Row]) -> str:
    """One line per model: does autoptq hold, and where the naive defaults lose, does autoptq avoid it."""
    by_method = {row.method: row for row in rows}
    float_row, ours = by_method["float"], by_method["autoptq"]
    our_losses = {loss.split(" ")[0] for loss in losses(ours, float_row)}
    verdict = "never worse than float: **holds**" if autoptq_holds(ours, float_row) else "**DOES NOT HOLD**"
    parts = []
    for method in BASELINES:
        lost = losses(by_method[method], float_row)
        if not lost:
            parts.append(f"{method} does not lose to float")
            continue
        shared = [loss for loss in lost if loss.split(" ")[0] in our_losses]
        outcome = "autoptq avoids it" if not shared else f"autoptq also: {', '.join(shared)}"
        parts.append(f"{method} loses ({', '.join(lost)}): {outcome}")
    return f"- {case.name}: {verdict}; " + "; ".join(parts) + "."


# --- report -------------------------------------------------------------------------------------------------------


def _size_cell(row: Row, float_row: Row) -> str:
    if row.size_bytes is None or not float_row.size_bytes:
        return "-"
    ratio = f"{row.size_bytes / float_row.size_bytes:.2f}x"
    return f"{ratio} ({float_row.size_bytes / 1024:,.0f} KiB)" if row is float_row else ratio


def _latency_cell(row: Row, timing: Timing) -> str:
    if row.latency_ratio is None or row.latency_range is None:
        return "-"
    if row.method == "float":
        controls = ", ".join(f"{c:.2f}" for c in timing.control)
        return f"1.00x ({timing.float_s * 1e3:.3f} ms; control {controls})"
    low, high = row.latency_range
    return f"{row.latency_ratio:.2f}x ({low:.2f}-{high:.2f})"


def _sqnr_cell(row: Row) -> str:
    if row.method == "float":
        return "-"
    if row.kept_float:
        return "= float"
    return _number(row.min_sqnr_db, ".1f")


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(case: Case, rows: list[Row], timing: Timing) -> list[list[str]]:
    """The Markdown rows of one model."""
    float_row = rows[0]
    out = []
    for row in rows:
        result = f"failed: {row.error}" if row.error else row.detail
        out.append(
            [
                f"{case.name} ({case.inputs})" if row is float_row else "",
                row.method,
                result,
                _size_cell(row, float_row),
                _latency_cell(row, timing),
                _sqnr_cell(row),
                "-" if row is float_row else _number(row.top1_agreement, ".3f"),
                _number(row.accuracy, ".3f"),
                ", ".join(losses(row, float_row)) or ("-" if row is float_row else "none"),
            ]
        )
    return out


HEADERS = [
    "model (inputs)",
    "method",
    "result",
    "size vs float",
    "latency vs float",
    "min SQNR dB",
    "top-1 agreement",
    "accuracy",
    "worse than float on",
]


def method_notes(config: Config) -> list[str]:
    """How the numbers were taken, as Markdown bullets."""
    return [
        "- Latency: ratios against float measured side by side in one process. The sessions (one intra-op thread, "
        "identical options) run round-robin, one inference each per round, in a new random order every round; a trial "
        f"takes each session's median over >= {config.min_rounds} rounds; {config.trials} trials with fresh sessions "
        f"share a budget of {config.latency_budget_s:g} s per model. Cell: median ratio over the trials (min-max).",
        "- 'control' is a second float session, one ratio per trial: how far two sessions of the same model differ "
        f"(the noise floor). Slower means a ratio above {SLOWER_RATIO:.2f} (autoptq's own tolerance).",
        f"- Data: zoo models get {config.calibration_samples} calibration + {config.held_out_samples} held-out random "
        "N(0,1) samples, so their fidelity is indicative only; the digits CNN uses examples/calib.npz for calibration "
        "and examples/val.npz (labelled) as held-out data.",
        "- Fidelity is against float on the held-out samples: less faithful means min SQNR over outputs below "
        f"{DEFAULT_MIN_SQNR_DB:g} dB, less accurate a top-1 accuracy drop over {ACCURACY_DROP:g}; bigger means a "
        "file larger than float.",
    ]


def render(config: Config, quick: bool, table: list[list[str]], lines: list[str], notes: list[str]) -> str:
    """The whole Markdown report."""
    mode = "--quick" if quick else "full"
    return "\n".join(
        [
            f"# Quantizers on {TARGET} ({NAME}, {mode})",
            "",
            f"Measured {environment()}.",
            *method_notes(config),
            "",
            markdown_table(HEADERS, table),
            "",
            "## Headline",
            "",
            *lines,
            "",
            *notes,
        ]
    )


def bench_case(case: Case, config: Config) -> tuple[list[list[str]], str, str]:
    """All methods on one model: its table rows, headline line and measurement note."""
    print(f"{case.name}: quantizing", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-quantizers-") as scratch:
        rows = produce_rows(case, Path(scratch))
    if rows[0].runner is None:
        raise SystemExit(f"{case.name}: the float model does not load: {rows[0].error}")
    measure_fidelity(rows, case)
    print(f"{case.name}: timing", file=sys.stderr, flush=True)
    timing = measure_latency(rows, case, config)
    ours = rows[-1]
    why = ours.reason or ours.error or ""
    rounds = "/".join(str(r) for r in timing.rounds)
    note = f"- {case.name}: {rounds} latency rounds per trial; autoptq: {why}"
    return table_rows(case, rows, timing), headline(case, rows), note


def main() -> None:
    """Run the benchmark, print the Markdown report and write it to bench/results/."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else NAME)
    config = QUICK if args.quick else FULL
    table: list[list[str]] = []
    lines: list[str] = []
    notes: list[str] = ["## Per model: latency rounds and autoptq's own account of its choice", ""]
    with tempfile.TemporaryDirectory(prefix="bench-quantizers-float-") as folder:
        cases = [
            zoo_case(index, name, build, config, Path(folder))
            for index, (name, build) in enumerate(config.models.items())
        ]
        cases.append(digits_case(config))
        for case in cases:
            rows, line, note = bench_case(case, config)
            table.extend(rows)
            lines.append(line)
            notes.append(note)
    report = render(config, args.quick, table, lines, notes)
    print(report, flush=True)
    print(f"written to {write_result(NAME, report)}", file=sys.stderr)


if __name__ == "__main__":
    main()
