"""One bounded parallel map for the whole package: input-order results, an optional progress bar, an error budget.

Every step that fans out (LM calls with `--workers N`, grading, the sandbox pool)
goes through :func:`parallel_map`. The mapped function persists its own result
as soon as it exists (the pipeline's result store); the returned list is in input
order whatever the completion order was.

Failures are counted against `max_errors`. Within the budget a failed item gets
`on_error(item, exc)`'s value (or None) and the map goes on; past it, pending
work is cancelled and one :class:`TooManyFailures` is raised. The default budget
of 0 stops at the first failure, as the map always has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from memcollab.errors import MemCollabError

T = TypeVar("T")
R = TypeVar("R")

console = Console(stderr=True)


class LineProgress:
    """Progress as plain lines, for a log file: a line at each tenth of the work and at its end.

    Rich's bar redraws in place on a terminal; written to a file (a run under nohup) it shows only when the
    step ends, so a step of hours would say nothing until then. Offers the part of `Progress` used here.
    The time left is at the pace of the last tenth: a resumed step reads its first items back in no time,
    which says nothing about the rest (so a tenth read back, faster than READ_BACK_S an item, states none).
    """

    STEPS = 10
    READ_BACK_S = 0.02  # an item done faster than this was read back from the store, not computed

    def __init__(self, out: Console) -> None:
        self.out = out
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {
            "description": description,
            "total": total,
            "done": 0,
            "start": time.monotonic(),
            "said": 0,
            "mark": (time.monotonic(), 0.0),  # time and count at the last line
        }
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self.tasks[task_id]
        task["done"] += advance
        total, done = task["total"], task["done"]
        step = int(self.STEPS * done / total) if total else self.STEPS
        if step <= task["said"]:
            return
        task["said"] = step
        now = time.monotonic()
        elapsed = now - task["start"]
        (then, before), task["mark"] = task["mark"], (now, done)
        pace = (now - then) / (done - before)
        left = f", about {duration(pace * (total - done))} left" if done < total and pace >= self.READ_BACK_S else ""
        self.out.print(
            f"{task['description']}: {done:g}/{total} ({duration(elapsed)}{left})", markup=False, highlight=False
        )


def duration(seconds: float) -> str:
    """`3 min 05 s`, or `42 s` under a minute: how progress lines and build logs state a time."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def make_progress(transient: bool = False) -> Progress | LineProgress:
    """A live bar on a terminal; plain lines at each tenth when the output goes to a file."""
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


@dataclass(frozen=True)
class Failure:
    """One item whose function raised."""

    index: int
    item: Any
    error: Exception


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TooManyFailures(MemCollabError):
    """More items of a parallel map failed than its error budget allowed; the map stopped.

    `failures` holds what failed before it stopped (completion order), `total` the
    number of items, `first` the first error (also the `__cause__`). The exit code
    is the first error's when that is itself a MemCollabError.
    """

    def __init__(self, failures: list[Failure], total: int) -> None:
        self.failures = failures
        self.total = total
        self.first = failures[0].error
        if isinstance(self.first, MemCollabError):
            self.exit_code = self.first.exit_code
        super().__init__(
            f"{len(failures)} of {total} items failed; first: {type(self.first).__name__}: {_one_line(self.first)}"
        )


class MapResults(list[R], Generic[R]):  # type: ignore[misc]
    """A list of results in input order that also says what failed (`failures`, `failed`)."""

    def __init__(self, values: Sequence[R]) -> None:
        super().__init__(values)
        self.failures: list[Failure] = []

    @property
    def failed(self) -> int:
        return len(self.failures)


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    description: str = "working",
    show: bool = True,
    *,
    max_errors: int | None = 0,
    on_error: Callable[[T, Exception], R] | None = None,
    on_result: Callable[[int, R], None] | None = None,
    thread_name_prefix: str = "map",
) -> MapResults[R]:
    """Apply `fn` to every item with at most `workers` threads; results in input order.

    `max_errors`: failures tolerated (None: any number); one more stops the map
    with :class:`TooManyFailures`. `on_error(item, exc)` gives a failed item's
    result; `on_result(index, result)` runs in the calling thread as each item
    succeeds. Only `Exception`s count as failures: KeyboardInterrupt and the
    like stop the map at once and propagate unchanged.
    """
    total = len(items)
    results: MapResults[R] = MapResults([None] * total)  # type: ignore[list-item]

    def failed(index: int, exc: Exception) -> None:
        results.failures.append(Failure(index, items[index], exc))
        if max_errors is not None and results.failed > max_errors:
            raise TooManyFailures(results.failures, total) from results.failures[0].error
        if on_error is not None:
            results[index] = on_error(items[index], exc)

    def succeeded(index: int, value: R) -> None:
        results[index] = value
        if on_result is not None:
            on_result(index, value)

    progress_cm = make_progress() if show else nullcontext(None)
    with progress_cm as progress:
        bar = progress.add_task(description, total=total) if progress is not None else None

        def advance() -> None:
            if progress is not None and bar is not None:
                progress.advance(bar)

        if workers <= 1 or total <= 1:
            for index, item in enumerate(items):
                try:
                    value = fn(item)
                except Exception as exc:
                    advance()
                    failed(index, exc)
                    continue
                succeeded(index, value)
                advance()
            return results

        pool = ThreadPoolExecutor(max_workers=min(workers, total), thread_name_prefix=thread_name_prefix)
        try:
            futures: dict[Future[R], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                index = futures[future]
                error = future.exception()
                advance()
                if error is None:
                    succeeded(index, future.result())
                elif isinstance(error, Exception):
                    failed(index, error)
                else:
                    raise error
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return results
