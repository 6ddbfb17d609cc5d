"""summary.json of a run dir: step times add up over invocations (a replay must not erase them), and a step an
earlier invocation finished adds nothing when a rerun only reads it back."""

import json
import time

import pytest
from test_experiment_tracking import scripted_agents

from memcollab.benchmarks import load_tasks
from memcollab.experiments.runner import Experiment, RunConfig
from memcollab.experiments.step_times import StepTimes


def test_step_times_add_up_and_a_finished_step_reads_back_for_free(tmp_path):
    summary = tmp_path / "summary.json"
    first = StepTimes(summary)
    with first.timed("build_s", "tasks-a") as seconds:
        pass
    first.complete("build_s", "tasks-a")
    with first.timed("eval_s", "tasks-a"):
        pass  # not completed: say it stopped with unanswered calls
    summary.write_text(json.dumps({**first.summary(), "timings_s": {"build_s": 100.0, "eval_s": 50.0}}))

    second = StepTimes(summary)
    with second.timed("build_s", "tasks-a") as seconds:
        pass
    assert seconds() == 100.0, "the same step, finished before: read back, adds nothing"
    with second.timed("eval_s", "tasks-a") as seconds:
        pass
    assert seconds() > 50.0, "a step left unfinished does real work on its rerun: its seconds count"
    with second.timed("build_s", "tasks-b") as seconds:
        pass
    assert seconds() > 100.0, "another fingerprint (other tasks) is new work"
    record = second.summary()
    assert record["invocations"] == 2 and record["completed"] == {"build_s": "tasks-a"}

    summary.write_text("{not json")
    assert StepTimes(summary).summary()["invocations"] == 1, "an unreadable summary starts from zero"


def _run(cfg: RunConfig, build, evaluation) -> dict:
    with Experiment(cfg) as exp:
        exp.agents = scripted_agents(build, evaluation)
        exp.build_memory()
        exp.evaluate(["weak"])
        path = exp.write_summary()
    return json.loads(path.read_text())


def test_a_replayed_run_reports_what_its_steps_took(tmp_path, monkeypatch):
    from memcollab.programs.pipeline import MemCollab

    evaluate = MemCollab.evaluate

    def slow_evaluate(self, *args, **kwargs):  # reading back takes time too: 0.2 s a step, seen in the totals
        time.sleep(0.2)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(MemCollab, "evaluate", slow_evaluate)
    cfg = RunConfig(
        benchmark="gsm8k", build_limit=3, eval_limit=2, eval_agents=["weak"], workers=2, run_dir=tmp_path, track=False
    )
    build = load_tasks("gsm8k", split="train", limit=3)
    evaluation = load_tasks("gsm8k", split="test", limit=4)
    first = _run(cfg, build, evaluation)
    steps = {"build_s", "eval.weak.no_memory_s", "eval.weak.memcollab_s"}
    assert set(first["timings_s"]) == steps and set(first["completed"]) == steps
    took = dict.fromkeys(steps, 1000.0)  # as if the first invocation had taken that long
    (tmp_path / "summary.json").write_text(json.dumps({**first, "timings_s": took}))

    replay = _run(cfg, build, evaluation)
    assert replay["invocations"] == 2
    assert replay["timings_s"]["build_s"] == 1000.0, "the build, read back: no time added"
    assert replay["timings_s"] == took, "the build and both evaluations, read back: no time added"
    assert replay["completed"] == first["completed"], "the same steps made the same things"

    more = _run(cfg.model_copy(update={"eval_limit": 4}), build, evaluation)
    assert more["timings_s"]["build_s"] == 1000.0, "the build did not change"
    assert more["timings_s"]["eval.weak.no_memory_s"] >= 1000.2, "four tasks where two were: new work, counted"


def test_a_stopped_run_keeps_the_time_of_its_steps(tmp_path, monkeypatch):
    from memcollab.programs.pipeline import MemCollab

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or the session's end) as the evaluation starts

    monkeypatch.setattr(MemCollab, "evaluate", stopped)
    cfg = RunConfig(
        benchmark="gsm8k", build_limit=3, eval_limit=2, eval_agents=["weak"], workers=2, run_dir=tmp_path, track=False
    )
    build = load_tasks("gsm8k", split="train", limit=3)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, build, load_tasks("gsm8k", split="test", limit=2))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "KeyboardInterrupt" and summary["invocations"] == 1
    assert set(summary["completed"]) == {"build_s"}, "the build finished; the evaluation did not"
    assert "eval.weak.no_memory_s" in summary["timings_s"], "the interrupted step's time so far is kept"
