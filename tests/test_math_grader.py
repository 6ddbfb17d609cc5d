"""Math grading: equivalences, extraction, robustness (garbage, hangs, threads) and all reference answers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from memcollab.benchmarks import load_tasks
from memcollab.grading.grade import grade, grade_many
from memcollab.grading.math import extract_answer, grade_math
from memcollab.paths import default_data_dir
from memcollab.records import Task


def _task(answer: str, benchmark: str = "math500") -> Task:
    return Task(id=f"{benchmark}/t/0", benchmark=benchmark, split="test", kind="math", prompt="?", answer=answer)


EQUIVALENT = [
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac{3}{4}", "3/4"),
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"10\%", "10"),
    ("10", r"10\%"),
    ("5", "x=5"),
    ("1,000", "1000"),
    ("1000", "1,000"),
]
DIFFERENT = [("2", "3"), (r"\frac{1}{3}", "0.33"), ("0.33", r"\frac{1}{3}")]


@pytest.mark.parametrize(("gold", "pred"), EQUIVALENT)
def test_equivalent_answers_are_correct(gold: str, pred: str) -> None:
    verdict = grade_math(_task(gold), f"Some work.\nSo the result is $\\boxed{{{pred}}}$.")
    assert verdict.correct, verdict
    assert verdict.extracted == pred


@pytest.mark.parametrize(("gold", "pred"), DIFFERENT)
def test_different_answers_are_wrong(gold: str, pred: str) -> None:
    verdict = grade_math(_task(gold), f"\\boxed{{{pred}}}")
    assert not verdict.correct
    assert verdict.error_type == "wrong_answer" and pred in verdict.feedback
    assert gold not in verdict.feedback or gold in pred  # the reference is not leaked to the model


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"first \boxed{1}, then \boxed{\frac{a}{\sqrt{b^{2}}}} done", r"\frac{a}{\sqrt{b^{2}}}"),
        (r"unbalanced \boxed{2} and \boxed{3", "2"),
        (r"\boxed 7", "7"),
        ("Natalia sold 48/2 = 24 clips.\n#### 1,234", "1,234"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("So the final answer is: **\\(3/4\\)**. Done", "3/4"),
        ("Answer: 42", "42"),
        ("The answer is 24 liters of pineapple drink, and the orange drink is 15 liters", "24"),
        ("The answer is \\text{(C)} since x = 2", "\\text{(C)} since x = 2"),
        ("The answer is x = 5", "x = 5"),
        ("x is 3 and then it becomes 7 apples", "7"),
        ("total 1,500 dollars", "1500"),
        ("no digits here", ""),
        ("", ""),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "\x00\xff" * 50, "\\boxed{" * 500, "}" * 1000, "x" * 200_000, 42])
def test_garbage_never_raises(text) -> None:
    verdict = grade_math(_task("5"), text)  # type: ignore[arg-type]
    assert not verdict.correct
    assert verdict.error_type in {"no_answer", "wrong_answer", "grader_error"}


def test_no_answer_error_type() -> None:
    verdict = grade_math(_task("5"), "I could not solve it.")
    assert (verdict.correct, verdict.error_type) == (False, "no_answer")


def test_gsm8k_reference_is_number_after_hashes() -> None:
    task = _task("2125", "gsm8k")
    assert grade(task, "She pays 2,125 dollars.\n#### 2,125").correct
    assert grade(task, "#### 2126").error_type == "wrong_answer"


def test_a_hanging_comparison_is_cut_off_and_the_grader_recovers() -> None:
    start = time.monotonic()
    verdict = grade_math(_task("2^{10^{10}}"), r"\boxed{1}", timeout_s=1)
    assert time.monotonic() - start < 5
    assert (verdict.correct, verdict.error_type) == (False, "grader_error")
    assert "timed out" in verdict.feedback
    assert grade_math(_task(r"\frac{1}{2}"), r"\boxed{0.5}").correct  # a fresh worker took over


def test_symbolic_grading_works_from_threads() -> None:
    """math-verify's signal timeouts fail outside the main thread; the worker processes make threads fine."""
    pairs = [(_task(g), f"\\boxed{{{p}}}") for g, p in EQUIVALENT + DIFFERENT]
    results: list = []

    def run() -> None:
        results.extend(grade_many(pairs, workers=2))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert [v.correct for v in results] == [True] * len(EQUIVALENT) + [False] * len(DIFFERENT)
    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(lambda p: grade_math(*p).correct, pairs[: len(EQUIVALENT)]))


REAL = default_data_dir()


@pytest.mark.skipif(REAL is None or not (REAL / "math500").is_dir(), reason="benchmark data not found")
@pytest.mark.parametrize(
    ("bench", "split", "count"), [("math500", "test", 500), ("gsm8k", "test", 1319), ("gsm8k", "train", 7473)]
)
def test_every_reference_solution_grades_correct(bench: str, split: str, count: int) -> None:
    tasks = load_tasks(bench, split)
    failed = [t.id for t in tasks if not grade_math(t, t.solution).correct]
    assert (len(tasks), failed) == (count, [])
