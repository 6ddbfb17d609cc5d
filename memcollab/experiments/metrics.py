"""Metrics of an evaluation: accuracy with a confidence interval, turns, tokens, latency, LM errors.

A task the LM never answered (its endpoint failed after retries: an `lm_error` trajectory) is
not a wrong answer: it is left out of n, accuracy and the means, and counted in `lm_errors`, so a
flaky endpoint shows up as missing data instead of lowering accuracy. A rerun asks for it again.
"""

from __future__ import annotations

from statistics import mean

from pydantic import BaseModel

from memcollab.programs.calls import is_lm_error
from memcollab.records import Trajectory


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's binomtest), (0, 0) for n = 0."""
    if n == 0:
        return 0.0, 0.0
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


class EvalSummary(BaseModel):
    """One (agent, memory condition) cell of a results table."""

    agent: str
    condition: str
    benchmark: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_turns: float
    first_turn_accuracy: float
    mean_tokens: float
    mean_latency_s: float
    format_errors: int
    mean_memories: float
    lm_errors: int = 0  # tasks without an answer (LM endpoint failed after retries): not in n


def summarize(trajectories: list[Trajectory], agent: str, condition: str, benchmark: str) -> EvalSummary:
    """Aggregate per-task trajectories into the figures the paper reports (accuracy, turns); `lm_error` ones apart."""
    lm_errors = sum(is_lm_error(t) for t in trajectories)
    trajectories = [t for t in trajectories if not is_lm_error(t)]
    n = len(trajectories)
    correct = sum(t.correct for t in trajectories)
    low, high = wilson_interval(correct, n)

    def avg(values: list[float]) -> float:
        return float(mean(values)) if values else 0.0

    return EvalSummary(
        agent=agent,
        condition=condition,
        benchmark=benchmark,
        n=n,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        mean_turns=avg([t.n_turns for t in trajectories]),
        first_turn_accuracy=avg([float(bool(t.turns) and t.turns[0].verdict.correct) for t in trajectories]),
        mean_tokens=avg([t.tokens for t in trajectories]),
        mean_latency_s=avg([t.latency_s for t in trajectories]),
        format_errors=sum(bool(t.error) for t in trajectories),
        mean_memories=avg([len(t.memory_ids) for t in trajectories]),
        lm_errors=lm_errors,
    )


def task_rows(trajectories: list[Trajectory], condition: str) -> list[dict]:
    """Flat per-task rows for result files and MLflow tables."""
    return [
        {
            "task_id": t.task_id,
            "agent": t.agent,
            "condition": condition,
            "category": t.category,
            "correct": t.correct,
            "error_type": "lm_error" if is_lm_error(t) else t.verdict.error_type,
            "turns": t.n_turns,
            "tokens": t.tokens,
            "latency_s": round(t.latency_s, 3),
            "memory_ids": ",".join(t.memory_ids),
            "final": t.final[:2000],
            "error": t.error,
        }
        for t in trajectories
    ]
