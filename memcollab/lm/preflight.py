"""Can this agent run here? One line that says what to do, before any work starts.

Each backend needs different pieces: the in-process backend needs
llama-cpp-python and an assembled model, the server backend needs an
assembled model and the `llama-server` binary (or a running server at
`api_base`), a hosted model needs its key in the environment and a reachable
endpoint. Checking them all up front turns an error deep inside a run into a
one-line message at its start.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request

from memcollab.errors import ConfigError, ModelError
from memcollab.lm.config import AgentConfig
from memcollab.lm.server.build import BUILD_HINT, find_server_binary

#: How to install the in-process backend; portable flags because a native build crashes on VMs that
#: advertise CPU features (AMX) they do not enable.
LLAMA_INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install 'memcollab[llama]'"
)


def llama_cpp_available() -> bool:
    """Is llama-cpp-python importable? (Checked without importing it: loading the library is slow.)"""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["llama_cpp"] is None (import blocked)
        return False


def _unreachable(url: str, headers: dict[str, str], timeout: float) -> str | None:
    """Why GET <url>/models got no answer, or None if it got one (any HTTP status counts: 401, 404 ...)."""
    try:
        request = urllib.request.Request(url.rstrip("/") + "/models", headers=headers)
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return None  # the server answered; the call itself will say more
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def check_endpoint(agent: AgentConfig, timeout: float) -> None:
    """A quick GET <api_base>/models on every endpoint: any HTTP answer means reachable; no answer is an error
    that names each endpoint that did not answer."""
    headers = {}
    if agent.api_key_env and os.environ.get(agent.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[agent.api_key_env]}"
    failed = {url: why for url in agent.endpoints if (why := _unreachable(url, headers, timeout)) is not None}
    if not failed:
        return
    if len(agent.endpoints) == 1:
        ((url, reason),) = failed.items()
        raise ConfigError(f"agent '{agent.name}': endpoint {url} is unreachable ({reason}); check --api-base")
    listed = "; ".join(f"{url} ({reason})" for url, reason in failed.items())
    raise ConfigError(
        f"agent '{agent.name}': {len(failed)} of {len(agent.endpoints)} endpoints are unreachable: {listed}; "
        "start them or remove them from api_base"
    )


def check_model(agent: AgentConfig, model_dir: str | os.PathLike[str] | None = None) -> None:
    """The agent's GGUF exists: a direct path, or a catalogue model that is installed and assembled."""
    from memcollab.lm.catalog import CATALOG, model_status

    if agent.gguf_path is not None:
        if not agent.gguf_path.is_file():
            raise ModelError(f"agent '{agent.name}': model file not found: {agent.gguf_path}")
        return
    if agent.model not in CATALOG:
        raise ConfigError(
            f"agent '{agent.name}': unknown embedded model '{agent.model}'; choose one of {', '.join(sorted(CATALOG))}"
        )
    status = model_status(agent.model, model_dir)
    if status.ready:
        return
    spec = status.spec
    if not status.installed:
        raise ModelError(
            f"agent '{agent.name}': model {spec.name} is not installed: {spec.install_hint} "
            f"then memcollab models prepare {spec.name}"
        )
    raise ModelError(
        f"agent '{agent.name}': model {spec.name} is not assembled: run memcollab models prepare {spec.name}"
    )


def check_agent(agent: AgentConfig, *, timeout: float = 3.0, model_dir: str | os.PathLike[str] | None = None) -> None:
    """Fail fast, with one line that says what to do, if this agent cannot run here."""
    if agent.backend == "local":
        if not llama_cpp_available():
            raise ConfigError(
                f"agent '{agent.name}': the in-process backend needs llama-cpp-python, which is not installed: "
                f"build the server instead (`{BUILD_HINT}`, then --backend server) or {LLAMA_INSTALL_HINT}"
            )
        check_model(agent, model_dir)
    elif agent.backend == "server":
        if agent.endpoints:  # already running llama-server(s)
            check_endpoint(agent, timeout)
            return
        check_model(agent, model_dir)
        find_server_binary()
    else:
        if agent.api_key_env and not os.environ.get(agent.api_key_env):
            raise ConfigError(
                f"agent '{agent.name}': environment variable {agent.api_key_env} is not set; "
                f"export {agent.api_key_env}=<your key>"
            )
        check_endpoint(agent, timeout)
