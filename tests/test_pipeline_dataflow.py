"""Data flow of the MemCollab pipeline with DSPy's DummyLM (scripted answers, no claims about accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dspy.utils.dummies import DummyLM

from memcollab.benchmarks import taxonomy_for
from memcollab.errors import OverlapError
from memcollab.experiments.runner import check_overlap
from memcollab.memory import MemoryStore, retrieve
from memcollab.memory.results import ResultStore
from memcollab.programs.pairs import build_pairs
from memcollab.programs.pipeline import Agent, MemCollab
from memcollab.records import MemoryEntry, Provenance, Task, Trajectory, Turn, Verdict

TAXONOMY = taxonomy_for("gsm8k")


def math_task(i: int, answer: str = "42") -> Task:
    return Task(
        id=f"gsm8k/train/{i}",
        benchmark="gsm8k",
        split="train",
        kind="math",
        prompt=f"Problem number {i}: Tom buys apples at a shop. How much does he pay?",
        answer=answer,
    )


def agent(name: str, answers: dict) -> Agent:
    return Agent(name=name, lm=DummyLM(answers), config={"name": name})


def entry(category: str, when: str, enforce: str = "check the units", avoid: str = "skipping steps") -> MemoryEntry:
    e = MemoryEntry(
        when=when, enforce=enforce, avoid=avoid, category=category, error_type="arithmetic_slip", domain="math"
    )
    return e.model_copy(update={"id": e.content_key()})


@pytest.fixture()
def stores(tmp_path):
    store = MemoryStore(tmp_path / "memory.sqlite")
    results = ResultStore(tmp_path / "results.sqlite")
    yield store, results
    store.close()
    results.close()


def test_solver_prompt_has_exactly_topk_of_predicted_category(stores):
    store, results = stores
    shopping = [
        entry("money_and_shopping", w)
        for w in (
            "a problem involves buying apples at a shop with a price per item",
            "a discount is applied to a total price",
            "change is given back after paying with a bill",
            "wages are paid per hour worked",
            "a budget is split among several purchases",
        )
    ]
    other = [
        entry("rates_and_time", w) for w in ("a train travels at constant speed", "work is done at a rate per hour")
    ]
    for e in shopping + other:
        store.add(e, dedup_threshold=None)
    task = math_task(1)
    classifier = agent("strong", {task.prompt: {"category": "money_and_shopping"}})
    solver_lm = agent("weak", {task.prompt: {"reasoning": "5 apples at 8 each plus 2", "answer": "42"}})
    pipeline = MemCollab(TAXONOMY, store, results, classifier_agent=classifier, k=3, workers=1, show_progress=False)

    trajectory = pipeline.solve(task, solver_lm)

    expected = retrieve(store, task.prompt, "money_and_shopping", k=3)
    assert trajectory.memory_ids == [e.id for e in expected]
    assert trajectory.category == "money_and_shopping"
    prompt = json.dumps(solver_lm.lm.history[-1]["messages"])
    for e in expected:
        assert e.text in prompt
    for e in [*(s for s in shopping if s.id not in trajectory.memory_ids), *other]:
        assert e.text not in prompt
    assert trajectory.correct


def test_pairs_only_from_success_and_failure_of_different_agents():
    def traj(task: str, agent_name: str, ok: bool, attempt: int = 0) -> Trajectory:
        return Trajectory(
            task_id=task,
            benchmark="gsm8k",
            agent=agent_name,
            attempt=attempt,
            turns=[Turn(output="x", verdict=Verdict(correct=ok))],
        )

    trajectories = [
        traj("t1", "weak", False),
        traj("t1", "strong", True),  # pair
        traj("t2", "weak", True),
        traj("t2", "strong", True),  # both correct
        traj("t3", "weak", False),
        traj("t3", "strong", False),  # both wrong
        traj("t4", "weak", True),
        traj("t4", "weak", False, attempt=1),  # same agent: no pair
    ]
    pairs, stats = build_pairs(trajectories)
    assert [(p.task_id, p.positive.agent, p.negative.agent) for p in pairs] == [("t1", "strong", "weak")]
    assert (stats.tasks, stats.paired, stats.both_correct, stats.both_wrong) == (4, 1, 1, 1)
    for pair in pairs:
        assert pair.positive.correct and not pair.negative.correct
        assert pair.positive.task_id == pair.negative.task_id


def constraint_json(when: str, error_type: str = "arithmetic") -> dict:
    return {
        "when": when,
        "enforce": "recompute each product before adding",
        "avoid": "adding before multiplying",
        "error_type": error_type,
    }


def one_pair_agents(task: Task, *rules: str) -> tuple[Agent, Agent]:
    """weak fails the task, strong solves, classifies it and distills the pair into `rules`."""
    weak = agent("weak", {task.prompt: {"reasoning": "guess", "answer": "7"}})
    strong = agent(
        "strong",
        {
            "successful_solution": {"reasoning": "c", "constraints": [constraint_json(r) for r in rules]},
            task.prompt: {"reasoning": "ok", "answer": "42", "category": "money_and_shopping"},
        },
    )
    return weak, strong


def test_build_distills_tags_and_stores_with_provenance_and_dedups(stores):
    store, results = stores
    tasks = [math_task(1), math_task(2), math_task(3)]
    weak = agent("weak", {t.prompt: {"reasoning": "guess", "answer": "7"} for t in tasks})
    strong = agent(
        "strong",
        {  # DummyLM answers with the first key found in the prompt: distiller key first
            "successful_solution": {
                "reasoning": "contrast",
                "constraints": [constraint_json("a total combines items bought at a unit price")],
            },
            **{t.prompt: {"reasoning": "5*8+2", "answer": "42", "category": "money_and_shopping"} for t in tasks},
        },
    )
    pipeline = MemCollab(
        TAXONOMY, store, results, distiller=strong, classifier_agent=strong, workers=1, show_progress=False
    )

    report = pipeline.build(tasks, [weak, strong])

    assert len(report.pairs) == 3 and report.accuracy_by_agent == {"weak": 0.0, "strong": 1.0}
    entries = store.entries()
    assert len(entries) == 1, "the same constraint from three pairs must be one entry"
    stored = entries[0]
    assert stored.support == 3 and (report.added, report.merged) == (1, 2)
    assert stored.category == "money_and_shopping"
    assert stored.error_type == "arithmetic_slip"  # normalised to the taxonomy
    assert sorted(stored.provenance.task_ids) == [t.id for t in tasks]
    assert stored.provenance.positive_agents == ["strong"] and stored.provenance.negative_agents == ["weak"]


def test_verification_keeps_only_constraints_that_fix_the_failed_task(stores):
    store, results = stores
    tasks = [math_task(1)]
    fixes, useless = "items are bought at a unit price", "a discount applies to a total"
    weak = agent(
        "weak",
        {  # first key found in the prompt wins: guided prompts before the bare task
            fixes: {"reasoning": "5*8+2", "answer": "42"},
            useless: {"reasoning": "guess", "answer": "7"},
            tasks[0].prompt: {"reasoning": "guess", "answer": "7"},
        },
    )
    strong = agent(
        "strong",
        {
            "successful_solution": {
                "reasoning": "c",
                "constraints": [constraint_json(fixes), constraint_json(useless)],
            },
            tasks[0].prompt: {"reasoning": "ok", "answer": "42", "category": "money_and_shopping"},
        },
    )

    report = MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False, verify=True).build(
        tasks, [weak, strong]
    )

    assert (report.proposed, report.added, report.unverified) == (2, 1, 1)
    assert [e.when for e in store.entries()] == [fixes]
    verify_prompts = [json.dumps(h["messages"]) for h in weak.lm.history[1:]]
    assert len(verify_prompts) == 2, "one verification solve per constraint, by the agent that failed"
    assert all((fixes in p) != (useless in p) for p in verify_prompts), "each check sees its constraint alone"


@pytest.mark.parametrize("verify_tasks", [0, 3])
def test_verification_rejects_a_constraint_that_breaks_a_solved_task(stores, verify_tasks):
    store, results = stores
    source, solved = math_task(1), math_task(2, answer="43")
    hint = "the shop sells apples"  # fixes its own task (answer 42) but misleads on the other one (43)
    weak = agent(
        "weak",
        {
            hint: {"reasoning": "r", "answer": "42"},
            source.prompt: {"reasoning": "guess", "answer": "7"},
            solved.prompt: {"reasoning": "r", "answer": "43"},
        },
    )
    strong = agent(
        "strong",
        {
            "successful_solution": {"reasoning": "c", "constraints": [constraint_json(hint)]},
            source.prompt: {"reasoning": "ok", "answer": "42", "category": "money_and_shopping"},
            solved.prompt: {"reasoning": "ok", "answer": "43", "category": "money_and_shopping"},
        },
    )

    report = MemCollab(
        TAXONOMY,
        store,
        results,
        distiller=strong,
        classifier_agent=strong,
        workers=1,
        show_progress=False,
        verify=True,
        verify_tasks=verify_tasks,
    ).build([source, solved], [weak, strong])

    assert report.proposed == 1 and len(report.pairs) == 1
    if verify_tasks:
        assert (report.added, report.unverified) == (0, 1), "it breaks a task the weak agent solved without it"
        assert any(
            hint in json.dumps(h["messages"]) and solved.prompt in json.dumps(h["messages"]) for h in weak.lm.history
        )
    else:
        assert (report.added, report.unverified) == (1, 0), "the source-task check alone keeps it"


def test_rebuild_resumes_from_persisted_results(stores):
    store, results = stores
    tasks = [math_task(1)]
    weak, strong = one_pair_agents(tasks[0], "items at a unit price")
    MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False).build(tasks, [weak, strong])
    calls = len(weak.lm.history) + len(strong.lm.history)
    MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False).build(tasks, [weak, strong])
    assert len(weak.lm.history) + len(strong.lm.history) == calls, "a rerun must not call the LMs again"


def test_distiller_drops_agent_names_and_task_numbers(stores):
    store, results = stores
    task = math_task(1).model_copy(update={"prompt": "Tom buys 17 apples at 3 dollars each. How much?"})
    weak = agent("weak", {task.prompt: {"reasoning": "guess", "answer": "7"}})
    strong = agent(
        "strong",
        {
            "successful_solution": {
                "reasoning": "c",
                "constraints": [
                    constraint_json("the weak model multiplies"),
                    constraint_json("buying 17 apples"),
                    constraint_json("a quantity is bought at a unit price"),
                ],
            },
            task.prompt: {"reasoning": "17*3", "answer": "51", "category": "money_and_shopping"},
        },
    )
    task = task.model_copy(update={"answer": "51"})
    report = MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False).build(
        [task], [weak, strong]
    )
    assert report.proposed == 3
    assert [e.when for e in store.entries()] == ["a quantity is bought at a unit price"]


def test_cached_distillation_is_filtered_by_the_current_rules(stores, monkeypatch):
    """The distiller's raw constraints are kept: a rebuild re-applies today's filter without an LM call."""
    import memcollab.programs.distiller as distiller_module

    store, results = stores
    tasks = [math_task(1)]
    weak, strong = one_pair_agents(tasks[0], "items are bought at a unit price", "a discount applies to a total")
    MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False).build(tasks, [weak, strong])
    assert len(store.entries()) == 2
    calls = len(strong.lm.history)

    original = distiller_module.is_transferable
    monkeypatch.setattr(
        distiller_module,
        "is_transferable",
        lambda c, task, names: original(c, task, names) and "discount" not in c.when,
    )
    fresh = MemoryStore(Path(store.path).parent / "rebuilt.sqlite")
    try:
        report = MemCollab(TAXONOMY, fresh, results, distiller=strong, workers=1, show_progress=False).build(
            tasks, [weak, strong]
        )
        assert len(strong.lm.history) == calls, "the rebuild must come from the result store"
        assert report.proposed == 2
        assert [e.when for e in fresh.entries()] == ["items are bought at a unit price"]
    finally:
        fresh.close()


def test_overlap_guard_refuses_leaked_tasks():
    tasks = [math_task(1), math_task(2)]
    with pytest.raises(OverlapError, match="allow-overlap"):
        check_overlap(tasks, {"gsm8k/train/2"}, allow=False)
    check_overlap(tasks, {"gsm8k/train/2"}, allow=True)
    check_overlap(tasks, {"gsm8k/train/9"}, allow=False)


def test_memory_entry_provenance_roundtrip(tmp_path):
    e = entry("rates_and_time", "speed is distance over time")
    e = e.model_copy(update={"provenance": Provenance(task_ids=["a"], positive_agents=["s"], negative_agents=["w"])})
    with MemoryStore(tmp_path / "m.sqlite") as store:
        store.add(e)
        store.export_jsonl(tmp_path / "m.jsonl")
    with MemoryStore(tmp_path / "n.sqlite") as other:
        other.import_jsonl(tmp_path / "m.jsonl")
        assert other.get(e.id) == store_get(tmp_path / "m.sqlite", e.id)


def store_get(path, id_):
    with MemoryStore(path) as store:
        return store.get(id_)


def test_transferability_filter_rejects_names_template_copies_and_cleans_lead_words():
    from memcollab.programs.distiller import clean_field, is_transferable
    from memcollab.signatures.distill import Constraint

    task = math_task(1).model_copy(
        update={"prompt": "Natalia sold clips to 48 friends in April and half as many in May."}
    )

    def ok(
        when: str, enforce: str = "compute derived quantities first", avoid: str = "summing only given ones"
    ) -> bool:
        return is_transferable(Constraint(when=when, enforce=enforce, avoid=avoid, error_type="x"), task, ["weak"])

    assert ok("a quantity is given relative to another ('half as many')")
    assert not ok("sales in April and May are combined")  # this task's names
    assert not ok("48 items are sold")  # this task's numbers
    assert not ok("a total is asked", enforce="the step or invariant that the successful solution respected")
    assert not ok("the weak solver adds")  # an agent's name
    assert not ok("the successful solution respects the order of steps")  # about the pair, not the task
    assert not ok("a total is asked", avoid="what the failed attempt did")
    assert ok("a total is asked", avoid="a wrong formula for the total")
    assert ok("it may be asked for a total")  # a lower-case modal verb is not the month
    assert clean_field("When when the total is asked.") == "the total is asked"
    assert clean_field("enforce: add both parts;") == "add both parts"


def test_support_counts_distinct_tasks_so_a_rerun_does_not_inflate_it(tmp_path):
    e = entry("rates_and_time", "speed is distance over time")
    first = e.model_copy(
        update={"provenance": Provenance(task_ids=["t1"], positive_agents=["s"], negative_agents=["w"])}
    )
    second = e.model_copy(
        update={"provenance": Provenance(task_ids=["t2"], positive_agents=["s"], negative_agents=["w"])}
    )
    with MemoryStore(tmp_path / "m.sqlite") as store:
        store.add(first)
        store.add(first)  # the same evidence again (a resumed build)
        assert store.get(e.id).support == 1
        store.add(second)
        assert store.get(e.id).support == 2 and store.get(e.id).provenance.task_ids == ["t1", "t2"]


@pytest.mark.parametrize("bench_name", ["gsm8k", "math500", "mbpp"])
def test_distiller_examples_are_valid_demos_of_their_taxonomy(bench_name):
    from memcollab.programs.distiller import Distiller, load_examples, to_entries

    taxonomy = taxonomy_for(bench_name)
    examples = load_examples(taxonomy.domain)
    assert examples, f"no worked examples for domain {taxonomy.domain}"
    for example in examples:
        task = Task(id="demo", benchmark=bench_name, split="train", kind="math", prompt=example.task)
        assert all(c.error_type in taxonomy.error_types for c in example.constraints)
        # The demos must pass the filter the real constraints face, or they teach what gets rejected.
        kept = to_entries(example.constraints, task, example.category, taxonomy, Provenance(), ["weak", "strong"])
        assert len(kept) == len(example.constraints), example.task
    assert len(Distiller(taxonomy, use_examples=True).distill.predict.demos) == len(examples)
    assert not Distiller(taxonomy).distill.predict.demos


def test_distillation_with_examples_shows_them_and_is_cached_apart(stores):
    store, results = stores
    tasks = [math_task(1)]
    weak, strong = one_pair_agents(tasks[0], "items at a unit price")
    MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False, distill_examples=False).build(
        tasks, [weak, strong]
    )
    plain_calls = len(strong.lm.history)
    assert "pencils" not in json.dumps(strong.lm.history[-1]["messages"])

    MemCollab(TAXONOMY, store, results, distiller=strong, workers=1, show_progress=False, distill_examples=True).build(
        tasks, [weak, strong]
    )
    assert len(strong.lm.history) == plain_calls + 1, "a distillation without examples must not be reused"
    assert "pencils" in json.dumps(strong.lm.history[-1]["messages"]), "the worked examples precede the pair"
