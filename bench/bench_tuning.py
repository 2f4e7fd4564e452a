"""Accuracy-aware search: autoptq's greedy walk against an exhaustive search over the same candidates.

For each MobileNet-style model (autoptq.zoo) and integer-only target (edgetpu, qualcomm-htp: the latency of every
candidate is the cost model's estimate there, so the choice is deterministic), `autoptq.tuning.tune` runs twice on
the same plan, data and budget: greedy (`exhaustive=False`, autoptq's behaviour: stop once the walk is satisfied)
and exhaustive (`exhaustive=True`: every candidate of the same walk, then the same Pareto choice). The two runs of a
case are timed side by side in this one process, alternating which goes first from case to case, after an untimed
probe run (one trial) that warms the process up and measures the plan's own SQNR.

The data are RANDOM: N(0, 1) inputs from `autoptq.calibration.synthetic_dataset` (seeded), so there are no labels
and the budget is a fidelity budget: the minimum output SQNR against float, set a few dB above what the plan's
default recipe reaches, so the default misses it and the walk has to look further. Every number except the wall
times is deterministic.

A third, clearly labelled what-if run walks the same candidates in a cheap-first order (int16x8 and the exclusions
before entropy calibration); it is not autoptq's behaviour, only evidence for the order's cost.

Run: python bench/bench_tuning.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchlib import environment, markdown_table, parse_args, write_result
from onnx import ModelProto

from autoptq import zoo
from autoptq.api import QuantizeOptions, plan_for
from autoptq.calibration import Dataset, synthetic_dataset
from autoptq.graph import ModelGraph, load_model
from autoptq.planner import Plan, load_tree
from autoptq.profiles import load_profile
from autoptq.tuning import Budget, Trial, TuningResult, tune

NAME = "tuning"
CHEAP_FIRST = ("percentile_calibration", "int16x8", "exclude_sensitive", "entropy_calibration", "weight_only_int8")
"""The what-if order of the fallbacks; any other fallback of the plan follows them, and "none" (float) stays last."""


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
    """One model x target x budget, searched greedily, exhaustively and in the what-if order."""

    model: str
    target: str
    plan_sqnr_db: float
    budget_db: float
    greedy: Run
    exhaustive: Run
    cheap_first: Run


def timed_tune(
    graph: ModelGraph,
    target: str,
    plan: Plan,
    data: tuple[Dataset, Dataset],
    budget: Budget,
    exhaustive: bool = False,
) -> Run:
    """`tune` on the target (objective: speed) with its wall time."""
    profile = load_profile(target)
    start = time.perf_counter()
    result = tune(graph, profile, plan, data[0], data[1], budget, "speed", exhaustive=exhaustive)
    return Run(result, time.perf_counter() - start)


def same_candidate(a: Trial, b: Trial) -> bool:
    """Whether two trials tried the same candidate (technique and full recipe, so the same excluded nodes)."""
    return a.technique == b.technique and a.recipe == b.recipe


def bench_model(model: Model, target: str, config: Config, case_index: int) -> list[Case]:
    """The cases of one model on one target: probe the plan's SQNR, then each budget greedy vs exhaustive."""
    graph = load_model(model.build())
    data = synthetic_dataset(graph, config.calibration_samples + config.validation_samples, seed=0)
    calibration, validation = data.split(config.calibration_samples)
    plan = plan_for(graph, load_profile(target), load_tree(), calibration, QuantizeOptions())
    probe = timed_tune(graph, target, plan, (calibration, validation), Budget(min_sqnr_db=1e9, max_trials=1))
    plan_sqnr = probe.result.trials[0].min_sqnr_db or 0.0
    rest = [f for f in plan.fallbacks if f not in CHEAP_FIRST and f != "none"]
    cheap_plan = plan.model_copy(
        update={"fallbacks": [*(f for f in CHEAP_FIRST if f in plan.fallbacks), *rest, "none"]},
    )
    cases = []
    for offset in model.offsets_db:
        budget = Budget(min_sqnr_db=round(plan_sqnr + offset, 1), max_trials=40)
        runs: dict[str, Run] = {}
        order = ("greedy", "exhaustive") if (case_index + len(cases)) % 2 == 0 else ("exhaustive", "greedy")
        for mode in order:
            print(f"{model.label} on {target}, budget {budget.min_sqnr_db} dB: {mode}", file=sys.stderr, flush=True)
            runs[mode] = timed_tune(graph, target, plan, (calibration, validation), budget, exhaustive=mode != "greedy")
        print(f"{model.label} on {target}, budget {budget.min_sqnr_db} dB: what-if", file=sys.stderr, flush=True)
        cheap = timed_tune(graph, target, cheap_plan, (calibration, validation), budget)
        cases.append(
            Case(model.label, target, plan_sqnr, budget.min_sqnr_db, runs["greedy"], runs["exhaustive"], cheap)
        )
    return cases


# --- rendering ----------------------------------------------------------------------------------------------------


def describe(trial: Trial) -> str:
    """A chosen trial: number, step, excluded nodes, SQNR and estimated latency relative to float."""
    excluded = f" [{', '.join(trial.excluded)}]" if trial.excluded else ""
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


def cheap_first_table(cases: list[Case]) -> str:
    rows = [
        [
            c.model,
            c.target,
            f">= {c.budget_db:g}",
            str(len(c.cheap_first.result.trials)),
            f"{c.cheap_first.wall_s:.1f} s",
            f"{c.cheap_first.wall_s / c.exhaustive.wall_s:.2f}",
            describe(c.cheap_first.chosen),
            verdict(c.cheap_first, c.exhaustive),
        ]
        for c in cases
    ]
    headers = ["model", "target", "budget dB", "trials", "wall", "time / exhaustive", "choice", "matches exhaustive"]
    return markdown_table(headers, rows)


def walked_by_greedy(case: Case) -> int:
    """How many leading trials of the exhaustive run the greedy run also made (the same walk, stopped early)."""
    count = 0
    for g, e in zip(case.greedy.result.trials, case.exhaustive.result.trials, strict=False):
        if not same_candidate(g, e):
            break
        count += 1
    return count


def trials_table(case: Case) -> str:
    """The exhaustive run's trials, marking what greedy also ran and what each search chose."""
    shared = walked_by_greedy(case)
    greedy_chosen = case.greedy.result.chosen
    rows = []
    for t in case.exhaustive.result.trials:
        marks = []
        if t.index < shared:
            marks.append("greedy ran")
        if t.index == greedy_chosen and t.index < shared:
            marks.append("**greedy choice**")
        if t.index == case.exhaustive.result.chosen:
            marks.append("**exhaustive best**")
        if t.index in case.exhaustive.result.pareto:
            marks.append("Pareto")
        rows.append(
            [
                str(t.index + 1),
                t.step,
                t.technique,
                ", ".join(t.excluded) or "-",
                "-" if t.min_sqnr_db is None else f"{t.min_sqnr_db:.1f}",
                "-" if t.latency_ratio is None else f"{t.latency_ratio:.3f} ({t.latency_ratio_source})",
                str(t.size_bytes or 0),
                t.device_verdict,
                "within" if t.meets_budget else "misses",
                f"{t.seconds:.2f}",
                ", ".join(marks),
            ]
        )
    headers = ["#", "step", "technique", "excluded", "SQNR dB", "x float latency", "size B", "device", "budget", "s"]
    return markdown_table([*headers, "notes"], rows)


def explain(case: Case) -> str:
    """Why greedy and exhaustive agree or differ, and where the time went, from the trial data."""
    greedy, best = case.greedy.chosen, case.exhaustive.chosen
    trials = case.exhaustive.result.trials
    slowest = max(trials, key=lambda t: t.seconds)
    overhead = case.greedy.wall_s - sum(t.seconds for t in case.greedy.result.trials)
    lines = [
        f"Greedy ran {len(case.greedy.result.trials)} trials (stopped: {case.greedy.result.stopped_by}); the "
        f"exhaustive search ran {len(trials)} (stopped: {case.exhaustive.result.stopped_by}). The slowest trial is "
        f"#{slowest.index + 1} {slowest.step} at {slowest.seconds:.1f} s of the exhaustive "
        f"{case.exhaustive.wall_s:.1f} s ({100 * slowest.seconds / case.exhaustive.wall_s:.0f}%); greedy spent "
        f"{overhead:.1f} s outside its trials (preparation, float reference outputs, the sensitivity ranking)."
    ]
    if not case.greedy.result.within_budget:
        lines.append("Greedy did not meet the budget.")
    elif same_candidate(greedy, best):
        lines.append(f"Both chose #{greedy.index + 1} ({greedy.step}).")
    else:
        slower = (
            f"its estimated latency is {best.latency_ratio:.3f}x float against {greedy.latency_ratio:.3f}x"
            if best.latency_ratio is not None and greedy.latency_ratio is not None
            else "it wins on the objective"
        )
        rule = (
            "on an integer-only device the walk ends at the first one"
            if load_profile(case.target).integer_only
            else "it beat float on the objective, which ends the walk"
        )
        lines.append(
            f"**Mismatch.** Greedy stopped at #{greedy.index + 1} ({greedy.step}), the first candidate within "
            f"budget: {rule} (`_Search.satisfied`). The exhaustive "
            f"best is #{best.index + 1} ({best.step}, {best.technique}), which the walk only reaches later; {slower} "
            f"({best.min_sqnr_db:.1f} dB vs {greedy.min_sqnr_db:.1f} dB)."
        )
    return " ".join(lines)


def render(config: Config, quick: bool, cases: list[Case]) -> str:
    models = ", ".join(f"`zoo.{m.label}`" for m in config.models)
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
        + "). Objective: speed. Both searches walk the same candidates in the same order (the plan, its calibration "
        "fallbacks, the 1..8 most sensitive nodes kept in float, int16x8 where the device runs it, float); "
        "exhaustive does not stop early. Wall times are of one `tune` call each, side by side in one process.",
        "",
        summary_table(cases),
        "",
        "Choices read `#trial step [nodes kept in float]: output SQNR, estimated latency relative to float`. "
        "A walk that runs to its end (every exhaustive run) tries float twice (see the note below).",
        "",
        "## What-if: the same candidates, cheap first (not autoptq's behaviour)",
        "",
        "The same greedy walk with the plan's fallbacks reordered to "
        f"`{', '.join(CHEAP_FIRST)}` (those the plan has), then float: int16x8 and the exclusions before entropy "
        "calibration.",
        "",
        cheap_first_table(cases),
        "",
        "## Trials of each case (the exhaustive run; greedy ran a prefix of it)",
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
    sections += [
        "",
        "Note: `float (none)` appears twice in every full walk: `_Search.walk` appends `none` to the plan's "
        "fallbacks, which already end with it.",
    ]
    return "\n".join(sections) + "\n"


def main() -> None:
    """Run the benchmark, print the Markdown report and write it to bench/results/tuning.md."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else NAME)
    config = QUICK if args.quick else FULL
    cases: list[Case] = []
    # tune() leaves a calibration-cache folder per call in the temp folder: keep them in one we remove.
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as scratch:
        tempfile.tempdir = scratch
        try:
            for model in config.models:
                for target in config.targets:
                    cases += bench_model(model, target, config, len(cases))
        finally:
            tempfile.tempdir = None
    report = render(config, args.quick, cases)
    print(report, flush=True)
    print(f"written to {write_result(NAME, report)}", file=sys.stderr)


if __name__ == "__main__":
    main()
