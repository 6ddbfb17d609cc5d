"""MLflow for a grid: one experiment per config, a parent run per invocation, a nested child run per cell.

Built on `tracking.Tracker` (explicit client, no global active run): the child runs carry the parent's id
in the `mlflow.parentRunId` tag, which is what makes them nested in MLflow. The DSPy programs go in
through MLflow's `dspy` flavour (`mlflow.dspy.save_model`, DSPy's own save format, so they load back
as programs); where a program cannot be saved that way its JSON state is logged instead, and the
parent run's `programs.<name>` parameter says which and why.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memcollab.tracking import Tracker, default_tracking_uri
from memcollab.tracking.mlflow_tracking import local_artifacts

PIP_REQUIREMENTS = ["memcollab", "dspy", "mlflow"]
#: DSPy warns that loading a pickle can run code whenever `mlflow.dspy.save_model` reads back the program it
#: has just written; that file is this process's own, so the warning (one per program) is only noise.
TRUSTED_PICKLE_LOGGERS = ("dspy.primitives.base_module", "dspy.dsp.utils.settings")


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


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

    def log_program(self, program: Any, name: str) -> str:
        """A DSPy program through `mlflow.dspy` (loadable with `mlflow.dspy.load_model`); its JSON state if that
        fails. Returns how it was logged, which also goes to the parent's `programs.<name>` parameter."""
        tracker = self.parent
        if not tracker.run_id:
            return "not logged"
        try:
            import mlflow.dspy

            with tempfile.TemporaryDirectory() as tmp, _quiet(*TRUSTED_PICKLE_LOGGERS):
                target = Path(tmp) / name
                mlflow.dspy.save_model(
                    program, str(target), pip_requirements=PIP_REQUIREMENTS, use_dspy_model_save=True
                )
                for file in sorted(p for p in target.rglob("*") if p.is_file()):
                    relative = file.parent.relative_to(target)
                    where = f"programs/{name}" + (f"/{relative.as_posix()}" if str(relative) != "." else "")
                    tracker.log_artifact(file, where)
            how = "mlflow.dspy"
        except Exception as exc:  # an unpicklable part, an older dspy: the state still goes in, as JSON
            tracker.log_program(program, name)
            how = f"json state (mlflow.dspy failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        tracker.log_params({f"programs.{name}": how})
        return how
