"""What a grid will do, checked before it spends anything: its tasks, its memories and its agents.

`plan_grid` loads every build and evaluation slice, refuses evaluation tasks that a memory is built
from, resolves and checks every agent (no LM call), and names the memories to build: one per
(taxonomy, build slice, build settings, source agents, seed), however many cells use it. It writes
nothing, so a failed plan leaves no run directory behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memcollab.benchmarks import get_benchmark, load_source, parse_ids
from memcollab.experiments.best_of import BestOfSlice, best_of_slices, read_choice
from memcollab.experiments.config import RunConfig, make_config
from memcollab.experiments.grid_config import Cell, GridConfig, agent_names, expand_cells
from memcollab.experiments.preflight import check_agents, check_overlap, check_run_dir
from memcollab.programs.methods import MethodSpec
from memcollab.programs.methods.placebo import placebo_rules, rules_hash
from memcollab.records import Task, stable_hash


@dataclass(frozen=True)
class MemoryPlan:
    """One memory to build, shared by every cell whose method builds the same thing from the same source."""

    id: str
    taxonomy: str
    build_source: str
    spec: MethodSpec
    source: tuple[str, ...]
    seed: int


@dataclass
class BenchmarkPlan:
    """One benchmark's tasks: the build slice, every evaluation task, and each cell's tasks (ids, in order)."""

    name: str
    taxonomy: str
    build_source: str
    build_tasks: list[Task]
    eval_tasks: dict[str, Task]
    cell_tasks: dict[str, list[str]] = field(default_factory=dict)

    def tasks_of(self, cell: Cell) -> list[Task]:
        return [self.eval_tasks[i] for i in self.cell_tasks[cell.id]]


@dataclass
class GridPlan:
    """The validated grid: cells, tasks per benchmark, memories, and the checked agent configs."""

    cfg: GridConfig
    cells: list[Cell]
    benchmarks: dict[str, BenchmarkPlan]
    memories: dict[str, MemoryPlan]
    cell_memory: dict[str, str | None]
    agents: dict[str, Any] = field(default_factory=dict)
    best_of: list[BestOfSlice] = field(default_factory=list)
    chosen: dict[str, str] = field(default_factory=dict)  # the best of the rest, by benchmark, once chosen

    def run_config(self, benchmark: str) -> RunConfig:
        return run_config(self.cfg, benchmark)


def run_config(cfg: GridConfig, benchmark: str) -> RunConfig:
    """The RunConfig the shared helpers (agent checks, the time estimate) read for one benchmark of the grid."""
    return make_config(
        f"grid config {cfg.name}",
        benchmark=benchmark,
        build_agents=list(cfg.pair),
        eval_agents=[],
        distiller=cfg.distiller_name,
        classifier=cfg.classifier_name,
        agents_file=cfg.agents_file,
        max_turns=cfg.max_turns,
        samples=cfg.samples,
        sample_temperature=cfg.sample_temperature,
        gold_categories=cfg.gold_categories,
        workers=cfg.workers,
        run_dir=cfg.run_dir,
        data_dir=cfg.data_dir,
        tracking_uri=cfg.tracking_uri,
        track=cfg.track,
        cache=cfg.cache,
        max_tokens=cfg.max_tokens,
        backend=cfg.backend,
        classifier_program=cfg.classifier_program,
        solver_program=cfg.solver_program,
    )


def memory_plan(cfg: GridConfig, bench: BenchmarkPlan, cell: Cell) -> MemoryPlan | None:
    """The memory a cell reads (None for no memory); its id names everything that makes it."""
    if cell.method.kind == "none":
        return None
    settings = cell.method.memory_settings()
    identity = [
        bench.taxonomy,
        bench.build_source,
        cfg.build_ids_for(bench.name),
        settings,
        cell.source,
        cell.seed,
        cfg.samples,
        cfg.sample_temperature,
        cfg.distiller_name,
        cfg.classifier_name,
    ]
    if cell.method.kind == "placebo":  # the rules, not only their file's name: a rewritten file is another memory
        identity.append(rules_hash(placebo_rules(cell.method)))
    defaults = MethodSpec(name="-", kind=cell.method.kind)
    changed = "".join(f"-{key}" for key, value in settings.items() if key != "kind" and value != getattr(defaults, key))
    source = "_".join(cell.source) or "none"
    memory_id = f"{bench.taxonomy}.{settings['kind']}{changed}.{source}.s{cell.seed}.{stable_hash(identity, 8)}"
    return MemoryPlan(memory_id, bench.taxonomy, bench.build_source, cell.method, cell.source, cell.seed)


def plan_grid(
    cfg: GridConfig, injected: set[str] | None = None, announce: Callable[[str], None] | None = None
) -> GridPlan:
    """Load and check everything the grid reads; `injected` agents (tests) are given, not resolved."""
    check_run_dir(cfg.run_dir)
    for flag, path in (("solver_program", cfg.solver_program), ("classifier_program", cfg.classifier_program)):
        if path is not None and not path.is_file():
            from memcollab.errors import ConfigError

            raise ConfigError(f"{flag}: file not found: {path}")
    chosen = read_choice(cfg)
    cells = expand_cells(cfg, chosen)
    benchmarks: dict[str, BenchmarkPlan] = {}
    for name in cfg.benchmarks:
        spec = get_benchmark(name)
        build = load_source(spec.build, data_dir=cfg.data_dir, ids=cfg.build_ids_for(name))
        mine = [c for c in cells if c.benchmark == name]
        union = ",".join(dict.fromkeys(part for c in mine for part in c.eval_ids.split(",")))
        evaluation = load_source(spec.eval, data_dir=cfg.data_dir, ids=union)
        check_overlap(evaluation, {t.id for t in build}, allow=False)
        bench = BenchmarkPlan(name, spec.taxonomy, str(spec.build), build, {t.id: t for t in evaluation})
        for cell in mine:
            bench.cell_tasks[cell.id] = [t.id for t in parse_ids(cell.eval_ids).select(evaluation, str(spec.eval))]
        benchmarks[name] = bench
    best_of = best_of_slices(cfg, cells, benchmarks)
    memories: dict[str, MemoryPlan] = {}
    cell_memory: dict[str, str | None] = {}
    for cell in cells:
        memory = memory_plan(cfg, benchmarks[cell.benchmark], cell)
        cell_memory[cell.id] = memory.id if memory else None
        if memory is not None:
            memories.setdefault(memory.id, memory)
    names = [n for n in agent_names(cfg, cells) if n not in (injected or set())]
    agents = check_agents(names, run_config(cfg, cfg.benchmarks[0]), announce) if names else {}
    return GridPlan(cfg, cells, benchmarks, memories, cell_memory, dict(agents), best_of, chosen)
