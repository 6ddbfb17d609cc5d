"""NaturalAdapter: what a small model receives, and how fields come back out of its free text.

The prompts are checked message by message (they must equal the plain prompts of the fidelity
benchmark); the data flow runs through DSPy's DummyLM with scripted raw replies.
"""

from __future__ import annotations

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from memcollab.lm.adapters import NaturalAdapter
from memcollab.programs.calls import call
from memcollab.programs.solver import Solver, render_guidance
from memcollab.records import Task
from memcollab.signatures import ClassifyTask, CompleteFunction, ContrastDistill, SolveMath, WriteFunction

MATH_INSTRUCTION = "Solve step by step. Put the final answer in \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, including the signature, "
    "in one ```python code block."
)
STUB = 'def double(x: int) -> int:\n    """Return twice x."""\n'


def cot(signature: type[dspy.Signature]) -> type[dspy.Signature]:
    return dspy.ChainOfThought(signature).predict.signature


def test_math_prompt_is_the_plain_prompt() -> None:
    messages = NaturalAdapter().format(cot(SolveMath), [], {"problem": "What is 2+3?", "guidance": ""})
    assert messages == [{"role": "user", "content": f"What is 2+3?\n\n{MATH_INSTRUCTION}"}]


def test_guidance_is_a_numbered_list_before_the_problem() -> None:
    guidance = render_guidance(["When adding, enforce: carry; avoid: dropping digits.", "Check units."])
    [message] = NaturalAdapter().format(cot(SolveMath), [], {"problem": "What is 2+3?", "guidance": guidance})
    content = message["content"]
    assert content.index("1. When adding") < content.index("2. Check units.") < content.index("What is 2+3?")
    assert content.endswith(MATH_INSTRUCTION)


def test_code_turn_one_is_single_turn_and_later_turns_replay_the_attempt() -> None:
    adapter = NaturalAdapter()
    first = {"task": STUB, "guidance": "", "previous_attempt": "", "feedback": "", "entry_point": "double"}
    assert adapter.format(cot(CompleteFunction), [], first) == [
        {"role": "user", "content": f"{CODE_INSTRUCTION}\n\n{STUB.strip()}"}
    ]
    later = {**first, "previous_attempt": "def double(x):\n    return x", "feedback": "AssertionError: 2 != 4"}
    user, assistant, follow_up = adapter.format(cot(CompleteFunction), [], later)
    assert user["content"] == f"{CODE_INSTRUCTION}\n\n{STUB.strip()}"
    assert assistant == {"role": "assistant", "content": "```python\ndef double(x):\n    return x\n```"}
    assert follow_up["role"] == "user" and "AssertionError: 2 != 4" in follow_up["content"]
    assert "double" not in follow_up["content"].replace("AssertionError", "")  # the entry point stays hidden


def test_demos_render_as_natural_turns() -> None:
    demo = dspy.Example(problem="1+1?", guidance="", reasoning="One and one make two.", answer="2")
    messages = NaturalAdapter().format(cot(SolveMath), [demo], {"problem": "2+3?", "guidance": ""})
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "One and one make two.\n\nThe final answer is $\\boxed{2}$."
    assert "[[" not in str(messages) and "{" not in messages[0]["content"].replace("\\boxed{}", "")


def test_parse_takes_fields_from_free_text() -> None:
    adapter = NaturalAdapter()
    reply = "2 + 3 = 5, so the answer is 5.\n\n\\boxed{5}"
    assert adapter.parse(cot(SolveMath), reply) == {"reasoning": reply, "answer": "5"}
    with pytest.raises(dspy.utils.exceptions.AdapterParseError):
        adapter.parse(cot(SolveMath), "I cannot solve this.")


def test_code_parse_prefers_the_block_that_defines_the_entry_point() -> None:
    reply = (
        "A helper first:\n```python\ndef helper(x):\n    return x\n```\n"
        "And the function:\n```python\ndef double(x):\n    return 2 * x\n```\nTry it:\n```python\nprint(double(2))\n```"
    )
    lm = DummyLM([{"reply": reply}], adapter=NaturalAdapter())
    inputs = {"task": STUB, "guidance": "", "previous_attempt": "", "feedback": "", "entry_point": "double"}
    with dspy.context(lm=lm, adapter=NaturalAdapter()):
        result = call(dspy.ChainOfThought(CompleteFunction), **inputs)
    assert result.outputs["code"] == "def double(x):\n    return 2 * x\n"
    assert not result.parse_error


def test_a_reply_without_an_answer_is_a_format_error_and_still_graded() -> None:
    task = Task(id="t/1", benchmark="gsm8k", split="test", kind="math", prompt="2+3?", answer="5")
    lm = DummyLM([{"reply": "Let me think."}], adapter=NaturalAdapter())
    with dspy.context(lm=lm, adapter=NaturalAdapter()):
        trajectory = Solver()(task=task).trajectory
    assert trajectory.error and not trajectory.correct
    assert trajectory.turns[0].reasoning == "Let me think."


def test_solver_grades_math_and_code_through_the_adapter() -> None:
    math = Task(id="t/2", benchmark="math500", split="test", kind="math", prompt="3/4?", answer="\\frac{3}{4}")
    code = Task(
        id="t/3",
        benchmark="humaneval",
        split="test",
        kind="code",
        prompt=STUB,
        entry_point="double",
        tests="assert double(2) == 4\n",
    )
    lm = DummyLM(
        [
            {"reply": "It is \\boxed{\\frac{3}{4}}"},
            {"reply": "```python\ndef double(x: int) -> int:\n    return x\n```"},
            {"reply": "```python\ndef double(x: int) -> int:\n    return 2 * x\n```"},
        ],
        adapter=NaturalAdapter(),
    )
    with dspy.context(lm=lm, adapter=NaturalAdapter()):
        assert Solver()(task=math).trajectory.correct  # graded as 3/4, not as its last number
        trajectory = Solver(max_turns=3)(task=code).trajectory
    assert [t.verdict.correct for t in trajectory.turns] == [False, True]
    assert trajectory.turns[1].output.strip().endswith("return 2 * x")


def test_mbpp_prose_prompts_use_the_write_instruction() -> None:
    inputs = {
        "task": "Write a function to double x.\nYour code should pass this test:\nassert double(2) == 4",
        "guidance": "",
        "previous_attempt": "",
        "feedback": "",
        "entry_point": "double",
    }
    [message] = NaturalAdapter().format(cot(WriteFunction), [], inputs)
    assert message["content"].startswith("Write a Python function for the task below.")


def test_classifier_and_structured_outputs() -> None:
    adapter = NaturalAdapter()
    assert adapter.parse(ClassifyTask, "**Category:** rates_and_ratios.\nBecause ...")["category"] == "rates_and_ratios"
    assert not adapter.handles(ContrastDistill)  # a list of constraints: JSON, through the fallback adapter
    assert adapter.handles(cot(SolveMath)) and adapter.handles(ClassifyTask)
