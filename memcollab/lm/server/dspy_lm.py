"""A `dspy.LM` on a llama-server: DSPy reaches it through its ordinary OpenAI-compatible path.

Why a server at all: llama-cpp-python in-process decodes one sequence at a
time; llama-server batches the sequences of its slots into one forward pass,
which on a CPU multiplies total tokens/s for small models (benchmarks/README.md).

The LM retries failed requests and bounds how long one may wait, like every endpoint LM
(`memcollab.lm.factory`): a llama-server that is busy, restarting or wedged costs retries, not the run.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from memcollab.errors import ServerError
from memcollab.lm.server.process import DEFAULT_N_PARALLEL, get_json, root_url, server_healthy
from memcollab.lm.server.registry import ensure_server

if TYPE_CHECKING:  # pragma: no cover
    import dspy

    from memcollab.lm.config import AgentConfig


@functools.cache
def _server_lm_class() -> type:
    """The retrying dspy.LM (`memcollab.lm.factory.retrying_lm_class`), telling DSPy's JSONAdapter it may send
    a JSON schema: llama-server turns the schema into a grammar. Without this, DSPy sees an unknown `openai/`
    model, sends no `response_format`, and small models wrap their JSON in fences or Python triple quotes
    that no parser accepts."""
    from memcollab.lm.factory import retrying_lm_class

    class ServerLM(retrying_lm_class()):  # type: ignore[misc]
        @property
        def supported_params(self) -> set[str]:
            return set(super().supported_params) | {"response_format", "seed"}

        @property
        def supports_response_schema(self) -> bool:
            return True

    return ServerLM


def server_lm(agent: AgentConfig, *, cache: bool = True, model_dir: str | os.PathLike[str] | None = None) -> dspy.LM:
    """A `dspy.LM` on a llama-server for `agent` (backend "server").

    With `agent.api_base` the LM talks to that already running server; otherwise
    the registry starts (or reuses) one for `agent.model` with `agent.n_parallel`
    slots of `agent.n_ctx` tokens. The LM carries `memcollab_serving` (url,
    n_parallel, seed, ...) for run records.
    """
    from memcollab.lm.factory import endpoint_settings

    policy, timeout, _ = endpoint_settings(agent)  # only the retry keys of `extra`: the rest is llama-cpp-python's
    if agent.api_base:
        if not server_healthy(agent.api_base):
            raise ServerError(
                f"agent '{agent.name}': no healthy llama-server at {agent.api_base}: start it or remove api_base"
            )
        _, props = get_json(root_url(agent.api_base) + "/props")
        url = root_url(agent.api_base) + "/v1"
        serving: dict[str, Any] = {"backend": "llama-server", "url": url, "n_parallel": props.get("total_slots")}
        name = agent.model
    else:
        server = ensure_server(
            agent.model,
            n_parallel=agent.n_parallel or DEFAULT_N_PARALLEL,
            ctx_per_slot=agent.n_ctx,
            threads=agent.n_threads,
            model_dir=model_dir,
        )
        url, name, serving = server.url, server.alias, server.info()
    extra: dict[str, Any] = {"seed": agent.seed} if agent.seed is not None else {}
    lm = _server_lm_class()(
        f"openai/{name}",
        model_type="chat",
        api_base=url,
        api_key="local",
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        cache=cache,
        num_retries=0,  # retried by the class, with jitter
        timeout=timeout,
        **extra,
    )
    lm.retry_policy = policy
    lm.memcollab_serving = {**serving, "seed": agent.seed}
    return lm
