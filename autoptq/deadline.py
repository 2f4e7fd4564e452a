"""A deadline that long-running loops check between units of work.

The accuracy-aware search's `--time-budget` is one `Deadline`, handed down to the loops that take long: the
evaluator's per-sample inference (and the emulators'), the sensitivity ranking's per-node quantization, calibration
(one sample at a time), and the latency timing, whose budget it caps by the time left. Each loop calls `check` (or
iterates through `each`) before it starts a unit; once the deadline has passed, `check` raises `OutOfTime`, and the
one that set the deadline catches it. A deadline passes by at most one unit of work: the unit that was running when
it passed.

Low-level modules only take a `Deadline` (default `NO_DEADLINE`: never passes); none knows who set it or why. The
clock is injectable, so a test can expire a deadline without waiting for wall time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class OutOfTime(BaseException):
    """The deadline passed: the work in progress is abandoned (caught only by whoever set the deadline).

    A BaseException, as KeyboardInterrupt is: stopping is no failure of the work, so the `except Exception` around
    onnxruntime calls (which raise bare Exceptions) must not turn it into a verdict on a candidate."""


class Deadline:
    """A point in time `seconds` from its creation on `clock` (None: never)."""

    def __init__(self, seconds: float | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.at = None if seconds is None else clock() + seconds

    def left(self) -> float:
        """Seconds until the deadline (negative once passed; inf without one)."""
        return math.inf if self.at is None else self.at - self.clock()

    def passed(self) -> bool:
        return self.at is not None and self.clock() > self.at

    def check(self) -> None:
        """Raise OutOfTime if the deadline has passed (call before starting a unit of work)."""
        if self.passed():
            raise OutOfTime

    def cap(self, seconds: float) -> float:
        """`seconds`, or the time left if that is shorter (never negative)."""
        return seconds if self.at is None else max(0.0, min(seconds, self.left()))

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """The items, checking the deadline before each is produced (a lazy item, e.g. a sample's inference in a
        generator, is not started once the deadline has passed)."""
        iterator = iter(items)
        while True:
            self.check()
            try:
                item = next(iterator)
            except StopIteration:
                return
            yield item


NO_DEADLINE = Deadline()
"""The default of every function that takes a deadline: it never passes."""
