"""No memory: the baseline every cell is compared with (the solver's prompt without rules or examples)."""

from __future__ import annotations

from memcollab.programs.methods.base import BuildInputs, Guidance, MemoryMethod
from memcollab.records import Task


class NoMemory(MemoryMethod):
    """Builds nothing, guides with nothing: its results are exactly the pipeline's no-memory results."""

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        return {}

    def guidance(self, task: Task) -> Guidance:
        return Guidance()
