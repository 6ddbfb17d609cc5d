"""How long a grid will take, before it starts: its LM calls times the measured seconds per call.

The figures are `configs/throughput.yaml`'s (`experiments.estimate.Throughput`), nothing measured lives
here. The count is an upper bound: cells that show the solver the same prompt share one result, and
every call a previous invocation made is free (the grid resumes from its result store).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from memcollab.benchmarks import get_benchmark
from memcollab.experiments.estimate import CallKind, Throughput, load_throughput
from memcollab.experiments.grid_plan import GridPlan


def _turns(benchmark: str, max_turns: int) -> int:
    return max_turns if get_benchmark(benchmark).kind == "code" else 1


def grid_calls(plan: GridPlan, pair_rate: float) -> dict[tuple[str, CallKind], float]:
    """Expected LM calls per (agent, kind) for the whole grid (`pair_rate`: share of build tasks with a contrast)."""
    cfg = plan.cfg
    calls: dict[tuple[str, CallKind], float] = defaultdict(float)
    greedy: set[tuple[str, str, int, str]] = set()  # (build slice, taxonomy, seed, agent): solved once
    classified: set[tuple[str, str]] = set()  # (build slice, taxonomy): the same prompts, answered once (cached)
    distilled: set[tuple[str, str, str, str]] = set()  # (build slice, taxonomy, seed, sources) of MemCollab pairs
    for memory in plan.memories.values():
        bench = next(
            b
            for b in plan.benchmarks.values()
            if b.build_source == memory.build_source and b.taxonomy == memory.taxonomy
        )
        n = len(bench.build_tasks)
        turns = _turns(memory.build_source.split("/")[0], cfg.max_turns)
        for agent in memory.source:
            key = (memory.build_source, memory.taxonomy, memory.seed, agent)
            if key not in greedy:
                greedy.add(key)
                calls[(agent, "solve")] += n * turns
        pairs = pair_rate * n
        if len(memory.source) > 1:
            for agent in memory.source:  # extra samples on tasks without a contrast
                calls[(agent, "solve")] += cfg.samples * n * (1 - pair_rate) * turns
        kind, spec = memory.spec.kind, memory.spec
        if kind in ("memcollab", "category", "reflect") and (memory.build_source, memory.taxonomy) not in classified:
            classified.add((memory.build_source, memory.taxonomy))
            calls[(cfg.classifier_name, "classify")] += n
        if kind == "memcollab":
            key = (memory.build_source, memory.taxonomy, str(memory.seed), "+".join(memory.source))
            if key not in distilled:  # variants of one pair (verified, no gate, k, merged) share its distillations
                distilled.add(key)
                calls[(cfg.distiller_name, "distill")] += pairs
            if spec.verify:
                for agent in memory.source:
                    calls[(agent, "solve")] += pairs * (1 + spec.verify_tasks) * turns / len(memory.source)
        elif kind == "category":
            calls[(cfg.distiller_name, "distill")] += pairs / spec.group_size
        elif kind == "reflect":
            reflectors = memory.source if spec.reflector == "source" else (cfg.distiller_name,)
            for agent in reflectors:
                calls[(agent, "distill")] += n * len(memory.source) / len(reflectors)
        elif kind == "cheatsheet":
            calls[(cfg.distiller_name, "distill")] += n
    for bench in plan.benchmarks.values():
        calls[(cfg.classifier_name, "classify")] += len(bench.eval_tasks)
        turns = _turns(bench.name, cfg.max_turns)
        for cell in plan.cells:
            if cell.benchmark == bench.name:
                calls[(cell.target, "solve")] += len(bench.cell_tasks[cell.id]) * turns
    return dict(calls)


def estimate_grid_seconds(
    plan: GridPlan, agents: Mapping[str, Any], throughput: Throughput | None = None
) -> float | None:
    """Upper-bound machine time in seconds; None if the throughput file or an agent's rate is missing.

    `agents`: name -> agent config (a mapping with `model` and `backend`, e.g. `Agent.config`).
    """
    figures = throughput or load_throughput()
    if figures is None:
        return None
    total = 0.0
    for (name, kind), count in grid_calls(plan, figures.contrast_pair_rate).items():
        config = agents.get(name)
        if config is None or not count:
            continue
        seconds = figures.call_seconds(config.get("model", ""), config.get("backend", "local"), kind)
        if seconds is None:
            return None
        total += count * seconds
    return total
