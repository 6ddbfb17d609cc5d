"""`memcollab run` end to end with a real embedded model (SmolLM2-135M) on 3 build and 3 evaluation tasks.

A 135M model may well solve none of them: this checks the flow and the persisted artefacts
(results, memory, summary, MLflow store) and that a rerun resumes without new LM calls, not accuracy.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from memcollab.paths import default_data_dir

pytestmark = [pytest.mark.model, pytest.mark.skipif(default_data_dir() is None, reason="benchmark data not found")]


def _smollm2_ready() -> str | None:
    """None when SmolLM2 can run here: through llama-server (what `--backend auto` picks) or in-process."""
    from memcollab.errors import ModelError, ServerError
    from memcollab.lm.assemble import model_path
    from memcollab.lm.preflight import llama_cpp_available
    from memcollab.lm.server import find_server_binary

    try:
        find_server_binary()
    except ServerError:
        if not llama_cpp_available():
            return "neither llama-server (memcollab models build-server) nor llama-cpp-python is installed"

    try:
        model_path("smollm2-135m")
    except ModelError as exc:
        return str(exc)
    return None


def _count(db, kind: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]


def test_run_end_to_end_with_smollm2(tmp_path):
    reason = _smollm2_ready()
    if reason:
        pytest.skip(reason)
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        textwrap.dedent("""
        defaults: {model: smollm2-135m, family: smollm, max_tokens: 160}
        agents:
          - {name: greedy}
          - {name: sampler, temperature: 0.9, seed: 7}
    """)
    )
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "memcollab.cli",
        "run",
        "--agents-file",
        str(agents),
        "--build-agents",
        "greedy,sampler",
        "--eval-agents",
        "greedy",
        "--build-limit",
        "3",
        "--eval-limit",
        "3",
        "--workers",
        "2",
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "COLUMNS": "160"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    assert "accuracy without and with shared memory" in first.stdout
    assert "estimated time: about" in first.stderr

    summary = json.loads((run_dir / "summary.json").read_text())
    cells = {(r["agent"], r["condition"]): r for r in summary["results"]}
    assert set(cells) == {("greedy", "no_memory"), ("greedy", "memcollab")}
    assert all(r["n"] == 3 for r in cells.values())
    assert summary["memory_size"] == sum(1 for line in (run_dir / "memory.jsonl").read_text().splitlines() if line)
    for name in ("build_trajectories.jsonl", "eval_greedy_no_memory.jsonl", "eval_greedy_memcollab.jsonl", "mlflow.db"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run_dir / "build_trajectories.jsonl").read_text().splitlines()]
    assert sorted({r["agent"] for r in rows}) == ["greedy", "sampler"] and len(rows) >= 6
    trajectories = _count(run_dir / "results.sqlite", "trajectory")
    assert trajectories >= 12  # 3 tasks x 2 build agents + 3 tasks x 2 conditions

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _count(run_dir / "results.sqlite", "trajectory") == trajectories, "a rerun must resume, not redo"
    assert "time left" not in second.stderr  # calls served from the stores say nothing about speed
    assert json.loads((run_dir / "summary.json").read_text())["results"] == summary["results"]
