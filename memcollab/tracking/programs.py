"""DSPy programs in MLflow: saved with the `dspy` flavour and registered as model versions.

A program goes in through `mlflow.dspy.save_model` (DSPy's own save format, so `mlflow.dspy.load_model` gives the
program back); where it cannot be saved that way (an unpicklable part, an older DSPy) its JSON state goes in instead,
unregistered. A saved program becomes a version of the registered model `<experiment>.<name>` only when it differs
from that model's latest version (the `program_hash` tag): a grid resumed ten times registers its solver once, and a
recompiled solver gets a new version.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memcollab.records import stable_hash

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


def program_hash(program: Any) -> str:
    """What a program is (instructions, fields, demos), independent of when or where it was saved."""
    return stable_hash(json.dumps(program.dump_state(), sort_keys=True, default=str))


def registered_name(experiment: str, name: str) -> str:
    """`<experiment>.<name>`, with characters a model registry may refuse replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{experiment}.{name}")


def save_program(client: Any, run_id: str, program: Any, name: str) -> str:
    """Log `program` under the run's `programs/<name>`; returns how ("mlflow.dspy", or why it is JSON state)."""
    import dspy

    try:
        import mlflow.dspy

        # Saving also pickles DSPy's settings; with no LM in them no endpoint or API key is written.
        with tempfile.TemporaryDirectory() as tmp, _quiet(*TRUSTED_PICKLE_LOGGERS), dspy.context(lm=None):
            target = Path(tmp) / name
            mlflow.dspy.save_model(program, str(target), pip_requirements=PIP_REQUIREMENTS, use_dspy_model_save=True)
            for file in sorted(p for p in target.rglob("*") if p.is_file()):
                relative = file.parent.relative_to(target)
                where = f"programs/{name}" + (f"/{relative.as_posix()}" if str(relative) != "." else "")
                client.log_artifact(run_id, str(file), where)
        return "mlflow.dspy"
    except Exception as exc:  # an unpicklable part, an older dspy: the state still goes in, as JSON
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            program.save(str(path))
            client.log_artifact(run_id, str(path), "programs")
        first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
        return f"json state (mlflow.dspy failed: {type(exc).__name__}: {first_line})"


def register_program(client: Any, run_id: str, model: str, name: str, fingerprint: str) -> str:
    """Register the run's `programs/<name>` as a version of `model`, unless the latest version is the same program;
    returns `<model>/<version>` (the `models:/` URI's tail), or why it is not registered."""
    try:
        versions = client.search_model_versions(f"name = '{model}'")
        latest = max(versions, key=lambda v: int(v.version), default=None)
        if latest is not None and latest.tags.get("program_hash") == fingerprint:
            return f"{model}/{latest.version}"
        if latest is None:
            try:
                client.get_registered_model(model)
            except Exception:
                client.create_registered_model(model, description=f"the DSPy program '{name}' of MemCollab runs")
        source = f"{client.get_run(run_id).info.artifact_uri}/programs/{name}"
        version = client.create_model_version(model, source, run_id=run_id, tags={"program_hash": fingerprint})
        return f"{model}/{version.version}"
    except Exception as exc:  # a store without a model registry: the program is still logged
        return f"not registered ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
