"""Single-trajectory reflection, for the self-memory baseline (one agent, no contrast)."""

import dspy

from memcollab.signatures.distill import Constraint


class Reflect(dspy.Signature):
    """Reflect on one solution of a task and its grade, and write reusable rules.

    If the solution was graded wrong, name the step that went wrong and write a rule that
    would have prevented it; if it was graded correct, write the rule that made it work.
    Write one or two abstract normative constraints of the form "when <situation>, enforce
    <step>, avoid <failure pattern>" that transfer to other tasks of the same category: no
    numbers, names or literal values of this task. Tag each with an allowed error type.
    """

    task: str = dspy.InputField(desc="the task statement")
    category: str = dspy.InputField(desc="the task's category")
    solution: str = dspy.InputField(desc="the solution")
    verdict: str = dspy.InputField(desc="the grade of the solution and why")
    error_types: str = dspy.InputField(desc="allowed error types, one per line: name: description")
    constraints: list[Constraint] = dspy.OutputField(desc="one or two constraints")
