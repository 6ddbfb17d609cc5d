"""Where the grid's solves run: threads in this process (`local`, the default) or tasks on a Ray cluster (`ray`).

A unit of work is one solve: a task, the guidance a memory method gives it and the agent that answers.
`local` is `parallel_map` over exactly what the grid always ran. `ray` keeps everything that reads the
run's stores on the driver: it computes each task's guidance there and reads back every result made
before (a resumed grid sends nothing twice), then ships the rest as plain data (the agent's config,
the task, the guidance, the solver's state) in chunks, with at most `max_in_flight` chunks outstanding
(`ray.wait`) and `max_retries` re-runs of a chunk whose worker died. A worker rebuilds the agent's LM
and the solver pipeline from that data once per process and keeps what the pipeline would store in
memory instead; the driver writes those records to the run store under their keys, once per solve,
however often a chunk ran. Ray is imported only when the ray executor is made.
"""

from __future__ import annotations

import copy
import json
import pickle
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from memcollab.errors import ConfigError, MemCollabError, lm_endpoint_error
from memcollab.parallel import Failure, MapResults, TooManyFailures, make_progress, parallel_map
from memcollab.programs.methods import Guidance, solve_with
from memcollab.programs.pipeline import Agent, MemCollab
from memcollab.records import Task, Trajectory, stable_hash
from memcollab.taxonomy import Taxonomy

R = TypeVar("R")
EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'memcollab[scale]'"
#: (key, kind, task_id, agent, payload): one ResultStore.put, made in a worker and written by the driver.
Record = tuple[str, str, str, str, dict[str, Any]]
Solve = Callable[[MemCollab, Task, Agent, Guidance], Trajectory]


class ExecutorError(MemCollabError):
    """The executor cannot run here (no Ray, an agent Ray cannot rebuild) or lost work beyond its retries."""


@dataclass
class Solves(Generic[R]):
    """One batch of solves (a cell's tasks, or an agent's build tasks) and what the caller makes of each."""

    pipeline: MemCollab  # its solver and settings define the solve; its result store keeps the results
    agent: Agent
    tasks: Sequence[Task]
    guide: Callable[[Task], Guidance]
    finish: Callable[[Task, Guidance, Trajectory], R]
    on_error: Callable[[Task, Exception], R]
    solve: Solve = solve_with  # what `local` calls (the grid passes its own, so tests can patch it)
    workers: int = 1
    max_errors: int | None = 0
    show: bool = True
    description: str = "solving"
    cache_dir: Path | None = None  # DSPy's response cache, as the driver configured it
    cache: bool = True


class Executor(Protocol):
    """Runs batches of solves; results in task order, failures as `parallel_map` counts them."""

    name: str
    distributed: bool  # whether solves leave this process (then the grid also ships its build solves)

    def check(self, agents: Sequence[Agent]) -> None: ...

    def run(self, work: Solves[R]) -> list[R]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Today's behaviour: `work.workers` threads in this process, through `parallel_map`."""

    name = "local"
    distributed = False

    def check(self, agents: Sequence[Agent]) -> None:
        pass

    def run(self, work: Solves[R]) -> MapResults[R]:
        def one(task: Task) -> R:
            guidance = work.guide(task)
            return work.finish(task, guidance, work.solve(work.pipeline, task, work.agent, guidance))

        return parallel_map(
            one,
            work.tasks,
            workers=work.workers,
            show=work.show,
            on_error=work.on_error,
            max_errors=work.max_errors,
            description=work.description,
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----- what a Ray worker receives, rebuilds and returns ---------------------------------------------------------
@dataclass(frozen=True)
class WorkerSetup:
    """Plain data a worker rebuilds the driver's solver pipeline from (the same settings, so the same keys)."""

    taxonomy: Taxonomy
    settings: dict[str, Any]
    solver_state: dict[str, Any]
    cache_dir: str | None
    cache: bool

    @classmethod
    def of(cls, work: Solves[Any]) -> WorkerSetup:
        pipeline = work.pipeline
        cache_dir = str(Path(work.cache_dir).resolve()) if work.cache_dir is not None else None
        return cls(pipeline.taxonomy, dict(pipeline.settings), pipeline.solver.dump_state(), cache_dir, work.cache)

    @property
    def key(self) -> str:
        return stable_hash([self.taxonomy.model_dump(), self.settings, self.solver_state, self.cache_dir, self.cache])


@dataclass
class Outcome:
    """One solve as a worker returns it: the trajectory or the error, and the records it would have stored."""

    trajectory: Trajectory | None
    records: list[Record]
    error: Exception | None = None


class RecordingStore:
    """A worker's result store: keeps what the pipeline stores, for the driver to write (the driver's store only)."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}

    def get(self, key: str) -> dict | None:
        record = self.records.get(key)
        return record[4] if record else None

    def put(self, key: str, kind: str, task_id: str, agent: str, payload: dict) -> None:
        self.records[key] = (key, kind, task_id, agent, json.loads(json.dumps(payload, default=str)))

    def take(self) -> list[Record]:
        records, self.records = list(self.records.values()), {}
        return records


#: Per worker process: pipelines by setup key, agents by config, and the DSPy cache already configured.
_WORKER: dict[str, Any] = {}


def _worker_pipeline(setup: WorkerSetup) -> tuple[MemCollab, RecordingStore]:
    """The driver's pipeline rebuilt in this process (once per setup); its store only records."""
    found = _WORKER.get(f"pipeline:{setup.key}")
    if found is not None:
        return found
    from memcollab.lm.factory import configure_dspy_cache
    from memcollab.memory import MemoryStore

    if _WORKER.get("dspy_cache") != (setup.cache_dir, setup.cache):
        configure_dspy_cache(setup.cache_dir, enabled=setup.cache)
        _WORKER["dspy_cache"] = (setup.cache_dir, setup.cache)
    store = RecordingStore()
    settings = setup.settings
    pipeline = MemCollab(
        setup.taxonomy,
        MemoryStore(":memory:"),
        store,  # type: ignore[arg-type]  # get/put is all a solve uses
        k=settings["k"],
        max_turns=settings["max_turns"],
        fallback=settings["fallback"],
        show_progress=False,
    )
    pipeline.solver.load_state(setup.solver_state)  # a compiled solver: its demos and instructions
    pipeline.solver_version, pipeline.settings = settings["solver"], dict(settings)
    _WORKER[f"pipeline:{setup.key}"] = (pipeline, store)
    return pipeline, store


def _worker_agent(config: dict[str, Any], cache: bool) -> Agent:
    """The agent rebuilt from its config in this process (once per config): its LM talks to the same endpoint."""
    key = f"agent:{stable_hash([config, cache])}"
    if key not in _WORKER:
        from memcollab.lm.config import AgentConfig
        from memcollab.lm.factory import build_adapter, build_lm

        spec = AgentConfig.model_validate(config)
        _WORKER[key] = Agent(spec.name, build_lm(spec, cache=cache), config, build_adapter(spec))
    return _WORKER[key]


def _portable(exc: Exception) -> Exception:
    """The error as the driver can receive it (itself if it pickles), with the worker's traceback as a note."""
    note = "in a Ray worker:\n" + "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
        portable = exc
    except Exception:
        portable = lm_endpoint_error(exc) or RuntimeError(f"{type(exc).__name__}: {exc}")
    if hasattr(portable, "add_note"):
        portable.add_note(note)
    return portable


def solve_chunk(setup: WorkerSetup, agent_config: dict[str, Any], items: list[tuple[Task, Guidance]]) -> list[Outcome]:
    """The Ray task: solve each item with the rebuilt pipeline and agent; every item's outcome, failed or not."""
    try:
        pipeline, store = _worker_pipeline(setup)
        agent = _worker_agent(agent_config, setup.cache)
    except Exception as exc:  # e.g. the agent's API key is not set on this node: every item fails alike
        return [Outcome(None, [], _portable(exc)) for _ in items]
    outcomes = []
    for task, guidance in items:
        try:
            trajectory = solve_with(pipeline, task, agent, guidance)
            outcomes.append(Outcome(trajectory, store.take()))
        except Exception as exc:
            store.take()  # nothing of a failed solve is kept: a rerun asks again
            outcomes.append(Outcome(None, [], _portable(exc)))
    return outcomes


# ----- the driver side ------------------------------------------------------------------------------------------
class _Miss(Exception):
    """The result is not in the run store yet: the solve must be shipped."""


class _ProbeStore:
    """The run store, read-only, raising on a miss: `solve_with` on it answers from the store or stops."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get(self, key: str) -> dict | None:
        found = self.store.get(key)
        if found is None:
            raise _Miss(key)
        return found

    def put(self, *args: Any) -> None:
        raise AssertionError("a probe never solves")


def shippable_config(agent: Agent) -> dict[str, Any]:
    """The agent's config if a worker can rebuild the very same agent from it; ExecutorError otherwise."""
    from pydantic import ValidationError

    from memcollab.lm.config import AgentConfig

    try:
        spec = AgentConfig.model_validate(agent.config)
    except ValidationError:
        spec = None
    if spec is None or spec.model_dump(mode="json") != agent.config:
        raise ExecutorError(
            f"--executor ray rebuilds agents from their configs in the workers; agent '{agent.name}' was made "
            "in-process without one: use --executor local"
        )
    if spec.backend == "local" or (spec.backend == "server" and not spec.api_base):
        raise ExecutorError(
            f"agent '{agent.name}' is an embedded model (backend {spec.backend}): every Ray worker would load its "
            "own copy; serve it (backend server with api_base) or use --executor local"
        )
    return agent.config


class RayExecutor:
    """Solves as Ray tasks: bounded in flight, retried on worker loss, results written by the driver only."""

    name = "ray"
    distributed = True

    def __init__(
        self,
        address: str | None = None,
        *,
        max_in_flight: int | None = None,
        chunk_size: int = 1,
        max_retries: int = 3,
        num_cpus: int | None = None,
    ) -> None:
        self.ray = import_ray()
        self.started = False
        if not self.ray.is_initialized():
            options: dict[str, Any] = {"logging_level": "warning"}
            if address is None:  # a new local cluster for this run (never one `ray start` left on this machine)
                options.update(include_dashboard=False, num_cpus=num_cpus)
            try:
                self.ray.init(address=address or "local", **options)
            except ConnectionError as exc:
                raise ExecutorError(
                    f"cannot join the Ray cluster at {address}: {' '.join(str(exc).split())} (is it up? `ray status`; "
                    "a cluster with token authentication also needs RAY_AUTH_MODE=token here)"
                ) from None
            self.started = True
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = max_in_flight or 2 * max(cpus, 1)  # each CPU busy, the next chunk already queued
        self.chunk_size = max(chunk_size, 1)
        self.max_retries = max_retries
        self._remote = self.ray.remote(num_cpus=1, max_retries=max_retries)(solve_chunk)

    def check(self, agents: Sequence[Agent]) -> None:
        for agent in agents:
            shippable_config(agent)

    def run(self, work: Solves[R]) -> MapResults[R]:
        tasks = list(work.tasks)
        config = shippable_config(work.agent)
        results: MapResults[R] = MapResults([None] * len(tasks))  # type: ignore[list-item]

        def failed(index: int, exc: Exception) -> None:
            results.failures.append(Failure(index, tasks[index], exc))
            if work.max_errors is not None and results.failed > work.max_errors:
                raise TooManyFailures(results.failures, len(tasks)) from results.failures[0].error
            results[index] = work.on_error(tasks[index], exc)

        prepared = parallel_map(
            lambda task: self._prepare(work, task), tasks, workers=work.workers, show=False, max_errors=None
        )
        with make_progress() if work.show else nullcontext(None) as progress:
            bar = progress.add_task(work.description, total=len(tasks)) if progress is not None else None

            def advance(n: int = 1) -> None:
                if progress is not None and bar is not None:
                    progress.advance(bar, n)

            for failure in prepared.failures:  # guidance itself failed (its classification, say)
                failed(failure.index, failure.error)
                advance()
            todo: list[int] = []
            for index, ready in enumerate(prepared):
                if ready is None:
                    continue
                guidance, cached = ready
                if cached is None:
                    todo.append(index)
                else:
                    results[index] = work.finish(tasks[index], guidance, cached)
                    advance()
            chunks = [todo[i : i + self.chunk_size] for i in range(0, len(todo), self.chunk_size)]
            setup = self.ray.put(WorkerSetup.of(work))
            with closing(self._dispatch(setup, config, chunks, tasks, prepared, work.description)) as finished:
                for chunk, outcomes in finished:
                    for index, outcome in zip(chunk, outcomes):
                        for record in outcome.records:  # the only write of this solve's results
                            work.pipeline.results.put(*record)
                        if outcome.error is not None:
                            failed(index, outcome.error)
                        else:
                            assert outcome.trajectory is not None
                            results[index] = work.finish(tasks[index], prepared[index][0], outcome.trajectory)
                    advance(len(chunk))
        return results

    @staticmethod
    def _prepare(work: Solves[Any], task: Task) -> tuple[Guidance, Trajectory | None]:
        """The task's guidance and its result if the run store has it (then nothing is shipped)."""
        guidance = work.guide(task)
        probe = copy.copy(work.pipeline)
        probe.results = _ProbeStore(work.pipeline.results)  # type: ignore[assignment]
        try:
            return guidance, solve_with(probe, task, work.agent, guidance)
        except _Miss:
            return guidance, None

    def _dispatch(
        self,
        setup: Any,
        config: dict[str, Any],
        chunks: list[list[int]],
        tasks: list[Task],
        prepared: Sequence[Any],
        description: str,
    ) -> Iterator[tuple[list[int], list[Outcome]]]:
        """Each chunk's outcomes as its task finishes, with at most `max_in_flight` tasks submitted at once."""
        ray, queue, pending = self.ray, list(reversed(chunks)), {}
        try:
            while queue or pending:
                while queue and len(pending) < self.max_in_flight:
                    chunk = queue.pop()
                    items = [(tasks[i], prepared[i][0]) for i in chunk]
                    pending[self._remote.remote(setup, config, items)] = chunk
                done, _ = ray.wait(list(pending), num_returns=1)
                chunk = pending.pop(done[0])
                try:
                    outcomes = ray.get(done[0])
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                    raise ExecutorError(
                        f"{description}: a Ray worker died on every one of {self.max_retries + 1} tries of "
                        f"{len(chunk)} task(s); finished results are stored: a rerun resumes"
                    ) from exc
                yield chunk, outcomes
        finally:
            for ref in pending:  # stopped early (an error, too many failures, Ctrl-C): drop the rest
                ray.cancel(ref)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_ray() -> Any:
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_executor(name: str, address: str | None = None) -> None:
    """One line for an executor that cannot be made (an unknown name, an address without Ray, no Ray); starts nothing."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor '{name}'; choose one of: {', '.join(EXECUTORS)}")
    if address is not None and name != "ray":
        raise ConfigError("--ray-address needs --executor ray")
    if name == "ray":
        import_ray()


def make_executor(name: str, address: str | None = None, **options: Any) -> LocalExecutor | RayExecutor:
    """The executor called `name` (`local` or `ray`); `address` joins an existing Ray cluster (else a local one)."""
    check_executor(name, address)
    return RayExecutor(address, **options) if name == "ray" else LocalExecutor()
