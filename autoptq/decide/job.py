"""What one run for one target carries from stage to stage: the model's analysis graph, the target, the data, and
how candidates are judged. The plan (or a replayed recipe) travels beside it: it is the decision, the job is what
the decision is about."""

from __future__ import annotations

from dataclasses import dataclass

from autoptq.devices.profiles import HardwareProfile
from autoptq.evaluate.verify import DEFAULT_MIN_SQNR_DB
from autoptq.io.user_metric import UserMetric
from autoptq.model.calibration import Dataset
from autoptq.model.graph import ModelGraph


@dataclass(frozen=True)
class Job:
    """One (model, target) run: `graph` with its input shapes bound, `calibration` to quantize with (None: no data),
    `validation` held out to judge candidates on, the user's `metric` and the SQNR floor every candidate must
    clear."""

    graph: ModelGraph
    profile: HardwareProfile
    calibration: Dataset | None
    validation: Dataset
    metric: UserMetric | None = None
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB
