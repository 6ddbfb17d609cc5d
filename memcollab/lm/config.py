"""Agents: which model answers, through which backend, with which settings.

An agent is declared in `configs/agents.yaml` (or given inline on the command
line as `backend:model`, e.g. `local:smollm2-135m`, `litellm:openai/gpt-4o-mini`).
`check_agent` fails fast with one line before any work starts; `build_lm`
turns the config into a `dspy.BaseLM`.

Secrets never live in config files: a litellm agent names the *environment
variable* that holds its key (`api_key_env`), and a file with a literal
`api_key` is refused.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memcollab import paths
from memcollab.errors import ConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import dspy

Backend = Literal["local", "litellm", "server"]
AdapterName = Literal["auto", "natural", "chat", "json"]

LLAMA_INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install 'memcollab[llama]'"
)

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
    """One agent: a model behind a backend, with its sampling settings."""

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
    api_base: str | None = None
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

    @model_validator(mode="after")
    def _fill_family(self) -> AgentConfig:
        if not self.family:
            object.__setattr__(self, "family", infer_family(self.backend, self.model))
        return self

    @property
    def threads(self) -> int | None:
        """Alias read by `memcollab.lm.server.server_lm`."""
        return self.n_threads

    @property
    def ctx_per_slot(self) -> int:
        """Context of one llama-server slot = this agent's n_ctx (read by `server_lm`)."""
        return self.n_ctx

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
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; expected 'agents' and optional 'defaults'")
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


# ---------------------------------------------------------------- preflight


def _check_endpoint(agent: AgentConfig, timeout: float) -> None:
    """A quick GET <api_base>/models: any HTTP answer means reachable; no answer is an error."""
    assert agent.api_base
    url = agent.api_base.rstrip("/") + "/models"
    headers = {}
    if agent.api_key_env and os.environ.get(agent.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[agent.api_key_env]}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # the server answered (401, 404 ...): reachable; the call itself will say more
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"agent '{agent.name}': endpoint {agent.api_base} is unreachable ({reason}); check --api-base") from None


def _check_local_model(agent: AgentConfig, model_dir: str | os.PathLike[str] | None) -> None:
    from memcollab.lm.catalog import CATALOG, model_status

    if agent.gguf_path is not None:
        if not agent.gguf_path.is_file():
            raise ModelError(f"agent '{agent.name}': model file not found: {agent.gguf_path}")
        return
    if agent.model not in CATALOG:
        raise ConfigError(
            f"agent '{agent.name}': unknown embedded model '{agent.model}'; choose one of {', '.join(sorted(CATALOG))}"
        )
    status = model_status(agent.model, model_dir)
    if status.ready:
        return
    spec = status.spec
    if not status.installed:
        raise ModelError(
            f"agent '{agent.name}': model {spec.name} is not installed: {spec.install_hint} "
            f"then memcollab models prepare {spec.name}"
        )
    raise ModelError(f"agent '{agent.name}': model {spec.name} is not assembled: run memcollab models prepare {spec.name}")


def llama_cpp_available() -> bool:
    """Is llama-cpp-python importable? (Checked without importing it: loading the library is slow.)"""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["llama_cpp"] is None (import blocked)
        return False


def check_agent(agent: AgentConfig, *, timeout: float = 3.0, model_dir: str | os.PathLike[str] | None = None) -> None:
    """Fail fast, with one line that says what to do, if this agent cannot run here."""
    if agent.backend == "local":
        if not llama_cpp_available():
            raise ConfigError(f"agent '{agent.name}': llama-cpp-python is not installed: {LLAMA_INSTALL_HINT}")
        _check_local_model(agent, model_dir)
    elif agent.backend == "server":
        if agent.api_base:  # an already running llama-server
            _check_endpoint(agent, timeout)
            return
        _check_local_model(agent, model_dir)
        try:
            from memcollab.lm import server  # written by the server owner; optional hook
        except ImportError:
            return
        hook = getattr(server, "check_server", None)
        if callable(hook):
            hook(agent)
    else:
        if agent.api_key_env and not os.environ.get(agent.api_key_env):
            raise ConfigError(
                f"agent '{agent.name}': environment variable {agent.api_key_env} is not set; "
                f"export {agent.api_key_env}=<your key>"
            )
        if agent.api_base:
            _check_endpoint(agent, timeout)


# ---------------------------------------------------------------- building LMs


def build_lm(
    agent: AgentConfig, *, cache: bool = True, model_dir: str | os.PathLike[str] | None = None
) -> dspy.BaseLM:
    """The DSPy LM for `agent`. Call `check_agent` first for friendly errors."""
    if agent.backend == "local":
        from memcollab.lm.assemble import model_path
        from memcollab.lm.catalog import get_spec
        from memcollab.lm.local import LlamaCppLM

        if agent.gguf_path is not None:
            path, fingerprint = agent.gguf_path, None  # LlamaCppLM fingerprints the file by path+size+mtime
        else:
            path, fingerprint = model_path(agent.model, model_dir), get_spec(agent.model).sha256
        return LlamaCppLM(
            f"local/{agent.name}" if agent.gguf_path is not None else f"local/{agent.model}",
            model_path=path,
            n_ctx=agent.n_ctx,
            n_threads=agent.n_threads,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            seed=agent.seed,
            cache=cache,
            fingerprint=fingerprint,
            **agent.extra,
        )
    if agent.backend == "server":
        from memcollab.lm.server import server_lm

        return server_lm(agent, cache=cache, model_dir=model_dir)
    import dspy

    kwargs: dict[str, Any] = dict(agent.extra)
    if agent.api_base:
        kwargs["api_base"] = agent.api_base
    if agent.api_key_env:
        key = os.environ.get(agent.api_key_env)
        if not key:
            raise ConfigError(f"agent '{agent.name}': environment variable {agent.api_key_env} is not set")
        kwargs["api_key"] = key
    if agent.seed is not None:
        kwargs["seed"] = agent.seed
    return dspy.LM(agent.model, temperature=agent.temperature, max_tokens=agent.max_tokens, cache=cache, **kwargs)


def build_adapter(agent: AgentConfig) -> dspy.Adapter:
    """The DSPy adapter that parses this agent's outputs reliably (see `AgentConfig.resolved_adapter`).

    Use it with `dspy.context(lm=lm, adapter=build_adapter(agent))`.
    """
    import dspy

    from memcollab.lm.adapters import NaturalAdapter

    adapters = {"natural": NaturalAdapter, "json": dspy.JSONAdapter, "chat": dspy.ChatAdapter}
    return adapters[agent.resolved_adapter]()


def configure_dspy_cache(cache_dir: str | os.PathLike[str] | None = None, enabled: bool = True) -> Path | None:
    """Point DSPy's response cache (used by every backend, incl. the in-process one) at a project-local dir.

    Default dir: `./.memcollab/dspy_cache`. `enabled=False` (the CLI's `--no-cache`)
    turns off both memory and disk caching. Returns the directory in use, or None.
    """
    import dspy

    if not enabled:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        return None
    directory = Path(cache_dir) if cache_dir is not None else Path.cwd() / ".memcollab" / "dspy_cache"
    directory.mkdir(parents=True, exist_ok=True)
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory))
    return directory
