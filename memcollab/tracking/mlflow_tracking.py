"""MLflow logging of MemCollab runs: settings, metrics, per-task results, programs, memories, transfer matrices.

Uses an explicit `MlflowClient` (no global active run), so several trackers with
different URIs can live in one process (tests, notebooks) and logging from worker
threads is safe. The default store is a local SQLite file under the run directory;
`MLFLOW_TRACKING_URI` or `--tracking-uri` point at a server instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memcollab.errors import ConfigError
from memcollab.tracking.programs import program_hash, register_program, registered_name, save_program


def default_tracking_uri(run_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite store in the run directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def local_artifacts(tracking_uri: str, run_dir: Path) -> Path | None:
    """`<run_dir>/mlartifacts` for a store on this machine (sqlite, file); None for a server, which has its own."""
    return run_dir / "mlartifacts" if tracking_uri.startswith(("sqlite:", "file:", "/")) else None


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)[:500]


class Tracker:
    """One MLflow run at a time, opened with `run(...)`; every method is a no-op when disabled."""

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str = "memcollab",
        enabled: bool = True,
        artifact_location: Path | None = None,
    ) -> None:
        """`artifact_location`: where a new experiment keeps its artefacts (for a file-backed store, the run
        directory; without it MLflow writes `./mlruns` into whatever directory the command ran from)."""
        self.enabled = enabled and tracking_uri is not None
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        self._client = None
        if self.enabled:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=tracking_uri)
            try:
                found = self._client.get_experiment_by_name(experiment)
                location = artifact_location.resolve().as_uri() if artifact_location is not None else None
                self.experiment_id = (
                    found.experiment_id if found else self._client.create_experiment(experiment, location)
                )
            except Exception as exc:  # unreachable server, bad URI
                raise ConfigError(
                    f"cannot use MLflow tracking URI {tracking_uri}: {str(exc).splitlines()[0]}"
                ) from None

    @contextmanager
    def run(
        self, name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> Iterator[Tracker]:
        """Open a run; it ends FINISHED, or FAILED if the block raises (and the error is re-raised)."""
        if not self.enabled:
            yield self
            return
        created = self._client.create_run(self.experiment_id, run_name=name, tags=tags or {})
        self.run_id = created.info.run_id
        if params:
            self.log_params(params)
        try:
            yield self
        except BaseException:
            self._client.set_terminated(self.run_id, status="FAILED")
            self.run_id = None
            raise
        self._client.set_terminated(self.run_id, status="FINISHED")
        self.run_id = None

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.run_id:
            return
        flat: dict[str, str] = {}
        _flat("", params, flat)
        for key, value in flat.items():
            self._client.log_param(self.run_id, key, value)

    def log_metrics(self, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.run_id:
            return
        for key, value in metrics.items():
            if value is not None:
                self._client.log_metric(self.run_id, f"{prefix}{key}", float(value))

    def log_dict(self, payload: Any, artifact_file: str) -> None:
        if self.run_id:
            self._client.log_dict(self.run_id, payload, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Per-task results as an MLflow table artefact (viewable in the UI's evaluation tab)."""
        if not self.run_id or not rows:
            return
        columns: dict[str, list[Any]] = {key: [] for key in rows[0]}
        for row in rows:
            for key in columns:
                value = row.get(key)
                columns[key].append(
                    value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
                )
        self._client.log_table(self.run_id, data=columns, artifact_file=artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id and Path(path).exists():
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_program(self, program: Any, name: str) -> str:
        """A DSPy program under `programs/<name>` (loadable with `mlflow.dspy.load_model`), registered as a version of
        the model `<experiment>.<name>`; the parameters `programs.<name>` and `programs.<name>.model` say how it was
        saved and which version it is. Returns how it was saved."""
        if not self.run_id:
            return "not logged"
        how = save_program(self._client, self.run_id, program, name)
        params = {f"programs.{name}": how}
        if how == "mlflow.dspy":
            model = registered_name(self.experiment, name)
            params[f"programs.{name}.model"] = register_program(
                self._client, self.run_id, model, name, program_hash(program)
            )
        self.log_params(params)
        return how

    def log_transfer_matrix(self, matrix: dict[str, dict[str, float]], name: str = "transfer") -> None:
        """Accuracy of each target agent (columns) with memory built by each source (rows; "none" = no memory).

        Source names like "weak+strong" keep their spelling in the JSON artefact; in metric names, characters
        MLflow refuses become "_" (`transfer.weak_strong.to.other`)."""
        if not self.run_id:
            return
        for source, row in matrix.items():
            for target, value in row.items():
                key = re.sub(r"[^A-Za-z0-9_\-. /]", "_", f"{name}.{source}.to.{target}")
                self._client.log_metric(self.run_id, key, float(value))
        self.log_dict(matrix, f"{name}_matrix.json")

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self.run_id:
            self._client.log_figure(self.run_id, figure, artifact_file)
