"""Agents: which model answers, through which backend, with which settings.

An agent is declared in `configs/agents.yaml` (or given inline on the command
line as `backend:model`, e.g. `local:smollm2-135m`, `litellm:openai/gpt-4o-mini`).
This module only parses and validates; `memcollab.lm.preflight.check_agent`
says whether the agent can run here and `memcollab.lm.factory.build_lm` turns
it into a `dspy.BaseLM`.

Secrets never live in config files: a litellm agent names the *environment
variable* that holds its key (`api_key_env`), and a file with a literal
`api_key` is refused.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memcollab import paths
from memcollab.errors import ConfigError

Backend = Literal["local", "litellm", "server"]
AdapterName = Literal["auto", "natural", "chat", "json"]

# Env var that holds the key of well-known litellm providers, for inline `litellm:<provider>/<model>` specs.
PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
}

_SECRET_KEYS = {"api_key", "apikey", "api_token", "access_token", "secret_key", "token"}


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _find_secret(data: Any, where: str = "") -> str | None:
    """Dotted name of the first literal secret-looking field, if any."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{where}.{key}" if where else str(key)
            if str(key).lower() in _SECRET_KEYS and value not in (None, ""):
                return name
            found = _find_secret(value, name)
            if found:
                return found
    return None


class AgentConfig(BaseModel):
    """One agent: a model behind a backend, with its sampling settings.

    `api_base` is one URL, or a list of URLs for several replicas of the same model (vLLM replicas, several
    llama-servers): each request then goes to the least busy endpoint that is not cooling down after a
    failure (`memcollab.lm.router`). `max_parallel_per_endpoint` caps the requests in flight at each
    endpoint; a request waits for a free slot rather than overload one. A one-item list is one URL.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    backend: Backend = "local"
    family: str = ""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, gt=0, le=32768)
    seed: int | None = 0
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)
    n_parallel: int | None = Field(None, ge=1)  # server backend: concurrent slots
    adapter: AdapterName = "auto"
    api_base: str | tuple[str, ...] | None = None  # one URL, or several replicas (a YAML list)
    max_parallel_per_endpoint: int | None = Field(None, ge=1)
    api_key_env: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secrets(cls, data: Any) -> Any:
        secret = _find_secret(data)
        if secret:
            raise ValueError(
                f"literal secret field '{secret}' is not allowed in an agent config; "
                "put the key in an environment variable and name it with api_key_env"
            )
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"api_key_env must be the NAME of an environment variable, got {value!r}")
        return value

    @field_validator("api_base", mode="before")
    @classmethod
    def _endpoint_list(cls, value: Any) -> Any:
        """A list of endpoints: http(s) URLs, each once; a one-item list is that URL."""
        if not isinstance(value, (list, tuple)):
            return value
        if not value:
            raise ValueError("an empty list names no endpoint; give one URL or several")
        seen: set[str] = set()
        for url in value:
            parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) URL")
            if url.rstrip("/") in seen:
                raise ValueError(f"{url} is listed twice")
            seen.add(url.rstrip("/"))
        return value[0] if len(value) == 1 else tuple(value)

    @model_validator(mode="after")
    def _endpoints_fit_backend(self) -> AgentConfig:
        if self.max_parallel_per_endpoint is not None and not self.endpoints:
            raise ValueError("max_parallel_per_endpoint needs api_base: the endpoint(s) it limits")
        if self.balanced and self.backend == "local":
            raise ValueError("several api_base URLs or max_parallel_per_endpoint need backend litellm or server")
        return self

    @model_validator(mode="after")
    def _fill_family(self) -> AgentConfig:
        if not self.family:
            object.__setattr__(self, "family", infer_family(self.backend, self.model))
        return self

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every api_base URL: none, one, or several replicas."""
        if not self.api_base:
            return ()
        return (self.api_base,) if isinstance(self.api_base, str) else self.api_base

    @property
    def balanced(self) -> bool:
        """Do this agent's requests go through the endpoint pool (several endpoints, or a concurrency limit)?"""
        return len(self.endpoints) > 1 or self.max_parallel_per_endpoint is not None

    @property
    def gguf_path(self) -> Path | None:
        """The model as a direct .gguf path (local/server backends), or None for a catalogue name."""
        if self.backend != "litellm" and self.model.endswith(".gguf"):
            return Path(self.model).expanduser()
        return None

    @property
    def resolved_adapter(self) -> Literal["natural", "chat", "json"]:
        """`auto` = natural text for llama.cpp backends (small models answer best in their own chat format,
        see `memcollab.lm.adapters`), DSPy's chat format for hosted APIs."""
        if self.adapter != "auto":
            return self.adapter
        return "chat" if self.backend == "litellm" else "natural"


def infer_family(backend: str, model: str) -> str:
    """Model family, used to tell agents of different families apart (catalogue family or provider)."""
    if backend in ("local", "server"):
        from memcollab.lm.catalog import CATALOG

        spec = CATALOG.get(model)
        if spec is not None:
            return spec.family
    gguf = model.endswith(".gguf")
    base = Path(model).stem.lower() if gguf else model.split("/", 1)[-1].lower()
    for family in ("qwen", "smollm", "llama", "mistral", "gemma", "phi", "deepseek", "gpt", "claude", "gemini"):
        if family in base:
            return family
    if not gguf and "/" in model:
        return model.split("/", 1)[0].lower()  # the litellm provider
    return base


def _one_line(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {loc + ': ' if loc else ''}{msg}"


def default_agents_path() -> Path:
    return paths.config_dir() / "agents.yaml"


def parse_agents(data: Any, where: str = "agents config") -> dict[str, AgentConfig]:
    """Validate the YAML document `{defaults: {...}, agents: [{name, model, ...}, ...]}`."""
    if not isinstance(data, dict) or not isinstance(data.get("agents"), list) or not data["agents"]:
        raise ConfigError(f"{where}: expected a mapping with a non-empty 'agents:' list")
    unknown = set(data) - {"agents", "defaults"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {sorted(unknown)}; expected 'agents' and optional 'defaults'"
        )
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: 'defaults' must be a mapping")
    agents: dict[str, AgentConfig] = {}
    for i, entry in enumerate(data["agents"]):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: agents[{i}] must be a mapping")
        label = f"{where}: agent '{entry.get('name', i)}'"
        try:
            agent = AgentConfig.model_validate({**defaults, **entry})
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, label)) from None
        if agent.name in agents:
            raise ConfigError(f"{where}: agent name '{agent.name}' is declared twice")
        agents[agent.name] = agent
    return agents


def load_agents(path: str | os.PathLike[str] | None = None) -> dict[str, AgentConfig]:
    """Agents declared in a YAML file (default `<config dir>/agents.yaml`), by name."""
    file = Path(path) if path is not None else default_agents_path()
    if not file.is_file():
        raise ConfigError(f"agents config not found: {file} (pass --agents PATH or set MEMCOLLAB_CONFIG_DIR)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}: invalid YAML{at}") from None
    return parse_agents(data, str(file))


def resolve_agent(spec: str, agents: dict[str, AgentConfig] | None = None) -> AgentConfig:
    """An agent by name from `agents`, or an inline `backend:model` spec such as `local:smollm2-135m`."""
    agents = agents or {}
    if spec in agents:
        return agents[spec]
    backend, sep, model = spec.partition(":")
    if sep and backend in ("local", "litellm", "server") and model:
        fields: dict[str, Any] = {"name": spec, "backend": backend, "model": model}
        if backend == "litellm":
            provider = model.split("/", 1)[0] if "/" in model else "openai"
            if provider in PROVIDER_KEY_ENV:
                fields["api_key_env"] = PROVIDER_KEY_ENV[provider]
        try:
            return AgentConfig.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, f"agent spec '{spec}'")) from None
    known = ", ".join(sorted(agents)) or "none declared"
    raise ConfigError(
        f"unknown agent '{spec}' (declared: {known}); or give an inline spec like "
        "local:smollm2-135m, server:qwen2.5-coder-1.5b or litellm:openai/gpt-4o-mini"
    )


def apply_overrides(
    agent: AgentConfig,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    api_base: str | None = None,
    seed: int | None = None,
    n_ctx: int | None = None,
    backend: str | None = None,
) -> AgentConfig:
    """A copy of `agent` with the CLI's overrides applied (None = keep), re-validated."""
    updates = {
        k: v
        for k, v in {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "api_base": api_base,
            "seed": seed,
            "n_ctx": n_ctx,
            "backend": backend,
        }.items()
        if v is not None
    }
    if not updates:
        return agent
    try:
        return AgentConfig.model_validate({**agent.model_dump(), **updates})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, f"agent '{agent.name}' override")) from None
