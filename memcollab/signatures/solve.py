"""Solver signatures for math and code, with optional memory guidance and execution feedback."""

import dspy


class SolveMath(dspy.Signature):
    """Solve the math problem. Think step by step, check each step, and give the final answer.

    If guidance is given, it lists rules distilled from earlier successes and failures on
    problems of the same kind: follow each rule that applies to this problem and ignore the
    rest. Put only the final answer (a number or a simplified expression, no units, no words)
    in the `answer` field.
    """

    problem: str = dspy.InputField(desc="the problem statement")
    guidance: str = dspy.InputField(desc="rules to follow when they apply; may be empty")
    answer: str = dspy.OutputField(desc="the final answer only, e.g. 42 or \\frac{3}{4}")


class SolveCode(dspy.Signature):
    """Write a correct, self-contained Python solution to the programming task.

    Define the function with exactly the required name and signature, import what you use,
    and do not print or read input. If guidance is given, it lists rules distilled from earlier
    successes and failures on tasks of the same kind: follow each rule that applies. If a
    previous attempt and its test feedback are given, find the cause of the failure and
    return a corrected full solution, not a patch.
    """

    task: str = dspy.InputField(desc="the task, with the required function name and an example test")
    guidance: str = dspy.InputField(desc="rules to follow when they apply; may be empty")
    previous_attempt: str = dspy.InputField(desc="your previous code; empty on the first turn")
    feedback: str = dspy.InputField(desc="test feedback for the previous attempt; empty on the first turn")
    code: str = dspy.OutputField(desc="the complete Python solution in a ```python block")
