"""Metrics of an evaluation: accuracy with a confidence interval, turns, tokens, latency."""

from __future__ import annotations

from statistics import mean

from pydantic import BaseModel

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


def summarize(trajectories: list[Trajectory], agent: str, condition: str, benchmark: str) -> EvalSummary:
    """Aggregate per-task trajectories into the figures the paper reports (accuracy, turns)."""
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
            "error_type": t.verdict.error_type,
            "turns": t.n_turns,
            "tokens": t.tokens,
            "latency_s": round(t.latency_s, 3),
            "memory_ids": ",".join(t.memory_ids),
            "final": t.final[:2000],
        }
        for t in trajectories
    ]
