"""MLflow for a grid: one experiment per config, a parent run per invocation, a nested child run per cell.

Built on `tracking.Tracker` (explicit client, no global active run): the child runs carry the parent's id
in the `mlflow.parentRunId` tag, which is what makes them nested in MLflow. The DSPy programs go in the
parent run through `Tracker.log_program` (MLflow's `dspy` flavour, registered as model versions).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
