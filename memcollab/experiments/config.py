"""RunConfig: everything that defines a run, validated strictly so a typo fails before any LM call.

A YAML experiment file or the CLI's options become one RunConfig. Unknown fields
(`verify_memroy: true`), unknown benchmarks and unknown fallbacks are refused with one
line that names the field and the allowed values, never a traceback.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from memcollab.benchmarks import benchmark_names, parse_ids
from memcollab.errors import ConfigError, DataError
from memcollab.memory.backends import check_store_url, store_target

#: The registered benchmarks, as a type (so pydantic names the allowed values in its error).
BenchmarkName = Literal[benchmark_names()]  # type: ignore[valid-type]
Fallback = Literal["none", "domain", "all"]
BackendChoice = Literal["auto", "local", "server"]


def _hide_password(url: str | None) -> str | None:
    """The URL as configs are written out (summary.json, grid.json, MLflow): its password, if any, as ***."""
    return None if url is None else re.sub(r"(://[^:/@?]*:)[^@/?]*@", r"\1***@", url)


#: A run's `store_url`: a PostgreSQL database for its results and memories (None: SQLite files in the run dir).
#: Checked at load; written out without its password (prefer PGPASSWORD or ~/.pgpass for one).
StoreURL = Annotated[
    str | None,
    AfterValidator(lambda url: None if url is None else check_store_url(url)),
    PlainSerializer(_hide_password),
]


class RunConfig(BaseModel):
    """Everything that defines a run; stored with its results and logged to MLflow."""

    model_config = ConfigDict(extra="forbid")

    benchmark: BenchmarkName = "gsm8k"
    build_limit: int = Field(20, ge=0)
    eval_limit: int = Field(20, ge=0)
    build_ids: str | None = None  # e.g. "1-100" or "1001-1100,1205"; wins over build_limit
    eval_ids: str | None = None
    sample: bool = False
    seed: int = 0
    build_agents: list[str] = Field(default_factory=lambda: ["weak", "strong"])
    eval_agents: list[str] = Field(default_factory=lambda: ["weak", "other"])
    distiller: str | None = None
    classifier: str | None = None
    agents_file: Path | None = None
    k: int = Field(3, ge=0)
    max_turns: int = Field(3, ge=1)
    samples: int = Field(0, ge=0)
    sample_temperature: float = Field(0.7, ge=0.0)
    fallback: Fallback = "none"
    gold_categories: bool = False
    workers: int = Field(4, ge=1)
    run_dir: Path = Path("runs/default")
    memory_path: Path | None = None
    data_dir: Path | None = None
    tracking_uri: str | None = None
    track: bool = True
    cache: bool = True
    allow_overlap: bool = False
    max_tokens: int | None = Field(None, gt=0)
    backend: BackendChoice | None = None
    classifier_program: Path | None = None
    solver_program: Path | None = None  # a compiled solver program (JSON) loaded into the pipeline's solver
    verify_memory: bool = False
    verify_tasks: int = Field(3, ge=0)
    distill_examples: bool = False
    max_errors: int = Field(10, ge=0)  # LM calls that may fail after retries (recorded as lm_error) before a step stops
    store_url: StoreURL = None  # results and memory in this PostgreSQL database, a schema each (see `store`)

    @field_validator("build_ids", "eval_ids")
    @classmethod
    def _ids_parse(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(parse_ids(value))
        except DataError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _ids_or_sample(self) -> RunConfig:
        if self.sample and (self.build_ids or self.eval_ids):
            raise ValueError("ids select tasks by id and sample draws them at random; use one of them")
        return self

    def store(self, name: str) -> str | Path:
        """Where the run's store `name` (results, memory) lives: `<run_dir>/<name>.sqlite`, or with `store_url` the
        schema of (run dir name, `name`) in that database."""
        return store_target(self.store_url, self.run_dir, name, self.run_dir / f"{name}.sqlite")

    @property
    def memory_file(self) -> Path | str:
        """The memory store: `memory_path` if given, else the run's own (a file, or a schema of `store_url`)."""
        return self.memory_path or self.store("memory")

    def selection(self, role: Literal["build", "eval"]) -> dict[str, Any]:
        """How to pick the `role` tasks, as `load_tasks` keywords: ids win over the limit; sample draws `limit`."""
        ids, limit = (self.build_ids, self.build_limit) if role == "build" else (self.eval_ids, self.eval_limit)
        if ids:
            return {"ids": ids}
        if self.sample and limit:
            return {"sample": limit, "seed": self.seed}
        return {"limit": limit}


def _one_line(exc: ValidationError) -> str:
    """The first validation problem as `field: what is wrong`, naming the allowed fields or values."""
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        allowed = list(RunConfig.model_fields)
        close = difflib.get_close_matches(loc, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field '{loc}'{hint}; allowed fields: {', '.join(allowed)}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return message
    shown = _hide_password(error["input"]) if isinstance(error.get("input"), str) else error.get("input")
    return f"{loc}: {message} (got {shown!r})"


def make_config(where: str = "", **fields: Any) -> RunConfig:
    """A RunConfig from keyword fields (None = the default), or a one-line ConfigError."""
    try:
        return RunConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"{where}{': ' if where else ''}{_one_line(exc)}") from None


def load_config(path: Path, **overrides: Any) -> RunConfig:
    """A RunConfig from a YAML file of its fields, with `overrides` (None = keep the file's value)."""
    if not path.is_file():
        raise ConfigError(f"experiment config not found: {path}")
    where = f"invalid experiment config {path}"
    try:
        fields = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{where}: invalid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: expected a mapping of RunConfig fields, got {type(fields).__name__}")
    return make_config(where, **{**fields, **{k: v for k, v in overrides.items() if v is not None}})
