"""The benchmark registry: one :class:`BenchmarkSpec` per benchmark, and `load_tasks` over them.

Adding a benchmark means adding a loader and one spec here; nothing else names benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from memcollab.benchmarks.files import resolve_data_dir, row_reader
from memcollab.benchmarks.ids import parse_ids
from memcollab.benchmarks.loaders import load_gsm8k, load_humaneval, load_math500, mbpp_loader
from memcollab.benchmarks.spec import BenchmarkSpec, Source
from memcollab.errors import DataError
from memcollab.records import Task
from memcollab.taxonomy import Taxonomy, load_taxonomy

#: The standard MBPP split by task_id (Austin et al. 2021).
MBPP_SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}

_SPECS = (
    BenchmarkSpec(
        name="math500",
        kind="math",
        splits=("test", "build", "eval"),
        default_split="test",
        hub_id="HuggingFaceH4/MATH-500",
        local_files={"test": "math500/test.jsonl"},
        loader=load_math500,
        # MATH500 has no train split: memory comes from a seeded, subject-stratified part of it.
        build=Source("math500", "build"),
        eval=Source("math500", "eval"),
        taxonomy="math500",
        check_splits=("test",),  # build/eval are parts of test
    ),
    BenchmarkSpec(
        name="gsm8k",
        kind="math",
        splits=("train", "test"),
        default_split="test",
        hub_id="openai/gsm8k",
        hub_config="main",
        local_files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        loader=load_gsm8k,
        build=Source("gsm8k", "train"),
        eval=Source("gsm8k", "test"),
        taxonomy="gsm8k",
        check_splits=("test", "train"),
    ),
    BenchmarkSpec(
        name="humaneval",
        kind="code",
        splits=("test",),
        default_split="test",
        hub_id="openai/openai_humaneval",
        local_files={"test": "humaneval/HumanEval.jsonl"},
        loader=load_humaneval,
        # HumanEval has no training part: memory is built from MBPP train (same code taxonomy).
        build=Source("mbpp", "train"),
        eval=Source("humaneval", "test"),
        taxonomy="code",
        check_splits=("test",),
    ),
    BenchmarkSpec(
        name="mbpp",
        kind="code",
        splits=tuple(MBPP_SPLITS),
        default_split="test",
        hub_id="google-research-datasets/mbpp",
        hub_config="full",
        local_files={"all": "mbpp/mbpp.jsonl"},
        hub_splits={"all": None},
        loader=mbpp_loader(MBPP_SPLITS),
        build=Source("mbpp", "train"),
        eval=Source("mbpp", "test"),
        taxonomy="code",
        check_splits=tuple(MBPP_SPLITS),
    ),
)

#: Every benchmark by name.
BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}


def _check_sources() -> None:
    """Every build/eval source names a registered benchmark and one of its splits (a wrong spec fails at import)."""
    for spec in _SPECS:
        for source in (spec.build, spec.eval):
            target = BENCHMARKS.get(source.benchmark)
            if target is None or source.split not in target.splits:
                raise ValueError(f"benchmark spec {spec.name}: source {source} is not a registered benchmark split")


_check_sources()


def benchmark_names() -> tuple[str, ...]:
    """Names of the registered benchmarks, in registry order."""
    return tuple(BENCHMARKS)


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec of `name` (case-insensitive); a one-line DataError naming the choices otherwise."""
    spec = BENCHMARKS.get(str(name).strip().lower())
    if spec is None:
        raise DataError(f"unknown benchmark '{name}'; available: {', '.join(BENCHMARKS)}")
    return spec


def taxonomy_for(benchmark: str) -> Taxonomy:
    """The category taxonomy a benchmark's tasks are filed under."""
    return load_taxonomy(get_benchmark(benchmark).taxonomy)


def load_tasks(
    benchmark: str,
    split: str | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    ids: str | Iterable[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[Task]:
    """Load one benchmark split as tasks, optionally narrowed to ids, a seeded sample, or the first `limit`.

    `ids` takes full ids, unambiguous tails and numeric ranges (see
    :mod:`memcollab.benchmarks.ids`); it cannot be combined with `sample`, and
    `limit` then cuts the selection. For MATH500, "build"/"eval" are the seeded,
    subject-stratified parts of the 500 test problems; "test" is all of them.
    """
    spec = get_benchmark(benchmark)
    split = spec.split(split)
    for flag, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 0:
            raise DataError(f"--{flag} must be >= 0, got {value}")
    if ids is not None and sample is not None:
        raise DataError("--ids and --sample both choose tasks; use one of them")
    selection = parse_ids(ids) if ids is not None else None  # a malformed --ids fails before any file is read

    tasks = spec.loader(split, row_reader(spec, resolve_data_dir(data_dir)))
    where = f"{spec.name}/{split}"
    if selection is not None:
        tasks = selection.select(tasks, where)
    if sample is not None:
        if sample > len(tasks):
            raise DataError(f"--sample {sample} is larger than {where} ({len(tasks)} tasks)")
        tasks = random.Random(seed).sample(tasks, sample)
    if limit is not None:
        tasks = tasks[:limit]
    return tasks


def load_source(source: Source, data_dir: str | Path | None = None, **selection: Any) -> list[Task]:
    """`load_tasks` of a run's build or eval source (`selection`: limit, ids, sample, seed)."""
    return load_tasks(source.benchmark, source.split, data_dir=data_dir, **selection)
