"""The Python API: the same functions the command line calls, returning pydantic models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from onnx import ModelProto

from autoptq.calibration import Dataset, load_dataset
from autoptq.coverage import CoverageReport, analyse
from autoptq.graph import ModelGraph, load_model
from autoptq.planner import Plan, UserGoals, load_tree, plans
from autoptq.profiles import HardwareProfile, load_profile

ModelSource = str | Path | ModelProto | ModelGraph
TargetSource = str | Path | HardwareProfile


def as_graph(model: ModelSource) -> ModelGraph:
    """Accept a path, a ModelProto or an already loaded ModelGraph."""
    return model if isinstance(model, ModelGraph) else load_model(model)


def as_profile(target: TargetSource) -> HardwareProfile:
    """Accept a shipped profile name, a YAML path or a HardwareProfile."""
    return target if isinstance(target, HardwareProfile) else load_profile(target)


def audit(model: ModelSource, targets: TargetSource | Sequence[TargetSource]) -> list[CoverageReport]:
    """Audit a model against one or more devices: what maps, where it falls back, memory fit."""
    graph = as_graph(model)
    if isinstance(targets, (str, Path, HardwareProfile)):
        targets = [targets]
    profiles = [as_profile(t) for t in targets]  # validate every target before any analysis
    return [analyse(graph, profile) for profile in profiles]


def load_data(data: str | Path | Dataset | None, graph: ModelGraph) -> Dataset | None:
    """Accept a path to representative data, a Dataset, or None."""
    if data is None or isinstance(data, Dataset):
        return data
    return load_dataset(data, graph)


def plan(
    model: ModelSource,
    targets: TargetSource | Sequence[TargetSource],
    data: str | Path | Dataset | None = None,
    goals: UserGoals | None = None,
    rules: str | Path | None = None,
) -> list[Plan]:
    """Plan the post-training quantization of a model for one or more targets (one Plan each)."""
    tree = load_tree(rules)
    graph = as_graph(model)
    if isinstance(targets, (str, Path, HardwareProfile)):
        targets = [targets]
    profiles = [as_profile(t) for t in targets]
    dataset = load_data(data, graph)
    return plans(graph, profiles, tree, dataset, goals)
