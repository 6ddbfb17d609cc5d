"""`memcollab data check`: load every benchmark and grade its reference solutions with the real graders.

If the graders or the sandbox are wrong, reference solutions fail here, before
any model is run; so this is the first thing to run on a new machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memcollab.benchmarks import BENCHMARKS, get_benchmark, load_tasks
from memcollab.grading.grade import grade_many
from memcollab.grading.sandbox import SandboxLimits
from memcollab.records import Task, Verdict

# References are trusted code: generous limits so a busy machine does not fail slow ones (MBPP 123 takes ~4 s).
CHECK_LIMITS = SandboxLimits(wall_s=60.0, cpu_s=30.0, memory_mb=2048)


@dataclass
class CheckResult:
    """How many reference solutions of one benchmark split graded correct, and which did not."""

    benchmark: str
    split: str
    total: int
    passed: int = 0
    failures: list[tuple[str, Verdict]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.split}"

    @property
    def ok(self) -> bool:
        return self.passed == self.total


def check_references(
    benchmarks: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    workers: int | None = None,
    limits: SandboxLimits | None = None,
    show_progress: bool = True,
) -> list[CheckResult]:
    """Grade each reference solution (`task.solution`) as if a model had written it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    specs = [get_benchmark(b) for b in benchmarks] if benchmarks else list(BENCHMARKS.values())
    groups: list[tuple[CheckResult, list[Task]]] = []
    for spec in specs:
        for split in spec.check_splits:  # which splits hold distinct references (MATH500 build/eval are parts of test)
            tasks = load_tasks(spec.name, split, data_dir=data_dir)
            groups.append((CheckResult(spec.name, split, len(tasks)), tasks))

    with Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    ) as progress:
        bars = [progress.add_task(result.name, total=result.total, start=False) for result, _ in groups]
        for (result, tasks), bar in zip(groups, bars):
            progress.start_task(bar)
            start = time.monotonic()

            def advance(
                index: int, verdict: Verdict, result: CheckResult = result, tasks: list[Task] = tasks, bar=bar
            ) -> None:
                if verdict.correct:
                    result.passed += 1
                else:
                    result.failures.append((tasks[index].id, verdict))
                progress.advance(bar)

            grade_many(
                [(t, t.solution) for t in tasks], workers=workers, limits=limits or CHECK_LIMITS, on_result=advance
            )
            result.failures.sort(key=lambda item: item[0])
            result.seconds = time.monotonic() - start
    return [result for result, _ in groups]


def summary_lines(results: Sequence[CheckResult]) -> list[str]:
    """One line per split, plus the failing ids with their error types."""
    lines = []
    for r in results:
        lines.append(f"{r.name}: {r.passed}/{r.total} reference solutions graded correct")
        for task_id, verdict in r.failures[:20]:
            detail = verdict.feedback.strip().splitlines()[-1][:120] if verdict.feedback.strip() else ""
            lines.append(f"  failed {task_id}: {verdict.error_type} {detail}".rstrip())
        if len(r.failures) > 20:
            lines.append(f"  ... and {len(r.failures) - 20} more")
    return lines
