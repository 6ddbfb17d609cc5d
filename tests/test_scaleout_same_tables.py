"""Scale-out changes where a grid runs and where its results live, never what it finds.

The committed `configs/experiments/grid_small_stub.yaml`, unchanged, through the real CLI three ways:
threads with SQLite files (the default), threads with a PostgreSQL `--store-url`, and `--executor ray` with
the same `--store-url` (through `memcollab experiment`, which passes both on to the grid). Everything is
real except the model: the session's PostgreSQL server (tests/postgres_server.py), a local Ray cluster
(2 CPUs), and the scripted OpenAI-compatible stub on 127.0.0.1 of `benchmarks/grid_executors.py`. The
tables (minus timing columns) must be identical, and the results must be in the database, each run's in
its own schema, under the same keys as in the SQLite file.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from memcollab.memory.backends import schema_name
from memcollab.paths import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from grid_executors import CONFIG, KEY_ENV, LatencyStub, grid_tasks, stub_config_dir  # noqa: E402
from test_ray_executor import tables  # noqa: E402

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(default_data_dir() is None, reason="benchmark data directory not found"),
]


def memcollab(*args: str) -> None:
    """`memcollab ARGS` in this process (the Ray cluster and the stub are this process's), or fail with its output."""
    from memcollab.cli.app import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{args}: {result.exception!r}\n{result.output}"


def sqlite_records(run_dir: Path) -> dict[str, str]:
    with closing(sqlite3.connect(run_dir / "results.sqlite")) as db:
        return dict(db.execute("SELECT key, kind FROM records").fetchall())


def postgres_records(url: str, schema: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return dict(conn.execute(f'SELECT key, kind FROM "{schema}".records').fetchall())


def test_sqlite_postgresql_and_ray_give_the_same_tables(postgres_url: str, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'memcollab[scale]'")
    with pytest.MonkeyPatch.context() as patch, LatencyStub(grid_tasks(), 0.01) as stub:
        patch.setenv(KEY_ENV, "not-a-secret")  # before ray.init: the workers inherit it
        patch.setenv("MEMCOLLAB_CONFIG_DIR", str(stub_config_dir(tmp_path / "configs", stub.url)))
        runs = {name: tmp_path / name for name in ("local-sqlite", "local-postgres", "ray-postgres")}
        memcollab("grid", str(CONFIG), "--run-dir", str(runs["local-sqlite"]))
        memcollab("grid", str(CONFIG), "--run-dir", str(runs["local-postgres"]), "--store-url", postgres_url)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
        try:
            before = len(stub.requests())
            memcollab(
                "experiment", str(CONFIG), "--run-dir", str(runs["ray-postgres"]),
                "--executor", "ray", "--store-url", postgres_url,
            )  # fmt: skip
            assert len(stub.requests()) > before, "the Ray run solved its tasks itself (its own schema, nothing reused)"
        finally:
            ray.shutdown()

    reference = tables(runs["local-sqlite"])
    for name in ("local-postgres", "ray-postgres"):
        for table, frame in tables(runs[name]).items():
            pd.testing.assert_frame_equal(frame, reference[table], obj=f"{name} {table}")
        assert not (runs[name] / "results.sqlite").exists(), "the results went to PostgreSQL, not a file"
        stored = postgres_records(postgres_url, schema_name(name, "results"))
        assert stored == sqlite_records(runs["local-sqlite"]), f"{name}: the same results under the same keys"
        assert sum(kind == "trajectory" for kind in stored.values()) > 0


def test_a_bad_or_unreachable_store_url_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    from memcollab.cli.app import app
    from memcollab.errors import ConfigError

    down = "postgresql://u:secret@127.0.0.1:1/db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "not-a-secret")
        patch.setenv("MEMCOLLAB_CONFIG_DIR", str(stub_config_dir(tmp_path / "configs", "http://127.0.0.1:1/v1")))
        for args, message in (
            (
                ["grid", str(CONFIG), "--store-url", down],
                "cannot open store database postgresql://u:***@127.0.0.1:1/db",
            ),
            (["experiment", str(CONFIG), "--store-url", down], "cannot open store database"),
            (["run", "--store-url", down], "cannot open store database"),
            (["build-memory", "--store-url", "sqlite:///m.sqlite"], "store_url: not a PostgreSQL URL"),
            (["evaluate", "--store-url", f"{down}?schema=x"], "drop ?schema="),
            (["experiment", str(CONFIG), "--store-url", "runs/db"], "store_url: not a PostgreSQL URL"),
        ):
            run_dir = tmp_path / "run"
            result = CliRunner().invoke(app, [*args, "--run-dir", str(run_dir)])
            assert isinstance(result.exception, ConfigError), (args, result.output)
            text = str(result.exception)
            assert message in text and "\n" not in text and "secret" not in text, text
            assert not run_dir.exists(), args
    single = CliRunner().invoke(
        app, ["experiment", str(ROOT / "configs/experiments/gsm8k_default.yaml"), "--executor", "ray"]
    )
    assert isinstance(single.exception, ConfigError) and "are for grids" in str(single.exception)


def test_a_run_with_a_store_url_keeps_its_results_and_memory_in_schemas_of_its_own(
    postgres_url: str, tmp_path: Path
) -> None:
    """`run`/`build-memory` with --store-url: the results and the memory are schemas named from the run dir's name
    (no SQLite file in the run dir); a second machine with the same run dir name and URL opens the same stores."""
    from memcollab.experiments.config import make_config
    from memcollab.experiments.preflight import _memory_provenance
    from memcollab.experiments.runner import Experiment
    from memcollab.records import MemoryEntry, Provenance

    settings = {"store_url": postgres_url, "track": False, "build_agents": ["weak"], "eval_agents": []}
    cfg = make_config(run_dir=tmp_path / "here" / "shared", **settings)
    assert _memory_provenance(cfg.memory_file) == set(), "no store yet: nothing to overlap, and nothing created"
    with Experiment(cfg) as exp:
        exp.store.add(MemoryEntry(when="w", enforce="e", avoid="a", category="c", error_type="t",
                                  provenance=Provenance(task_ids=["gsm8k/train/1"])))  # fmt: skip
        exp.results.put("k", "trajectory", "t", "weak", {"x": 1})
        assert exp.store.path.endswith(f"?schema={schema_name('shared', 'memory')}")
    elsewhere = make_config(run_dir=tmp_path / "there" / "shared", **settings)
    with Experiment(elsewhere) as exp:
        assert len(exp.store) == 1 and exp.results.get("k") == {"x": 1}
    assert _memory_provenance(elsewhere.memory_file) == {"gsm8k/train/1"}
    assert not list((tmp_path / "here" / "shared").glob("*.sqlite"))
