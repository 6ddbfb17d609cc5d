"""Turn an `AgentConfig` into what DSPy runs: its LM, its adapter, and the response cache they share.

Heavy imports (dspy, llama-cpp-python, the server machinery) happen inside the
functions, so reading agent configs and checking them stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memcollab.errors import ConfigError
from memcollab.lm.config import AgentConfig

if TYPE_CHECKING:  # pragma: no cover
    import dspy


def build_lm(
    agent: AgentConfig, *, cache: bool = True, model_dir: str | os.PathLike[str] | None = None
) -> dspy.BaseLM:
    """The DSPy LM for `agent`. Call `memcollab.lm.preflight.check_agent` first for friendly errors."""
    if agent.backend == "local":
        return _local_lm(agent, cache=cache, model_dir=model_dir)
    if agent.backend == "server":
        from memcollab.lm.server import server_lm

        return server_lm(agent, cache=cache, model_dir=model_dir)
    return _litellm_lm(agent, cache=cache)


def _local_lm(agent: AgentConfig, *, cache: bool, model_dir: str | os.PathLike[str] | None) -> dspy.BaseLM:
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


def _litellm_lm(agent: AgentConfig, *, cache: bool) -> dspy.BaseLM:
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

    name = agent.resolved_adapter
    if name == "natural":
        from memcollab.lm.adapters import NaturalAdapter

        return NaturalAdapter()
    return dspy.JSONAdapter() if name == "json" else dspy.ChatAdapter()


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
