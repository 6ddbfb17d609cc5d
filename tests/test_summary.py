"""summary.json of a run dir: phase timings add up over invocations (a replay must not erase them)."""

import json

from memcollab.experiments.runner import Experiment, RunConfig


def test_timings_accumulate_over_invocations_and_survive_a_bad_summary(tmp_path):
    cfg = RunConfig(run_dir=tmp_path / "run", track=False)
    for seconds in (120.0, 0.2):  # a measured run, then a replay served from the stores
        with Experiment(cfg) as exp:
            exp.timings = {"build_s": seconds}
            path = exp.write_summary()
    assert json.loads(path.read_text())["timings_s"] == {"build_s": 120.2}

    path.write_text("{not json")
    with Experiment(cfg) as exp:
        exp.timings = {"build_s": 5.0}
        exp.write_summary()
    assert json.loads(path.read_text())["timings_s"] == {"build_s": 5.0}
