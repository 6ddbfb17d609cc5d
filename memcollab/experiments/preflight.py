"""Validate a run before it spends anything: every split it reads, every agent, the run directory.

`preflight(cfg, build=..., evaluate=...)` loads and checks all of it and returns a `Plan`
(the tasks and the checked agent configs). It writes nothing: when it fails there is no run
directory, no store and no cache, and no LM has been called.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from memcollab.benchmarks import get_benchmark, load_source, taxonomy_for
from memcollab.errors import ConfigError, OverlapError
from memcollab.experiments.config import RunConfig
from memcollab.grading.sandbox import isolation_mode
from memcollab.records import Task, stable_hash

if TYPE_CHECKING:  # pragma: no cover
    from memcollab.lm.config import AgentConfig

Role = Literal["build", "eval"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Plan:
    """What a validated run will read: its tasks per role and its agents, resolved and checked."""

    cfg: RunConfig
    tasks: dict[Role, list[Task]] = field(default_factory=dict)
    agents: dict[str, AgentConfig] = field(default_factory=dict)


def safe_name(name: str) -> str:
    """A file-name-safe form of an agent name: `litellm:openai/gpt-4o-mini` -> `litellm_openai_gpt-4o-mini-<hash>`.

    Names that are already safe stay as they are; others get a short hash so two names
    that sanitise alike (`a/b`, `a:b`) still get different files.
    """
    cleaned = _UNSAFE.sub("_", name).strip("._") or "agent"
    return name if cleaned == name else f"{cleaned}-{stable_hash(name, 6)}"


def check_run_dir(path: Path) -> None:
    """A run directory must be a directory (or not exist yet): a file there is a one-line error."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"--run-dir {path}: {blocker} is a file, not a directory; name a directory")


def check_overlap(eval_tasks: list[Task], memory_task_ids: set[str], allow: bool) -> None:
    """Refuse to evaluate on tasks the memory was built from (unless explicitly allowed)."""
    leaked = sorted({t.id for t in eval_tasks} & memory_task_ids)
    if leaked and not allow:
        raise OverlapError(
            f"{len(leaked)} evaluation task(s) are in the memory's provenance (e.g. {leaked[0]}); "
            "use disjoint splits or pass --allow-overlap"
        )


def build_roles(cfg: RunConfig) -> tuple[str, str]:
    """(distiller, classifier) of a memory build: the last build agent distils unless set; it also classifies."""
    distiller = cfg.distiller or (cfg.build_agents[-1] if cfg.build_agents else "")
    return distiller, cfg.classifier or distiller


def eval_classifier(cfg: RunConfig, agents: list[str]) -> str:
    """The agent that classifies evaluation tasks."""
    fallback = cfg.build_agents[-1] if cfg.build_agents else (agents[0] if agents else "")
    return cfg.classifier or cfg.distiller or fallback


def agent_names(cfg: RunConfig, build: bool, evaluate: bool) -> list[str]:
    """Every agent the chosen steps use, each once, in order."""
    names: list[str] = []
    if build:
        names += [*cfg.build_agents, *build_roles(cfg)]
    if evaluate:
        names += [*cfg.eval_agents, eval_classifier(cfg, cfg.eval_agents)]
    return [n for n in dict.fromkeys(names) if n]


def resolve_backend(requested: str | None) -> tuple[str, str]:
    """Backend for embedded agents: `server` when llama-server is installed, else in-process; and why."""
    if requested and requested != "auto":
        return requested, f"--backend {requested}"
    from memcollab.errors import ServerError
    from memcollab.lm.server import find_server_binary

    try:
        binary = find_server_binary()
    except ServerError:
        return "local", "llama-server is not installed (memcollab models build-server): in-process llama-cpp-python"
    return "server", f"llama-server found at {binary}: parallel slots for concurrent calls"


def check_agents(
    names: list[str], cfg: RunConfig, announce: Callable[[str], None] | None = None
) -> dict[str, AgentConfig]:
    """Resolve every named agent, apply the run's overrides and check that it can run here (no LM call)."""
    from memcollab.lm.config import apply_overrides, load_agents, resolve_agent
    from memcollab.lm.preflight import check_agent

    if not names:
        return {}
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
    return configs


def load_role(cfg: RunConfig, role: Role) -> list[Task]:
    """The build or eval tasks of the run's benchmark, selected by ids, sample or limit."""
    spec = get_benchmark(cfg.benchmark)
    return load_source(spec.build if role == "build" else spec.eval, data_dir=cfg.data_dir, **cfg.selection(role))


def _check_files(cfg: RunConfig) -> None:
    check_run_dir(cfg.run_dir)
    if cfg.store_url is not None:  # a server that does not answer fails here, before the run dir exists
        from memcollab.memory.postgres import check_server

        check_server(cfg.store_url, ConfigError)
    if cfg.memory_path is not None and str(cfg.memory_path) != ":memory:" and cfg.memory_path.is_dir():
        raise ConfigError(f"--memory {cfg.memory_path} is a directory; name a .sqlite file")
    for flag, path in (("classifier_program", cfg.classifier_program), ("solver_program", cfg.solver_program)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: file not found: {path}")


def _memory_provenance(path: Path | str) -> set[str]:
    """Task ids an existing memory store was built from (nothing for a new or in-memory store)."""
    from memcollab.memory import MemoryStore
    from memcollab.memory.store import StoreNotFound

    if isinstance(path, Path):
        if str(path) == ":memory:" or not path.is_file():
            return set()
        with MemoryStore(path) as store:
            return store.provenance_task_ids()
    try:  # a schema of the run's store_url: read, never created here
        with MemoryStore(path, read_only=True) as store:
            return store.provenance_task_ids()
    except StoreNotFound:
        return set()


def check_sandbox(benchmarks: Iterable[str]) -> str:
    """The sandbox mode model code will run in ("-" where no benchmark is a code one). A machine with no sandbox
    boundary stops here, in one line, before an LM is called, instead of at the first grading."""
    if any(get_benchmark(name).kind == "code" for name in benchmarks):
        return isolation_mode()
    return "-"


def preflight(
    cfg: RunConfig, *, build: bool = True, evaluate: bool = True, announce: Callable[[str], None] | None = None
) -> Plan:
    """Check everything the chosen steps will read, cheapest first; write nothing, call no LM."""
    _check_files(cfg)
    taxonomy_for(cfg.benchmark)  # the taxonomy file parses
    check_sandbox([cfg.benchmark])
    plan = Plan(cfg)
    if build:
        plan.tasks["build"] = load_role(cfg, "build")
    if evaluate:
        plan.tasks["eval"] = load_role(cfg, "eval")
        memory_ids = _memory_provenance(cfg.memory_file) | {t.id for t in plan.tasks.get("build", [])}
        check_overlap(plan.tasks["eval"], memory_ids, cfg.allow_overlap)
    plan.agents = check_agents(agent_names(cfg, build, evaluate), cfg, announce)
    return plan
