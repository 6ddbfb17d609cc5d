"""Experiments as configurations over the same few steps: build memory, evaluate, or both (`run`).

A `RunConfig` (`experiments.config`) names the benchmark, the slices, the agents and the
settings; `preflight` (`experiments.preflight`) validates all of it before anything is
written or any LM is called; an `Experiment` then drives the MemCollab pipeline, writes
per-task results and a summary into the run directory, and logs everything to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memcollab.benchmarks import get_benchmark, load_source, taxonomy_for
from memcollab.errors import ConfigError, output_error
from memcollab.experiments.config import RunConfig
from memcollab.experiments.metrics import EvalSummary, summarize, task_rows
from memcollab.experiments.preflight import (
    Plan,
    Role,
    build_roles,
    check_agents,
    check_overlap,
    check_run_dir,
    eval_classifier,
    load_role,
    safe_name,
)
from memcollab.experiments.step_times import StepTimes
from memcollab.parallel import console as progress_console
from memcollab.parallel import parallel_map
from memcollab.records import Task, stable_hash

#: RunConfig fields that change how a run is done or recorded, not what it makes (kept out of step fingerprints).
_BOOKKEEPING = {"workers", "run_dir", "tracking_uri", "track", "max_errors", "store_url", "data_dir"}

__all__ = ["Experiment", "RunConfig", "build_agent_handles", "check_overlap", "prepare_agents"]


def build_agent_handles(configs: dict[str, Any], cache: bool) -> dict[str, Any]:
    """Run-time agents (a DSPy LM and adapter each) from checked agent configs. Starts servers; calls no LM."""
    from memcollab.lm.factory import build_adapter, build_lm
    from memcollab.programs.pipeline import Agent

    return {
        name: Agent(
            name=agent.name,
            lm=build_lm(agent, cache=cache),
            config=agent.model_dump(mode="json"),
            adapter=build_adapter(agent),
        )
        for name, agent in configs.items()
    }


def prepare_agents(names: list[str], cfg: RunConfig, announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Resolve, check (fail fast, before any LM call) and build every named agent once."""
    return build_agent_handles(check_agents(names, cfg, announce), cfg.cache)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")


class Experiment:
    """A configured run: owns the stores, the agents and the tracker for its lifetime.

    Give it the `Plan` of `preflight` so it reuses the validated tasks and agent configs;
    without one it loads and checks them itself when a step needs them. Creating an
    Experiment creates the run directory, so validate first.
    """

    def __init__(self, cfg: RunConfig, plan: Plan | None = None) -> None:
        from memcollab.lm.factory import configure_dspy_cache
        from memcollab.memory import MemoryStore
        from memcollab.memory.results import ResultStore
        from memcollab.tracking import Tracker, default_tracking_uri
        from memcollab.tracking.mlflow_tracking import local_artifacts

        self.cfg = cfg
        self.plan = plan or Plan(cfg)
        check_run_dir(cfg.run_dir)
        try:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(cfg.run_dir, exc) from None
        configure_dspy_cache(cfg.run_dir / "dspy_cache", enabled=cfg.cache)
        self.taxonomy = taxonomy_for(cfg.benchmark)
        self.results = ResultStore(cfg.store("results"))
        # Evaluating a given memory only reads it: a user's file must keep its bytes (no schema, no WAL switch).
        evaluate_only = not cfg.build_agents and cfg.memory_path is not None and str(cfg.memory_path) != ":memory:"
        self.store = MemoryStore(cfg.memory_file, read_only=evaluate_only)
        uri = cfg.tracking_uri or default_tracking_uri(cfg.run_dir)
        self.tracker = Tracker(
            uri,
            experiment=f"memcollab-{cfg.benchmark}",
            enabled=cfg.track,
            artifact_location=local_artifacts(uri, cfg.run_dir),
        )
        self.agents: dict[str, Any] = {}
        self.summaries: list[EvalSummary] = []
        self.steps = StepTimes(cfg.run_dir / "summary.json")  # read now, before this invocation rewrites it
        self.announce: Callable[[str], None] = progress_console.print

    def close(self) -> None:
        """Close the stores and stop any llama-server this run started (no orphan processes)."""
        self.results.close()
        self.store.close()
        server = sys.modules.get("memcollab.lm.server")
        if server is not None:
            server.shutdown_all()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is not None and self.steps.timings:  # Ctrl-C or a failure: the time so far still counts
                with contextlib.suppress(Exception):  # ... but never in place of the failure itself
                    self.write_summary({"stopped": exc_type.__name__}, log=False)
        finally:
            self.close()

    def pipeline(self, distiller: str | None, classifier: str | None):
        from memcollab.programs.pipeline import MemCollab

        return MemCollab(
            self.taxonomy,
            self.store,
            self.results,
            distiller=self.agents.get(distiller) if distiller else None,
            classifier_agent=self.agents.get(classifier) if classifier else None,
            k=self.cfg.k,
            max_turns=self.cfg.max_turns,
            workers=self.cfg.workers,
            fallback=self.cfg.fallback,
            use_gold_categories=self.cfg.gold_categories,
            classifier_program=self.cfg.classifier_program,
            solver_program=self.cfg.solver_program,
            verify=self.cfg.verify_memory,
            verify_tasks=self.cfg.verify_tasks,
            distill_examples=self.cfg.distill_examples,
            max_errors=self.cfg.max_errors,
        )

    def ensure_agents(self, names: list[str]) -> None:
        """Build every named agent not built yet, from the plan's checked configs (checking any it lacks)."""
        missing = [n for n in dict.fromkeys(names) if n and n not in self.agents]
        if not missing:
            return
        unchecked = [n for n in missing if n not in self.plan.agents]
        if unchecked:
            self.plan.agents.update(check_agents(unchecked, self.cfg, announce=self.announce))
        self.agents.update(build_agent_handles({n: self.plan.agents[n] for n in missing}, self.cfg.cache))

    def tasks(self, role: Role) -> list[Task]:
        """The run's build or eval tasks (the plan's, else loaded now)."""
        if role not in self.plan.tasks:
            self.plan.tasks[role] = load_role(self.cfg, role)
        return self.plan.tasks[role]

    # ----- steps ---------------------------------------------------------------------------
    def build_memory(self):
        cfg = self.cfg
        distiller, classifier = build_roles(cfg)
        if not distiller:
            raise ConfigError("building memory needs at least one build agent (--build-agents)")
        tasks = self.tasks("build")
        self.ensure_agents([*cfg.build_agents, distiller, classifier])
        if len(self.store):
            self.announce(
                f"{self.store.path} already holds {len(self.store)} memories: this build adds to them "
                "(a new --run-dir or --memory starts an empty memory)"
            )
        fingerprint = self._fingerprint("build", [*cfg.build_agents, distiller, classifier], tasks)
        with self.steps.timed("build_s", fingerprint) as seconds:
            pipeline = self.pipeline(distiller, classifier)
            for name in ("solver", "classifier", "distiller"):
                self.tracker.log_program(getattr(pipeline, name), name)
            report = pipeline.build(
                tasks,
                [self.agents[n] for n in cfg.build_agents],
                samples=cfg.samples,
                temperature=cfg.sample_temperature,
            )
        if not report.lm_errors:  # unanswered calls are asked again by the next invocation: real work
            self.steps.complete("build_s", fingerprint)
        rows = task_rows(report.trajectories, "build")
        _write_jsonl(cfg.run_dir / "build_trajectories.jsonl", rows)
        self.store.export_jsonl(cfg.run_dir / "memory.jsonl")
        self.tracker.log_metrics(
            {
                "build.tasks": len(tasks),
                "build.pairs": len(report.pairs),
                "build.both_correct": report.pair_stats.both_correct,
                "build.both_wrong": report.pair_stats.both_wrong,
                "build.constraints_proposed": report.proposed,
                "build.memories_added": report.added,
                "build.memories_merged": report.merged,
                "build.memories_unverified": report.unverified,
                "memory.size": len(self.store),
                "build.seconds": seconds(),
                **{f"build.accuracy.{a}": v for a, v in report.accuracy_by_agent.items()},
            }
        )
        self.tracker.log_table(rows, "build_trajectories.json")
        self.tracker.log_artifact(cfg.run_dir / "memory.jsonl", "memory")
        return report

    def evaluate(
        self,
        agents: list[str],
        conditions: tuple[bool, ...] = (False, True),
        on_step: Callable[[float], None] | None = None,
    ) -> list[EvalSummary]:
        """Every agent on the eval tasks under each condition (without / with memory).

        Per-task results go to `eval_<agent>_<condition>.jsonl`, the agent name made
        file-safe (`safe_name`), so an inline agent never creates subdirectories.
        `on_step(seconds)` follows each agent x condition (the CLI re-estimates the time left).
        """
        cfg = self.cfg
        benchmark = get_benchmark(cfg.benchmark).eval.benchmark
        tasks = self.tasks("eval")
        if True in conditions:
            check_overlap(tasks, self.store.provenance_task_ids(), cfg.allow_overlap)
        classifier = eval_classifier(cfg, agents)
        self.ensure_agents([*agents, classifier])
        pipeline = self.pipeline(None, classifier)
        summaries = []
        for name in agents:
            for use_memory in conditions:
                condition = "memcollab" if use_memory else "no_memory"
                key = f"eval.{name}.{condition}_s"
                fingerprint = self._fingerprint(key, [name, classifier], tasks, memory=use_memory)
                with self.steps.timed(key, fingerprint):
                    trajectories = pipeline.evaluate(tasks, self.agents[name], use_memory=use_memory)
                if on_step is not None:
                    on_step(self.steps.timings[key])
                summary = summarize(trajectories, name, condition, benchmark)
                if not summary.lm_errors:
                    self.steps.complete(key, fingerprint)
                summaries.append(summary)
                rows = task_rows(trajectories, condition)
                _write_jsonl(cfg.run_dir / f"eval_{safe_name(name)}_{condition}.jsonl", rows)
                self.tracker.log_metrics(
                    {k: v for k, v in summary.model_dump().items() if isinstance(v, (int, float))},
                    prefix=f"eval.{name}.{condition}.",
                )
                self.tracker.log_table(rows, f"eval_{safe_name(name)}_{condition}.json")
        # Transfer matrix as the paper means it: rows = memory source (the agents that built it; "none" without
        # memory), columns = target agent.
        source = "+".join(self.store_sources()) or "memory"
        matrix: dict[str, dict[str, float]] = {}
        for s in summaries:
            matrix.setdefault("none" if s.condition == "no_memory" else source, {})[s.agent] = s.accuracy
        self.tracker.log_transfer_matrix(matrix, "transfer")
        self.summaries.extend(summaries)
        return summaries

    def compile_classifier(self, agent: str, optimizer: str, train: int, dev: int, out: Path) -> dict[str, float]:
        """Compile the classifier on the build split's gold categories; compare with zero-shot on the eval split."""
        from memcollab.programs.classifier import Classifier
        from memcollab.programs.compile import (
            classifier_examples,
            compile_classifier,
            evaluate_classifier,
            save_classifier,
        )

        spec = get_benchmark(self.cfg.benchmark)
        trainset = classifier_examples(load_source(spec.build, data_dir=self.cfg.data_dir, limit=train), self.taxonomy)
        devset = classifier_examples(load_source(spec.eval, data_dir=self.cfg.data_dir, limit=dev), self.taxonomy)
        if not trainset or not devset:
            raise ConfigError(f"{self.cfg.benchmark} has no gold categories to compile a classifier on (try math500)")
        self.ensure_agents([agent])
        handle = self.agents[agent]
        with handle.context():
            zero_shot = Classifier(self.taxonomy)
            baseline = evaluate_classifier(zero_shot, devset, self.cfg.workers)
            compiled = compile_classifier(self.taxonomy, trainset, optimizer=optimizer)
            accuracy = evaluate_classifier(compiled, devset, self.cfg.workers)
        save_classifier(compiled, out)
        metrics = {
            "classifier.zero_shot.accuracy": baseline,
            f"classifier.{optimizer}.accuracy": accuracy,
            "classifier.train": len(trainset),
            "classifier.dev": len(devset),
        }
        self.tracker.log_metrics(metrics)
        self.tracker.log_program(zero_shot, "classifier_zero_shot")
        self.tracker.log_program(compiled, f"classifier_{optimizer}")
        return metrics

    def store_sources(self) -> list[str]:
        """The agents whose trajectories built the memory: this run's build agents, else the store's provenance."""
        if self.cfg.build_agents:
            return list(self.cfg.build_agents)
        return self.store.source_agents()

    def compile_solver(self, agent: str, optimizer: str, train: int, dev: int, out: Path) -> dict[str, float]:
        """Compile the solver on the first `train` build tasks; compare with zero-shot on the next `dev` build tasks
        (never on evaluation tasks: whatever is chosen here is chosen on the build split)."""
        from memcollab.programs.compile import compile_solver, save_program
        from memcollab.programs.solver import Solver

        spec = get_benchmark(self.cfg.benchmark)
        tasks = load_source(spec.build, data_dir=self.cfg.data_dir, limit=train + dev)
        trainset, devset = tasks[:train], tasks[train:]
        self.ensure_agents([agent])
        handle = self.agents[agent]
        with handle.context():
            compiled = compile_solver(trainset, optimizer=optimizer, max_demos=train, max_turns=self.cfg.max_turns)
        save_program(compiled, out)
        metrics: dict[str, float] = {"solver.train": len(trainset), "solver.dev": len(devset)}
        if devset:
            for name, program in (("zero_shot", Solver(max_turns=self.cfg.max_turns)), (optimizer, compiled)):
                solved = parallel_map(
                    lambda task, p=program: _solve(p, task, handle),
                    devset,
                    workers=self.cfg.workers,
                    description=f"{name} solver on {len(devset)} dev tasks",
                )
                metrics[f"solver.{name}.accuracy"] = sum(solved) / len(devset)
        self.tracker.log_metrics(metrics)
        self.tracker.log_program(compiled, f"solver_{optimizer}")
        self.tracker.log_artifact(out, "programs")
        return metrics

    def _fingerprint(self, step: str, agents: list[str | None], tasks: list[Task], memory: bool = False) -> str:
        """What a step makes: the run's settings (not bookkeeping such as workers or tracking), its agents'
        configs, its tasks and, for the memory condition, the memory's content."""
        settings = self.cfg.model_dump(mode="json", exclude=_BOOKKEEPING)
        configs = {n: self.agents[n].config for n in agents if n and n in self.agents}
        contents = self.store.content_hash() if memory else ""
        return stable_hash([step, settings, configs, [t.id for t in tasks], contents])

    def write_summary(self, extra: dict[str, Any] | None = None, log: bool = True) -> Path:
        """summary.json of the run dir. Step times add up over every invocation in the dir, and a step an earlier
        invocation finished adds nothing when it is read back (`StepTimes`): a resumed or replayed run reports the
        time its results took to make. `log`: also log it to the MLflow run (not once that run has ended)."""
        path = self.cfg.run_dir / "summary.json"
        payload = {
            "config": json.loads(self.cfg.model_dump_json()),
            "memory_size": len(self.store),
            **self.steps.summary(),
            "results": [s.model_dump() for s in self.summaries],
            **(extra or {}),
        }
        path.write_text(json.dumps(payload, indent=2, default=str))
        if log:
            self.tracker.log_artifact(path)
        return path


def _solve(program: Any, task: Task, agent: Any) -> bool:
    """Does `program` (a Solver) solve `task` with `agent`'s LM? Uncached by the result store: a comparison."""
    with agent.context():
        return bool(program(task=task, agent=agent.name).trajectory.correct)
