"""`--executor ray` on a real local Ray cluster: the same tables as threads, resume, and a worker killed mid-run.

Everything is real except the model: a Ray cluster started here (2 CPUs, no dashboard), the grid of the
committed `configs/experiments/grid_small_stub.yaml` through the real CLI, and an OpenAI-compatible HTTP
server on 127.0.0.1 (`benchmarks/grid_executors.LatencyStub`) that answers each task as scripted. One test's
server kills (SIGKILL) the Ray worker process whose request it is serving, found by the request's socket.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from memcollab.errors import ConfigError
from memcollab.experiments.executors import ExecutorError, make_executor
from memcollab.paths import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from grid_executors import CONFIG, KEY_ENV, LatencyStub, grid_tasks, run_grid_with, stub_config_dir  # noqa: E402
from openai_stub import Seen, _prompt_text, body_hash  # noqa: E402

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(default_data_dir() is None, reason="benchmark data directory not found"),
]
#: Columns that measure time, not results: everything else must match between executors.
TIMED = ["latency_s", "wall_s"]
LATENCY_S = 0.05


def cli(*args: str) -> Any:
    from memcollab.cli.grid import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    return CliRunner().invoke(app, ["grid", *args])


def stored(run_dir: Path) -> dict[str, str]:
    """Every record of a run store: key -> kind (a key is the store's primary key: once per result)."""
    with closing(sqlite3.connect(run_dir / "results.sqlite")) as db:
        return dict(db.execute("SELECT key, kind FROM records").fetchall())


def tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    frames = {name: pd.read_csv(run_dir / f"{name}.csv") for name in ("table", "categories")}
    frames["tasks"] = pd.read_json(run_dir / "tasks.jsonl", lines=True)
    return {name: frame.drop(columns=[c for c in TIMED if c in frame]) for name, frame in frames.items()}


def assert_same_results(run: Path, reference: Path, same_endpoint: bool = True) -> None:
    """Equal tables and per-task rows, and as many results of each kind (under the very same keys when the agents
    talk to the same endpoint: its URL is part of an agent's config, hence of every key)."""
    for name, frame in tables(run).items():
        pd.testing.assert_frame_equal(frame, tables(reference)[name], obj=name)
    if same_endpoint:
        assert stored(run) == stored(reference), "the same results under the same keys"
    assert Counter(stored(run).values()) == Counter(stored(reference).values())


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory):
    """The scripted endpoint, and a config dir whose agents.yaml points `weak` and `strong` at it."""
    with pytest.MonkeyPatch.context() as patch, LatencyStub(grid_tasks(), LATENCY_S) as server:
        patch.setenv(KEY_ENV, "not-a-secret")
        patch.setenv("MEMCOLLAB_CONFIG_DIR", str(stub_config_dir(tmp_path_factory.mktemp("configs"), server.url)))
        yield server


@pytest.fixture(scope="module")
def cluster(stub: LatencyStub):
    """A real local Ray cluster for this module (started after the key is set: its workers inherit it)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(stub: LatencyStub, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed config through the CLI with the default executor: the reference tables."""
    run_dir = tmp_path_factory.mktemp("local") / "run"
    result = cli(str(CONFIG), "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    return run_dir


# ----- choosing an executor -------------------------------------------------------------------------------------
def test_an_unknown_executor_or_a_missing_ray_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for args, error, message in (
        (("--executor", "dask"), ConfigError, "unknown executor 'dask'; choose one of: local, ray"),
        (("--ray-address", "auto"), ConfigError, "--ray-address needs --executor ray"),
    ):
        result = cli(str(CONFIG), "--dry-run", *args)
        assert isinstance(result.exception, error) and str(result.exception) == message
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where Ray is not installed
    result = cli(str(CONFIG), "--dry-run", "--executor", "ray")
    assert isinstance(result.exception, ExecutorError)
    assert "pip install 'memcollab[scale]'" in str(result.exception) and "\n" not in str(result.exception)


def test_the_local_path_never_imports_ray() -> None:
    code = (
        "import sys; import memcollab.cli.grid, memcollab.experiments.grid;"
        "from memcollab.experiments.executors import make_executor; make_executor('local').close();"
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----- on the cluster ---------------------------------------------------------------------------------------------
def test_the_same_config_gives_the_same_tables_with_ray_and_resumes(
    cluster: Any, stub: LatencyStub, local_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "ray"
    result = cli(str(CONFIG), "--run-dir", str(run_dir), "--executor", "ray")
    assert result.exit_code == 0, result.output
    assert_same_results(run_dir, local_run)
    assert "gsm8k.weak.examples.weak_strong.s0" in pd.read_csv(run_dir / "table.csv")["cell"].tolist()

    before = len(stub.requests())
    again = cli(str(CONFIG), "--run-dir", str(run_dir), "--executor", "ray")
    assert again.exit_code == 0, again.output
    assert len(stub.requests()) == before, "a rerun reads every result back: nothing is shipped"
    assert json.loads((run_dir / "summary.json").read_text())["invocations"] == 2
    assert_same_results(run_dir, local_run)


def client_pid(client_port: int, server_port: int) -> int | None:
    """The process that owns the client end of a 127.0.0.1 TCP connection (Linux: /proc/net/tcp, then fds)."""
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        if (local, remote) == (client_port, server_port):
            inode = fields[9]
    if not inode:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:  # gone, or not ours to look at
            continue
    return None


class KillingStub(LatencyStub):
    """The scripted endpoint that, on the `kill_at`-th request from a Ray worker, kills that worker instead."""

    def __init__(self, tasks: list[Any], latency_s: float, kill_at: int) -> None:
        super().__init__(tasks, latency_s)
        self.kill_at = kill_at
        self.from_workers = 0
        self.killed: tuple[int, str] | None = None  # (pid, the hash of the request it was making)

    def handle_post(self, handler: Any, body: bytes) -> None:
        pid = client_pid(handler.client_address[1], self.port)
        with self._lock:
            worker = pid is not None and pid != os.getpid()
            self.from_workers += worker
            kill = worker and self.killed is None and self.from_workers == self.kill_at
        if not kill:
            super().handle_post(handler, body)
            return
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert "ray" in cmdline or "default_worker" in cmdline, cmdline  # one of this test's Ray workers
        with self._lock:
            self.seen.append(Seen(index=len(self.seen), marker="", hash=body_hash(body), fault="killed"))
        self.killed = (pid, body_hash(body))
        os.kill(pid, signal.SIGKILL)  # mid-request: the worker never gets its answer
        handler.close_connection = True


def test_a_worker_killed_mid_run_is_retried_and_every_result_is_written_once(
    cluster: Any, stub: LatencyStub, local_run: Path, tmp_path: Path
) -> None:
    with KillingStub(grid_tasks(), LATENCY_S, kill_at=20) as killer:
        stub_config_dir(tmp_path / "configs", killer.url)
        with pytest.MonkeyPatch.context() as patch, make_executor("ray", max_retries=2) as executor:
            patch.setenv("MEMCOLLAB_CONFIG_DIR", str(tmp_path / "configs"))
            result, _ = run_grid_with(executor, tmp_path / "run")
    assert killer.killed is not None, "a worker was killed mid-run"
    pid, request = killer.killed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert [s.fault for s in killer.requests() if s.hash == request] == ["killed", "ok"], "retried on a new worker"
    rows = pd.read_json(tmp_path / "run" / "tasks.jsonl", lines=True)
    assert not rows.duplicated(["cell", "task_id"]).any() and len(rows) == 36
    assert result.table["lm_errors"].sum() == 0
    assert_same_results(tmp_path / "run", local_run, same_endpoint=False)


def test_a_worker_lost_beyond_its_retries_stops_the_grid_with_one_line(cluster: Any, tmp_path: Path) -> None:
    with KillingStub(grid_tasks(), LATENCY_S, kill_at=1) as killer, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMCOLLAB_CONFIG_DIR", str(stub_config_dir(tmp_path / "configs", killer.url)))
        with make_executor("ray", max_retries=0) as executor, pytest.raises(ExecutorError) as error:
            run_grid_with(executor, tmp_path / "run")
    assert killer.killed is not None
    assert "a Ray worker died on every one of 1 tries" in str(error.value) and "\n" not in str(error.value)


class DownStub(LatencyStub):
    """The scripted endpoint, down (HTTP 503 on every try) for the `weak` agent's requests about one task."""

    def __init__(self, tasks: list[Any], latency_s: float, down: str) -> None:
        super().__init__(tasks, latency_s)
        self.down = next(task.prompt[:80] for task in tasks if task.id == down)

    def handle_post(self, handler: Any, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        model = str(payload.get("model", ""))
        if "weak" in model and self.answer(model, _prompt_text(payload))[0] == self.down:
            self._reply(handler, 503, b'{"error": {"message": "injected outage", "type": "server_error"}}')
            return
        super().handle_post(handler, body)


def test_an_unanswered_solve_on_a_worker_is_missing_data_as_with_threads(cluster: Any, tmp_path: Path) -> None:
    from memcollab.experiments.executors import LocalExecutor

    with DownStub(grid_tasks(), LATENCY_S, down="gsm8k/test/3") as down, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMCOLLAB_CONFIG_DIR", str(stub_config_dir(tmp_path / "configs", down.url)))
        local, _ = run_grid_with(LocalExecutor(), tmp_path / "local")
        with make_executor("ray") as executor:
            remote, _ = run_grid_with(executor, tmp_path / "ray")
    errors = remote.table.set_index("cell")["lm_errors"]
    assert errors.to_dict() == {
        "gsm8k.weak.none.none.s0": 1,
        "gsm8k.weak.examples.weak_strong.s0": 1,
        "gsm8k.strong.none.none.s0": 0,
        "gsm8k.strong.examples.weak_strong.s0": 0,
    }, "the endpoint's error came back from the worker and was counted, not raised"
    assert local.table["lm_errors"].sum() == 2
    assert_same_results(tmp_path / "ray", tmp_path / "local")


def test_an_agent_ray_cannot_rebuild_stops_before_any_lm_call(cluster: Any, tmp_path: Path) -> None:
    from dspy.utils.dummies import DummyLM

    from memcollab.experiments.grid import run_grid
    from memcollab.experiments.grid_config import load_grid_config
    from memcollab.programs.pipeline import Agent

    cfg = load_grid_config(CONFIG, run_dir=tmp_path / "run")
    agents = {name: Agent(name, DummyLM([]), {"name": name}) for name in ("weak", "strong")}
    with make_executor("ray") as executor, pytest.raises(ExecutorError, match="agent 'strong' was made in-process"):
        run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False, executor=executor)
    assert not any(agent.lm.history for agent in agents.values())
