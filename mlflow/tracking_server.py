"""Start and stop a real `mlflow server` on 127.0.0.1 (used by the tests and the notebooks).

Not a package module on purpose: this directory has no __init__.py so it never shadows the
`mlflow` package. Load it by path, or run it: `python mlflow/tracking_server.py --dir runs/mlflow-server`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TrackingServer:
    """A running `mlflow server` process and its URL; `stop()` ends its whole process group."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start(workdir: Path, port: int | None = None, timeout: float = 90.0) -> TrackingServer:
    """Start a server with a SQLite backend and local artefacts in `workdir`; wait until it answers."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = workdir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        (workdir / "artifacts").as_uri(),
    ]
    log = log_path.open("wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    server = TrackingServer(process, url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer within {timeout:.0f}s; see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("runs/mlflow-server"))
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    server = start(args.dir, args.port)
    print(f"MLflow tracking server at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
