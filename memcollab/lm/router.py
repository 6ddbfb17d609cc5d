"""Several endpoints per agent: each request goes to the least busy replica that is up, within a per-endpoint limit.

An agent may list several `api_base` URLs (vLLM replicas, several llama-servers of one model). Each endpoint
gets the LM a one-endpoint agent would get (same class, transport and error mapping); a pooled LM in front of
them sends each try to one of them:

- balance: the endpoint with the fewest requests in flight (ties: the one that got fewest so far), so
  sequential calls go round the endpoints and parallel ones fill them evenly;
- limit: with `max_parallel_per_endpoint: K` no endpoint has more than K requests in flight; a request
  waits for a free slot instead of overloading one (or being refused);
- failover: a try that fails with an endpoint fault (refused connection, timeout, HTTP 429/5xx, a mangled
  body) cools its endpoint down for `ENDPOINT_COOLDOWN_S`; tries skip cooling endpoints while another is up,
  so the retry lands on a healthy replica. When all are cooling, the one that recovers first is tried.

Which layer retries: only one, the agent's retry loop (`memcollab.lm.factory.call_with_retries`: jittered
backoff, `extra.num_retries`, one retry after a timeout), exactly as for one endpoint; the pool only picks
the endpoint of each try. So a dead replica costs one failed try and one short backoff, and an agent whose
endpoints all fail gives up after the same number of tries as a one-endpoint agent.

Why not LiteLLM's Router: in LiteLLM 1.110 a deployment's `max_parallel_requests` is enforced only on async
calls, by refusing the extra request with HTTP 429 rather than queueing it, while DSPy calls LMs synchronously
from worker threads; a sync `Router.completion` overran a limit of 1 four times over, and an async request
refused for a full slot counts as a failure of that deployment. The pool below does what the issue asks of
the Router, on the LMs DSPy already uses for one endpoint.

The DSPy response cache is shared by every endpoint: DSPy leaves `api_base` and `api_key` out of its cache
key, so a cached answer is found whichever endpoint gave it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from memcollab.lm.factory import _transient, acall_with_retries, call_with_retries

if TYPE_CHECKING:  # pragma: no cover
    import dspy

    from memcollab.lm.config import AgentConfig

T = TypeVar("T")

#: Seconds a failing endpoint is left out while another is up: long enough that parallel workers do not
#: all stumble over it in turn, short enough that a restarted replica is back within a few tasks.
ENDPOINT_COOLDOWN_S = 15.0
#: How often an async caller looks for a free slot (a thread waits on the pool's condition instead).
ASYNC_POLL_S = 0.02
#: Request settings that belong to one endpoint, never to the pooled LM.
ENDPOINT_KEYS = frozenset({"api_base", "api_key", "base_url"})


@dataclass(eq=False)
class Endpoint:
    """One replica: its URL, the LM that talks to it, and what the pool knows about it."""

    url: str
    lm: Any
    busy: int = 0  # requests in flight
    sent: int = 0  # requests so far
    cool_until: float = 0.0  # time.monotonic() before which it is left out while another is up


class EndpointPool:
    """Hands out endpoints, one per try, and takes them back with the try's outcome. Thread-safe."""

    def __init__(self, endpoints: Sequence[Endpoint], limit: int | None, cooldown_s: float = ENDPOINT_COOLDOWN_S):
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.limit = limit
        self.cooldown_s = cooldown_s
        self._cond = threading.Condition()

    def __deepcopy__(self, memo: dict[int, Any]) -> EndpointPool:
        return self  # a runtime resource, like an HTTP client: copies of an LM share it

    def _take(self) -> tuple[Endpoint | None, float | None]:
        """(the endpoint to use, now counted as busy) or (None, seconds worth waiting). Call under the lock."""
        now = time.monotonic()
        free = [e for e in self.endpoints if self.limit is None or e.busy < self.limit]
        if any(e.cool_until <= now for e in self.endpoints):  # some endpoint is up: only up ones are used
            free = [e for e in free if e.cool_until <= now]
        if free:
            chosen = min(free, key=lambda e: (e.busy, e.cool_until, e.sent))
            chosen.busy += 1
            chosen.sent += 1
            return chosen, None
        cooling = [e.cool_until - now for e in self.endpoints if e.cool_until > now]
        return None, min(cooling) if cooling else None  # a slot frees (notify) or a cooldown ends

    def acquire(self) -> Endpoint:
        """The endpoint for the next try, waiting while every usable one is at its limit."""
        with self._cond:
            while True:
                endpoint, wait = self._take()
                if endpoint is not None:
                    return endpoint
                self._cond.wait(wait)

    async def aacquire(self) -> Endpoint:
        """`acquire` without blocking the event loop (and safe to cancel: nothing is taken while waiting)."""
        while True:
            with self._cond:
                endpoint, wait = self._take()
            if endpoint is not None:
                return endpoint
            await asyncio.sleep(min(wait or ASYNC_POLL_S, ASYNC_POLL_S))

    def release(self, endpoint: Endpoint, faulted: bool) -> None:
        """A try on `endpoint` ended; an endpoint fault cools it down, an answer brings it back."""
        with self._cond:
            endpoint.busy -= 1
            endpoint.cool_until = time.monotonic() + self.cooldown_s if faulted else 0.0
            self._cond.notify_all()

    def send(self, call: Callable[[Any], T], is_fault: Callable[[Exception], bool]) -> T:
        """`call(lm)` on the endpoint this try gets."""
        endpoint = self.acquire()
        faulted = False
        try:
            return call(endpoint.lm)
        except Exception as exc:
            faulted = is_fault(exc)
            raise
        finally:
            self.release(endpoint, faulted)

    async def asend(self, call: Callable[[Any], Awaitable[T]], is_fault: Callable[[Exception], bool]) -> T:
        """The async twin of :meth:`send`."""
        endpoint = await self.aacquire()
        faulted = False
        try:
            return await call(endpoint.lm)
        except Exception as exc:
            faulted = is_fault(exc)
            raise
        finally:
            self.release(endpoint, faulted)


@functools.cache
def pooled_lm_class(base: type) -> type:
    """`base` (the LM class of one endpoint, e.g. the retrying dspy.LM or the llama-server LM) whose tries go
    through an :class:`EndpointPool`. Subclassing `base` keeps what adapters ask of it (supported params,
    response schemas) the same as for one endpoint."""
    import dspy

    class PooledLM(base):  # type: ignore[misc, valid-type]
        pool: EndpointPool

        def _settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            """This LM's settings over the endpoint's: `lm.copy(seed=...)` changes them here, not there."""
            own = {k: v for k, v in self.kwargs.items() if k not in ENDPOINT_KEYS}
            return {"cache": self.cache, **own, **kwargs}

        def _fault(self, exc: Exception) -> bool:
            return _transient(exc, self.model) is not None

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            """DSPy's low-level hook, should anything call it: one try on one endpoint, never the LM's own."""
            return self.pool.send(lambda lm: lm.forward(*args, **self._settings(kwargs)), self._fault)

        async def aforward(self, *args: Any, **kwargs: Any) -> Any:
            return await self.pool.asend(lambda lm: lm.aforward(*args, **self._settings(kwargs)), self._fault)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            settings = self._settings(kwargs)
            return call_with_retries(
                lambda: self.pool.send(lambda lm: dspy.LM.__call__(lm, *args, **settings), self._fault),
                self.retry_policy,
                self.model,
            )

        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            settings = self._settings(kwargs)
            return await acall_with_retries(
                lambda: self.pool.asend(lambda lm: dspy.LM.acall(lm, *args, **settings), self._fault),
                self.retry_policy,
                self.model,
            )

    PooledLM.__name__ = PooledLM.__qualname__ = f"Pooled{base.__name__}"
    return PooledLM


def pooled_lm(agent: AgentConfig, endpoint_lms: Sequence[dspy.LM]) -> dspy.LM:
    """One LM for `agent` over `endpoint_lms` (one per `agent.endpoints`, each built as for a one-endpoint agent).

    It carries `memcollab_endpoints` (the URLs) and, over llama-servers, `memcollab_serving` for run records.
    """
    first = endpoint_lms[0]
    settings = {k: v for k, v in first.kwargs.items() if k not in ENDPOINT_KEYS}
    lm = pooled_lm_class(type(first))(
        first.model, model_type=first.model_type, cache=first.cache, num_retries=0, **settings
    )
    lm.retry_policy = first.retry_policy
    lm.pool = EndpointPool(
        [Endpoint(url, endpoint) for url, endpoint in zip(agent.endpoints, endpoint_lms)],
        agent.max_parallel_per_endpoint,
    )
    lm.memcollab_endpoints = tuple(agent.endpoints)
    serving = [getattr(endpoint, "memcollab_serving", None) for endpoint in endpoint_lms]
    if all(serving):
        slots = [s.get("n_parallel") for s in serving]
        lm.memcollab_serving = {
            **serving[0],
            "url": [s["url"] for s in serving],
            "n_parallel": sum(slots) if all(isinstance(n, int) for n in slots) else None,
            "max_parallel_per_endpoint": agent.max_parallel_per_endpoint,
        }
    return lm
