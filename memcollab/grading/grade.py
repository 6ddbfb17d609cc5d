"""One entry point for grading: `grade(task, text)` picks the math or the code grader by `task.kind`.

Graders are pure functions of (task, output): the verdict depends on nothing
else, so callers can cache it by that pair.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from memcollab.grading.code import grade_code, grade_code_many
from memcollab.grading.math import DEFAULT_TIMEOUT_S, grade_math
from memcollab.grading.sandbox import SandboxLimits
from memcollab.parallel import parallel_map
from memcollab.records import Task, Verdict


def grade(
    task: Task, text: str, limits: SandboxLimits | None = None, math_timeout_s: float = DEFAULT_TIMEOUT_S
) -> Verdict:
    """Verdict for a model's free-text output on `task`; never raises for anything in `text`."""
    if task.kind == "code":
        return grade_code(task, text, limits)
    return grade_math(task, text, math_timeout_s)


def grade_many(
    tasks_texts: Sequence[tuple[Task, str]],
    workers: int | None = None,
    limits: SandboxLimits | None = None,
    on_result: Callable[[int, Verdict], None] | None = None,
) -> list[Verdict]:
    """Grade many (task, text) pairs concurrently; verdicts in input order, `on_result(index, verdict)` as each ends."""
    workers = max(1, workers or os.cpu_count() or 1)
    verdicts: list[Verdict | None] = [None] * len(tasks_texts)
    code_idx = [i for i, (task, _) in enumerate(tasks_texts) if task.kind == "code"]
    math_idx = [i for i, (task, _) in enumerate(tasks_texts) if task.kind != "code"]

    if math_idx:

        def math_done(j: int, verdict: Verdict) -> None:
            verdicts[math_idx[j]] = verdict
            if on_result is not None:
                on_result(math_idx[j], verdict)

        parallel_map(
            lambda i: grade_math(*tasks_texts[i]),
            math_idx,
            workers=workers,
            show=False,
            on_result=math_done,
            thread_name_prefix="grade-math",
        )

    if code_idx:

        def code_done(j: int, verdict: Verdict) -> None:
            verdicts[code_idx[j]] = verdict
            if on_result is not None:
                on_result(code_idx[j], verdict)

        grade_code_many([tasks_texts[i] for i in code_idx], workers=workers, limits=limits, on_result=code_done)
    return verdicts  # type: ignore[return-value]
