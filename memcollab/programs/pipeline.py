"""The MemCollab pipeline: collect trajectories, contrast, distill into a shared memory, solve with it.

`build(tasks, agents)` runs every agent on the memory-building tasks, pairs a success
with a failure of another agent on the same task, and distills each pair into abstract
constraints stored with their category, error type and provenance; with `verify=True` a
constraint is stored only if it lets the failing agent solve its source task and breaks none
of a few build tasks of its category that the agents solved without it (beyond the paper: a
grounding check against rules that fix nothing or only restate their task). `solve(task, agent)`
classifies the task, retrieves the top-k memories of that category and solves with them.
Every LM result is persisted under a key the moment it exists, so a rerun resumes.

An LM call that still fails after the LM's retries (the endpoint is down, hung or overloaded) does not
stop the run: the task is recorded as an `lm_error` (evaluation and build trajectories), its pair is
not distilled, its check does not pass, and nothing of it is persisted, so a rerun asks again. More
than `max_errors` such failures in one pipeline stop it with one line. Any other exception is a bug
and raises with its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dspy

from memcollab.errors import LMEndpointError, lm_endpoint_error
from memcollab.memory import MemoryStore, retrieve
from memcollab.memory.results import ResultStore, record_key
from memcollab.parallel import TooManyFailures, parallel_map
from memcollab.programs.calls import is_lm_error, is_lm_failure, lm_error_trajectory
from memcollab.programs.classifier import Classifier
from memcollab.programs.distiller import Distiller
from memcollab.programs.pairs import PairStats, build_pairs
from memcollab.programs.solver import Solver, render_guidance
from memcollab.records import ContrastPair, MemoryEntry, Task, Trajectory, stable_hash
from memcollab.signatures.distill import Constraint
from memcollab.taxonomy import Taxonomy

#: Part of every result key: bump when a program's prompts change, so no stale LM result is replayed.
PROGRAM_VERSION = "memcollab-v2"  # v2: plain-chat solver signatures (NaturalAdapter)

#: LM calls that may fail (after retries) in one pipeline before it stops; RunConfig.max_errors sets it.
DEFAULT_MAX_ERRORS = 10

T = TypeVar("T")
R = TypeVar("R")


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
    lm_errors: int = 0  # LM calls that failed after retries (solves, classifications, distillations, checks)


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
        max_errors: int | None = DEFAULT_MAX_ERRORS,
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
        self.max_errors = max_errors  # None: no limit
        self.lm_errors = 0  # LM calls that failed after retries, over every step of this pipeline
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
        self.settings = {
            "k": k,
            "max_turns": max_turns,
            "fallback": fallback,
            "taxonomy": taxonomy.name,
            "solver": self.solver_version,
        }

    # ----- trajectories -------------------------------------------------------------------
    def attempt(
        self,
        task: Task,
        agent: Agent,
        attempt: int = 0,
        temperature: float | None = None,
        guidance: str = "",
        memory_ids: list[str] | None = None,
        category: str = "",
        memory_hash: str = "",
    ) -> Trajectory:
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

    def collect(
        self, tasks: list[Task], agents: list[Agent], samples: int = 0, temperature: float = 0.7
    ) -> list[Trajectory]:
        """Every agent solves every task at temperature 0; tasks without a contrast get up to `samples` extra tries."""
        # One agent at a time: two embedded models decoding at once would fight over the same cores.
        # An LM failure yields an `lm_error` trajectory: counted, never paired (no answer is not a wrong answer).
        trajectories: list[Trajectory] = []
        for agent in agents:
            trajectories += self._map(
                lambda task, a=agent: self.attempt(task, a),
                tasks,
                f"{agent.name} solving build tasks",
                on_lm_error=lambda task, exc, a=agent: lm_error_trajectory(task, a.name, exc),
            )
        for attempt in range(1, samples + 1):
            paired = {pair.task_id for pair in build_pairs(answered(trajectories))[0]}
            retry = [t for t in tasks if t.id not in paired]
            if not retry:
                break
            for agent in agents:
                trajectories += self._map(
                    lambda task, a=agent, n=attempt: self.attempt(task, a, attempt=n, temperature=temperature),
                    retry,
                    f"{agent.name} sampling attempt {attempt} ({len(retry)} tasks without a contrast)",
                    on_lm_error=lambda task, exc, a=agent, n=attempt: lm_error_trajectory(task, a.name, exc, attempt=n),
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
        key = record_key(
            "category",
            task.id,
            agent.config,
            PROGRAM_VERSION,
            {"taxonomy": self.taxonomy.name, "gold": self.classifier.use_gold, "program": self.classifier_version},
        )
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
            made_at = self.results.made_at(key)  # a resumed build dates its entries as the first one did
            return self.distiller.entries_for(constraints, pair, task, category, made_at), len(constraints)
        with self.distiller_agent.context():
            prediction = self.distiller(pair=pair, task=task, category=category)
        self.results.put(
            key,
            "distill",
            task.id,
            self.distiller_agent.name,
            {
                "constraints": [c.model_dump() for c in prediction.constraints],
                "entries": [e.model_dump() for e in prediction.entries],
                "proposed": prediction.proposed,
            },
        )
        return prediction.entries, prediction.proposed

    def build(self, tasks: list[Task], agents: list[Agent], samples: int = 0, temperature: float = 0.7) -> BuildReport:
        """Collect, pair, distill and store; returns what happened at each step."""
        errors_before = self.lm_errors
        trajectories = self.collect(tasks, agents, samples=samples, temperature=temperature)
        pairs, stats = build_pairs(answered(trajectories))
        by_id = {task.id: task for task in tasks}
        report = BuildReport(trajectories=trajectories, pairs=pairs, pair_stats=stats)
        for agent in agents:
            own = [t for t in answered(trajectories) if t.agent == agent.name and t.attempt == 0]
            report.accuracy_by_agent[agent.name] = sum(t.correct for t in own) / max(len(own), 1)

        distilled = self._map(
            lambda pair: self.distill_pair(pair, by_id[pair.task_id]),
            pairs,
            "distilling contrast pairs",
            on_lm_error=lambda pair, exc: ([], 0),
        )
        report.proposed = sum(proposed for _, proposed in distilled)
        candidates = [(entry, pair) for pair, (entries, _) in zip(pairs, distilled) for entry in entries]
        if self.verify:
            candidates = self._verified(
                candidates, tasks, trajectories, {agent.name: agent for agent in agents}, report
            )
        for entry, _ in candidates:
            _, is_new = self.store.add(entry)
            report.added += int(is_new)
            report.merged += int(not is_new)
        report.lm_errors = self.lm_errors - errors_before
        return report

    def guided_correct(self, entry: MemoryEntry, task: Task, agent: Agent) -> bool:
        """Does the agent solve the task with this constraint alone as guidance? (cached like any attempt)"""
        trajectory = self.attempt(
            task,
            agent,
            guidance=render_guidance([entry.text]),
            memory_ids=[entry.id],
            category=entry.category,
            memory_hash=f"verify:{entry.id}",
        )
        return trajectory.correct

    def _verified(
        self,
        candidates: list[tuple[MemoryEntry, ContrastPair]],
        tasks: list[Task],
        trajectories: list[Trajectory],
        agents: dict[str, Agent],
        report: BuildReport,
    ) -> list[tuple[MemoryEntry, ContrastPair]]:
        """The candidates that pass two checks, run one model at a time:

        1. the constraint alone lets the agent that failed its source task solve it (it fixes what it was
           written from);
        2. it breaks none of up to `verify_tasks` other build tasks of its category that each build agent
           solved without it (a rule that only restates its own task fails here; the source-task check
           alone rewards such task-specific hints).
        """
        by_id = {task.id: task for task in tasks}
        passed = self._guided_checks(
            candidates,
            agents,
            "verifying constraints on their source tasks",
            {
                name: [
                    (i, by_id[pair.task_id]) for i, (_, pair) in enumerate(candidates) if pair.negative.agent == name
                ]
                for name in agents
            },
        )
        survivors = [i for i, ok in passed.items() if ok]
        if self.verify_tasks > 0 and survivors:
            # A task the classifier could not be asked about (LM failure) has no category: it checks nothing.
            categories = dict(
                zip(
                    [t.id for t in tasks],
                    self._map(self.classify, tasks, "classifying build tasks", on_lm_error=lambda task, exc: ""),
                )
            )
            solved = {(t.agent, t.task_id) for t in trajectories if t.attempt == 0 and t.correct}

            def unbroken(i: int, name: str) -> list[Task]:
                """Up to `verify_tasks` tasks of the candidate's category, other than its source, that `name` solved."""
                entry, pair = candidates[i]
                return [
                    t
                    for t in tasks
                    if t.id != pair.task_id and (name, t.id) in solved and categories[t.id] == entry.category
                ][: self.verify_tasks]

            passed.update(
                self._guided_checks(
                    candidates,
                    agents,
                    "checking constraints on tasks it solved without them",
                    {name: [(i, task) for i in survivors for task in unbroken(i, name)] for name in agents},
                )
            )  # only survivors are checked again, so this update is an AND
        report.unverified = sum(not ok for ok in passed.values())
        return [c for i, c in enumerate(candidates) if passed.get(i)]

    def _guided_checks(
        self,
        candidates: list[tuple[MemoryEntry, ContrastPair]],
        agents: dict[str, Agent],
        what: str,
        checks: dict[str, list[tuple[int, Task]]],
    ) -> dict[int, bool]:
        """Each agent solves its (candidate index, task) checks with that candidate alone as guidance, one agent
        after another; a candidate passes when all of its checks pass."""
        passed: dict[int, bool] = {}
        for name, items in checks.items():
            if items:
                verdicts = self._map(
                    lambda c, a=agents[name]: self.guided_correct(candidates[c[0]][0], c[1], a),
                    items,
                    f"{name} {what} ({len(items)} solves)",
                    on_lm_error=lambda c, exc: False,
                )  # a check that could not run does not pass
                for (i, _), ok in zip(items, verdicts):
                    passed[i] = passed.get(i, True) and ok
        return passed

    # ----- inference ----------------------------------------------------------------------
    def guidance_for(self, task: Task) -> tuple[str, list[str], str]:
        """(rendered guidance, memory ids, predicted category) for a task."""
        category = self.classify(task)
        entries = retrieve(
            self.store, task.prompt, category, k=self.k, fallback=self.fallback, domain=self.taxonomy.domain
        )
        return render_guidance([e.text for e in entries]), [e.id for e in entries], category

    def solve(self, task: Task, agent: Agent, use_memory: bool = True, memory_hash: str | None = None) -> Trajectory:
        """One task with (or without) the shared memory's guidance (`memory_hash`: the store's, if known)."""
        if not use_memory:
            return self.attempt(task, agent)
        guidance, ids, category = self.guidance_for(task)
        return self.attempt(
            task,
            agent,
            guidance=guidance,
            memory_ids=ids,
            category=category,
            memory_hash=memory_hash or self.store.content_hash(),
        )

    def evaluate(self, tasks: list[Task], agent: Agent, use_memory: bool = True) -> list[Trajectory]:
        """One trajectory per task, in order; a task whose LM calls failed after retries gets an `lm_error` one."""
        label = "with memory" if use_memory else "no memory"
        memory_hash = None
        unclassified: dict[str, Exception] = {}
        if use_memory:  # classify first (one LM), so the solve phase only uses the agent's LM
            categories = self._map(self.classify, tasks, "classifying tasks", on_lm_error=lambda task, exc: exc)
            unclassified = {t.id: c for t, c in zip(tasks, categories) if isinstance(c, Exception)}
            memory_hash = self.store.content_hash()  # the store does not change while evaluating: hash it once

        def solve(task: Task) -> Trajectory:
            if task.id in unclassified:  # already counted: no memory can be chosen, so no solve either
                return lm_error_trajectory(task, agent.name, unclassified[task.id])
            return self.solve(task, agent, use_memory, memory_hash)

        return self._map(
            solve,
            tasks,
            f"{agent.name} {label}",
            on_lm_error=lambda task, exc: lm_error_trajectory(task, agent.name, exc),
        )

    def _map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        description: str,
        on_lm_error: Callable[[T, Exception], R] | None = None,
    ) -> list[R]:
        """`parallel_map` under the pipeline's error budget.

        An item whose LM call failed after retries gets `on_lm_error(item, exc)` (None without it) and
        counts against `max_errors`, over all maps of this pipeline; one failure more stops the run
        with one line (finished results are stored: a rerun retries only the rest). Any other
        exception is a bug: it raises as it is, traceback and all.
        """
        budget = None if self.max_errors is None else max(self.max_errors - self.lm_errors, 0)

        def failed(item: T, exc: Exception) -> R:
            if not is_lm_failure(exc):
                raise exc
            self.lm_errors += 1
            return on_lm_error(item, exc) if on_lm_error is not None else None  # type: ignore[return-value]

        try:
            return parallel_map(
                fn,
                items,
                workers=self.workers,
                description=description,
                show=self.show_progress,
                max_errors=budget,
                on_error=failed,
            )
        except TooManyFailures as stop:
            bugs = [f.error for f in stop.failures if not is_lm_failure(f.error)]
            if not bugs:
                self.lm_errors += 1  # the failure that broke the budget never reached `failed`
                calls = f"{self.lm_errors} LM call{'s' if self.lm_errors != 1 else ''}"
                raise LMEndpointError(
                    f"{calls} failed after retries, more than --max-errors {self.max_errors} allows; last: "
                    f"{lm_endpoint_error(stop.failures[-1].error)}. Finished results are stored: a rerun retries "
                    "only the rest"
                ) from stop
        raise bugs[0]  # outside the handler, so the bug keeps its own context and traceback


def answered(trajectories: list[Trajectory]) -> list[Trajectory]:
    """The trajectories the LM actually produced (no `lm_error` markers)."""
    return [t for t in trajectories if not is_lm_error(t)]
