"""One robust LM call: small models often break the output format, and that must not lose the attempt.

A parse failure is not a crash: the raw completion is kept (the graders extract answers and
code from free text) and the failure is recorded, so a weak model's attempt still counts as
an attempt with a verdict.

An endpoint failure is different: the model never answered, so there is no attempt to grade.
`call` lets it propagate (after the LM's own retries); the pipeline records the task as an
`lm_error` (:func:`lm_error_trajectory`), never stores it, and a rerun asks again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from memcollab.errors import lm_endpoint_error
from memcollab.records import Task, Trajectory

#: `Trajectory.error` of a task the LM never answered starts with this (then the exception type and why).
LM_ERROR = "lm_error"


def is_lm_failure(exc: BaseException) -> bool:
    """An LM endpoint failure (refused, timed out, rate-limited, 5xx, cut-off body), not a bug of ours."""
    return lm_endpoint_error(exc) is not None


def lm_error_text(exc: BaseException, limit: int = 300) -> str:
    """`lm_error: <ExcType>: <why>`, one line, for a trajectory's `error`."""
    known = lm_endpoint_error(exc)
    why = " ".join(str(known if known is not None else exc).split())
    text = f"{LM_ERROR}: {type(exc).__name__}: {why}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lm_error_trajectory(task: Task, agent: str, exc: BaseException, attempt: int = 0, category: str = "") -> Trajectory:
    """The marker of a task whose LM call failed after retries: no turns, `error` says why."""
    return Trajectory(
        task_id=task.id,
        benchmark=task.benchmark,
        agent=agent,
        attempt=attempt,
        category=category or task.category,
        error=lm_error_text(exc),
    )


def is_lm_error(trajectory: Trajectory) -> bool:
    """Was this trajectory never answered by the LM (see :func:`lm_error_trajectory`)?"""
    return trajectory.error.startswith(f"{LM_ERROR}:")


@dataclass
class CallResult:
    """Outputs of one predictor call, or the raw text when they could not be parsed."""

    outputs: dict[str, Any] = field(default_factory=dict)
    reasoning: str = ""
    raw: str = ""
    parse_error: str = ""
    tokens: int = 0
    latency_s: float = 0.0


def _usage_tokens(prediction: dspy.Prediction) -> int:
    usage = prediction.get_lm_usage() or {}
    total = 0
    for per_model in usage.values():
        total += int(per_model.get("total_tokens") or 0) or int(per_model.get("prompt_tokens") or 0) + int(
            per_model.get("completion_tokens") or 0
        )
    return total


def call(predictor: dspy.Module, **inputs: Any) -> CallResult:
    """Call a predictor; on a format error keep the raw completion instead of raising."""
    start = time.perf_counter()
    try:
        with dspy.context(track_usage=True):
            prediction = predictor(**inputs)
    except AdapterParseError as exc:
        return CallResult(
            raw=str(exc.lm_response or ""),
            parse_error=f"{exc.adapter_name}: output fields not found",
            latency_s=time.perf_counter() - start,
        )
    outputs = dict(prediction.items())
    reasoning = str(outputs.pop("reasoning", "") or "")
    return CallResult(
        outputs=outputs,
        reasoning=reasoning,
        raw=reasoning,
        tokens=_usage_tokens(prediction),
        latency_s=time.perf_counter() - start,
    )
