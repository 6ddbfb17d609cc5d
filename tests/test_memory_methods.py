"""Memory methods with DSPy's DummyLM: what each builds, what it puts in the solver's prompt, and that a
rebuild or a second solve repeats no LM call (scripted answers: data flow only, no claims about accuracy)."""

from __future__ import annotations

import json

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from pydantic import ValidationError

from memcollab.benchmarks import taxonomy_for
from memcollab.errors import ConfigError
from memcollab.memory import MemoryStore, retrieve
from memcollab.memory.results import ResultStore
from memcollab.programs.methods import (
    PRESETS,
    BuildInputs,
    Guidance,
    MethodContext,
    MethodSpec,
    make_method,
    solve_with,
)
from memcollab.programs.methods.category import balanced_groups
from memcollab.programs.methods.solve import run_solver
from memcollab.programs.pipeline import Agent, MemCollab
from memcollab.programs.solver import Solver
from memcollab.records import MemoryEntry, Task

TAXONOMY = taxonomy_for("gsm8k")
REFLECT = "[[ ## verdict ## ]]"  # the Reflect signature's input header (ContrastDistill has `failure_verdict`)
CONTRAST = "successful_solution"
GROUP = "[[ ## contrasts ## ]]"
CURATE = "[[ ## attempts ## ]]"


def task(i: int, topic: str = "apples at a shop", answer: str = "42") -> Task:
    return Task(
        id=f"gsm8k/train/{i}",
        benchmark="gsm8k",
        split="train",
        kind="math",
        prompt=f"Problem {i}: Tom buys {topic}. How much does he pay?",
        answer=answer,
    )


def rule(when: str, error_type: str = "arithmetic") -> dict:
    return {
        "when": when,
        "enforce": "recompute each product before adding",
        "avoid": "adding before multiplying",
        "error_type": error_type,
    }


def make_agents(
    tasks: list[Task],
    strong_extra: dict | None = None,
    category: str = "money_and_shopping",
    weak_extra: dict | None = None,
) -> tuple[Agent, Agent]:
    """weak answers 7 (wrong), strong answers 42 (right) and classifies every task as `category`."""
    weak = {**(weak_extra or {}), **{t.prompt: {"reasoning": "guess", "answer": "7"} for t in tasks}}
    strong = {
        **(strong_extra or {}),
        **{t.prompt: {"reasoning": "5*8+2", "answer": "42", "category": category} for t in tasks},
    }
    return (
        Agent(name="weak", lm=DummyLM(weak), config={"name": "weak"}),
        Agent(name="strong", lm=DummyLM(strong), config={"name": "strong"}),
    )


@pytest.fixture()
def results(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    yield store
    store.close()


def context(results: ResultStore, strong: Agent) -> MethodContext:
    return MethodContext(TAXONOMY, results, distiller=strong, classifier=strong, workers=1)


def inputs(ctx: MethodContext, tasks: list[Task], agents: list[Agent], samples: int = 0) -> BuildInputs:
    trajectories = ctx.pipeline().collect(tasks, agents, samples=samples)
    return BuildInputs(tasks=tasks, agents=agents, trajectories=trajectories, samples=samples)


def prompt_of(agent: Agent, index: int = -1) -> str:
    return json.dumps(agent.lm.history[index]["messages"])


def test_none_is_exactly_the_pipelines_no_memory_result(results):
    tasks = [task(1)]
    weak, strong = make_agents(tasks)
    ctx = context(results, strong)
    none = make_method(PRESETS["none"], ctx)
    assert none.guidance(tasks[0]) == Guidance() and none.build(inputs(ctx, tasks, [weak])) == {}
    calls = len(weak.lm.history)
    trajectory = solve_with(ctx.shared, tasks[0], weak, none.guidance(tasks[0]))
    assert len(weak.lm.history) == calls, "the build already solved this task without memory: same key, no call"
    plain = MemCollab(TAXONOMY, MemoryStore(":memory:"), results, k=3, show_progress=False).evaluate(
        tasks, weak, use_memory=False
    )[0]
    assert trajectory.model_dump() == plain.model_dump()


def test_self_memory_reflects_on_the_agents_own_trajectories_and_gates_by_category(results):
    tasks, new = [task(1), task(2)], task(9, "pears at a market")
    weak, strong = make_agents(
        [*tasks, new], {REFLECT: {"reasoning": "r", "constraints": [rule("a price is paid per item")]}}
    )
    ctx = context(results, strong)
    method = make_method(PRESETS["self"].model_copy(update={"k": 1}), ctx)
    report = method.build(inputs(ctx, tasks, [weak]))
    assert report["trajectories"] == 2 and report["proposed"] == 2 and report["size"] == 1
    (entry,) = method.entries()
    assert entry.provenance.negative_agents == ["weak"] and sorted(entry.provenance.task_ids) == [t.id for t in tasks]
    assert entry.category == "money_and_shopping"
    reflect_prompts = [json.dumps(h["messages"]) for h in strong.lm.history if REFLECT in json.dumps(h["messages"])]
    assert len(reflect_prompts) == 2 and all("guess" in p for p in reflect_prompts), "one reflection per own attempt"
    assert all("5*8+2" not in p for p in reflect_prompts), "no contrast: the other agent's solution is not shown"

    guidance = method.guidance(new)
    assert (
        guidance.memory_ids == (entry.id,) and entry.text in guidance.text and guidance.category == "money_and_shopping"
    )

    calls = len(strong.lm.history)
    rebuilt = make_method(PRESETS["self"], ctx)
    rebuilt.build(inputs(ctx, tasks, [weak]))
    assert len(strong.lm.history) == calls, "a rebuild replays every reflection from the result store"
    assert rebuilt.content_hash() == method.content_hash()


def test_memcollab_method_is_the_pipelines_build_and_retrieval(results, tmp_path):
    tasks, new = [task(1), task(2), task(3)], task(7)
    weak, strong = make_agents(
        [*tasks, new], {CONTRAST: {"reasoning": "c", "constraints": [rule("items are bought at a unit price")]}}
    )
    ctx = context(results, strong)
    method = make_method(PRESETS["memcollab"], ctx, tmp_path / "memcollab")
    report = method.build(inputs(ctx, tasks, [weak, strong]))
    assert report["pairs"] == 3 and report["size"] == 1 and (tmp_path / "memcollab" / "memory.sqlite").is_file()

    reference = MemoryStore(":memory:")
    MemCollab(TAXONOMY, reference, results, distiller=strong, show_progress=False).build(tasks, [weak, strong])
    assert [e.text for e in method.entries()] == [e.text for e in reference.entries()]
    guidance = method.guidance(new)
    pipeline_guidance = MemCollab(
        TAXONOMY, reference, results, classifier_agent=strong, show_progress=False
    ).guidance_for(new)
    assert (guidance.text, list(guidance.memory_ids), guidance.category) == pipeline_guidance

    with pytest.raises(ConfigError, match="two source agents"):
        make_method(PRESETS["memcollab"], ctx).build(inputs(ctx, tasks, [weak]))


def test_a_built_memory_with_a_store_url_is_a_schema_of_its_own_rebuilt_from_empty(results, tmp_path, postgres_url):
    """A grid with store_url: each memory's store is a schema of the database (no file), emptied on every build, so
    a rebuild from cached results holds what the first build did and nothing left over."""
    import functools

    import psycopg

    from memcollab.memory.backends import schema_name, store_target

    tasks = [task(1), task(2), task(3)]
    weak, strong = make_agents(tasks, {CONTRAST: {"reasoning": "c", "constraints": [rule("items have a unit price")]}})
    ctx = context(results, strong)
    ctx.store_target = functools.partial(store_target, postgres_url, tmp_path / "run")
    workdir = tmp_path / "run" / "memories" / "m1"
    builds = []
    for leftover in (True, False):
        method = make_method(PRESETS["memcollab"], ctx, workdir)
        method.build(inputs(ctx, tasks, [weak, strong]))
        builds.append([(e.id, e.support) for e in method.entries()])
        if leftover:  # what a killed build could leave behind
            method.store.add(MemoryEntry(when="stale", enforce="left over", avoid="x", category="c", error_type="e"))
        method.close()
    assert builds[0] == builds[1] and len(builds[0]) == 1 and not (workdir / "memory.sqlite").exists()
    with psycopg.connect(postgres_url) as conn:
        count = conn.execute(f'SELECT COUNT(*) FROM "{schema_name("run", "memory_m1")}".memories').fetchone()[0]
    assert count == 1


def _entry(category: str, when: str, error_type: str) -> MemoryEntry:
    e = MemoryEntry(
        when=when,
        enforce="check the units",
        avoid="skipping steps",
        category=category,
        error_type=error_type,
        domain="math",
    )
    return e.model_copy(update={"id": e.content_key()})


def test_gates_and_k_are_views_of_one_built_memory(results):
    new = task(5)
    _, strong = make_agents([new], category="money_and_shopping")
    ctx = context(results, strong)
    method = make_method(PRESETS["memcollab"], ctx)
    shopping = [
        _entry("money_and_shopping", when, "arithmetic_slip")
        for when in (
            "a price is paid per item bought",
            "a discount lowers a total",
            "change is given back after paying",
            "a budget is split among purchases",
        )
    ]
    rates = [
        _entry("rates_and_time", "Tom buys apples at a shop at a rate", "arithmetic_slip"),
        _entry("percentages_and_ratios", "apples at a shop are discounted", "misread_question"),
    ]
    method.add(shopping + rates)

    gated = method.guidance(new)
    assert len(gated.memory_ids) == 3 and set(gated.memory_ids) <= {e.id for e in shopping}
    assert gated.memory_ids == tuple(e.id for e in retrieve(method.store, new.prompt, "money_and_shopping", k=3))
    one = method.variant(method.spec.model_copy(update={"name": "memcollab-k1", "k": 1})).guidance(new)
    assert one.memory_ids == gated.memory_ids[:1]
    open_gate = method.variant(PRESETS["memcollab-nogate"]).guidance(new)
    assert rates[0].id in open_gate.memory_ids, "without the gate the most similar memory of any category wins"
    assert open_gate.category == ""

    merged_view = method.variant(PRESETS["memcollab-merged"].model_copy(update={"k": 10}))
    merged_view.prepare([new])
    clusters = merged_view.merged_categories()
    assert clusters["money_and_shopping"] == clusters["rates_and_time"] != clusters["percentages_and_ratios"]
    merged = merged_view.guidance(new)
    assert set(merged.memory_ids) == {e.id for e in shopping} | {rates[0].id}, "the cluster's categories pool"

    with pytest.raises(ValueError, match="builds another memory"):
        method.variant(PRESETS["memcollab-verified"])


def test_category_distiller_sees_several_pairs_of_one_category_at_once(results):
    shop = [task(i) for i in (1, 2, 3)]
    lone = task(4, "a train ticket")
    tasks = [*shop, lone]
    weak, strong = make_agents(
        shop,
        {
            GROUP: {
                "reasoning": "shared",
                "constraints": [rule("several items are bought at one price each"), rule("Tom pays for 42 apples")],
            }
        },
    )
    strong.lm.answers[lone.prompt] = {"reasoning": "ok", "answer": "42", "category": "rates_and_time"}
    weak.lm.answers[lone.prompt] = {"reasoning": "guess", "answer": "7"}
    ctx = context(results, strong)
    method = make_method(PRESETS["memcollab-category"].model_copy(update={"group_size": 3}), ctx)
    report = method.build(inputs(ctx, tasks, [weak, strong]))

    assert (report["pairs"], report["groups"], report["pairs_grouped"]) == (4, 1, 3), "a lone pair is not a group"
    group_prompts = [json.dumps(h["messages"]) for h in strong.lm.history if GROUP in json.dumps(h["messages"])]
    assert len(group_prompts) == 1 and all(t.prompt in group_prompts[0] for t in shop)
    assert lone.prompt not in group_prompts[0]
    (entry,) = method.entries()
    assert entry.when == "several items are bought at one price each", (
        "a rule quoting a task's name or number is dropped"
    )
    assert sorted(entry.provenance.task_ids) == sorted(t.id for t in shop)
    assert balanced_groups(list(range(7)), 4) == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(g) for g in balanced_groups(list(range(9)), 4)] == [3, 3, 3]


def test_examples_go_to_the_solver_as_demos_of_the_most_similar_solved_tasks(results):
    build = [task(1, "apples at a shop"), task(2, "a train ticket for a long trip"), task(3, "pears at a market")]
    weak, strong = make_agents(build)
    ctx = context(results, strong)
    method = make_method(PRESETS["examples"].model_copy(update={"k": 1}), ctx)
    report = method.build(inputs(ctx, build, [weak, strong]))
    assert report == {"tasks": 3, "examples": 3}
    assert {r["agent"] for r in method.records()} == {"strong"}, "only graded-correct attempts become examples"

    new = Task(
        id="gsm8k/test/1",
        benchmark="gsm8k",
        split="test",
        kind="math",
        answer="3",
        prompt="Mia needs a train ticket for a long trip. How much is it?",
    )
    weak.lm.answers[new.prompt] = {"reasoning": "the ticket", "answer": "3"}
    guidance = method.guidance(new)
    assert guidance.memory_ids == ("example:gsm8k/train/2",) and guidance.text == ""
    shared_demos = [list(p.demos) for _, p in ctx.shared.solver.named_predictors()]

    trajectory = solve_with(ctx.shared, new, weak, guidance)
    prompt = prompt_of(weak)
    assert build[1].prompt in prompt and "5*8+2" in prompt, "the similar task and its correct solution are a demo"
    assert build[0].prompt not in prompt
    assert trajectory.correct and trajectory.memory_ids == ["example:gsm8k/train/2"]
    assert [list(p.demos) for _, p in ctx.shared.solver.named_predictors()] == shared_demos, "shared solver untouched"
    calls = len(weak.lm.history)
    assert solve_with(ctx.shared, new, weak, guidance).model_dump() == trajectory.model_dump()
    assert len(weak.lm.history) == calls, "the demo-guided result is kept under its key"


class DemoSolver(Solver):
    """The Solver as it is once `forward` takes `demos` (the change proposed to the lead)."""

    seen: list = []

    def forward(self, task, guidance="", agent="", demos=None):
        DemoSolver.seen.append(demos)
        return super().forward(task, guidance, agent)


def test_demos_are_passed_per_call_when_the_solver_takes_them():
    new = task(1)
    demo = dspy.Example(problem="Q", guidance="", reasoning="r", answer="1").with_inputs("problem", "guidance")
    lm = DummyLM({new.prompt: {"reasoning": "ok", "answer": "42"}})
    with dspy.context(lm=lm):
        run_solver(DemoSolver(), new, Guidance(demos=(demo,)), "weak")
        run_solver(DemoSolver(), new, Guidance(text="1. a rule"), "weak")
    assert DemoSolver.seen == [[demo], None]


def test_cheatsheet_is_curated_in_task_order_and_given_whole(results):
    tasks = [task(1), task(2), task(3)]
    replies = [
        "1. write every partial total\n2. check units",
        "1. write every partial total\n2. check units\n3. re-read the question\n4. a fourth entry",
        "no list at all",
    ]
    # A curation prompt holds the task followed by the attempts field: one scripted sheet per step.
    curations = {f"{t.prompt}\n\n{CURATE}": {"updated": reply} for t, reply in zip(tasks, replies)}
    weak, strong = make_agents(tasks, curations)
    ctx = context(results, strong)
    method = make_method(PRESETS["cheatsheet"].model_copy(update={"max_items": 3, "curate_on": "all"}), ctx)
    report = method.build(inputs(ctx, tasks, [weak, strong]))

    assert report == {"steps": 3, "unparsed": 1, "size": 3}
    assert method.sheet == ["write every partial total", "check units", "re-read the question"], "cut to max_items"
    curations = [json.dumps(h["messages"]) for h in strong.lm.history if CURATE in json.dumps(h["messages"])]
    assert tasks[0].prompt in curations[0] and "check units" not in curations[0]
    assert "check units" in curations[1] and tasks[1].prompt in curations[1], "each step reads the previous sheet"
    assert "weak" not in curations[0] and "strong" not in curations[0], "attempts are shown without agent names"
    guidance = method.guidance(task(8))
    assert guidance.text == "1. write every partial total\n2. check units\n3. re-read the question"

    calls = len(strong.lm.history)
    again = make_method(method.spec, ctx)
    again.build(inputs(ctx, tasks, [weak, strong]))
    assert len(strong.lm.history) == calls and again.sheet == method.sheet, "every curation step is cached"


def test_every_preset_names_a_known_kind_and_source():
    for name, spec in PRESETS.items():
        assert spec.name == name
        assert spec.source in ("none", "self", "peer", "pair", "xfamily")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        MethodSpec(name="x", kind="memcollab", k=0)
