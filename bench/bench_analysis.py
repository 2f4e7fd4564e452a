"""Analysis at scale: build, load, audit and plan synthetic models of 5,000 to 20,000+ nodes.

Claims checked: "the audit of a 10,000-node model takes seconds, not minutes" and "planning a 10,000-node model takes
seconds". Every size runs in this one process, one after the other, so the scaling between sizes (the exponent of
time against nodes, 1.0 = linear) is a ratio taken under the same machine conditions; absolute seconds are context.
A stage whose exponent exceeds SUPERLINEAR_EXPONENT is profiled with cProfile at the largest size and its hot spots
are listed under the tables.

A second, stress workload exposes every block's output as a graph output (one output per four nodes, as when
intermediate tensors are exported for debugging): per-output work that scans the whole graph shows up there.

Run: python bench/bench_analysis.py [--quick]
"""

from __future__ import annotations

import cProfile
import gc
import math
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import REPO_DIR, environment, markdown_table, parse_args, rate, seconds, write_result
from onnx import ModelProto, TensorProto, helper

from autoptq.decide.planner import load_tree, plan_model
from autoptq.decide.rules import RuleSet
from autoptq.devices.coverage import analyse
from autoptq.devices.profiles import HardwareProfile, load_profile
from autoptq.model import zoo
from autoptq.model.graph import ModelGraph, load_model

NAME = "bench_analysis"
SUPERLINEAR_EXPONENT = 1.3
"""Above this log-log slope of time against nodes a stage is flagged as super-linear (linear is 1.0)."""
CLAIM_LIMIT_S = 10.0
""""Takes seconds, not minutes": the claim holds when the stage finishes within this on this machine."""
AUDIT_TARGETS = ("edgetpu", "x86-vnni", "qualcomm-htp")
PLAN_TARGETS = ("edgetpu", "x86-vnni")
HOTSPOTS = 3
WARM_UP_BLOCKS = 10
CALLER_DEPTH = 6


@dataclass(frozen=True)
class Config:
    """Sizes (chain_of_blocks blocks; about four nodes each) and repetitions of one run."""

    blocks: tuple[int, ...]
    stress_blocks: tuple[int, ...]
    repeats: int
    stress_repeats: int


FULL = Config(blocks=(1250, 2500, 5000), stress_blocks=(625, 1250, 2500), repeats=3, stress_repeats=2)
QUICK = Config(blocks=(625, 1250, 2500), stress_blocks=(250, 500), repeats=1, stress_repeats=3)


@dataclass
class Workload:
    """Everything the stages need for one model size; filled in as the stages run."""

    blocks: int
    many_outputs: bool
    profiles: dict[str, HardwareProfile]
    tree: RuleSet
    model: ModelProto | None = None
    graph: ModelGraph | None = None

    @property
    def nodes(self) -> int:
        """ONNX nodes in the model's main graph."""
        assert self.model is not None
        return len(self.model.graph.node)


@dataclass(frozen=True)
class Stage:
    """One measured step: a label and what to run (its result is kept when `keep` names a Workload field)."""

    label: str
    run: Callable[[Workload], object]
    keep: str | None = None


@dataclass
class StageTimes:
    """Best seconds of one stage at each model size (keyed by node count)."""

    stage: Stage
    seconds: dict[int, float] = field(default_factory=dict)

    def exponent(self, last_step: bool = False) -> float | None:
        """Log-log slope of time against nodes between the smallest (or, with `last_step`, the second largest) and
        the largest size."""
        sizes = sorted(self.seconds)
        if len(sizes) < 2 or min(self.seconds.values()) <= 0:
            return None
        first, last = sizes[-2] if last_step else sizes[0], sizes[-1]
        return math.log(self.seconds[last] / self.seconds[first]) / math.log(last / first)

    def superlinear(self) -> bool:
        """Both the overall and the last step's exponent exceed SUPERLINEAR_EXPONENT (one alone may be noise)."""
        slopes = [self.exponent(), self.exponent(last_step=True)]
        return all(s is not None and s > SUPERLINEAR_EXPONENT for s in slopes)


def build_chain(blocks: int, many_outputs: bool) -> ModelProto:
    """zoo.chain_of_blocks (onnx.helper + checker), optionally with every block's Add output also a graph output."""
    model = zoo.chain_of_blocks(blocks=blocks)
    if many_outputs:
        declared = {o.name for o in model.graph.output}
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        for node in model.graph.node:
            if node.op_type == "Add" and node.output[0] not in declared:
                model.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, dims))
    return model


def _graph(work: Workload) -> ModelGraph:
    assert work.graph is not None
    return work.graph


def _model(work: Workload) -> ModelProto:
    assert work.model is not None
    return work.model


def audit_stage(target: str) -> Stage:
    """coverage.analyse of the loaded graph for one target."""

    def run(work: Workload) -> object:
        return analyse(_graph(work), work.profiles[target])

    return Stage(f"coverage.analyse {target}", run)


def plan_stage(target: str) -> Stage:
    """plan_model with the default tree for one target (it runs its own coverage analysis)."""

    def run(work: Workload) -> object:
        return plan_model(_graph(work), work.profiles[target], work.tree)

    return Stage(f"plan_model {target} (default tree, incl. its analyse)", run)


def stages(many_outputs: bool) -> list[Stage]:
    """The stages in the order they run (later stages use what earlier ones kept)."""
    build = (
        "build (chain + one graph output per block)"
        if many_outputs
        else "build (zoo.chain_of_blocks: onnx.helper + checker)"
    )
    found = [
        Stage(build, lambda w: build_chain(w.blocks, w.many_outputs), keep="model"),
        Stage("load_model (checker + shape inference + graph)", lambda w: load_model(_model(w)), keep="graph"),
    ]
    found.extend(audit_stage(target) for target in AUDIT_TARGETS)
    if not many_outputs:
        found.extend(plan_stage(target) for target in PLAN_TARGETS)
    return found


def timed(stage: Stage, work: Workload, repeats: int) -> float:
    """Best (minimum) wall time of `repeats` runs of `stage`, garbage collected before each; keeps the last result.

    The minimum, as timeit advises: the work is deterministic, so slower runs only add other processes' noise.
    """
    times = []
    result: object = None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = stage.run(work)
        times.append(time.perf_counter() - start)
    if stage.keep is not None:
        setattr(work, stage.keep, result)
    return min(times)


def warm_up(profiles: dict[str, HardwareProfile], tree: RuleSet, many_outputs: bool) -> None:
    """Run every stage once on a tiny model, so lazy imports and first-call set-up are not timed."""
    work = Workload(WARM_UP_BLOCKS, many_outputs, profiles, tree)
    for stage in stages(many_outputs):
        timed(stage, work, repeats=1)


def measure(blocks: tuple[int, ...], repeats: int, many_outputs: bool) -> tuple[list[StageTimes], Workload]:
    """Time every stage at every size; return the times and the largest workload (for profiling)."""
    profiles = {name: load_profile(name) for name in {*AUDIT_TARGETS, *PLAN_TARGETS}}
    tree = load_tree(None)
    warm_up(profiles, tree, many_outputs)
    plan = stages(many_outputs)
    results = [StageTimes(stage) for stage in plan]
    work = Workload(blocks[0], many_outputs, profiles, tree)
    for count in blocks:
        work = Workload(count, many_outputs, profiles, tree)
        for stage_times in results:
            elapsed = timed(stage_times.stage, work, repeats)
            stage_times.seconds[work.nodes] = elapsed
        print(f"  {count} blocks ({work.nodes} nodes) done", file=sys.stderr, flush=True)
    return results, work


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    path = Path(filename)
    if path.is_absolute() and path.is_relative_to(REPO_DIR):
        filename = str(path.relative_to(REPO_DIR))
    elif path.is_absolute():
        filename = path.name
    return f"{filename}:{line} {name}" if line else name


def hotspots(stage: Stage, work: Workload) -> list[str]:
    """Where `stage` spends its own time at this size (cProfile, by own time), each with the chain of its heaviest
    callers, so the autoptq function that repeats the work is named."""
    profiler = cProfile.Profile()
    profiler.enable()
    stage.run(work)
    profiler.disable()
    table = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # {func: (prim. calls, calls, own, cum, callers)}
    total = sum(entry[2] for entry in table.values()) or 1.0
    lines = []
    for func, (_, calls, own, _cumulative, _) in sorted(table.items(), key=lambda kv: -kv[1][2])[:HOTSPOTS]:
        path = " ← ".join(_where(f) for f in _caller_chain(table, func))
        lines.append(f"{calls:,} calls, {own:.2f} s own time ({100 * own / total:.0f}%): `{path}`")
    return lines


def _caller_chain(table: dict, func: tuple[str, int, str], depth: int = CALLER_DEPTH) -> list[tuple[str, int, str]]:
    """`func` followed by its heaviest caller (by cumulative time spent on its behalf), that one's, and so on."""
    chain = [func]
    while len(chain) <= depth:
        callers = table.get(chain[-1], (0, 0, 0.0, 0.0, {}))[4]
        caller = max(callers.items(), key=lambda kv: kv[1][3], default=None)
        if caller is None or caller[0] in chain:
            break
        chain.append(caller[0])
    return chain


def stage_table(results: list[StageTimes]) -> str:
    """Seconds and nodes/s per stage and size, with the scaling exponent."""
    sizes = sorted(results[0].seconds)
    headers = ["stage", *(f"{n:,} nodes" for n in sizes), "exponent: overall / last step (1 = linear)"]
    rows = []
    for item in results:
        slopes = [item.exponent(), item.exponent(last_step=True)]
        text = " / ".join("n/a" if s is None else f"{s:.2f}" for s in slopes)
        cells = [f"{seconds(item.seconds[n])} ({rate(n, item.seconds[n])} nodes/s)" for n in sizes]
        rows.append([item.stage.label, *cells, text + (" **super-linear**" if item.superlinear() else "")])
    return markdown_table(headers, rows)


def _closest(results: list[StageTimes], nodes: int) -> int:
    return min(results[0].seconds, key=lambda n: abs(n - nodes))


def _stage_seconds(results: list[StageTimes], prefix: str, size: int) -> float:
    return sum(r.seconds[size] for r in results if r.stage.label.startswith(prefix))


def claims_table(results: list[StageTimes], stress: list[StageTimes], stress_outputs: int) -> str:
    """The claims, each with the measured time at the size nearest 10,000 nodes and the verdict; the stress rows
    use the largest stress model, which has `stress_outputs` graph outputs."""
    size = _closest(results, 10_000)
    load = _stage_seconds(results, "load_model", size)
    rows: list[tuple[str, float]] = []
    for target in AUDIT_TARGETS:
        rows.append((f"audit, {size:,} nodes, {target} (load_model + analyse)", load + _one(results, target, size)))
    rows.append((f"audit, {size:,} nodes, all three targets", load + _stage_seconds(results, "coverage.analyse", size)))
    for target in PLAN_TARGETS:
        rows.append((f"plan, {size:,} nodes, {target} (load_model + plan_model)", load + _plan(results, target, size)))
    big = max(stress[0].seconds)
    stress_load = _stage_seconds(stress, "load_model", big)
    for target in AUDIT_TARGETS:
        rows.append(
            (
                f"audit, {big:,} nodes with {stress_outputs:,} graph outputs, {target}",
                stress_load + _one(stress, target, big),
            )
        )
    table = [
        [claim, seconds(elapsed), "holds" if elapsed < CLAIM_LIMIT_S else f"**fails** (over {CLAIM_LIMIT_S:.0f} s)"]
        for claim, elapsed in rows
    ]
    return markdown_table(["claim: takes seconds, not minutes", "measured", "verdict"], table)


def _one(results: list[StageTimes], target: str, size: int) -> float:
    return next(r.seconds[size] for r in results if r.stage.label == f"coverage.analyse {target}")


def _plan(results: list[StageTimes], target: str, size: int) -> float:
    return next(r.seconds[size] for r in results if r.stage.label.startswith(f"plan_model {target} "))


def profile_superlinear(results: list[StageTimes], work: Workload) -> list[str]:
    """Hot spots of every super-linear stage, profiled at the largest size."""
    lines = []
    for item in results:
        if not item.superlinear() or item.stage.keep == "model":
            continue
        slope = item.exponent(last_step=True) or 0.0
        lines.append(f"- **{item.stage.label}** at {work.nodes:,} nodes (exponent {slope:.2f} over the last step):")
        lines.extend(f"  - {spot}" for spot in hotspots(item.stage, work))
    return lines


def render(
    config: Config, quick: bool, main: list[StageTimes], stress: list[StageTimes], stress_outputs: int, spots: list[str]
) -> str:
    """The whole Markdown report."""
    mode = "--quick" if quick else "full"
    parts = [
        f"# Analysis at scale ({NAME}, {mode})",
        "",
        f"Measured {environment()}.",
        f"All sizes run one after the other in one process; each cell is the best of {config.repeats} run(s) "
        f"({config.stress_repeats} for the stress workload), garbage collected before each, after one warm-up pass "
        "on a tiny model. The exponent is the log-log slope of time against nodes, from the smallest and from the "
        "second largest size to the largest (ratios measured side by side; 1.0 = linear, 2.0 = quadratic); a stage "
        f"is flagged super-linear when both exceed {SUPERLINEAR_EXPONENT}. Seconds are context for this 2-core "
        "machine.",
        "",
        "## Chain of Conv/Relu/Mul/Add blocks (zoo.chain_of_blocks, one input, one output)",
        "",
        stage_table(main),
        "",
        "## Stress: the same chain with every block's output also a graph output",
        "",
        stage_table(stress),
        "",
        "## Claims",
        "",
        claims_table(main, stress, stress_outputs),
        "",
        "## Super-linear stages (cProfile at the largest size, top functions by own time)",
        "",
        *(spots or [f"None: no stage has both exponents above {SUPERLINEAR_EXPONENT}."]),
    ]
    return "\n".join(parts) + "\n"


def main() -> None:
    """Run the benchmark, print the Markdown report and write it to bench/results/."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else NAME)
    config = QUICK if args.quick else FULL
    print("chain of blocks:", file=sys.stderr)
    chain, chain_work = measure(config.blocks, config.repeats, many_outputs=False)
    print("stress (one graph output per block):", file=sys.stderr)
    stress, stress_work = measure(config.stress_blocks, config.stress_repeats, many_outputs=True)
    spots = profile_superlinear(chain, chain_work) + profile_superlinear(stress, stress_work)
    assert stress_work.model is not None
    report = render(config, args.quick, chain, stress, len(stress_work.model.graph.output), spots)
    print(report, flush=True)
    print(f"written to {write_result(NAME, report)}", file=sys.stderr)


if __name__ == "__main__":
    main()
