"""How long a grid will take, before it starts: its LM calls times the measured seconds per call.

The figures are `configs/throughput.yaml`'s (`experiments.estimate.Throughput`), nothing measured lives
here. The count is an upper bound: cells that show the solver the same prompt share one result. A grid
that spans sessions also wants the time *left*: the run directory says which cells finished
(`progress.json`) and which memories were built (`memories/<id>/build.json`), and their calls are free
(the grid resumes from its result store). A code task takes up to `max_turns` calls; once cells of its
benchmark have finished, it counts the turns they took per task (`table.csv`) instead.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from memcollab.benchmarks import get_benchmark
from memcollab.experiments.estimate import CallKind, GuidanceItem, Throughput
from memcollab.experiments.grid_plan import GridPlan
from memcollab.programs.methods.base import MethodSpec


def _turns(benchmark: str, max_turns: int, measured: Mapping[str, float]) -> float:
    """Calls per task: 1 for math; for code what the grid's finished cells took (`measured_turns`), else the
    `max_turns` upper bound."""
    return measured.get(benchmark, max_turns) if get_benchmark(benchmark).kind == "code" else 1


def measured_turns(run_dir: Path) -> dict[str, float]:
    """Mean turns per task of each benchmark's finished cells in `run_dir` (table.csv, weighted by tasks): a code
    task stops at its first passing turn, so most take fewer than `max_turns`."""
    try:
        table = pd.read_csv(run_dir / "table.csv", usecols=["benchmark", "n", "turns"])
    except (OSError, ValueError):
        return {}  # no finished cell yet, or a table from before it had turns
    table = table[table["n"] > 0]
    return {
        str(benchmark): float((group["turns"] * group["n"]).sum() / group["n"].sum())
        for benchmark, group in table.groupby("benchmark")
    }


@dataclass(frozen=True)
class Finished:
    """What earlier invocations of a grid finished: cell ids and memory ids whose LM calls are in the store, and
    for a cell that finished on fewer tasks than the config now gives it (its `eval_ids` widened since), the
    tasks it answered then."""

    cells: frozenset[str] = frozenset()
    memories: frozenset[str] = frozenset()
    answered: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def tasks_left(self, cell_id: str, tasks: list[str]) -> int:
        """How many of a cell's `tasks` still need solving (none if the cell is finished)."""
        if cell_id in self.cells:
            return 0
        return len(set(tasks) - self.answered.get(cell_id, frozenset()))


def _answered(cell_file: Path) -> frozenset[str]:
    """The task ids of a finished cell's rows (`cells/<id>.jsonl`); empty when the file is missing or unreadable."""
    try:
        with cell_file.open() as lines:
            return frozenset(str(json.loads(line)["task_id"]) for line in lines if line.strip())
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset()


def finished_work(plan: GridPlan, run_dir: Path) -> Finished:
    """The finished cells (`progress.json`) and built memories (`build.json`) of `run_dir`, for `plan`'s ids.

    A cell counts as finished only if its rows (`cells/<id>.jsonl`) cover every task the plan gives it now: a cell
    whose `eval_ids` grew since it ran is pending, with the tasks it answered then (`Finished.answered`). A
    progress file from before it named its finished cells counts as such only if it describes this many cells.
    """
    try:
        progress = json.loads((run_dir / "progress.json").read_text())
    except (OSError, ValueError):
        progress = {}
    ids = {c.id for c in plan.cells}
    if isinstance(progress.get("done"), list):
        cells = ids & set(progress["done"])
    elif progress.get("cells") == len(ids) and isinstance(progress.get("pending"), list):
        cells = ids - set(progress["pending"])
    else:
        cells = set()
    complete, answered = set(), {}
    for cell in plan.cells:
        if cell.id in cells:
            have = _answered(run_dir / "cells" / f"{cell.id}.jsonl")
            if set(plan.benchmarks[cell.benchmark].cell_tasks[cell.id]) <= have:
                complete.add(cell.id)
            else:
                answered[cell.id] = have
    memories = {m for m in plan.memories if (run_dir / "memories" / m / "build.json").is_file()}
    return Finished(frozenset(complete), frozenset(memories), answered)


def grid_calls(
    plan: GridPlan,
    pair_rate: float,
    finished: Finished | None = None,
    turns: Mapping[str, float] | None = None,
) -> dict[tuple[str, CallKind], float]:
    """Expected LM calls per (agent, kind) for the grid (`pair_rate`: share of build tasks with a contrast),
    leaving out what `finished` names: those cells, and the build of those memories (and what others share
    with them, such as an agent's solves of the build tasks). A memory no pending cell reads is not built.
    `turns`: measured turns per code task by benchmark (`measured_turns`; else `max_turns` each)."""
    cfg = plan.cfg
    measured = turns or {}
    done = finished or Finished()
    pending = [c for c in plan.cells if c.id not in done.cells]
    needed = {plan.cell_memory[c.id] for c in pending} | done.memories
    calls: dict[tuple[str, CallKind], float] = defaultdict(float)
    greedy: set[tuple[str, str, int, str]] = set()  # (build slice, taxonomy, seed, agent): solved once
    classified: set[tuple[str, str]] = set()  # (build slice, taxonomy): the same prompts, answered once (cached)
    distilled: set[tuple[str, str, str, str]] = set()  # (build slice, taxonomy, seed, sources) of MemCollab pairs
    # Built memories first: what they made (solves, categories, distillations) is free for the rest.
    for memory in sorted(
        (m for m in plan.memories.values() if m.id in needed), key=lambda m: m.id not in done.memories
    ):
        scale = 0.0 if memory.id in done.memories else 1.0
        bench = next(
            b
            for b in plan.benchmarks.values()
            if b.build_source == memory.build_source and b.taxonomy == memory.taxonomy
        )
        n = len(bench.build_tasks)
        turns = _turns(memory.build_source.split("/")[0], cfg.max_turns, measured)
        for agent in memory.source:
            key = (memory.build_source, memory.taxonomy, memory.seed, agent)
            if key not in greedy:
                greedy.add(key)
                calls[(agent, "solve")] += scale * n * turns
        pairs = pair_rate * n
        if len(memory.source) > 1:
            for agent in memory.source:  # extra samples on tasks without a contrast
                calls[(agent, "solve")] += scale * cfg.samples * n * (1 - pair_rate) * turns
        kind, spec = memory.spec.kind, memory.spec
        if kind in ("memcollab", "category", "reflect") and (memory.build_source, memory.taxonomy) not in classified:
            classified.add((memory.build_source, memory.taxonomy))
            calls[(cfg.classifier_name, "classify")] += scale * n
        if kind == "memcollab":
            key = (memory.build_source, memory.taxonomy, str(memory.seed), "+".join(memory.source))
            if key not in distilled:  # variants of one pair (verified, no gate, k, merged) share its distillations
                distilled.add(key)
                calls[(cfg.distiller_name, "distill")] += scale * pairs
            if spec.verify:
                for agent in memory.source:
                    calls[(agent, "solve")] += scale * pairs * (1 + spec.verify_tasks) * turns / len(memory.source)
        elif kind == "category":
            calls[(cfg.distiller_name, "distill")] += scale * pairs / spec.group_size
        elif kind == "reflect":
            reflectors = memory.source if spec.reflector == "source" else (cfg.distiller_name,)
            for agent in reflectors:
                calls[(agent, "distill")] += scale * n * len(memory.source) / len(reflectors)
        elif kind == "cheatsheet":
            calls[(cfg.distiller_name, "distill")] += scale * n
    for bench in plan.benchmarks.values():
        if not any(c.benchmark == bench.name for c in plan.cells if c.id in done.cells):
            calls[(cfg.classifier_name, "classify")] += len(bench.eval_tasks)  # before its first cell
        turns = _turns(bench.name, cfg.max_turns, measured)
        for cell in pending:
            if cell.benchmark == bench.name:
                calls[(cell.target, "solve")] += done.tasks_left(cell.id, bench.cell_tasks[cell.id]) * turns
    return dict(calls)


def guidance_shown(spec: MethodSpec) -> tuple[GuidanceItem, int] | None:
    """What a method adds to every solve prompt: (the kind of item, how many at most); None without memory."""
    if spec.kind == "none":
        return None
    if spec.kind == "examples":
        return "example", spec.k
    if spec.kind == "cheatsheet":
        return "cheatsheet_entry", spec.max_items
    return "rule", spec.k


def guidance_tokens(
    plan: GridPlan,
    per_item: Mapping[GuidanceItem, float],
    finished: Finished | None = None,
    turns: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Prompt tokens the pending cells' guidance adds, by target agent: every solve call (each turn of a code
    task) reads it. Worked examples made `examples` take three times a count of calls alone."""
    done, measured = finished or Finished(), turns or {}
    tokens: dict[str, float] = defaultdict(float)
    for cell in plan.cells:
        shown = guidance_shown(cell.method)
        if cell.id in done.cells or shown is None:
            continue
        item, count = shown
        calls = done.tasks_left(cell.id, plan.benchmarks[cell.benchmark].cell_tasks[cell.id]) * _turns(
            cell.benchmark, plan.cfg.max_turns, measured
        )
        tokens[cell.target] += calls * count * per_item.get(item, 0.0)
    return dict(tokens)


def estimate_grid_seconds(
    plan: GridPlan,
    agents: Mapping[str, Any],
    figures: Throughput,
    finished: Finished | None = None,
    turns: Mapping[str, float] | None = None,
) -> float | None:
    """Upper-bound machine time in seconds (of what `finished` leaves) at the measured `figures`; None if an
    agent's rate is missing.

    `agents`: name -> agent config (a mapping with `model` and `backend`, e.g. `Agent.config`).
    """
    total = 0.0
    for (name, kind), count in grid_calls(plan, figures.contrast_pair_rate, finished, turns).items():
        config = agents.get(name)
        if config is None or not count:
            continue
        seconds = figures.call_seconds(config.get("model", ""), config.get("backend", "local"), kind)
        if seconds is None:
            return None
        total += count * seconds
    for name, tokens in guidance_tokens(plan, figures.guidance_tokens_per_item, finished, turns).items():
        config = agents.get(name)
        if config is not None:
            total += figures.prompt_seconds(config.get("model", ""), config.get("backend", "local"), tokens)
    return total


@dataclass(frozen=True)
class GridEstimate:
    """The whole grid's machine time, the part earlier invocations left, and what they finished."""

    whole: float | None
    left: float | None
    finished: Finished
    turns: dict[str, float] = field(default_factory=dict)  # measured turns per code task, by benchmark


def estimate_grid(plan: GridPlan, agents: Mapping[str, Any], run_dir: Path, figures: Throughput | None) -> GridEstimate:
    """Whole and left estimates of `plan` from the state of `run_dir` and the throughput `figures` (None: no
    throughput file, no estimate); a grid reads its figures once, so an edit of the file cannot stop it part way."""
    finished = finished_work(plan, run_dir)
    turns = measured_turns(run_dir)
    return GridEstimate(
        whole=None if figures is None else estimate_grid_seconds(plan, agents, figures, turns=turns),
        left=None if figures is None else estimate_grid_seconds(plan, agents, figures, finished, turns),
        finished=finished,
        turns=turns,
    )
