"""How long a run will take: an up-front estimate from call counts, and a running correction as tasks finish.

The up-front figure multiplies the calls a run makes by the seconds one call takes: the tokens it
generates over the model's generation rate plus the prompt tokens it reads over the model's prompt
rate (the distiller reads far more than it writes), all read from `configs/throughput.yaml` (whose
measured figures come from benchmarks/README.md); no measured number lives in this code. Remote agents have
no measured rate, so a run with one gets no estimate. `Countdown` corrects the rest of the
estimate by what each finished phase actually took.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memcollab.benchmarks import get_benchmark, parse_ids
from memcollab.errors import ConfigError
from memcollab.experiments.config import RunConfig
from memcollab.paths import config_dir

CallKind = Literal["solve", "distill", "classify"]
GuidanceItem = Literal["rule", "example", "cheatsheet_entry"]


class Throughput(BaseModel):
    """Measured rates (tokens/s per model and backend: generated, and prompt tokens read) and tokens per call."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_s: dict[str, dict[str, float]]
    tokens_per_call: dict[CallKind, float]
    prompt_tokens_per_s: dict[str, dict[str, float]] = Field(default_factory=dict)
    prompt_tokens_per_call: dict[CallKind, float] = Field(default_factory=dict)
    # prompt tokens one item of guidance adds to a solve call: a rule, a worked example, a cheatsheet entry
    guidance_tokens_per_item: dict[GuidanceItem, float] = Field(default_factory=dict)
    contrast_pair_rate: float = Field(ge=0.0, le=1.0)

    def rate(self, model: str, backend: str) -> float | None:
        """Generated tokens/s of `model` on `backend` (the in-process figure if the backend has none); None if
        unmeasured."""
        rates = self.tokens_per_s.get(model)
        if not rates:
            return None
        return rates.get(backend, rates.get("local"))

    def call_seconds(self, model: str, backend: str, kind: CallKind) -> float | None:
        """Seconds one call of `kind` takes: generating, plus reading its prompt where that rate is known."""
        rate = self.rate(model, backend)
        if rate is None:
            return None
        return self.tokens_per_call[kind] / rate + self.prompt_seconds(
            model, backend, self.prompt_tokens_per_call.get(kind, 0.0)
        )

    def prompt_seconds(self, model: str, backend: str, tokens: float) -> float:
        """Seconds `model` takes to read `tokens` prompt tokens (0 where its prompt rate was not measured)."""
        # Prompt reading was measured on a 1-slot server: one stream through llama.cpp, as in-process is.
        measured = self.prompt_tokens_per_s.get(model, {})
        prompt_rate = measured.get(backend) or next(iter(measured.values()), None)
        return tokens / prompt_rate if prompt_rate else 0.0


def throughput_path() -> Path:
    return config_dir() / "throughput.yaml"


def load_throughput(path: Path | None = None) -> Throughput | None:
    """The throughput figures (default `configs/throughput.yaml`); None if the file is absent."""
    path = path or throughput_path()
    if not path.is_file():
        return None
    try:
        return Throughput.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid throughput file {path}: {str(exc).splitlines()[0]}") from None


def selected_count(cfg: RunConfig, role: Literal["build", "eval"]) -> int:
    """How many tasks `role` will read: the number of ids named by --build-ids/--eval-ids, else the limit."""
    ids = cfg.build_ids if role == "build" else cfg.eval_ids
    if ids:
        return parse_ids(ids).size
    return cfg.build_limit if role == "build" else cfg.eval_limit


def _call_seconds(
    figures: Throughput, agents: Mapping[str, Any], name: str, calls: float, kind: CallKind
) -> float | None:
    """Seconds for `calls` calls of `kind` by agent `name` at its measured rate; None if the rate is unknown."""
    agent = agents.get(name)
    if agent is None or calls == 0:
        return 0.0
    seconds = figures.call_seconds(agent.config.get("model", ""), agent.config.get("backend", "local"), kind)
    return None if seconds is None else calls * seconds


def _turns(cfg: RunConfig, benchmark: str) -> int:
    """Solver calls per task: up to T for code, one for math."""
    return cfg.max_turns if get_benchmark(benchmark).kind == "code" else 1


def estimate_seconds(
    cfg: RunConfig,
    agents: Mapping[str, Any],
    n_build: int | None = None,
    n_eval: int | None = None,
    throughput: Throughput | None = None,
) -> float | None:
    """Upper-bound wall time of `run` (build, then every eval agent with and without memory); None if unknown.

    `n_build`/`n_eval` are the numbers of tasks actually loaded (default: counted from
    the config's ids or limits). Cached calls are free, so a resumed run takes less.
    """
    figures = throughput or load_throughput()
    if figures is None:
        return None
    if n_build is None:
        n_build = selected_count(cfg, "build") if cfg.build_agents else 0
    if n_eval is None:
        n_eval = selected_count(cfg, "eval")
    spec = get_benchmark(cfg.benchmark)
    pairs = figures.contrast_pair_rate * n_build
    distiller = cfg.distiller or (cfg.build_agents[-1] if cfg.build_agents else "")
    classifier = cfg.classifier or distiller
    build_calls = n_build * _turns(cfg, spec.build.benchmark)
    parts = [_call_seconds(figures, agents, a, build_calls, "solve") for a in cfg.build_agents]
    parts.append(_call_seconds(figures, agents, distiller, pairs, "distill"))
    parts.append(_call_seconds(figures, agents, classifier, pairs + n_eval, "classify"))
    parts += [eval_step_seconds(cfg, agents, a, 2 * n_eval, figures) for a in cfg.eval_agents]
    if any(p is None for p in parts):
        return None
    return float(sum(p for p in parts if p is not None))


def eval_step_seconds(
    cfg: RunConfig, agents: Mapping[str, Any], agent: str, n_eval: int, throughput: Throughput | None = None
) -> float | None:
    """Estimated seconds for `agent` to solve `n_eval` evaluation tasks once (one condition); None if unknown."""
    figures = throughput or load_throughput()
    if figures is None:
        return None
    calls = n_eval * _turns(cfg, get_benchmark(cfg.benchmark).eval.benchmark)
    return _call_seconds(figures, agents, agent, calls, "solve")


def corrected_remaining(estimated_done: float, actual_done: float, estimated_rest: float) -> float | None:
    """The rest's estimate scaled by how the finished part compared with its own estimate (measured speed on this
    machine, today's load included); None when the finished part says nothing (nothing estimated, or mostly
    served from the stores, i.e. far faster than any real LM call)."""
    if estimated_done <= 0 or actual_done < 0.2 * estimated_done:
        return None
    return estimated_rest * actual_done / estimated_done


class Countdown:
    """The run's time left, re-estimated as each phase (the build, each agent x condition) ends.

    Phases differ in size (SmolLM2 decodes several times faster than Qwen 1.5B), so the correction is weighted by
    each phase's own estimate: the phases left are scaled by how long the finished ones took against theirs.
    """

    def __init__(self, estimates: list[float]) -> None:
        self.estimates = estimates
        self.done = 0
        self.actual = 0.0

    def finished(self, seconds: float) -> float | None:
        """The next phase took `seconds`; returns the corrected seconds left (None: nothing to go on yet)."""
        self.done = min(len(self.estimates), self.done + 1)
        self.actual += seconds
        rest = sum(self.estimates[self.done :])
        return corrected_remaining(sum(self.estimates[: self.done]), self.actual, rest)
