"""The Python API: the same functions the command line calls, returning pydantic models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import ModelProto
from pydantic import BaseModel, Field, model_validator

from autoptq import techniques
from autoptq._version import __version__
from autoptq.decide import hostcost
from autoptq.decide.job import Job
from autoptq.decide.planner import (
    MatrixCell,
    Plan,
    UserGoals,
    decision_matrix,
    device_conformant_recipe,
    load_tree,
    plan_model,
    plans,
)
from autoptq.decide.rules import RuleSet
from autoptq.decide.sensitivity import SensitivityReport, sensitivity_report
from autoptq.decide.tuning import Budget
from autoptq.deploy.device_file import device_file
from autoptq.devices.canonical import device_graph, float_model_for
from autoptq.devices.coverage import CoverageReport, analyse
from autoptq.devices.profiles import (
    HardwareProfile,
    load_profile,
    profile_file,
    profile_json_schema,
    shipped_profile_names,
)
from autoptq.errors import AutoptqError, OutputError
from autoptq.evaluate.verify import DEFAULT_MIN_SQNR_DB
from autoptq.io.outputs import check_output_folder, check_output_path, commit_staged, stage_folder, write_atomic
from autoptq.io.user_metric import MetricFunction, UserMetric, load_metric
from autoptq.model.calibration import Dataset, load_dataset, synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.images import ImagePreprocessing, parse_preprocessing
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.model.shapes import apply_user_shapes, bind, parse_input_shapes
from autoptq.pipeline.check import CheckReport
from autoptq.pipeline.check import check as run_check
from autoptq.pipeline.manifest import DataInfo, InputModel, Manifest, check_summary, sha256, variant_from
from autoptq.pipeline.produce import Outcome, SearchMode, produce, produce_tuned
from autoptq.pipeline.replay import load_recipe, split_spec
from autoptq.pipeline.replay import replay as run_replay
from autoptq.report.data import (
    audit_section,
    check_section,
    model_context,
    outcome_section,
    sensitivity_section,
    variants_page,
)
from autoptq.report.html_page import render_html
from autoptq.report.models import HtmlReport
from autoptq.report.text import render_variants_report
from autoptq.techniques.recipe import Recipe, RecipeFile, TechniqueName

if TYPE_CHECKING:
    from autoptq.batch import BatchIndex

ModelSource = str | Path | ModelProto | ModelGraph
InputShapes = dict[str, list[int]] | list[str]
TargetSource = str | Path | HardwareProfile


def as_graph(model: ModelSource, input_shapes: InputShapes | None = None) -> ModelGraph:
    """Accept a path, a ModelProto or an already loaded ModelGraph; apply `--input-shape` style shapes
    (`{"x": [1, 3, 480, 640]}` or `["x=1,3,480,640"]`)."""
    graph = model if isinstance(model, ModelGraph) else load_model(model)
    shapes = parse_input_shapes(input_shapes) if isinstance(input_shapes, list) else dict(input_shapes or {})
    return apply_user_shapes(graph, shapes)


def bound(graph: ModelGraph, *datasets: Dataset | None) -> ModelGraph:
    """`graph` with its open input dims bound from the user's shapes and the samples of `datasets`."""
    samples = [s for d in datasets if d is not None and not d.synthetic for s in d.samples]
    return bind(graph, samples or None)


def as_profile(target: TargetSource) -> HardwareProfile:
    """Accept a shipped profile name, a YAML path or a HardwareProfile."""
    return target if isinstance(target, HardwareProfile) else load_profile(target)


def audit(
    model: ModelSource,
    targets: TargetSource | Sequence[TargetSource],
    data: str | Path | Dataset | None = None,
    input_shapes: InputShapes | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    as_exported: bool = False,
) -> list[CoverageReport]:
    """Audit a model against one or more devices: what maps, where it falls back, memory fit.

    By default the audit judges the graph the device toolchain compiles: open input dims bound from `input_shapes`
    and `data` (autoptq.model.shapes), then the rewrites the device's converter applies (autoptq.devices.canonical).
    `as_exported` judges the file literally instead."""
    graph = as_graph(model, input_shapes)
    if isinstance(targets, (str, Path, HardwareProfile)):
        targets = [targets]
    profiles = [as_profile(t) for t in targets]  # validate every target before any analysis
    if as_exported:
        return [analyse(graph, profile) for profile in profiles]
    graph = bound(graph, load_data(data, graph, preprocess))
    return [analyse(device_graph(graph, profile), profile) for profile in profiles]


def load_data(
    data: str | Path | Dataset | None, graph: ModelGraph, preprocess: str | ImagePreprocessing | None = None
) -> Dataset | None:
    """Accept a path to representative data (images need `preprocess`), a Dataset, or None."""
    if data is None or isinstance(data, Dataset):
        return data
    preprocessing = parse_preprocessing(preprocess) if isinstance(preprocess, str) else preprocess
    return load_dataset(data, graph, preprocessing)


def plan(
    model: ModelSource,
    targets: TargetSource | Sequence[TargetSource],
    data: str | Path | Dataset | None = None,
    goals: UserGoals | None = None,
    rules: str | Path | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    input_shapes: InputShapes | None = None,
    synthetic_calibration: bool = False,
) -> list[Plan]:
    """Plan the post-training quantization of a model for one or more targets (one Plan each).

    `synthetic_calibration` plans as if random inputs were the data when none is given (the plan flags it)."""
    tree = load_tree(rules)
    graph = as_graph(model, input_shapes)
    if isinstance(targets, (str, Path, HardwareProfile)):
        targets = [targets]
    profiles = [as_profile(t) for t in targets]
    dataset = load_data(data, graph, preprocess)
    graph = bound(graph, dataset)
    if dataset is None and synthetic_calibration:
        dataset = synthetic_dataset(graph, SYNTHETIC_SAMPLES)
    return plans(graph, profiles, tree, dataset, goals)


class QuantizeOptions(BaseModel):
    """Settings of a quantize or variants run."""

    technique: TechniqueName | None = Field(default=None, description="override the planned technique")
    min_sqnr_db: float = Field(default=DEFAULT_MIN_SQNR_DB, allow_inf_nan=False)
    measure_latency: bool = True
    synthetic_calibration: bool = False
    goals: UserGoals = Field(default_factory=UserGoals)
    budget: Budget = Field(default_factory=Budget, description="accuracy/fidelity budget: set → accuracy-aware search")
    search: SearchMode = Field(default="measured", description="how the default choice is found (no budget)")

    @model_validator(mode="after")
    def _search_without_budget(self) -> QuantizeOptions:
        if self.search != "measured" and self.budget.has_target:
            raise ValueError(
                f"search {self.search!r} is how the default choice is found; with a budget (--max-drop, --min-sqnr, "
                "--min-top1-agreement) the accuracy-aware search walks its own order"
            )
        return self


SYNTHETIC_SAMPLES = 32


def split_data(
    graph: ModelGraph, data: Dataset | None, validation: Dataset | None, synthetic: bool
) -> tuple[Dataset | None, Dataset, str]:
    """Calibration and held-out verification data, and where the latter came from.

    Without a separate validation set the last fifth of the data is held out from calibration.
    """
    if data is None and synthetic:
        data = synthetic_dataset(graph, SYNTHETIC_SAMPLES)
    if validation is not None:
        return data, validation, validation.source
    if data is None:
        return None, synthetic_dataset(graph, 8, seed=1), "synthetic inputs (no data given): fidelity is indicative"
    if len(data) < 2:
        return data, data, f"{data.source} (the only sample, also used for calibration)"
    held_out = max(1, len(data) // 5)
    calibration, verification = data.split(len(data) - held_out)
    return calibration, verification, f"last {held_out} samples of {data.source}, held out from calibration"


def plan_for(
    graph: ModelGraph, profile: HardwareProfile, tree: RuleSet, data: Dataset | None, options: QuantizeOptions
) -> Plan:
    """The plan, or the user's technique override made device-conformant (then without fallbacks)."""
    planned = plan_model(graph, profile, tree, data, options.goals)
    if options.technique is None or options.technique == planned.technique:
        return planned
    recipe = device_conformant_recipe(Recipe(), options.technique, profile, graph, data)
    return planned.model_copy(
        update={
            "technique": options.technique,
            "recipe": recipe,
            "fallbacks": [],
            "summary": f"{options.technique} as requested with --technique (the plan chose {planned.technique})",
            "warnings": [*planned.warnings, f"technique overridden: the plan chose {planned.technique}"],
        }
    )


def quantize(
    model: ModelSource,
    target: TargetSource,
    output: str | Path,
    data: str | Path | Dataset | None = None,
    validation: str | Path | Dataset | None = None,
    options: QuantizeOptions | None = None,
    rules: str | Path | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    progress: Callable[[str], None] = lambda _line: None,
    input_shapes: InputShapes | None = None,
    metric: str | MetricFunction | None = None,
) -> tuple[Plan, Outcome]:
    """Plan, prepare, quantize, verify (with fallback) and write the result atomically to `output`.

    `metric`: `module:function` or a callable scoring the validation outputs, higher is better (see
    autoptq.io.user_metric); reported on every candidate, and the quantity `--max-drop` bounds."""
    options = options or QuantizeOptions()
    graph = as_graph(model, input_shapes)
    user_metric = load_metric(metric)
    protected = [*protected_inputs(graph, [target], data, validation, rules), *_metric_files(user_metric)]
    out_path = check_output_path(Path(output), protected=protected)
    profile, tree = as_profile(target), load_tree(rules)
    tflite_path = _tflite_path(out_path, profile, protected)
    dataset, validation_set = load_data(data, graph, preprocess), load_data(validation, graph, preprocess)
    graph = bound(graph, dataset, validation_set)
    calibration, held_out, _ = split_data(graph, dataset, validation_set, options.synthetic_calibration)
    chosen = plan_for(graph, profile, tree, calibration, options)
    job = Job(graph, profile, calibration, held_out, user_metric, options.min_sqnr_db)
    outcome = _produce(job, chosen, options, progress)
    return chosen, _write_model_files(outcome, out_path, tflite_path, profile, held_out)


def _write_model_files(
    outcome: Outcome, out_path: Path, tflite_path: Path | None, profile: HardwareProfile, held_out: Dataset
) -> Outcome:
    """Write the ONNX model and, for a `format: tflite` target, the .tflite beside it (both built before either is
    written); the outcome then names the device file."""
    content = None
    if tflite_path is not None:
        shapes = {k: list(v.shape) for k, v in held_out.samples[0].items()} if held_out.samples else None
        summary, content = device_file(outcome.model_bytes, outcome.kept_float, profile, str(tflite_path), shapes)
        outcome = outcome.model_copy(update={"device_file": summary})
    write_atomic(out_path, outcome.model_bytes)
    if tflite_path is not None and content is not None:
        write_atomic(tflite_path, content)
    return outcome


def _tflite_path(out_path: Path, profile: HardwareProfile, protected: list[Path]) -> Path | None:
    """Where `quantize` writes the .tflite of a `format: tflite` target: beside the ONNX, same stem."""
    if profile.format != "tflite":
        return None
    if out_path.suffix == ".tflite":
        raise OutputError(f"{out_path}: the output is the QDQ ONNX model; name it .onnx (the .tflite goes beside it)")
    return check_output_path(out_path.with_suffix(".tflite"), protected=protected)


def _produce(job: Job, chosen: Plan, options: QuantizeOptions, progress: Callable[[str], None]) -> Outcome:
    """The accuracy-aware search when a budget is set, else the plan with verification and fallback."""
    if options.budget.has_target:
        return produce_tuned(job, chosen, options.budget, options.goals.prefer, progress, options.measure_latency)
    return produce(job, chosen, options.measure_latency, options.search)


def replay(
    model: ModelSource,
    output: str | Path,
    recipe: str | RecipeFile,
    target: TargetSource | None = None,
    data: str | Path | Dataset | None = None,
    validation: str | Path | Dataset | None = None,
    options: QuantizeOptions | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    metric: str | MetricFunction | None = None,
) -> tuple[RecipeFile, Outcome]:
    """Reproduce a variant from its recipe (`manifest.json#TARGET`, a recipe YAML, or a RecipeFile) without search;
    the target defaults to the recipe's own. Same model and data as the original run give the same bytes."""
    options = options or QuantizeOptions()
    graph = as_graph(model)
    chosen = recipe if isinstance(recipe, RecipeFile) else load_recipe(recipe)
    recipe_files = [split_spec(recipe)[0]] if isinstance(recipe, str) else []
    user_metric = load_metric(metric)
    protected = [*graph.source_files, *_paths(data, validation), *_metric_files(user_metric), *recipe_files]
    out_path = check_output_path(Path(output), protected=protected)
    profile = as_profile(target if target is not None else chosen.target)
    tflite_path = _tflite_path(out_path, profile, protected)
    if profile.name != chosen.target:
        raise AutoptqError(
            f"the recipe was chosen for {chosen.target}, not {profile.name}: pass --target {chosen.target}"
        )
    calibration, held_out, _ = split_data(
        graph,
        load_data(data, graph, preprocess),
        load_data(validation, graph, preprocess),
        options.synthetic_calibration,
    )
    job = Job(graph, profile, calibration, held_out, user_metric, options.min_sqnr_db)
    outcome = run_replay(job, chosen, options.measure_latency)
    return chosen, _write_model_files(outcome, out_path, tflite_path, profile, held_out)


def make_variants(
    model: ModelSource,
    targets: Sequence[TargetSource],
    output_dir: str | Path,
    data: str | Path | Dataset | None = None,
    validation: str | Path | Dataset | None = None,
    options: QuantizeOptions | None = None,
    rules: str | Path | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    progress: Callable[[str], None] = lambda _line: None,
    input_shapes: InputShapes | None = None,
    metric: str | MetricFunction | None = None,
) -> tuple[Manifest, dict[str, dict[str, object]]]:
    """One verified variant per target in `output_dir/<target>/model.onnx`, plus manifest.json, report.md,
    report.html and measurements.json (the only file that varies run to run: it holds timings)."""
    options = options or QuantizeOptions()
    graph = as_graph(model, input_shapes)
    user_metric = load_metric(metric)
    profiles = [as_profile(t) for t in targets]
    if not profiles:
        raise AutoptqError("give at least one target")
    names = [p.name for p in profiles]
    if len({name.lower() for name in names}) != len(names):  # one folder each, also on case-insensitive disks
        raise AutoptqError(f"targets repeat: {names}")
    models = [f"{name}/model.onnx" for name in names]
    tflites = [f"{p.name}/model.tflite" for p in profiles if p.format == "tflite"]
    folder = check_output_folder(
        Path(output_dir),
        [*models, *tflites, *_VARIANTS_FILES],
        protected=[*protected_inputs(graph, targets, data, validation, rules), *_metric_files(user_metric)],
    )
    tree = load_tree(rules)
    dataset, validation_set = load_data(data, graph, preprocess), load_data(validation, graph, preprocess)
    graph = bound(graph, dataset, validation_set)
    calibration, held_out, held_out_source = split_data(graph, dataset, validation_set, options.synthetic_calibration)
    # Everything is written into a staging folder inside `folder`, then moved in with the manifest last.
    staging = stage_folder(folder)
    try:
        manifest, measurements = _variants_into(
            graph, profiles, tree, calibration, held_out, held_out_source, options, staging, progress, user_metric
        )
        commit_staged(staging, folder, [*models, *tflites, *_VARIANTS_FILES[1:]], last="manifest.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, measurements


_VARIANTS_FILES = ("manifest.json", "report.md", "report.html", "measurements.json")


def _variants_into(
    graph: ModelGraph,
    profiles: list[HardwareProfile],
    tree: RuleSet,
    calibration: Dataset | None,
    held_out: Dataset,
    held_out_source: str,
    options: QuantizeOptions,
    folder: Path,
    progress: Callable[[str], None],
    user_metric: UserMetric | None,
) -> tuple[Manifest, dict[str, dict[str, object]]]:
    variants, measurements, sections = [], {}, []
    for profile in profiles:
        chosen = plan_for(graph, profile, tree, calibration, options)
        progress(f"{profile.name}: {chosen.technique}")
        job = Job(graph, profile, calibration, held_out, user_metric, options.min_sqnr_db)
        outcome = _produce(job, chosen, options, progress)
        (folder / profile.name).mkdir(exist_ok=True)
        relative = f"{profile.name}/model.onnx"
        write_atomic(folder / relative, outcome.model_bytes)
        shapes = {k: list(v.shape) for k, v in held_out.samples[0].items()} if held_out.samples else None
        summary, content = device_file(
            outcome.model_bytes, outcome.kept_float, profile, f"{profile.name}/model.tflite", shapes
        )
        if content is not None:
            write_atomic(folder / profile.name / "model.tflite", content)
        outcome = outcome.model_copy(update={"device_file": summary})
        variant = variant_from(outcome, relative, chosen.warnings)
        checked = None
        if not outcome.kept_float:
            progress(f"{profile.name}: checking on the {profile.emulator} emulator")
            checked = run_check(
                onnx.load_from_string(outcome.model_bytes), profile, graph, held_out, metric=user_metric
            )
            variant = variant.model_copy(update={"check": check_summary(checked)})
        variants.append(variant)
        sections.append(outcome_section(graph, profile, chosen, outcome, calibration, held_out, checked))
        measurements[profile.name] = {
            "verification": outcome.verification.latency if outcome.verification else None,
            "check_measured_latency_ratio": checked.latency.measured_ratio if checked else None,
            "trial_seconds": [t.seconds for t in outcome.tuning.trials] if outcome.tuning else None,
        }
    model_bytes = graph.original_bytes()
    manifest = Manifest(
        autoptq_version=__version__,
        input_model=InputModel(
            name=graph.path.name if graph.path else "model.onnx",
            sha256=sha256(model_bytes),
            size_bytes=len(model_bytes),
        ),
        data=None
        if calibration is None
        else DataInfo(
            source=Path(calibration.source).name if not calibration.synthetic else calibration.source,
            calibration_samples=len(calibration),
            validation_samples=len(held_out),
            validation_source=_without_folders(held_out_source, [calibration.source, held_out.source]),
            synthetic=calibration.synthetic,
        ),
        variants=variants,
    )
    write_atomic(folder / "manifest.json", manifest.model_dump_json(indent=2) + "\n")
    write_atomic(folder / "report.md", render_variants_report(manifest))
    write_atomic(folder / "report.html", render_html(variants_page(manifest, sections)))
    timings = {
        name: {key: (value.model_dump() if isinstance(value, BaseModel) else value) for key, value in m.items()}
        for name, m in measurements.items()
    }
    write_atomic(folder / "measurements.json", json.dumps(timings, indent=2, sort_keys=True) + "\n")
    return manifest, measurements


def check(
    quantized: str | Path | ModelProto,
    target: TargetSource,
    reference: ModelSource,
    data: str | Path | Dataset,
    tier: str | None = None,
    min_sqnr_db: float | None = None,
    max_drop: float | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    input_shapes: InputShapes | None = None,
    metric: str | MetricFunction | UserMetric | None = None,
) -> CheckReport:
    """Emulate a quantized model on a target and compare it with its float reference (see autoptq.pipeline.check)."""

    profile = as_profile(target)
    reference_graph = as_graph(reference, input_shapes)
    quantized_model = quantized if isinstance(quantized, ModelProto) else load_model(quantized).model
    dataset = load_data(data, reference_graph, preprocess)
    if dataset is None:
        raise AutoptqError("check needs data: pass --data val.npz with arrays named after the model's inputs")
    reference_graph = bound(reference_graph, dataset)
    return run_check(
        quantized_model, profile, reference_graph, dataset, tier, min_sqnr_db, max_drop, load_metric(metric)
    )


def sensitivity(
    model: ModelSource,
    target: TargetSource,
    data: str | Path | Dataset,
    validation: str | Path | Dataset | None = None,
    technique: TechniqueName | None = None,
    rules: str | Path | None = None,
    preprocess: str | ImagePreprocessing | None = None,
    input_shapes: InputShapes | None = None,
) -> SensitivityReport:
    """Rank the nodes of a model by how much quantizing each alone hurts the output, for the target's planned
    static technique (full_int8 when the plan is not a static one), without any budget search."""
    graph, profile = as_graph(model, input_shapes), as_profile(target)
    dataset, validation_set = load_data(data, graph, preprocess), load_data(validation, graph, preprocess)
    if dataset is None:
        raise AutoptqError("sensitivity needs data: pass --data calib.npz with arrays named after the model's inputs")
    graph = bound(graph, dataset, validation_set)
    calibration, held_out, _ = split_data(graph, dataset, validation_set, False)
    assert calibration is not None  # data was given
    planned = plan_model(graph, profile, load_tree(rules), calibration)
    static = [name for name, t in techniques.REGISTRY.items() if t.calibrated]
    if technique is not None and technique not in static:
        raise AutoptqError(f"--technique {technique}: sensitivity ranks static quantization ({' or '.join(static)})")
    chosen = technique or (planned.technique if planned.technique in static else static[0])
    if chosen == planned.technique:
        recipe, note = planned.recipe, f"the plan's technique for {profile.name}, under its recipe"
    else:
        recipe = device_conformant_recipe(Recipe(), chosen, profile, graph, calibration)
        note = f"the plan for {profile.name} is {planned.technique}; ranked for {chosen} " + (
            "as requested" if technique else "(per-node ranking applies to static quantization)"
        )
    prepared = prepare(float_model_for(graph, profile), held_out.take(PREPARATION_SAMPLES)).model
    return sensitivity_report(prepared, profile.name, chosen, note, recipe, calibration, held_out.take(16))


def audit_html(model: ModelSource, reports: Sequence[CoverageReport]) -> str:
    """The audit as a self-contained HTML page."""
    graph = as_graph(model)
    sections = [audit_section(graph, as_profile(r.target), r) for r in reports]
    return render_html(HtmlReport(title=f"Audit of {_name(graph)}", context=model_context(graph), targets=sections))


def sensitivity_html(model: ModelSource, reports: Sequence[SensitivityReport]) -> str:
    """The sensitivity ranking as a self-contained HTML page."""
    graph = as_graph(model)
    sections = [sensitivity_section(graph, as_profile(r.target), r) for r in reports]
    title = f"Sensitivity of {_name(graph)}"
    return render_html(HtmlReport(title=title, context=model_context(graph), targets=sections))


def check_html(
    quantized: str | Path | ModelProto,
    reference: ModelSource,
    data: str | Path | Dataset,
    reports: Sequence[CheckReport],
    preprocess: str | ImagePreprocessing | None = None,
) -> str:
    """Check reports as a self-contained HTML page (SQNR along the graph measured on the first few samples)."""
    reference_graph = as_graph(reference)
    quantized_model = quantized if isinstance(quantized, ModelProto) else load_model(quantized).model
    dataset = load_data(data, reference_graph, preprocess)
    assert dataset is not None  # check required it
    sections = [check_section(quantized_model, as_profile(r.target), reference_graph, r, dataset) for r in reports]
    title = f"Check of a quantized {_name(reference_graph)}"
    return render_html(HtmlReport(title=title, context=model_context(reference_graph), targets=sections))


def quantize_html(
    model: ModelSource,
    target: TargetSource,
    plan: Plan,
    outcome: Outcome,
    data: str | Path | Dataset | None = None,
    validation: str | Path | Dataset | None = None,
    options: QuantizeOptions | None = None,
    preprocess: str | ImagePreprocessing | None = None,
) -> str:
    """What `quantize` produced as a self-contained HTML page (the same held-out split as the run)."""
    options = options or QuantizeOptions()
    graph = as_graph(model)
    calibration, held_out, _ = split_data(
        graph,
        load_data(data, graph, preprocess),
        load_data(validation, graph, preprocess),
        options.synthetic_calibration,
    )
    section = outcome_section(graph, as_profile(target), plan, outcome, calibration, held_out)
    title = f"{_name(graph)} quantized for {outcome.target}"
    return render_html(HtmlReport(title=title, context=model_context(graph), targets=[section]))


def shipped_targets() -> list[HardwareProfile]:
    """The shipped hardware profiles, by name."""
    return [load_profile(name) for name in shipped_profile_names()]


def profile_schema() -> str:
    """The JSON Schema of a hardware profile, for editors validating users' YAML."""
    return profile_json_schema()


def matrix(rules: str | Path | None = None) -> tuple[RuleSet, list[MatrixCell]]:
    """The decision tree (`rules`, the shipped one by default) and its decision matrix: the technique `plan` chooses
    for each shipped profile and each model family of autoptq.model.zoo, with and without representative data."""
    tree = load_tree(rules)
    return tree, decision_matrix(tree, shipped_targets())


def matrix_inputs(rules: str | Path | None = None) -> list[Path]:
    """The files the decision matrix reads, which a report of it must never overwrite: the tree and the profiles."""
    return [load_tree(rules).source, *(profile_file(name) for name in shipped_profile_names())]


def calibrate_host(
    model: ModelSource | None = None,
    target: TargetSource = "x86-vnni",
    cache: str | Path | None = None,
    data: str | Path | Dataset | None = None,
    input_shapes: InputShapes | None = None,
) -> tuple[hostcost.HostTable, Path]:
    """Time this machine's onnxruntime fp32 and int8 form of every distinct node of the model (default: common
    convnet and transformer layers) under `target`'s recipes, and merge them into the table the default choice ranks
    with (`cache`, by default in the user's cache folder). Open input dims are bound from `input_shapes` and `data`,
    as `quantize` binds them. Returns this run's timings and the file written."""
    profile = as_profile(target)
    graph = None
    if model is not None:  # a bad model or bad data fails before anything is written
        graph = as_graph(model, input_shapes)
        graph = bound(graph, load_data(data, graph))
    path = Path(cache) if cache is not None else hostcost.default_cache()
    check_output_path(path, protected=_paths(model, data), must_exist_parent=False)
    table = hostcost.calibrate_host(profile, graph)
    return table, hostcost.write_table(table, path)


def _name(graph: ModelGraph) -> str:
    return graph.path.name if graph.path else "model.onnx"


def _without_folders(text: str, sources: list[str]) -> str:
    """`text` with the folders of data files removed, so manifests carry no machine-specific paths."""
    for source in sources:
        folder = str(Path(source).parent)
        if folder not in ("", "."):
            text = text.replace(folder + "/", "")
    return text


def _metric_files(metric: UserMetric | None) -> list[Path]:
    """The user's metric module, an input like the data."""
    return [metric.source] if metric is not None and metric.source is not None else []


def protected_inputs(graph: ModelGraph, targets: Sequence[TargetSource], *sources: object) -> list[Path]:
    """Every input file an output must never overwrite: the model and its external data, the profile files of
    `targets`, and the data, validation and rules paths among `sources`."""
    profiles = [profile_file(t) for t in targets if isinstance(t, (str, Path))]
    return [*graph.source_files, *profiles, *_paths(*sources)]


def _paths(*sources: object) -> list[Path]:
    """The file paths among data arguments (a Dataset or None is no file): outputs must not overwrite them."""
    return [Path(s) for s in sources if isinstance(s, (str, Path))]


def batch(
    inputs: Sequence[str | Path],
    targets: Sequence[str | Path],
    output_dir: str | Path,
    scheduler: str | None = None,
    workers: int | None = None,
    memory_limit: str | None = None,
    rules: str | Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> BatchIndex:
    """A zoo × targets on Dask (see autoptq.batch): one resumable variants job per (model, target) into
    `output_dir/<model>/<target>/`, plus index.json and index.md. `inputs` are models or YAML/CSV job files;
    `targets` are profile names or YAML paths; `scheduler` is a running Dask scheduler's address (default: an
    embedded LocalCluster of `workers` processes, one per core)."""
    from autoptq.batch import run  # Dask is the optional `batch` extra

    return run(inputs, targets, output_dir, scheduler, workers, memory_limit, rules, progress)
