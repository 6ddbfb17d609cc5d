"""Several endpoints per agent: balanced, limited per endpoint, failing over; one endpoint stays as it was.

Real HTTP throughout: OpenAI-compatible stubs (`openai_stub.OpenAIStub`) on 127.0.0.1, the real DSPy LM that
`build_lm` makes, real worker threads.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from openai_stub import OpenAIStub
from test_lm_faults import FAST, KEY_ENV, stub_agent

from memcollab.errors import ConfigError
from memcollab.lm.config import AgentConfig, apply_overrides, parse_agents
from memcollab.lm.factory import RetryPolicy, build_lm, configure_dspy_cache, retrying_lm_class
from memcollab.lm.preflight import check_agent

ANSWERS = {f"Task {i}:": f"so \\boxed{{{i}}}" for i in range(12)}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "not-a-secret")


def agent(urls: list[str] | str, backend: str = "litellm", **fields: object) -> AgentConfig:
    """`test_lm_faults.stub_agent` (fast retries, the stub's key) on one or several endpoints."""
    one = stub_agent("http://127.0.0.1:9/v1", backend).model_dump()
    return AgentConfig.model_validate({**one, "name": "pool", "api_base": urls, **fields})


@pytest.fixture
def stubs(request: pytest.FixtureRequest) -> Iterator[list[OpenAIStub]]:
    """Three stubs (or `indirect` keyword arguments for each: a list of dicts)."""
    options = getattr(request, "param", [{}, {}, {}])
    with ExitStack() as stack:
        yield [stack.enter_context(OpenAIStub(ANSWERS, **kw)) for kw in options]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def ask(lm: object, i: int) -> list[str]:
    return lm(f"Task {i}: what is {i}?")  # type: ignore[operator]


# --------------------------------------------------------------------------- balance, failover, limit


def test_sequential_requests_go_round_every_endpoint(stubs: list[OpenAIStub]) -> None:
    lm = build_lm(agent([s.url for s in stubs]), cache=False)
    assert [ask(lm, i) for i in range(9)] == [[ANSWERS[f"Task {i}:"]] for i in range(9)]
    assert [len(s.requests()) for s in stubs] == [3, 3, 3]


def test_parallel_requests_are_spread_over_every_endpoint(stubs: list[OpenAIStub]) -> None:
    for stub in stubs:
        stub.latency_s = 0.1
    lm = build_lm(agent([s.url for s in stubs]), cache=False)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: ask(lm, i), range(12)))
    assert answers == [[ANSWERS[f"Task {i}:"]] for i in range(12)]
    assert sum(len(s.requests()) for s in stubs) == 12 and all(len(s.requests()) >= 3 for s in stubs)


def test_async_calls_are_balanced_too(stubs: list[OpenAIStub]) -> None:
    lm = build_lm(agent([s.url for s in stubs]), cache=False)

    async def main() -> list[list[str]]:
        return list(await asyncio.gather(*(lm.acall(f"Task {i}: what is {i}?") for i in range(6))))

    assert asyncio.run(main()) == [[ANSWERS[f"Task {i}:"]] for i in range(6)]
    assert [len(s.requests()) for s in stubs] == [2, 2, 2]


@pytest.mark.parametrize("stubs", [[{}, {"faults": {m: "500" for m in ANSWERS}}]], indirect=True)
def test_a_closed_port_and_an_always_500_endpoint_fail_over_to_the_live_one(stubs: list[OpenAIStub]) -> None:
    live, failing = stubs
    lm = build_lm(agent([closed_port_url(), failing.url, live.url]), cache=False)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: ask(lm, i), range(12)))
    assert answers == [[ANSWERS[f"Task {i}:"]] for i in range(12)]  # every task answered
    assert len(live.requests()) == 12 and all(s.answered for s in live.requests())
    # each dead endpoint is cooled down after it fails: a few workers meet it at first, then nobody
    assert 1 <= len(failing.requests()) <= 4
    dead, bad = lm.pool.endpoints[0], lm.pool.endpoints[1]
    assert dead.cool_until > 0 and bad.cool_until > 0 and 1 <= dead.sent <= 4


def test_when_every_endpoint_fails_the_agent_gives_up_after_its_own_retries() -> None:
    """One retry layer: num_retries + 1 tries in all, not (num_retries + 1) per endpoint."""
    from dspy.utils.exceptions import LMError

    with OpenAIStub(ANSWERS, {m: "503" for m in ANSWERS}) as a, OpenAIStub(ANSWERS, {m: "503" for m in ANSWERS}) as b:
        lm = build_lm(agent([a.url, b.url]), cache=False)
        with pytest.raises(LMError):
            ask(lm, 1)
    assert len(a.requests()) + len(b.requests()) == FAST["num_retries"] + 1
    assert a.requests() and b.requests()  # the retry went to the other endpoint


@pytest.mark.parametrize("stubs", [[{"latency_s": 0.15}, {"latency_s": 0.15}]], indirect=True)
def test_the_per_endpoint_limit_holds_and_requests_wait_for_a_slot(stubs: list[OpenAIStub]) -> None:
    lm = build_lm(agent([s.url for s in stubs], max_parallel_per_endpoint=2), cache=False)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: ask(lm, i), range(12)))
    assert answers == [[ANSWERS[f"Task {i}:"]] for i in range(12)]  # none refused: they waited
    assert [s.peak_in_flight for s in stubs] == [2, 2]
    assert sum(len(s.requests()) for s in stubs) == 12 and all(len(s.requests()) >= 4 for s in stubs)
    assert all(e.busy == 0 for e in lm.pool.endpoints)


@pytest.mark.parametrize("stubs", [[{"latency_s": 0.15}, {"latency_s": 0.15}]], indirect=True)
def test_without_a_limit_the_endpoints_take_all_workers(stubs: list[OpenAIStub]) -> None:
    """The control for the test above: the same load overlaps more than 2 requests at an endpoint."""
    lm = build_lm(agent([s.url for s in stubs]), cache=False)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda i: ask(lm, i), range(12)))
    assert max(s.peak_in_flight for s in stubs) > 2


# --------------------------------------------------------------------------- cache, copies, server backend


@pytest.fixture
def restore_dspy_cache() -> Iterator[None]:
    import dspy

    saved = dspy.cache
    yield
    dspy.cache = saved


def test_the_cache_is_shared_by_the_endpoints(
    stubs: list[OpenAIStub], tmp_path: Path, restore_dspy_cache: None
) -> None:
    configure_dspy_cache(tmp_path / "cache")
    lm = build_lm(agent([s.url for s in stubs]), cache=True)
    assert [ask(lm, 1) for _ in range(4)] == [[ANSWERS["Task 1:"]]] * 4
    assert sum(len(s.requests()) for s in stubs) == 1  # the next endpoint in turn found the answer cached
    single = build_lm(agent(stubs[2].url), cache=True)
    assert ask(single, 1) == [ANSWERS["Task 1:"]] and sum(len(s.requests()) for s in stubs) == 1


def test_a_copy_keeps_the_pool_and_sends_its_own_settings(stubs: list[OpenAIStub]) -> None:
    import json

    lm = build_lm(agent([s.url for s in stubs]), cache=False)
    seeded = lm.copy(seed=7)
    assert seeded.pool is lm.pool and seeded.kwargs["seed"] == 7 and lm.kwargs["seed"] == 0
    ask(seeded, 1)
    sent = next(s for s in stubs if s.requests())
    assert sent.requests()[0].hash  # a real request went out
    assert "api_base" not in lm.kwargs and "api_key" not in lm.kwargs
    assert json.dumps(lm.dump_state())  # no endpoint client in the LM's state


def test_several_llama_servers(stubs: list[OpenAIStub]) -> None:
    """The server backend: each endpoint is checked (/health) and gets the llama-server LM."""
    lm = build_lm(agent([s.url for s in stubs[:2]], backend="server", max_parallel_per_endpoint=1), cache=False)
    assert type(lm).__name__ == "PooledServerLM" and lm.supports_response_schema
    assert [ask(lm, i) for i in range(4)] == [[ANSWERS[f"Task {i}:"]] for i in range(4)]
    assert [len(s.requests()) for s in stubs] == [2, 2, 0]
    assert lm.memcollab_serving["url"] == [s.url for s in stubs[:2]] and lm.memcollab_serving["n_parallel"] == 2


# --------------------------------------------------------------------------- one endpoint, config, preflight


def test_one_endpoint_builds_exactly_todays_lm(stubs: list[OpenAIStub]) -> None:
    import subprocess
    import sys

    for urls in (stubs[0].url, [stubs[0].url]):
        lm = build_lm(agent(urls), cache=False)
        assert type(lm) is retrying_lm_class() and lm.kwargs["api_base"] == stubs[0].url
        assert lm.retry_policy == RetryPolicy(retries=2, backoff_s=0.05) and lm.num_retries == 0
    server = build_lm(agent(stubs[0].url, backend="server"), cache=False)
    assert type(server).__name__ == "ServerLM"
    # In a fresh interpreter (other tests of this process may have imported LiteLLM's router for their own ends).
    probe = (
        "import sys; from memcollab.lm.config import AgentConfig; from memcollab.lm.factory import build_lm; "
        f"build_lm(AgentConfig(name='a', model='openai/stub', backend='litellm', api_base={stubs[0].url!r}), "
        "cache=False); print(any(m == 'litellm.router' or m.startswith('litellm.router_') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_a_yaml_list_of_endpoints() -> None:
    agents = parse_agents(
        {
            "agents": [
                {
                    "name": "replicas",
                    "backend": "litellm",
                    "model": "openai/qwen",
                    "api_base": ["http://gpu1:8000/v1", "http://gpu2:8000/v1"],
                    "max_parallel_per_endpoint": 4,
                },
                {"name": "one", "backend": "litellm", "model": "openai/qwen", "api_base": ["http://gpu1:8000/v1"]},
            ]
        }
    )
    replicas, one = agents["replicas"], agents["one"]
    assert replicas.endpoints == ("http://gpu1:8000/v1", "http://gpu2:8000/v1") and replicas.balanced
    assert one.api_base == "http://gpu1:8000/v1" and not one.balanced
    assert replicas.model_dump(mode="json")["api_base"] == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    assert apply_overrides(replicas, api_base="http://other:1/v1").endpoints == ("http://other:1/v1",)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"api_base": []}, "api_base: an empty list names no endpoint"),
        ({"api_base": ["http://a:1/v1", "gpu2:8000"]}, "api_base: 'gpu2:8000' is not an http(s) URL"),
        ({"api_base": ["http://a:1/v1", 8000]}, "api_base: 8000 is not an http(s) URL"),
        ({"api_base": ["http://a:1/v1", "http://a:1/v1/"]}, "api_base: http://a:1/v1/ is listed twice"),
        ({"api_base": ["http://a:1/v1", "http://b:1/v1"], "backend": "local"}, "need backend litellm or server"),
        ({"max_parallel_per_endpoint": 2}, "max_parallel_per_endpoint needs api_base"),
        ({"api_base": ["http://a:1/v1", "http://b:1/v1"], "max_parallel_per_endpoint": 0}, "greater than or equal"),
    ],
)
def test_bad_endpoint_lists_are_one_line_config_errors(fields: dict, needle: str) -> None:
    entry = {"name": "x", "backend": "litellm", "model": "openai/m", **fields}
    with pytest.raises(ConfigError) as caught:
        parse_agents({"agents": [entry]}, "agents.yaml")
    message = str(caught.value)
    assert "\n" not in message and needle in message and message.startswith("agents.yaml: agent 'x': ")


def test_preflight_names_every_unreachable_endpoint(stubs: list[OpenAIStub]) -> None:
    check_agent(agent([s.url for s in stubs]))  # all answer
    down = [closed_port_url(), closed_port_url()]
    with pytest.raises(ConfigError) as caught:
        check_agent(agent([stubs[0].url, *down]))
    message = str(caught.value)
    assert "\n" not in message and "2 of 3 endpoints are unreachable" in message
    assert all(url in message for url in down) and stubs[0].url not in message
    with pytest.raises(ConfigError, match="unreachable"):
        check_agent(agent([stubs[0].url, down[0]], backend="server"))


def test_a_deep_copy_shares_the_pool_and_forward_goes_to_an_endpoint(stubs: list[OpenAIStub]) -> None:
    import copy

    lm = build_lm(agent([s.url for s in stubs]), cache=False)
    assert copy.deepcopy(lm).pool is lm.pool
    assert lm.forward(prompt="Task 2: what is 2?").choices[0].message.content == ANSWERS["Task 2:"]
    assert sum(len(s.requests()) for s in stubs) == 1
