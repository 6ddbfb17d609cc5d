"""Benchmarks: one spec per benchmark (loader, splits, kind, build/eval sources, taxonomy) and their tasks."""

from memcollab.benchmarks.ids import IdRange, IdSelection, parse_ids
from memcollab.benchmarks.registry import (
    BENCHMARKS,
    benchmark_names,
    get_benchmark,
    load_source,
    load_tasks,
    taxonomy_for,
)
from memcollab.benchmarks.spec import BenchmarkSpec, Source

__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "IdRange",
    "IdSelection",
    "Source",
    "benchmark_names",
    "get_benchmark",
    "load_source",
    "load_tasks",
    "parse_ids",
    "taxonomy_for",
]
