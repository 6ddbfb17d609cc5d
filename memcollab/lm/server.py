"""Run llama.cpp's `llama-server` with parallel slots and hand DSPy an OpenAI-compatible LM.

Why a server: llama-cpp-python in-process decodes one sequence at a time;
llama-server batches the sequences of its `-np` slots into one forward pass,
which on a CPU multiplies total tokens/s for small models (see
benchmarks/README.md). DSPy reaches it through its ordinary `openai/` path.

No orphans: every server runs in its own process group and is stopped by
`stop()`, by an atexit hook, by SIGTERM/SIGINT handlers that chain to the
previous ones, and, if this process is killed hard, by the kernel
(PR_SET_PDEATHSIG). The death signal fires when the *thread* that forked the
child exits, so children are forked from one long-lived daemon thread rather
than from whatever worker thread first asked for a server.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import functools
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memcollab import paths
from memcollab.errors import ConfigError, ModelError, ServerError
from memcollab.lm.server_build import find_server_binary

if TYPE_CHECKING:
    import dspy

DEFAULT_N_PARALLEL = 8
DEFAULT_CTX_PER_SLOT = 4096
STARTUP_TIMEOUT_S = 180.0
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------- process plumbing


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # not Linux/glibc: atexit + signal handlers still apply
        return None


_LIBC = _libc()


def _die_with_parent(parent_pid: int) -> Any:
    """preexec_fn: ask the kernel to SIGKILL the child when its parent dies (Linux only)."""

    def _preexec() -> None:
        if _LIBC is not None and hasattr(_LIBC, "prctl"):
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return _preexec


class _Spawner:
    """Forks children from one daemon thread that lives as long as the process (see module doc)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[concurrent.futures.Future, tuple, dict]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            future, args, kwargs = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(subprocess.Popen(*args, **kwargs))
                except BaseException as exc:  # handed back to the caller's thread
                    future.set_exception(exc)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="memcollab-server-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, args, kwargs))
        return future.result()


_SPAWNER = _Spawner()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def root_url(url: str) -> str:
    """Server root from an OpenAI base URL (`http://h:p/v1` -> `http://h:p`)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def server_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when the llama-server at `url` (root or .../v1) has its model loaded."""
    status, body = _get_json(root_url(url) + "/health", timeout)
    return status == 200 and body.get("status", "ok") == "ok"


# ---------------------------------------------------------------- one server


class LlamaServer:
    """One `llama-server` process serving a GGUF with `n_parallel` slots; a context manager.

    `-c` is the total context split across slots, so it is `n_parallel * ctx_per_slot`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_parallel: int = DEFAULT_N_PARALLEL,
        ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
        threads: int | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | os.PathLike[str] | None = None,
        *,
        alias: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        if n_parallel < 1 or ctx_per_slot < 64:
            raise ConfigError(f"need n_parallel >= 1 and ctx_per_slot >= 64 (got {n_parallel}, {ctx_per_slot})")
        self.n_parallel = n_parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads or os.cpu_count() or 1
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.binary = Path(binary) if binary else None
        self.alias = alias or self.model_path.stem
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self.last_pid: int | None = None  # kept after stop(), so callers can check the process is gone
        self._log_fh: Any = None
        self._lock = threading.RLock()

    # -- properties
    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`)."""
        return self.root + "/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def info(self) -> dict[str, Any]:
        """What a run should record about how it was served."""
        return {
            "backend": "llama-server",
            "url": self.url,
            "model_path": str(self.model_path),
            "n_parallel": self.n_parallel,
            "ctx_per_slot": self.ctx_per_slot,
            "threads": self.threads,
            "binary": str(self.binary) if self.binary else None,
        }

    def command(self) -> list[str]:
        assert self.binary is not None and self.port is not None
        return [
            str(self.binary),
            "-m", str(self.model_path),
            "-a", self.alias,
            "-c", str(self.n_parallel * self.ctx_per_slot),
            "-np", str(self.n_parallel),
            "-t", str(self.threads),
            "--host", self.host,
            "--port", str(self.port),
            "--jinja",
            "--no-webui",
            "--cache-ram", "1024",  # bound the prompt cache: several servers may share the RAM
            *self.extra_args,
        ]

    # -- lifecycle
    def start(self) -> LlamaServer:
        """Start the process and block until /health says the model is loaded."""
        with self._lock:
            if self.running:
                return self
            if self.requested_port is not None:
                if _port_in_use(self.host, self.requested_port):
                    raise ServerError(f"port {self.requested_port} on {self.host} is already in use: pick another port")
                self.port = self.requested_port
            else:
                self.port = _free_port(self.host)
            self.binary = self.binary or find_server_binary()
            log_dir = paths.cache_dir() / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"llama-server-{self.alias}-{self.port}.log"
            self._log_fh = self.log_path.open("wb")
            _install_cleanup()
            self._proc = _SPAWNER.popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
            self.last_pid = self._proc.pid
            _LIVE.add(self)
            try:
                self._wait_healthy()
            except BaseException:
                self.stop()
                raise
            return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ServerError(
                    f"llama-server exited with code {self._proc.returncode} while starting: {self.log_tail()} "
                    f"(log: {self.log_path})"
                )
            if server_healthy(self.root, timeout=1.0):
                return
            time.sleep(0.1)
        raise ServerError(f"llama-server not ready after {self.startup_timeout:.0f} s: {self.log_tail()} (log: {self.log_path})")

    def log_tail(self, n: int = 3) -> str:
        """The last non-empty log lines joined into one line (errors stay one line)."""
        if not self.log_path or not self.log_path.is_file():
            return ""
        with self.log_path.open("r", errors="replace") as fh:
            lines = deque((line.strip() for line in fh if line.strip()), maxlen=n)
        return " | ".join(lines)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it; idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            _LIVE.discard(self)
            if proc is not None:
                _kill_group(proc, timeout)
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} url={self.url}" if self.running else "stopped"
        return f"LlamaServer({self.model_path.name}, n_parallel={self.n_parallel}, {state})"


def _kill_group(proc: subprocess.Popen, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    # Reap anything else left in the group (the server forks nothing, but be sure).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout)


# ---------------------------------------------------------------- cleanup hooks

_LIVE: set[LlamaServer] = set()
_CLEANUP_LOCK = threading.Lock()
_CLEANUP_INSTALLED = False
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _stop_live() -> None:
    # A short grace period: llama-server holds off its exit while a client still waits on an
    # in-flight request (here: our own worker threads, which a signal handler cannot close), so a
    # long wait only delays Ctrl-C. It keeps no state worth a graceful exit; SIGKILL follows.
    for server in list(_LIVE):
        try:
            server.stop(timeout=3.0)
        except Exception:  # best effort at exit: keep stopping the others
            pass


def _on_signal(signum: int, frame: Any) -> None:
    """Stop every server, then behave as the handler that was installed before ours."""
    shutdown_all()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    """atexit always; signal handlers only from the main thread (Python's rule)."""
    global _CLEANUP_INSTALLED
    with _CLEANUP_LOCK:
        if _CLEANUP_INSTALLED:
            return
        atexit.register(shutdown_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                _PREVIOUS_HANDLERS[sig] = signal.getsignal(sig)
                signal.signal(sig, _on_signal)
        _CLEANUP_INSTALLED = True


# ---------------------------------------------------------------- registry

_REGISTRY: dict[tuple, LlamaServer] = {}
_REGISTRY_LOCK = threading.RLock()


def resolve_model(
    model: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, str]:
    """(GGUF path, name) for a catalogue name or a path to a .gguf file."""
    candidate = Path(model).expanduser()
    if candidate.suffix == ".gguf" or candidate.is_file():
        if not candidate.is_file():
            raise ModelError(f"model file not found: {candidate}")
        return candidate.resolve(), candidate.stem
    try:
        from memcollab.lm.catalog import model_path  # type: ignore[attr-defined]
    except ImportError:
        from memcollab.lm.assemble import model_path
    return Path(model_path(str(model), model_dir)), str(model)


def ensure_server(
    model: str | os.PathLike[str],
    n_parallel: int = DEFAULT_N_PARALLEL,
    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
    threads: int | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> LlamaServer:
    """The running server for this model and configuration, started on first use.

    Agents that ask for the same model with the same slots share one process;
    a server that died (e.g. after Ctrl-C) is replaced.
    """
    path, name = resolve_model(model, model_dir)
    threads = threads or os.cpu_count() or 1
    key = (str(path), n_parallel, ctx_per_slot, threads)
    with _REGISTRY_LOCK:
        server = _REGISTRY.get(key)
        if server is None or not server.running:
            if server is not None:
                server.stop()  # reap the dead process and close its log
            server = LlamaServer(path, n_parallel, ctx_per_slot, threads, alias=name, **kwargs)
            server.start()
            _REGISTRY[key] = server
        return server


def running_servers() -> list[LlamaServer]:
    with _REGISTRY_LOCK:
        return [s for s in _REGISTRY.values() if s.running]


def shutdown_all() -> None:
    """Stop every server this process started (registry or not)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
    _stop_live()


# ---------------------------------------------------------------- DSPy


def _agent_value(agent: Any, name: str, default: Any = None) -> Any:
    value = getattr(agent, name, None)
    return default if value is None else value


def check_server(agent: Any) -> None:
    """Fail fast (one-line ServerError) when a server agent could not start its server here."""
    if not (_agent_value(agent, "server_url") or _agent_value(agent, "api_base")):
        find_server_binary()


@functools.lru_cache(maxsize=None)
def _server_lm_class() -> type:
    """dspy.LM that tells DSPy's JSONAdapter it may send a JSON schema: llama-server turns the schema into
    a grammar. Without this, DSPy sees an unknown `openai/` model, sends no `response_format`, and small
    models wrap their JSON in fences or Python triple quotes that no parser accepts."""
    import dspy

    class ServerLM(dspy.LM):
        @property
        def supported_params(self) -> set[str]:
            return set(super().supported_params) | {"response_format", "seed"}

        @property
        def supports_response_schema(self) -> bool:
            return True

    return ServerLM


def server_lm(
    agent: Any, *, cache: bool | None = None, model_dir: str | os.PathLike[str] | None = None
) -> dspy.LM:
    """A `dspy.LM` on a llama-server for `agent` (an AgentConfig with backend "server").

    If the agent names a `server_url`/`api_base`, that running server is used;
    otherwise the registry starts (or reuses) one for `agent.model`. The LM
    carries `memcollab_serving` (url, n_parallel, seed, ...) for run records.
    `cache` (DSPy's response cache) defaults to `agent.cache`, else True.
    """
    external = _agent_value(agent, "server_url") or _agent_value(agent, "api_base")
    if external:
        if not server_healthy(external):
            raise ServerError(f"no healthy llama-server at {external}: start it or remove server_url/api_base")
        _, props = _get_json(root_url(external) + "/props")
        url = root_url(external) + "/v1"
        serving: dict[str, Any] = {"backend": "llama-server", "url": url, "n_parallel": props.get("total_slots")}
        name = str(_agent_value(agent, "model", "local"))
    else:
        server = ensure_server(
            agent.model,
            n_parallel=_agent_value(agent, "n_parallel", DEFAULT_N_PARALLEL),
            ctx_per_slot=_agent_value(agent, "ctx_per_slot", DEFAULT_CTX_PER_SLOT),
            threads=_agent_value(agent, "threads"),
            model_dir=model_dir,
        )
        url, name, serving = server.url, server.alias, server.info()
    seed = _agent_value(agent, "seed")
    extra: dict[str, Any] = {"seed": seed} if seed is not None else {}
    lm = _server_lm_class()(
        f"openai/{name}",
        model_type="chat",
        api_base=url,
        api_key="local",
        temperature=_agent_value(agent, "temperature", 0.0),
        max_tokens=_agent_value(agent, "max_tokens", 512),
        cache=bool(_agent_value(agent, "cache", True)) if cache is None else cache,
        **extra,
    )
    lm.memcollab_serving = {**serving, "seed": seed}
    return lm
