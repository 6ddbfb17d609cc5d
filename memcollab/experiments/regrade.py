"""`memcollab data regrade`: grade every stored turn of a result store again and compare with its stored verdict.

A stored verdict is what every table was made from. Regrading checks that it still holds on this machine, with
this grader and this sandbox: after a grader or sandbox change, or for a store whose turns were graded somewhere
unknown (a store does not record the sandbox mode of each turn).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from memcollab.benchmarks import get_benchmark, load_tasks
from memcollab.errors import DataError
from memcollab.grading.grade import grade_many
from memcollab.grading.sandbox import SandboxLimits, isolation_mode
from memcollab.memory.backends import parse_target
from memcollab.memory.results import ResultStore
from memcollab.parallel import make_progress
from memcollab.records import Task, Trajectory, Turn, Verdict


@dataclass(frozen=True)
class Disagreement:
    """One turn whose verdict now differs from the stored one."""

    key: str
    task_id: str
    turn: int
    stored: Verdict
    now: Verdict


@dataclass
class RegradeReport:
    """What regrading a store found: turns graded, how many agree, which do not, and in which sandbox mode."""

    trajectories: int = 0
    turns: int = 0
    agree: int = 0
    sandbox: str = "-"
    by_benchmark: Counter[str] = field(default_factory=Counter)
    disagreements: list[Disagreement] = field(default_factory=list)
    missing_tasks: int = 0  # trajectories whose task is not in this machine's benchmark data

    def lines(self, shown: int = 20) -> list[str]:
        """The report as printable lines: totals, then the first `shown` disagreements."""
        counted = ", ".join(f"{name} {n}" for name, n in sorted(self.by_benchmark.items()))
        out = [
            f"{self.turns} turns of {self.trajectories} trajectories regraded ({counted or 'none'}; sandbox: "
            f"{self.sandbox}): {self.agree} agree with the stored verdict, {len(self.disagreements)} do not"
        ]
        if self.missing_tasks:
            out.append(f"{self.missing_tasks} trajectories skipped: their tasks are not in the benchmark data here")
        for d in self.disagreements[:shown]:
            out.append(f"  {d.task_id} turn {d.turn + 1}: stored {_said(d.stored)}, now {_said(d.now)} (key {d.key})")
        if len(self.disagreements) > shown:
            out.append(f"  ... and {len(self.disagreements) - shown} more")
        return out


def _said(verdict: Verdict) -> str:
    return "correct" if verdict.correct else f"wrong ({verdict.error_type or 'no error type'})"


def graded_text(task: Task, turn: Turn) -> str:
    """The text the solver graded, rebuilt from the stored turn: a math turn stores its extracted final answer,
    which was graded boxed (bare, a grader would read a different number: "L - 8" as 8); code, the program."""
    if task.kind == "code" or not turn.verdict.extracted:
        return turn.output
    return f"\\boxed{{{turn.output}}}"


def _tasks(benchmarks: set[str], data_dir: str | Path | None) -> dict[str, Task]:
    """Every task of every split of `benchmarks` that this machine's data holds, by id (MATH500's build and eval
    splits share ids). A split that does not load is left out: its trajectories are counted as skipped."""
    tasks: dict[str, Task] = {}
    for name in sorted(benchmarks):
        for split in get_benchmark(name).splits:
            try:
                tasks.update((t.id, t) for t in load_tasks(name, split, data_dir=data_dir))
            except DataError:
                continue
    return tasks


def regrade_store(
    store: str | Path,
    data_dir: str | Path | None = None,
    workers: int | None = None,
    limits: SandboxLimits | None = None,
    show_progress: bool = True,
) -> RegradeReport:
    """Grade each stored trajectory's turns again (the code turns in the sandbox, with the solver's limits by
    default) and compare correctness with the stored verdicts."""
    target = parse_target(store, DataError)
    if target.kind == "sqlite" and not Path(target.location).is_file():  # a check never creates an empty store
        raise DataError(f"no result store at {store}")
    with ResultStore(store) as results:
        stored = [(key, Trajectory.model_validate(payload)) for key, payload in results.payloads("trajectory")]
    report = RegradeReport(trajectories=len(stored))
    tasks = _tasks({t.benchmark for _, t in stored}, data_dir)
    work: list[tuple[str, Task, int, Verdict, str]] = []
    for key, trajectory in stored:
        task = tasks.get(trajectory.task_id)
        if task is None:
            report.missing_tasks += 1
            continue
        work += [(key, task, i, turn.verdict, graded_text(task, turn)) for i, turn in enumerate(trajectory.turns)]
    if any(task.kind == "code" for _, task, *_ in work):
        report.sandbox = isolation_mode()  # no boundary: one line here, before any program runs
    report.turns = len(work)
    with make_progress() if show_progress else nullcontext(None) as progress:
        bar = progress.add_task("regrading", total=len(work)) if progress is not None else 0
        verdicts = grade_many(
            [(task, output) for _, task, _, _, output in work],
            workers=workers,
            limits=limits,
            on_result=None if progress is None else lambda _i, _v: progress.advance(bar),
        )
    for (key, task, turn, before, _), now in zip(work, verdicts):
        report.by_benchmark[task.benchmark] += 1
        if now.correct == before.correct:
            report.agree += 1
        else:
            report.disagreements.append(Disagreement(key, task.id, turn, before, now))
    report.disagreements.sort(key=lambda d: (d.task_id, d.turn, d.key))
    return report
