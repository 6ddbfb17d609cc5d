"""llama-server backend: real binary, real smollm2-135m, real processes (no mocks).

Skips with a reason when the binary (`memcollab models build-server`) or the
smollm2-135m model (`memcollab models prepare smollm2-135m`) is missing; the
error-path tests need neither.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from memcollab.errors import MemCollabError, ServerError
from memcollab.lm import server as srv
from memcollab.lm.config import AgentConfig
from memcollab.lm.preflight import check_agent
from memcollab.lm.server import find_server_binary

pytestmark = pytest.mark.server

MODEL = "smollm2-135m"


def _binary_or_skip() -> Path:
    try:
        return find_server_binary()
    except ServerError as exc:
        pytest.skip(str(exc))


def _model_or_skip() -> Path:
    try:
        return srv.resolve_model(MODEL)[0]
    except (MemCollabError, ImportError) as exc:
        pytest.skip(f"{MODEL} unavailable: {exc}")


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


@pytest.fixture(scope="session")
def smollm_server():
    """One 2-slot smollm2 server for the session; stopped even when a test fails."""
    _binary_or_skip()
    server = srv.LlamaServer(_model_or_skip(), n_parallel=2, ctx_per_slot=1024)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        assert not _alive(server.last_pid)


# ---------------------------------------------------------------- error paths (no binary/model needed)


def test_missing_binary_is_one_line_server_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMCOLLAB_LLAMA_SERVER", "/nonexistent")
    with pytest.raises(ServerError) as exc:
        find_server_binary()
    assert "\n" not in str(exc.value) and "build-server" in str(exc.value)
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(ServerError) as exc:
        srv.LlamaServer(fake, n_parallel=1).start()
    assert "\n" not in str(exc.value) and "/nonexistent" in str(exc.value)


def test_binary_lookup_order_env_then_cache_then_path(monkeypatch, tmp_path):
    def fake(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    cache = tmp_path / "cache"
    monkeypatch.setenv("MEMCOLLAB_CACHE_DIR", str(cache))
    monkeypatch.delenv("MEMCOLLAB_LLAMA_SERVER", raising=False)
    on_path = fake(tmp_path / "pathdir" / "llama-server")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_server_binary() == on_path
    cached = fake(cache / "bin" / "llama-server")
    assert find_server_binary() == cached
    explicit = fake(tmp_path / "explicit" / "my-server")
    monkeypatch.setenv("MEMCOLLAB_LLAMA_SERVER", str(explicit))
    assert find_server_binary() == explicit
    explicit.chmod(0o644)  # not executable: an error, never a silent fallback
    with pytest.raises(ServerError):
        find_server_binary()


def test_compile_progress_reads_ninja_and_make_lines():
    from memcollab.lm.server.build import compile_progress

    assert compile_progress("[12/345] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o") == (12, 345)
    assert compile_progress("[ 7%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o") == (7, 100)
    assert compile_progress("[100%] Linking CXX executable ../../bin/llama-server") == (100, 100)
    assert compile_progress("-- Configuring done") is None
    assert compile_progress("/src/llama.cpp:12:3: warning: [-Wunused] something [1/2]") is None


def test_build_progress_prints_lines_when_not_a_terminal():
    """In a log file (setup scripts, CI) the compile shows as a line per 10%, with the elapsed time."""
    import io

    from rich.console import Console

    from memcollab.cli.models import _BuildProgress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with _BuildProgress(console) as show:
        show("$ /usr/bin/python -m pip download --no-deps llama-cpp-python==0.3.36 -d /tmp/x")
        show("$ cmake -S /src/llama.cpp -B /build")
        show("-- Configuring done")
        show("$ cmake --build /build --target llama-server -j 2")
        for i in range(1, 201):
            show(f"[{i}/200] Building CXX object x{i}.o")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines[:3]] == [
        "llama-server: fetching the llama.cpp sources (pip download)",
        "llama-server: configuring (cmake)",
        "llama-server: compiling",
    ]
    compiled = [line for line in lines if "compiled" in line]
    assert len(compiled) == 11 and compiled[-1].endswith("compiled 200/200 (100%)"), compiled
    assert all(line.startswith("[") for line in lines)  # each line carries the elapsed time


def test_port_in_use_is_one_line_server_error(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a model")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerError) as exc:
            srv.LlamaServer(fake, n_parallel=1, port=port).start()
    assert "\n" not in str(exc.value) and str(port) in str(exc.value)


def test_server_that_dies_at_startup_reports_its_log(tmp_path):
    _binary_or_skip()
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"this is not a gguf file" * 10)
    server = srv.LlamaServer(fake, n_parallel=1, startup_timeout=60)
    with pytest.raises(ServerError) as exc:
        server.start()
    msg = str(exc.value)
    assert "\n" not in msg and "exited with code" in msg and "log:" in msg
    assert not server.running and not _alive(server.last_pid)


# ---------------------------------------------------------------- the server backend through DSPy


def test_two_agents_share_one_server_concurrently():
    import dspy

    _binary_or_skip()
    _model_or_skip()
    agents = [
        AgentConfig(
            name="a", model=MODEL, backend="server", temperature=0.0, seed=1, max_tokens=64, n_parallel=2, n_ctx=1024
        ),
        AgentConfig(
            name="b", model=MODEL, backend="server", temperature=0.7, seed=2, max_tokens=64, n_parallel=2, n_ctx=1024
        ),
    ]
    try:
        lms = [srv.server_lm(agent, cache=False) for agent in agents]
        assert len(srv.running_servers()) == 1, "two agents on one model must share one server"
        server = srv.running_servers()[0]
        assert lms[0].memcollab_serving["url"] == lms[1].memcollab_serving["url"] == server.url
        assert [lm.memcollab_serving["seed"] for lm in lms] == [1, 2]
        assert lms[0].memcollab_serving["n_parallel"] == 2
        assert lms[0].kwargs["temperature"] == 0.0 and lms[1].kwargs["temperature"] == 0.7

        predict = dspy.Predict("question -> answer")
        answers: dict[int, str] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def ask(i: int) -> None:
            try:
                barrier.wait()
                with dspy.context(lm=lms[i]):
                    answers[i] = predict(question="What is 2 + 3? Reply with a number.").answer
            except BaseException as exc:  # surfaced in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert all(isinstance(answers.get(i), str) and answers[i].strip() for i in range(2)), answers
        # Both requests were decoded by the one process: its log shows both slots at work.
        log = server.log_path.read_text(errors="replace")
        assert "launch_slot_: id  0" in log and "launch_slot_: id  1" in log
        pid = server.pid
    finally:
        srv.shutdown_all()
    assert not srv.running_servers()
    assert _gone_within(pid, 5)


def test_plain_dspy_openai_lm_against_local_server(smollm_server):
    """The litellm/OpenAI-compatible route: an ordinary dspy.LM pointed at a local server."""
    import dspy

    lm = dspy.LM(
        "openai/smollm2-135m",
        api_base=smollm_server.url,
        api_key="local",
        model_type="chat",
        temperature=0.0,
        max_tokens=64,
        cache=False,
    )
    with dspy.context(lm=lm):
        pred = dspy.Predict("question -> answer")(question="What is 2 + 3? Reply with a number.")
    assert isinstance(pred.answer, str) and pred.answer.strip()


def test_json_adapter_output_is_grammar_constrained_through_the_server(smollm_server):
    """DSPy's JSONAdapter sends its schema to llama-server, which enforces it: even a 135M model returns one
    JSON object with exactly the signature's output fields (no fences, no Python quoting)."""
    import dspy

    agent = AgentConfig(name="j", model=MODEL, backend="server", max_tokens=200, api_base=smollm_server.url)
    lm = srv.server_lm(agent, cache=False)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.ChainOfThought("task -> code")(task="Write a Python function add(a, b) that returns a + b.")
    raw = lm.history[-1]["outputs"][0]
    raw = raw if isinstance(raw, str) else raw.get("text", "")
    assert set(json.loads(raw)) == {"reasoning", "code"}, raw
    assert isinstance(pred.code, str)


def test_agent_seed_reaches_the_server(smollm_server):
    """Same seed at temperature 1 reproduces a sample; another seed gives another one."""

    def sample(seed: int) -> str:
        agent = AgentConfig(
            name="s",
            model=MODEL,
            backend="server",
            temperature=1.0,
            seed=seed,
            max_tokens=30,
            api_base=smollm_server.url,
        )
        return srv.server_lm(agent, cache=False)("Tell me a short random story.")[0]

    first, again, other = sample(1), sample(1), sample(2)
    assert first == again
    assert first != other


def test_external_server_url_is_reused_not_restarted(smollm_server):
    agent = AgentConfig(name="e", model=MODEL, backend="server", max_tokens=16, api_base=smollm_server.url)
    check_agent(agent)  # reachable
    lm = srv.server_lm(agent)
    assert lm.memcollab_serving["url"] == smollm_server.url
    assert lm.memcollab_serving["n_parallel"] == 2
    assert not srv.running_servers()
    dead = AgentConfig(name="d", model=MODEL, backend="server", api_base="http://127.0.0.1:9/v1")
    with pytest.raises(ServerError) as exc:
        srv.server_lm(dead)
    assert "\n" not in str(exc.value) and "127.0.0.1:9" in str(exc.value)


# ---------------------------------------------------------------- no orphans when the harness dies

HARNESS = textwrap.dedent(
    """
    import json, os, signal, sys, urllib.request
    from memcollab.lm.server import ensure_server

    def previous_handler(signum, frame):
        # MemCollab's handler chains to this one after stopping its servers: report, then die of the signal.
        try:
            os.kill(server.pid_at_start, 0)
            print("server still running when the previous handler ran", flush=True)
        except ProcessLookupError:
            print("server stopped before the previous handler ran", flush=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, previous_handler)
    server = ensure_server(sys.argv[1], n_parallel=1, ctx_per_slot=512)
    server.pid_at_start = server.pid
    print(server.pid, server.log_path, flush=True)
    body = json.dumps({"messages": [{"role": "user", "content": "Count from 1 to 200."}],
                       "max_tokens": 256, "temperature": 0}).encode()
    while True:
        req = urllib.request.Request(server.url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=120).read()
    """
)


def _start_harness(model_path: Path) -> tuple[subprocess.Popen, int, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(model_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    fields = proc.stdout.readline().split(maxsplit=1)
    if len(fields) != 2 or not fields[0].isdigit():
        proc.kill()
        pytest.fail(f"harness did not start a server: {fields!r} {proc.stderr.read()[-2000:]}")
    time.sleep(1.5)  # let it get into the middle of a request
    return proc, int(fields[0]), Path(fields[1].strip())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killing_the_harness_leaves_no_server(sig):
    _binary_or_skip()
    model_path = _model_or_skip()
    proc, server_pid, log_path = _start_harness(model_path)
    try:
        assert _alive(server_pid)
        proc.send_signal(sig)
        assert proc.wait(30) == -sig
        assert _gone_within(server_pid, 10), f"server {server_pid} survived {sig.name} of its parent"
        if sig == signal.SIGTERM:
            # Stopped (and reaped) by MemCollab's handler, which then chained to the one installed before it;
            # not merely by the kernel's death signal after the harness was gone.
            report = proc.stdout.read()
            assert "server stopped before the previous handler ran" in report, report
    finally:
        if proc.poll() is None:
            proc.kill()
        if _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_an_ignored_sigint_leaves_the_run_and_its_server_alone():
    """A shell starts a background job (`nohup memcollab grid ... &`) with SIGINT ignored: a stray SIGINT must not
    stop its servers and leave the run retrying a dead endpoint for hours, as it once did."""
    _binary_or_skip()
    model_path = _model_or_skip()
    ignored = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", ignored + HARNESS, str(model_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fields = proc.stdout.readline().split(maxsplit=1)
    try:
        assert len(fields) == 2 and fields[0].isdigit(), f"harness did not start: {fields!r}"
        server_pid = int(fields[0])
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(8)  # a handler that stops the server takes 3 s (its grace period) and SIGKILL
        assert proc.poll() is None, "the run ignores SIGINT, as its shell asked"
        assert _alive(server_pid), "and its server keeps serving it"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
        assert _gone_within(server_pid, 10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_agent_config_through_build_lm():
    """An agent's n_parallel, n_ctx (per slot) and seed reach the server it starts; the factory picks the backend."""
    from memcollab.lm.factory import build_lm

    _binary_or_skip()
    _model_or_skip()
    agent = AgentConfig(name="s", model=MODEL, backend="server", n_parallel=1, n_ctx=512, max_tokens=8, seed=3)
    check_agent(agent)
    try:
        lm = build_lm(agent, cache=False)
        assert lm("Say hi.")[0].strip()
        serving = lm.memcollab_serving
        assert (serving["n_parallel"], serving["ctx_per_slot"], serving["seed"]) == (1, 512, 3)
    finally:
        srv.shutdown_all()
