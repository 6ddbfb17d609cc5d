"""LM faults: retried to an answer, or counted as an `lm_error` while the run goes on, within an error budget.

Everything here is real except the model: a real OpenAI-compatible HTTP server on 127.0.0.1
(`openai_stub.OpenAIStub`) fails on a per-task schedule (HTTP 500/503, 429 with Retry-After, a
hang past the client's timeout, a cut-off body, a garbled body, a 400) and then answers with a
`\\boxed{}` answer; the real DSPy LM that `build_lm` makes talks to it, and the real `memcollab
evaluate` runs as a subprocess on real GSM8K tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dspy.utils.exceptions import LMError
from openai_stub import OpenAIStub

from memcollab.errors import ConfigError, lm_endpoint_error
from memcollab.lm.config import AgentConfig
from memcollab.lm.factory import DEFAULT_NUM_RETRIES, DEFAULT_TIMEOUT_S, RetryPolicy, build_lm
from memcollab.paths import default_data_dir

MEMCOLLAB = [sys.executable, "-c", "import sys; from memcollab.cli import main; sys.argv[0] = 'memcollab'; main()"]
KEY_ENV = "MEMCOLLAB_STUB_KEY"
#: Fast retries for tests: 2 retries, 2 s timeout (the stub hangs for 30 s), 50 ms backoff.
FAST = {"num_retries": 2, "timeout": 2, "retry_backoff_s": 0.05}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "not-a-secret")


def stub_agent(url: str, backend: str = "litellm", **extra: object) -> AgentConfig:
    return AgentConfig(
        name="stub",
        model="openai/stub" if backend == "litellm" else "stub",
        backend=backend,
        api_base=url,
        api_key_env=KEY_ENV if backend == "litellm" else None,
        max_tokens=64,
        adapter="natural",
        extra={**FAST, **extra},
    )


# --------------------------------------------------------------------------- the LM alone


@pytest.mark.parametrize("backend", ["litellm", "server"])
@pytest.mark.parametrize("faults", [["500", "503"], ["429"], ["hang"], ["cut"], ["garbled"]])
def test_transient_faults_are_retried_to_the_answer(backend: str, faults: list[str]) -> None:
    with OpenAIStub({"Q": "so \\boxed{7}"}, {"Q": faults}, hang_s=30) as stub:
        lm = build_lm(stub_agent(stub.url, backend), cache=False)
        start = time.monotonic()
        assert lm("Q: what is 3 + 4?") == ["so \\boxed{7}"]
        elapsed = time.monotonic() - start
    assert [s.fault for s in stub.requests("Q")] == [*faults, "ok"]
    if faults == ["429"]:
        assert elapsed >= 1.0  # the stub's Retry-After: 1 is honoured
    if faults == ["hang"]:
        assert elapsed < 10  # the 2 s timeout cut the 30 s hang short


def test_a_failing_endpoint_is_tried_num_retries_plus_one_times_then_raises_a_recognised_error() -> None:
    with OpenAIStub({"Q": "so \\boxed{7}"}, {"Q": "500"}) as stub:
        lm = build_lm(stub_agent(stub.url), cache=False)
        with pytest.raises(LMError) as caught:
            lm("Q: what is 3 + 4?")
    assert len(stub.requests("Q")) == FAST["num_retries"] + 1
    known = lm_endpoint_error(caught.value)
    assert known is not None and "HTTP 500" in str(known)


def test_once_a_signal_stopped_the_servers_a_failed_call_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C stops the run's llama-servers first; the calls still in flight then fail, and retrying a server
    that was stopped on purpose would only hold the exit up (and fill the log) for half a minute."""
    import threading

    from memcollab.lm.server import supervise

    stopped = threading.Event()
    stopped.set()
    monkeypatch.setattr(supervise, "_STOPPING", stopped)
    with OpenAIStub({"Q": "so \\boxed{7}"}, {"Q": "500"}) as stub:
        lm = build_lm(stub_agent(stub.url, backend="server"), cache=False)
        with pytest.raises(LMError):
            lm("Q: what is 3 + 4?")
    assert len(stub.requests("Q")) == 1


def test_a_hung_endpoint_costs_two_timeouts_not_num_retries_plus_one() -> None:
    with OpenAIStub({"Q": "so \\boxed{7}"}, {"Q": "hang"}, hang_s=30) as stub:
        lm = build_lm(stub_agent(stub.url, num_retries=4), cache=False)
        start = time.monotonic()
        with pytest.raises(LMError) as caught:
            lm("Q: what is 3 + 4?")
        elapsed = time.monotonic() - start
    assert len(stub.requests("Q")) == 2 and elapsed < 10
    assert lm_endpoint_error(caught.value) is not None


def test_a_garbled_body_that_never_heals_is_reported_as_an_endpoint_error() -> None:
    with OpenAIStub({"Q": "so \\boxed{7}"}, {"Q": "garbled"}) as stub:
        lm = build_lm(stub_agent(stub.url), cache=False)
        with pytest.raises(LMError) as caught:
            lm("Q: what is 3 + 4?")
    assert len(stub.requests("Q")) == FAST["num_retries"] + 1
    assert lm_endpoint_error(caught.value) is not None


def test_a_bad_request_is_not_retried() -> None:
    with OpenAIStub({"Q": "so \\boxed{7}"}, {"Q": ["400"]}) as stub:
        lm = build_lm(stub_agent(stub.url), cache=False)
        with pytest.raises(LMError):
            lm("Q: what is 3 + 4?")
    assert len(stub.requests("Q")) == 1


def test_every_endpoint_lm_gets_retries_and_a_timeout_by_default() -> None:
    with OpenAIStub({}) as stub:
        for backend in ("litellm", "server"):
            agent = stub_agent(stub.url, backend).model_copy(update={"extra": {}})
            lm = build_lm(agent, cache=False)
            assert lm.retry_policy == RetryPolicy(retries=DEFAULT_NUM_RETRIES)
            assert lm.kwargs["timeout"] == DEFAULT_TIMEOUT_S[backend]
            assert lm.num_retries == 0  # DSPy's own loop is off: ours retries, with jitter
            assert "retry_backoff_s" not in lm.kwargs and "num_retries" not in lm.kwargs


def test_backoff_grows_and_is_jittered() -> None:
    policy = RetryPolicy(retries=5, backoff_s=1.0)
    waits = [[policy.delay(attempt) for _ in range(200)] for attempt in range(4)]
    for attempt, drawn in enumerate(waits):
        assert all(2**attempt / 2 <= w <= 2**attempt for w in drawn)
        assert len({round(w, 6) for w in drawn}) > 100  # not one fixed wait
    assert 5.0 <= policy.delay(0, retry_after=5.0) <= 6.0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"num_retries": -1}, "num_retries"),
        ({"timeout": 0}, "timeout"),
        ({"retry_backoff_s": "soon"}, "retry_backoff_s"),
    ],
)
def test_bad_retry_settings_are_one_line(extra: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        build_lm(stub_agent("http://127.0.0.1:9/v1", **extra), cache=False)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- `memcollab evaluate`

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "gsm8k/test.jsonl").is_file(), reason="no GSM8K data")


def gsm8k_tasks(n: int) -> list:
    from memcollab.benchmarks import get_benchmark, load_source

    return load_source(get_benchmark("gsm8k").eval, data_dir=DATA, limit=n)


def evaluate(tmp_path: Path, url: str, run_dir: str, *extra: str) -> subprocess.CompletedProcess:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        yaml.safe_dump(
            {
                "agents": [
                    {
                        "name": "stub",
                        "backend": "litellm",
                        "model": "openai/stub",
                        "api_base": url,
                        "api_key_env": KEY_ENV,
                        "adapter": "natural",
                        "max_tokens": 64,
                        "extra": FAST,
                    }
                ]
            }
        )
    )
    cmd = [
        *MEMCOLLAB,
        "evaluate",
        "--benchmark",
        "gsm8k",
        "--agent",
        "stub",
        "--limit",
        "4",
        "--workers",
        "2",
        "--data-dir",
        str(DATA),
        "--agents-file",
        str(agents),
        "--run-dir",
        str(tmp_path / run_dir),
        "--no-track",
        *extra,
    ]
    env = {**os.environ, KEY_ENV: "not-a-secret", "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def results(tmp_path: Path, run_dir: str) -> tuple[dict, list[dict]]:
    summary = json.loads((tmp_path / run_dir / "summary.json").read_text())["results"]
    rows = [json.loads(line) for line in (tmp_path / run_dir / "eval_stub_no_memory.jsonl").read_text().splitlines()]
    assert len(summary) == 1
    return summary[0], rows


@needs_data
def test_evaluate_retries_faults_counts_lm_errors_and_a_rerun_retries_only_those(tmp_path: Path) -> None:
    tasks = gsm8k_tasks(4)
    markers = [t.prompt[:60] for t in tasks]
    answers = {
        m: f"Step by step the total comes out. The answer is \\boxed{{{t.answer}}}." for m, t in zip(markers, tasks)
    }
    faults: dict[str, list[str] | str] = {
        markers[0]: ["500", "429"],
        markers[1]: ["hang"],
        markers[2]: ["cut", "garbled"],
        markers[3]: "503",
    }
    with OpenAIStub(answers, faults, hang_s=30) as stub:
        first = evaluate(tmp_path, stub.url, "run")
        assert first.returncode == 0, first.stderr[-3000:]
        summary, rows = results(tmp_path, "run")
        # three tasks came through their faults; the fourth never got an answer and is counted, not graded
        assert (summary["n"], summary["correct"], summary["lm_errors"], summary["format_errors"]) == (3, 3, 1, 0)
        assert [r["error_type"] for r in rows[:3]] == ["", "", ""] and all(r["correct"] for r in rows[:3])
        assert rows[3]["error_type"] == "lm_error" and rows[3]["error"].startswith("lm_error: LMServerError:")
        assert "LM errors" in first.stdout and "rerun" in first.stdout
        assert [len(stub.requests(m)) for m in markers] == [3, 2, 3, FAST["num_retries"] + 1]

        # a rerun asks only for the task that failed (the others come from the result store)
        before = {m: len(stub.requests(m)) for m in markers}
        second = evaluate(tmp_path, stub.url, "run")
        assert second.returncode == 0, second.stderr[-3000:]
        assert {m: len(stub.requests(m)) - before[m] for m in markers} == {
            markers[0]: 0,
            markers[1]: 0,
            markers[2]: 0,
            markers[3]: FAST["num_retries"] + 1,
        }
        assert results(tmp_path, "run")[0]["lm_errors"] == 1

        # the endpoint heals: one more request, and the table is whole
        stub.faults[markers[3]] = []
        third = evaluate(tmp_path, stub.url, "run")
        assert third.returncode == 0, third.stderr[-3000:]
        assert len(stub.requests(markers[3])) == before[markers[3]] + FAST["num_retries"] + 2
        assert len(stub.requests()) == sum(before.values()) + FAST["num_retries"] + 2
        summary, rows = results(tmp_path, "run")
        assert (summary["n"], summary["correct"], summary["lm_errors"]) == (4, 4, 0)


@needs_data
def test_more_lm_errors_than_max_errors_end_the_run_with_one_line(tmp_path: Path) -> None:
    tasks = gsm8k_tasks(4)
    markers = [t.prompt[:60] for t in tasks]
    answers = {m: f"The answer is \\boxed{{{t.answer}}}." for m, t in zip(markers, tasks)}
    with OpenAIStub(answers, {markers[1]: "500", markers[2]: "500"}) as stub:
        within = evaluate(tmp_path, stub.url, "within", "--max-errors", "2")
        over = evaluate(tmp_path, stub.url, "over", "--max-errors", "1")
    assert within.returncode == 0, within.stderr[-3000:]
    assert results(tmp_path, "within")[0]["lm_errors"] == 2
    assert over.returncode == 3, over.stderr[-3000:]
    assert "Traceback" not in over.stderr
    lines = [line for line in over.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, over.stderr[-3000:]
    assert "--max-errors 1" in lines[0] and "HTTP 500" in lines[0]


def test_a_bug_is_not_an_lm_error(tmp_path: Path) -> None:
    """Only endpoint failures are counted: anything else raises as it is, even within the error budget."""
    from memcollab.benchmarks import taxonomy_for
    from memcollab.memory import MemoryStore
    from memcollab.memory.results import ResultStore
    from memcollab.programs.pipeline import MemCollab
    from memcollab.records import Task

    task = Task(id="gsm8k/test/1", benchmark="gsm8k", split="test", kind="math", prompt="1+1?", answer="2")
    with MemoryStore(tmp_path / "m.sqlite") as store, ResultStore(tmp_path / "r.sqlite") as results_store:
        pipeline = MemCollab(taxonomy_for("gsm8k"), store, results_store, show_progress=False, max_errors=5)

        def buggy(item: Task) -> None:
            raise KeyError("a bug of ours")

        with pytest.raises(KeyError, match="a bug of ours"):
            pipeline._map(buggy, [task, task], "buggy")
        assert pipeline.lm_errors == 0


def test_lm_errors_in_build_and_memory_evaluation_are_counted_once_never_paired_never_stored(tmp_path: Path) -> None:
    """A dead agent's tasks are lm_errors, not failures: no contrast pair (no distill call) comes from them, the
    result store keeps none of them, and a task whose classification failed is not solved (nor counted) again."""
    from memcollab.benchmarks import taxonomy_for
    from memcollab.lm.factory import build_adapter
    from memcollab.memory import MemoryStore
    from memcollab.memory.results import ResultStore
    from memcollab.programs.pipeline import Agent, MemCollab
    from memcollab.records import Task

    tasks = [
        Task(
            id=f"gsm8k/train/{i}",
            benchmark="gsm8k",
            split="train",
            kind="math",
            prompt=f"Task marker {i}: what is {i} + {i}?",
            answer=str(2 * i),
        )
        for i in (1, 2, 3)
    ]
    answers = {f"Task marker {i}:": f"So \\boxed{{{2 * i}}}." for i in (1, 2, 3)}
    with (
        OpenAIStub(answers) as up,
        OpenAIStub(answers, {m: "500" for m in answers}) as down,
        MemoryStore(tmp_path / "memory.sqlite") as store,
        ResultStore(tmp_path / "results.sqlite") as results_store,
    ):

        def agent(name: str, url: str) -> Agent:
            config = stub_agent(url).model_copy(update={"name": name})
            return Agent(
                name=name,
                lm=build_lm(config, cache=False),
                config=config.model_dump(mode="json"),
                adapter=build_adapter(config),
            )

        good, dead = agent("good", up.url), agent("dead", down.url)
        build = MemCollab(taxonomy_for("gsm8k"), store, results_store, distiller=good, workers=2, show_progress=False)
        report = build.build(tasks, [good, dead])
        assert report.lm_errors == 3 and build.lm_errors == 3
        assert report.pairs == [] and report.proposed == 0  # good's successes have no failure to contrast with
        assert report.accuracy_by_agent["good"] == 1.0
        assert sum(t.error.startswith("lm_error:") for t in report.trajectories) == 3
        assert results_store.count("trajectory") == 3  # good's only: a rerun asks the dead agent again
        assert len(up.requests()) == 3  # no distill call

        evaluation = MemCollab(
            taxonomy_for("gsm8k"),
            store,
            results_store,
            classifier_agent=dead,
            workers=2,
            show_progress=False,
            max_errors=3,
        )
        asked = len(up.requests())
        trajectories = evaluation.evaluate(tasks, good, use_memory=True)
        assert [t.error.split(":")[0] for t in trajectories] == ["lm_error"] * 3
        assert evaluation.lm_errors == 3  # one per task: the classification, not the solve as well
        assert len(up.requests()) == asked  # no solve without a category
        assert results_store.count("category") == 0
