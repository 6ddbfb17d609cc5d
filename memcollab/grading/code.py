"""Grade code answers: extract the program, run it with the task's tests in the sandbox, classify the outcome.

A run passes only when the process exits 0 AND prints a random sentinel that
the harness appends after the tests, so `os._exit(0)` or `sys.exit(0)` before
the tests finish is a failure, not a pass.
"""

from __future__ import annotations

import re
import secrets
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

from memcollab.grading.code_extract import candidate_program
from memcollab.grading.sandbox import ExecResult, SandboxLimits, SandboxPool, run_program
from memcollab.records import Task, Verdict

FEEDBACK_CHARS = 600
# Terminal escape sequences and control characters: feedback goes to a model's prompt, a terminal and the stores.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NAME = re.compile(r"^[A-Za-z_]\w{0,79}$")
_SIMPLE_TYPES = {
    "SyntaxError": "syntax_error",
    "IndentationError": "syntax_error",
    "TabError": "syntax_error",
    "NameError": "name_error",
    "UnboundLocalError": "name_error",
    "TypeError": "type_error",
    "AssertionError": "assertion_failure",
}


def sanitize(text: str) -> str:
    """Text fit for a prompt or a terminal: no escape sequences, no control characters but newline and tab."""
    return _CONTROL.sub("", _ESCAPES.sub("", text))


def _clip(text: str, limit: int = FEEDBACK_CHARS) -> str:
    """Sanitised and at most `limit` characters, keeping the end (where a traceback names the error)."""
    text = sanitize(text).strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _syntax_verdict(program: str) -> Verdict | None:
    """Catch syntax errors here, without a subprocess."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(program, "program.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        line = f"\n    {exc.text.strip()}" if exc.text else ""
        return Verdict(correct=False, error_type="syntax_error", feedback=_clip(f"SyntaxError: {where}{exc.msg}{line}"))
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return Verdict(
            correct=False, error_type="syntax_error", feedback=f"the code cannot be parsed: {type(exc).__name__}"
        )
    return None


def build_program(task: Task, candidate: str, sentinel: str) -> str:
    """Candidate, then the task's setup, then its tests, then the sentinel print."""
    parts = [candidate.rstrip(), task.setup.strip(), task.tests.rstrip(), f"print({sentinel!r}, flush=True)"]
    return "\n\n".join(p for p in parts if p) + "\n"


_CARETS = re.compile(r"^\s*[\^~]+\s*$")


def _traceback_feedback(stderr: str) -> str:
    """The last traceback lines (failing test line, failing code line, error), whole lines, within the budget."""
    lines = [
        ln.rstrip()
        for ln in sanitize(stderr).strip().splitlines()
        if ln.strip() and not ln.startswith("Traceback (most recent call last)") and not _CARETS.match(ln)
    ]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if kept and size + len(line) + 1 > FEEDBACK_CHARS:
            break
        kept.append(line)
        size += len(line) + 1
    return _clip("\n".join(reversed(kept)))


def _ended_early(result: ExecResult, limits: SandboxLimits) -> tuple[str, str] | None:
    """(error type, feedback) for a program stopped by a limit or ended before its tests; None for an exception."""
    feedback = {
        "ok": "the program exited (status 0) before the tests finished; do not call exit()/os._exit()",
        "timeout": f"time limit exceeded ({limits.wall_s:g} s wall / {limits.cpu_s:g} s CPU): infinite loop or too slow",
        "memory_limit": f"memory limit exceeded ({limits.memory_mb} MB)",
        "output_limit": f"too much output (over {limits.output_bytes} bytes); remove debug prints",
        "killed": f"the program was killed (exit status {result.returncode})",
    }.get(result.status)
    if feedback is None:
        return None
    return ("runtime_error:EarlyExit" if result.status == "ok" else result.status), feedback


def verdict_from_result(result: ExecResult, sentinel: str, limits: SandboxLimits) -> Verdict:
    """Classify a sandbox run of candidate + tests into a verdict with model-readable feedback."""
    if result.status == "ok" and sentinel in result.stdout:
        return Verdict(correct=True)
    ended = _ended_early(result, limits)
    if ended is not None:
        error_type, feedback = ended
        return Verdict(correct=False, error_type=error_type, feedback=feedback)
    # The type comes from the exception's class as the child reported it, never from stderr's text, which the
    # program writes: `raise ValueError("x\nKeyError: 3")` is a ValueError.
    name = result.exception if _NAME.match(result.exception) else ""
    status = f"exit status {result.returncode}"
    if not name or name == "Unknown":
        return Verdict(correct=False, error_type="runtime_error:Unknown", feedback=_clip(result.stderr) or status)
    error_type = _SIMPLE_TYPES.get(name, f"runtime_error:{name}")
    detail = f"{name}: {result.exception_message}" if result.exception_message else name
    return Verdict(correct=False, error_type=error_type, feedback=_traceback_feedback(result.stderr) or _clip(detail))


class Prepared(NamedTuple):
    """A candidate ready to run, or the verdict when there is nothing to run."""

    candidate: str
    program: str
    sentinel: str
    early: Verdict | None


def prepare(task: Task, text: str) -> Prepared:
    """Extract the candidate and build the test program; `early` is set for no code / syntax errors."""
    candidate = candidate_program(task, text)
    if not candidate.strip():
        return Prepared(
            "", "", "", Verdict(correct=False, error_type="no_code", feedback="no Python code found in the answer")
        )
    early = _syntax_verdict(candidate)
    if early is not None:
        return Prepared(candidate, "", "", early.model_copy(update={"extracted": candidate}))
    sentinel = "__memcollab_tests_passed_" + secrets.token_hex(8)
    return Prepared(candidate, build_program(task, candidate, sentinel), sentinel, None)


def grade_code(task: Task, text: str, limits: SandboxLimits | None = None) -> Verdict:
    """Grade one code answer; never raises for anything in `text`."""
    limits = limits or SandboxLimits()
    prep = prepare(task, text)
    if prep.early is not None:
        return prep.early
    verdict = verdict_from_result(run_program(prep.program, limits), prep.sentinel, limits)
    return verdict.model_copy(update={"extracted": prep.candidate})


def grade_code_many(
    pairs: Sequence[tuple[Task, str]],
    workers: int | None = None,
    limits: SandboxLimits | None = None,
    on_result: Callable[[int, Verdict], None] | None = None,
) -> list[Verdict]:
    """Grade (task, text) pairs concurrently through a :class:`SandboxPool`; verdicts in input order."""
    limits = limits or SandboxLimits()
    verdicts: list[Verdict | None] = [None] * len(pairs)
    runnable: list[tuple[int, Prepared]] = []
    for i, (task, text) in enumerate(pairs):
        prep = prepare(task, text)
        if prep.early is not None:
            verdicts[i] = prep.early
            if on_result is not None:
                on_result(i, prep.early)
        else:
            runnable.append((i, prep))

    def finished(j: int, result: ExecResult) -> None:
        index, prep = runnable[j]
        verdict = verdict_from_result(result, prep.sentinel, limits).model_copy(update={"extracted": prep.candidate})
        verdicts[index] = verdict
        if on_result is not None:
            on_result(index, verdict)

    SandboxPool(workers=workers, limits=limits).run_many([prep.program for _, prep in runnable], on_result=finished)
    return verdicts  # type: ignore[return-value]
