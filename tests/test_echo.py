"""Memory echo (grading.echo): an answer that repeats a phrase of its memory, not of its task."""

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
