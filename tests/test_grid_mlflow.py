"""A small grid logged to a real `mlflow server` on 127.0.0.1, read back: one experiment per config, a parent run per
invocation, a nested child run per cell, the DSPy programs through MLflow's dspy flavour and its model registry
(scripted DummyLM agents)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from memcollab.experiments.grid import run_grid
from memcollab.experiments.grid_config import GridConfig
from memcollab.lm.catalog import CATALOG
from memcollab.paths import default_data_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grid import scripted_agents

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(default_data_dir() is None, reason="benchmark data directory not found")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("memcollab_tracking_server", ROOT / "mlflow" / "tracking_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    server = module.start(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()
    assert server.process.poll() is not None


def tracked_grid(name: str, tmp_path: Path, server, cells: list[dict], **fields) -> GridConfig:
    """A GSM8K grid of a few tasks (built from train 1-6 unless `fields` say otherwise), tracked on `server`."""
    base = {"build_ids": "1-6", "workers": 1, "bootstrap_samples": 200}
    return GridConfig(
        name=name,
        benchmarks=["gsm8k"],
        run_dir=tmp_path / "run",
        cells=cells,
        tracking_uri=server.url,
        **{**base, **fields},
    )


def test_grid_logs_parent_and_nested_cell_runs(tmp_path, mlflow_server):
    import mlflow.dspy
    from mlflow import MlflowClient

    cells = [{"target": "weak", "eval_ids": "1-3", "methods": ["none", "memcollab"]}]
    cfg = tracked_grid("mlflow-smoke", tmp_path, mlflow_server, cells, build_ids="1-3", workers=2)
    agents = scripted_agents(cfg)
    for _ in range(2):  # two invocations: two parent runs in one experiment, the second from the result store
        result = run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False)

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("memcollab-grid-mlflow-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "grid"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in runs)
    parent = next(r for r in parents if r.info.run_id == result.parent_run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [
        "gsm8k.weak.memcollab.weak_strong.s0",
        "gsm8k.weak.none.none.s0",
    ]

    params = parent.data.params
    assert params["agents.weak.sha256"] == CATALOG["qwen2.5-coder-0.5b"].sha256
    assert params["agents.strong.temperature"] == "0.0" and params["config.name"] == "mlflow-smoke"
    assert params["tasks.gsm8k.build_n"] == "3" and params["tasks.gsm8k.eval_n"] == "3"
    assert params["sandbox"] == "-", "a math grid runs no model code"
    assert params["programs.solver"] == "mlflow.dspy", params["programs.solver"]
    # registered once: the second invocation ran the same solver, so it points at the same model version
    assert {r.data.params["programs.solver.model"] for r in parents} == {"memcollab-grid-mlflow-smoke.solver/1"}
    assert parent.data.metrics["gsm8k.weak.none.accuracy"] == 0.0
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    tables = {
        "table.csv",
        "table.md",
        "categories.csv",
        "echo.csv",
        "placebo.csv",
        "overlap.csv",
        "transfer.csv",
        "k_ablation.csv",
    }
    assert tables | {"grid.json", "summary.json", "tasks.jsonl", "programs"} <= parent_files
    local = client.download_artifacts(parent.info.run_id, "programs/solver", str(tmp_path / "downloaded"))
    solver = mlflow.dspy.load_model(local)
    assert type(solver).__name__ == "Solver" and solver.max_turns == cfg.max_turns

    child = next(r for r in children if "memcollab" in r.info.run_name)
    table = result.table.set_index("cell").loc[child.info.run_name]
    assert child.data.metrics["accuracy"] == pytest.approx(table["accuracy"]) == pytest.approx(1 / 3)
    assert child.data.metrics["diff"] == pytest.approx(1 / 3) and "p_value" in child.data.metrics
    assert child.data.params["method.kind"] == "memcollab" and child.data.params["k"] == "3"
    assert child.data.params["memory.hash"] == table["memory_hash"] != "none"
    assert child.data.params["target_agent.sha256"] == CATALOG["qwen2.5-coder-0.5b"].sha256
    files = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"tasks.json", "memory", "figures", "gsm8k.weak.memcollab.weak_strong.s0.jsonl"} <= files
    assert [a.path for a in client.list_artifacts(child.info.run_id, "memory")] == ["memory/memory.jsonl"]


def test_a_pass_that_chooses_the_best_of_the_rest_logs_what_it_ran(tmp_path, mlflow_server):
    """The first pass stops once both candidates have run (before the transfer's cell): its parent run holds their
    child runs and best_of.json; the second pass, in the same invocation, logs every cell."""
    import json

    from mlflow import MlflowClient

    from memcollab.experiments.grid_config import BestOf, TransferSpec

    cells = [{"target": "weak", "eval_ids": "1-3", "methods": ["none", "examples", "naive"]}]
    cfg = tracked_grid(
        "mlflow-best-of",
        tmp_path,
        mlflow_server,
        cells,
        best_of=BestOf(target="weak", methods=["examples", "naive"], chosen_on="1-2", eval_ids="1-5"),
        transfer=TransferSpec(sources=["other"], targets=["weak"], eval_ids="1-2"),
    )
    result = run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("memcollab-grid-mlflow-best-of")
    runs = client.search_runs([experiment.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = sorted((r for r in runs if r.data.tags.get("kind") == "grid"), key=lambda r: r.info.start_time)
    assert len(parents) == 2 and parents[-1].info.run_id == result.parent_run_id

    def children(parent) -> list[str]:
        return sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)

    assert children(parents[0]) == [
        "gsm8k.weak.examples.weak_strong.s0",
        "gsm8k.weak.naive.strong.s0",
        "gsm8k.weak.none.none.s0",
    ], "the cells the choosing pass ran, not the transfer cell after them"
    assert children(parents[1]) == sorted(children(parents[0]) + ["gsm8k.weak.naive.other.s0"])
    local = client.download_artifacts(parents[0].info.run_id, "best_of.json", str(tmp_path / "downloaded"))
    assert json.loads(Path(local).read_text())["gsm8k"]["method"] == "naive"
