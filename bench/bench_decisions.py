"""Decision quality: autoptq's default choice against an exhaustive oracle over the recipe space, per (model, CPU
target) this machine stands in for.

For each case:

- oracle: every recipe of the space (autoptq.space: the weight-only space, granularity x weight dtype x op groups,
  and the full-int8 space, activation dtype x granularity x op set, min-max calibration), each quantized and
  verified (onnxruntime on this machine, latency measured side by side with float, fidelity on held-out data);
  the pick is the same objective autoptq uses (fastest within 5%, then smallest within 5%, then most faithful:
  the user metric when given, else the lowest output SQNR), float if nothing passes;
- autoptq: `autoptq.produce.produce` on the plan, i.e. `autoptq quantize` without a budget (the best measured of a
  handful the cost model ranks highest, plus onnxruntime's plain defaults);
- the loop: `autoptq.tuning.tune` under a fidelity budget (`--min-sqnr`, 5 dB below the oracle pick's SQNR).

A cell agrees when autoptq's pick is the oracle's recipe, or matches or beats it within the tie margins (latency
and size within 5%, fidelity not lower by more than 0.5 dB or 0.005 of the metric). Regret: autoptq's latency
ratio, size ratio and fidelity minus the oracle's. Timings are wall clock in this process on a shared machine.

Models: the MiniLM sentence encoder exported by bench/export_minilm.py (if present under
~/.cache/autoptq-corpus/minilm, scored with examples/metrics/embedding_cosine.py:score), the shipped digits CNN
(examples/), and the corpus of bench/corpus.py (branch `corpus`) where its quick data is stacked .npz
(models/<name>/*.onnx, data/<name>/quick/{calib,val}.npz); output SQNR is their fidelity here.

Run: python bench/bench_decisions.py [--quick]   (--quick: the digits CNN on x86-vnni only)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import REPO_DIR, environment, markdown_table, parse_args, write_result

from autoptq.api import QuantizeOptions, load_data, plan_for, split_data
from autoptq.candidates import Candidate, conformant
from autoptq.errors import AutoptqError
from autoptq.graph import load_model
from autoptq.planner import load_tree
from autoptq.prepare import PREPARATION_SAMPLES, prepare
from autoptq.produce import TIE, Attempt, best_measured, produce
from autoptq.profiles import load_profile
from autoptq.quantizers import QUANTIZERS
from autoptq.recipe import Recipe
from autoptq.space import full_int8_space, weight_only_space
from autoptq.tuning import Budget, tune
from autoptq.user_metric import UserMetric, load_metric
from autoptq.verify import measurable_here, verify

CORPUS = Path.home() / ".cache" / "autoptq-corpus"
TARGETS = ("x86-vnni",)
"""This machine (AVX-512 VNNI) stands in for x86-vnni only: timing x86-avx2 recipes here would not be that CPU."""
SQNR_TIE_DB = 0.5
KNOBS = {"per_channel", "weight_dtype", "activation_dtype", "op_types_to_quantize"}
METRIC_TIE = 0.005


@dataclass
class Case:
    name: str
    model: Path
    calib: Path
    val: Path
    metric: str | None = None


@dataclass
class Pick:
    step: str
    recipe: str
    ratio: float
    size: float
    fidelity: float
    seconds: float


def cases(quick: bool) -> list[Case]:
    examples = REPO_DIR / "examples"
    found = [Case("digits CNN", examples / "digits_cnn.onnx", examples / "calib.npz", examples / "val.npz")]
    if quick:
        return found
    minilm = CORPUS / "minilm"
    if (minilm / "model.onnx").is_file():
        metric = f"{REPO_DIR / 'examples' / 'metrics' / 'embedding_cosine.py'}:score"
        found.append(Case("MiniLM-L6 encoder", minilm / "model.onnx", minilm / "calib.npz", minilm / "val.npz", metric))
    # bench/corpus.py (branch corpus) layout: models/<name>/<file>.onnx, data/<name>/quick/{calib,val}.npz
    for model in sorted(CORPUS.glob("models/*/*.onnx")):
        data = CORPUS / "data" / model.parent.name / "quick"
        if (data / "calib.npz").is_file() and (data / "val.npz").is_file():
            found.append(Case(model.parent.name, model, data / "calib.npz", data / "val.npz"))
    return found


def fidelity(attempt: Attempt) -> float:
    ver = attempt.verification
    if ver is None:
        return float("-inf")
    if ver.metric is not None:
        return ver.metric.candidate
    return min((f.sqnr_db for f in ver.fidelity), default=float("-inf"))


def pick_of(attempt: Attempt | None, seconds: float) -> Pick:
    if attempt is None or attempt.verification is None:
        return Pick("float", "float", 1.0, 1.0, float("inf"), seconds)
    ver = attempt.verification
    knobs = attempt.recipe.model_dump_json(include=KNOBS)
    recipe = f"{attempt.technique}: {knobs}"
    return Pick(
        attempt.step, recipe, ver.latency.ratio if ver.latency else 1.0, ver.size_ratio, fidelity(attempt), seconds
    )


def oracle(case: Case, target: str, metric: UserMetric | None) -> tuple[Pick, int]:
    """Every recipe of the space, measured; the objective's pick."""
    start = time.perf_counter()
    graph = load_model(case.model)
    profile = load_profile(target)
    calibration, validation, _ = split_data(graph, load_data(case.calib, graph), load_data(case.val, graph), False)
    prepared = prepare(graph.model, validation.take(PREPARATION_SAMPLES)).model
    space: list[Candidate] = []
    for recipe in weight_only_space(profile, graph, Recipe()):
        space.append(conformant("weight-only", "weight_only_int8", recipe, profile, graph, calibration))
    for recipe in full_int8_space(profile, graph, Recipe()):
        space.append(conformant("full int8", "full_int8", recipe, profile, graph, calibration))
    passed = []
    tried = 0
    for candidate in (c for c in space if c is not None):
        tried += 1
        try:
            result = QUANTIZERS[candidate.technique](prepared, candidate.recipe, calibration, profile)
        except AutoptqError:
            continue
        ver = verify(graph.model, result.model, result.applied.integer_io, validation, profile, metric=metric,
                     float_size_bytes=len(graph.original_bytes()))  # fmt: skip
        attempt = Attempt(**candidate.model_dump(), accepted=ver.passed, verification=ver, applied=result.applied)
        if ver.passed:
            passed.append((attempt, b""))
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    best = best_measured(passed, plan)[0] if passed else None
    return pick_of(best, time.perf_counter() - start), tried


def default_choice(case: Case, target: str, metric: UserMetric | None) -> tuple[Pick, float]:
    start = time.perf_counter()
    graph = load_model(case.model)
    profile = load_profile(target)
    calibration, validation, _ = split_data(graph, load_data(case.calib, graph), load_data(case.val, graph), False)
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    outcome = produce(graph, profile, plan, calibration, validation, metric=metric)
    chosen = None if outcome.kept_float else next(a for a in outcome.attempts if a.verification is outcome.verification)
    pick = pick_of(chosen, time.perf_counter() - start)
    return pick, (min((f.sqnr_db for f in outcome.verification.fidelity), default=0.0) if outcome.verification else 0.0)


def loop_choice(case: Case, target: str, metric: UserMetric | None, min_sqnr: float) -> tuple[str, float, int]:
    start = time.perf_counter()
    graph = load_model(case.model)
    profile = load_profile(target)
    calibration, validation, _ = split_data(graph, load_data(case.calib, graph), load_data(case.val, graph), False)
    plan = plan_for(graph, profile, load_tree(), calibration, QuantizeOptions())
    result = tune(graph, profile, plan, calibration, validation, Budget(min_sqnr_db=min_sqnr), metric=metric)
    trial = result.trials[result.chosen]
    label = f"{trial.step} ({trial.technique}){'' if result.within_budget else ', NOT within budget'}"
    return label, time.perf_counter() - start, len(result.trials)


def agrees(ours: Pick, best: Pick, metric: bool) -> bool:
    if ours.recipe == best.recipe:
        return True
    tie = METRIC_TIE if metric else SQNR_TIE_DB
    return (
        ours.ratio <= best.ratio * (1 + TIE)
        and ours.size <= best.size * (1 + TIE)
        and ours.fidelity >= best.fidelity - tie
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rows = []
    agreed = total = 0
    for case in cases(args.quick):
        metric = load_metric(case.metric)
        for target in TARGETS[:1] if args.quick else TARGETS:
            if not measurable_here(load_profile(target)):
                continue
            try:
                best, tried = oracle(case, target, metric)
                ours, _ = default_choice(case, target, metric)
            except AutoptqError as exc:  # e.g. a model this branch cannot load yet (symbolic shapes)
                rows.append([case.name, target, f"skipped: {str(exc)[:90]}", "", "", "", "", "", ""])
                print(rows[-1], flush=True)
                continue
            loop_label, loop_seconds, trials = (
                loop_choice(case, target, metric, best.fidelity - 5.0)
                if (metric is None and best.fidelity != float("inf"))
                else ("(metric case: not run)", 0.0, 0)
            )
            ok = agrees(ours, best, metric is not None)
            agreed += ok
            total += 1
            rows.append([
                case.name, target, f"{best.step} {best.ratio:.2f}x lat {best.size:.2f}x size {best.fidelity:.3f}",
                f"{ours.step} {ours.ratio:.2f}x lat {ours.size:.2f}x size {ours.fidelity:.3f}",
                "yes" if ok else "no",
                f"{ours.ratio - best.ratio:+.2f} / {ours.size - best.size:+.2f} / {ours.fidelity - best.fidelity:+.3f}",
                f"{best.seconds:.0f} s ({tried} recipes)",
                f"{ours.seconds:.0f} s ({100 * ours.seconds / best.seconds:.0f}%)",
                f"{loop_label}, {trials} trials, {loop_seconds:.0f} s",
            ])  # fmt: skip
            print(rows[-1], flush=True)
    headers = ["model", "target", "oracle pick (latency, size, fidelity)", "autoptq default", "agrees",
               "regret latency / size / fidelity", "oracle time", "autoptq time (% of oracle)",
               "loop under --min-sqnr (oracle - 5 dB)"]  # fmt: skip
    text = "\n".join([
        "# Decision quality: autoptq's default vs an exhaustive oracle over the recipe space", "",
        environment(), "", markdown_table(headers, rows), "",
        f"Agreement: {agreed}/{total} cells. Fidelity: the user metric where given, else the lowest output SQNR (dB).",
    ])  # fmt: skip
    print(write_result("decisions", text))


if __name__ == "__main__":
    main()
