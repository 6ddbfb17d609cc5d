"""Diagnostics of what a memory does to a solver: memory echo (grading.echo), the placebo comparison (report), and
retries that replay the turn before (what the turns metric hides)."""

from __future__ import annotations

from memcollab.grading.echo import echoed_phrases, echoes_memory
from memcollab.programs.solver import render_guidance
from memcollab.records import MemoryEntry, Trajectory, Turn, Verdict

PIZZA = "Marie ordered one chicken meal for $12, 5 packs of milk and some boxes of pizza. How many boxes?"
RULES = render_guidance(
    [
        MemoryEntry(
            when="the total cost adds a doctor's visit and a cat's visit",
            enforce="sum the two visits before the insurance",
            avoid="an arithmetic slip",
            category="money_and_shopping",
            error_type="arithmetic_slip",
        ).text,
        "check the units of every rate first",
    ]
)


def test_an_answer_that_works_a_rule_as_a_step_echoes_it():
    answer = "Step 5: the total cost adds a doctor's visit and a cat's visit. The doctor's visit costs $12."
    assert echoes_memory(RULES, PIZZA, answer)
    assert "a doctor s visit and" in echoed_phrases(RULES, PIZZA, answer)
    assert not echoes_memory(RULES, PIZZA, "Step 5: add the doctor's visit and the cat's visit."), "not copied"


def test_the_tasks_own_wording_and_short_overlaps_are_not_echoes():
    restating = "Marie ordered one chicken meal for $12, so the pizza costs the rest."
    assert not echoes_memory(RULES + "\n3. marie ordered one chicken meal", PIZZA, restating), "the task's words"
    assert not echoes_memory(RULES, PIZZA, "I check the units first."), "four shared words are common wording"
    assert not echoes_memory("", PIZZA, "anything at all"), "no memory, no echo"


def test_list_numbering_is_not_part_of_a_phrase():
    # with the numbering kept, "2 check the units of" would be a memory phrase this answer repeats
    assert not echoes_memory(RULES, PIZZA, "Step 2 check the units of the answer")
    assert echoes_memory(RULES, PIZZA, "Step 2: check the units of every rate.")


def test_every_turn_of_a_trajectory_is_read():
    wrong = Verdict(correct=False)
    trajectory = Trajectory(
        task_id="t",
        benchmark="gsm8k",
        agent="weak",
        turns=[
            Turn(reasoning="a first try", output="3", verdict=wrong),
            Turn(reasoning="r", output="check the units of every rate", verdict=wrong),
        ],
    )
    assert echoes_memory(RULES, PIZZA, trajectory.text)


def test_echo_table_splits_the_tasks_solved_without_memory_by_echo():
    import pandas as pd

    from memcollab.experiments.grid_config import GridConfig, expand_cells
    from memcollab.experiments.report import echo_table

    cfg = GridConfig(
        name="t",
        benchmarks=["gsm8k"],
        build_ids="1-2",
        cells=[{"target": "weak", "eval_ids": "1-5", "methods": ["self"]}],
    )
    none, self_ = expand_cells(cfg)
    plain = {"benchmark": "gsm8k", "target": "weak", "lm_error": False}
    solved_without = [True, True, True, False, True]
    with_memory = [False, True, False, True, True]
    echoed = [True, True, False, True, False]
    unanswered = [False, False, False, False, True]  # task 5: no answer with memory -> out of the table
    rows = pd.DataFrame(
        [
            {**plain, "cell": none.id, "kind": "none", "task_id": f"t{i}", "correct": c, "memory_echo": False}
            for i, c in enumerate(solved_without)
        ]
        + [
            {
                **plain,
                "cell": self_.id,
                "kind": "self",
                "task_id": f"t{i}",
                "correct": c,
                "memory_echo": e,
                "lm_error": u,
            }
            for i, (c, e, u) in enumerate(zip(with_memory, echoed, unanswered))
        ]
    )
    (line,) = echo_table(rows, [none, self_]).to_dict("records")
    assert (line["cell"], line["n"], line["echo"]) == (self_.id, 4, 0.75)
    # solved without memory and answered with it: t0 (echo, lost), t1 (echo, kept), t2 (plain, lost)
    assert (line["solved_echoing"], line["lost_echoing"], line["solved_plain"], line["lost_plain"]) == (2, 1, 1, 1)


def _outcome_rows(cells: dict, outcomes: dict[str, list[int]], unanswered: frozenset = frozenset()):
    """Per-task rows of the weak target on GSM8K: `outcomes[kind][i]` says whether task `t<i>` was solved in the cell
    of that method kind; `(kind, i)` in `unanswered` marks an LM error."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "cell": cells[kind].id,
                "benchmark": "gsm8k",
                "target": "weak",
                "kind": kind,
                "task_id": f"t{i}",
                "correct": bool(c),
                "lm_error": (kind, i) in unanswered,
            }
            for kind, results in outcomes.items()
            for i, c in enumerate(results)
        ]
    )


def test_placebo_table_pairs_each_memory_cell_with_its_targets_placebo():

    from memcollab.experiments.grid_config import GridConfig, expand_cells
    from memcollab.experiments.report import placebo_table

    cfg = GridConfig(
        name="t",
        benchmarks=["gsm8k"],
        build_ids="1-2",
        cells=[
            {"target": "weak", "eval_ids": "1-4", "methods": ["self"]},
            {"target": "weak", "eval_ids": "1-3", "methods": ["code-rules"]},
        ],
        methods={"code-rules": {"method": "placebo", "rules_from": "rules.jsonl"}},
    )
    cells = {c.method.kind: c for c in expand_cells(cfg)}
    rows = _outcome_rows(cells, {"none": [1, 1, 0, 0], "reflect": [0, 1, 0, 1], "placebo": [1, 1, 1]})
    (line,) = placebo_table(rows, list(cells.values()), samples=200).to_dict("records")
    # on the placebo's 3 tasks: self 1/3, placebo 3/3; t3 (self only) is left out
    assert (line["cell"], line["placebo"], line["n"]) == (cells["reflect"].id, cells["placebo"].id, 3)
    assert (line["accuracy"], line["placebo_accuracy"], line["only_placebo"], line["only_method"]) == (1 / 3, 1.0, 2, 0)


def _code_attempt(*outputs: str) -> Trajectory:
    wrong = Verdict(correct=False, feedback="AssertionError")
    return Trajectory(
        task_id="t", benchmark="humaneval", agent="weak", turns=[Turn(output=o, verdict=wrong) for o in outputs]
    )


def test_a_retry_that_replays_the_turn_before_is_counted():
    same = "def f(x):\n    return x\n"
    assert _code_attempt(same).retries_unchanged == 0, "one turn: no retry"
    assert _code_attempt(same, same + "\n", same).retries_unchanged == 2, "trailing whitespace is the same code"
    assert _code_attempt(same, "def f(x):\n    return -x\n", same).retries_unchanged == 0, "each vs the turn before"


def test_the_cell_line_gives_the_share_of_retries_left_unchanged():
    import pandas as pd

    from memcollab.experiments.report import _effort

    rows = pd.DataFrame(
        {
            "turns": [1, 3, 3, 2],  # 0 + 2 + 2 + 1 = 5 retries
            "retries_unchanged": [0, 2, 1, 0],
            "correct": [True, False, False, True],
            "first_turn_correct": [True, False, False, False],
            "tokens": [1, 1, 1, 1],
            "latency_s": [0.0] * 4,
            "format_error": [False] * 4,
            "memories": [0] * 4,
            "memory_echo": [False] * 4,
        }
    )
    assert _effort(rows)["retry_unchanged"] == 3 / 5
    assert pd.isna(_effort(rows.assign(turns=1, retries_unchanged=0))["retry_unchanged"]), "no retry: no share"


def test_overlap_table_counts_the_tasks_two_memories_both_lose():

    from memcollab.experiments.grid_config import GridConfig, expand_cells
    from memcollab.experiments.report import overlap_table

    cfg = GridConfig(
        name="t",
        benchmarks=["gsm8k"],
        build_ids="1-2",
        cells=[{"target": "weak", "eval_ids": "1-6", "methods": ["self", "memcollab"]}],
    )
    cells = {c.method.kind: c for c in expand_cells(cfg)}
    outcomes = {"none": [1, 1, 1, 1, 0, 0], "reflect": [0, 0, 1, 1, 0, 1], "memcollab": [0, 1, 0, 1, 0, 0]}
    rows = _outcome_rows(cells, outcomes, unanswered={("memcollab", 5)})  # no answer: out of the pair's tasks
    (line,) = overlap_table(rows, list(cells.values())).to_dict("records")
    assert {line["method"], line["other_method"]} == {"self", "memcollab"}
    # t0-t4 answered by both: agree on t0, t3, t4; of t0-t3 (solved without memory) self loses t0, t1,
    # memcollab loses t0, t2; both lose t0; by chance 2 x 2 / 4 = 1
    assert (line["n"], line["agree"], line["solved_none"]) == (5, 3, 4)
    assert (line["lost"], line["other_lost"], line["lost_both"], line["lost_both_if_independent"]) == (2, 2, 1, 1.0)


def test_audit_counts_empty_and_restating_rules():
    from memcollab.experiments.memory_audit import audit_rules, memory_table
    from memcollab.records import Provenance, Task

    task = Task(id="t1", benchmark="gsm8k", split="train", kind="math", prompt=PIZZA)

    def rule(when: str, enforce: str, avoid: str, error_type: str, source: str = "t1") -> MemoryEntry:
        return MemoryEntry(
            when=when,
            enforce=enforce,
            avoid=avoid,
            category="money_and_shopping",
            error_type=error_type,
            provenance=Provenance(task_ids=[source]),
        )

    entries = [
        rule("several quantities are combined", "write each partial total", "dropping a group", "missed_case"),
        rule("a price is given", "The total price.", "the total price", "arithmetic_slip"),  # says nothing
        rule("5 packs of milk and some boxes of pizza are ordered", "count boxes", "guessing", "arithmetic_slip"),
        rule("a rate is given", "check units", "mixing units", "arithmetic_slip", source="elsewhere"),
    ]
    audit = audit_rules(entries, [task])
    assert (audit["rules"], audit["empty"], audit["sourced"], audit["restating"]) == (4, 1, 3, 1)
    assert (audit["top_error_type"], audit["top_error_share"], audit["categories"]) == ("arithmetic_slip", 0.75, 1)
    table = memory_table([{"memory": "m", "kind": "reflect", "source": "weak"} | audit])
    assert table.loc[0, "restating"] == 1 and list(table.columns)[:4] == ["memory", "kind", "source", "rules"]
