"""Contrastive distillation: from a success and a failure on one task, abstract reusable constraints."""

import dspy
from pydantic import BaseModel, Field


class Constraint(BaseModel):
    """One normative constraint as the distiller writes it."""

    when: str = Field(description="the general situation in which the rule applies, no task-specific numbers or names")
    enforce: str = Field(description="the step or invariant that the successful solution respected")
    avoid: str = Field(description="the failure pattern that the failed solution fell into")
    error_type: str = Field(description="one error type from the allowed list")


class ContrastDistill(dspy.Signature):
    """Compare a successful and a failed solution of the same task and write reusable rules.

    The two solutions come from different solvers. Find the decisive difference: the step,
    check or invariant the successful solution respected and the failed one violated. Write
    one to three abstract, solver-agnostic normative constraints of the form "when <situation>,
    enforce <step>, avoid <failure pattern>". Each must transfer to other tasks of the same
    category: do not mention the solvers, this task's numbers, names or literal values. Tag each
    with the single best error type from the allowed list.
    """

    task: str = dspy.InputField(desc="the task statement")
    category: str = dspy.InputField(desc="the task's category")
    successful_solution: str = dspy.InputField(desc="a solution that was graded correct")
    failed_solution: str = dspy.InputField(desc="a solution that was graded wrong")
    failure_verdict: str = dspy.InputField(desc="why the failed solution was graded wrong")
    error_types: str = dspy.InputField(desc="allowed error types, one per line: name: description")
    constraints: list[Constraint] = dspy.OutputField(desc="one to three constraints")
