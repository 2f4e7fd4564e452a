"""The Python API: the same functions the command line calls, returning pydantic models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
from onnx import ModelProto
from pydantic import BaseModel, Field

from autoptq._version import __version__
from autoptq.calibration import Dataset, load_dataset, synthetic_dataset
from autoptq.check import CheckReport
from autoptq.check import check as run_check
from autoptq.coverage import CoverageReport, analyse
from autoptq.errors import AutoptqError
from autoptq.graph import ModelGraph, load_model
from autoptq.images import ImagePreprocessing, parse_preprocessing
from autoptq.manifest import DataInfo, InputModel, Manifest, check_summary, sha256, variant_from
from autoptq.outputs import check_output_folder, check_output_path, commit_staged, stage_folder, write_atomic
from autoptq.planner import DYNAMIC_QUANT_OPS, Plan, UserGoals, device_conformant_recipe, load_tree, plan_model, plans
from autoptq.produce import Outcome, produce, produce_tuned
from autoptq.profiles import HardwareProfile, load_profile, profile_file
from autoptq.recipe import Recipe, Technique
from autoptq.report import render_variants_report
from autoptq.rules import RuleSet
from autoptq.tuning import Budget
from autoptq.verify import DEFAULT_MIN_SQNR_DB

ModelSource = str | Path | ModelProto | ModelGraph
TargetSource = str | Path | HardwareProfile


def as_graph(model: ModelSource) -> ModelGraph:
    """Accept a path, a ModelProto or an already loaded ModelGraph."""
    return model if isinstance(model, ModelGraph) else load_model(model)


def as_profile(target: TargetSource) -> HardwareProfile:
    """Accept a shipped profile name, a YAML path or a HardwareProfile."""
    return target if isinstance(target, HardwareProfile) else load_profile(target)


def audit(model: ModelSource, targets: TargetSource | Sequence[TargetSource]) -> list[CoverageReport]:
    """Audit a model against one or more devices: what maps, where it falls back, memory fit."""
    graph = as_graph(model)
    if isinstance(targets, (str, Path, HardwareProfile)):
        targets = [targets]
    profiles = [as_profile(t) for t in targets]  # validate every target before any analysis
    return [analyse(graph, profile) for profile in profiles]


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
) -> list[Plan]:
    """Plan the post-training quantization of a model for one or more targets (one Plan each)."""
    tree = load_tree(rules)
    graph = as_graph(model)
    if isinstance(targets, (str, Path, HardwareProfile)):
        targets = [targets]
    profiles = [as_profile(t) for t in targets]
    dataset = load_data(data, graph, preprocess)
    return plans(graph, profiles, tree, dataset, goals)


class QuantizeOptions(BaseModel):
    """Settings of a quantize or variants run."""

    technique: Technique | None = Field(default=None, description="override the planned technique")
    min_sqnr_db: float = Field(default=DEFAULT_MIN_SQNR_DB, allow_inf_nan=False)
    measure_latency: bool = True
    synthetic_calibration: bool = False
    goals: UserGoals = Field(default_factory=UserGoals)
    budget: Budget = Field(default_factory=Budget, description="accuracy/fidelity budget: set → accuracy-aware search")


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
    base = Recipe(op_types_to_quantize=list(DYNAMIC_QUANT_OPS) if options.technique == "weight_only_int8" else [])
    recipe = device_conformant_recipe(base, options.technique, profile, graph, data)
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
) -> tuple[Plan, Outcome]:
    """Plan, prepare, quantize, verify (with fallback) and write the result atomically to `output`."""
    options = options or QuantizeOptions()
    graph = as_graph(model)
    out_path = check_output_path(Path(output), protected=protected_inputs(graph, [target], data, validation, rules))
    profile, tree = as_profile(target), load_tree(rules)
    calibration, held_out, _ = split_data(
        graph,
        load_data(data, graph, preprocess),
        load_data(validation, graph, preprocess),
        options.synthetic_calibration,
    )
    chosen = plan_for(graph, profile, tree, calibration, options)
    outcome = _produce(graph, profile, chosen, calibration, held_out, options, progress)
    write_atomic(out_path, outcome.model_bytes)
    return chosen, outcome


def _produce(
    graph: ModelGraph,
    profile: HardwareProfile,
    chosen: Plan,
    calibration: Dataset | None,
    held_out: Dataset,
    options: QuantizeOptions,
    progress: Callable[[str], None],
) -> Outcome:
    """The accuracy-aware search when a budget is set, else the plan with verification and fallback."""
    if options.budget.has_target:
        return produce_tuned(
            graph,
            profile,
            chosen,
            calibration,
            held_out,
            options.budget,
            options.goals.prefer,
            progress,
            options.measure_latency,
            options.min_sqnr_db,
        )
    return produce(graph, profile, chosen, calibration, held_out, options.min_sqnr_db, options.measure_latency)


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
) -> tuple[Manifest, dict[str, dict[str, object]]]:
    """One verified variant per target in `output_dir/<target>/model.onnx`, plus manifest.json, report.md and
    measurements.json (the only file that varies run to run: it holds timings)."""
    options = options or QuantizeOptions()
    graph = as_graph(model)
    profiles = [as_profile(t) for t in targets]
    if not profiles:
        raise AutoptqError("give at least one target")
    names = [p.name for p in profiles]
    if len({name.lower() for name in names}) != len(names):  # one folder each, also on case-insensitive disks
        raise AutoptqError(f"targets repeat: {names}")
    models = [f"{name}/model.onnx" for name in names]
    folder = check_output_folder(
        Path(output_dir),
        [*models, *_VARIANTS_FILES],
        protected=protected_inputs(graph, targets, data, validation, rules),
    )
    tree = load_tree(rules)
    dataset = load_data(data, graph, preprocess)
    calibration, held_out, held_out_source = split_data(
        graph, dataset, load_data(validation, graph, preprocess), options.synthetic_calibration
    )
    # Everything is written into a staging folder inside `folder`, then moved in with the manifest last.
    staging = stage_folder(folder)
    try:
        manifest, measurements = _variants_into(
            graph, profiles, tree, calibration, held_out, held_out_source, options, staging, progress
        )
        commit_staged(staging, folder, [*models, "report.md", "measurements.json"], last="manifest.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, measurements


_VARIANTS_FILES = ("manifest.json", "report.md", "measurements.json")


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
) -> tuple[Manifest, dict[str, dict[str, object]]]:
    variants, measurements = [], {}
    for profile in profiles:
        chosen = plan_for(graph, profile, tree, calibration, options)
        progress(f"{profile.name}: {chosen.technique}")
        outcome = _produce(graph, profile, chosen, calibration, held_out, options, progress)
        (folder / profile.name).mkdir(exist_ok=True)
        relative = f"{profile.name}/model.onnx"
        write_atomic(folder / relative, outcome.model_bytes)
        variant = variant_from(outcome, relative, chosen.warnings)
        checked = None
        if not outcome.kept_float:
            progress(f"{profile.name}: checking on the {profile.emulator} emulator")
            checked = run_check(onnx.load_from_string(outcome.model_bytes), profile, graph, held_out)
            variant = variant.model_copy(update={"check": check_summary(checked)})
        variants.append(variant)
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
) -> CheckReport:
    """Emulate a quantized model on a target and compare it with its float reference (see autoptq.check)."""

    profile = as_profile(target)
    reference_graph = as_graph(reference)
    quantized_model = quantized if isinstance(quantized, ModelProto) else load_model(quantized).model
    dataset = load_data(data, reference_graph, preprocess)
    if dataset is None:
        raise AutoptqError("check needs data: pass --data val.npz with arrays named after the model's inputs")
    return run_check(quantized_model, profile, reference_graph, dataset, tier, min_sqnr_db, max_drop)


def _without_folders(text: str, sources: list[str]) -> str:
    """`text` with the folders of data files removed, so manifests carry no machine-specific paths."""
    for source in sources:
        folder = str(Path(source).parent)
        if folder not in ("", "."):
            text = text.replace(folder + "/", "")
    return text


def protected_inputs(graph: ModelGraph, targets: Sequence[TargetSource], *sources: object) -> list[Path]:
    """Every input file an output must never overwrite: the model and its external data, the profile files of
    `targets`, and the data, validation and rules paths among `sources`."""
    profiles = [profile_file(t) for t in targets if isinstance(t, (str, Path))]
    return [*graph.source_files, *profiles, *_paths(*sources)]


def _paths(*sources: object) -> list[Path]:
    """The file paths among data arguments (a Dataset or None is no file): outputs must not overwrite them."""
    return [Path(s) for s in sources if isinstance(s, (str, Path))]
