"""Reflection memory: constraints from single trajectories, no contrast (the `self` and `naive` baselines).

`self` reflects on the target agent's own trajectories; `naive` is the same memory built from another
agent's, given to the target (the paper's naive transfer, which hurts). Both store the constraints like
MemCollab does and retrieve them through the same category gate, so a comparison with `memcollab`
changes only how the constraints were made. The reflecting model is the distiller by default (the
same writer as MemCollab's), or the source agent itself (`reflector: source`).
"""

from __future__ import annotations

from memcollab.errors import ConfigError
from memcollab.memory.results import record_key
from memcollab.programs.distiller import Reflector
from memcollab.programs.methods.base import METHODS_VERSION, BuildInputs, StoreMethod
from memcollab.programs.pipeline import PROGRAM_VERSION, Agent
from memcollab.records import MemoryEntry, Task, Trajectory


class ReflectionMemory(StoreMethod):
    """One reflection per first-attempt trajectory of the source agents, stored with its category."""

    build_fields = ("reflector",)

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        by_id = {task.id: task for task in inputs.tasks}
        own = [t for t in inputs.trajectories if t.attempt == 0 and t.task_id in by_id]
        self.ctx.map(lambda t: self.ctx.classify(by_id[t.task_id]), own, "classifying build tasks")
        program = Reflector(self.ctx.taxonomy)
        results = self.ctx.map(
            lambda t: self._reflect(program, t, by_id[t.task_id], inputs.agents),
            own,
            f"reflecting on {len(own)} trajectories",
        )
        entries = [entry for found, _ in results for entry in found]
        added, merged = self.add(entries)
        return {
            "trajectories": len(own),
            "proposed": sum(n for _, n in results),
            "added": added,
            "merged": merged,
            "size": len(self.store),
        }

    def _reflector(self, trajectory: Trajectory, agents: list[Agent]) -> Agent:
        if self.spec.reflector == "source":
            return next(a for a in agents if a.name == trajectory.agent)
        if self.ctx.distiller is None:
            raise ConfigError("reflection memory needs a distiller agent (or reflector: source)")
        return self.ctx.distiller

    def _reflect(
        self, program: Reflector, trajectory: Trajectory, task: Task, agents: list[Agent]
    ) -> tuple[list[MemoryEntry], int]:
        """Constraints from one trajectory (cached by key: a resumed build makes no LM call)."""
        agent = self._reflector(trajectory, agents)
        category = self.ctx.classify(task)
        key = record_key(
            "reflect",
            task.id,
            agent.config,
            f"{PROGRAM_VERSION}/{METHODS_VERSION}",
            {"category": category, "trajectory": trajectory.model_dump()},
        )
        cached = self.ctx.results.get(key)
        if cached is None:
            with agent.context():
                prediction = program(trajectory=trajectory, task=task, category=category)
            cached = {"entries": [e.model_dump() for e in prediction.entries], "proposed": prediction.proposed}
            self.ctx.results.put(key, "reflect", task.id, agent.name, cached)
        return [MemoryEntry(**e) for e in cached["entries"]], int(cached["proposed"])
