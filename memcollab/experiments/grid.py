"""Run a grid of paired comparisons: every memory built once, every cell solved behind one Solver.

`plan_grid` (experiments.grid_plan) validates the config; `GridRun` then, memory by memory, builds it (its
LM results keyed in the run's result store) and solves its cells' tasks with the method's guidance, each
target's no-memory cell just before its first memory cell (`evaluation_order`), compares each cell with the
target's no-memory cell on the same tasks (report, transfer), writes the tables and figures into the run
directory and logs a parent MLflow run with a nested run per cell. A rerun of the same config resumes: every
LM result made before is read back, not redone.

Run directory:
  grid.json            the config, the cells and the memories (what the notebook reads first)
  results.sqlite       every LM result by key (resume); dspy_cache/ the LM response cache
  memories/<id>/       memory.jsonl (+ memory.sqlite, build.json naming the store and counting the rules,
                       cheatsheet history)
  cells/<cell>.jsonl   per-task rows of each cell; tasks.jsonl all of them
  table.csv (and table.md), categories.csv, transfer.csv, k_ablation.csv, echo.csv,
                       placebo.csv, overlap.csv, memories.csv and transfer.png, k_ablation.png (rewritten after
                       every cell, finished cells first, so a stopped grid keeps its finished cells' tables);
                       progress.json which cells are finished
  summary.json         timings and wall time (added up over invocations, kept when one stops part way) and
                       the machine-time estimate

With `store_url` (a PostgreSQL database) the result store and each memory's store live in that database
instead of results.sqlite and memories/<id>/memory.sqlite, a schema each, named from the run directory's
name and the store's (`memory.backends.store_target`); everything else stays in the run directory.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from memcollab.benchmarks import parse_ids
from memcollab.errors import ConfigError, lm_endpoint_error, output_error
from memcollab.experiments.best_of import best_of_table, new_choices, write_choice
from memcollab.experiments.estimate import Throughput, load_throughput
from memcollab.experiments.executors import Executor, LocalExecutor, Solves
from memcollab.experiments.grid_config import Cell, GridConfig
from memcollab.experiments.grid_estimate import GridEstimate, estimate_grid
from memcollab.experiments.grid_plan import BenchmarkPlan, GridPlan, MemoryPlan, plan_grid
from memcollab.experiments.grid_tracking import GridTracker, invocation_params, log_grid, log_programs
from memcollab.experiments.memory_audit import audit_rules, memory_table
from memcollab.experiments.preflight import check_sandbox
from memcollab.experiments.report import (
    ROW_COLUMNS,
    TABLES,
    category_table,
    cell_table,
    echo_table,
    k_ablation,
    markdown_table,
    overlap_table,
    placebo_table,
    plot_k_ablation,
)
from memcollab.experiments.step_times import StepTimes
from memcollab.experiments.transfer import plot_transfer, transfer_table
from memcollab.grading.echo import echoes_memory
from memcollab.memory.backends import store_target
from memcollab.memory.clustering import error_type_matrix, plot_heatmap
from memcollab.memory.results import ResultStore
from memcollab.parallel import console as progress_console
from memcollab.programs.methods import (
    BuildInputs,
    Guidance,
    MemoryMethod,
    MethodContext,
    StoreMethod,
    make_method,
    solve_with,
)
from memcollab.programs.pipeline import Agent
from memcollab.records import Task, Trajectory, stable_hash
from memcollab.taxonomy import load_taxonomy


@dataclass
class GridResult:
    """What a grid produced: its tables (pandas) and where everything was written."""

    run_dir: Path
    table: pd.DataFrame
    categories: pd.DataFrame
    transfer: pd.DataFrame
    ablation: pd.DataFrame
    estimate_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    parent_run_id: str | None = None
    best_of: pd.DataFrame = field(default_factory=pd.DataFrame)
    chose: dict[str, Any] = field(default_factory=dict)  # best-of choices this invocation made: plan again to run them


def task_row(cell: Cell, task: Task, trajectory: Trajectory, guidance: Guidance, category: str) -> dict[str, Any]:
    """One task of one cell, flat (the per-task table)."""
    row = {
        **cell.labels(),
        "task_id": task.id,
        "category": category,
        "correct": trajectory.correct,
        "first_turn_correct": bool(trajectory.turns) and trajectory.turns[0].verdict.correct,
        "turns": trajectory.n_turns,
        "retries_unchanged": trajectory.retries_unchanged,
        "tokens": trajectory.tokens,
        "latency_s": round(trajectory.latency_s, 3),
        "format_error": bool(trajectory.error),
        "error_type": trajectory.verdict.error_type,
        "lm_error": False,
        "memories": len(guidance.memory_ids),
        "memory_ids": ",".join(guidance.memory_ids),
        "guidance_key": guidance.key,
        "memory_echo": echoes_memory(guidance.text, task.prompt, trajectory.text),
    }
    assert tuple(row) == ROW_COLUMNS
    return row


def lm_error_row(cell: Cell, task: Task, exc: Exception, category: str) -> dict[str, Any]:
    """A task whose LM call failed after retries: missing data (left out of the comparison), never persisted."""
    failed = Trajectory(task_id=task.id, benchmark=task.benchmark, agent=cell.target, error=f"lm_error: {exc}"[:300])
    row = task_row(cell, task, failed, Guidance(), category)
    return {**row, "format_error": False, "error_type": "lm_error", "lm_error": True}


def evaluation_order(cells: list[Cell], cell_memory: dict[str, str | None]) -> list[Cell]:
    """Memory by memory (in the order the config first names them), each target's cells without memory (its
    baseline) just before its first cell with memory: a grid of many hours builds each memory just before its
    cells and pairs them at once, so a grid stopped part way has finished comparisons to show, not memories
    nobody has used yet or baselines with nothing to compare."""
    plain: dict[str, list[Cell]] = {}
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        memory = cell_memory[cell.id]
        if memory is None:
            plain.setdefault(cell.target, []).append(cell)
        else:
            groups.setdefault(memory, []).append(cell)
    order: list[Cell] = []
    for group in groups.values():
        for cell in group:
            order += plain.pop(cell.target, [])
            order.append(cell)
    return order + [cell for rest in plain.values() for cell in rest]


def run_order(plan: GridPlan) -> list[Cell]:
    """Every cell of the grid in the order `GridRun.run` evaluates them (benchmark by benchmark)."""
    return [
        cell
        for name in plan.benchmarks
        for cell in evaluation_order([c for c in plan.cells if c.benchmark == name], plan.cell_memory)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")


class GridRun:
    """One invocation of a planned grid; owns the result store, the agents and the MLflow runs while open."""

    def __init__(
        self,
        plan: GridPlan,
        agents: dict[str, Agent] | None = None,
        announce: Callable[[str], None] = progress_console.print,
        show_progress: bool = True,
        executor: Executor | None = None,
        steps: StepTimes | None = None,
        throughput: Throughput | None = None,
    ) -> None:
        """`steps`: the step times of an invocation this run continues (a second pass of one `run_grid`);
        `throughput`: the figures the estimates use, read once when the invocation starts (None: no estimate)."""
        self.plan, self.cfg = plan, plan.cfg
        self.executor: Executor = executor or LocalExecutor()  # where solves run; its owner closes it
        self.run_dir = Path(self.cfg.run_dir)
        self.agents: dict[str, Agent] = dict(agents or {})
        self.announce = announce
        self.show_progress = show_progress
        self.methods: dict[str, MemoryMethod] = {}
        self.audits: dict[str, dict[str, Any]] = {}  # memory id -> counts of its rules (rule memories only)
        self.contexts: dict[str, MethodContext] = {}
        self.collected: dict[tuple, list[Trajectory]] = {}
        # read now, before this invocation rewrites it
        self.steps = steps or StepTimes(self.run_dir / "summary.json")
        self.throughput = throughput
        self.tables_only = False  # `run(tables_only=True)`: read back, write tables, leave summary.json alone
        self.finished_before: frozenset[str] = frozenset()  # cells earlier invocations finished (progress.json)
        self.extra: dict[str, dict[str, Any]] = {}
        self.results: ResultStore | None = None
        #: (store name, its file in the run dir) -> where it lives: that file, or a schema of the config's store_url.
        self.stores: Callable[[str, Path], str | Path] = functools.partial(
            store_target, self.cfg.store_url, self.run_dir
        )
        self.tracker: GridTracker | None = None

    # ----- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> GridRun:
        from memcollab.lm.factory import configure_dspy_cache

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.run_dir, exc) from None
        configure_dspy_cache(self.run_dir / "dspy_cache", enabled=self.cfg.cache)
        self.results = ResultStore(self.stores("results", self.run_dir / "results.sqlite"))
        try:
            self.tracker = GridTracker(
                self.cfg.tracking_uri, self.run_dir, f"memcollab-grid-{self.cfg.name}", enabled=self.cfg.track
            )
            missing = {n: c for n, c in self.plan.agents.items() if n not in self.agents}
            if missing:
                from memcollab.experiments.runner import build_agent_handles

                self.agents.update(build_agent_handles(missing, self.cfg.cache))
            shipped = {c.target for c in self.plan.cells} | {a for m in self.plan.memories.values() for a in m.source}
            self.executor.check([self.agents[name] for name in sorted(shipped)])  # fail before any LM call
        except BaseException:
            self.__exit__()  # no open store, no orphan llama-server
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for method in self.methods.values():
            method.close()
        if self.results is not None:
            self.results.close()
        server = sys.modules.get("memcollab.lm.server")
        if server is not None:
            server.shutdown_all()

    # ----- pieces ---------------------------------------------------------------------------
    def estimate(self) -> GridEstimate:
        """Machine time of the whole grid and of what earlier invocations did not finish."""
        agents = {name: agent.config for name, agent in self.agents.items()}
        return estimate_grid(self.plan, agents, self.run_dir, self.throughput)

    def context(self, taxonomy: str) -> MethodContext:
        if self.results is None:
            raise RuntimeError("open the GridRun first: `with GridRun(plan) as run: run.run()`")
        if taxonomy not in self.contexts:
            cfg = self.cfg
            self.contexts[taxonomy] = MethodContext(
                load_taxonomy(taxonomy),
                self.results,
                distiller=self.agents.get(cfg.distiller_name),
                classifier=self.agents.get(cfg.classifier_name),
                max_turns=cfg.max_turns,
                workers=cfg.workers,
                show_progress=self.show_progress,
                gold_categories=cfg.gold_categories,
                classifier_program=cfg.classifier_program,
                solver_program=cfg.solver_program,
                store_target=self.stores,
            )
        return self.contexts[taxonomy]

    def seeded(self, name: str, seed: int) -> Agent:
        """The agent for building memory with `seed` (0: as configured; else its sampling seed set to `seed`)."""
        agent = self.agents[name]
        if seed == 0:
            return agent
        return Agent(
            name=agent.name, lm=agent.lm.copy(seed=seed), config={**agent.config, "seed": seed}, adapter=agent.adapter
        )

    def trajectories(self, memory: MemoryPlan, bench: BenchmarkPlan, agents: list[Agent]) -> list[Trajectory]:
        """What the source agents did on the build tasks (the pipeline's collect: cached per agent and task)."""
        if not agents:  # a memory without source agents (a placebo) is built from no trajectories
            return []
        key = (memory.taxonomy, memory.build_source, memory.seed, memory.source)
        if key not in self.collected:
            if self.executor.distributed:  # the first attempts run where the executor runs solves; collect reads them
                for agent in agents:
                    self.executor.run(
                        self.solves(
                            memory.taxonomy,
                            agent,
                            bench.build_tasks,
                            lambda _: Guidance(),
                            lambda _t, _g, trajectory: trajectory,
                            lambda _t, _e: None,  # collect asks again and counts the failure its own way
                            max_errors=None,
                            description=f"{agent.name} solving build tasks ({self.executor.name})",
                        )
                    )
            samples = self.cfg.samples if len(agents) > 1 else 0  # one agent has no contrast to sample for
            collected = (
                self.context(memory.taxonomy)
                .pipeline()
                .collect(bench.build_tasks, agents, samples=samples, temperature=self.cfg.sample_temperature)
            )
            # A trajectory without turns is a task the LM never answered (an lm_error marker), not an attempt.
            self.collected[key] = [t for t in collected if t.turns]
        return self.collected[key]

    def build_memory(self, memory: MemoryPlan) -> MemoryMethod:
        """Build one memory (every LM result cached), export it, and keep it for the cells that read it."""
        if memory.id in self.methods:
            return self.methods[memory.id]
        bench = next(
            b
            for b in self.plan.benchmarks.values()
            if b.build_source == memory.build_source and b.taxonomy == memory.taxonomy
        )
        agents = [self.seeded(name, memory.seed) for name in memory.source]
        workdir = self.run_dir / "memories" / memory.id
        origin = (
            f"from {'+'.join(memory.source)} on {len(bench.build_tasks)} {memory.build_source} tasks"
            if memory.source
            else f"rules read from {memory.spec.rules_from}"  # a placebo: no agent, no build task
        )
        self.announce(f"memory {memory.id}: {memory.spec.kind} {origin}")
        fingerprint = stable_hash([memory.id, [t.id for t in bench.build_tasks]])
        with self.steps.timed(f"build.{memory.id}_s", fingerprint) as seconds:
            trajectories = self.trajectories(memory, bench, agents)
            method = make_method(memory.spec, self.context(memory.taxonomy), workdir)
            report = method.build(
                BuildInputs(
                    bench.build_tasks,
                    agents,
                    trajectories,
                    samples=self.cfg.samples,
                    temperature=self.cfg.sample_temperature,
                )
            )
        self.steps.complete(f"build.{memory.id}_s", fingerprint)
        method.export(workdir / "memory.jsonl")
        entries = method.entries()
        if entries:
            plot_heatmap(*error_type_matrix(entries), workdir / "error_types.png")
            self.audits[memory.id] = audit_rules(entries, bench.build_tasks)
        info = {
            "id": memory.id,
            "kind": memory.spec.kind,
            "settings": memory.spec.memory_settings(),
            "source": list(memory.source),
            "seed": memory.seed,
            "build_source": memory.build_source,
            "taxonomy": memory.taxonomy,
            "build_tasks": len(bench.build_tasks),
            "hash": method.content_hash(),
            # where `memcollab memory list --store` finds it (a file here, or a schema of the store_url)
            "store": method.store.path if isinstance(method, StoreMethod) else None,
            "report": report,
            "rules": self.audits.get(memory.id),
            "seconds": round(seconds(), 1),
        }
        (workdir / "build.json").write_text(json.dumps(info, indent=2, default=str))
        self.methods[memory.id] = method
        return method

    def _memory_table(self, cells: list[Cell]) -> pd.DataFrame:
        """memories.csv: the rule counts (`memory_audit`) of every rule memory that `cells` read."""
        ids = dict.fromkeys(m for m in (self.plan.cell_memory[c.id] for c in cells) if m in self.audits)
        return memory_table(
            {
                "memory": m,
                "kind": self.plan.memories[m].spec.kind,
                "source": "+".join(self.plan.memories[m].source) or "-",
            }
            | self.audits[m]
            for m in ids
        )

    def method_for(self, cell: Cell) -> MemoryMethod:
        memory_id = self.plan.cell_memory[cell.id]
        ctx = self.context(self.plan.benchmarks[cell.benchmark].taxonomy)
        if memory_id is None:
            return make_method(cell.method, ctx)
        return self.build_memory(self.plan.memories[memory_id]).variant(cell.method)

    def categories(self, bench: BenchmarkPlan) -> dict[str, str]:
        """The classifier's category of every evaluation task (the per-category tables group by it)."""
        ctx = self.context(bench.taxonomy)
        tasks = list(bench.eval_tasks.values())
        if ctx.classifier is None and not ctx.gold_categories:
            return {t.id: t.category for t in tasks}
        return dict(zip([t.id for t in tasks], ctx.map(ctx.classify, tasks, f"classifying {bench.name} tasks")))

    def solves(self, taxonomy: str, agent: Agent, tasks: list[Task], *handlers: Any, **fields: Any) -> Solves:
        """A batch for the executor behind the run's one solver (this module's `solve_with`: tests patch it)."""
        return Solves(
            self.context(taxonomy).shared,
            agent,
            tasks,
            *handlers,
            solve=solve_with,
            workers=self.cfg.workers,
            show=self.show_progress,
            cache_dir=self.run_dir / "dspy_cache",
            cache=self.cfg.cache,
            **fields,
        )

    def evaluate(self, cell: Cell, categories: dict[str, str]) -> list[dict[str, Any]]:
        """Solve the cell's tasks with its method's guidance; per-task rows (also written to cells/<id>.jsonl)."""
        bench = self.plan.benchmarks[cell.benchmark]
        method = self.method_for(cell)
        tasks = bench.tasks_of(cell)
        agent = self.agents[cell.target]
        method.prepare(tasks)

        def row(task: Task, guidance: Guidance, trajectory: Trajectory) -> dict[str, Any]:
            return task_row(cell, task, trajectory, guidance, categories.get(task.id, ""))

        def failed(task: Task, exc: Exception) -> dict[str, Any]:
            if lm_endpoint_error(exc) is None:
                raise exc  # a bug, not an unreachable endpoint: keep its traceback
            return lm_error_row(cell, task, exc, categories.get(task.id, ""))

        memory_id = self.plan.cell_memory[cell.id]
        fingerprint = stable_hash([cell.id, [t.id for t in tasks], memory_id or ""])
        with self.steps.timed(f"eval.{cell.id}_s", fingerprint) as wall:
            rows = self.executor.run(
                self.solves(
                    bench.taxonomy,
                    agent,
                    tasks,
                    method.guidance,
                    row,
                    failed,
                    max_errors=self.cfg.max_errors,
                    description=f"{cell.target} {cell.method.name} ({cell.source_label}) on {cell.benchmark}",
                )
            )
        if not any(r.get("lm_error") for r in rows):  # unanswered tasks are asked again by the next invocation
            self.steps.complete(f"eval.{cell.id}_s", fingerprint)
        self.extra[cell.id] = {
            "wall_s": round(wall(), 2),
            "memory_id": memory_id or "",
            "memory_hash": method.content_hash() if memory_id else "",
            "memory_size": len(method.records()) if memory_id else 0,
        }
        _write_jsonl(self.run_dir / "cells" / f"{cell.id}.jsonl", list(rows))
        return list(rows)

    # ----- the whole grid -------------------------------------------------------------------
    def run(self, tables_only: bool = False) -> GridResult:
        """Every cell, memory by memory (resuming what earlier invocations made), then the tables and MLflow.

        `tables_only`: only the cells an earlier invocation finished, read back from the store, and their tables;
        no MLflow run (give the GridRun agents that refuse LM calls, as `run_grid` does, to be sure of no call).
        """
        if self.results is None:
            raise RuntimeError("open the GridRun first: `with GridRun(plan) as run: run.run()`")
        cfg, plan = self.cfg, self.plan
        times = self.estimate()
        estimate, left = times.whole, times.left
        self._write_plan(estimate)
        self.tables_only = tables_only
        self.finished_before = times.finished.cells
        order = run_order(plan)
        finished = [c for c in order if c.id in times.finished.cells]
        if tables_only:
            self.announce(f"tables only: the {len(finished)} of {len(plan.cells)} cells finished in {self.run_dir}")
            return self._report(*self._run_cells(finished, estimate), estimate)
        if estimate is not None and left is not None:
            self.announce(
                f"estimated machine time: about {estimate / 60:.0f} min for {len(plan.cells)} cells and "
                f"{len(plan.memories)} memories, about {left / 60:.0f} min of it left "
                "(measured tokens/s; finished cells and built memories are read back)"
            )
        assert self.tracker is not None
        shared = self.context(next(iter(plan.benchmarks.values())).taxonomy).shared
        with self.tracker.invocation(cfg.name, invocation_params(plan, self.agents, shared.solver_version)) as parent:
            log_programs(self.tracker, plan, shared)
            # finished cells first (read back, no LM call): a stopped invocation's tables still cover them
            rest = [c for c in order if c.id not in times.finished.cells]
            result = self._report(*self._run_cells(finished + rest, estimate, until_chosen=True), estimate)
            result.parent_run_id = parent.run_id
            result.chose = new_choices(result.best_of, plan.best_of, plan.chosen)
            if result.chose:  # before logging: the parent run's best_of.json names the choice
                write_choice(self.run_dir, result.chose)
                for benchmark, made in result.chose.items():
                    self.announce(
                        f"best of the rest on {benchmark}: {made['method']} (highest difference on its "
                        f"{made['chosen_on']} choice tasks); it now runs on best_of.eval_ids"
                    )
            log_grid(
                self.tracker,
                plan,
                self.agents,
                self.run_dir,
                result.table,
                result.categories,
                result.transfer,
                shared.solver_version,
            )
        return result

    def _run_cells(
        self, cells: list[Cell], estimate: float | None, until_chosen: bool = False
    ) -> tuple[pd.DataFrame, list[Cell]]:
        """Solve `cells` in order (each builds its memory the first time); the tables and summary.json after every
        cell, so a grid stopped after hours still leaves its finished cells' tables and this invocation's time.
        `until_chosen`: stop after the cell whose result lets the best of the rest be chosen, so the next pass
        runs the winner before the cells left. Returns the rows and the cells done, in the plan's order."""
        rows: list[dict[str, Any]] = []
        done: list[Cell] = []
        categories: dict[str, dict[str, str]] = {}
        try:
            for cell in cells:
                if cell.benchmark not in categories:
                    categories[cell.benchmark] = self.categories(self.plan.benchmarks[cell.benchmark])
                rows += self.evaluate(cell, categories[cell.benchmark])
                done.append(cell)
                best = self._write_tables(pd.DataFrame(rows, columns=list(ROW_COLUMNS)), done)[-1]
                self._write_summary(estimate)
                if not self.tables_only:
                    self._announce_left()
                if until_chosen and new_choices(best, self.plan.best_of, self.plan.chosen):
                    break
        except BaseException:
            self._write_summary(estimate)  # Ctrl-C or a failure: this invocation's time still counts
            raise
        ids = {c.id for c in done}
        return pd.DataFrame(rows, columns=list(ROW_COLUMNS)), [c for c in self.plan.cells if c.id in ids]

    def _announce_left(self) -> None:
        """After a cell: how many of the grid's cells are finished (this and earlier invocations) and the estimate
        of the rest, so a run of many hours says where it stands."""
        times = self.estimate()
        left = "" if times.left is None else f"; about {times.left / 3600:.1f} h left (estimate)"
        self.announce(f"grid: {len(times.finished.cells)} of {len(self.plan.cells)} cells finished{left}")

    def _report(self, rows: pd.DataFrame, cells: list[Cell], estimate: float | None) -> GridResult:
        table, categories, transfer, ablation, best = self._write_tables(rows, cells)
        timings = self._write_summary(estimate)
        return GridResult(self.run_dir, table, categories, transfer, ablation, estimate, timings, best_of=best)

    def _write_tables(
        self, rows: pd.DataFrame, cells: list[Cell]
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """The tables and figures of `cells` (all of them at the end; the finished ones while the grid runs), and
        progress.json naming every finished cell: these and those earlier invocations finished."""
        cfg, plan = self.cfg, self.plan
        _write_jsonl(self.run_dir / "tasks.jsonl", rows.to_dict("records"))
        table = cell_table(rows, cells, samples=cfg.bootstrap_samples, extra=self.extra)
        categories = category_table(rows, cells)
        ablation = k_ablation(rows, table, samples=cfg.bootstrap_samples)
        transfer_ids = {}
        if cfg.transfer is not None:
            for name, bench in plan.benchmarks.items():
                ids = cfg.transfer.ids_for(name)
                if ids is not None:
                    transfer_ids[name] = [t.id for t in parse_ids(ids).select(list(bench.eval_tasks.values()), name)]
        transfer = transfer_table(rows, cfg, transfer_ids, samples=cfg.bootstrap_samples)
        frames = {
            "table": table,
            "categories": categories,
            "k_ablation": ablation,
            "transfer": transfer,
            "echo": echo_table(rows, cells),
            "placebo": placebo_table(rows, cells, samples=cfg.bootstrap_samples),
            "overlap": overlap_table(rows, cells),
            "memories": self._memory_table(cells),
            "best_of": best_of_table(rows, plan.best_of, plan.chosen, cfg.bootstrap_samples),
        }
        assert tuple(frames) == TABLES
        for name, frame in frames.items():
            frame.to_csv(self.run_dir / f"{name}.csv", index=False)
        (self.run_dir / "table.md").write_text(markdown_table(table), encoding="utf-8")
        plot_transfer(transfer, self.run_dir / "transfer.png")
        plot_k_ablation(ablation, self.run_dir / "k_ablation.png")
        finished = {c.id for c in cells} | self.finished_before  # cells not read back yet are still finished
        progress = {
            "cells_done": len(finished),
            "cells": len(plan.cells),
            "done": [c.id for c in plan.cells if c.id in finished],
            "pending": [c.id for c in plan.cells if c.id not in finished],
        }
        (self.run_dir / "progress.json").write_text(json.dumps(progress, indent=2))
        return table, categories, transfer, ablation, frames["best_of"]

    def _write_plan(self, estimate: float | None) -> None:
        plan = self.plan
        payload = {
            "config": json.loads(self.cfg.model_dump_json()),
            "estimate_s": estimate,
            "cells": [
                {
                    "id": c.id,
                    "benchmark": c.benchmark,
                    "target": c.target,
                    "method": c.method.model_dump(),
                    "family": c.family,
                    "source": list(c.source),
                    "seed": c.seed,
                    "eval_ids": c.eval_ids,
                    "tasks": len(plan.benchmarks[c.benchmark].cell_tasks[c.id]),
                    "memory": plan.cell_memory[c.id],
                }
                for c in plan.cells
            ],
            "best_of": plan.chosen,
            "memories": {
                m.id: {
                    "kind": m.spec.kind,
                    "settings": m.spec.memory_settings(),
                    "source": list(m.source),
                    "seed": m.seed,
                    "build_source": m.build_source,
                }
                for m in plan.memories.values()
            },
            "tasks": {
                name: {
                    "build": len(b.build_tasks),
                    "build_hash": stable_hash([t.id for t in b.build_tasks]),
                    "eval": len(b.eval_tasks),
                    "eval_hash": stable_hash(list(b.eval_tasks)),
                }
                for name, b in plan.benchmarks.items()
            },
        }
        (self.run_dir / "grid.json").write_text(json.dumps(payload, indent=2, default=str))

    def _write_summary(self, estimate: float | None) -> dict[str, float]:
        """summary.json: timings and wall time added up over invocations (a resumed grid reports what its results
        took). Rewritten after every cell and when an invocation stops part way, so no invocation's time is lost.
        A tables-only pass makes no result, so it leaves the file alone (it is not the grid's machine time)."""
        if self.tables_only:
            return self.steps.totals()
        summary = {"name": self.cfg.name, "estimate_s": estimate, **self.steps.summary()}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary["timings_s"]


def run_grid(
    cfg: GridConfig,
    agents: dict[str, Agent] | None = None,
    announce: Callable[[str], None] = progress_console.print,
    show_progress: bool = True,
    executor: Executor | None = None,
    tables_only: bool = False,
) -> GridResult:
    """Plan (validate everything, no writes), then run the grid; `agents` replaces named agents (tests), `executor`
    says where the solves run (default: threads here). `tables_only`: rewrite the tables of the finished cells
    from the store, with no LM call and no MLflow run (after a change to how tables are made)."""
    if cfg.store_url is not None:  # a server that does not answer fails first, before the run dir exists
        from memcollab.memory.postgres import check_server

        check_server(cfg.store_url, ConfigError)
    if not tables_only:
        check_sandbox(cfg.benchmarks)
    throughput = load_throughput()  # once: an edit of the file while the grid runs cannot stop it
    steps: StepTimes | None = None
    while True:  # twice at most: a pass that chooses the best of the rest plans again to run the winner
        plan = plan_grid(cfg, injected=set(agents or {}), announce=announce)
        handles = read_back_agents(plan, agents) if tables_only else agents
        with GridRun(plan, handles, announce, show_progress, executor, steps, throughput) as grid:
            result = grid.run(tables_only=tables_only)
        if not result.chose:
            return result
        steps = grid.steps  # one invocation: its second pass adds to the same time and count


def read_back_agents(plan: GridPlan, injected: dict[str, Agent] | None = None) -> dict[str, Agent]:
    """Every agent of `plan` (and of `injected`) with its config and adapter, so its results' keys are the same,
    but an LM that refuses calls (`lm.no_calls`): no server starts, and a result missing from the store stops the
    pass with one line instead of starting model calls."""
    from memcollab.lm.factory import build_adapter
    from memcollab.lm.no_calls import NoCallsLM

    why = (
        "a finished cell's result is not in the store (the code or the config changed since the cell ran); "
        "run the grid without --tables-only to make it"
    )
    handles = {
        name: Agent(name, NoCallsLM(name, why), config.model_dump(mode="json"), build_adapter(config))
        for name, config in plan.agents.items()
    }
    for name, agent in (injected or {}).items():
        handles[name] = Agent(name, NoCallsLM(name, why), agent.config, agent.adapter)
    return handles
