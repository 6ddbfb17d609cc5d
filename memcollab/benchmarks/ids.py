"""Task selection by id: `--ids 1-100`, `--ids 1001-1100,1205`, `--ids gsm8k/test/7,HumanEval/3`.

An item is a full id, an unambiguous id tail (the part after a `/`), or an inclusive
range `a-b` of *numeric* tails: `0-9` on HumanEval is HumanEval/0..9, `11-210` on MBPP
is mbpp/11..210, `1-100` on GSM8K is its first 100 problems (ids are line numbers).
Every id a selection names must exist, so a typo never silently shrinks a run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memcollab.errors import DataError
from memcollab.records import Task

_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


@dataclass(frozen=True)
class IdRange:
    """An inclusive range of numeric id tails."""

    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __len__(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class IdSelection:
    """Parsed `--ids`: ids, tails and ranges in the order given."""

    items: tuple[str | IdRange, ...]

    @property
    def size(self) -> int:
        """How many tasks the selection names (before loading the data; repeats counted once if literal)."""
        literal = {item for item in self.items if isinstance(item, str)}
        return len(literal) + sum(len(item) for item in self.items if isinstance(item, IdRange))

    def __str__(self) -> str:
        return ",".join(str(item) for item in self.items)

    def select(self, tasks: Sequence[Task], where: str) -> list[Task]:
        """The named tasks, in the selection's order, each once; a one-line DataError for unknown or ambiguous ids."""
        by_number: dict[int, list[Task]] = {}
        for task in tasks:
            tail = task.id.rsplit("/", 1)[-1]
            if tail.isdigit():
                by_number.setdefault(int(tail), []).append(task)
        chosen: dict[str, Task] = {}
        unknown: list[str] = []
        for item in self.items:
            if isinstance(item, IdRange):
                missing = []
                for number in range(item.first, item.last + 1):
                    hits = by_number.get(number, [])
                    if len(hits) > 1:
                        raise DataError(f"id '{number}' is ambiguous in {where} ({len(hits)} matches); give full ids")
                    if hits:
                        chosen.setdefault(hits[0].id, hits[0])
                    else:
                        missing.append(number)
                unknown += _compress(missing)
                continue
            hit = _find(tasks, item, where)
            if hit is None:
                unknown.append(item)
            else:
                chosen.setdefault(hit.id, hit)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            span = f" (numeric ids run from {min(by_number)} to {max(by_number)})" if by_number else ""
            raise DataError(f"unknown task id(s) in {where}: {shown}{span}; see `memcollab data show` for valid ids")
        return list(chosen.values())


def _find(tasks: Sequence[Task], key: str, where: str) -> Task | None:
    exact = [t for t in tasks if t.id == key]
    if exact:
        return exact[0]
    matches = [t for t in tasks if t.id.endswith("/" + key)]
    if len(matches) > 1:
        raise DataError(
            f"id '{key}' is ambiguous in {where} ({len(matches)} matches); give the full id, e.g. {matches[0].id}"
        )
    return matches[0] if matches else None


def _compress(numbers: list[int]) -> list[str]:
    """[1, 2, 3, 7] -> ["1-3", "7"] (for error messages)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return [str(a) if a == b else f"{a}-{b}" for a, b in runs]


def parse_ids(value: str | Iterable[str]) -> IdSelection:
    """Parse comma-separated ids, tails and `a-b` ranges (a string, or several strings as from a repeated option)."""
    parts = [value] if isinstance(value, str) else list(value)
    items: list[str | IdRange] = []
    for part in parts:
        for raw in str(part).split(","):
            item = raw.strip()
            if not item:
                continue
            match = _RANGE.fullmatch(item)
            if match:
                first, last = int(match.group(1)), int(match.group(2))
                if first > last:
                    raise DataError(f"id range '{item}' runs backwards; write {last}-{first}")
                items.append(IdRange(first, last))
            else:
                items.append(item)
    if not items:
        raise DataError("no task ids given; use e.g. --ids 1-100 or --ids 1001-1100,1205")
    return IdSelection(tuple(items))
