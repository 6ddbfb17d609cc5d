"""Benchmarks: every benchmark's facts (loader, splits, kind, taxonomy) and its tasks."""

from memcollab.benchmarks.loaders import BENCHMARKS, load_tasks

__all__ = ["BENCHMARKS", "load_tasks"]
