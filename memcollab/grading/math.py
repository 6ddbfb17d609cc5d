"""Math answer extraction and grading (math-verify), safe against hangs and garbage.

math-verify times out with ``signal.alarm``, which only works in the main
thread and cannot interrupt a long C call (``2^{10^{10}}`` as a big integer).
So the symbolic comparison runs in small persistent worker processes (each
uses math-verify's own timeouts in its main thread) and the caller waits with
a hard deadline, killing and replacing a worker that does not answer. Plain
string or plain-number equality is decided in-process, without a worker.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
from decimal import Decimal, InvalidOperation

from memcollab.paths import SOURCE_ROOT
from memcollab.records import Task, Verdict

DEFAULT_TIMEOUT_S = 15.0
_MV_TIMEOUT_S = 3  # math-verify's own per-parse / per-comparison limit inside a worker (int seconds)
_WORKER_MEMORY_BYTES = 4 * 1024**3
_MAX_ANSWER_CHARS = 2000

# --------------------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"(?i)answer\s*(?:is\s*:?|:|=)\s*([^\n]+)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}\b")  # an English word, not a LaTeX command


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (nested braces) or `\\boxed x`."""
    for match in reversed(list(_BOXED.finditer(text))):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth = 0
            for j in range(start, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[start + 1 : j]
            continue  # unbalanced: try an earlier box
        token = re.match(r"[^\s$]+", text[start:])
        if token and match.group(0).endswith((" ", "\t")):
            return token.group(0)
    return None


def _clean(answer: str) -> str:
    """Strip markdown/LaTeX delimiters and trailing punctuation around an answer snippet."""
    s = answer.strip().replace("**", "")
    s = re.sub(r"\.\s.*$", "", s).strip().rstrip(".").strip()  # keep the first sentence
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s.strip().strip("$").strip().rstrip(".").strip()


def extract_answer(text: str) -> str:
    """The final answer in free text: last `\\boxed{}`, else `#### N`, else "answer is/Answer:", else the last number."""
    if not isinstance(text, str) or not text.strip():
        return ""
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()[:_MAX_ANSWER_CHARS]
    hashes = _HASHES.findall(text)
    if hashes and _clean(hashes[-1]):
        return _clean(hashes[-1])[:_MAX_ANSWER_CHARS]
    for snippet in reversed(_ANSWER_IS.findall(text)):
        cleaned = _leading_answer(_clean(snippet))
        if cleaned:
            return cleaned[:_MAX_ANSWER_CHARS]
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def _leading_answer(snippet: str) -> str:
    """'answer is 24 liters, and 15 liters of ...' -> '24': in a snippet that reads as prose, the first number
    is the answer (math-verify would otherwise pick any number of the sentence); a formula is kept whole."""
    if len(_PROSE_WORD.findall(snippet)) < 3:
        return snippet
    number = _NUMBER.search(snippet)
    return number.group(0).replace(",", "") if number else snippet


def _normalize(answer: str) -> str:
    s = answer.strip().strip("$").strip().rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return re.sub(r"\s+", "", s)


def _quick_match(gold: str, pred: str) -> bool | None:
    """Decide without sympy when both are the same string or both are plain decimals; else None."""
    g, p = _normalize(gold), _normalize(pred)
    if g == p:
        return True
    if _PLAIN_NUMBER.fullmatch(g) and _PLAIN_NUMBER.fullmatch(p):
        try:
            return Decimal(g) == Decimal(p)
        except InvalidOperation:
            return None
    return None


# --------------------------------------------------------------------------- symbolic comparison (worker side)


def _mv_parse(answer: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    parsed = parse("\\boxed{" + answer + "}", extraction_config=configs, parsing_timeout=_MV_TIMEOUT_S)
    if not parsed:
        parsed = parse(answer, parsing_timeout=_MV_TIMEOUT_S)
    return parsed


def compare_symbolic(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answer strings; main thread only (signal timeouts)."""
    from math_verify import verify

    g, p = _mv_parse(_normalize_for_parse(gold)), _mv_parse(_normalize_for_parse(pred))
    if not g or not p:
        return _normalize(gold) == _normalize(pred)
    return bool(verify(g, p, timeout_seconds=_MV_TIMEOUT_S))


def _normalize_for_parse(answer: str) -> str:
    s = answer.strip().strip("$").strip().rstrip(".")
    return s.replace(",", "") if _THOUSANDS.fullmatch(s) else s


def _worker_main() -> None:
    """Serve comparisons as JSON lines on stdin/stdout until EOF."""
    import logging
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    logging.disable(logging.CRITICAL)
    import math_verify  # noqa: F401  (import before signalling ready)

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            reply: dict[str, bool | str] = {"equal": compare_symbolic(req["gold"], req["pred"])}
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                return
            reply = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --------------------------------------------------------------------------- worker pool (caller side)


class GraderTimeout(Exception):
    """The worker did not answer within the deadline (it was killed)."""


class _Worker:
    """One persistent comparison process, talked to with JSON lines and a hard deadline."""

    def __init__(self, startup_timeout_s: float = 120.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memcollab.grading.math", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self._buf = b""
        if self._readline(startup_timeout_s) != "ready":
            self.kill()
            raise RuntimeError("math grading worker failed to start")

    def _readline(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise GraderTimeout
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("math grading worker exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def compare(self, gold: str, pred: str, timeout_s: float) -> dict:
        self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred}) + "\n").encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self._readline(timeout_s))

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


class _WorkerPool:
    """Idle workers in a queue, created on demand; a broken worker is dropped, not reused."""

    def __init__(self) -> None:
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def _get(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            worker = _Worker()
            with self._lock:
                self._all.append(worker)
            return worker

    def _drop(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def compare(self, gold: str, pred: str, timeout_s: float) -> bool:
        worker = self._get()
        try:
            reply = worker.compare(gold, pred, timeout_s)
        except BaseException:
            self._drop(worker)
            raise
        self._idle.put(worker)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return bool(reply["equal"])

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.kill()
        self._idle = queue.SimpleQueue()


_POOL = _WorkerPool()
atexit.register(_POOL.close)


def answers_match(gold: str, pred: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when `pred` is mathematically equivalent to `gold`. Raises GraderTimeout/RuntimeError on failure."""
    quick = _quick_match(gold, pred)
    if quick is not None:
        return quick
    return _POOL.compare(gold, pred, timeout_s)


def shutdown_workers() -> None:
    """Stop the comparison workers (they also stop at interpreter exit)."""
    _POOL.close()


# --------------------------------------------------------------------------- grading


def reference_answer(task: Task) -> str:
    """The gold final answer of a math task (GSM8K: the number after `####`)."""
    if task.answer:
        return task.answer
    return extract_answer(task.solution)


def grade_math(task: Task, text: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Grade free text against a math task; never raises, never blocks longer than about `timeout_s`."""
    try:
        pred = extract_answer(text)
    except Exception as exc:
        return Verdict(
            correct=False, error_type="grader_error", feedback=f"answer extraction failed: {type(exc).__name__}"
        )
    if not pred:
        return Verdict(
            correct=False, error_type="no_answer", feedback="no final answer found; end with \\boxed{answer}"
        )
    gold = reference_answer(task)
    try:
        equal = answers_match(gold, pred, timeout_s)
    except GraderTimeout:
        return Verdict(
            correct=False,
            error_type="grader_error",
            feedback=f"grading timed out after {timeout_s:g} s",
            extracted=pred,
        )
    except Exception as exc:
        return Verdict(
            correct=False, error_type="grader_error", feedback=f"grading failed: {str(exc)[:200]}", extracted=pred
        )
    if equal:
        return Verdict(correct=True, extracted=pred)
    shown = pred if len(pred) <= 200 else pred[:200] + "..."
    return Verdict(
        correct=False, error_type="wrong_answer", feedback=f"final answer {shown} is not correct", extracted=pred
    )


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
