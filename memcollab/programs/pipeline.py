"""The MemCollab pipeline: collect trajectories, contrast, distill into a shared memory, solve with it.

`build(tasks, agents)` runs every agent on the memory-building tasks, pairs a success
with a failure of another agent on the same task, and distills each pair into abstract
constraints stored with their category, error type and provenance; with `verify=True` a
constraint is stored only if it lets the failing agent solve its source task and breaks none
of a few build tasks of its category that the agents solved without it (beyond the paper: a
grounding check against rules that fix nothing or only restate their task). `solve(task, agent)`
classifies the task, retrieves the top-k memories of that category and solves with them.
Every LM result is persisted under a key the moment it exists, so a rerun resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from memcollab.memory.results import ResultStore, record_key
from memcollab.memory import MemoryStore, retrieve
from memcollab.programs.classifier import Classifier
from memcollab.programs.distiller import Distiller
from memcollab.programs.pairs import PairStats, build_pairs
from memcollab.programs.solver import Solver, render_guidance
from memcollab.parallel import parallel_map
from memcollab.records import ContrastPair, MemoryEntry, Task, Trajectory, stable_hash
from memcollab.signatures.distill import Constraint
from memcollab.taxonomy import Taxonomy

#: Part of every result key: bump when a program's prompts change, so no stale LM result is replayed.
PROGRAM_VERSION = "memcollab-v2"  # v2: plain-chat solver signatures (NaturalAdapter)


@dataclass
class Agent:
    """A configured agent at run time: its name, its DSPy LM and the config that defines it."""

    name: str
    lm: dspy.BaseLM
    config: dict[str, Any] = field(default_factory=dict)
    adapter: Any = None

    def context(self, **lm_overrides: Any):
        lm = self.lm.copy(**lm_overrides) if lm_overrides else self.lm
        return dspy.context(lm=lm, adapter=self.adapter) if self.adapter else dspy.context(lm=lm)


@dataclass
class BuildReport:
    """What a memory build did, for the run table and MLflow."""

    trajectories: list[Trajectory]
    pairs: list[ContrastPair]
    pair_stats: PairStats
    proposed: int = 0
    added: int = 0
    merged: int = 0
    unverified: int = 0
    accuracy_by_agent: dict[str, float] = field(default_factory=dict)


class MemCollab:
    """The method end to end, over one taxonomy, one memory store and one result store."""

    def __init__(
        self,
        taxonomy: Taxonomy,
        store: MemoryStore,
        results: ResultStore,
        distiller: Agent | None = None,
        classifier_agent: Agent | None = None,
        k: int = 3,
        max_turns: int = 3,
        workers: int = 1,
        fallback: str = "none",
        use_gold_categories: bool = False,
        show_progress: bool = True,
        classifier_program: Path | None = None,
        solver_program: Path | None = None,
        verify: bool = False,
        verify_tasks: int = 3,
        distill_examples: bool = False,
    ) -> None:
        self.taxonomy = taxonomy
        self.store = store
        self.results = results
        self.distiller_agent = distiller
        self.classifier_agent = classifier_agent or distiller
        self.k = k
        self.workers = workers
        self.fallback = fallback
        self.verify = verify
        self.verify_tasks = verify_tasks
        self.show_progress = show_progress
        self.solver = Solver(max_turns=max_turns)
        self.classifier = Classifier(taxonomy, use_gold=use_gold_categories)
        self.classifier_version = "zero-shot"
        if classifier_program is not None:  # a compiled variant (memcollab compile-classifier)
            self.classifier.load(str(classifier_program))
            self.classifier_version = stable_hash(Path(classifier_program).read_text())
        self.solver_version = "zero-shot"
        if solver_program is not None:  # a compiled variant (memcollab compile --program solver)
            self.solver.load(str(solver_program))
            self.solver_version = stable_hash(Path(solver_program).read_text())
        self.distiller = Distiller(taxonomy, use_examples=distill_examples)
        self.settings = {"k": k, "max_turns": max_turns, "fallback": fallback, "taxonomy": taxonomy.name,
                         "solver": self.solver_version}

    # ----- trajectories -------------------------------------------------------------------
    def attempt(self, task: Task, agent: Agent, attempt: int = 0, temperature: float | None = None, guidance: str = "",
                memory_ids: list[str] | None = None, category: str = "", memory_hash: str = "") -> Trajectory:
        """One agent's trajectory on one task (cached by key)."""
        settings = {**self.settings, "attempt": attempt, "temperature": temperature, "guided": bool(guidance)}
        key = record_key("trajectory", task.id, agent.config, PROGRAM_VERSION, settings, memory_hash)
        cached = self.results.get(key)
        if cached is not None:
            return Trajectory(**cached)
        overrides: dict[str, Any] = {}
        if temperature is not None:
            overrides = {"temperature": temperature, "rollout_id": attempt}
        with agent.context(**overrides):
            trajectory = self.solver(task=task, guidance=guidance, agent=agent.name).trajectory
        trajectory.attempt = attempt
        trajectory.category = category or task.category
        trajectory.memory_ids = list(memory_ids or [])
        self.results.put(key, "trajectory", task.id, agent.name, trajectory.model_dump())
        return trajectory

    def collect(self, tasks: list[Task], agents: list[Agent], samples: int = 0, temperature: float = 0.7) -> list[Trajectory]:
        """Every agent solves every task at temperature 0; tasks without a contrast get up to `samples` extra tries."""
        # One agent at a time: two embedded models decoding at once would fight over the same cores.
        trajectories: list[Trajectory] = []
        for agent in agents:
            trajectories += self._map(lambda task, a=agent: self.attempt(task, a), tasks, f"{agent.name} solving build tasks")
        for attempt in range(1, samples + 1):
            paired = {pair.task_id for pair in build_pairs(trajectories)[0]}
            retry = [t for t in tasks if t.id not in paired]
            if not retry:
                break
            for agent in agents:
                trajectories += self._map(
                    lambda task, a=agent, n=attempt: self.attempt(task, a, attempt=n, temperature=temperature),
                    retry,
                    f"{agent.name} sampling attempt {attempt} ({len(retry)} tasks without a contrast)",
                )
        return trajectories

    # ----- memory building ----------------------------------------------------------------
    def classify(self, task: Task) -> str:
        """The task's category (cached per task and classifier)."""
        agent = self.classifier_agent
        if self.classifier.use_gold and task.category in self.taxonomy.categories:
            return task.category
        if agent is None:
            raise ValueError("a classifier agent is required unless gold categories are used")
        key = record_key("category", task.id, agent.config, PROGRAM_VERSION, {"taxonomy": self.taxonomy.name,
                         "gold": self.classifier.use_gold, "program": self.classifier_version})
        cached = self.results.get(key)
        if cached is not None:
            return cached["category"]
        with agent.context():
            prediction = self.classifier(task=task)
        self.results.put(key, "category", task.id, agent.name, {"category": prediction.category, "raw": prediction.raw})
        return prediction.category

    def distill_pair(self, pair: ContrastPair, task: Task) -> tuple[list[MemoryEntry], int]:
        """Constraints from one pair (cached by key)."""
        if self.distiller_agent is None:
            raise ValueError("a distiller agent is required to build memory")
        category = self.classify(task)
        settings = {"category": category, "pos": pair.positive.model_dump(), "neg": pair.negative.model_dump()}
        if self.distiller.version:  # distillations made without worked examples keep their old keys
            settings["examples"] = self.distiller.version
        key = record_key("distill", task.id, self.distiller_agent.config, PROGRAM_VERSION, settings)
        cached = self.results.get(key)
        if cached is not None and "constraints" in cached:  # the distiller's raw output, re-filtered below
            constraints = [Constraint(**c) for c in cached["constraints"]]
            return self.distiller.entries_for(constraints, pair, task, category), len(constraints)
        with self.distiller_agent.context():
            prediction = self.distiller(pair=pair, task=task, category=category)
        self.results.put(key, "distill", task.id, self.distiller_agent.name,
                         {"constraints": [c.model_dump() for c in prediction.constraints],
                          "entries": [e.model_dump() for e in prediction.entries], "proposed": prediction.proposed})
        return prediction.entries, prediction.proposed

    def build(self, tasks: list[Task], agents: list[Agent], samples: int = 0, temperature: float = 0.7) -> BuildReport:
        """Collect, pair, distill and store; returns what happened at each step."""
        trajectories = self.collect(tasks, agents, samples=samples, temperature=temperature)
        pairs, stats = build_pairs(trajectories)
        by_id = {task.id: task for task in tasks}
        report = BuildReport(trajectories=trajectories, pairs=pairs, pair_stats=stats)
        for agent in agents:
            own = [t for t in trajectories if t.agent == agent.name and t.attempt == 0]
            report.accuracy_by_agent[agent.name] = sum(t.correct for t in own) / max(len(own), 1)

        distilled = self._map(lambda pair: self.distill_pair(pair, by_id[pair.task_id]), pairs,
                              "distilling contrast pairs")
        report.proposed = sum(proposed for _, proposed in distilled)
        candidates = [(entry, pair) for pair, (entries, _) in zip(pairs, distilled) for entry in entries]
        if self.verify:
            candidates = self._verified(candidates, tasks, trajectories, {agent.name: agent for agent in agents}, report)
        for entry, _ in candidates:
            _, is_new = self.store.add(entry)
            report.added += int(is_new)
            report.merged += int(not is_new)
        return report

    def guided_correct(self, entry: MemoryEntry, task: Task, agent: Agent) -> bool:
        """Does the agent solve the task with this constraint alone as guidance? (cached like any attempt)"""
        trajectory = self.attempt(task, agent, guidance=render_guidance([entry.text]), memory_ids=[entry.id],
                                  category=entry.category, memory_hash=f"verify:{entry.id}")
        return trajectory.correct

    def _verified(self, candidates: list[tuple[MemoryEntry, ContrastPair]], tasks: list[Task],
                  trajectories: list[Trajectory], agents: dict[str, Agent],
                  report: BuildReport) -> list[tuple[MemoryEntry, ContrastPair]]:
        """The candidates that pass two checks, run one model at a time:

        1. the constraint alone lets the agent that failed its source task solve it (it fixes what it was
           written from);
        2. it breaks none of up to `verify_tasks` other build tasks of its category that each build agent
           solved without it (a rule that only restates its own task fails here; the source-task check
           alone rewards such task-specific hints).
        """
        by_id = {task.id: task for task in tasks}
        passed = self._guided_checks(candidates, agents, "verifying constraints on their source tasks", {
            name: [(i, by_id[pair.task_id]) for i, (_, pair) in enumerate(candidates) if pair.negative.agent == name]
            for name in agents
        })
        survivors = [i for i, ok in passed.items() if ok]
        if self.verify_tasks > 0 and survivors:
            categories = dict(zip([t.id for t in tasks], self._map(self.classify, tasks, "classifying build tasks")))
            solved = {(t.agent, t.task_id) for t in trajectories if t.attempt == 0 and t.correct}

            def unbroken(i: int, name: str) -> list[Task]:
                """Up to `verify_tasks` tasks of the candidate's category, other than its source, that `name` solved."""
                entry, pair = candidates[i]
                return [t for t in tasks if t.id != pair.task_id and (name, t.id) in solved
                        and categories[t.id] == entry.category][: self.verify_tasks]

            passed.update(self._guided_checks(candidates, agents, "checking constraints on tasks it solved without them", {
                name: [(i, task) for i in survivors for task in unbroken(i, name)] for name in agents
            }))  # only survivors are checked again, so this update is an AND
        report.unverified = sum(not ok for ok in passed.values())
        return [c for i, c in enumerate(candidates) if passed.get(i)]

    def _guided_checks(self, candidates: list[tuple[MemoryEntry, ContrastPair]], agents: dict[str, Agent], what: str,
                       checks: dict[str, list[tuple[int, Task]]]) -> dict[int, bool]:
        """Each agent solves its (candidate index, task) checks with that candidate alone as guidance, one agent
        after another; a candidate passes when all of its checks pass."""
        passed: dict[int, bool] = {}
        for name, items in checks.items():
            if items:
                verdicts = self._map(lambda c, a=agents[name]: self.guided_correct(candidates[c[0]][0], c[1], a), items,
                                     f"{name} {what} ({len(items)} solves)")
                for (i, _), ok in zip(items, verdicts):
                    passed[i] = passed.get(i, True) and ok
        return passed

    # ----- inference ----------------------------------------------------------------------
    def guidance_for(self, task: Task) -> tuple[str, list[str], str]:
        """(rendered guidance, memory ids, predicted category) for a task."""
        category = self.classify(task)
        entries = retrieve(self.store, task.prompt, category, k=self.k, fallback=self.fallback, domain=self.taxonomy.domain)
        return render_guidance([e.text for e in entries]), [e.id for e in entries], category

    def solve(self, task: Task, agent: Agent, use_memory: bool = True, memory_hash: str | None = None) -> Trajectory:
        """One task with (or without) the shared memory's guidance (`memory_hash`: the store's, if known)."""
        if not use_memory:
            return self.attempt(task, agent)
        guidance, ids, category = self.guidance_for(task)
        return self.attempt(task, agent, guidance=guidance, memory_ids=ids, category=category,
                            memory_hash=memory_hash or self.store.content_hash())

    def evaluate(self, tasks: list[Task], agent: Agent, use_memory: bool = True) -> list[Trajectory]:
        label = "with memory" if use_memory else "no memory"
        memory_hash = None
        if use_memory:  # classify first (one LM), so the solve phase only uses the agent's LM
            self._map(self.classify, tasks, "classifying tasks")
            memory_hash = self.store.content_hash()  # the store does not change while evaluating: hash it once
        return self._map(lambda task: self.solve(task, agent, use_memory, memory_hash), tasks, f"{agent.name} {label}")

    def _map(self, fn, items, description):
        return parallel_map(fn, items, workers=self.workers, description=description, show=self.show_progress)
