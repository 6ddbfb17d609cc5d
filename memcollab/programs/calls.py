"""One robust LM call: small models often break the output format, and that must not lose the attempt.

A parse failure is not a crash: the raw completion is kept (the graders extract answers and
code from free text) and the failure is recorded, so a weak model's attempt still counts as
an attempt with a verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError


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
