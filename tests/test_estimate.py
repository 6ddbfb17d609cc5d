"""The time estimate of a run: up front from call counts and the throughput file, then corrected as tasks finish."""

import pytest

from memcollab.errors import ConfigError
from memcollab.experiments.config import RunConfig
from memcollab.experiments.estimate import Countdown, Throughput, estimate_seconds, load_throughput, selected_count
from memcollab.programs.pipeline import Agent

MODELS = {"weak": "qwen2.5-coder-0.5b", "strong": "qwen2.5-coder-1.5b", "other": "smollm2-135m"}


def agents(backend: str = "server") -> dict[str, Agent]:
    return {
        name: Agent(name=name, lm=None, config={"model": model, "backend": backend}) for name, model in MODELS.items()
    }


def test_code_runs_count_every_turn_and_grow_with_the_slices():
    math = estimate_seconds(RunConfig(benchmark="gsm8k"), agents())
    code = estimate_seconds(RunConfig(benchmark="humaneval", max_turns=3), agents())
    one_turn = estimate_seconds(RunConfig(benchmark="humaneval", max_turns=1), agents())
    bigger = estimate_seconds(RunConfig(benchmark="gsm8k", build_limit=40, eval_limit=40), agents())
    assert math and code and one_turn and bigger
    assert one_turn == math and code > 2 * math
    assert bigger > 1.9 * math


def test_in_process_is_estimated_slower_and_remote_models_are_unknown():
    assert estimate_seconds(RunConfig(), agents("local")) > estimate_seconds(RunConfig(), agents("server"))
    remote = {
        **agents(),
        "weak": Agent(name="weak", lm=None, config={"model": "openai/gpt-4o-mini", "backend": "litellm"}),
    }
    assert estimate_seconds(RunConfig(), remote) is None


def test_ids_count_as_the_tasks_they_name():
    by_ids = RunConfig(build_ids="1-40", eval_ids="1001-1039,1205")
    assert (selected_count(by_ids, "build"), selected_count(by_ids, "eval")) == (40, 40)
    assert estimate_seconds(by_ids, agents()) == estimate_seconds(RunConfig(build_limit=40, eval_limit=40), agents())
    # counts of the tasks actually loaded win over the config's
    assert estimate_seconds(RunConfig(), agents(), n_build=40, n_eval=40) == estimate_seconds(by_ids, agents())


def test_the_figures_come_from_the_data_file(tmp_path):
    """No measured number lives in code: halving every rate in the file doubles the estimate."""
    base = load_throughput()
    assert base is not None and base.rate("smollm2-135m", "server") > base.rate("smollm2-135m", "local")
    halved = {
        table: {m: {b: r / 2 for b, r in rates.items()} for m, rates in getattr(base, table).items()}
        for table in ("tokens_per_s", "prompt_tokens_per_s")
    }
    slower = base.model_copy(update=halved)
    cfg = RunConfig()
    assert estimate_seconds(cfg, agents(), throughput=slower) == pytest.approx(2 * estimate_seconds(cfg, agents()))
    assert load_throughput(tmp_path / "absent.yaml") is None
    broken = tmp_path / "throughput.yaml"
    broken.write_text("tokens_per_s: {}\ntokens_per_call: {solve: 1}\ncontrast_pair_rate: 3\n")
    with pytest.raises(ConfigError, match="invalid throughput file") as info:
        load_throughput(broken)
    assert "\n" not in str(info.value)


def test_a_call_costs_its_prompt_where_the_prompt_rate_is_known():
    """The distiller reads ~7x what it writes: an estimate from generated tokens alone was hours short."""
    figures = Throughput(
        tokens_per_s={"m": {"server": 10.0}, "n": {"server": 10.0}},
        prompt_tokens_per_s={"m": {"server": 100.0}},
        tokens_per_call={"solve": 50, "distill": 200, "classify": 5},
        prompt_tokens_per_call={"solve": 100, "distill": 1500},
        contrast_pair_rate=0.5,
    )
    assert figures.call_seconds("m", "server", "distill") == pytest.approx(200 / 10 + 1500 / 100)
    assert figures.call_seconds("m", "server", "classify") == pytest.approx(5 / 10)  # no prompt size given
    assert figures.call_seconds("n", "server", "distill") == pytest.approx(200 / 10)  # no prompt rate measured
    assert figures.call_seconds("absent", "server", "solve") is None
    shipped = load_throughput()
    assert shipped is not None and shipped.prompt_tokens_per_call["distill"] > shipped.tokens_per_call["distill"]
    assert set(shipped.guidance_tokens_per_item) == {"rule", "example", "cheatsheet_entry"}


def test_countdown_scales_the_phases_left_by_the_measured_ones() -> None:
    countdown = Countdown([100.0, 50.0, 50.0, 10.0, 10.0])  # build, then two agents x two conditions
    assert countdown.finished(200.0) == pytest.approx(240.0)  # the build took twice its estimate: so does the rest
    assert countdown.finished(50.0) == pytest.approx(70 * 250 / 150)
    assert countdown.finished(1.0) == pytest.approx(20 * 251 / 200)
    countdown.finished(10.0)
    assert countdown.finished(10.0) == 0.0


def test_countdown_says_nothing_while_the_finished_phases_were_served_from_the_stores() -> None:
    countdown = Countdown([100.0, 100.0])
    assert countdown.finished(3.0) is None  # a resumed build: cached calls say nothing about speed


def test_the_rest_is_corrected_by_the_measured_part() -> None:
    from memcollab.experiments.estimate import corrected_remaining

    assert corrected_remaining(100.0, 200.0, 300.0) == 600.0  # twice as slow as estimated: the rest too
    assert corrected_remaining(100.0, 50.0, 300.0) == 150.0
    assert corrected_remaining(100.0, 5.0, 300.0) is None  # mostly cached: says nothing about speed
    assert corrected_remaining(0.0, 5.0, 300.0) is None
