"""Agent configs: YAML parsing, inline specs, overrides, preflight checks, LM construction (offline)."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
from pathlib import Path

import pytest

from memcollab.errors import ConfigError, MemCollabError, ModelError, ServerError
from memcollab.lm.catalog import CATALOG, locate
from memcollab.lm.config import AgentConfig, apply_overrides, load_agents, parse_agents, resolve_agent
from memcollab.lm.factory import build_adapter, build_lm, configure_dspy_cache
from memcollab.lm.preflight import check_agent, llama_cpp_available

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(text)
    return path


def _one_line_error(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- loading


def test_default_agents_file_uses_the_embedded_models() -> None:
    agents = load_agents(ROOT / "configs" / "agents.yaml")
    assert {n: (a.model, a.family, a.backend) for n, a in agents.items()} == {
        "weak": ("qwen2.5-coder-0.5b", "qwen", "local"),
        "strong": ("qwen2.5-coder-1.5b", "qwen", "local"),
        "other": ("smollm2-135m", "smollm", "local"),
    }
    assert all(a.temperature == 0.0 and a.seed == 0 and a.n_ctx == 4096 for a in agents.values())


def test_default_path_follows_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "agents:\n  - {name: a, model: smollm2-135m}\n")
    monkeypatch.setenv("MEMCOLLAB_CONFIG_DIR", str(tmp_path))
    agents = load_agents()
    assert list(agents) == ["a"] and agents["a"].family == "smollm"


def test_defaults_block_is_merged_and_entries_win(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "defaults: {temperature: 0.7, max_tokens: 64}\nagents:\n"
        "  - {name: a, model: smollm2-135m}\n  - {name: b, model: smollm2-135m, temperature: 0.1}\n",
    )
    agents = load_agents(path)
    assert (agents["a"].temperature, agents["a"].max_tokens) == (0.7, 64)
    assert agents["b"].temperature == 0.1


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("agents:\n  - {name: x, backend: litellm, model: openai/gpt-4o-mini, api_key: sk-123}\n", "api_key_env"),
        (
            "agents:\n  - {name: x, backend: litellm, model: openai/gpt-4o-mini, extra: {api_key: sk-1}}\n",
            "extra.api_key",
        ),
        ("agents:\n  - {name: x, model: smollm2-135m, temprature: 0.1}\n", "temprature"),
        ("agents:\n  - {name: x, model: smollm2-135m, temperature: 5}\n", "temperature"),
        ("agents:\n  - {name: x, model: smollm2-135m, backend: cloud}\n", "backend"),
        (
            "agents:\n  - {name: x, model: m, backend: litellm, api_key_env: 'sk-abc def'}\n",
            "NAME of an environment variable",
        ),
        ("agents:\n  - {name: x, model: smollm2-135m}\n  - {name: x, model: smollm2-135m}\n", "declared twice"),
        ("agents: []\n", "non-empty 'agents:' list"),
        ("agent:\n  - {name: x, model: m}\n", "agents"),
        ("agents:\n  - {name: x, model: smollm2-135m}\nextra_key: 1\n", "unknown top-level"),
        ("agents: [\n", "invalid YAML"),
    ],
)
def test_bad_configs_raise_one_line_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_agents(_write(tmp_path, text))
    assert fragment in _one_line_error(info.value)


def test_literal_key_message_does_not_echo_the_secret(tmp_path: Path) -> None:
    path = _write(tmp_path, "agents:\n  - {name: x, backend: litellm, model: openai/m, api_key: sk-SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_agents(path)
    assert "sk-SECRET" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agents config not found"):
        load_agents(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- resolving and overriding


def test_resolve_by_name_and_inline_specs() -> None:
    agents = parse_agents({"agents": [{"name": "weak", "model": "qwen2.5-coder-0.5b"}]})
    assert resolve_agent("weak", agents) is agents["weak"]

    local = resolve_agent("local:smollm2-135m", agents)
    assert (local.backend, local.model, local.family, local.name) == (
        "local",
        "smollm2-135m",
        "smollm",
        "local:smollm2-135m",
    )

    hosted = resolve_agent("litellm:openai/gpt-4o-mini", agents)
    assert (hosted.backend, hosted.model, hosted.api_key_env, hosted.family) == (
        "litellm",
        "openai/gpt-4o-mini",
        "OPENAI_API_KEY",
        "gpt",
    )
    assert resolve_agent("litellm:anthropic/claude-3-5-haiku", {}).api_key_env == "ANTHROPIC_API_KEY"
    assert resolve_agent("server:qwen2.5-coder-1.5b", {}).family == "qwen"
    assert resolve_agent("local:/models/Llama-3.2-1B.Q4.gguf", {}).family == "llama"

    with pytest.raises(ConfigError) as info:
        resolve_agent("strongest", agents)
    assert "weak" in _one_line_error(info.value) and "local:smollm2-135m" in str(info.value)
    with pytest.raises(ConfigError):
        resolve_agent("cloud:gpt", agents)


def test_apply_overrides() -> None:
    agent = resolve_agent("local:smollm2-135m", {})
    same = apply_overrides(agent)
    assert same is agent
    changed = apply_overrides(agent, temperature=0.5, max_tokens=64, seed=7, n_ctx=2048, backend="server")
    assert (changed.temperature, changed.max_tokens, changed.seed, changed.n_ctx, changed.backend) == (
        0.5,
        64,
        7,
        2048,
        "server",
    )
    assert (agent.temperature, agent.backend) == (0.0, "local")  # the original is untouched
    hosted = apply_overrides(resolve_agent("litellm:openai/m", {}), api_base="http://127.0.0.1:9/v1")
    assert hosted.api_base == "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match="max_tokens"):
        apply_overrides(agent, max_tokens=-1)


def test_adapter_choice() -> None:
    import dspy

    from memcollab.lm.adapters import NaturalAdapter

    for spec in ("local:smollm2-135m", "server:smollm2-135m"):
        assert isinstance(build_adapter(resolve_agent(spec, {})), NaturalAdapter)
    chat = build_adapter(resolve_agent("litellm:openai/m", {}))
    assert isinstance(chat, dspy.ChatAdapter) and not isinstance(chat, dspy.JSONAdapter)
    forced = AgentConfig(name="x", model="smollm2-135m", adapter="json")
    assert forced.resolved_adapter == "json" and isinstance(build_adapter(forced), dspy.JSONAdapter)


# ---------------------------------------------------------------- preflight


@pytest.fixture
def local_http() -> str:
    """A real HTTP server on 127.0.0.1 that answers /v1/models."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"data": []}' if self.path == "/v1/models" else b"{}"
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_litellm_key_and_endpoint(monkeypatch: pytest.MonkeyPatch, local_http: str) -> None:
    agent = AgentConfig(
        name="h", backend="litellm", model="openai/m", api_key_env="MEMCOLLAB_TEST_KEY", api_base=local_http
    )
    monkeypatch.delenv("MEMCOLLAB_TEST_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        check_agent(agent)
    assert "export MEMCOLLAB_TEST_KEY=" in _one_line_error(info.value)

    monkeypatch.setenv("MEMCOLLAB_TEST_KEY", "k")
    check_agent(agent)  # reachable: passes
    check_agent(apply_overrides(agent, api_base=local_http + "/nested"))  # a 404 is still an answer

    dead = apply_overrides(agent, api_base=f"http://127.0.0.1:{_closed_port()}/v1")
    with pytest.raises(ConfigError) as info:
        check_agent(dead, timeout=3.0)
    assert "unreachable" in _one_line_error(info.value)


@pytest.mark.parametrize("backend", ["local", "server"])
def test_check_unknown_missing_and_unassembled_models(backend: str, tmp_path: Path) -> None:
    """The model checks of both llama.cpp backends; the server backend needs neither llama-cpp-python nor a binary
    for them (the model is checked before the binary)."""
    if backend == "local" and not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed (the in-process backend checks it first)")
    with pytest.raises(ConfigError, match="unknown embedded model"):
        check_agent(AgentConfig(name="x", model="no-such-model", backend=backend), model_dir=tmp_path)
    with pytest.raises(ModelError, match="model file not found"):
        check_agent(AgentConfig(name="x", model=str(tmp_path / "missing.gguf"), backend=backend))

    spec = CATALOG["qwen2.5-coder-0.5b"]
    with pytest.raises(ModelError) as info:
        check_agent(AgentConfig(name="weak", model=spec.name, backend=backend), model_dir=tmp_path / "empty")
    msg = _one_line_error(info.value)
    if locate(spec).installed:
        assert f"memcollab models prepare {spec.name}" in msg and "not assembled" in msg
    else:
        assert f"pip install 'memcollab[{spec.extra}]'" in msg


def test_check_local_without_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # how Python marks a module as unimportable
    assert not llama_cpp_available()
    with pytest.raises(ConfigError) as info:
        check_agent(AgentConfig(name="x", model="smollm2-135m"))
    msg = _one_line_error(info.value)
    assert "pip install 'memcollab[llama]'" in msg and "-DGGML_NATIVE=OFF" in msg
    assert "memcollab models build-server" in msg  # the other way: the server backend


def test_check_server_without_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server agent whose model is there but whose binary is not: one line that says how to build it."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("MEMCOLLAB_LLAMA_SERVER", str(tmp_path / "no-such-binary"))
    with pytest.raises(ServerError) as info:
        check_agent(AgentConfig(name="s", backend="server", model=str(model)))
    assert "memcollab models build-server" in _one_line_error(info.value)


def test_check_server_with_running_endpoint(local_http: str) -> None:
    check_agent(AgentConfig(name="s", backend="server", model="anything", api_base=local_http))
    with pytest.raises(ConfigError, match="unreachable"):
        check_agent(
            AgentConfig(name="s", backend="server", model="x", api_base=f"http://127.0.0.1:{_closed_port()}/v1")
        )


def test_server_lm_refuses_an_unhealthy_external_server(local_http: str) -> None:
    """An api_base that answers HTTP but is no llama-server (no /health): one line, no process started."""
    from memcollab.lm.server import running_servers

    with pytest.raises(ServerError) as info:
        build_lm(AgentConfig(name="s", backend="server", model="m", api_base=local_http))
    assert "no healthy llama-server" in _one_line_error(info.value) and not running_servers()


def test_errors_are_memcollab_errors() -> None:
    assert issubclass(ConfigError, MemCollabError) and issubclass(ModelError, MemCollabError)


# ---------------------------------------------------------------- building LMs (no generation)


def test_build_litellm_lm_reads_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import dspy

    monkeypatch.setenv("MEMCOLLAB_TEST_KEY", "secret-from-env")
    agent = AgentConfig(
        name="h",
        backend="litellm",
        model="openai/gpt-4o-mini",
        api_key_env="MEMCOLLAB_TEST_KEY",
        api_base="http://127.0.0.1:9/v1",
        temperature=0.3,
        max_tokens=77,
        seed=5,
    )
    lm = build_lm(agent, cache=False)
    assert isinstance(lm, dspy.LM) and lm.model == "openai/gpt-4o-mini" and lm.cache is False
    assert lm.kwargs["api_key"] == "secret-from-env" and lm.kwargs["temperature"] == 0.3
    assert lm.kwargs["max_tokens"] == 77 and lm.kwargs["seed"] == 5
    assert "api_key" not in lm.dump_state()


def test_build_local_lm_is_lazy() -> None:
    import dspy

    from memcollab.lm import local as local_lm

    spec = CATALOG["smollm2-135m"]
    if not locate(spec).installed:
        pytest.skip(f"smollm2 wheel not installed ({spec.install_hint})")
    agent = apply_overrides(resolve_agent("local:smollm2-135m", {}), max_tokens=32)
    before = dict(local_lm._REGISTRY)
    lm = build_lm(agent)
    assert isinstance(lm, dspy.BaseLM) and isinstance(lm, local_lm.LlamaCppLM)
    assert lm.model == "local/smollm2-135m" and lm.fingerprint == spec.sha256
    assert lm.kwargs["max_tokens"] == 32 and lm.kwargs["seed"] == 0
    assert Path(lm.model_path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert local_lm._REGISTRY == before  # nothing loaded until the first call


@pytest.fixture
def restore_dspy_cache():
    import dspy

    saved = dspy.cache
    yield
    dspy.cache = saved


def test_configure_dspy_cache(tmp_path: Path, restore_dspy_cache: None) -> None:
    import dspy

    assert configure_dspy_cache(tmp_path / "c") == tmp_path / "c"
    assert dspy.cache.enable_disk_cache and dspy.cache.disk_cache_dir == str(tmp_path / "c")
    dspy.cache.put({"k": 1}, "v")
    assert dspy.cache.get({"k": 1}) == "v"
    assert configure_dspy_cache(tmp_path / "c", enabled=False) is None
    assert not dspy.cache.enable_disk_cache and not dspy.cache.enable_memory_cache
    assert dspy.cache.get({"k": 1}) is None
