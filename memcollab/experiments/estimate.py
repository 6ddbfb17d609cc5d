"""How long a run will take: an up-front estimate from call counts, and a running correction as tasks finish.

The up-front figure multiplies the calls a run makes by tokens per call and divides by
measured generation rates, all read from `configs/throughput.yaml` (whose measured figures
come from benchmarks/README.md); no measured number lives in this code. Remote agents have
no measured rate, so a run with one gets no estimate. `RateTracker` replaces the prior with
what the first finished tasks actually took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memcollab.benchmarks import get_benchmark, parse_ids
from memcollab.errors import ConfigError
from memcollab.experiments.config import RunConfig
from memcollab.paths import config_dir

CallKind = Literal["solve", "distill", "classify"]


class Throughput(BaseModel):
    """Measured generation rates (tokens/s per model and backend) and rough tokens per call."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_s: dict[str, dict[str, float]]
    tokens_per_call: dict[CallKind, float]
    contrast_pair_rate: float = Field(ge=0.0, le=1.0)

    def rate(self, model: str, backend: str) -> float | None:
        """Tokens/s of `model` on `backend` (the in-process figure if the backend has none); None if unmeasured."""
        rates = self.tokens_per_s.get(model)
        if not rates:
            return None
        return rates.get(backend, rates.get("local"))


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

    def seconds(name: str, calls: float, kind: CallKind) -> float | None:
        agent = agents.get(name)
        if agent is None or calls == 0:
            return 0.0
        rate = figures.rate(agent.config.get("model", ""), agent.config.get("backend", "local"))
        if rate is None:
            return None
        return calls * figures.tokens_per_call[kind] / rate

    spec = get_benchmark(cfg.benchmark)

    def turns(benchmark: str) -> int:  # code: up to T calls per task
        return cfg.max_turns if get_benchmark(benchmark).kind == "code" else 1

    pairs = figures.contrast_pair_rate * n_build
    distiller = cfg.distiller or (cfg.build_agents[-1] if cfg.build_agents else "")
    classifier = cfg.classifier or distiller
    parts = [seconds(a, n_build * turns(spec.build.benchmark), "solve") for a in cfg.build_agents]
    parts.append(seconds(distiller, pairs, "distill"))
    parts.append(seconds(classifier, pairs + n_eval, "classify"))
    parts += [seconds(a, 2 * n_eval * turns(spec.eval.benchmark), "solve") for a in cfg.eval_agents]
    if any(p is None for p in parts):
        return None
    return float(sum(p for p in parts if p is not None))


def corrected_remaining(estimated_done: float, actual_done: float, estimated_rest: float) -> float | None:
    """The rest's estimate scaled by how the finished part compared with its own estimate (measured speed on this
    machine, today's load included); None when the finished part says nothing (nothing estimated, or mostly
    served from the stores, i.e. far faster than any real LM call)."""
    if estimated_done <= 0 or actual_done < 0.2 * estimated_done:
        return None
    return estimated_rest * actual_done / estimated_done


class RateTracker:
    """Re-estimates the time left as units of work finish, from the wall time they actually took.

    Give it the number of units (tasks, calls) and, if known, the up-front estimate for all
    of them; call `finished()` as each unit ends (`cached=True` for a unit served from the
    stores, which says nothing about speed). The measured seconds per unit replace the prior
    gradually: the prior counts as `prior_weight` units of evidence. Before any measured unit
    and without a prior, `remaining_seconds()` is None.
    """

    def __init__(
        self,
        total: int,
        prior_seconds: float | None = None,
        prior_weight: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0:
            raise ValueError("total must be >= 0")
        self.total = total
        self.prior_per_unit = prior_seconds / total if prior_seconds is not None and total else None
        self.prior_weight = prior_weight
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self.done = 0
        self.measured = 0
        self.measured_seconds = 0.0

    def finished(self, n: int = 1, cached: bool = False) -> None:
        """`n` more units have ended since the last call; their wall time counts unless they were cached."""
        now = self._clock()
        self.done = min(self.total, self.done + n)
        if not cached:
            self.measured += n
            self.measured_seconds += now - self._last
        self._last = now

    @property
    def seconds_per_unit(self) -> float | None:
        """The current per-unit figure: the measured mean, pulled towards the prior while few units are measured."""
        if self.measured == 0:
            return self.prior_per_unit
        observed = self.measured_seconds / self.measured
        if self.prior_per_unit is None:
            return observed
        weight = self.prior_weight
        return (self.prior_per_unit * weight + observed * self.measured) / (weight + self.measured)

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def remaining_seconds(self) -> float | None:
        """Estimated seconds until every unit is done; None while there is nothing to go on."""
        if self.remaining == 0:
            return 0.0
        per_unit = self.seconds_per_unit
        return None if per_unit is None else per_unit * self.remaining

    def slowdown(self) -> float | None:
        """Measured over prior seconds per unit (2.0: twice as slow as estimated); None without both."""
        if self.measured == 0 or not self.prior_per_unit:
            return None
        return (self.measured_seconds / self.measured) / self.prior_per_unit
