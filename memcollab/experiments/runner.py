"""Experiments as configurations over the same few steps: build memory, evaluate, or both (`run`).

A `RunConfig` names the benchmark, the slices, the agents and the settings; the
functions here load tasks, prepare agents (failing fast before any LM call), drive
the MemCollab pipeline, write per-task results and a summary into the run
directory, and log everything to MLflow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from memcollab.errors import ConfigError, OverlapError
from memcollab.experiments.metrics import EvalSummary, summarize, task_rows
from memcollab.parallel import console as progress_console
from memcollab.records import Task

#: Default memory-building and evaluation splits per benchmark (disjoint by construction).
DEFAULT_SPLITS = {
    "gsm8k": ("gsm8k", "train", "gsm8k", "test"),
    "math500": ("math500", "build", "math500", "eval"),
    "mbpp": ("mbpp", "train", "mbpp", "test"),
    "humaneval": ("mbpp", "train", "humaneval", "test"),
}


class RunConfig(BaseModel):
    """Everything that defines a run; stored with its results and logged to MLflow."""

    benchmark: str = "gsm8k"
    build_limit: int = 20
    eval_limit: int = 20
    sample: bool = False
    seed: int = 0
    build_agents: list[str] = Field(default_factory=lambda: ["weak", "strong"])
    eval_agents: list[str] = Field(default_factory=lambda: ["weak", "other"])
    distiller: str | None = None
    classifier: str | None = None
    agents_file: Path | None = None
    k: int = 3
    max_turns: int = 3
    samples: int = 0
    sample_temperature: float = 0.7
    fallback: str = "none"
    gold_categories: bool = False
    workers: int = 4
    run_dir: Path = Path("runs/default")
    memory_path: Path | None = None
    data_dir: Path | None = None
    tracking_uri: str | None = None
    track: bool = True
    cache: bool = True
    allow_overlap: bool = False
    max_tokens: int | None = None
    backend: str | None = None
    classifier_program: Path | None = None
    verify_memory: bool = False
    verify_tasks: int = 3
    distill_examples: bool = False

    @property
    def memory_file(self) -> Path:
        return self.memory_path or self.run_dir / "memory.sqlite"


def split_names(benchmark: str) -> tuple[str, str, str, str]:
    if benchmark not in DEFAULT_SPLITS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(DEFAULT_SPLITS)}")
    return DEFAULT_SPLITS[benchmark]


def load_split(benchmark: str, split: str, limit: int | None, cfg: RunConfig) -> list[Task]:
    from memcollab.benchmarks.loaders import load_tasks

    if cfg.sample and limit:
        return load_tasks(benchmark, split=split, data_dir=cfg.data_dir, sample=limit, seed=cfg.seed)
    return load_tasks(benchmark, split=split, data_dir=cfg.data_dir, limit=limit)


def check_overlap(eval_tasks: list[Task], memory_task_ids: set[str], allow: bool) -> None:
    """Refuse to evaluate on tasks the memory was built from (unless explicitly allowed)."""
    leaked = sorted({t.id for t in eval_tasks} & memory_task_ids)
    if leaked and not allow:
        raise OverlapError(
            f"{len(leaked)} evaluation task(s) are in the memory's provenance (e.g. {leaked[0]}); "
            "use disjoint splits or pass --allow-overlap"
        )


def resolve_backend(requested: str | None) -> tuple[str, str]:
    """Backend for embedded agents: `server` when llama-server is installed, else in-process; and why."""
    if requested and requested != "auto":
        return requested, f"--backend {requested}"
    from memcollab.errors import ServerError
    from memcollab.lm.server_build import find_server_binary

    try:
        binary = find_server_binary()
    except ServerError:
        return "local", "llama-server is not installed (memcollab models build-server): in-process llama-cpp-python"
    return "server", f"llama-server found at {binary}: parallel slots for concurrent calls"


def prepare_agents(names: list[str], cfg: RunConfig, announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Resolve, check (fail fast, before any LM call) and build every named agent once."""
    from memcollab.lm.config import apply_overrides, build_adapter, build_lm, check_agent, load_agents, resolve_agent
    from memcollab.programs.pipeline import Agent

    declared = load_agents(cfg.agents_file)
    configs = {name: resolve_agent(name, declared) for name in dict.fromkeys(names)}
    if any(agent.backend in ("local", "server") for agent in configs.values()):
        backend, why = resolve_backend(cfg.backend)
        if announce:
            announce(f"embedded models: {backend} backend ({why})")
        configs = {
            name: apply_overrides(agent, backend=backend if agent.backend in ("local", "server") else None)
            for name, agent in configs.items()
        }
    if cfg.max_tokens:
        configs = {name: apply_overrides(agent, max_tokens=cfg.max_tokens) for name, agent in configs.items()}
    for agent in configs.values():
        check_agent(agent)
    return {
        name: Agent(name=agent.name, lm=build_lm(agent, cache=cfg.cache), config=agent.model_dump(mode="json"),
                    adapter=build_adapter(agent))
        for name, agent in configs.items()
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")


class Experiment:
    """A configured run: owns the stores, the agents and the tracker for its lifetime."""

    def __init__(self, cfg: RunConfig) -> None:
        from memcollab.memory.results import ResultStore
        from memcollab.lm.config import configure_dspy_cache
        from memcollab.memory import MemoryStore
        from memcollab.taxonomy import taxonomy_for
        from memcollab.tracking import Tracker, default_tracking_uri

        self.cfg = cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        configure_dspy_cache(cfg.run_dir / "dspy_cache", enabled=cfg.cache)
        self.taxonomy = taxonomy_for(cfg.benchmark if cfg.benchmark != "humaneval" else "mbpp")
        self.results = ResultStore(cfg.run_dir / "results.sqlite")
        self.store = MemoryStore(cfg.memory_file)
        uri = cfg.tracking_uri or default_tracking_uri(cfg.run_dir)
        self.tracker = Tracker(uri, experiment=f"memcollab-{cfg.benchmark}", enabled=cfg.track)
        self.agents: dict[str, Any] = {}
        self.summaries: list[EvalSummary] = []
        self.timings: dict[str, float] = {}
        self.announce: Callable[[str], None] = progress_console.print

    def close(self) -> None:
        """Close the stores and stop any llama-server this run started (no orphan processes)."""
        self.results.close()
        self.store.close()
        server = sys.modules.get("memcollab.lm.server")
        if server is not None:
            server.shutdown_all()

    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, *exc: object) -> None:
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
            verify=self.cfg.verify_memory,
            verify_tasks=self.cfg.verify_tasks,
            distill_examples=self.cfg.distill_examples,
        )

    def ensure_agents(self, names: list[str]) -> None:
        missing = [n for n in dict.fromkeys(names) if n and n not in self.agents]
        if missing:
            self.agents.update(prepare_agents(missing, self.cfg, announce=self.announce))

    # ----- steps ---------------------------------------------------------------------------
    def build_memory(self):
        cfg = self.cfg
        bench, split, _, _ = split_names(cfg.benchmark)
        distiller = cfg.distiller or cfg.build_agents[-1]
        classifier = cfg.classifier or distiller
        self.ensure_agents([*cfg.build_agents, distiller, classifier])
        tasks = load_split(bench, split, cfg.build_limit, cfg)
        if len(self.store):
            self.announce(f"{cfg.memory_file} already holds {len(self.store)} memories: this build adds to them "
                          "(a new --run-dir or --memory starts an empty memory)")
        start = time.perf_counter()
        pipeline = self.pipeline(distiller, classifier)
        for name in ("solver", "classifier", "distiller"):
            self.tracker.log_program(getattr(pipeline, name), name)
        report = pipeline.build(
            tasks, [self.agents[n] for n in cfg.build_agents], samples=cfg.samples, temperature=cfg.sample_temperature
        )
        self.timings["build_s"] = time.perf_counter() - start
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
                "build.seconds": self.timings["build_s"],
                **{f"build.accuracy.{a}": v for a, v in report.accuracy_by_agent.items()},
            }
        )
        self.tracker.log_table(rows, "build_trajectories.json")
        self.tracker.log_artifact(cfg.run_dir / "memory.jsonl", "memory")
        return report

    def evaluate(self, agents: list[str], conditions: tuple[bool, ...] = (False, True)) -> list[EvalSummary]:
        cfg = self.cfg
        _, _, bench, split = split_names(cfg.benchmark)
        tasks = load_split(bench, split, cfg.eval_limit, cfg)
        if True in conditions:
            check_overlap(tasks, self.store.provenance_task_ids(), cfg.allow_overlap)
        classifier = cfg.classifier or cfg.distiller or (cfg.build_agents[-1] if cfg.build_agents else agents[0])
        self.ensure_agents([*agents, classifier])
        pipeline = self.pipeline(None, classifier)
        summaries = []
        for name in agents:
            for use_memory in conditions:
                condition = "memcollab" if use_memory else "no_memory"
                start = time.perf_counter()
                trajectories = pipeline.evaluate(tasks, self.agents[name], use_memory=use_memory)
                self.timings[f"eval.{name}.{condition}_s"] = time.perf_counter() - start
                summary = summarize(trajectories, name, condition, bench)
                summaries.append(summary)
                rows = task_rows(trajectories, condition)
                _write_jsonl(cfg.run_dir / f"eval_{name}_{condition}.jsonl", rows)
                self.tracker.log_metrics(
                    {k: v for k, v in summary.model_dump().items() if isinstance(v, (int, float))},
                    prefix=f"eval.{name}.{condition}.",
                )
                self.tracker.log_table(rows, f"eval_{name}_{condition}.json")
        matrix = {c: {s.agent: s.accuracy for s in summaries if s.condition == c} for c in {s.condition for s in summaries}}
        self.tracker.log_transfer_matrix(matrix, "accuracy")
        self.summaries.extend(summaries)
        return summaries

    def compile_classifier(self, agent: str, optimizer: str, train: int, dev: int, out: Path) -> dict[str, float]:
        """Compile the classifier on the build split's gold categories; compare with zero-shot on the eval split."""
        from memcollab.programs.classifier import Classifier
        from memcollab.programs.compile import classifier_examples, compile_classifier, evaluate_classifier, save_classifier

        build_bench, build_split, eval_bench, eval_split = split_names(self.cfg.benchmark)
        trainset = classifier_examples(load_split(build_bench, build_split, train, self.cfg), self.taxonomy)
        devset = classifier_examples(load_split(eval_bench, eval_split, dev, self.cfg), self.taxonomy)
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
        metrics = {"classifier.zero_shot.accuracy": baseline, f"classifier.{optimizer}.accuracy": accuracy,
                   "classifier.train": len(trainset), "classifier.dev": len(devset)}
        self.tracker.log_metrics(metrics)
        self.tracker.log_program(zero_shot, "classifier_zero_shot")
        self.tracker.log_program(compiled, f"classifier_{optimizer}")
        return metrics

    def write_summary(self, extra: dict[str, Any] | None = None) -> Path:
        """summary.json of the run dir. Phase timings add up over every invocation in the dir, so a resumed
        or replayed run reports the time its results took to make, not the seconds of its last, cached pass."""
        path = self.cfg.run_dir / "summary.json"
        previous = self._previous_timings(path)
        timings = {k: round(previous.get(k, 0.0) + v, 1) for k, v in self.timings.items()}
        payload = {
            "config": json.loads(self.cfg.model_dump_json()),
            "memory_size": len(self.store),
            "timings_s": timings,
            "results": [s.model_dump() for s in self.summaries],
            **(extra or {}),
        }
        path.write_text(json.dumps(payload, indent=2, default=str))
        self.tracker.log_artifact(path)
        return path

    @staticmethod
    def _previous_timings(path: Path) -> dict[str, float]:
        try:
            timings = json.loads(path.read_text()).get("timings_s", {})
            return {k: float(v) for k, v in timings.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}  # no summary yet, or one we cannot read: start from zero


#: Generation tokens/s measured on this project's 2-core reference machine (portable llama.cpp build):
#: in-process single stream, and llama-server with parallel slots and concurrent workers.
MEASURED_TOKENS_PER_S = {  # benchmarks/README.md, "Local serving" (best slot setting for the server)
    "smollm2-135m": {"local": 138.0, "server": 195.0},
    "qwen2.5-coder-0.5b": {"local": 50.0, "server": 85.0},
    "qwen2.5-coder-1.5b": {"local": 27.0, "server": 33.0},
}
#: Rough generated tokens per call of each kind (chain-of-thought solve, distill, classify + prompt cost).
TOKENS_PER_CALL = {"solve": 200, "distill": 350, "classify": 40}


def estimate_seconds(cfg: RunConfig, agents: dict[str, Any]) -> float | None:
    """Upper-bound wall time of a run from call counts and measured token rates; None for remote agents."""

    def seconds(name: str, calls: float, kind: str) -> float | None:
        agent = agents.get(name)
        if agent is None:
            return 0.0
        rates = MEASURED_TOKENS_PER_S.get(agent.config.get("model", ""))
        if rates is None:
            return None
        rate = rates.get(agent.config.get("backend", "local"), rates["local"])
        return calls * TOKENS_PER_CALL[kind] / rate

    distiller = cfg.distiller or (cfg.build_agents[-1] if cfg.build_agents else "")
    classifier = cfg.classifier or distiller
    from memcollab.benchmarks.loaders import BENCHMARKS

    code = BENCHMARKS[split_names(cfg.benchmark)[2]].kind == "code"
    turns = cfg.max_turns if code else 1  # code: up to T calls per task
    parts = [seconds(a, cfg.build_limit * turns, "solve") for a in cfg.build_agents]
    parts.append(seconds(distiller, 0.4 * cfg.build_limit, "distill"))
    parts.append(seconds(classifier, 0.4 * cfg.build_limit + cfg.eval_limit, "classify"))
    parts += [seconds(a, 2 * cfg.eval_limit * turns, "solve") for a in cfg.eval_agents]
    if any(p is None for p in parts):
        return None
    return float(sum(parts))
