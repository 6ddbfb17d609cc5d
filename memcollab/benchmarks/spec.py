"""What one benchmark is, in one place: its kind, splits, data files, loader, build/eval sources and taxonomy.

Everything else (the run's default splits, the taxonomy lookup, `data check`, the time
estimate) reads these fields instead of keeping its own table of benchmark names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from memcollab.errors import DataError
from memcollab.records import Task, TaskKind

#: Raw rows of one *source* of a benchmark (a local file or a hub split), by source name.
ReadRows = Callable[[str], list[dict[str, Any]]]
#: A benchmark's loader: (split, read) -> the tasks of that split, in the benchmark's order.
Loader = Callable[[str, ReadRows], list[Task]]


@dataclass(frozen=True)
class Source:
    """Where a run reads tasks from: a benchmark and one of its splits (e.g. HumanEval builds from MBPP train)."""

    benchmark: str
    split: str

    def __str__(self) -> str:
        return f"{self.benchmark}/{self.split}"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Every fact about one benchmark that the code needs.

    `local_files` and `hub_splits` are keyed by *source* name: a file (or hub split) the
    loader reads, which need not be a split (MBPP's one file holds all four splits;
    `None` as a hub split means "every hub split, concatenated").
    """

    name: str
    kind: TaskKind
    splits: tuple[str, ...]
    default_split: str
    hub_id: str
    local_files: Mapping[str, str]
    loader: Loader
    build: Source
    eval: Source
    taxonomy: str
    hub_config: str | None = None
    hub_splits: Mapping[str, str | None] = field(default_factory=dict)
    check_splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.default_split not in self.splits:
            raise ValueError(f"{self.name}: default split {self.default_split!r} is not one of {self.splits}")
        if not set(self.check_splits) <= set(self.splits):
            raise ValueError(f"{self.name}: check splits {self.check_splits} are not all splits of {self.splits}")

    def split(self, split: str | None) -> str:
        """The split to read: `split`, or the default; a one-line DataError for an unknown one."""
        chosen = split or self.default_split
        if chosen not in self.splits:
            raise DataError(f"unknown split '{chosen}' for {self.name}; choose one of: {', '.join(self.splits)}")
        return chosen

    def hub_split(self, source: str) -> str | None:
        """The hub split that holds a source (default: the source's own name)."""
        return self.hub_splits.get(source, source)
