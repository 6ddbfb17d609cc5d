"""The one parallel map: input order, an error budget that stops and cancels, a failure count, real threads."""

from __future__ import annotations

import threading
import time

import pytest

from memcollab.errors import ConfigError, MemCollabError
from memcollab.parallel import MapResults, TooManyFailures, parallel_map


def _slow_square(x: int) -> int:
    time.sleep(0.02 * (x % 3))
    return x * x


@pytest.mark.parametrize("workers", [1, 4])
def test_results_come_back_in_input_order(workers: int) -> None:
    results = parallel_map(_slow_square, list(range(12)), workers=workers, show=False)
    assert results == [x * x for x in range(12)]
    assert isinstance(results, MapResults) and results.failed == 0 and results.failures == []


def test_empty_input_and_the_progress_bar() -> None:
    assert parallel_map(_slow_square, [], workers=3, show=False) == []
    assert parallel_map(_slow_square, [1, 2, 3], workers=2, description="bar", show=True) == [1, 4, 9]


def _read_back_then_computed(x: int) -> int:
    """The first five items come from the store at once; the rest take 50 ms each."""
    if x >= 5:
        time.sleep(0.05)
    return x * x


@pytest.mark.parametrize("workers", [1, 3])
def test_written_to_a_file_the_progress_is_a_line_per_tenth(workers: int, capsys: pytest.CaptureFixture[str]) -> None:
    """A run under nohup logs to a file, where a live bar would show only at the end of a step of hours. The time
    left follows the last tenth's pace, so items read back at the start of a resumed step do not make it 0."""
    parallel_map(_read_back_then_computed, list(range(25)), workers=workers, description="squaring", show=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and all(line.startswith("squaring: ") for line in lines)
    assert lines[0].startswith("squaring: 3/25 (") and "left" not in lines[0], "read back: no pace to go by"
    assert lines[-1].startswith("squaring: 25/25 (") and "left" not in lines[-1]
    if workers == 1:
        assert "about 0 s left" in lines[-2] or "about 1 s left" in lines[-2]
        assert all("left)" in line for line in lines[2:-1])


def _fail_on(bad: set[int]):
    def fn(x: int) -> int:
        if x in bad:
            raise ValueError(f"bad item {x}")
        return x

    return fn


@pytest.mark.parametrize("workers", [1, 3])
def test_default_budget_stops_at_the_first_failure(workers: int) -> None:
    calls: list[int] = []

    def fn(x: int) -> int:
        calls.append(x)
        if x == 0:
            raise ValueError("boom\nsecond line")
        time.sleep(0.05)
        return x

    with pytest.raises(TooManyFailures) as info:
        parallel_map(fn, list(range(40)), workers=workers, show=False)
    err = info.value
    assert isinstance(err, MemCollabError)
    assert str(err) == "1 of 40 items failed; first: ValueError: boom second line"
    assert isinstance(err.__cause__, ValueError) and err.first is err.__cause__ and err.total == 40
    assert len(calls) < 40  # pending work was cancelled, not run


@pytest.mark.parametrize("workers", [1, 3])
def test_failures_within_the_budget_are_counted_and_filled_in(workers: int) -> None:
    results = parallel_map(
        _fail_on({2, 5}), list(range(8)), workers=workers, show=False, max_errors=2, on_error=lambda item, exc: -item
    )
    assert results == [0, 1, -2, 3, 4, -5, 6, 7]
    assert results.failed == 2 and sorted(f.index for f in results.failures) == [2, 5]
    assert all(isinstance(f.error, ValueError) for f in results.failures)


def test_a_failed_item_without_on_error_is_none() -> None:
    results = parallel_map(_fail_on({1}), [0, 1, 2], workers=2, show=False, max_errors=None)
    assert results == [0, None, 2] and results.failed == 1


@pytest.mark.parametrize("workers", [1, 3])
def test_exceeding_the_budget_raises_with_the_count(workers: int) -> None:
    with pytest.raises(TooManyFailures, match=r"^3 of 10 items failed; first: ValueError: bad item \d$") as info:
        parallel_map(_fail_on({1, 3, 5, 7}), list(range(10)), workers=workers, show=False, max_errors=2)
    assert len(info.value.failures) == 3


def test_unlimited_budget_never_raises() -> None:
    results = parallel_map(_fail_on(set(range(10))), list(range(10)), workers=4, show=False, max_errors=None)
    assert results.failed == 10 and results == [None] * 10


def test_exit_code_follows_a_user_facing_first_error() -> None:
    def fn(x: int) -> int:
        raise ConfigError("no such agent")

    with pytest.raises(TooManyFailures) as info:
        parallel_map(fn, [1, 2], workers=2, show=False)
    assert info.value.exit_code == ConfigError.exit_code
    assert "ConfigError: no such agent" in str(info.value)


def test_on_result_runs_in_the_calling_thread_for_each_success() -> None:
    seen: list[tuple[int, int, str]] = []
    parallel_map(
        _fail_on({2}),
        list(range(5)),
        workers=3,
        show=False,
        max_errors=1,
        on_result=lambda i, r: seen.append((i, r, threading.current_thread().name)),
    )
    assert sorted((i, r) for i, r, _ in seen) == [(0, 0), (1, 1), (3, 3), (4, 4)]
    assert {name for _, _, name in seen} == {threading.current_thread().name}


def test_interrupts_are_not_failures_and_propagate_unchanged() -> None:
    def fn(x: int) -> int:
        if x == 1:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        parallel_map(fn, [0, 1, 2], workers=1, show=False, max_errors=None)
    with pytest.raises(KeyboardInterrupt):
        parallel_map(fn, [0, 1, 2], workers=2, show=False, max_errors=None)


def test_workers_really_run_concurrently() -> None:
    start = time.monotonic()
    parallel_map(lambda _: time.sleep(0.3), list(range(4)), workers=4, show=False)
    assert time.monotonic() - start < 1.0
