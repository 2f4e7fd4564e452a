"""User metrics: `--metric module:function` on the command line, `metric=` in the Python API.

The function is called as `function(outputs, labels) -> float`, higher is better:

- `outputs`: dict, model output name -> list with one numpy array per validation sample, in the order of the data;
  each array is that output for one sample exactly as the model returns it (batch axis included, e.g. `[1, 384]`
  for a sentence embedding), as float32 where the model's outputs are float (integer graph outputs of an
  integer-I/O device are dequantized first), so the float model and every candidate are scored alike;
- `labels`: the `labels` array of the validation data (one entry per sample) or None when the data has none.

`module` is a path to a `.py` file (read, never written) or an importable module name; nothing is evaluated from the
command line itself. A metric that raises, or returns anything but a finite number, is reported as bad input.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from autoptq.errors import AutoptqError

MetricFunction = Callable[[dict[str, list[np.ndarray]], np.ndarray | None], float]


class MetricScore(BaseModel):
    """A user metric on the float model and on a candidate (higher is better)."""

    name: str
    float: float
    candidate: float
    drop: float


@dataclass(frozen=True)
class UserMetric:
    """A loaded metric and the name it is reported under."""

    name: str
    function: MetricFunction
    source: Path | None = None

    def score(
        self, output_names: Sequence[str], outputs: Sequence[Sequence[np.ndarray]], labels: np.ndarray | None
    ) -> float:
        """The metric over per-sample output lists (`outputs[sample][output index]`)."""
        by_name = {name: [np.asarray(sample[i]) for sample in outputs] for i, name in enumerate(output_names)}
        try:
            value = self.function(by_name, labels)
        except Exception as exc:  # the user's code: any failure is their input's problem, reported in one line
            raise AutoptqError(f"metric {self.name} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
            raise AutoptqError(f"metric {self.name} returned {value!r}: expected a finite number (higher is better)")
        return float(value)

    def compare(
        self,
        output_names: Sequence[str],
        float_outputs: Sequence[Sequence[np.ndarray]],
        candidate_outputs: Sequence[Sequence[np.ndarray]],
        labels: np.ndarray | None,
    ) -> MetricScore:
        """The metric on the float model's outputs and on a candidate's."""
        reference = self.score(output_names, float_outputs, labels)
        candidate = self.score(output_names, candidate_outputs, labels)
        return MetricScore(
            name=self.name,
            float=round(reference, 6),
            candidate=round(candidate, 6),
            drop=round(reference - candidate, 6),
        )


def load_metric(spec: str | MetricFunction | UserMetric | None) -> UserMetric | None:
    """`path/to/file.py:function`, `package.module:function`, a callable, or None."""
    if spec is None or isinstance(spec, UserMetric):
        return spec
    if callable(spec):
        return UserMetric(name=getattr(spec, "__name__", "metric"), function=spec)
    module_part, colon, function_name = spec.rpartition(":")
    if not colon or not module_part or not function_name.isidentifier():
        raise AutoptqError(f"--metric {spec!r}: expected module:function (a .py file or an importable module)")
    path = Path(module_part)
    source = None
    if module_part.endswith(".py") or path.is_file():
        if not path.is_file():
            raise AutoptqError(f"--metric {spec!r}: {path} is not a file")
        module = _module_from_file(path, spec)
        source = path
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise AutoptqError(f"--metric {spec!r}: cannot import {module_part!r}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise AutoptqError(f"--metric {spec!r}: {module_part} has no function {function_name!r}")
    return UserMetric(name=f"{path.name if source else module_part}:{function_name}", function=function, source=source)


def _module_from_file(path: Path, spec_text: str) -> object:
    spec = importlib.util.spec_from_file_location(f"autoptq_user_metric_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise AutoptqError(f"--metric {spec_text!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ next to the user's file: nothing is written outside the output folder.
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed at import time
        raise AutoptqError(f"--metric {spec_text!r}: importing {path} raised {type(exc).__name__}: {exc}") from exc
    finally:
        sys.dont_write_bytecode = previous
    return module
