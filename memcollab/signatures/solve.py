"""Solver signatures for math and code: a one- or two-sentence instruction, memory as a short rule list.

The docstrings are the instructions every adapter sends. They are the plain prompts a person would
type (measured against exactly these prompts sent without DSPy: `benchmarks/solver_fidelity.py`);
the `Natural` annotations say how `memcollab.lm.adapters.NaturalAdapter` lays the fields out as a
chat and finds the answer or code in the reply, with the graders' own extractors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import dspy

from memcollab.grading.code_extract import extract_code
from memcollab.grading.math import extract_answer
from memcollab.lm.adapters import Natural

RULES_TITLE = "Rules learned from similar tasks (follow the ones that apply):"
CODE_REPLY = "Reply with the whole function, including the signature, in one ```python code block."
FEEDBACK_TURN = "The code failed the tests:\n{value}\n\nFix it. " + CODE_REPLY


def math_answer(text: str, _inputs: Mapping[str, Any]) -> str:
    """The final answer as the math grader finds it (last \\boxed{}, "answer is", the last number)."""
    return extract_answer(text)


def boxed(answer: str) -> str:
    return f"The final answer is $\\boxed{{{answer}}}$."


def python_code(text: str, inputs: Mapping[str, Any]) -> str:
    """The fenced block that defines the entry point (else the best code span), as the code grader finds it."""
    return extract_code(text, str(inputs.get("entry_point") or ""))


def python_block(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


Rules = Annotated[str, Natural("rules", title=RULES_TITLE)]
EntryPoint = Annotated[str, Natural("hidden")]
Code = Annotated[str, Natural("output", extract=python_code, render=python_block)]


class SolveMath(dspy.Signature):
    """Solve step by step. Put the final answer in \\boxed{}."""

    problem: Annotated[str, Natural("main")] = dspy.InputField(desc="the problem statement")
    guidance: Rules = dspy.InputField(desc="numbered rules to follow where they apply; may be empty")
    answer: Annotated[str, Natural("output", extract=math_answer, render=boxed)] = dspy.OutputField(
        desc="the final answer only, e.g. 42 or \\frac{3}{4}"
    )


class SolveCode(dspy.Signature):
    """Write the Python function."""  # each task kind gets its own one-line instruction below

    task: Annotated[str, Natural("main", instruction="before")] = dspy.InputField(
        desc="a function stub with its docstring, or a description with an example test"
    )
    guidance: Rules = dspy.InputField(desc="numbered rules to follow where they apply; may be empty")
    previous_attempt: Annotated[str, Natural("previous")] = dspy.InputField(
        desc="your previous code; empty on the first turn"
    )
    feedback: Annotated[str, Natural("feedback", template=FEEDBACK_TURN)] = dspy.InputField(
        desc="test feedback for the previous attempt; empty on the first turn"
    )
    entry_point: EntryPoint = dspy.InputField(desc="the name of the function to define")
    code: Code = dspy.OutputField(desc="the complete Python function in a ```python block")


#: HumanEval-style tasks (the prompt is a stub): the single-turn protocol, one line as a person types it.
CompleteFunction = SolveCode.with_instructions(f"Complete the following Python function. {CODE_REPLY}")
#: MBPP-style tasks (the prompt is prose plus one test).
WriteFunction = SolveCode.with_instructions(f"Write a Python function for the task below. {CODE_REPLY}")
