"""Contrast pairs: a success (tau+) and a failure (tau-) of two *different* agents on the same task."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from memcollab.records import ContrastPair, Trajectory


@dataclass
class PairStats:
    """Why tasks did or did not yield a pair, for the run summary."""

    tasks: int = 0
    paired: int = 0
    both_correct: int = 0
    both_wrong: int = 0
    by_positive_agent: dict[str, int] = field(default_factory=dict)


def build_pairs(trajectories: list[Trajectory], max_per_task: int = 1) -> tuple[list[ContrastPair], PairStats]:
    """Pair successes with failures of other agents, per task; deterministic order.

    The default keeps one pair per task (the paper contrasts one tau+ with one tau-); the
    positive is the first success by agent name, the negative the first failure of another agent.
    """
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for trajectory in trajectories:
        by_task[trajectory.task_id].append(trajectory)
    pairs: list[ContrastPair] = []
    stats = PairStats(tasks=len(by_task))
    for task_id in sorted(by_task):
        attempts = sorted(by_task[task_id], key=lambda t: (t.agent, t.attempt))
        wins = [t for t in attempts if t.correct]
        losses = [t for t in attempts if not t.correct]
        task_pairs = [
            ContrastPair(task_id=task_id, positive=win, negative=loss)
            for win in wins
            for loss in losses
            if win.agent != loss.agent
        ][:max_per_task]
        if task_pairs:
            stats.paired += 1
            for pair in task_pairs:
                stats.by_positive_agent[pair.positive.agent] = stats.by_positive_agent.get(pair.positive.agent, 0) + 1
        elif not losses:
            stats.both_correct += 1
        elif not wins:
            stats.both_wrong += 1
        pairs.extend(task_pairs)
    return pairs, stats
