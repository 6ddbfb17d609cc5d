"""Dynamic Cheatsheet, cumulative (`cheatsheet`): one short list of strategies that the distiller curates
while walking the build tasks in order, given whole to the solver on every task.

After each build task the curator sees the current cheatsheet, the task and the source agents' graded
attempts, and rewrites the list (keep, add at most one entry, merge, drop task-specific ones). With
`curate_on: solved` (default) only tasks that some source agent solved are curated on: an attempt that
no one got right tells a small curator nothing reliable, and it halves the calls. The list is cut to
`max_items` short entries because the whole of it goes into every prompt of a small model.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import dspy

from memcollab.errors import ConfigError
from memcollab.memory.results import record_key
from memcollab.parallel import make_progress
from memcollab.programs.calls import call
from memcollab.programs.distiller import render_trajectory
from memcollab.programs.methods.base import METHODS_VERSION, BuildInputs, Guidance, MemoryMethod
from memcollab.programs.pipeline import PROGRAM_VERSION
from memcollab.programs.solver import render_guidance
from memcollab.records import Task, Trajectory, stable_hash
from memcollab.signatures.cheatsheet import CurateCheatsheet, list_items, numbered

#: Characters of each attempt the curator reads, and of each entry it may write.
ATTEMPT_CHARS = 1200
ENTRY_CHARS = 240


def render_attempts(attempts: list[Trajectory]) -> str:
    """Graded attempts without agent names (the cheatsheet must not learn who solved what)."""
    blocks = []
    for i, trajectory in enumerate(attempts, 1):
        grade = "correct" if trajectory.correct else f"wrong ({trajectory.verdict.error_type or 'wrong'})"
        blocks.append(f"Attempt {i}, graded {grade}:\n{render_trajectory(trajectory)[-ATTEMPT_CHARS:]}")
    return "\n\n".join(blocks)


def tidy(lines: list[str], limit: int) -> list[str]:
    """At most `limit` distinct, non-empty entries of at most ENTRY_CHARS characters, in order."""
    seen: dict[str, str] = {}
    for line in lines:
        text = " ".join(line.split())[:ENTRY_CHARS].strip()
        if text and text.lower() not in seen:
            seen[text.lower()] = text
    return list(seen.values())[:limit]


class Curator(dspy.Module):
    """One curation step: (cheatsheet, task, graded attempts) -> the updated cheatsheet."""

    def __init__(self) -> None:
        super().__init__()
        self.curate = dspy.Predict(CurateCheatsheet)

    def forward(self, sheet: list[str], task: Task, attempts: list[Trajectory], limit: int) -> dspy.Prediction:
        result = call(
            self.curate,
            cheatsheet=numbered(sheet),
            task=task.prompt,
            attempts=render_attempts(attempts),
            limit=f"At most {limit} entries.",
        )
        lines = tidy(list_items(str(result.outputs.get("updated") or result.raw)), limit)
        # An unreadable reply keeps the old sheet: one bad step must not wipe what was learned.
        return dspy.Prediction(sheet=lines or list(sheet), raw=result.raw, parsed=bool(lines))


class CheatsheetMemory(MemoryMethod):
    """The cumulative cheatsheet; every step cached by (task, previous sheet, attempts)."""

    build_fields = ("max_items", "curate_on")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sheet: list[str] = []
        self.history: list[dict[str, Any]] = []

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        curator_agent = self.ctx.distiller
        if curator_agent is None:
            raise ConfigError(f"{self.spec.name}: needs a distiller agent to curate the cheatsheet")
        program = Curator()
        self.sheet, self.history = [], []
        unparsed = 0
        steps = []
        for task in inputs.tasks:
            attempts = [t for t in inputs.trajectories if t.task_id == task.id]
            if attempts and (self.spec.curate_on != "solved" or any(t.correct for t in attempts)):
                steps.append((task, attempts))
        # one call at a time (each step reads the sheet the previous one wrote): an hour on a small machine
        with make_progress() if self.ctx.show_progress else contextlib.nullcontext(None) as progress:
            description = f"curating the cheatsheet ({curator_agent.name})"
            bar = progress.add_task(description, total=len(steps)) if progress is not None else None
            for task, attempts in steps:
                step = self._step(program, curator_agent, task, attempts)
                unparsed += int(not step["parsed"])
                self.sheet = step["sheet"]
                self.history.append({"task_id": task.id, "sheet": list(self.sheet)})
                if progress is not None and bar is not None:
                    progress.advance(bar)
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "cheatsheet_history.jsonl").write_text(
                "".join(json.dumps(step) + "\n" for step in self.history)
            )
        return {"steps": len(self.history), "unparsed": unparsed, "size": len(self.sheet)}

    def _step(self, program: Curator, agent: Any, task: Task, attempts: list[Trajectory]) -> dict[str, Any]:
        key = record_key(
            "cheatsheet",
            task.id,
            agent.config,
            f"{PROGRAM_VERSION}/{METHODS_VERSION}",
            {"sheet": self.sheet, "attempts": [t.model_dump() for t in attempts], "max_items": self.spec.max_items},
        )
        cached = self.ctx.results.get(key)
        if cached is None:
            with agent.context():
                prediction = program(sheet=self.sheet, task=task, attempts=attempts, limit=self.spec.max_items)
            cached = {"sheet": prediction.sheet, "parsed": prediction.parsed, "raw": prediction.raw[-4000:]}
            self.ctx.results.put(key, "cheatsheet", task.id, agent.name, cached)
        return cached

    def guidance(self, task: Task) -> Guidance:
        if not self.sheet:
            return Guidance()
        return Guidance(render_guidance(self.sheet), (f"cheatsheet:{stable_hash(self.sheet, 10)}",))

    def records(self) -> list[dict[str, Any]]:
        return [{"id": f"cheatsheet:{i}", "entry": line} for i, line in enumerate(self.sheet, 1)]
