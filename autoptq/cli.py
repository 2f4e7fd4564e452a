"""The `autoptq` command line: parse, call the API, render, set the exit code. No logic of its own.

Exit codes: 0 ok, 1 the model fails a target's rules or a budget, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import json
import math
import re
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from autoptq import api, report
from autoptq._version import __version__
from autoptq.calibration import synthetic_dataset
from autoptq.errors import AutoptqError
from autoptq.graph import onnx_version, ort_version
from autoptq.manifest import outcome_failed
from autoptq.outputs import check_output_path, write_atomic
from autoptq.planner import UserGoals, decision_matrix, load_tree
from autoptq.profiles import load_profile, profile_file, profile_json_schema, shipped_profile_names
from autoptq.resources import data_dir
from autoptq.tuning import Budget
from autoptq.verify import DEFAULT_MIN_SQNR_DB

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


class AuditFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    sarif = "sarif"


ModelArg = Annotated[Path, typer.Argument(help="ONNX model file (never modified).", show_default=False)]
TargetOpt = Annotated[
    list[str],
    typer.Option("--target", "-t", help="Shipped profile name or path to a profile YAML; repeat or comma-separate."),
]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report to this file.")]


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
    profiles = [load_profile(name) for name in shipped_profile_names()]
    if fmt == ListFormat.json:
        rows = [
            {"name": p.name, "kind": p.kind, "precisions": list(p.precisions), "description": p.description}
            for p in profiles
        ]
        typer.echo(json.dumps({"schema_version": 1, "kind": "targets", "results": rows}, indent=2, sort_keys=True))
        return
    typer.echo(report.render_targets(profiles))


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Profile name or YAML path.")]) -> None:
    """Print one profile, resolved and validated, as YAML."""
    import yaml

    profile = load_profile(name)
    typer.echo(yaml.safe_dump(profile.model_dump(mode="json", by_alias=True), sort_keys=False, width=110))


@targets_app.command("schema")
def targets_schema() -> None:
    """Print the JSON Schema of a hardware profile (for editor validation of your own YAML)."""
    typer.echo(profile_json_schema())


@app.command()
def audit(
    model: ModelArg,
    target: TargetOpt,
    fmt: Annotated[AuditFormat, typer.Option("--format", "-f", help="Output format.")] = AuditFormat.table,
    output: OutputOpt = None,
) -> None:
    """Can each target run the model, and where does it fall back? Exit 1 if any target is not compatible."""
    targets = split_targets(target)
    graph = api.as_graph(model)
    if output is not None:
        check_output_path(output, protected=api.protected_inputs(graph, targets))
    reports = api.audit(graph, targets)
    emit(report.render_audit(reports, fmt.value, artifact=_display_path(model.resolve())), output)
    raise typer.Exit(0 if all(r.compatible for r in reports) else 1)


class Objective(str, Enum):
    speed = "speed"
    size = "size"
    accuracy = "accuracy"


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(text: str | None) -> int | None:
    """'5MB', '500KiB', '123456' → bytes."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise AutoptqError(f"--max-size {text!r}: expected bytes, optionally with a unit (KB, MB, KiB, MiB)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not value < 2**63:
        raise AutoptqError(f"--max-size {text[:20]}...: larger than any model can be (at most 2^63 bytes)")
    return int(value)


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
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="For a folder of images: size=224x224,layout=NCHW,color=RGB,scale=1/255,mean=a/b/c,std=a/b/c.",
    ),
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
    str | None, typer.Option("--time-budget", help="Stop the accuracy-aware search after this long: 90s, 10m, 1h.")
]
MaxTrialsOpt = Annotated[int, typer.Option("--max-trials", help="Stop the accuracy-aware search after N trials.")]
PreferOpt = Annotated[Objective, typer.Option("--prefer", help="Objective among candidates within budget.")]


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
    field = str(error["loc"][-1]) if error["loc"] else ""
    return AutoptqError(f"{_OPTION_FLAGS.get(field, field)} {error.get('input')!r}: {error['msg']}")


def progress_line(line: str) -> None:
    """Progress of long searches, on stderr so stdout stays a clean report."""
    typer.echo(line, err=True)


def warn_synthetic(synthetic: bool) -> None:
    """The loud warning synthetic calibration deserves (after the run: a refused input stays one line)."""
    if synthetic:
        typer.echo("WARNING: calibrating on SYNTHETIC random data: the accuracy of the result is unknown.", err=True)


class TechniqueChoice(str, Enum):
    weight_only_int8 = "weight_only_int8"
    full_int8 = "full_int8"
    fp16 = "fp16"
    int16x8 = "int16x8"


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
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: OutputOpt = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Also produce the planned model (one target) into -o, like `quantize`.")
    ] = False,
    min_sqnr: MinSqnrOpt = None,
    min_agreement: MinAgreementOpt = None,
    time_budget: TimeBudgetOpt = None,
    max_trials: MaxTrialsOpt = 40,
    synthetic_calibration: SyntheticOpt = False,
) -> None:
    """Which post-training technique for each target, the full recipe, why, and what to expect."""
    goals = UserGoals(max_drop=parse_max_drop(max_drop), prefer=prefer.value, max_size_bytes=parse_size(max_size))
    targets = split_targets(target)
    graph = api.as_graph(model)
    if apply:
        if output is None or len(targets) != 1:
            raise AutoptqError("--apply needs exactly one --target and -o OUT.onnx for the produced model")
        options = quantize_options(
            max_drop, min_sqnr, min_agreement, time_budget, max_trials, prefer, synthetic_calibration
        )
        options = options.model_copy(update={"goals": goals})
        chosen, outcome = api.quantize(
            graph, targets[0], output, data=data, options=options, rules=rules, preprocess=preprocess,
            progress=progress_line,
        )  # fmt: skip
        warn_synthetic(synthetic_calibration and data is None)
        typer.echo(report.render_plan_and_outcome(chosen, outcome, output, fmt.value), nl=False)
        raise typer.Exit(outcome_exit_code(outcome))
    if output is not None:
        check_output_path(output, protected=api.protected_inputs(graph, targets, data, rules))
    data_set = synthetic_dataset(graph, api.SYNTHETIC_SAMPLES) if synthetic_calibration and data is None else None
    plans = api.plan(graph, targets, data=data_set or data, goals=goals, rules=rules, preprocess=preprocess)
    warn_synthetic(synthetic_calibration and data is None)
    emit(report.render_plans(plans, fmt.value), output)


def outcome_exit_code(outcome: api.Outcome) -> int:
    """1 when quantization was planned but no candidate beat float, or a budget was set and not met; else 0."""
    return 1 if outcome_failed(outcome) else 0


@app.command()
def quantize(
    model: ModelArg,
    target: Annotated[str, typer.Option("--target", "-t", help="Shipped profile name or profile YAML path.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the produced model.")],
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
    synthetic_calibration: SyntheticOpt = False,
    rules: RulesOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Produce the planned model, verified better than float (falling back along the plan, or keeping float).

    With a budget (--max-drop, --min-sqnr, --min-top1-agreement) the accuracy-aware search runs instead and returns
    the best candidate found. Exit 1 when quantization was planned but nothing beat float, or the budget was not
    met (the closest candidate is still written)."""
    options = quantize_options(
        max_drop,
        min_sqnr,
        min_agreement,
        time_budget,
        max_trials,
        prefer,
        synthetic_calibration,
        technique.value if technique else None,
    )
    _, outcome = api.quantize(
        model,
        target,
        output,
        data=data,
        validation=validation,
        options=options,
        rules=rules,
        preprocess=preprocess,
        progress=progress_line,
    )
    warn_synthetic(synthetic_calibration and data is None)
    typer.echo(report.render_outcome(outcome, output, fmt.value), nl=False)
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
    synthetic_calibration: SyntheticOpt = False,
    rules: RulesOpt = None,
) -> None:
    """One verified variant per target: <out>/<target>/model.onnx, manifest.json, report.md, measurements.json."""
    options = quantize_options(
        max_drop, min_sqnr, min_agreement, time_budget, max_trials, prefer, synthetic_calibration
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
    )
    warn_synthetic(synthetic_calibration and data is None)
    for variant in manifest.variants:
        typer.echo(f"{variant.target:<14} {variant.technique:<17} {variant.size_bytes:>9} B  {variant.path}")
        typer.echo(f"{'':<14} {variant.reason}")
    typer.echo(f"Wrote {output / 'manifest.json'}, {output / 'report.md'} and {output / 'measurements.json'}")
    failed = [v for v in manifest.variants if v.failed]
    raise typer.Exit(1 if failed else 0)


@app.command()
def check(
    quantized: Annotated[Path, typer.Argument(help="Quantized ONNX model (never modified).", show_default=False)],
    target: TargetOpt,
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The float model it was made from.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Validation data (.npz, optional 'labels').")],
    preprocess: PreprocessOpt = None,
    tier: Annotated[str | None, typer.Option("--tier", help="fast | exact (integer devices).")] = None,
    min_sqnr: Annotated[
        float | None, typer.Option("--min-sqnr", help="Fail below this SQNR (dB).", callback=finite_option)
    ] = None,
    max_drop: Annotated[
        str | None, typer.Option("--max-drop", help="Fail above this accuracy drop: 0.01 or 1%.")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: OutputOpt = None,
) -> None:
    """What will this quantized model do on the device? Exit 1 when device rules or budgets fail."""
    if output is not None:
        protected = [quantized, *api.protected_inputs(api.as_graph(reference), split_targets(target), data)]
        check_output_path(output, protected=protected)
    drop = parse_max_drop(max_drop)
    results = [
        api.check(quantized, t, reference, data, tier=tier, min_sqnr_db=min_sqnr, max_drop=drop, preprocess=preprocess)
        for t in split_targets(target)
    ]
    emit(report.render_check(results, fmt.value), output)
    raise typer.Exit(0 if all(r.passed for r in results) else 1)


@app.command()
def matrix(
    rules: RulesOpt = None,
    output: OutputOpt = None,
) -> None:
    """Write the decision matrix: the technique chosen per shipped profile x model family x data availability."""
    tree = load_tree(rules)
    names = shipped_profile_names()
    if output is not None:
        check_output_path(output, protected=[tree.source, *(profile_file(name) for name in names)])
    profiles = [load_profile(name) for name in names]
    text = report.render_matrix(decision_matrix(tree, profiles), rules=_display_path(tree.source))
    emit(text, output)


def _display_path(path: Path) -> str:
    """`path` relative to the working folder (or the shipped data), else its name: no machine's layout leaks."""
    for base in (Path.cwd(), data_dir("rules").parent):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.name


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
