"""Decision quality: autoptq's default choice against an exhaustive oracle over the recipe space, per (model, CPU
target) this machine stands in for.

For each case:

- oracle: every recipe of the space (autoptq.techniques.space: the weight-only space,
  granularity x weight dtype x op groups,
  and the full-int8 space, activation dtype x granularity x op set x QDQ/QOperator (+ SmoothQuant where installed
  and offered), each quantized and verified (onnxruntime on this machine, latency measured side by side with float,
  fidelity on held-out data); each static recipe that did not fail on speed, size or running also with every range
  variant, calibration method (min-max, percentile, entropy) x bias correction (off, on), judged untimed with the
  recipe's latency (ranges move, kernels do not);
  the pick is the same objective autoptq uses (fastest within 5%, then smallest within 5%, then most faithful:
  the user metric when given, else the lowest output SQNR), float if nothing passes;
- autoptq: `autoptq.pipeline.produce.produce` on the plan, i.e. `autoptq quantize` without a budget (the best measured
  of a handful the cost model ranks highest, plus onnxruntime's plain defaults);
- the loop: `autoptq.decide.tuning.tune` under a fidelity budget (`--min-sqnr`, 5 dB below the oracle pick's SQNR, or
  `--max-drop 0.02` of the user metric) and a 180 s time budget.

A cell agrees when autoptq's pick is the oracle's recipe, or matches or beats it by the objective both use (faster
beyond the 5% margin; else as fast and smaller beyond 5%; else as fast and as small and fidelity not lower by more
than 0.5 dB or 0.005 of the metric), with both picks re-timed together. Regret: autoptq's latency
ratio, size ratio and fidelity minus the oracle's. Timings are wall clock in this process on a shared machine.

Models: the MiniLM sentence encoder exported by bench/export_minilm.py (if present under
~/.cache/autoptq-corpus/minilm, scored with examples/metrics/embedding_cosine.py:score), the shipped digits CNN
(examples/), and the corpus of bench/corpus.py with its quick data (models/<name>/*.onnx,
data/<name>/quick/{calib,val}: stacked .npz or folders of one-sample files; open input dims bound from the data as
`autoptq quantize` does); output SQNR is their fidelity here.

Oracle measurements are cached per recipe in bench/results/decisions_oracle.json (the verified Attempt and the
seconds it took), so a knob added to the space later measures only its new recipes, and the default can be
re-run alone; `--fresh` ignores the cache. When the two picks differ, both are re-timed together with float in one
interleaved round robin (runner.measure_together) before agreement is judged: pairwise ratios taken minutes apart
on a loaded machine differ by more than the margins chosen on.

`--first-passing` measures what the time target would leave room for, against the same cached oracle: `autoptq
quantize --search first`, the plan's candidates in order, each verified and timed once side by side with float (a
pick must be timed to be called faster), the first that passes kept. Its rows go to
bench/results/decisions_first_passing.{md,json}.

Run: python bench/bench_decisions.py [--quick] [--models a,b] [--targets x86-vnni,x86-avx2] [--fresh] [--no-loop]
[--loop-only] [--first-passing] (--quick: the digits CNN on x86-vnni only; --loop-only: the loop column again, the
oracle's pick read from the cache)
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
from benchlib import REPO_DIR, RESULTS_DIR, environment, markdown_table, write_result
from onnx import ModelProto

from autoptq.api import QuantizeOptions, bound, load_data, plan_for, split_data
from autoptq.decide.candidates import Candidate, conformant
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan, load_tree
from autoptq.decide.tuning import Budget, tune
from autoptq.devices.canonical import float_model_for
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.errors import AutoptqError
from autoptq.evaluate.evaluation import SLOWER_TOLERANCE
from autoptq.evaluate.runner import LatencyMeasurement, ModelRunner, measurable_here, measure_together
from autoptq.evaluate.verify import verify, with_joint_timing
from autoptq.io.outputs import write_atomic
from autoptq.io.user_metric import UserMetric, load_metric
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph, load_model
from autoptq.model.intio import read_integer_io
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.pipeline.produce import TIE, Attempt, SearchMode, best_measured, fidelity_of, produce
from autoptq.techniques import REGISTRY
from autoptq.techniques.qdq import ranges_file
from autoptq.techniques.recipe import Recipe
from autoptq.techniques.space import full_int8_space, weight_only_space

CORPUS = Path.home() / ".cache" / "autoptq-corpus"
TARGETS = ("x86-vnni", "x86-avx2")
"""The CPU targets this machine (AVX-512 VNNI, onnxruntime CPU EP) measures: both profiles run the same kernels
here, so x86-avx2 differs only in what its rules allow (reduce_range weights)."""
ORACLE_CACHE = RESULTS_DIR / "decisions_oracle.json"
SQNR_TIE_DB = 0.5
KNOBS = {
    "per_channel", "weight_dtype", "activation_dtype", "op_types_to_quantize", "quant_format", "reduce_range",
    "smooth_quant", "calibration_method", "bias_correction",
}  # fmt: skip
METRIC_TIE = 0.005
LOOP_DROP_DB = 5.0
"""The loop's budget: --min-sqnr this far below the oracle pick's SQNR (or --max-drop 0.02 of the user metric)."""


@dataclass
class Case:
    name: str
    model: Path
    calib: Path
    val: Path
    metric: str | None = None


@dataclass
class Setup:
    graph: ModelGraph
    profile: HardwareProfile
    calibration: Dataset | None
    validation: Dataset
    plan: Plan
    seconds: float


@dataclass
class Pick:
    step: str
    recipe: str
    ratio: float
    size: float
    fidelity: float
    seconds: float
    technique: str = "none"
    model: ModelProto | None = None


def cases(quick: bool) -> list[Case]:
    examples = REPO_DIR / "examples"
    found = [Case("digits CNN", examples / "digits_cnn.onnx", examples / "calib.npz", examples / "val.npz")]
    if quick:
        return found
    minilm = CORPUS / "minilm"
    if (minilm / "model.onnx").is_file():
        metric = f"{REPO_DIR / 'examples' / 'metrics' / 'embedding_cosine.py'}:score"
        found.append(Case("MiniLM-L6 encoder", minilm / "model.onnx", minilm / "calib.npz", minilm / "val.npz", metric))
    # bench/corpus.py layout: models/<name>/<file>.onnx, data/<name>/quick/{calib,val}(.npz | folder of samples)
    for model in sorted(CORPUS.glob("models/*/*.onnx")):
        data = CORPUS / "data" / model.parent.name / "quick"
        for calib, val in ((data / "calib.npz", data / "val.npz"), (data / "calib", data / "val")):
            if calib.exists() and val.exists():
                found.append(Case(model.parent.name, model, calib, val))
                break
    return found


def setup(case: Case, target: str) -> Setup:
    """What `autoptq quantize` does before producing: load, bind open dims from the data, split, plan."""
    start = time.perf_counter()
    graph = load_model(case.model)
    profile = load_profile(target)
    data, val = load_data(case.calib, graph), load_data(case.val, graph)
    graph = bound(graph, data, val)
    calibration, validation, _ = split_data(graph, data, val, False)
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    return Setup(graph, profile, calibration, validation, plan, time.perf_counter() - start)


def label(technique: str, recipe: Recipe) -> str:
    # Knobs at their default (QDQ, no SmoothQuant, min-max, no bias correction) are left out, so earlier cache keys
    # stay valid.
    defaults = Recipe()
    knobs = {k for k in KNOBS if k not in DEFAULT_LEFT_OUT or getattr(recipe, k) != getattr(defaults, k)}
    return f"{technique}: {recipe.model_dump_json(include=knobs)}"


DEFAULT_LEFT_OUT = {"quant_format", "smooth_quant", "calibration_method", "bias_correction"}


def pick_of(attempt: Attempt | None, seconds: float, model: ModelProto | None = None) -> Pick:
    if attempt is None or attempt.verification is None:
        return Pick("float", "float", 1.0, 1.0, float("inf"), seconds)
    ver = attempt.verification
    ratio = ver.latency.ratio if ver.latency else 1.0
    recipe = label(attempt.technique, attempt.recipe)
    return Pick(attempt.step, recipe, ratio, ver.size_ratio, fidelity_of(attempt), seconds, attempt.technique, model)


def space_of(s: Setup) -> list[Candidate]:
    found: list[Candidate] = []
    for recipe in weight_only_space(s.profile, s.graph, Recipe(reduce_range=s.plan.recipe.reduce_range)):
        found.append(conformant("weight-only", "weight_only_int8", recipe, s.profile, s.graph, s.calibration))
    if s.calibration is not None:
        base = Recipe(reduce_range=s.profile.quantization.int8_dot_product != "int32_accumulate")
        for recipe in full_int8_space(s.profile, s.graph, base):
            found.append(conformant("full int8", "full_int8", recipe, s.profile, s.graph, s.calibration))
    kept: list[Candidate] = []
    for candidate in found:
        if candidate is not None and all(label(c.technique, c.recipe) != label(candidate.technique, candidate.recipe)
                                         for c in kept):  # fmt: skip
            kept.append(candidate)
    return kept


def load_cache(fresh: bool) -> dict[str, dict[str, dict]]:
    if fresh or not ORACLE_CACHE.is_file():
        return {}
    return json.loads(ORACLE_CACHE.read_text())


def save_cache(cache: dict[str, dict[str, dict]]) -> None:
    write_atomic(ORACLE_CACHE, json.dumps(cache, indent=1, sort_keys=True) + "\n")


LOOP_TIME_S = 180.0
"""The loop's time budget (`--time-budget`): the bench shows what it finds in a bounded time."""


def oracle(case: Case, s: Setup, metric: UserMetric | None, cache: dict[str, dict[str, dict]]) -> tuple[Pick, int]:
    """Every recipe of the space, measured (from the cache where it already was), and every static one's range
    variants (the technique's `range_variants`: calibration method x bias correction) where the recipe did not fail
    on speed, size or running; the objective's pick. Its time is the setup, the preparation and the sum of every
    recipe's quantize + verify time. A range variant is judged untimed, with its recipe's measured latency (the same
    kernels), and its calibration is shared with the variants of the same method (one calibration per method, as
    autoptq's default shares it)."""
    key = f"{case.name}#{s.profile.name}"
    entries = cache.setdefault(key, {})
    start = time.perf_counter()
    float_model = float_model_for(s.graph, s.profile)
    prepared = prepare(float_model, s.validation.take(PREPARATION_SAMPLES)).model
    entries.setdefault("_prepare", {"seconds": time.perf_counter() - start})
    total = s.seconds + entries["_prepare"]["seconds"]
    measure = Measure(s, metric, float_model, prepared)
    passed = []
    count = 0
    with tempfile.TemporaryDirectory(prefix="oracle-ranges-") as ranges:
        for candidate in space_of(s):
            recipes = [(candidate, None)]
            while recipes:
                current, timed = recipes.pop(0)
                name = label(current.technique, current.recipe)
                if name not in entries:
                    began = time.perf_counter()
                    attempt = measure(current, Path(ranges) if timed else None, timed)
                    entries[name] = {"seconds": time.perf_counter() - began, "attempt": attempt.model_dump(mode="json")}
                    save_cache(cache)
                    print(f"  oracle {name}: {outcome(attempt)} {entries[name]['seconds']:.0f} s", flush=True)
                total += entries[name]["seconds"]
                count += 1
                attempt = Attempt.model_validate(entries[name]["attempt"])
                if attempt.accepted:
                    passed.append((attempt, b""))
                if timed is None:
                    recipes += range_variants(attempt)
    best = best_measured(passed, s.plan)[0] if passed else None
    model = None
    if best is not None:
        model = REGISTRY[best.technique].quantize(prepared, best.recipe, s.calibration, s.profile).model
    return pick_of(best, total, model), count


@dataclass
class Measure:
    """One recipe quantized and verified against float on the validation data; timed side by side with float, or,
    given a latency (a range variant's recipe's), judged untimed with that latency."""

    s: Setup
    metric: UserMetric | None
    float_model: ModelProto
    prepared: ModelProto

    def __call__(self, candidate: Candidate, ranges: Path | None, timed: LatencyMeasurement | None) -> Attempt:
        s = self.s
        technique = REGISTRY[candidate.technique]
        cache = ranges / ranges_file(candidate.recipe) if ranges is not None and technique.calibrated else None
        try:
            result = technique.quantize(self.prepared, candidate.recipe, s.calibration, s.profile,
                                        calibration_cache=cache)  # fmt: skip
            ver = verify(self.float_model, result.model, result.applied.integer_io, s.validation, s.profile,
                         measure=timed is None, metric=self.metric,
                         float_size_bytes=len(s.graph.original_bytes()))  # fmt: skip
        except AutoptqError as exc:
            return Attempt(**candidate.model_dump(), accepted=False, error=str(exc))
        if timed is not None:
            ver = with_joint_timing(ver.model_copy(update={"latency": timed}), timed.ratio)
        return Attempt(**candidate.model_dump(), accepted=ver.passed, verification=ver)


def range_variants(attempt: Attempt) -> list[tuple[Candidate, LatencyMeasurement]]:
    """A static recipe's range variants, with its latency, unless it failed where ranges cannot help (slower than
    float, not smaller, not runnable) or was not measured."""
    ver = attempt.verification
    if not REGISTRY[attempt.technique].calibrated or ver is None or ver.latency is None or not ver.fidelity:
        return []
    if ver.latency.ratio > 1 + SLOWER_TOLERANCE or ver.size_bytes >= ver.float_size_bytes:
        return []  # the cached verification keeps its problems as texts: read the numbers they come from
    variants = REGISTRY[attempt.technique].range_variants(attempt.recipe)
    return [(Candidate(step=attempt.step, technique=attempt.technique, recipe=r), ver.latency) for _, r in variants]


def outcome(attempt: Attempt) -> str:
    ver = attempt.verification
    ratio = ver.latency.ratio if ver and ver.latency else "-"
    return (
        f"{'pass' if attempt.accepted else 'fail'} {ratio} {ver.size_ratio if ver else '-'} {fidelity_of(attempt):.3f}"
    )


def autoptq_choice(
    case: Case, target: str, metric: UserMetric | None, search: SearchMode = "measured"
) -> tuple[Pick, Setup, str]:
    """`autoptq quantize` without a budget: the default (`measured`), or `--search first` (the plan's candidates in
    order, the first that passes verification, each timed once side by side with float, kept); and how many it
    verified."""
    start = time.perf_counter()
    s = setup(case, target)
    outcome = produce(Job(s.graph, s.profile, s.calibration, s.validation, metric=metric), s.plan, search=search)
    chosen = None if outcome.kept_float else next(a for a in outcome.attempts if a.verification is outcome.verification)
    model = None if outcome.kept_float else onnx.load_from_string(outcome.model_bytes)
    tried = f"{len([a for a in outcome.attempts if a.verification is not None])} verified"
    return pick_of(chosen, time.perf_counter() - start, model), s, tried


def first_passing_row(case: Case, target: str, metric: UserMetric | None, cache: dict[str, dict[str, dict]]) -> list:
    ours, s, _ = autoptq_choice(case, target, metric, search="first")
    best, count = oracle(case, s, metric, cache)
    joint = retime(s, ours, best)
    return [
        case.name, target, describe(best) + (f"; {joint}" if joint else ""), f"{describe(ours)} [{ours.step}]",
        "yes" if agrees(ours, best, metric is not None) else "no", f"{best.seconds:.0f} s ({count} recipes)",
        f"{ours.seconds:.1f} s ({100 * ours.seconds / best.seconds:.1f}%)",
    ]  # fmt: skip


def loop_choice(case: Case, target: str, metric: UserMetric | None, best: Pick) -> str:
    start = time.perf_counter()
    s = setup(case, target)
    budget = (
        Budget(max_drop=0.02, time_budget_s=LOOP_TIME_S)
        if metric is not None
        else Budget(min_sqnr_db=best.fidelity - LOOP_DROP_DB, time_budget_s=LOOP_TIME_S)
    )
    result = tune(Job(s.graph, s.profile, s.calibration, s.validation, metric=metric), s.plan, budget)
    trial = result.trials[result.chosen]
    first = next((t.index + 1 for t in result.trials if t.meets_budget), None)
    within = f", first within budget: trial {first}" if first else ", NOT within budget"
    ratio = f", {trial.latency_ratio:.2f}x lat" if trial.latency_ratio is not None else ""
    budget_text = "--max-drop 0.02" if metric is not None else f"--min-sqnr {best.fidelity - LOOP_DROP_DB:.1f}"
    return (
        f"{budget_text}: {trial.step} ({trial.technique}){ratio}{within}; {len(result.trials)} trials, "
        f"{time.perf_counter() - start:.0f} s"
    )


def retime(s: Setup, ours: Pick, best: Pick) -> str:
    """Both picks timed together with float in one round robin; their ratios replace the pairwise ones."""
    picks = [p for p in (ours, best) if p.model is not None]
    if len(picks) < 2 or ours.recipe == best.recipe or not s.validation.samples:
        return ""
    runners = [ModelRunner(p.model, read_integer_io(p.model)) for p in picks]
    reference = ModelRunner(float_model_for(s.graph, s.profile))
    ratios = measure_together(reference, runners, s.validation.samples[0], budget_s=3.0)
    for pick, ratio in zip(picks, ratios, strict=True):
        pick.ratio = ratio
    return f"re-timed together: ours {ratios[0]:.2f}x, oracle {ratios[1]:.2f}x"


def agrees(ours: Pick, best: Pick, metric: bool) -> bool:
    """Matches or beats the oracle's pick by the objective both use (prefer speed: fastest within 5%, then smallest
    within 5%, then most faithful), with the latencies of the joint re-timing. A quantized pick that passed
    verification beats float (not slower beyond the margin, smaller); float never beats a quantized oracle pick."""
    if ours.recipe == best.recipe:
        return True
    if best.model is None:
        return ours.ratio <= 1 + TIE and ours.size < 1
    if ours.model is None:
        return False
    tie = METRIC_TIE if metric else SQNR_TIE_DB

    def key(p: Pick) -> tuple[bool, bool, float]:
        fast = p.ratio <= min(ours.ratio, best.ratio) * (1 + TIE)
        small = p.size <= min(ours.size, best.size) * (1 + TIE)
        return (not fast, not small, -p.fidelity)

    mine, theirs = key(ours), key(best)
    return mine[:2] < theirs[:2] or (mine[:2] == theirs[:2] and -mine[2] >= -theirs[2] - tie)


def short(recipe_label: str) -> str:
    """A recipe label (technique: knob JSON) as a few words for the table."""
    technique, _, knobs_json = recipe_label.partition(": ")
    knobs = json.loads(knobs_json)
    granularity = "per-channel" if knobs.get("per_channel") else "per-tensor"
    ops = knobs.get("op_types_to_quantize") or []
    if technique == "weight_only_int8":
        return f"weight-only {granularity} {knobs.get('weight_dtype')} {'+'.join(ops)}"
    op_set = f"{len(ops)} op types" if ops else "all ops"
    extra = " QOperator" if knobs.get("quant_format") == "qoperator" else ""
    extra += " SmoothQuant" if knobs.get("smooth_quant") else ""
    extra += f" {knobs['calibration_method']}" if knobs.get("calibration_method") else ""
    extra += " +bias correction" if knobs.get("bias_correction") else ""
    return f"full-int8 {knobs.get('activation_dtype')} act {granularity} {op_set}{extra}"


def shortened(cell: str) -> str:
    """A table cell with every long recipe label (from the rows file) as its short form."""
    cell = re.sub(r"(weight_only_int8|full_int8): \{[^}]*\}", lambda m: short(m.group(0)), cell)
    # A measured point of the recipe space is named by its recipe, already in the cell.
    return re.sub(r"\[(full int8 |weight-only )[^\]]*\]", "[recipe space]", cell)


def describe(p: Pick) -> str:
    if p.model is None:
        return "float"
    return f"{short(p.recipe)} ({p.ratio:.2f}x lat, {p.size:.2f}x size, {p.fidelity:.3f})"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits CNN on x86-vnni only")
    parser.add_argument("--models", default="", help="comma-separated case names (default: all found)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--fresh", action="store_true", help="re-measure every oracle recipe")
    parser.add_argument("--no-loop", action="store_true", help="skip the loop under a budget")
    parser.add_argument(
        "--loop-only", action="store_true", help="re-run only the loop (oracle from the cache), keep the rest of a row"
    )
    parser.add_argument("--oracle-only", action="store_true", help="fill the oracle cache, nothing else")
    parser.add_argument(
        "--first-passing", action="store_true", help="--search first (the first passing candidate) against the oracle"
    )
    parser.add_argument("--oracle-cache", type=Path, default=ORACLE_CACHE, help="per-recipe oracle results (JSON)")
    parser.add_argument("--rows", type=Path, default=None, help="per-cell results (default: bench/results/)")
    parser.add_argument("--merge", default="", help="comma-separated rows files to merge in (runs split in parts)")
    parser.add_argument("--table-only", action="store_true", help="write decisions.md from the rows, run nothing")
    return parser.parse_args()


HEADERS = ["model", "target", "oracle pick (latency, size, fidelity)", "autoptq default", "agrees",
           "regret latency / size / fidelity", "oracle time", "autoptq time (% of oracle)",
           "loop under a budget"]  # fmt: skip
FIRST_PASSING_HEADERS = ["model", "target", "oracle pick (latency, size, fidelity)", "--search first",
                         "agrees", "oracle time", "its time (% of oracle)"]  # fmt: skip


def rerun_loop(
    rows: dict[str, list[str]], case: Case, target: str, metric: UserMetric | None, cache: dict[str, dict[str, dict]]
) -> None:
    """The loop cell of a row again, the rest kept: the loop's budget comes from the oracle's pick, read from the
    cache (the default choice, which the loop does not depend on, is not re-run)."""
    key = f"{case.name}#{target}"
    best, _ = oracle(case, setup(case, target), metric, cache)
    row = rows.get(key) or [case.name, target, *[""] * (len(HEADERS) - 2)]
    row[-1] = loop_choice(case, target, metric, best) if best.model is not None else "(not run)"
    rows[key] = row
    print(row[-1], flush=True)


def write_rows(args: argparse.Namespace, rows: dict[str, list[str]]) -> None:
    if not args.quick:
        write_atomic(args.rows, json.dumps(rows, indent=1, sort_keys=True) + "\n")


def main() -> None:
    args = arguments()
    if args.rows is None:
        args.rows = RESULTS_DIR / ("decisions_first_passing_rows.json" if args.first_passing else "decisions_rows.json")
    wanted = {m for m in args.models.split(",") if m}
    targets = ["x86-vnni"] if args.quick else [t for t in args.targets.split(",") if t]
    global ORACLE_CACHE
    ORACLE_CACHE = args.oracle_cache
    cache = load_cache(args.fresh)
    rows: dict[str, list[str]] = json.loads(args.rows.read_text()) if args.rows.is_file() and not args.quick else {}
    for extra in (Path(m) for m in args.merge.split(",") if m):
        rows.update(json.loads(extra.read_text()))
    for case in [] if args.table_only else cases(args.quick):
        if wanted and case.name not in wanted:
            continue
        metric = load_metric(case.metric)
        for target in targets:
            if not measurable_here(load_profile(target)):
                continue
            print(f"{case.name} {target}", flush=True)
            try:
                if args.oracle_only:
                    oracle(case, setup(case, target), metric, cache)
                    continue
                if args.loop_only or args.first_passing:
                    if args.loop_only:
                        rerun_loop(rows, case, target, metric, cache)
                    else:
                        rows[f"{case.name}#{target}"] = first_passing_row(case, target, metric, cache)
                    write_rows(args, rows)
                    continue
                ours, s, tried = autoptq_choice(case, target, metric)
                best, count = oracle(case, s, metric, cache)
            except AutoptqError as exc:
                rows[f"{case.name}#{target}"] = [case.name, target, f"skipped: {str(exc)[:120]}", *[""] * 6]
                continue
            joint = retime(s, ours, best)
            loop = "(not run)"
            if not args.no_loop and best.model is not None:
                loop = loop_choice(case, target, metric, best)
            ok = agrees(ours, best, metric is not None)
            regret = f"{ours.ratio - best.ratio:+.2f} / {ours.size - best.size:+.2f} / " + (
                "0" if ours.recipe == best.recipe else f"{ours.fidelity - best.fidelity:+.3f}"
            )
            rows[f"{case.name}#{target}"] = [
                case.name, target, describe(best) + (f"; {joint}" if joint else ""), f"{describe(ours)} [{ours.step}]",
                "yes" if ok else "no", regret, f"{best.seconds:.0f} s ({count} recipes)",
                f"{ours.seconds:.0f} s ({100 * ours.seconds / best.seconds:.1f}%; {tried})", loop,
            ]  # fmt: skip
            print(rows[f"{case.name}#{target}"], flush=True)
            write_rows(args, rows)
    if args.oracle_only:
        return  # the oracle cache is the result; the table comes from the rows of a run with the default
    if args.merge:
        write_rows(args, rows)
    table = [[shortened(c) for c in r] for _, r in sorted(rows.items())]
    counted = [r for r in table if r[4] in ("yes", "no")]
    agreed = sum(r[4] == "yes" for r in counted)
    title, headers, name = (
        ("`--search first` (the first passing candidate)", FIRST_PASSING_HEADERS, "decisions_first_passing")
        if args.first_passing
        else ("autoptq's default", HEADERS, "decisions")
    )
    text = "\n".join([
        f"# Decision quality: {title} vs an exhaustive oracle over the recipe space", "",
        environment(), "", markdown_table(headers, table), "",
        f"Agreement: {agreed}/{len(counted)} cells. Fidelity: the user metric where given, else the lowest output "
        "SQNR (dB). Latency: ratio to float measured side by side on this shared machine.",
    ])  # fmt: skip
    if not args.quick:
        print(write_result(name, text))
    else:
        print(text)


if __name__ == "__main__":
    main()
