"""What a model receives: the solver's messages for a task, rendered without calling any LM.

`memcollab show-prompt` prints them, `docs/prompts.md` holds one per task kind, and a test keeps the
two equal, so a reader always sees exactly the text behind every reported number.
"""

from __future__ import annotations

from typing import Any

import dspy

from memcollab.grading.code_extract import prompt_is_code
from memcollab.programs.solver import Solver
from memcollab.records import Task


def solver_messages(
    task: Task,
    adapter: dspy.Adapter,
    guidance: str = "",
    previous_attempt: str = "",
    feedback: str = "",
    solver: Solver | None = None,
) -> list[dict[str, Any]]:
    """The chat messages the solver sends for `task` (turn 1, or a later code turn) through `adapter`."""
    solver = solver or Solver()
    if task.kind == "math":
        predictor, inputs = solver.solve_math, {"problem": task.prompt, "guidance": guidance}
    else:
        predictor = solver.complete_function if prompt_is_code(task.prompt) else solver.write_function
        inputs = {
            "task": task.prompt,
            "guidance": guidance,
            "previous_attempt": previous_attempt,
            "feedback": feedback,
            "entry_point": task.entry_point,
        }
    inner = predictor.predict if hasattr(predictor, "predict") else predictor
    return adapter.format(inner.signature, list(inner.demos), inputs)
