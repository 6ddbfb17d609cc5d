"""An experiment end to end with scripted LMs, logged to a real `mlflow server`, then the notebook on its run dir.

The LMs are DSPy DummyLMs (this checks data flow and tracking, not accuracy); the benchmark
data, graders, SQLite stores, MLflow server and notebook kernel are all real.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from dspy.utils.dummies import DummyLM

from memcollab.benchmarks import load_tasks
from memcollab.experiments.runner import Experiment, RunConfig
from memcollab.paths import default_data_dir
from memcollab.programs.pipeline import Agent

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(default_data_dir() is None, reason="benchmark data directory not found")


def _load_server_module():
    spec = importlib.util.spec_from_file_location("memcollab_tracking_server", ROOT / "mlflow" / "tracking_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = _load_server_module().start(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()
    assert server.process.poll() is not None


def scripted_agents(build, evaluation) -> dict[str, Agent]:
    """weak: always answers 0; strong: the reference answer, a category, and one constraint when distilling."""
    constraint = {
        "when": "several quantities are combined into a total",
        "enforce": "write each partial result",
        "avoid": "dropping a group from the sum",
        "error_type": "missed_case",
    }
    strong = {"successful_solution": {"reasoning": "contrast", "constraints": [constraint]}}
    for task in [*build, *evaluation]:
        strong[task.prompt] = {"reasoning": "step by step", "answer": task.answer, "category": "multi_step_counting"}
    weak = {task.prompt: {"reasoning": "guess", "answer": "0"} for task in [*build, *evaluation]}
    return {
        "weak": Agent(name="weak", lm=DummyLM(weak), config={"name": "weak", "model": "dummy-weak"}),
        "strong": Agent(name="strong", lm=DummyLM(strong), config={"name": "strong", "model": "dummy-strong"}),
    }


def test_experiment_logs_to_mlflow_server_and_notebook_runs(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    cfg = RunConfig(
        benchmark="gsm8k",
        build_limit=3,
        eval_limit=2,
        build_agents=["weak", "strong"],
        eval_agents=["weak"],
        workers=2,
        run_dir=tmp_path / "run",
        tracking_uri=mlflow_server.url,
    )
    build = load_tasks("gsm8k", split="train", limit=3)
    evaluation = load_tasks("gsm8k", split="test", limit=2)
    with Experiment(cfg) as exp:
        exp.agents = scripted_agents(build, evaluation)
        with exp.tracker.run("test-run", params=cfg.model_dump(mode="json")):
            report = exp.build_memory()
            summaries = exp.evaluate(["weak"])
            exp.write_summary()
        run_id_experiment = exp.tracker.experiment_id

    assert len(report.pairs) == 3 and report.accuracy_by_agent == {"weak": 0.0, "strong": 1.0}
    assert [(s.agent, s.condition, s.n) for s in summaries] == [("weak", "no_memory", 2), ("weak", "memcollab", 2)]
    assert summaries[1].mean_memories == 1.0, "one distilled entry, retrieved for every task of its category"

    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([run_id_experiment])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["build.pairs"] == 3 and metrics["memory.size"] == 1
    assert metrics["eval.weak.memcollab.accuracy"] == 0.0
    assert metrics["transfer.none.to.weak"] == metrics["eval.weak.no_memory.accuracy"]  # row = memory source
    assert metrics["transfer.weak_strong.to.weak"] == metrics["eval.weak.memcollab.accuracy"]
    assert run.data.params["benchmark"] == "gsm8k"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "memory", "eval_weak_memcollab.json"} <= artifacts

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "evaluate_run.ipynb", as_version=4)
    os.environ["MEMCOLLAB_RUN_DIR"] = str(cfg.run_dir)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        os.environ.pop("MEMCOLLAB_RUN_DIR")
    assert (cfg.run_dir / "error_type_heatmap.png").stat().st_size > 0
    outputs = "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "1 memory entries" in outputs
