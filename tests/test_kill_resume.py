"""Kill and resume: a `memcollab run` killed with SIGKILL mid-way and run again ends with the same table as an
uninterrupted run, and asks the model again only for what had not finished.

Real parts only: a llama-server serving smollm2-135m, a counting proxy on 127.0.0.1 in front of it
(`openai_stub.CountingProxy`, which logs every completion request's body hash and whether its answer
was delivered), and `memcollab run` as a subprocess, with the defaults (result store and DSPy cache
under the run dir) except `--no-track`: MLflow plays no part in resuming.

One worker and one server slot make the request order deterministic: when the proxy holds request
K+1, requests 1..K are answered and their results stored (each was stored before the next request
was sent), and request K+1 is the one call in flight. The proxy also turns off llama-server's prompt
cache (`cache_prompt: false`): reusing a cached prompt prefix changes the arithmetic enough that
greedy decoding of the same request differs between runs (5 of 12 completions did), and the tables
could not be compared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from openai_stub import CountingProxy, Seen

from memcollab.errors import MemCollabError, ServerError
from memcollab.paths import default_data_dir

pytestmark = [pytest.mark.model, pytest.mark.server, pytest.mark.timeout(300)]

MEMCOLLAB = [sys.executable, "-c", "import sys; from memcollab.cli import main; sys.argv[0] = 'memcollab'; main()"]
MODEL = "smollm2-135m"
DATA = default_data_dir()


@pytest.fixture(scope="module")
def server():
    """One single-slot smollm2 server (deterministic greedy decoding: one sequence at a time)."""
    from memcollab.lm.server import LlamaServer, find_server_binary, resolve_model

    try:
        find_server_binary()
        path = resolve_model(MODEL)[0]
    except (MemCollabError, ImportError) as exc:
        pytest.skip(f"llama-server or {MODEL} unavailable: {exc}")
    if DATA is None or not (DATA / "gsm8k/train.jsonl").is_file():
        pytest.skip("no GSM8K data")
    try:
        # one thread: on a 2-core machine the other core is often busy with another model
        with LlamaServer(path, n_parallel=1, ctx_per_slot=2048, threads=1) as running:
            yield running
    except ServerError as exc:
        pytest.skip(f"llama-server did not start: {exc}")


def run(tmp_path: Path, proxy: CountingProxy, run_dir: str) -> subprocess.Popen:
    """`memcollab run` on 3 build and 3 eval GSM8K tasks: two build agents, one evaluated, all through the proxy."""
    agents = tmp_path / "agents.yaml"
    common = {"backend": "server", "model": MODEL, "api_base": proxy.url, "temperature": 0.0, "seed": 0}
    agents.write_text(
        yaml.safe_dump(
            {
                "agents": [
                    {
                        "name": "a",
                        "max_tokens": 48,
                        **common,
                    },  # short answers (all wrong, like most of smollm2's): a fast test
                    {
                        "name": "b",
                        "max_tokens": 40,
                        **common,
                    },  # another length limit: other requests, other trajectories
                ]
            }
        )
    )
    cmd = [
        *MEMCOLLAB,
        "run",
        "--benchmark",
        "gsm8k",
        "--build-limit",
        "3",
        "--eval-limit",
        "3",
        "--build-agents",
        "a,b",
        "--eval-agents",
        "a",
        "--workers",
        "1",
        "--agents-file",
        str(agents),
        "--data-dir",
        str(DATA),
        "--run-dir",
        str(tmp_path / run_dir),
        "--no-track",
    ]
    log = (tmp_path / f"{run_dir}.log").open("w")
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, tmp_path: Path, run_dir: str) -> None:
    code = process.wait(timeout=300)
    assert code == 0, (tmp_path / f"{run_dir}.log").read_text()[-3000:]


def table(tmp_path: Path, run_dir: str) -> list[dict]:
    """summary.json's results without wall-clock figures (latency is measured, not computed)."""
    results = json.loads((tmp_path / run_dir / "summary.json").read_text())["results"]
    return [{k: v for k, v in row.items() if k != "mean_latency_s"} for row in results]


def hashes(seen: list[Seen]) -> Counter:
    return Counter(s.hash for s in seen)


def test_a_killed_run_resumes_to_the_same_table_without_repeating_finished_calls(server, tmp_path: Path) -> None:
    with CountingProxy(server.root, add_to_body={"cache_prompt": False}) as proxy:
        # 1. uninterrupted (about 12 calls: 3 build tasks x 2 agents, 3 eval solves, 3 classifications)
        finish(run(tmp_path, proxy, "whole"), tmp_path, "whole")
        whole = list(proxy.seen)
        total = len(whole)
        assert total >= 6 and all(s.answered for s in whole), [(s.hash, s.answered) for s in whole]

        # 2. killed with SIGKILL while its (K+1)-th call is in flight: mid-way through the build
        kill_after = total // 2 - 1
        proxy.seen.clear()
        proxy.hold_after(kill_after)
        killed = run(tmp_path, proxy, "resumed")
        assert proxy.held.wait(timeout=240), (tmp_path / "resumed.log").read_text()[-3000:]
        os.killpg(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        before_kill = list(proxy.seen)
        finished = [s for s in before_kill if s.answered]
        in_flight = [s for s in before_kill if not s.answered]
        assert len(finished) == kill_after and len(in_flight) == 1

        # 3. rerun to completion
        proxy.hold_after(None)
        proxy.seen.clear()
        finish(run(tmp_path, proxy, "resumed"), tmp_path, "resumed")
        resumed = list(proxy.seen)

    assert table(tmp_path, "resumed") == table(tmp_path, "whole")
    # the same calls as the uninterrupted run, split at the kill: nothing finished is asked again
    assert len(resumed) == total - kill_after
    assert not set(hashes(resumed)) & set(hashes(finished)), "a call answered before the kill was repeated"
    assert in_flight[0].hash in hashes(resumed), "the call in flight at the kill must be made again"
    assert hashes(finished) + hashes(resumed) == hashes(whole)
