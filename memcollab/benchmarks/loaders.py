"""Benchmark loaders: MATH500, GSM8K, HumanEval and MBPP as uniform :class:`Task` lists.

Data comes from a local directory of JSON Lines files (``--data-dir``,
``MEMCOLLAB_DATA_DIR`` or ``paths.default_data_dir()``) read through
``datasets``; without a local directory the usual Hugging Face dataset ids are
used. Every problem the user can cause (missing file, malformed line, unknown
benchmark/split/id) raises a one-line :class:`DataError`.
"""

from __future__ import annotations

import ast
import builtins
import json
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memcollab.errors import DataError
from memcollab.paths import default_data_dir
from memcollab.records import Task


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a benchmark is: its task kind, its splits and the split used when none is given."""

    name: str
    kind: str
    splits: tuple[str, ...]
    default_split: str
    hub_id: str
    hub_config: str | None = None


BENCHMARKS: dict[str, BenchmarkInfo] = {
    "math500": BenchmarkInfo("math500", "math", ("test", "build", "eval"), "test", "HuggingFaceH4/MATH-500"),
    "gsm8k": BenchmarkInfo("gsm8k", "math", ("train", "test"), "test", "openai/gsm8k", "main"),
    "humaneval": BenchmarkInfo("humaneval", "code", ("test",), "test", "openai/openai_humaneval"),
    "mbpp": BenchmarkInfo(
        "mbpp", "code", ("prompt", "test", "validation", "train"), "test", "google-research-datasets/mbpp", "full"
    ),
}

# Local file of each (benchmark, source split), relative to the data directory.
_LOCAL_FILES: dict[tuple[str, str], str] = {
    ("math500", "test"): "math500/test.jsonl",
    ("gsm8k", "train"): "gsm8k/train.jsonl",
    ("gsm8k", "test"): "gsm8k/test.jsonl",
    ("humaneval", "test"): "humaneval/HumanEval.jsonl",
    ("mbpp", "all"): "mbpp/mbpp.jsonl",
}

# The standard MBPP split by task_id (Austin et al. 2021).
MBPP_SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}

MATH500_BUILD_SIZE = 150


# --------------------------------------------------------------------------- raw records


def check_jsonl(path: Path) -> int:
    """Validate a JSON Lines file line by line; return the record count.

    `datasets` reports malformed JSON without the line number, so the file is
    checked here first and the error names the file and the line.
    """
    if not path.is_file():
        raise DataError(f"missing data file {path}; pass --data-dir or set MEMCOLLAB_DATA_DIR to the benchmark data")
    count = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                msg = getattr(exc, "msg", str(exc))
                raise DataError(f"malformed JSON in {path} line {lineno}: {msg}") from None
            if not isinstance(record, dict):
                raise DataError(f"malformed JSON in {path} line {lineno}: expected an object, got {type(record).__name__}")
            count += 1
    if count == 0:
        raise DataError(f"data file {path} has no records")
    return count


def _quiet_datasets() -> None:
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()


def _read_local(path: Path) -> list[dict[str, Any]]:
    """Rows of a local JSONL file, validated first, then read through `datasets`."""
    check_jsonl(path)
    _quiet_datasets()
    from datasets import load_dataset

    try:
        ds = load_dataset("json", data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; the JSON was valid, so relay its words
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path} with datasets: {first}") from None
    return ds.to_list()


def _read_hub(info: BenchmarkInfo, split: str) -> list[dict[str, Any]]:
    """Rows of one split from the Hugging Face hub (needs network or a warm HF cache)."""
    _quiet_datasets()
    from datasets import concatenate_datasets, load_dataset

    try:
        if info.name == "mbpp":
            parts = load_dataset(info.hub_id, info.hub_config)
            ds = concatenate_datasets([parts[name] for name in parts])
        else:
            ds = load_dataset(info.hub_id, info.hub_config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth and cache errors all mean "no data": say so in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"no local data directory and the Hugging Face hub is unreachable for {info.hub_id} ({first[:160]}); "
            "pass --data-dir or set MEMCOLLAB_DATA_DIR"
        ) from None
    return ds.to_list()


def _resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory {path} does not exist; pass an existing --data-dir")
        return path
    return default_data_dir()


def _rows(info: BenchmarkInfo, source_split: str, data_dir: Path | None) -> list[dict[str, Any]]:
    if data_dir is None:
        return _read_hub(info, source_split)
    return _read_local(data_dir / _LOCAL_FILES[(info.name, source_split)])


def _field(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"{where} lacks the field '{key}'; is this the right data file?")
    return row[key]


# --------------------------------------------------------------------------- per benchmark


def _snake(subject: str) -> str:
    return "_".join(subject.replace("&", " and ").lower().split())


def _math500_tasks(rows: list[dict[str, Any]]) -> list[Task]:
    tasks = []
    for i, row in enumerate(rows):
        where = f"math500 record {i + 1}"
        level = row.get("level")
        tasks.append(
            Task(
                id=f"math500/test/{_field(row, 'unique_id', where)}",
                benchmark="math500",
                split="test",
                kind="math",
                prompt=_field(row, "problem", where),
                answer=str(_field(row, "answer", where)),
                solution=_field(row, "solution", where),
                category=_snake(_field(row, "subject", where)),
                level=int(level) if level not in (None, "") else None,
            )
        )
    return tasks


def gsm8k_final_answer(answer_text: str) -> str:
    """The number after `####` in a GSM8K answer, thousands separators removed."""
    if "####" not in answer_text:
        return ""
    return answer_text.rsplit("####", 1)[1].strip().replace(",", "")


def _gsm8k_tasks(rows: list[dict[str, Any]], split: str) -> list[Task]:
    tasks = []
    for i, row in enumerate(rows):
        where = f"gsm8k/{split} record {i + 1}"
        full = _field(row, "answer", where)
        final = gsm8k_final_answer(full)
        if not final:
            raise DataError(f"{where} has no '#### <answer>' line")
        tasks.append(
            Task(
                id=f"gsm8k/{split}/{i}",
                benchmark="gsm8k",
                split=split,
                kind="math",
                prompt=_field(row, "question", where),
                answer=final,
                solution=full,
            )
        )
    return tasks


def _humaneval_tasks(rows: list[dict[str, Any]]) -> list[Task]:
    tasks = []
    for i, row in enumerate(rows):
        where = f"humaneval record {i + 1}"
        prompt = _field(row, "prompt", where)
        entry = _field(row, "entry_point", where)
        tasks.append(
            Task(
                id=f"humaneval/{_field(row, 'task_id', where)}",
                benchmark="humaneval",
                split="test",
                kind="code",
                prompt=prompt,
                solution=prompt + _field(row, "canonical_solution", where),
                tests=_field(row, "test", where).rstrip() + f"\n\n\ncheck({entry})\n",
                entry_point=entry,
            )
        )
    return tasks


_BUILTIN_NAMES = frozenset(dir(builtins))


def _quiet_parse(code: str) -> ast.Module:
    """ast.parse without the invalid-escape warnings that old benchmark code triggers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code)


def mbpp_entry_point(assert_line: str, code: str = "") -> str:
    """Name of the function an MBPP test assert calls.

    The first called name that the reference `code` defines wins (task 126
    defines `sum`, shadowing the builtin); else the first non-builtin call.
    """
    try:
        tree = _quiet_parse(assert_line.strip())
    except SyntaxError:
        return ""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    names = [c.func.id for c in sorted(calls, key=lambda n: (n.lineno, n.col_offset))]  # type: ignore[union-attr]
    defined: set[str] = set()
    try:
        defined = {n.name for n in ast.walk(_quiet_parse(code)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    except (SyntaxError, ValueError):
        pass
    for pick in (lambda n: n in defined, lambda n: n not in _BUILTIN_NAMES):
        found = next((n for n in names if pick(n)), "")
        if found:
            return found
    return names[0] if names else ""


def mbpp_prompt(text: str, first_test: str) -> str:
    """The usual MBPP prompt: the description plus one test, which fixes the function name and signature."""
    return f"{text.strip()}\nYour code should pass this test:\n{first_test.strip()}"


def _lf(code: str) -> str:
    return code.replace("\r\n", "\n").replace("\r", "\n")


def _mbpp_tasks(rows: list[dict[str, Any]]) -> list[Task]:
    tasks = []
    for i, row in enumerate(rows):
        where = f"mbpp record {i + 1}"
        task_id = int(_field(row, "task_id", where))
        tests = [_lf(t).strip() for t in _field(row, "test_list", where)]
        if not tests:
            raise DataError(f"{where} (task {task_id}) has an empty test_list")
        split = next((name for name, ids in MBPP_SPLITS.items() if task_id in ids), "extra")
        tasks.append(
            Task(
                id=f"mbpp/{task_id}",
                benchmark="mbpp",
                split=split,
                kind="code",
                prompt=mbpp_prompt(_field(row, "text", where), tests[0]),
                solution=_lf(_field(row, "code", where)),
                tests="\n".join(tests) + "\n",
                entry_point=mbpp_entry_point(tests[0], _lf(row.get("code") or "")),
                setup=_lf(row.get("test_setup_code") or ""),
            )
        )
    tasks.sort(key=lambda t: int(t.id.split("/")[1]))
    return tasks


# --------------------------------------------------------------------------- splits and selection


def math500_split(tasks: Sequence[Task], build_size: int = MATH500_BUILD_SIZE, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Seeded split of MATH500 into a memory-building part and an evaluation part, stratified by subject.

    MATH500 has no train split, so memory is built from a held-out part of it;
    stratifying keeps every subject's share the same in both parts.
    """
    from sklearn.model_selection import train_test_split

    tasks = list(tasks)
    if not 0 < build_size < len(tasks):
        raise DataError(f"math500 build size must be between 1 and {len(tasks) - 1}, got {build_size}")
    build, evaluation = train_test_split(
        tasks, train_size=build_size, random_state=seed, stratify=[t.category for t in tasks]
    )
    return (
        [t.model_copy(update={"split": "build"}) for t in build],
        [t.model_copy(update={"split": "eval"}) for t in evaluation],
    )


def _select_ids(tasks: list[Task], ids: Iterable[str], where: str) -> list[Task]:
    by_id = {t.id: t for t in tasks}
    chosen: list[Task] = []
    unknown: list[str] = []
    for raw in ids:
        key = raw.strip()
        if not key:
            continue
        if key in by_id:
            chosen.append(by_id[key])
            continue
        matches = [t for t in tasks if t.id.endswith("/" + key)]
        if len(matches) == 1:
            chosen.append(matches[0])
        elif len(matches) > 1:
            raise DataError(f"id '{key}' is ambiguous in {where} ({len(matches)} matches); give the full id, e.g. {matches[0].id}")
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(f"unknown task id(s) in {where}: {shown}; see `memcollab data show` for valid ids")
    return chosen


def load_tasks(
    benchmark: str,
    split: str | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    ids: Iterable[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[Task]:
    """Load one benchmark split as tasks, optionally narrowed to ids, a seeded sample, or the first `limit`.

    `ids` accepts full ids ("gsm8k/test/17") or their unambiguous tail ("17").
    For MATH500, "build"/"eval" are the seeded subject-stratified parts of the
    500 test problems (see :func:`math500_split`); "test" is all of them.
    """
    name = benchmark.strip().lower()
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark '{benchmark}'; choose one of: {', '.join(BENCHMARKS)}")
    info = BENCHMARKS[name]
    split = split or info.default_split
    if split not in info.splits:
        raise DataError(f"unknown split '{split}' for {name}; choose one of: {', '.join(info.splits)}")
    for flag, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 0:
            raise DataError(f"--{flag} must be >= 0, got {value}")

    directory = _resolve_data_dir(data_dir)
    if name == "math500":
        tasks = _math500_tasks(_rows(info, "test", directory))
        if split != "test":
            build, evaluation = math500_split(tasks, seed=0)
            tasks = build if split == "build" else evaluation
    elif name == "gsm8k":
        tasks = _gsm8k_tasks(_rows(info, split, directory), split)
    elif name == "humaneval":
        tasks = _humaneval_tasks(_rows(info, "test", directory))
    else:
        tasks = [t for t in _mbpp_tasks(_rows(info, "all", directory)) if t.split == split]

    where = f"{name}/{split}"
    if ids is not None:
        tasks = _select_ids(tasks, ids, where)
    if sample is not None:
        if sample > len(tasks):
            raise DataError(f"--sample {sample} is larger than {where} ({len(tasks)} tasks)")
        tasks = random.Random(seed).sample(tasks, sample)
    if limit is not None:
        tasks = tasks[:limit]
    return tasks
