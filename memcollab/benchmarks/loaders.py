"""Per-benchmark loaders: MATH500, GSM8K, HumanEval and MBPP rows as uniform :class:`Task` lists.

Each `load_<benchmark>(split, read)` is the `loader` of that benchmark's spec
(`memcollab.benchmarks.registry`): `read(source)` returns raw rows, these functions
turn them into tasks and pick the split. Task ids are stable across runs:

- MATH500: ``math500/test/<unique_id>`` (e.g. ``math500/test/test/algebra/1.json``);
- GSM8K: ``gsm8k/<split>/<n>`` where ``n`` is the **1-based line number** of the
  problem in ``<split>.jsonl`` (its n-th record): ``gsm8k/test/1`` is the first line of
  test.jsonl, so "GSM8K test 1-100" (``--ids 1-100``) means the first 100 problems;
- HumanEval: ``humaneval/HumanEval/<n>`` (n = 0..163, as in the dataset);
- MBPP: ``mbpp/<task_id>`` (the dataset's task_id, 1..974).

Every problem the user can cause raises a one-line :class:`DataError`.
"""

from __future__ import annotations

import ast
import builtins
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from memcollab.benchmarks.spec import Loader, ReadRows
from memcollab.errors import DataError
from memcollab.records import Task

#: Size of MATH500's seeded build part (the rest is the evaluation part).
MATH500_BUILD_SIZE = 150


def _field(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"{where} lacks the field '{key}'; is this the right data file?")
    return row[key]


# --------------------------------------------------------------------------- per benchmark


def _snake(subject: str) -> str:
    return "_".join(subject.replace("&", " and ").lower().split())


def math500_tasks(rows: list[dict[str, Any]]) -> list[Task]:
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


def gsm8k_tasks(rows: list[dict[str, Any]], split: str) -> list[Task]:
    tasks = []
    for i, row in enumerate(rows):
        where = f"gsm8k/{split} record {i + 1}"
        full = _field(row, "answer", where)
        final = gsm8k_final_answer(full)
        if not final:
            raise DataError(f"{where} has no '#### <answer>' line")
        tasks.append(
            Task(
                id=f"gsm8k/{split}/{i + 1}",  # 1-based line number: gsm8k/test/1 is the first problem
                benchmark="gsm8k",
                split=split,
                kind="math",
                prompt=_field(row, "question", where),
                answer=final,
                solution=full,
            )
        )
    return tasks


def humaneval_tasks(rows: list[dict[str, Any]]) -> list[Task]:
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


def mbpp_tasks(rows: list[dict[str, Any]], splits: Mapping[str, range]) -> list[Task]:
    """Every MBPP row as a task, its split read off its task_id (`splits`: split -> task_id range)."""
    tasks = []
    for i, row in enumerate(rows):
        where = f"mbpp record {i + 1}"
        task_id = int(_field(row, "task_id", where))
        tests = [_lf(t).strip() for t in _field(row, "test_list", where)]
        if not tests:
            raise DataError(f"{where} (task {task_id}) has an empty test_list")
        split = next((name for name, ids in splits.items() if task_id in ids), "extra")
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


def math500_split(
    tasks: Sequence[Task], build_size: int = MATH500_BUILD_SIZE, seed: int = 0
) -> tuple[list[Task], list[Task]]:
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


# --------------------------------------------------------------------------- loaders of the specs


def load_math500(split: str, read: ReadRows) -> list[Task]:
    """All 500 problems ("test"), or the seeded build/eval parts of them."""
    tasks = math500_tasks(read("test"))
    if split == "test":
        return tasks
    build, evaluation = math500_split(tasks, seed=0)
    return build if split == "build" else evaluation


def load_gsm8k(split: str, read: ReadRows) -> list[Task]:
    """One GSM8K file (train or test); ids are 1-based line numbers."""
    return gsm8k_tasks(read(split), split)


def load_humaneval(split: str, read: ReadRows) -> list[Task]:
    """The 164 HumanEval problems (one split)."""
    return humaneval_tasks(read("test"))


def mbpp_loader(splits: Mapping[str, range]) -> Loader:
    """The MBPP loader for a split-by-task_id table (one file holds every split)."""

    def load_mbpp(split: str, read: ReadRows) -> list[Task]:
        return [t for t in mbpp_tasks(read("all"), splits) if t.split == split]

    return load_mbpp
