"""The calibration ranges cache with and without the histograms it was computed from, side by side on the corpus.

    python bench/bench_ranges_cache.py [--models a,b] [--builds 3]

Every static candidate of one calibration method reads the same ranges cache (`qdq.ranges_file`), and every
onnxruntime `quantize_static` call parses it. Per model (quick calibration data, x86-vnni's plan recipe with entropy
ranges, the method whose cache held a 2048-bin histogram per tensor), one calibration is written twice: as
autoptq writes it (`qdq.without_histograms`) and with the histograms kept, as it was. Then `--builds` builds from
each cache, alternating in one process, are timed, and their models compared byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import bench_decisions
from benchlib import environment, markdown_table, write_result

from autoptq.devices.canonical import float_model_for
from autoptq.model.prepare import PREPARATION_SAMPLES, prepare
from autoptq.techniques import qdq

DEFAULT_MODELS = ("ddddocr-det", "nudenet-320n", "ppocr-det")
HEADERS = [
    "model",
    "cache with histograms",
    "ranges only",
    "a build from the first",
    "from the second",
    "ratio",
    "same bytes",
]


def row(case: bench_decisions.Case, builds: int, folder: Path) -> list[str]:
    s = bench_decisions.setup(case, "x86-vnni")
    model = prepare(float_model_for(s.graph, s.profile), s.validation.take(PREPARATION_SAMPLES)).model
    recipe = s.plan.recipe.model_copy(update={"calibration_method": "entropy"})
    lean, full = folder / f"{case.name}-lean.json", folder / f"{case.name}-full.json"
    qdq.static_qdq(model, recipe, s.calibration, "full_int8", calibration_cache=lean)
    kept = qdq.without_histograms
    qdq.without_histograms = lambda ranges: ranges  # the cache as it was written before
    try:
        qdq.static_qdq(model, recipe, s.calibration, "full_int8", calibration_cache=full)
    finally:
        qdq.without_histograms = kept
    seconds = {lean: 0.0, full: 0.0}
    digests: dict[Path, set[str]] = {lean: set(), full: set()}
    for _ in range(builds):
        for cache in (full, lean):
            start = time.perf_counter()
            built = qdq.static_qdq(model, recipe, s.calibration, "full_int8", calibration_cache=cache).model
            seconds[cache] += time.perf_counter() - start
            digests[cache].add(hashlib.sha256(built.SerializeToString(deterministic=True)).hexdigest())
    same = len(digests[lean]) == 1 and digests[lean] == digests[full]
    return [
        case.name,
        f"{full.stat().st_size / 1e6:.1f} MB",
        f"{lean.stat().st_size / 1e3:.0f} kB",
        f"{seconds[full] / builds:.2f} s",
        f"{seconds[lean] / builds:.2f} s",
        f"{seconds[full] / seconds[lean]:.2f}x",
        "yes" if same else "no",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--builds", type=int, default=3)
    args = parser.parse_args()
    wanted = args.models.split(",")
    cases = [c for c in bench_decisions.cases(False) if c.name in wanted]
    with tempfile.TemporaryDirectory(prefix="ranges-cache-") as folder:
        rows = [row(case, args.builds, Path(folder)) for case in cases]
    text = "\n".join(
        [
            "# Ranges cache: with the histograms vs ranges only (entropy calibration, x86-vnni plan recipe)",
            "",
            environment(),
            "",
            markdown_table(HEADERS, rows),
            "",
            f"Per build: the mean of {args.builds} builds from each cache, alternating in one process.",
            "",
        ]
    )
    print(write_result("ranges_cache", text))


if __name__ == "__main__":
    main()
