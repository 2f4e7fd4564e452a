"""Accuracy-aware search: autoptq's greedy walk against an exhaustive search over subsets of sensitive nodes.

For each MobileNet-style model (autoptq.model.zoo) and integer-only target (edgetpu, qualcomm-htp: the latency of
every candidate is the cost model's estimate there, so the choice is deterministic), `autoptq.decide.tuning.tune` runs
twice on the same plan and data:

- greedy (autoptq's behaviour, the default `Budget(max_trials=40)`): once a candidate meets the budget, later
  candidates are tried only if the cost model says they could beat it on the objective; the exclusions are prefixes
  of the sensitivity ranking (1, 2, ... most sensitive nodes kept in float) until one meets the budget, then a
  backward pruning pass puts each of the first k-1 nodes back (least sensitive first) and keeps it quantized if the
  budget still holds; no float on an integer-only device once something meets the budget;
- exhaustive (`tune(..., search_class=every_subset_search(6))` from bench/search_baselines.py,
  `Budget(max_trials=1000)` so that nothing truncates it): every candidate of the walk with no early stop and,
  instead of the greedy prefixes, every non-empty subset of the 6 most sensitive nodes kept in float (63 exclusion
  trials), then the same choice.

A choice matches when both runs chose the same technique, calibration method and set of excluded nodes. The two
runs of a case are timed side by side in this one process, alternating which goes first from case to case, after an
untimed probe run (one trial) that warms the process up and measures the plan's own SQNR.

The data are RANDOM: N(0, 1) inputs from `autoptq.model.calibration.synthetic_dataset` (seeded), so there are no labels
and the budget is a fidelity budget: the minimum output SQNR against float, set a few dB above what the plan's
default recipe reaches, so the default misses it and the walk has to look further. Every number except the wall
times is deterministic.

Run: python bench/bench_tuning.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib import environment, markdown_table, parse_args, write_result
from onnx import ModelProto
from search_baselines import every_subset_search

from autoptq.api import QuantizeOptions, plan_for
from autoptq.decide.job import Job
from autoptq.decide.planner import Plan, load_tree
from autoptq.decide.tuning import Budget, Search, Trial, TuningResult, tune
from autoptq.devices.profiles import load_profile
from autoptq.model import zoo
from autoptq.model.calibration import Dataset, synthetic_dataset
from autoptq.model.graph import ModelGraph, load_model

NAME = "tuning"
SUBSETS = 6
"""The exhaustive run tries every non-empty subset of this many most sensitive nodes (2^6 - 1 = 63 exclusions)."""
EXHAUSTIVE_MAX_TRIALS = 1000
"""The exhaustive run's trial budget: high enough that it never truncates the search (the default is 40)."""


@dataclass(frozen=True)
class Model:
    """A zoo model and the budgets (dB above the plan's own SQNR) to search it under."""

    label: str
    build: Callable[[], ModelProto]
    offsets_db: tuple[float, ...]


@dataclass(frozen=True)
class Config:
    """Models, targets and sample counts of one run."""

    models: tuple[Model, ...]
    targets: tuple[str, ...]
    calibration_samples: int
    validation_samples: int


FULL = Config(
    models=(
        Model(
            "mobilenet_style(96, width 32, 6 blocks)", lambda: zoo.mobilenet_style(size=96, width=32, blocks=6), (5, 8)
        ),
        Model(
            "mobilenet_style(128, width 32, 8 blocks)", lambda: zoo.mobilenet_style(size=128, width=32, blocks=8), (5,)
        ),
    ),
    targets=("edgetpu", "qualcomm-htp"),
    calibration_samples=32,
    validation_samples=32,
)
QUICK = Config(
    models=(
        Model("mobilenet_style(32, width 8, 2 blocks)", lambda: zoo.mobilenet_style(size=32, width=8, blocks=2), (5,)),
    ),
    targets=("qualcomm-htp",),
    calibration_samples=16,
    validation_samples=16,
)


@dataclass(frozen=True)
class Run:
    """One search and its wall time."""

    result: TuningResult
    wall_s: float

    @property
    def chosen(self) -> Trial:
        return self.result.trials[self.result.chosen]


@dataclass(frozen=True)
class Case:
    """One model x target x budget, searched greedily and exhaustively."""

    model: str
    target: str
    fallbacks: tuple[str, ...]
    plan_sqnr_db: float
    budget_db: float
    greedy: Run
    exhaustive: Run


def timed_tune(
    graph: ModelGraph,
    target: str,
    plan: Plan,
    data: tuple[Dataset, Dataset],
    budget: Budget,
    subsets: int = 0,
) -> Run:
    """`tune` on the target (objective: speed) with its wall time; `subsets` > 0 is the exhaustive baseline."""
    profile = load_profile(target)
    start = time.perf_counter()
    walk = every_subset_search(subsets) if subsets else Search
    result = tune(Job(graph, profile, data[0], data[1]), plan, budget, "speed", search_class=walk)
    return Run(result, time.perf_counter() - start)


def key(trial: Trial) -> tuple[str, str | None, tuple[str, ...]]:
    """What makes two trials the same candidate: technique, calibration method and the set of excluded nodes."""
    method = trial.recipe.calibration_method if trial.recipe is not None else None
    return trial.technique, method, tuple(sorted(trial.excluded))


def same_candidate(a: Trial, b: Trial) -> bool:
    return key(a) == key(b)


def find(trial: Trial, run: Run) -> Trial | None:
    """The trial of `run` that tried the same candidate as `trial`, if any."""
    return next((t for t in run.result.trials if same_candidate(t, trial)), None)


def bench_model(model: Model, target: str, config: Config, case_index: int) -> list[Case]:
    """The cases of one model on one target: probe the plan's SQNR, then each budget greedy vs exhaustive."""
    graph = load_model(model.build())
    data = synthetic_dataset(graph, config.calibration_samples + config.validation_samples, seed=0)
    calibration, validation = data.split(config.calibration_samples)
    plan = plan_for(graph, load_profile(target), load_tree(), calibration, QuantizeOptions())
    probe = timed_tune(graph, target, plan, (calibration, validation), Budget(min_sqnr_db=1e9, max_trials=1))
    plan_sqnr = probe.result.trials[0].min_sqnr_db or 0.0
    cases = []
    for offset in model.offsets_db:
        floor = round(plan_sqnr + offset, 1)
        budgets = {
            "greedy": Budget(min_sqnr_db=floor),
            "exhaustive": Budget(min_sqnr_db=floor, max_trials=EXHAUSTIVE_MAX_TRIALS),
        }
        runs: dict[str, Run] = {}
        order = ("greedy", "exhaustive") if (case_index + len(cases)) % 2 == 0 else ("exhaustive", "greedy")
        for mode in order:
            print(f"{model.label} on {target}, budget {floor} dB: {mode}", file=sys.stderr, flush=True)
            subsets = 0 if mode == "greedy" else SUBSETS
            runs[mode] = timed_tune(graph, target, plan, (calibration, validation), budgets[mode], subsets)
        cases.append(
            Case(model.label, target, tuple(plan.fallbacks), plan_sqnr, floor, runs["greedy"], runs["exhaustive"])
        )
    return cases


# --- rendering ----------------------------------------------------------------------------------------------------


def describe(trial: Trial) -> str:
    """A chosen trial: number, step, excluded nodes, SQNR and estimated latency relative to float."""
    excluded = f" [{', '.join(trial.excluded)}]" if trial.excluded and "{" not in trial.step else ""
    ratio = "-" if trial.latency_ratio is None else f"{trial.latency_ratio:.3f}x"
    return f"#{trial.index + 1} {trial.step}{excluded}: {trial.min_sqnr_db:.1f} dB, {ratio}"


def verdict(run: Run, reference: Run) -> str:
    """'yes' when the run chose the candidate the exhaustive search chose, else 'NO' (with budget status)."""
    if not run.result.within_budget:
        return "NO (budget not met)"
    return "yes" if same_candidate(run.chosen, reference.chosen) else "NO"


def summary_table(cases: list[Case]) -> str:
    rows = []
    for c in cases:
        rows.append(
            [
                c.model,
                c.target,
                f"{c.plan_sqnr_db:.1f}",
                f">= {c.budget_db:g}",
                str(len(c.greedy.result.trials)),
                f"{c.greedy.wall_s:.1f} s",
                str(len(c.exhaustive.result.trials)),
                f"{c.exhaustive.wall_s:.1f} s",
                f"{c.greedy.wall_s / c.exhaustive.wall_s:.2f}",
                describe(c.greedy.chosen),
                describe(c.exhaustive.chosen),
                verdict(c.greedy, c.exhaustive),
            ]
        )
    headers = [
        "model",
        "target",
        "plan SQNR dB",
        "budget dB",
        "greedy trials",
        "greedy wall",
        "exhaustive trials",
        "exhaustive wall",
        "time greedy/exh.",
        "greedy choice",
        "exhaustive best",
        "match",
    ]
    return markdown_table(headers, rows)


def trial_cells(t: Trial, notes: list[str]) -> list[str]:
    """The columns of one trial after its two numbers."""
    return [
        t.step,
        t.technique,
        ", ".join(t.excluded) or "-",
        "-" if t.min_sqnr_db is None else f"{t.min_sqnr_db:.1f}",
        "-" if t.latency_ratio is None else f"{t.latency_ratio:.3f} ({t.latency_ratio_source})",
        str(t.size_bytes or 0),
        t.device_verdict,
        "within" if t.meets_budget else "misses",
        f"{t.seconds:.2f}",
        ", ".join(notes),
    ]


def trials_table(case: Case) -> str:
    """Greedy's trials, each with the exhaustive run's number for the same candidate, then the exhaustive best if
    greedy did not try it."""
    rows = []
    best = case.exhaustive.chosen
    for t in case.greedy.result.trials:
        theirs = find(t, case.exhaustive)
        notes = []
        if t.index == case.greedy.result.chosen:
            notes.append("**greedy choice**")
        if same_candidate(t, best):
            notes.append("**exhaustive best**")
        if t.index in case.greedy.result.pareto:
            notes.append("front")
        rows.append([str(t.index + 1), "-" if theirs is None else str(theirs.index + 1), *trial_cells(t, notes)])
    if find(best, case.greedy) is None:
        rows.append(["not tried", str(best.index + 1), *trial_cells(best, ["**exhaustive best**"])])
    headers = [
        "greedy #",
        "exhaustive #",
        "step",
        "technique",
        "excluded",
        "SQNR dB",
        "x float latency",
        "size B",
        "device",
        "budget",
        "s",
        "notes",
    ]
    return markdown_table(headers, rows)


def explain(case: Case) -> str:
    """How the two searches went and why they agree or differ, from the trial data."""
    greedy, best = case.greedy.chosen, case.exhaustive.chosen
    trials = case.exhaustive.result.trials
    subsets = [t for t in trials if "{" in t.step]
    within = [t for t in subsets if t.meets_budget]
    faster = [t for t in within if (t.latency_ratio or 0) < (greedy.latency_ratio or 0) - 1e-9]
    first_within = next((t for t in case.greedy.result.trials if t.meets_budget), None)
    pruned = [t for t in case.greedy.result.trials if ": without " in t.step]
    kept = [t for t in pruned if t.meets_budget]
    lines = [
        f"Greedy ran {len(case.greedy.result.trials)} trials in {case.greedy.wall_s:.1f} s (stopped: "
        f"{case.greedy.result.stopped_by}), the exhaustive search {len(trials)} in {case.exhaustive.wall_s:.1f} s "
        f"(stopped: {case.exhaustive.result.stopped_by}), {len(subsets)} of them exclusion subsets, "
        f"{len(within)} of those within budget.",
        (
            f"The first trial within budget is greedy's #{first_within.index + 1} ({first_within.step})."
            if first_within
            else "Greedy found no trial within budget."
        ),
    ]
    if pruned:
        lines.append(
            f"The pruning pass made {len(pruned)} trial(s) and put back {len(kept)} node(s)"
            + (f" ({', '.join(t.step.split(': without ')[1] for t in kept)})" if kept else "")
            + "."
        )
    if not case.greedy.result.within_budget:
        lines.append("**Greedy did not meet the budget.**")
    elif same_candidate(greedy, best):
        lines.append(
            f"Both chose the same candidate ({greedy.technique}, "
            f"{'excluding ' + ', '.join(sorted(greedy.excluded)) if greedy.excluded else 'no exclusions'})."
        )
    else:
        ratio = (
            f"{best.latency_ratio:.3f}x float against {greedy.latency_ratio:.3f}x"
            if best.latency_ratio is not None and greedy.latency_ratio is not None
            else "better on the objective"
        )
        lines.append(
            f"**Mismatch.** Greedy chose #{greedy.index + 1} ({greedy.step}); the exhaustive best is "
            f"#{best.index + 1} ({best.step}, {best.technique}: {ratio}, {best.min_sqnr_db:.1f} dB vs "
            f"{greedy.min_sqnr_db:.1f} dB); {len(faster)} exclusion subset(s) within budget are faster than greedy's "
            "choice."
        )
    return " ".join(lines)


def render(config: Config, quick: bool, cases: list[Case], leftover: int) -> str:
    models = ", ".join(f"`zoo.{m.label}`" for m in config.models)
    orders = sorted({", ".join(c.fallbacks) for c in cases})
    sections = [
        f"# Accuracy-aware search: greedy vs exhaustive{' (quick configuration)' if quick else ''}",
        "",
        f"Environment: {environment()}.",
        "",
        f"Models: {models}; targets: {', '.join(config.targets)} (integer-only: latency is the cost model's "
        "estimate, relative to the float model on the device's host). Data: RANDOM N(0, 1) inputs "
        f"(`synthetic_dataset`, seed 0): {config.calibration_samples} calibration and {config.validation_samples} "
        "validation samples, no labels, so the budget is the minimum output SQNR against float, set the given "
        "number of dB above the plan trial's own SQNR (offsets: "
        + "; ".join(f"{m.label}: +{', +'.join(f'{o:g}' for o in m.offsets_db)} dB" for m in config.models)
        + "). Objective: speed. Both searches walk the plan, the leaf's other technique (`int16x8` where the device "
        "runs it), the recipe spaces, then the fallbacks in the default tree's order ("
        + "; ".join(f"`{o}`" for o in orders)
        + "; `int16x8` only where the device runs it).",
        "",
        "- **Greedy** is autoptq's walk with the default budget of 40 trials: `exclude_sensitive` keeps the 1, 2, ... "
        "8 most sensitive nodes in float until one prefix of the ranking meets the budget, then a pruning pass puts "
        "each of the first k-1 nodes back (least sensitive first; steps `exclude N: without NODE`) and keeps it "
        "quantized if the budget still holds. Once a candidate meets the budget, a later fallback is tried only if "
        "the cost model predicts it could beat the best within budget on the objective (`Search.worth_trying`); no "
        "float on an integer-only device.",
        f"- **Exhaustive** is `tune(..., search_class=every_subset_search({SUBSETS}))` with "
        f"`max_trials={EXHAUSTIVE_MAX_TRIALS}` (never reached): every candidate of the walk with no early stop and, "
        "in place of the prefixes, every non-empty "
        f"subset of the {SUBSETS} most sensitive nodes kept in float ({2**SUBSETS - 1} exclusion trials, steps "
        "`exclude {nodes}`).",
        "",
        "Both then choose on the Pareto front of their trials within budget. A choice matches when technique, "
        "calibration method and the set of excluded nodes are the same. Wall times are of one `tune` call each, "
        "side by side in one process. "
        + f"Calibration-cache folders (`autoptq-tune-*`) left in the temporary directory by all the runs: {leftover}.",
        "",
        summary_table(cases),
        "",
        "Choices read `#trial step [nodes kept in float]: output SQNR, estimated latency relative to float`; the "
        "trial numbers are each run's own.",
        "",
        "## Trials of each case (greedy's, with the exhaustive run's number for the same candidate)",
    ]
    for case in cases:
        sections += [
            "",
            f"### {case.model} on {case.target}, SQNR >= {case.budget_db:g} dB",
            "",
            explain(case),
            "",
            trials_table(case),
        ]
    return "\n".join(sections) + "\n"


def tune_folders() -> set[Path]:
    """The calibration-cache folders `tune` creates in the temporary directory (it should remove them)."""
    return set(Path(tempfile.gettempdir()).glob("autoptq-tune-*"))


def main() -> None:
    """Run the benchmark, print the Markdown report and write it to bench/results/tuning.md."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else NAME)
    config = QUICK if args.quick else FULL
    before = tune_folders()
    cases: list[Case] = []
    for model in config.models:
        for target in config.targets:
            cases += bench_model(model, target, config, len(cases))
    report = render(config, args.quick, cases, len(tune_folders() - before))
    print(report, flush=True)
    print(f"written to {write_result(NAME, report)}", file=sys.stderr)


if __name__ == "__main__":
    main()
