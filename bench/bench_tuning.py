"""Accuracy-aware search: autoptq's greedy walk against an exhaustive search over the same candidates.

For each MobileNet-style model (autoptq.zoo) and integer-only target (edgetpu, qualcomm-htp: the latency of every
candidate is the cost model's estimate there, so the choice is deterministic), `autoptq.tuning.tune` runs twice on
the same plan, data and budget: greedy (`exhaustive=False`, autoptq's behaviour: once a candidate meets the budget,
later candidates are tried only if the cost model says they could beat it on the objective, no further exclusions,
no float on an integer-only device) and exhaustive (`exhaustive=True`: every candidate of the same walk, then the
same choice). The two runs of a case are timed side by side in this one process, alternating which goes first from
case to case, after an untimed probe run (one trial) that warms the process up and measures the plan's own SQNR.

The data are RANDOM: N(0, 1) inputs from `autoptq.calibration.synthetic_dataset` (seeded), so there are no labels
and the budget is a fidelity budget: the minimum output SQNR against float, set a few dB above what the plan's
default recipe reaches, so the default misses it and the walk has to look further. Every number except the wall
times is deterministic.

A third, clearly labelled what-if run is the same greedy walk with `entropy_calibration` removed from the plan's
fallbacks; it is not autoptq's behaviour, only evidence for what that one trial costs and whether it ever decides.

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

from autoptq import zoo
from autoptq.api import QuantizeOptions, plan_for
from autoptq.calibration import Dataset, synthetic_dataset
from autoptq.graph import ModelGraph, load_model
from autoptq.planner import Plan, load_tree
from autoptq.profiles import load_profile
from autoptq.tuning import Budget, Trial, TuningResult, tune

NAME = "tuning"
WHAT_IF_DROPPED = "entropy_calibration"
"""The fallback the what-if run leaves out of the plan (the costliest trial of the walk)."""


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
    """One model x target x budget, searched greedily, exhaustively and greedily without entropy calibration."""

    model: str
    target: str
    fallbacks: tuple[str, ...]
    plan_sqnr_db: float
    budget_db: float
    greedy: Run
    exhaustive: Run
    what_if: Run


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
    what_if_plan = plan.model_copy(update={"fallbacks": [f for f in plan.fallbacks if f != WHAT_IF_DROPPED]})
    cases = []
    for offset in model.offsets_db:
        budget = Budget(min_sqnr_db=round(plan_sqnr + offset, 1), max_trials=40)
        runs: dict[str, Run] = {}
        order = ("greedy", "exhaustive") if (case_index + len(cases)) % 2 == 0 else ("exhaustive", "greedy")
        for mode in order:
            print(f"{model.label} on {target}, budget {budget.min_sqnr_db} dB: {mode}", file=sys.stderr, flush=True)
            runs[mode] = timed_tune(graph, target, plan, (calibration, validation), budget, exhaustive=mode != "greedy")
        print(f"{model.label} on {target}, budget {budget.min_sqnr_db} dB: what-if", file=sys.stderr, flush=True)
        what_if = timed_tune(graph, target, what_if_plan, (calibration, validation), budget)
        cases.append(
            Case(
                model.label,
                target,
                tuple(plan.fallbacks),
                plan_sqnr,
                budget.min_sqnr_db,
                runs["greedy"],
                runs["exhaustive"],
                what_if,
            )
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


def what_if_table(cases: list[Case]) -> str:
    rows = []
    for c in cases:
        entropy = next((t for t in c.greedy.result.trials if t.step == WHAT_IF_DROPPED), None)
        rows.append(
            [
                c.model,
                c.target,
                f">= {c.budget_db:g}",
                "-"
                if entropy is None
                else f"{entropy.seconds:.1f} s ({entropy.min_sqnr_db:.1f} dB, "
                f"{'within' if entropy.meets_budget else 'misses'})",
                str(len(c.what_if.result.trials)),
                f"{c.what_if.wall_s:.1f} s",
                f"{c.what_if.wall_s / c.exhaustive.wall_s:.2f}",
                describe(c.what_if.chosen),
                verdict(c.what_if, c.exhaustive),
            ]
        )
    headers = [
        "model",
        "target",
        "budget dB",
        f"greedy's {WHAT_IF_DROPPED} trial",
        "trials",
        "wall",
        "time / exhaustive",
        "choice",
        "matches exhaustive",
    ]
    return markdown_table(headers, rows)


def trials_table(case: Case) -> str:
    """The exhaustive run's trials, with the number greedy gave the same candidate (or that it skipped it)."""
    rows = []
    for t in case.exhaustive.result.trials:
        mine = find(t, case.greedy)
        marks = []
        if mine is not None and mine.index == case.greedy.result.chosen:
            marks.append("**greedy choice**")
        if t.index == case.exhaustive.result.chosen:
            marks.append("**exhaustive best**")
        if t.index in case.exhaustive.result.pareto:
            marks.append("front")
        rows.append(
            [
                str(t.index + 1),
                "skipped" if mine is None else str(mine.index + 1),
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
    headers = [
        "#",
        "greedy #",
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


def why_skipped(trial: Trial) -> str:
    """The rule of the greedy walk that leaves a candidate out once something meets the budget."""
    if trial.excluded:
        return "no more exclusions once one meets the budget"
    if trial.technique == "none":
        return "no float on an integer-only device once something meets the budget"
    return "the cost model says it cannot beat the best within budget (`_Search.worth_trying`)"


def explain(case: Case) -> str:
    """Why greedy and exhaustive agree or differ, and where the time went, from the trial data."""
    greedy, best = case.greedy.chosen, case.exhaustive.chosen
    trials = case.exhaustive.result.trials
    slowest = max(trials, key=lambda t: t.seconds)
    skipped = [t for t in trials if find(t, case.greedy) is None]
    saved = sum(t.seconds for t in skipped)
    overhead = case.greedy.wall_s - sum(t.seconds for t in case.greedy.result.trials)
    ran_slowest = find(slowest, case.greedy) is not None
    first_within = next((t for t in case.greedy.result.trials if t.meets_budget), None)
    lines = [
        f"Greedy ran {len(case.greedy.result.trials)} trials (stopped: {case.greedy.result.stopped_by}), the "
        f"exhaustive search {len(trials)} (stopped: {case.exhaustive.result.stopped_by}).",
        (
            f"The first trial within budget is greedy's #{first_within.index + 1} ({first_within.step})."
            if first_within
            else "Greedy found no trial within budget."
        ),
        f"Greedy skipped {len(skipped)} of the exhaustive trials ({saved:.2f} s of trial time"
        + (f": {', '.join(t.step for t in skipped)}" if skipped else "")
        + ").",
        f"The slowest trial is #{slowest.index + 1} {slowest.step} at {slowest.seconds:.1f} s of the exhaustive "
        f"{case.exhaustive.wall_s:.1f} s ({100 * slowest.seconds / case.exhaustive.wall_s:.0f}%)"
        + (
            f"; greedy ran it too ({slowest.min_sqnr_db:.1f} dB, it "
            f"{'meets' if slowest.meets_budget else 'misses'} the budget)"
            if ran_slowest
            else "; greedy skipped it"
        )
        + f". Greedy spent {overhead:.1f} s outside its trials (preparation, float reference outputs, the "
        "sensitivity ranking).",
    ]
    if not case.greedy.result.within_budget:
        lines.append("**Greedy did not meet the budget.**")
    elif same_candidate(greedy, best):
        lines.append(f"Both chose the same candidate ({greedy.step}).")
    else:
        mine = find(best, case.greedy)
        reason = (
            f"greedy skipped it: {why_skipped(best)}"
            if mine is None
            else f"greedy ran it as #{mine.index + 1} but chose otherwise"
        )
        ratio = (
            f"{best.latency_ratio:.3f}x float against {greedy.latency_ratio:.3f}x"
            if best.latency_ratio is not None and greedy.latency_ratio is not None
            else "better on the objective"
        )
        lines.append(
            f"**Mismatch.** Greedy chose #{greedy.index + 1} ({greedy.step}); the exhaustive best is "
            f"#{best.index + 1} ({best.step}, {best.technique}: {ratio}, {best.min_sqnr_db:.1f} dB vs "
            f"{greedy.min_sqnr_db:.1f} dB); {reason}."
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
        + "). Objective: speed. Both searches walk the plan, then its fallbacks in the default tree's order ("
        + "; ".join(f"`{o}`" for o in orders)
        + "; `exclude_sensitive` is the 1..8 most sensitive nodes kept in float, `int16x8` only where the device "
        "runs it). The exhaustive search tries every candidate; the greedy one, once a candidate meets the budget, "
        "tries a later one only if the cost model predicts it could beat the best within budget on the objective "
        "(`_Search.worth_trying`), tries no further exclusions and no float on an integer-only device. Both then "
        "choose on the Pareto front of the trials within budget. Wall times are of one `tune` call each, side by "
        "side in one process. "
        + f"Calibration-cache folders (`autoptq-tune-*`) left in the temporary directory by all the runs: {leftover}.",
        "",
        summary_table(cases),
        "",
        "Choices read `#trial step [nodes kept in float]: output SQNR, estimated latency relative to float`; the "
        "trial numbers are each run's own (greedy skips candidates, so its numbers differ from the exhaustive "
        "run's for the same candidate).",
        "",
        f"## What-if: the greedy walk without {WHAT_IF_DROPPED} (not autoptq's behaviour)",
        "",
        f"The same greedy walk with `{WHAT_IF_DROPPED}` removed from the plan's fallbacks: what the walk costs "
        "without its one expensive trial, and whether that trial ever decides the choice. The fourth column is the "
        "trial as greedy ran it.",
        "",
        what_if_table(cases),
        "",
        "## Trials of each case (the exhaustive run, with greedy's number for the same candidate)",
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
