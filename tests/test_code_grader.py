"""Code grading: verdicts and error types for real runs in the sandbox, plus the real reference solutions."""

from __future__ import annotations

import pytest

from memcollab.benchmarks import load_tasks
from memcollab.grading.code import FEEDBACK_CHARS, grade_code, grade_code_many, verdict_from_result
from memcollab.grading.grade import grade
from memcollab.grading.sandbox import ExecResult, SandboxLimits
from memcollab.paths import default_data_dir
from memcollab.records import Task

FAST = SandboxLimits(wall_s=3.0, cpu_s=2.0, memory_mb=512, output_bytes=4096)
PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
HE = Task(
    id="humaneval/T/0",
    benchmark="humaneval",
    split="test",
    kind="code",
    prompt=PROMPT,
    entry_point="add",
    tests="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n\n\ncheck(add)\n",
)
MB = Task(
    id="mbpp/9",
    benchmark="mbpp",
    split="test",
    kind="code",
    prompt="Write a function to scale.\nYour code should pass this test:\nassert scale(2) == 2 * FACTOR",
    entry_point="scale",
    setup="FACTOR = 10",
    tests="assert scale(2) == 2 * FACTOR\nassert scale(0) == 0\n",
)


def _fn(body: str) -> str:
    return f"```python\ndef add(a, b):\n{body}\n```"


def test_correct_answer_passes() -> None:
    assert grade_code(HE, _fn("    return a + b"), FAST).correct
    assert grade_code(HE, "    return a + b\n", FAST).correct  # HumanEval body only
    assert grade_code(MB, "def scale(x):\n    return x * FACTOR", FAST).correct  # setup ran before the tests


@pytest.mark.parametrize(
    ("text", "error_type", "needle"),
    [
        (_fn("    return a - b"), "assertion_failure", "assert candidate(1, 2) == 3"),
        (_fn("    return a +"), "syntax_error", "SyntaxError"),
        (_fn("    return c"), "name_error", "NameError: name 'c' is not defined"),
        (_fn("    return a + 'b'"), "type_error", "TypeError"),
        (_fn("    return 1 / 0"), "runtime_error:ZeroDivisionError", "ZeroDivisionError"),
        (_fn("    return [][a]"), "runtime_error:IndexError", "IndexError"),
        (_fn("    while True:\n        pass"), "timeout", "time limit"),
        (_fn("    return bytearray(20 * 1024 ** 3)"), "memory_limit", "memory limit"),
        (_fn("    while True:\n        print('spam' * 100)"), "output_limit", "too much output"),
        (_fn("    import faulthandler\n    faulthandler._sigsegv()"), "killed", "killed"),
        ("I am not sure how to do this.", "no_code", "no Python code"),
        ("", "no_code", "no Python code"),
    ],
)
def test_error_types(text: str, error_type: str, needle: str) -> None:
    verdict = grade_code(HE, text, FAST)
    assert not verdict.correct
    assert verdict.error_type == error_type, verdict
    assert needle in verdict.feedback, verdict.feedback
    assert len(verdict.feedback) <= FEEDBACK_CHARS


def test_assertion_feedback_shows_the_failing_line_and_values() -> None:
    verdict = grade_code(HE, _fn("    return a * b"), FAST)
    assert verdict.error_type == "assertion_failure"
    assert "assert candidate(1, 2) == 3" in verdict.feedback and "AssertionError: 2 != 3" in verdict.feedback


@pytest.mark.parametrize(
    "body",
    [
        "    return a + b\nimport os\nos._exit(0)",
        "    return a + b\nimport sys\nsys.exit(0)",
        "    return a + b\nprint('__memcollab_tests_passed_0123456789abcdef')\nimport os\nos._exit(0)",
    ],
)
def test_exit_before_the_tests_finish_is_not_a_pass(body: str) -> None:
    verdict = grade_code(HE, _fn(body), FAST)
    assert not verdict.correct
    assert verdict.error_type == "runtime_error:EarlyExit"


def test_long_tracebacks_are_clipped() -> None:
    text = _fn("    return add(a, b)")  # RecursionError: a ~1000-frame traceback
    verdict = grade_code(HE, text, FAST)
    assert verdict.error_type == "runtime_error:RecursionError"
    assert len(verdict.feedback) <= FEEDBACK_CHARS and verdict.feedback.endswith("maximum recursion depth exceeded")


def test_many_keeps_order_and_matches_single_grading() -> None:
    texts = [_fn("    return a + b"), "no code", _fn("    return a - b"), _fn("    return a +"), "    return b + a"]
    verdicts = grade_code_many([(HE, t) for t in texts], workers=2, limits=FAST)
    assert [v.error_type for v in verdicts] == ["", "no_code", "assertion_failure", "syntax_error", ""]
    assert [v.correct for v in verdicts] == [grade(HE, t, FAST).correct for t in texts]


REAL = default_data_dir()
needs_real = pytest.mark.skipif(REAL is None or not (REAL / "humaneval").is_dir(), reason="benchmark data not found")


@needs_real
def test_all_humaneval_canonical_solutions_pass_and_swapped_ones_fail() -> None:
    tasks = load_tasks("humaneval")
    verdicts = grade_code_many([(t, t.solution) for t in tasks], workers=2, limits=SandboxLimits(wall_s=30, cpu_s=20))
    assert [t.id for t, v in zip(tasks, verdicts) if not v.correct] == []
    swapped = grade_code_many([(tasks[i], tasks[i + 1].solution) for i in range(0, 20, 2)], workers=2)
    assert not any(v.correct for v in swapped)


@needs_real
def test_mbpp_reference_solutions_pass_sample() -> None:
    tasks = load_tasks("mbpp", "prompt") + load_tasks("mbpp", "validation")
    verdicts = grade_code_many([(t, t.solution) for t in tasks], workers=2, limits=SandboxLimits(wall_s=30, cpu_s=20))
    assert [t.id for t, v in zip(tasks, verdicts) if not v.correct] == []


# ------------------------------------------------------------------ error types come from the exception's class


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ('    raise ValueError("bad input\\nKeyError: 3")', "runtime_error:ValueError"),
        ('    raise RuntimeError("oops\\nboom")', "runtime_error:RuntimeError"),  # 'boom' is not a type
        ('    raise ZeroDivisionError("x\\n  indented\\nNameError: fake")', "runtime_error:ZeroDivisionError"),
        ('    raise AssertionError("looks fine\\nTypeError: no")', "assertion_failure"),
        # a program that prints a fake traceback and exits 1 did not raise ZeroDivisionError
        (
            "    import sys\n    sys.stderr.write('Traceback:\\nZeroDivisionError: fake\\n')\n    sys.exit(1)",
            "runtime_error:SystemExit",
        ),
        ("    import os\n    os.write(2, b'TypeError: fake\\n')\n    os._exit(1)", "runtime_error:Unknown"),
        # a class name that is not an identifier cannot become an error type
        ('    raise type("Bad Name\\nX", (Exception,), {})("m")', "runtime_error:Unknown"),
        ('    raise type("E" * 200, (Exception,), {})("m")', "runtime_error:Unknown"),
    ],
)
def test_error_type_is_the_exception_class_not_stderr_text(body: str, error_type: str) -> None:
    verdict = grade_code(HE, _fn(body), FAST)
    assert (verdict.correct, verdict.error_type) == (False, error_type), verdict
    assert len(verdict.feedback) <= FEEDBACK_CHARS


def test_feedback_has_no_terminal_escapes_or_control_characters() -> None:
    body = '    raise ValueError("\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07 bell\\x07 nul\\x00 del\\x7f")'
    verdict = grade_code(HE, _fn(body), FAST)
    assert verdict.error_type == "runtime_error:ValueError"
    assert "red" in verdict.feedback and "bell" in verdict.feedback
    assert not any(ch in verdict.feedback for ch in "\x1b\x07\x00\x7f"), repr(verdict.feedback)


@pytest.mark.parametrize(
    "body",
    [
        "    import os, sys\n    sys.stderr.write('E' * 50000)\n    sys.stderr.flush()\n    os._exit(3)",  # unknown error
        "    raise ValueError('v' * 50000)",
        "    raise ValueError('\\n'.join(['line'] * 5000))",
        "    import sys\n    sys.exit('m' * 50000)",
    ],
)
def test_feedback_is_capped_on_every_path(body: str) -> None:
    verdict = grade_code(HE, _fn(body), FAST)
    assert not verdict.correct and 0 < len(verdict.feedback) <= FEEDBACK_CHARS, verdict


def test_verdict_uses_the_reported_class_even_when_stderr_says_otherwise() -> None:
    """The pure classifier: stderr's last line names KeyError, the side channel names ValueError."""
    result = ExecResult(
        status="error",
        returncode=1,
        stderr="Traceback ...\nValueError: bad input\nKeyError: 3\n",
        exception="ValueError",
        exception_message="bad input\nKeyError: 3",
    )
    verdict = verdict_from_result(result, "sentinel", FAST)
    assert verdict.error_type == "runtime_error:ValueError" and "KeyError: 3" in verdict.feedback
    unreported = result.model_copy(update={"exception": "", "exception_message": ""})
    assert verdict_from_result(unreported, "sentinel", FAST).error_type == "runtime_error:Unknown"
    odd = result.model_copy(update={"exception": "Key Error\nX"})
    assert verdict_from_result(odd, "sentinel", FAST).error_type == "runtime_error:Unknown"
