"""Helpers shared by the benchmark scripts: command line, environment line, Markdown tables, result files.

The scripts run standalone (`python bench/<name>.py [--quick]`), so this module is imported by its bare name from
the scripts' own folder.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime

from autoptq.io.outputs import write_atomic

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent


def parse_args(
    description: str, target: str | None = None, extra: Sequence[tuple[str, type, str]] = ()
) -> argparse.Namespace:
    """The options every benchmark takes: `--quick` for a small smoke configuration; `--target` where a benchmark
    measures one device (`target` is its default); `extra` (flag, type, help) options of its own, default None."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small configuration for smoke runs (< 20 s)")
    if target is not None:
        parser.add_argument("--target", default=target, help=f"shipped profile to measure (default {target})")
    for flag, kind, text in extra:
        parser.add_argument(flag, type=kind, default=None, help=text)
    return parser.parse_args()


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, or what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> str:
    """One line saying where and when the numbers were taken."""
    today = datetime.date.today().isoformat()
    return (
        f"{today}; {cpu_name()} ({platform.machine()}, {os.cpu_count()} logical CPUs); Python "
        f"{platform.python_version()}; onnxruntime {onnxruntime.__version__}; onnx {onnx.__version__}"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (cells are written as given; `|` inside a cell is escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def write_result(name: str, text: str) -> Path:
    """Write `text` to bench/results/<name>.md atomically (creating the folder) and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    write_atomic(path, text if text.endswith("\n") else text + "\n")
    return path


def seconds(value: float) -> str:
    """Seconds with precision that suits the magnitude."""
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def rate(count: int, elapsed: float) -> str:
    """Items per second, rounded to thousands above 10,000."""
    if elapsed <= 0:
        return "n/a"
    per_second = count / elapsed
    return f"{per_second / 1000:,.0f}k" if per_second >= 10_000 else f"{per_second:,.0f}"
