"""One `llama-server` process: its command line, start until healthy, stop, and its log.

`-c` is the total context split across the `-np` slots, so a server for
`n_parallel` slots of `ctx_per_slot` tokens gets `-c n_parallel * ctx_per_slot`.
The process is supervised (`memcollab.lm.server.supervise`): it never outlives
this Python process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from memcollab import paths
from memcollab.errors import ConfigError, ModelError, ServerError
from memcollab.lm.server import supervise
from memcollab.lm.server.build import find_server_binary

DEFAULT_N_PARALLEL = 8
DEFAULT_CTX_PER_SLOT = 4096
STARTUP_TIMEOUT_S = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
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


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
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
    status, body = get_json(root_url(url) + "/health", timeout)
    return status == 200 and body.get("status", "ok") == "ok"


class LlamaServer:
    """One `llama-server` process serving a GGUF with `n_parallel` slots; a context manager."""

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
            "-m",
            str(self.model_path),
            "-a",
            self.alias,
            "-c",
            str(self.n_parallel * self.ctx_per_slot),
            "-np",
            str(self.n_parallel),
            "-t",
            str(self.threads),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--jinja",
            "--no-webui",
            "--cache-ram",
            "1024",  # bound the prompt cache: several servers may share the RAM
            *self.extra_args,
        ]

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
                self.port = free_port(self.host)
            self.binary = self.binary or find_server_binary()
            log_dir = paths.cache_dir() / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"llama-server-{self.alias}-{self.port}.log"
            self._log_fh = self.log_path.open("wb")
            self._proc = supervise.spawn(self.command(), stdout=self._log_fh)
            self.last_pid = self._proc.pid
            supervise.track(self)
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
        raise ServerError(
            f"llama-server not ready after {self.startup_timeout:.0f} s: {self.log_tail()} (log: {self.log_path})"
        )

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
            supervise.release(self)
            if proc is not None:
                supervise.kill_group(proc, timeout)
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
