"""The `autoptq` command line: parse, call the API, render, set the exit code. No logic of its own.

Exit codes: 0 ok, 1 the model fails a target's rules or a budget, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import math
import re
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, get_args

import typer
from pydantic import ByteSize, TypeAdapter, ValidationError

from autoptq import api
from autoptq._version import __version__
from autoptq.decide.planner import UserGoals
from autoptq.decide.tuning import Budget
from autoptq.errors import AutoptqError
from autoptq.evaluate.verify import DEFAULT_MIN_SQNR_DB
from autoptq.io.outputs import check_output_path, write_atomic
from autoptq.io.user_metric import load_metric
from autoptq.model.graph import onnx_version, ort_version
from autoptq.pipeline.manifest import outcome_failed
from autoptq.pipeline.produce import SearchMode
from autoptq.pipeline.replay import render_recipes
from autoptq.report import text as report
from autoptq.techniques import REGISTRY

app = typer.Typer(
    name="autoptq",
    help="Pick, produce and verify the post-training quantization of an ONNX model for a target device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's panels show every flag as `<bool>`
    epilog="Exit codes: 0 ok, 1 a gate failed (device rules, budget), 2 bad input or usage (one line on stderr), "
    "3 internal error; --debug adds the traceback.",
)
targets_app = typer.Typer(
    help="The hardware profiles autoptq knows.", invoke_without_command=True, rich_markup_mode=None
)
app.add_typer(targets_app, name="targets")


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


class PlanFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    yaml = "yaml"


class AuditFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    sarif = "sarif"
    html = "html"


class ReportFormat(str, Enum):
    """Formats of the commands that also render a self-contained HTML page."""

    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"


class SensitivityFormat(str, Enum):
    table = "table"
    json = "json"
    html = "html"


ModelArg = Annotated[Path, typer.Argument(help="ONNX model file (never modified).", show_default=False)]
TargetOpt = Annotated[
    list[str],
    typer.Option("--target", "-t", help="Shipped profile name or path to a profile YAML; repeat or comma-separate."),
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report to this file.")]
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="For a folder of images: size=224x224,layout=NCHW,color=RGB,scale=1/255,mean=a/b/c,std=a/b/c.",
    ),
]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        help="Bind an input's shape, e.g. x=1,3,480,640 (repeatable). Open dims are otherwise bound from --data.",
    ),
]


def split_targets(values: list[str]) -> list[str]:
    """`-t a,b -t c` → `[a, b, c]`; at least one target."""
    targets = [t.strip() for value in values for t in value.split(",") if t.strip()]
    if not targets:
        raise AutoptqError("give at least one target (see `autoptq targets`)")
    return targets


def emit(text: str, output: Path | None) -> None:
    """Print a report and, when asked, write it atomically to a file."""
    if output is not None:
        write_atomic(output, text)
    typer.echo(text, nl=not text.endswith("\n"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autoptq {__version__} (onnx {onnx_version()}, onnxruntime {ort_version()})")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Options that come before the command (the help text is the app's)."""


class ListFormat(str, Enum):
    table = "table"
    json = "json"


@targets_app.callback()
def targets_list(
    ctx: typer.Context,
    fmt: Annotated[ListFormat, typer.Option("--format", "-f", help="Output format.")] = ListFormat.table,
) -> None:
    """List the shipped hardware profiles."""
    if ctx.invoked_subcommand is not None:
        return
    typer.echo(report.render_targets(api.shipped_targets(), fmt.value))


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Profile name or YAML path.")]) -> None:
    """Print one profile, resolved and validated, as YAML."""
    typer.echo(report.render_profile(api.as_profile(name)))


@targets_app.command("schema")
def targets_schema() -> None:
    """Print the JSON Schema of a hardware profile (for editor validation of your own YAML)."""
    typer.echo(api.profile_schema())


@app.command()
def audit(
    model: ModelArg,
    target: TargetOpt,
    fmt: Annotated[AuditFormat, typer.Option("--format", "-f", help="Output format.")] = AuditFormat.table,
    output: OutputOpt = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Representative data: binds open input dims (batch, H, W).")
    ] = None,
    preprocess: PreprocessOpt = None,
    input_shape: InputShapeOpt = None,
    as_exported: Annotated[
        bool,
        typer.Option("--as-exported", help="Judge the file literally: no shape binding, no converter rewrites."),
    ] = False,
) -> None:
    """Can each target run the model, and where does it fall back? Exit 1 if any target is not compatible.

    The audit judges what the device toolchain compiles: open dims bound (from --input-shape, --data, batch 1),
    then the rewrites its converter applies (a Div by a constant is a Mul, HardSigmoid is Mul/Add/Clip)."""
    targets = split_targets(target)
    graph = api.as_graph(model, input_shape)
    if output is not None:
        check_output_path(output, protected=api.protected_inputs(graph, targets, data))
    reports = api.audit(graph, targets, data=data, preprocess=preprocess, as_exported=as_exported)
    if fmt == AuditFormat.html:
        emit(api.audit_html(graph, reports), output)
    else:
        emit(report.render_audit(reports, fmt.value, artifact=report.display_path(model.resolve())), output)
    raise typer.Exit(0 if all(r.compatible for r in reports) else 1)


class Objective(str, Enum):
    speed = "speed"
    size = "size"
    accuracy = "accuracy"


Search = Enum("Search", {mode: mode for mode in get_args(SearchMode)}, type=str)  # type: ignore[misc]


_SIZE_TEXT = re.compile(r"\s*[0-9]*\.?[0-9]+\s*(b|[kmg]i?b)?\s*", re.IGNORECASE)
"""The spellings --max-size takes: ByteSize also reads TB to EB, bits and one-letter units, and ignores what follows
a unit ('5 M B' would be 5 MB); the flag keeps to bytes and B, KB, MB, GB, KiB, MiB, GiB (docs/planning.md)."""
_BYTE_SIZE = TypeAdapter(ByteSize)


def parse_size(text: str | None) -> int | None:
    """'5MB', '500KiB', '123456' → bytes, by pydantic's ByteSize: KB/MB/GB are powers of 1000 (10MB is 10**7 bytes),
    KiB/MiB/GiB powers of 1024."""
    if text is None:
        return None
    if not _SIZE_TEXT.fullmatch(text):
        raise AutoptqError(f"--max-size {text!r}: expected bytes, optionally with a unit (KB, MB, KiB, MiB)")
    try:
        size = _BYTE_SIZE.validate_python(text)
    except ValidationError:  # the spelling is right, so the number overflowed a float
        size = None
    if size is None or size >= 2**63:
        raise AutoptqError(f"--max-size {text[:20]}...: larger than any model can be (at most 2^63 bytes)")
    return int(size)


def parse_max_drop(text: str | None) -> float | None:
    """'0.01' (absolute) or '1%' (relative to the float accuracy, read as the same fraction here)."""
    if text is None:
        return None
    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise AutoptqError(f"--max-drop {text!r}: expected a number such as 0.01 or a percentage such as 1%") from None
    if not 0 <= value < 1:
        raise AutoptqError(f"--max-drop {text!r}: must be between 0 and 1 (or 0% and 100%)")
    return value


def finite_option(value: float | None) -> float | None:
    """Typer callback: refuse nan and inf for a float flag at the boundary."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


DataOpt = Annotated[
    Path | None,
    typer.Option("--data", "-d", help="Representative data: .npz with an array per model input, or a folder of .npz."),
]
RulesOpt = Annotated[Path | None, typer.Option("--rules", help="Decision tree YAML replacing the shipped one.")]
ValidationOpt = Annotated[
    Path | None,
    typer.Option("--val", help="Held-out data for verification (default: the last fifth of --data)."),
]
SyntheticOpt = Annotated[
    bool,
    typer.Option("--synthetic-calibration", help="Calibrate on random inputs when no data exists (loudly flagged)."),
]


MaxDropOpt = Annotated[
    str | None,
    typer.Option("--max-drop", help="Accuracy budget (labels needed): absolute 0.01 or relative 1%."),
]
MinSqnrOpt = Annotated[
    float | None,
    typer.Option(
        "--min-sqnr",
        help="Fidelity budget in dB (also the verification floor; default floor 10).",
        callback=finite_option,
    ),
]
MinAgreementOpt = Annotated[
    float | None,
    typer.Option("--min-top1-agreement", help="Fidelity budget: share of top-1 predictions kept.", min=0, max=1),
]
TimeBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--time-budget",
        help="Stop the accuracy-aware search after this long: 90s, 10m, 1h. A trial in flight is abandoned: the "
        "search ends at most one sample's inference, calibration sample or node's quantization later (the first "
        "trial always completes).",
    ),
]
MaxTrialsOpt = Annotated[int, typer.Option("--max-trials", help="Stop the accuracy-aware search after N trials.")]
PreferOpt = Annotated[Objective, typer.Option("--prefer", help="Objective among candidates within budget.")]
SearchOpt = Annotated[
    Search,
    typer.Option(
        "--search",
        help="How the default choice is found on a CPU this machine stands in for. measured: a handful of "
        "candidates and their range variants built, verified and timed, the best kept. first: the plan's first "
        "candidate that passes verification, timed once: several times faster, a weaker pick more often "
        "(docs/benchmarks.md, decision quality). Other targets always take the first.",
    ),
]
MetricOpt = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="Your metric, module:function (a .py file or an importable module): gets {output name: [array per "
        "sample]} and labels (or None), returns a float, higher is better. --max-drop then bounds its drop.",
    ),
]


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1h', '45' (seconds) → seconds."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match:
        raise AutoptqError(f"--time-budget {text!r}: expected a duration such as 90s, 10m or 1h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not seconds < math.inf:
        raise AutoptqError(f"--time-budget {text[:20]!r}...: expected a finite duration")
    return seconds


def quantize_options(
    max_drop: str | None,
    min_sqnr: float | None,
    min_agreement: float | None,
    time_budget: str | None,
    max_trials: int,
    prefer: Objective,
    synthetic_calibration: bool,
    technique: str | None = None,
    search: Search = Search.measured,
) -> api.QuantizeOptions:
    """Options of quantize/variants/plan --apply: a budget given on the command line turns on the accuracy loop."""
    drop = parse_max_drop(max_drop)
    try:
        budget = Budget(
            max_drop=drop,
            relative=bool(max_drop and max_drop.strip().endswith("%")),
            min_sqnr_db=min_sqnr,
            min_top1_agreement=min_agreement,
            time_budget_s=parse_duration(time_budget),
            max_trials=max_trials,
        )
        return api.QuantizeOptions(
            technique=technique,
            min_sqnr_db=min_sqnr if min_sqnr is not None else DEFAULT_MIN_SQNR_DB,
            synthetic_calibration=synthetic_calibration,
            goals=UserGoals(max_drop=drop, prefer=prefer.value),
            budget=budget,
            search=search.value,
        )
    except ValidationError as exc:
        raise option_error(exc) from None


_OPTION_FLAGS = {
    "max_drop": "--max-drop",
    "min_sqnr_db": "--min-sqnr",
    "min_top1_agreement": "--min-top1-agreement",
    "time_budget_s": "--time-budget",
    "max_trials": "--max-trials",
    "max_size_bytes": "--max-size",
}


def option_error(exc: ValidationError) -> AutoptqError:
    """A pydantic error on options built from flags, as one line naming the flag."""
    error = exc.errors()[0]
    if not error["loc"]:  # a rule across options: its message names them
        return AutoptqError(error["msg"].removeprefix("Value error, "))
    field = str(error["loc"][-1])
    return AutoptqError(f"{_OPTION_FLAGS.get(field, field)} {error.get('input')!r}: {error['msg']}")


def progress_line(line: str) -> None:
    """Progress of long searches, on stderr so stdout stays a clean report."""
    typer.echo(line, err=True)


def warn_synthetic(synthetic: bool) -> None:
    """The loud warning synthetic calibration deserves (after the run: a refused input stays one line)."""
    if synthetic:
        typer.echo("WARNING: calibrating on SYNTHETIC random data: the accuracy of the result is unknown.", err=True)


# The choices come from the registry: a new technique is on the command line as soon as it is registered.
TechniqueChoice = Enum(  # type: ignore[misc]
    "TechniqueChoice", {name: name for name, t in REGISTRY.items() if t.quantizes}, type=str
)


@app.command()
def plan(
    model: ModelArg,
    target: TargetOpt,
    data: DataOpt = None,
    preprocess: PreprocessOpt = None,
    max_drop: MaxDropOpt = None,
    prefer: PreferOpt = Objective.speed,
    max_size: Annotated[str | None, typer.Option("--max-size", help="Size budget, e.g. 5MB.")] = None,
    rules: RulesOpt = None,
    fmt: Annotated[
        PlanFormat, typer.Option("--format", "-f", help="Output format (yaml: an editable recipe to replay).")
    ] = PlanFormat.table,
    output: OutputOpt = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Also produce the planned model (one target) into -o, like `quantize`.")
    ] = False,
    min_sqnr: MinSqnrOpt = None,
    min_agreement: MinAgreementOpt = None,
    time_budget: TimeBudgetOpt = None,
    max_trials: MaxTrialsOpt = 40,
    synthetic_calibration: SyntheticOpt = False,
    input_shape: InputShapeOpt = None,
    metric: MetricOpt = None,
    search: SearchOpt = Search.measured,
) -> None:
    """Which post-training technique for each target, the full recipe, why, and what to expect."""
    goals = UserGoals(max_drop=parse_max_drop(max_drop), prefer=prefer.value, max_size_bytes=parse_size(max_size))
    targets = split_targets(target)
    graph = api.as_graph(model, input_shape)
    if apply:
        if output is None or len(targets) != 1:
            raise AutoptqError("--apply needs exactly one --target and -o OUT.onnx for the produced model")
        if fmt == PlanFormat.yaml:
            raise AutoptqError("--format yaml writes a recipe to replay; with --apply use table, json or markdown")
        options = quantize_options(
            max_drop, min_sqnr, min_agreement, time_budget, max_trials, prefer, synthetic_calibration, search=search
        )
        options = options.model_copy(update={"goals": goals})
        chosen, outcome = api.quantize(
            graph, targets[0], output, data=data, options=options, rules=rules, preprocess=preprocess,
            progress=progress_line, metric=metric,
        )  # fmt: skip
        warn_synthetic(synthetic_calibration and data is None)
        typer.echo(report.render_plan_and_outcome(chosen, outcome, output, fmt.value), nl=False)
        raise typer.Exit(outcome_exit_code(outcome))
    if output is not None:
        check_output_path(output, protected=api.protected_inputs(graph, targets, data, rules))
    plans = api.plan(
        graph,
        targets,
        data=data,
        goals=goals,
        rules=rules,
        preprocess=preprocess,
        synthetic_calibration=synthetic_calibration,
    )
    warn_synthetic(synthetic_calibration and data is None)
    emit(render_recipes(plans) if fmt == PlanFormat.yaml else report.render_plans(plans, fmt.value), output)


def outcome_exit_code(outcome: api.Outcome) -> int:
    """1 when quantization was planned but no candidate beat float, or a budget was set and not met; else 0."""
    return 1 if outcome_failed(outcome) else 0


@app.command()
def quantize(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the produced model.")],
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Shipped profile name or profile YAML path (default with --recipe: its)."),
    ] = None,
    data: DataOpt = None,
    preprocess: PreprocessOpt = None,
    validation: ValidationOpt = None,
    technique: Annotated[
        TechniqueChoice | None, typer.Option("--technique", help="Override the planned technique.")
    ] = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    min_agreement: MinAgreementOpt = None,
    time_budget: TimeBudgetOpt = None,
    max_trials: MaxTrialsOpt = 40,
    prefer: PreferOpt = Objective.speed,
    search: SearchOpt = Search.measured,
    synthetic_calibration: SyntheticOpt = False,
    rules: RulesOpt = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="Output format.")] = ReportFormat.table,
    input_shape: InputShapeOpt = None,
    metric: MetricOpt = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="Replay a recipe without search: manifest.json#TARGET (a variant of `autoptq variants`) or a "
            "recipe YAML (`autoptq plan --format yaml`, FILE#TARGET to pick one).",
        ),
    ] = None,
) -> None:
    """Produce the planned model, verified better than float (falling back along the plan, or keeping float).

    With a budget (--max-drop, --min-sqnr, --min-top1-agreement) the accuracy-aware search runs instead and returns
    the best candidate found. Exit 1 when quantization was planned but nothing beat float, or the budget was not
    met (the closest candidate is still written). With --recipe, that recipe is replayed as is (exit 1 if the
    result fails verification; it is still written)."""
    if recipe is not None:
        searching = [name for name, value in (("--technique", technique), ("--max-drop", max_drop),
                     ("--min-top1-agreement", min_agreement), ("--rules", rules),
                     ("--search", None if search == Search.measured else search)) if value is not None]  # fmt: skip
        if searching:
            raise AutoptqError(f"--recipe replays a recipe without search: drop {', '.join(searching)}")
        _, replayed = api.replay(
            model,
            output,
            recipe,
            target=target,
            data=data,
            validation=validation,
            options=quantize_options(None, min_sqnr, None, None, max_trials, prefer, synthetic_calibration),
            preprocess=preprocess,
            metric=metric,
        )
        typer.echo(report.render_outcome(replayed, output, fmt.value), nl=False)
        passed = replayed.verification is None or replayed.verification.passed
        raise typer.Exit(0 if passed else 1)
    if target is None:
        raise AutoptqError("give --target (or --recipe to replay a recipe)")
    options = quantize_options(
        max_drop,
        min_sqnr,
        min_agreement,
        time_budget,
        max_trials,
        prefer,
        synthetic_calibration,
        technique.value if technique else None,
        search,
    )
    chosen, outcome = api.quantize(
        model,
        target,
        output,
        data=data,
        validation=validation,
        options=options,
        rules=rules,
        preprocess=preprocess,
        progress=progress_line,
        input_shapes=input_shape,
        metric=metric,
    )
    warn_synthetic(synthetic_calibration and data is None)
    if fmt == ReportFormat.html:
        text = api.quantize_html(model, target, chosen, outcome, data, validation, options, preprocess)
    else:
        text = report.render_outcome(outcome, output, fmt.value)
    typer.echo(text, nl=False)
    raise typer.Exit(outcome_exit_code(outcome))


@app.command()
def variants(
    model: ModelArg,
    targets: Annotated[str, typer.Option("--targets", "-t", help="Comma-separated profile names or YAML paths.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    data: DataOpt = None,
    preprocess: PreprocessOpt = None,
    validation: ValidationOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    min_agreement: MinAgreementOpt = None,
    time_budget: TimeBudgetOpt = None,
    max_trials: MaxTrialsOpt = 40,
    prefer: PreferOpt = Objective.speed,
    search: SearchOpt = Search.measured,
    synthetic_calibration: SyntheticOpt = False,
    rules: RulesOpt = None,
    input_shape: InputShapeOpt = None,
    metric: MetricOpt = None,
) -> None:
    """One verified variant per target: <out>/<target>/model.onnx, manifest.json, report.md, measurements.json."""
    options = quantize_options(
        max_drop, min_sqnr, min_agreement, time_budget, max_trials, prefer, synthetic_calibration, search=search
    )
    manifest, _ = api.make_variants(
        model,
        split_targets([targets]),
        output,
        data=data,
        validation=validation,
        options=options,
        rules=rules,
        preprocess=preprocess,
        progress=progress_line,
        input_shapes=input_shape,
        metric=metric,
    )
    warn_synthetic(synthetic_calibration and data is None)
    typer.echo(report.render_variants_summary(manifest, output), nl=False)
    raise typer.Exit(1 if any(v.failed for v in manifest.variants) else 0)


@app.command()
def batch(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="ONNX models, or YAML/CSV job files (per-model data, val, options).", show_default=False),
    ],
    targets: Annotated[str, typer.Option("--targets", "-t", help="Comma-separated profile names or YAML paths.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (one folder per model and target).")],
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="A running Dask scheduler, tcp://host:8786 (default: an embedded cluster)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes of the embedded cluster (default: one per core).")
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option("--memory-limit", help="Per-worker memory limit of the embedded cluster: 4GB, auto, 0 for none."),
    ] = None,
    rules: RulesOpt = None,
) -> None:
    """Variants for a zoo of models x targets on Dask: resumable, one job per (model, target), out/index.json.

    Exit 1 when a job failed or produced a variant marked failed (as `variants`); rerun to retry: finished jobs whose
    inputs are unchanged are skipped."""
    index = api.batch(
        inputs,
        split_targets([targets]),
        output,
        scheduler=scheduler,
        workers=workers,
        memory_limit=memory_limit,
        rules=rules,
        progress=progress_line,
    )
    counts = {status: sum(1 for j in index.jobs if j.status == status) for status in ("done", "skipped", "failed")}
    typer.echo(", ".join(f"{n} {status}" for status, n in counts.items()) + f": wrote {output / 'index.json'}")
    raise typer.Exit(1 if index.failed else 0)


@app.command()
def check(
    quantized: Annotated[Path, typer.Argument(help="Quantized ONNX model (never modified).", show_default=False)],
    target: TargetOpt,
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The float model it was made from.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Validation data (.npz, optional 'labels').")],
    preprocess: PreprocessOpt = None,
    tier: Annotated[
        str | None,
        typer.Option("--tier", help="exact | fast | litert | tflm (integer devices; litert/tflm run the .tflite)."),
    ] = None,
    min_sqnr: Annotated[
        float | None, typer.Option("--min-sqnr", help="Fail below this SQNR (dB).", callback=finite_option)
    ] = None,
    max_drop: Annotated[
        str | None, typer.Option("--max-drop", help="Fail above this accuracy drop: 0.01 or 1%.")
    ] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="Output format.")] = ReportFormat.table,
    output: OutputOpt = None,
    input_shape: InputShapeOpt = None,
    metric: MetricOpt = None,
) -> None:
    """What will this quantized model do on the device? Exit 1 when device rules or budgets fail."""
    user_metric = load_metric(metric)
    if output is not None:
        metric_file = [user_metric.source] if user_metric and user_metric.source else []
        protected = [quantized, *api.protected_inputs(api.as_graph(reference), split_targets(target), data)]
        check_output_path(output, protected=[*protected, *metric_file])
    drop = parse_max_drop(max_drop)
    results = [
        api.check(
            quantized, t, reference, data, tier=tier, min_sqnr_db=min_sqnr, max_drop=drop, preprocess=preprocess,
            input_shapes=input_shape, metric=user_metric,
        )
        for t in split_targets(target)
    ]  # fmt: skip
    if fmt == ReportFormat.html:
        emit(api.check_html(quantized, reference, data, results, preprocess), output)
    else:
        emit(report.render_check(results, fmt.value), output)
    raise typer.Exit(0 if all(r.passed for r in results) else 1)


StaticTechnique = Enum(  # type: ignore[misc]
    "StaticTechnique", {name: name for name, t in REGISTRY.items() if t.calibrated}, type=str
)


@app.command()
def sensitivity(
    model: ModelArg,
    target: TargetOpt,
    data: Annotated[Path, typer.Option("--data", "-d", help="Calibration data (.npz or a folder of .npz).")],
    validation: ValidationOpt = None,
    technique: Annotated[
        StaticTechnique | None, typer.Option("--technique", help="Rank for this technique (default: the plan's).")
    ] = None,
    preprocess: PreprocessOpt = None,
    rules: RulesOpt = None,
    fmt: Annotated[SensitivityFormat, typer.Option("--format", "-f", help="Output format.")] = SensitivityFormat.table,
    output: OutputOpt = None,
) -> None:
    """Which nodes hurt accuracy when quantized: each node quantized alone, ranked, without a budget search."""
    targets = split_targets(target)
    graph = api.as_graph(model)
    if output is not None:
        check_output_path(output, protected=api.protected_inputs(graph, targets, data, validation, rules))
    chosen = technique.value if technique else None
    results = [api.sensitivity(graph, t, data, validation, chosen, rules, preprocess) for t in targets]
    if fmt == SensitivityFormat.html:
        emit(api.sensitivity_html(graph, results), output)
    else:
        emit(report.render_sensitivity(results, fmt.value), output)


@app.command("calibrate-host")
def calibrate_host(
    model: Annotated[
        Path | None,
        typer.Argument(help="Time every distinct node of this model (default: common convnet and transformer layers)."),
    ] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="CPU profile whose recipes are timed.")] = "x86-vnni",
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Table file (default: the user's cache folder).")
    ] = None,
    data: DataOpt = None,
    input_shape: InputShapeOpt = None,
) -> None:
    """Time this machine's onnxruntime fp32 and int8 kernels and cache the table the default choice ranks with."""
    table, written = api.calibrate_host(model, target, cache, data, input_shape)
    typer.echo(report.render_host_table(table, written), nl=False)


@app.command()
def matrix(
    rules: RulesOpt = None,
    output: OutputOpt = None,
) -> None:
    """Write the decision matrix: the technique chosen per shipped profile x model family x data availability."""
    if output is not None:
        check_output_path(output, protected=api.matrix_inputs(rules))
    tree, cells = api.matrix(rules)
    emit(report.render_matrix(cells, rules=report.display_path(tree.source)), output)


EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def main(argv: list[str] | None = None) -> int:
    """Entry point: every exit 2 (bad input or usage) and 3 (a bug of ours) is one line on stderr.

    A command's own code (0, or 1 for a failed gate) is returned as is. `--debug` adds the traceback on stderr and
    keeps the exit code. numpy/onnxruntime RuntimeWarnings (NaN or inf in outputs) are folded into one line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        code = _run(args, debug)
    _report_warnings(caught)
    return code


def _run(args: list[str], debug: bool) -> int:
    if not args:
        app(args=["--help"], prog_name="autoptq", standalone_mode=False)
        return _fail("autoptq: error: missing command", debug)
    try:
        code = app(args=args, prog_name="autoptq", standalone_mode=False)
    except typer.TyperException as exc:  # usage: bad choice, missing or unknown option, bad number
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        return _fail(f"autoptq: error: {exc.format_message()}{hint}", debug)
    except AutoptqError as exc:
        return _fail(f"autoptq: error: {exc}", debug)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("autoptq: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug of ours: one line, its own exit code, and the way to see more
        detail = f"{type(exc).__name__}: {exc}"
        return _fail(f"autoptq: internal error: {detail} (rerun with --debug for details)", debug, EXIT_INTERNAL)
    return code if isinstance(code, int) else 0


def _fail(message: str, debug: bool, code: int = EXIT_BAD_INPUT) -> int:
    """One line on stderr (newlines of wrapped messages folded); the traceback before it with --debug."""
    if debug:
        traceback.print_exc(file=sys.stderr)
    typer.echo(one_line(message), err=True)
    return code


def one_line(text: str) -> str:
    """`text` with every run of whitespace, newlines included, folded to one space."""
    return " ".join(text.split())


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Numeric RuntimeWarnings (0/0, overflow, NaN in a comparison) become one diagnosis; others one line each."""
    numeric = sorted({one_line(str(w.message)) for w in caught if issubclass(w.category, RuntimeWarning)})
    if numeric:
        typer.echo(
            f"autoptq: warning: invalid arithmetic while computing results ({'; '.join(numeric)}): a model output "
            "holds NaN or inf on this data, so the metrics built on it are not meaningful",
            err=True,
        )
    for other in dict.fromkeys(one_line(str(w.message)) for w in caught if not issubclass(w.category, RuntimeWarning)):
        typer.echo(f"autoptq: warning: {other}", err=True)


if __name__ == "__main__":
    sys.exit(main())
