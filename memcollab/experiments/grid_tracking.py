"""MLflow for a grid: one experiment per config, a parent run per invocation, a nested child run per cell.

Built on `tracking.Tracker` (explicit client, no global active run): the child runs carry the parent's id
in the `mlflow.parentRunId` tag, which is what makes them nested in MLflow. The DSPy programs go in the
parent run through `Tracker.log_program` (MLflow's `dspy` flavour, registered as model versions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from memcollab.experiments.best_of import CHOICE_FILE
from memcollab.experiments.grid_plan import GridPlan
from memcollab.experiments.preflight import check_sandbox
from memcollab.experiments.report import TABLES
from memcollab.experiments.transfer import tracker_matrix
from memcollab.programs.pipeline import Agent
from memcollab.records import stable_hash
from memcollab.tracking import Tracker, default_tracking_uri
from memcollab.tracking.mlflow_tracking import local_artifacts


class GridTracker:
    """A parent Tracker for the invocation and a child Tracker that opens one nested run per cell."""

    def __init__(self, tracking_uri: str | None, run_dir: Path, experiment: str, enabled: bool = True) -> None:
        uri = tracking_uri or default_tracking_uri(run_dir)
        location = local_artifacts(uri, run_dir)
        self.parent = Tracker(uri, experiment=experiment, enabled=enabled, artifact_location=location)
        self.child_tracker = (
            Tracker(uri, experiment=experiment, enabled=enabled, artifact_location=location) if enabled else self.parent
        )
        self.enabled = self.parent.enabled

    @property
    def experiment_id(self) -> str | None:
        return getattr(self.parent, "experiment_id", None)

    @property
    def parent_id(self) -> str | None:
        return self.parent.run_id

    @contextmanager
    def invocation(self, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[Tracker]:
        with self.parent.run(name, params=params, tags={"kind": "grid", **(tags or {})}) as tracker:
            yield tracker

    def cell(
        self,
        name: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        rows: list[dict[str, Any]],
        artifacts: list[tuple[Path, str | None]],
    ) -> None:
        """One nested run: the cell's settings, its row of the table, its per-task table and files."""
        if not self.enabled:
            return
        tags = {"mlflow.parentRunId": self.parent.run_id or "", "kind": "cell"}
        with self.child_tracker.run(name, params=params, tags=tags) as child:
            child.log_metrics(metrics)
            child.log_table(rows, "tasks.json")
            for path, where in artifacts:
                child.log_artifact(path, where)


def model_sha256(config: dict[str, Any]) -> str:
    """The sha256 of an embedded model's GGUF (from the catalogue); what a remote or uncatalogued model has instead."""
    from memcollab.lm.catalog import CATALOG

    if config.get("backend", "local") in ("local", "server"):
        spec = CATALOG.get(str(config.get("model", "")))
        return spec.sha256 if spec else "uncatalogued gguf"
    return "remote model"


def agent_params(config: dict[str, Any]) -> dict[str, Any]:
    """An agent's identity and decoding as MLflow parameters."""
    keys = ("model", "backend", "family", "adapter", "temperature", "max_tokens", "seed", "n_ctx")
    return {**{k: config.get(k) for k in keys if k in config}, "sha256": model_sha256(config)}


def invocation_params(plan: GridPlan, agents: Mapping[str, Agent], solver_program: str) -> dict[str, Any]:
    """The parent run's parameters: the config, every agent, the task slices' hashes, the k values, the solver."""
    config = json.loads(plan.cfg.model_dump_json())
    config["cells"] = json.dumps(config["cells"])[:5000]
    return {
        "config": config,
        "agents": {name: agent_params(agent.config) for name, agent in agents.items()},
        "tasks": {
            name: {
                "build_hash": stable_hash([t.id for t in b.build_tasks]),
                "build_n": len(b.build_tasks),
                "eval_hash": stable_hash(list(b.eval_tasks)),
                "eval_n": len(b.eval_tasks),
            }
            for name, b in plan.benchmarks.items()
        },
        "k_values": sorted({c.method.k for c in plan.cells if c.method.kind != "none"}),
        "n_cells": len(plan.cells),
        "n_memories": len(plan.memories),
        "solver_program": solver_program,
        "sandbox": check_sandbox(plan.benchmarks),  # where model code ran: bwrap, uid or (asked for) guard
    }


def log_programs(tracker: GridTracker, plan: GridPlan, shared: Any) -> None:
    """The DSPy programs every cell ran (solver, classifier; `shared` is the method context's) and those that
    built the plan's memories, in the parent run."""
    from memcollab.programs.distiller import Distiller, Reflector
    from memcollab.programs.methods.category import CategoryDistiller
    from memcollab.programs.methods.cheatsheet import Curator

    if not tracker.enabled:
        return
    kinds = {m.spec.kind for m in plan.memories.values()}
    taxonomy = shared.taxonomy
    programs: dict[str, Any] = {"solver": shared.solver, "classifier": shared.classifier}
    if "memcollab" in kinds:
        programs["distiller"] = Distiller(taxonomy)
    if "reflect" in kinds:
        programs["reflector"] = Reflector(taxonomy)
    if "category" in kinds:
        programs["category_distiller"] = CategoryDistiller(taxonomy)
    if "cheatsheet" in kinds:
        programs["curator"] = Curator()
    for name, program in programs.items():
        tracker.parent.log_program(program, name)


def _cell_metrics(line: pd.Series, categories: pd.DataFrame) -> dict[str, float]:
    """A cell's numeric table columns and its per-category differences, as MLflow metrics."""
    metrics = {
        k: float(v)
        for k, v in line.items()
        if isinstance(v, (int, float, bool)) and pd.notna(v) and k not in ("seed", "k")
    }
    cats = categories[categories["cell"] == line.name]
    metrics.update({f"category.{c}.diff": float(d) for c, d in zip(cats["category"], cats["diff"])})
    return metrics


def log_grid(
    tracker: GridTracker,
    plan: GridPlan,
    agents: Mapping[str, Agent],
    run_dir: Path,
    table: pd.DataFrame,
    categories: pd.DataFrame,
    transfer: pd.DataFrame,
    solver_program: str,
) -> None:
    """A child run per cell (settings, metrics, per-task rows, memory and figures), then the parent's files,
    transfer matrix and no-memory accuracies; the tables are the grid's (`table.csv`, `categories.csv`,
    `transfer.csv`)."""
    if not tracker.enabled:
        return
    lines = table.set_index("cell")
    for cell in plan.cells:
        if cell.id not in lines.index:
            continue  # a pass that stopped to choose the best of the rest: the next pass runs and logs the cell
        line = lines.loc[cell.id]
        memory_id = plan.cell_memory[cell.id]
        params = {
            "benchmark": cell.benchmark,
            "target": cell.target,
            "method": cell.method.model_dump(),
            "source": cell.source_label,
            "seed": cell.seed,
            "k": cell.method.k,
            "target_agent": agent_params(agents[cell.target].config),
            "tasks": {"n": int(line["n"]), "hash": stable_hash(plan.benchmarks[cell.benchmark].cell_tasks[cell.id])},
            "memory": {"id": memory_id or "none", "hash": line.get("memory_hash", "") or "none"},
            "solver_program": solver_program,
        }
        artifacts: list[tuple[Path, str | None]] = [(run_dir / "cells" / f"{cell.id}.jsonl", None)]
        if memory_id:
            folder = run_dir / "memories" / memory_id
            artifacts += [(folder / "memory.jsonl", "memory"), (folder / "error_types.png", "figures")]
        rows = pd.read_json(run_dir / "cells" / f"{cell.id}.jsonl", lines=True).to_dict("records")
        tracker.cell(cell.id, params, _cell_metrics(line, categories), rows, artifacts)
    parent = tracker.parent
    if not transfer.empty:
        parent.log_transfer_matrix(tracker_matrix(transfer), "transfer")
    for name in (*(f"{name}.csv" for name in TABLES), "table.md", "grid.json", "summary.json", "tasks.jsonl"):
        parent.log_artifact(run_dir / name)
    if (run_dir / CHOICE_FILE).is_file():
        parent.log_artifact(run_dir / CHOICE_FILE)
    for name in ("transfer.png", "k_ablation.png"):
        parent.log_artifact(run_dir / name, "figures")
    none = table[table["kind"] == "none"]
    parent.log_metrics(
        {f"{b}.{t}.none.accuracy": a for b, t, a in zip(none["benchmark"], none["target"], none["accuracy"])}
    )
