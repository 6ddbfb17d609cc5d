"""Step times added up over the invocations of one run directory, as its summary.json keeps them.

A run resumes from its result store: a rerun walks its finished steps again and only reads their results back.
Adding that pass's seconds to what a step took would make every resumed step look slower than it was, so a
step that an earlier invocation finished with the same fingerprint (what it made: its tasks, its memory, its
settings) adds no time. A step stopped part way, or left with unanswered LM calls, is not finished: its rerun
does real work and its seconds count.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Before:
    """summary.json as the invocations before this one left it."""

    timings: dict[str, float] = field(default_factory=dict)
    invocations: int = 0
    wall_s: float = 0.0
    completed: dict[str, str] = field(default_factory=dict)  # step key -> fingerprint of what it finished


def read_before(summary: Path) -> Before:
    """What `summary` says of earlier invocations; an empty record when there is none or it cannot be read."""
    try:
        before = json.loads(summary.read_text())
        return Before(
            {str(k): float(v) for k, v in before.get("timings_s", {}).items()},
            int(before.get("invocations", 0)),
            float(before.get("wall_s", 0.0)),
            {str(k): str(v) for k, v in before.get("completed", {}).items()},
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return Before()  # no summary yet, or one we cannot read: start from zero


class StepTimes:
    """This invocation's step seconds and finished steps, over what the earlier invocations of the run dir left.

    Create it when the invocation starts: the earlier invocations' record is read then, before this one rewrites
    the file.
    """

    def __init__(self, summary: Path) -> None:
        self.before = read_before(summary)
        self.timings: dict[str, float] = {}
        self.completed: dict[str, str] = {}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def timed(self, key: str, fingerprint: str) -> Iterator[Callable[[], float]]:
        """Time step `key` into `timings`, also when it stops part way; yields the step's seconds over every
        invocation. A step finished before with the same `fingerprint` only reads its results back: 0 s."""
        read_back = self.before.completed.get(key) == fingerprint
        start = time.perf_counter()
        try:
            yield lambda: self.total(key)
        finally:
            self.timings[key] = 0.0 if read_back else time.perf_counter() - start

    def complete(self, key: str, fingerprint: str) -> None:
        """Mark step `key` finished with what `fingerprint` names: a later rerun of it reads back, for free."""
        self.completed[key] = fingerprint

    def total(self, key: str) -> float:
        """Seconds of step `key` over every invocation."""
        return self.before.timings.get(key, 0.0) + self.timings.get(key, 0.0)

    def totals(self) -> dict[str, float]:
        """Every step's seconds over every invocation, rounded to 0.1 s."""
        return {k: round(self.total(k), 1) for k in sorted({*self.before.timings, *self.timings})}

    def summary(self) -> dict[str, Any]:
        """The summary.json fields this record owns: invocations, wall time, step times, finished steps."""
        return {
            "invocations": self.before.invocations + 1,
            "wall_s": round(self.before.wall_s + time.perf_counter() - self._started, 1),
            "timings_s": self.totals(),
            "completed": dict(sorted({**self.before.completed, **self.completed}.items())),
        }
