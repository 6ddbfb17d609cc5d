"""The solver: math in one chain-of-thought call, code in up to T turns with sandbox feedback."""

from __future__ import annotations

import dspy

from memcollab.grading.grade import grade
from memcollab.programs.calls import CallResult, call
from memcollab.records import Task, Trajectory, Turn, Verdict
from memcollab.signatures import SolveCode, SolveMath


def render_guidance(texts: list[str]) -> str:
    """Memory entries as the numbered rule list the solver signatures describe."""
    return "\n".join(f"{i}. {text}" for i, text in enumerate(texts, 1))


class Solver(dspy.Module):
    """Solves a task with the LM in context and grades each turn; returns the whole trajectory."""

    def __init__(self, max_turns: int = 3) -> None:
        super().__init__()
        self.max_turns = max_turns
        self.solve_math = dspy.ChainOfThought(SolveMath)
        self.solve_code = dspy.ChainOfThought(SolveCode)

    def forward(self, task: Task, guidance: str = "", agent: str = "") -> dspy.Prediction:
        trajectory = Trajectory(task_id=task.id, benchmark=task.benchmark, agent=agent, category=task.category)
        if task.kind == "math":
            self._math_turn(task, guidance, trajectory)
        else:
            self._code_turns(task, guidance, trajectory)
        return dspy.Prediction(trajectory=trajectory)

    def _math_turn(self, task: Task, guidance: str, trajectory: Trajectory) -> None:
        result = call(self.solve_math, problem=task.prompt, guidance=guidance)
        answer = str(result.outputs.get("answer", "") or "")
        verdict = grade(task, answer)
        if verdict.error_type == "no_answer":
            # The answer field was empty or unparsable: grade the full text, as a human grader would.
            verdict = grade(task, result.raw or answer)
        self._record(trajectory, result, answer or result.raw, verdict)

    def _code_turns(self, task: Task, guidance: str, trajectory: Trajectory) -> None:
        previous, feedback = "", ""
        for _ in range(self.max_turns):
            result = call(
                self.solve_code, task=task.prompt, guidance=guidance, previous_attempt=previous, feedback=feedback
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
