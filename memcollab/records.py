"""The typed records that flow through MemCollab.

benchmark -> Task -> (agents solve) Trajectory -> ContrastPair -> MemoryEntry.
Every record is a pydantic model, so it serialises to JSON unchanged for
SQLite rows, JSONL files and MLflow artefacts.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

TaskKind = Literal["math", "code"]


def utc_now() -> str:
    """ISO-8601 UTC timestamp, the one format used in every record."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stable_hash(payload: object, length: int = 16) -> str:
    """Short sha256 of a JSON-serialisable payload (sorted keys), for keys and ids."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class Task(BaseModel):
    """One benchmark item in a uniform shape.

    Math tasks carry the final `answer`; code tasks carry `tests` (Python code
    that raises on failure), the `entry_point` the candidate must define, and
    optional `setup` code run before the tests.
    """

    id: str
    benchmark: str
    split: str
    kind: TaskKind
    prompt: str
    answer: str = ""
    solution: str = ""
    tests: str = ""
    entry_point: str = ""
    setup: str = ""
    category: str = ""
    level: int | None = None


class Verdict(BaseModel):
    """A grader's judgement of one output: correct or not, why, and what to show the model."""

    correct: bool
    error_type: str = ""
    feedback: str = ""
    extracted: str = ""


class Turn(BaseModel):
    """One solver call: its reasoning, its output (answer or code) and the grade of that output."""

    reasoning: str = ""
    output: str = ""
    verdict: Verdict


class Trajectory(BaseModel):
    """An agent's whole attempt at a task (one turn for math, up to T for code)."""

    task_id: str
    benchmark: str
    agent: str
    attempt: int = 0
    category: str = ""
    turns: list[Turn] = Field(default_factory=list)
    tokens: int = 0
    latency_s: float = 0.0
    memory_ids: list[str] = Field(default_factory=list)
    error: str = ""

    @property
    def verdict(self) -> Verdict:
        """Verdict of the last turn (an empty trajectory counts as a failure)."""
        if not self.turns:
            return Verdict(correct=False, error_type="no_output", feedback=self.error)
        return self.turns[-1].verdict

    @property
    def correct(self) -> bool:
        return self.verdict.correct

    @property
    def final(self) -> str:
        return self.turns[-1].output if self.turns else ""

    @property
    def n_turns(self) -> int:
        return len(self.turns)

    @property
    def retries_unchanged(self) -> int:
        """Retries (turns after the first) whose output is the turn before's, character for character: feedback
        the agent could not use (a greedy decoder often replays its answer), which "turns" alone hides."""
        return sum(after.output.strip() == before.output.strip() for before, after in zip(self.turns, self.turns[1:]))

    @property
    def text(self) -> str:
        """Everything the agent wrote, turn by turn: its reasoning and its output."""
        return "\n".join(f"{turn.reasoning}\n{turn.output}" for turn in self.turns)


class ContrastPair(BaseModel):
    """A success (tau+) and a failure (tau-) of two different agents on the same task."""

    task_id: str
    positive: Trajectory
    negative: Trajectory


class Provenance(BaseModel):
    """Where a memory came from: the tasks and the agents on each side of the contrast."""

    task_ids: list[str] = Field(default_factory=list)
    positive_agents: list[str] = Field(default_factory=list)
    negative_agents: list[str] = Field(default_factory=list)


class MemoryEntry(BaseModel):
    """One abstract normative constraint: when <situation>, enforce <step>, avoid <failure>."""

    id: str = ""
    when: str
    enforce: str
    avoid: str
    category: str
    error_type: str
    domain: str = ""
    support: int = 1
    provenance: Provenance = Field(default_factory=Provenance)
    created_at: str = Field(default_factory=utc_now)

    @property
    def text(self) -> str:
        """The rendering injected into a solver's prompt."""
        return f"When {self.when.rstrip('.')}, enforce: {self.enforce.rstrip('.')}; avoid: {self.avoid.rstrip('.')}."

    def content_key(self) -> str:
        """Id derived from the content, so the same constraint always gets the same id."""
        return "m-" + stable_hash([self.category, self.error_type, self.when, self.enforce, self.avoid], 12)
