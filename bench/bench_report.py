"""How long report.html takes to render in headless Chromium for a ~300-node model (target: under 2 s).

The page comes from `autoptq variants` with a fidelity budget it cannot meet, so the accuracy loop runs its
exclusions and every section is on the page (coverage map, SQNR along the graph, sensitivity, trials, latency).
Chromium is timed three ways, each the median of several runs: wall time of `--screenshot` on the report against
the same on an empty page (the difference is what the page costs; the rest is browser start-up), and the page's own
clock (a copy of the page with its policy relaxed for one inline script that records `performance.now()` after two
animation frames, i.e. once parsed, styled, laid out and painted). Python's time to build the page is shown too.

    python bench/bench_report.py [--quick]
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import environment, markdown_table, parse_args, write_result

from autoptq import api
from autoptq.decide.tuning import Budget
from autoptq.model.calibration import synthetic_dataset
from autoptq.model.graph import load_model
from autoptq.model.zoo import chain_of_blocks
from autoptq.report.html_page import CSP

TARGET_S = 2.0
PROBE = (
    "<script>addEventListener('load', () => { void document.body.offsetHeight; "
    "document.body.setAttribute('data-laid-out-ms', performance.now().toFixed(1)); });</script>"
)
"""Navigation start to the load event with style and layout forced (reading offsetHeight), on the page's clock."""
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
]  # fmt: skip


def chromium(page: Path, folder: Path, *args: str) -> tuple[float, str]:
    """Wall seconds of one headless Chromium run on `page`, and its stdout."""
    profile = Path(tempfile.mkdtemp(dir=folder))
    start = time.perf_counter()
    result = subprocess.run(
        [shutil.which("chromium") or "chromium", *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return time.perf_counter() - start, result.stdout


def _laid_out(page: Path, folder: Path) -> float:
    """Seconds from navigation start to the page laid out, read from the DOM Chromium dumps after load."""
    _, dom = chromium(page, folder, "--dump-dom")
    match = re.search(r'data-laid-out-ms="([0-9.]+)"', dom)
    if match is None:
        raise RuntimeError(f"{page.name}: the probe did not run")
    return float(match.group(1)) / 1000


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    blocks, runs = (25, 3) if args.quick else (75, 7)
    folder = Path(tempfile.mkdtemp(prefix="autoptq-bench-report-"))
    try:
        model_path = folder / "chain.onnx"
        model_path.write_bytes(chain_of_blocks(blocks=blocks).SerializeToString())
        graph = load_model(model_path)
        nodes = len(graph.compute_nodes())
        data = synthetic_dataset(graph, 40)
        options = api.QuantizeOptions(budget=Budget(min_sqnr_db=80.0, max_trials=10), measure_latency=False)
        start = time.perf_counter()
        api.make_variants(graph, ["edgetpu"], folder / "out", data=data, options=options)
        variants_s = time.perf_counter() - start
        page = folder / "out" / "report.html"
        size = page.stat().st_size

        shown = page.read_text(encoding="utf-8").count("<figure")

        blank = folder / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body><p>blank</p></body></html>")
        relaxed = f"{CSP}; script-src 'unsafe-inline'"
        probed = {}
        for name, source in (("page", page), ("blank", blank)):
            text = source.read_text(encoding="utf-8").replace(CSP, relaxed).replace("</body>", PROBE + "</body>")
            probed[name] = folder / f"probed-{name}.html"
            probed[name].write_text(text, encoding="utf-8")
        shot = folder / "shot.png"
        screenshot = ["--window-size=1280,2000", f"--screenshot={shot}"]
        page_wall = statistics.median(chromium(page, folder, *screenshot)[0] for _ in range(runs))
        blank_wall = statistics.median(chromium(blank, folder, *screenshot)[0] for _ in range(runs))
        laid_out = {
            name: statistics.median(_laid_out(path, folder) for _ in range(runs)) for name, path in probed.items()
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    rows = [
        ["page laid out, on its own clock (navigation start → load, layout forced)", f"{laid_out['page']:.3f} s"],
        ["empty page laid out, same probe", f"{laid_out['blank']:.3f} s"],
        ["page in Chromium: wall time of one `--screenshot` process (start-up included)", f"{page_wall:.2f} s"],
        ["empty page in Chromium: wall time of one `--screenshot` process", f"{blank_wall:.2f} s"],
        ["what the page adds to a `--screenshot` process (difference of medians)", f"{page_wall - blank_wall:.2f} s"],
        ["`variants` with the budget search (for scale, not part of the render)", f"{variants_s:.1f} s"],
    ]
    verdict = "meets" if max(laid_out["page"], page_wall - blank_wall) < TARGET_S else "MISSES"
    text = "\n".join(
        [
            "# report.html render time",
            "",
            f"Model: `zoo.chain_of_blocks({blocks})`, {nodes} nodes; page {size:,} bytes, {shown} figures (edgetpu). "
            f"Median of {runs} runs of headless Chromium at 1280 px. Target: under {TARGET_S:g} s on both measures: "
            f"{verdict}. Process wall times include Chromium's start-up and vary a lot on a shared machine.",
            f"Environment: {environment()}.",
            "",
            markdown_table(["measure", "value"], rows),
            "",
            "Regenerate with `python bench/bench_report.py` (`--quick`: 100 nodes, 3 runs).",
        ]
    )
    print(text)
    if not args.quick:
        write_result("report", text)


if __name__ == "__main__":
    main()
