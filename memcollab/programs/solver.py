"""The solver: math in one call, code in up to T turns with sandbox feedback; every turn graded.

Turn 1 of a code task is the single-turn protocol (the whole function in one block, the prompt's
imports kept by the grader); later turns replay the previous attempt and add the test feedback,
so multi-turn can only add to single-turn accuracy.
"""

from __future__ import annotations

from typing import Any

import dspy

from memcollab.grading import grade
from memcollab.grading.code_extract import prompt_is_code
from memcollab.programs.calls import CallResult, call
from memcollab.records import Task, Trajectory, Turn, Verdict
from memcollab.signatures import CompleteFunction, SolveMath, WriteFunction


def render_guidance(texts: list[str]) -> str:
    """Memory entries as the short numbered rule list the solver signatures place before the problem."""
    return "\n".join(f"{i}. {text}" for i, text in enumerate(texts, 1))


class Solver(dspy.Module):
    """Solves a task with the LM in context and grades each turn; returns the whole trajectory."""

    def __init__(self, max_turns: int = 3) -> None:
        super().__init__()
        self.max_turns = max_turns
        self.solve_math = dspy.ChainOfThought(SolveMath)
        self.complete_function = dspy.ChainOfThought(CompleteFunction)  # HumanEval: the prompt is a stub
        self.write_function = dspy.ChainOfThought(WriteFunction)  # MBPP: the prompt is prose + a test

    def forward(
        self, task: Task, guidance: str = "", agent: str = "", demos: list[dspy.Example] | None = None
    ) -> dspy.Prediction:
        """`demos`: worked examples for this call only (`Predict`'s per-call `demos=` override), so a memory method
        that retrieves examples per task never changes the shared predictors' demos under other threads."""
        trajectory = Trajectory(task_id=task.id, benchmark=task.benchmark, agent=agent, category=task.category)
        extra: dict[str, Any] = {"demos": list(demos)} if demos else {}
        if task.kind == "math":
            self._math_turn(task, guidance, trajectory, extra)
        else:
            self._code_turns(task, guidance, trajectory, extra)
        return dspy.Prediction(trajectory=trajectory)

    def _math_turn(self, task: Task, guidance: str, trajectory: Trajectory, extra: dict[str, Any]) -> None:
        result = call(self.solve_math, problem=task.prompt, guidance=guidance, **extra)
        answer = str(result.outputs.get("answer", "") or "").strip()
        # Boxed, the grader reads the answer field verbatim (a bare "\frac{3}{4}" would read as its last number).
        verdict = grade(task, f"\\boxed{{{answer}}}") if answer else grade(task, result.raw)
        if verdict.error_type == "no_answer" and answer:
            verdict = grade(task, result.raw)  # an unusable answer field: grade the whole reply, as a person would
        self._record(trajectory, result, answer or result.raw, verdict)

    def _code_turns(self, task: Task, guidance: str, trajectory: Trajectory, extra: dict[str, Any]) -> None:
        program = self.complete_function if prompt_is_code(task.prompt) else self.write_function
        previous, feedback = "", ""
        for _ in range(self.max_turns):
            result = call(
                program,
                task=task.prompt,
                guidance=guidance,
                previous_attempt=previous,
                feedback=feedback,
                entry_point=task.entry_point,
                **extra,
            )
            text = str(result.outputs.get("code", "") or "") or result.raw
            verdict = grade(task, text)
            self._record(trajectory, result, verdict.extracted or text, verdict)
            if verdict.correct:
                return
            previous, feedback = verdict.extracted or text, verdict.feedback or verdict.error_type

    @staticmethod
    def _record(trajectory: Trajectory, result: CallResult, output: str, verdict: Verdict) -> None:
        trajectory.turns.append(Turn(reasoning=result.reasoning or result.raw, output=output, verdict=verdict))
        trajectory.tokens += result.tokens
        trajectory.latency_s += result.latency_s
        if result.parse_error:
            trajectory.error = result.parse_error
