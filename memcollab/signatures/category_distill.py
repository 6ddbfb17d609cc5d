"""Category-level contrastive distillation: several contrast pairs of one category at once, their shared rules.

One pair invites a rule that restates its task; a few pairs of the same category leave only what they
have in common, which is the kind of invariant the paper's memory is meant to hold.
"""

import dspy

from memcollab.signatures.distill import Constraint


class CategoryDistill(dspy.Signature):
    """Several tasks of one category, each with a successful and a failed solution: write the rules they share.

    The solutions come from different solvers. For each task find the decisive difference between its two
    solutions, then write one to three abstract normative constraints of the form "when <situation>, enforce
    <step>, avoid <failure pattern>" that hold across these tasks: invariants of the category, not hints for
    one task. Do not mention the solvers or any task's numbers, names or literal values. Tag each with the
    single best error type from the allowed list.
    """

    category: str = dspy.InputField(desc="the category the tasks share")
    contrasts: str = dspy.InputField(
        desc="numbered tasks, each with a successful solution, a failed solution and why it failed"
    )
    error_types: str = dspy.InputField(desc="allowed error types, one per line: name: description")
    constraints: list[Constraint] = dspy.OutputField(desc="one to three constraints the tasks share")
