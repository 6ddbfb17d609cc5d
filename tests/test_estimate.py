"""The up-front time estimate of a run: from call counts and measured token rates."""

from memcollab.experiments.runner import RunConfig, estimate_seconds
from memcollab.programs.pipeline import Agent

MODELS = {"weak": "qwen2.5-coder-0.5b", "strong": "qwen2.5-coder-1.5b", "other": "smollm2-135m"}


def agents(backend: str = "server") -> dict[str, Agent]:
    return {name: Agent(name=name, lm=None, config={"model": model, "backend": backend}) for name, model in MODELS.items()}


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
    remote = {**agents(), "weak": Agent(name="weak", lm=None, config={"model": "openai/gpt-4o-mini", "backend": "litellm"})}
    assert estimate_seconds(RunConfig(), remote) is None
