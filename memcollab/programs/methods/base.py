"""One interface for every way of giving an agent experience: build from trajectories, then guidance per task.

A `MemoryMethod` is built once from the build tasks and what its memory source did on them (the
trajectories, and the contrast pairs among them), then answers `guidance(task)` with a `Guidance`: the
rule list the solver places before the problem, the ids of the memories it used, the category it
predicted, and optionally worked examples that the solver receives as real DSPy demos. Every method
runs behind the same Solver, so two methods differ only in what they put into its prompt.

A method's spec separates what is *built* (`build_fields`: two cells that agree on them share one
memory) from how it is *used* (`k`, the gate): `variant(spec)` is a view of the same built memory with
other guidance settings, so the k ablation never rebuilds anything.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field

from memcollab.memory import MemoryStore, rank, retrieve
from memcollab.memory.clustering import refine_taxonomy
from memcollab.memory.results import ResultStore
from memcollab.parallel import parallel_map
from memcollab.programs.pipeline import Agent, MemCollab
from memcollab.programs.solver import render_guidance
from memcollab.records import MemoryEntry, Task, Trajectory, stable_hash
from memcollab.taxonomy import Taxonomy

#: Part of the key of every LM result a method makes itself (reflections, curations, group distillations):
#: bump it when one of their prompts changes.
METHODS_VERSION = "methods-v1"

#: The pipeline's own `k` in every method's pipeline: it is part of trajectory keys, so it must not vary
#: with a method's k (k only changes which memories are shown, never how build trajectories are made).
PIPELINE_K = 3

Kind = Literal["none", "reflect", "memcollab", "category", "examples", "cheatsheet", "placebo"]
Gate = Literal["category", "none", "merged"]


class MethodSpec(BaseModel):
    """A memory method as a grid cell names it: its kind, its memory source and its settings.

    `source` is relative to the target agent: `self`, `peer` (the agent of the grid's pair that is not
    the target), `pair`, `xfamily`, `none`, or agent names joined by `+` (`strong+other`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Kind
    source: str = "pair"
    k: int = Field(default=3, ge=1, le=50)
    gate: Gate = "category"  # category: the predicted category's top-k; none: top-k of all; merged: of its cluster
    fallback: Literal["none", "domain", "all"] = "none"
    verify: bool = False
    verify_tasks: int = Field(default=3, ge=0)
    distill_examples: bool = False
    reflector: Literal["distiller", "source"] = "distiller"
    group_size: int = Field(default=4, ge=2, le=8)
    min_group: int = Field(default=2, ge=1, le=8)
    max_items: int = Field(default=8, ge=1, le=30)
    curate_on: Literal["all", "solved"] = "solved"
    rules_from: str | None = None  # placebo: the memory JSONL its off-domain rules come from

    def memory_settings(self) -> dict[str, Any]:
        """The settings that change what is built (from the kind's class): the memory's identity, with the kind."""
        from memcollab.programs.methods.registry import method_class

        return {"kind": self.kind, **{name: getattr(self, name) for name in method_class(self.kind).build_fields}}


@dataclass(frozen=True)
class Guidance:
    """What a method gives the solver for one task."""

    text: str = ""
    memory_ids: tuple[str, ...] = ()
    category: str = ""
    demos: tuple[dspy.Example, ...] = ()

    @property
    def key(self) -> str:
        """Hash of what the solver sees ("" for nothing): equal prompts share one cached LM result."""
        if not self.text and not self.demos:
            return ""
        return stable_hash([self.text, [dict(demo.items()) for demo in self.demos]])


@dataclass
class BuildInputs:
    """What a memory is built from: the build tasks, the source agents and what they did on the tasks
    (answered attempts only: a task whose LM call failed is not a wrong attempt to learn from)."""

    tasks: list[Task]
    agents: list[Agent]
    trajectories: list[Trajectory]
    samples: int = 0
    temperature: float = 0.7


@dataclass
class MethodContext:
    """The run-wide pieces every method builds and answers with (one taxonomy, one result store, the roles)."""

    taxonomy: Taxonomy
    results: ResultStore
    distiller: Agent | None = None
    classifier: Agent | None = None
    max_turns: int = 3
    workers: int = 1
    show_progress: bool = False
    gold_categories: bool = False
    classifier_program: Path | None = None
    solver_program: Path | None = None
    #: Where a built memory's store lives, from (store name, its file in the workdir): the file by default; a grid
    #: with a store_url gives a schema of that database (`memory.backends.store_target`).
    store_target: Callable[[str, Path], str | Path] = field(default=lambda _name, file: file, repr=False)
    _shared: MemCollab | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pipeline(self, store: MemoryStore | None = None, **options: Any) -> MemCollab:
        """A MemCollab pipeline over `store` with the run's fixed settings: every pipeline made here gives a
        trajectory the same key, so methods share the build trajectories and the no-memory results."""
        return MemCollab(
            self.taxonomy,
            store if store is not None else MemoryStore(":memory:"),
            self.results,
            distiller=self.distiller,
            classifier_agent=self.classifier,
            k=PIPELINE_K,
            max_turns=self.max_turns,
            workers=self.workers,
            use_gold_categories=self.gold_categories,
            show_progress=self.show_progress,
            classifier_program=self.classifier_program,
            solver_program=self.solver_program,
            **options,
        )

    @property
    def shared(self) -> MemCollab:
        """The pipeline that classifies tasks and solves them for every method (created once)."""
        with self._lock:
            if self._shared is None:
                self._shared = self.pipeline()
            return self._shared

    def classify(self, task: Task) -> str:
        return self.shared.classify(task)

    def map(self, fn: Any, items: list[Any], description: str) -> list[Any]:
        """`fn` over `items` with the run's workers and progress display."""
        return parallel_map(fn, items, workers=self.workers, description=description, show=self.show_progress)


class MemoryMethod(ABC):
    """Build once, then answer `guidance(task)`; `entries()`/`records()` say what the memory holds."""

    #: MethodSpec fields that change what `build` makes (see `MethodSpec.memory_settings`).
    build_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether `guidance` needs the task's predicted category (then `prepare` classifies first).
    uses_category: ClassVar[bool] = False

    def __init__(self, spec: MethodSpec, ctx: MethodContext, workdir: Path | None = None) -> None:
        self.spec = spec
        self.ctx = ctx
        self.workdir = workdir
        self.report: dict[str, float] = {}

    @abstractmethod
    def build(self, inputs: BuildInputs) -> dict[str, float]:
        """Make the memory; returns counts for the run summary (what was proposed, stored, skipped)."""

    @abstractmethod
    def guidance(self, task: Task) -> Guidance:
        """What the solver gets for `task` (thread-safe: called from the evaluation's workers)."""

    def prepare(self, tasks: list[Task]) -> None:
        """Work before the solver runs: classify every task first, so one model decodes at a time."""
        if self.uses_category and self.spec.gate != "none":
            self.ctx.map(self.ctx.classify, tasks, "classifying tasks")

    def records(self) -> list[dict[str, Any]]:
        """The memory as JSON rows (the JSONL artefact)."""
        return [entry.model_dump() for entry in self.entries()]

    def entries(self) -> list[MemoryEntry]:
        return []

    def content_hash(self) -> str:
        return stable_hash(self.records())

    def export(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            for row in self.records():
                handle.write(json.dumps(row, default=str) + "\n")
        return path

    def variant(self, spec: MethodSpec) -> MemoryMethod:
        """The same built memory with other guidance settings (k, gate); the build settings must agree."""
        if spec.memory_settings() != self.spec.memory_settings():
            raise ValueError(f"{spec.name} builds another memory than {self.spec.name}; build it separately")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.spec = spec
        return view

    def close(self) -> None:  # noqa: B027  (a no-op for methods that hold no file)
        """Release files (a store); a no-op for methods without one."""


class StoreMethod(MemoryMethod):
    """A method whose memory is constraints in a MemoryStore, shown as the top-k of the task's category.

    The gate is the ablation axis: `category` is the paper's (the predicted category's top-k), `none` ranks
    every memory by similarity alone, `merged` ranks the memories of every category clustered with the
    predicted one by their error-type profiles (`memory.clustering.refine_taxonomy`, the paper's Fig. 5).
    """

    uses_category = True

    def __init__(self, spec: MethodSpec, ctx: MethodContext, workdir: Path | None = None) -> None:
        super().__init__(spec, ctx, workdir)
        path: Path | str = ":memory:"
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            path = ctx.store_target(f"memory_{workdir.name}", workdir / "memory.sqlite")
            if isinstance(path, Path):
                for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    stale.unlink(missing_ok=True)  # rebuilt from cached LM results every time: no half-built leftovers
        self.store = MemoryStore(path)
        if workdir is not None and not isinstance(path, Path):
            self.store.clear()  # a database schema: emptied instead of deleted, for the same reason
        self._merged: dict[str, str] | None = None

    def entries(self) -> list[MemoryEntry]:
        return self.store.entries()

    def content_hash(self) -> str:
        return self.store.content_hash()

    def merged_categories(self) -> dict[str, str]:
        """Category -> the label of its error-type cluster (computed once, from the built memory)."""
        if self._merged is None:
            self._merged = refine_taxonomy(self.store) if len(self.store) else {}
        return self._merged

    def prepare(self, tasks: list[Task]) -> None:
        if self.spec.gate == "merged":
            self.merged_categories()
        super().prepare(tasks)

    def guidance(self, task: Task) -> Guidance:
        spec = self.spec
        category = ""
        if spec.gate == "none":
            entries = [e for e, _ in rank(task.prompt, self.store.entries(), spec.k)]
        else:
            category = self.ctx.classify(task)
            if spec.gate == "merged":
                merged = self.merged_categories()
                label = merged.get(category)
                pool = [e for e in self.store.entries() if label is not None and merged.get(e.category) == label]
                entries = [e for e, _ in rank(task.prompt, pool, spec.k)]
            else:
                entries = retrieve(
                    self.store, task.prompt, category, k=spec.k, fallback=spec.fallback, domain=self.ctx.taxonomy.domain
                )
        return Guidance(render_guidance([e.text for e in entries]), tuple(e.id for e in entries), category)

    def add(self, entries: list[MemoryEntry]) -> tuple[int, int]:
        """Store entries in order (near-duplicates fold into support); returns (added, merged)."""
        added = 0
        for entry in entries:
            added += int(self.store.add(entry)[1])
        return added, len(entries) - added

    def close(self) -> None:
        self.store.close()
