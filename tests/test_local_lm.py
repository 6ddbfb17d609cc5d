"""The in-process llama.cpp LM.

Unit tests run offline without a model. Tests marked `model` generate tokens
with the real smollm2-135m; each runs in a subprocess so that a crash of the
native library (SIGSEGV, SIGILL from a non-portable build) is reported as a
test failure naming the signal instead of killing pytest.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest

from memcollab.lm.catalog import CATALOG, locate
from memcollab.lm.preflight import llama_cpp_available

SMOLLM = CATALOG["smollm2-135m"]


def _model_skip_reason() -> str | None:
    if not llama_cpp_available():
        return "llama-cpp-python is not installed (pip install 'memcollab[llama]')"
    if not locate(SMOLLM).installed:
        return f"smollm2-135m is not installed ({SMOLLM.install_hint})"
    return None


needs_model = pytest.mark.skipif(_model_skip_reason() is not None, reason=_model_skip_reason() or "")

PRELUDE = """
import json, sys, time, threading
import dspy
from memcollab.lm.config import apply_overrides, resolve_agent
from memcollab.lm.factory import build_lm, configure_dspy_cache
from memcollab.lm.local import LlamaCppLM, load_model
def emit(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
"""


def run_in_subprocess(body: str, tmp_path: Path, timeout: float = 420) -> dict:
    """Run `body` in a fresh interpreter; return the JSON it emitted; fail with the signal if it crashed."""
    script = tmp_path / "probe.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    if proc.returncode < 0:
        pytest.fail(f"generation subprocess killed by {signal.Signals(-proc.returncode).name}: {proc.stderr[-1500:]}")
    if proc.returncode != 0:
        pytest.fail(f"generation subprocess exited {proc.returncode}: {proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result emitted; stdout: {proc.stdout[-1000:]} stderr: {proc.stderr[-1000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------- offline unit tests


def test_response_format_mapping() -> None:
    from memcollab.lm.local import _llama_response_format

    class Out(pydantic.BaseModel):
        answer: str

    assert _llama_response_format(Out) == {"type": "json_object", "schema": Out.model_json_schema()}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert _llama_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == {
        "type": "json_object",
        "schema": schema,
    }
    assert _llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert _llama_response_format({"type": "text"}) is None
    assert _llama_response_format(None) is None


def test_lm_is_lazy_and_serialisable(tmp_path: Path) -> None:
    import dspy

    from memcollab.lm import local as local_lm

    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a model")
    lm = local_lm.LlamaCppLM("local/x", model_path=fake, n_ctx=1024, max_tokens=16, seed=3)
    assert isinstance(lm, dspy.BaseLM)
    assert lm.kwargs == {"temperature": 0.0, "max_tokens": 16, "seed": 3}
    assert "response_format" in lm.supported_params and lm.supports_response_schema
    state = lm.dump_state()
    assert state["model_path"] == str(fake) and state["n_ctx"] == 1024 and state["fingerprint"].startswith(str(fake))
    clone = local_lm.LlamaCppLM.load_state(state)
    assert clone.model_path == lm.model_path and clone.kwargs == lm.kwargs
    assert not any(key[0] == str(fake.resolve()) for key in local_lm._REGISTRY)


@pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python is not installed (pip install 'memcollab[llama]')"
)
def test_unloadable_model_raises_not_crashes(tmp_path: Path) -> None:
    body = f"""
    lm = LlamaCppLM("local/bad", model_path={str(tmp_path / "garbage.gguf")!r}, cache=False)
    open({str(tmp_path / "garbage.gguf")!r}, "wb").write(b"GGUF" + b"\\0" * 64)
    try:
        lm("hello")
        emit(raised=None)
    except Exception as exc:
        emit(raised=type(exc).__name__)
    """
    assert run_in_subprocess(body, tmp_path)["raised"] == "ValueError"


# ---------------------------------------------------------------- real model (subprocess)


@pytest.mark.model
@needs_model
def test_smollm2_answers_a_predict_signature_with_json_adapter(tmp_path: Path) -> None:
    body = """
    configure_dspy_cache(enabled=False)
    lm = build_lm(apply_overrides(resolve_agent("local:smollm2-135m", {}), max_tokens=64))
    results = []
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        for q in ["What is 2 + 3?", "What is the capital of France?", "Name a primary color."]:
            out = dspy.Predict("question -> answer")(question=q)
            results.append(out.answer)
    last = lm.history[-1]
    emit(answers=results, usage=last["usage"], timings=last["response"]["timings"], model=last["model"])
    """
    out = run_in_subprocess(body, tmp_path)
    assert len(out["answers"]) == 3 and all(isinstance(a, str) and a.strip() for a in out["answers"])
    assert out["usage"]["prompt_tokens"] > 20 and out["usage"]["completion_tokens"] > 0
    assert out["timings"]["predicted_n"] > 0 and out["model"] == "local/smollm2-135m"


@pytest.mark.model
@needs_model
def test_parse_failures_surface_as_adapter_parse_error(tmp_path: Path) -> None:
    body = """
    from dspy.utils.exceptions import AdapterParseError
    configure_dspy_cache(enabled=False)
    lm = build_lm(apply_overrides(resolve_agent("local:smollm2-135m", {}), max_tokens=48))
    parsed = failed = 0
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        for q in ["What is 2 + 3?", "What is 9 times 8?"]:
            try:
                dspy.Predict("question -> answer: int")(question=q)
                parsed += 1
            except AdapterParseError:
                failed += 1
    emit(parsed=parsed, failed=failed)
    """
    out = run_in_subprocess(body, tmp_path)
    assert out["parsed"] + out["failed"] == 2  # anything else would have raised and failed the subprocess


@pytest.mark.model
@needs_model
def test_disk_cache_is_used_across_processes(tmp_path: Path) -> None:
    body = """
    configure_dspy_cache(sys.argv[0].rsplit("/", 1)[0] + "/cache")
    lm = build_lm(apply_overrides(resolve_agent("local:smollm2-135m", {}), max_tokens=24))
    t = time.perf_counter(); first = lm("Say hi.")[0]; t1 = time.perf_counter() - t
    t = time.perf_counter(); second = lm("Say hi.")[0]; t2 = time.perf_counter() - t
    emit(first=first, second=second, usage=lm.history[-1]["usage"], hit=bool(lm.history[-1]["response"].get("cache_hit")),
         first_usage=lm.history[0]["usage"], nocache=lm("Say hi.", cache=False)[0])
    """
    one = run_in_subprocess(body, tmp_path)
    assert one["first"] == one["second"] == one["nocache"]
    assert one["hit"] and one["usage"] == {} and one["first_usage"]["completion_tokens"] > 0
    two = run_in_subprocess(body, tmp_path)  # fresh process: the first call is a disk hit
    assert two["first"] == one["first"] and two["first_usage"] == {}


@pytest.mark.model
@needs_model
def test_shared_model_and_thread_safety(tmp_path: Path) -> None:
    body = """
    configure_dspy_cache(enabled=False)
    a = build_lm(apply_overrides(resolve_agent("local:smollm2-135m", {}), max_tokens=24))
    b = build_lm(apply_overrides(resolve_agent("local:smollm2-135m", {}), max_tokens=24, temperature=0.0))
    shared = a.loaded() is b.loaded()
    prompts = ["Count to three.", "Say hello.", "Name a fruit.", "Name a color."]
    sequential = [a(p)[0] for p in prompts]
    outs = [None] * len(prompts)
    def work(i):
        outs[i] = (a if i % 2 else b)(prompts[i])[0]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads: t.start()
    for t in threads: t.join()
    from memcollab.lm import local as local_lm
    emit(shared=shared, same=outs == sequential, loaded=len(local_lm._REGISTRY))
    """
    out = run_in_subprocess(body, tmp_path)
    assert out == {"shared": True, "same": True, "loaded": 1}


@pytest.mark.model
@needs_model
def test_context_overflow_is_a_typed_error(tmp_path: Path) -> None:
    body = """
    from dspy.utils.exceptions import ContextWindowExceededError
    agent = apply_overrides(resolve_agent("local:smollm2-135m", {}), n_ctx=256, max_tokens=8)
    lm = build_lm(agent, cache=False)
    try:
        lm("word " * 600)
        emit(raised=None)
    except ContextWindowExceededError as exc:
        emit(raised="ContextWindowExceededError", msg=str(exc))
    """
    out = run_in_subprocess(body, tmp_path)
    assert out["raised"] == "ContextWindowExceededError" and "context window" in out["msg"]


def test_generations_share_the_core_budget() -> None:
    """A generation holding every core blocks another one until it finishes (no CPU oversubscription)."""
    import threading
    import time

    from memcollab.lm.local import _Cores, default_threads

    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with _Cores(default_threads()):
            holding.set()
            time.sleep(0.3)
            order.append("first done")

    def second() -> None:
        holding.wait()
        with _Cores(1):
            order.append("second ran")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert order == ["first done", "second ran"]
    with _Cores(default_threads() + 4):  # more than the machine has: still runs alone
        pass
