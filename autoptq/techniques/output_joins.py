"""Outputs that join parts of very different ranges, kept in float on a host that can.

A detector often returns one tensor that concatenates box coordinates (pixels, 0..320) and class scores (0..1):
YOLOv8's head, YOLOX's per-level `Concat`. Quantized, that output tensor has one scale, sized for the widest part,
so the narrow part keeps a handful of levels: nudenet's scores collapsed to 0 or 1.25 and its box F1 fell from 1.0 to
0.67, while the output's SQNR, dominated by the coordinates, still looked fine. Each part keeps its own scale up to
the join; keeping the join (and the data movement between it and the output) in float costs one float `Concat`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import ModelProto, NodeProto
from onnxruntime.quantization.calibrate import load_tensors_data

from autoptq.model.graph import output_tail
from autoptq.schema import StrictModel

MIXED_RANGE_RATIO = 16.0
"""Parts whose ranges differ by more than this: the narrowest keeps fewer than 16 of the 256 levels of one scale."""


class MixedOutputJoin(StrictModel):
    """One graph output whose joined parts differ in range, and the nodes kept float for it."""

    output: str
    nodes: list[str]
    ratio: float
    narrowest: tuple[float, float]
    widest: tuple[float, float]

    def note(self) -> str:
        levels = max(1, int(256 / self.ratio))
        return (
            f"kept {', '.join(self.nodes)} in float: output {self.output!r} joins parts whose ranges differ "
            f"{self.ratio:.0f}x ([{self.narrowest[0]:.3g}, {self.narrowest[1]:.3g}] and "
            f"[{self.widest[0]:.3g}, {self.widest[1]:.3g}]); one 8-bit scale would leave the narrowest about "
            f"{levels} levels"
        )


def calibrated_ranges(cache: Path) -> dict[str, tuple[float, float]]:
    """Each calibrated tensor's (lowest, highest), from onnxruntime's calibration cache."""
    ranges = {}
    for name, data in load_tensors_data(cache).data.items():
        if hasattr(data, "lowest") and hasattr(data, "highest"):
            ranges[name] = (float(np.min(data.lowest)), float(np.max(data.highest)))
    return ranges


def mixed_output_joins(
    model: ModelProto, ranges: dict[str, tuple[float, float]], ratio: float = MIXED_RANGE_RATIO
) -> list[MixedOutputJoin]:
    """The graph outputs reached from a `Concat` (through data movement and further joins only) whose inputs'
    calibrated ranges differ by more than `ratio`, each with the nodes from the first join to the output."""
    found = []
    for output in model.graph.output:
        # A tail also read inside the graph is not in it: keeping it float would only move the single scale.
        path = output_tail(model, output.name)
        worst = max((_spread(node, ranges) for node in path if node.op_type == "Concat"), default=None)
        if worst is not None and worst[0] > ratio:
            found.append(
                MixedOutputJoin(
                    output=output.name,
                    nodes=[node.name for node in reversed(path)],
                    ratio=worst[0],
                    narrowest=worst[1],
                    widest=worst[2],
                )
            )
    return found


def _spread(
    join: NodeProto, ranges: dict[str, tuple[float, float]]
) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """How much wider the widest input of `join` is than its narrowest (ranges widened to hold zero, as a quantized
    range does), with both ranges; 1 when a range is unknown or an input is constant zero."""
    known = [ranges[name] for name in join.input if name in ranges]
    spans = [(max(high, 0.0) - min(low, 0.0), (low, high)) for low, high in known]
    spans = [span for span in spans if span[0] > 0]
    if len(spans) < 2 or len(known) != len(join.input):
        return 1.0, (0.0, 0.0), (0.0, 0.0)
    narrow, wide = min(spans), max(spans)
    return wide[0] / narrow[0], narrow[1], wide[1]
