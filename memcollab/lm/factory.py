"""Turn an `AgentConfig` into what DSPy runs: its LM, its adapter, and the response cache they share.

Every LM on an endpoint (litellm and llama-server backends) retries a failed request (timeout,
refused or dropped connection, HTTP 429/5xx, a cut-off body) with jittered exponential backoff and
gives up on a request that waits too long, so a flaky or hung endpoint costs a few retries, not the
run. Per agent, `extra: {num_retries: N, timeout: SECONDS, retry_backoff_s: SECONDS}` overrides the
defaults below.

Heavy imports (dspy, llama-cpp-python, the server machinery) happen inside the
functions, so reading agent configs and checking them stays fast.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from memcollab.errors import ConfigError, exception_chain
from memcollab.lm.config import AgentConfig

if TYPE_CHECKING:  # pragma: no cover
    import dspy

T = TypeVar("T")
log = logging.getLogger("memcollab.lm")

# ---------------------------------------------------------------- retries and timeouts

#: Retries after a request's first try. With the backoff below they wait 8-15 s in all (1+2+4+8, jittered):
#: long enough for a rate limit window or a briefly overloaded server, short enough that a dead one is
#: reported within a minute.
DEFAULT_NUM_RETRIES = 4
#: Of those, retries after a timeout: waiting the whole timeout again rarely revives a hung endpoint, and a
#: generation too long for the timeout does not get shorter; one retry covers a dropped connection.
MAX_TIMEOUT_RETRIES = 1
#: First wait; it doubles per retry up to MAX_BACKOFF_S, and each wait is drawn from [1/2, 1] of that so
#: workers that failed together do not retry together.
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: A server's Retry-After is honoured up to this (plus jitter); beyond it the endpoint is as good as down.
MAX_RETRY_AFTER_S = 120.0
#: Seconds a request may wait for its next byte. A non-streamed completion sends nothing until it is done,
#: and on a 2-core machine llama-server's slots share the cores: a full-length answer of the 1.5B model
#: while every slot decodes a long prompt can take more than 10 minutes, and a timeout there only repeats
#: the same generation. So the embedded server gets 30 min (a server that dies drops its connections at
#: once; the timeout only has to catch one that hangs); hosted or remote endpoints get 5 min. A hung
#: endpoint costs a task two timeouts, then it is an LM error.
DEFAULT_TIMEOUT_S: dict[str, float] = {"server": 1800.0, "litellm": 300.0}
#: Keys of an agent's `extra` read here (never sent to the provider as request parameters).
RETRY_KEYS = ("num_retries", "timeout", "retry_backoff_s")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed LM request is retried."""

    retries: int = DEFAULT_NUM_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry `attempt` (0 = the first): the server's Retry-After (capped) plus up to one
        backoff of jitter, else jittered exponential backoff."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S) + random.uniform(0.0, self.backoff_s)
        return min(MAX_BACKOFF_S, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def endpoint_settings(agent: AgentConfig) -> tuple[RetryPolicy, float, dict[str, Any]]:
    """(retry policy, timeout in seconds, the rest of `extra`) for an agent on an endpoint; bad values are one line."""
    extra = dict(agent.extra)
    retries = extra.pop("num_retries", DEFAULT_NUM_RETRIES)
    timeout = extra.pop("timeout", DEFAULT_TIMEOUT_S.get(agent.backend, DEFAULT_TIMEOUT_S["litellm"]))
    backoff = extra.pop("retry_backoff_s", DEFAULT_BACKOFF_S)
    where = f"agent '{agent.name}': extra"
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"{where}.num_retries must be a whole number >= 0 (got {retries!r})")
    for name, value, low_ok in (("timeout", timeout, False), ("retry_backoff_s", backoff, True)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < 0 or (value == 0 and not low_ok):
            bound = ">= 0" if low_ok else "> 0"
            raise ConfigError(f"{where}.{name} must be a number of seconds {bound} (got {value!r})")
    return RetryPolicy(retries=retries, backoff_s=float(backoff)), float(timeout), extra


def _malformed_body(exc: BaseException) -> bool:
    """A provider error caused by a response body that is not JSON: the endpoint answered 200 but the body
    was cut off or mangled on the way. DSPy reports it as a non-retryable provider error; it is transient."""
    return any(isinstance(e, json.JSONDecodeError) for e in exception_chain(exc))


def _transient(exc: Exception, model: str) -> Exception | None:
    """The exception to retry on (possibly restated as a server error), or None when retrying cannot help."""
    from dspy.utils.exceptions import LMError, LMServerError, is_retryable_lm_error

    if is_retryable_lm_error(exc):
        return exc
    if isinstance(exc, LMError) and _malformed_body(exc):
        restated = LMServerError(f"malformed response body ({exc.__cause__ or exc})", model=model)
        restated.__cause__ = exc
        return restated
    return None


def _timed_out(exc: BaseException) -> bool:
    """Did the request time out (DSPy's LMTimeoutError, or a transport error over a socket timeout)?"""
    from dspy.utils.exceptions import LMTimeoutError

    return any(isinstance(e, (LMTimeoutError, TimeoutError)) for e in exception_chain(exc))


def _retry_after(exc: Exception) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _give_up_or_wait(exc: Exception, attempt: int, timeouts: int, policy: RetryPolicy, model: str) -> float:
    """Seconds to wait before the next try (`attempt` tries failed, `timeouts` of them by timing out before
    this one); raises the (possibly restated) error when there is none."""
    from memcollab.lm.server.supervise import stopping

    transient = _transient(exc, model)
    if transient is None:
        raise exc
    if stopping() or attempt >= policy.retries or (_timed_out(transient) and timeouts >= MAX_TIMEOUT_RETRIES):
        if transient is exc:
            raise exc
        raise transient from exc
    wait = policy.delay(attempt, _retry_after(transient))
    log.warning(
        "LM %s: %s; retry %d of %d in %.1f s", model, _gist(transient, model), attempt + 1, policy.retries, wait
    )
    return wait


def _gist(exc: Exception, model: str, limit: int = 120) -> str:
    """The first sentence of an error, without DSPy's `[model] ` prefix, on one line."""
    text = " ".join(str(exc).split()).removeprefix(f"[{model}] ")
    text = text.split(" To fix:")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_with_retries(send: Callable[[], T], policy: RetryPolicy, model: str) -> T:
    """`send()`, retried on transient endpoint failures with `policy`'s backoff; anything else raises at once."""
    attempt = timeouts = 0
    while True:
        try:
            return send()
        except Exception as exc:  # classified by _give_up_or_wait, which re-raises the rest
            wait = _give_up_or_wait(exc, attempt, timeouts, policy, model)
            timeouts += _timed_out(exc)
        time.sleep(wait)
        attempt += 1


async def acall_with_retries(send: Callable[[], Awaitable[T]], policy: RetryPolicy, model: str) -> T:
    """The async twin of :func:`call_with_retries`."""
    attempt = timeouts = 0
    while True:
        try:
            return await send()
        except Exception as exc:
            wait = _give_up_or_wait(exc, attempt, timeouts, policy, model)
            timeouts += _timed_out(exc)
        await asyncio.sleep(wait)
        attempt += 1


@functools.cache
def retrying_lm_class() -> type:
    """`dspy.LM` that retries here, with jitter, instead of in DSPy's own loop.

    DSPy 3.4 retries the same errors (rate limit, timeout, 5xx, transport) but waits exactly
    1, 2, 4 s or the server's Retry-After: parallel workers that failed together retry together.
    Build it with `num_retries=0` (DSPy's loop off) and set `retry_policy`.
    """
    import dspy

    class RetryingLM(dspy.LM):
        retry_policy: RetryPolicy = RetryPolicy()

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return call_with_retries(lambda: dspy.LM.__call__(self, *args, **kwargs), self.retry_policy, self.model)

        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            return await acall_with_retries(lambda: dspy.LM.acall(self, *args, **kwargs), self.retry_policy, self.model)

    return RetryingLM


class TruncationWarningOnce(logging.Filter):
    """Lets DSPy's "LM response was truncated" warning through once per process.

    Small models often run to max_tokens (a repeated line, an unfinished derivation); the warning then
    repeats for every such task and buries the progress bars, while the result rows already carry each
    task's tokens. Other records pass untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "truncated" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = record.getMessage() + " (shown once; later truncations are not reported)", ()
        return True


@functools.cache
def quiet_truncation_warnings() -> TruncationWarningOnce:
    """Install the filter on DSPy's LM logger (once; returns it)."""
    once = TruncationWarningOnce()
    logging.getLogger("dspy.clients.lm").addFilter(once)
    return once


def build_lm(agent: AgentConfig, *, cache: bool = True, model_dir: str | os.PathLike[str] | None = None) -> dspy.BaseLM:
    """The DSPy LM for `agent`. Call `memcollab.lm.preflight.check_agent` first for friendly errors.

    An agent with several `api_base` URLs (or a per-endpoint limit) gets one endpoint LM per URL behind a
    pool that balances, limits and fails over (`memcollab.lm.router`); one URL gets the endpoint LM itself.
    """
    quiet_truncation_warnings()
    if agent.backend == "local":
        return _local_lm(agent, cache=cache, model_dir=model_dir)
    if agent.balanced:
        from memcollab.lm.router import pooled_lm

        one = {"max_parallel_per_endpoint": None}
        endpoints = [agent.model_copy(update={**one, "api_base": url}) for url in agent.endpoints]
        return pooled_lm(agent, [_endpoint_lm(e, cache=cache, model_dir=model_dir) for e in endpoints])
    return _endpoint_lm(agent, cache=cache, model_dir=model_dir)


def _endpoint_lm(agent: AgentConfig, *, cache: bool, model_dir: str | os.PathLike[str] | None) -> dspy.BaseLM:
    """The LM of an agent on one endpoint (or a server the registry starts, or a hosted provider's default)."""
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
    extra = {k: v for k, v in agent.extra.items() if k not in RETRY_KEYS}  # in-process: no endpoint to retry
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
        **extra,
    )


def _litellm_lm(agent: AgentConfig, *, cache: bool) -> dspy.BaseLM:
    policy, timeout, extra = endpoint_settings(agent)
    kwargs: dict[str, Any] = {**extra, "timeout": timeout}
    if agent.api_base:
        kwargs["api_base"] = agent.api_base
    if agent.api_key_env:
        key = os.environ.get(agent.api_key_env)
        if not key:
            raise ConfigError(f"agent '{agent.name}': environment variable {agent.api_key_env} is not set")
        kwargs["api_key"] = key
    if agent.seed is not None:
        kwargs["seed"] = agent.seed
    lm = retrying_lm_class()(
        agent.model, temperature=agent.temperature, max_tokens=agent.max_tokens, cache=cache, num_retries=0, **kwargs
    )
    lm.retry_policy = policy
    return lm


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
