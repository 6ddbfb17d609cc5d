"""DSPy programs logged to a real (SQLite) MLflow store come back as registered model versions: a new version only
when the program changed, each one loadable as the program it was."""

from __future__ import annotations

import dspy
import mlflow.dspy
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from memcollab.tracking import Tracker


def _log(tracker: Tracker, program: dspy.Module) -> dict[str, str]:
    with tracker.run("programs") as run:
        run.log_program(program, "classifier")
        run_id = run.run_id
    return MlflowClient(tracker.tracking_uri).get_run(run_id).data.params


def test_a_changed_program_gets_a_new_version_and_an_unchanged_one_does_not(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, experiment="registry", artifact_location=tmp_path / "artifacts")
    first = dspy.Predict(dspy.Signature("question -> category", "Pick the task's category."))
    changed = dspy.Predict(dspy.Signature("question -> category", "Pick the category that fits best."))

    logged = [_log(tracker, program) for program in (first, first, changed)]

    assert [p["programs.classifier"] for p in logged] == ["mlflow.dspy"] * 3
    assert [p["programs.classifier.model"] for p in logged] == [
        "registry.classifier/1",
        "registry.classifier/1",
        "registry.classifier/2",
    ]
    versions = MlflowClient(uri).search_model_versions("name = 'registry.classifier'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    for version, program in (("1", first), ("2", changed)):
        source = MlflowClient(uri).get_model_version_download_uri("registry.classifier", version)
        local = download_artifacts(artifact_uri=source, tracking_uri=uri)
        loaded = mlflow.dspy.load_model(local)
        assert loaded.signature.instructions == program.signature.instructions
