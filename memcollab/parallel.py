"""Bounded parallel map with a rich progress bar; results come back in input order.

Used by every step that makes LM calls (`--workers N`): the mapped function persists its own
result as soon as it exists (the pipeline's result store), and the returned list is in input
order, whatever the completion order was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
R = TypeVar("R")

console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
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


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int = 1,
    description: str = "working",
    show: bool = True,
) -> list[R]:
    """Apply `fn` to every item with at most `workers` threads; the first exception stops the map."""
    results: list[R | None] = [None] * len(items)
    with make_progress() as progress:
        bar = progress.add_task(description, total=len(items), visible=show)
        if workers <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                progress.advance(bar)
            return results  # type: ignore[return-value]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    progress.advance(bar)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results  # type: ignore[return-value]
