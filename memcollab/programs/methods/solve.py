"""Solve a task with a method's guidance, behind the pipeline's one Solver, every result kept under its key.

Rules only: `MemCollab.attempt` itself, keyed by the hash of what the solver sees, so two methods that
show the same rules (or none: the `none` cell) share one LM result, and a resumed grid repeats nothing.
Worked examples: the same key (as `attempt` would make it), and the examples go in as DSPy demos for
this call only. A Solver whose `forward` takes `demos` passes them to its predictors (`Predict` takes a
per-call `demos=` override); otherwise a per-call copy of the solver carries them, so the shared
solver's demos are never changed under other threads.
"""

from __future__ import annotations

import inspect

from memcollab.memory.results import record_key
from memcollab.programs.methods.base import Guidance
from memcollab.programs.pipeline import PROGRAM_VERSION, Agent, MemCollab
from memcollab.programs.solver import Solver
from memcollab.records import Task, Trajectory


def solver_takes_demos(solver: Solver) -> bool:
    """Whether the solver's `forward` has a `demos` parameter (read from the class: DSPy warns on `.forward`)."""
    return "demos" in inspect.signature(type(solver).forward).parameters


def run_solver(solver: Solver, task: Task, guidance: Guidance, agent: str) -> Trajectory:
    """One uncached solve with the guidance's rules and demos (the LM comes from the caller's context)."""
    if not guidance.demos:
        return solver(task=task, guidance=guidance.text, agent=agent).trajectory
    demos = list(guidance.demos)
    if solver_takes_demos(solver):
        return solver(task=task, guidance=guidance.text, agent=agent, demos=demos).trajectory
    copy = solver.deepcopy()
    for _, predictor in copy.named_predictors():
        predictor.demos = demos
    return copy(task=task, guidance=guidance.text, agent=agent).trajectory


def solve_with(pipeline: MemCollab, task: Task, agent: Agent, guidance: Guidance) -> Trajectory:
    """The agent's trajectory on `task` with `guidance` (cached: the key hashes the prompt's guidance)."""
    ids, category = list(guidance.memory_ids), guidance.category or task.category
    if not guidance.demos:
        trajectory = pipeline.attempt(
            task, agent, guidance=guidance.text, memory_ids=ids, category=category, memory_hash=guidance.key
        )
    else:
        settings = {**pipeline.settings, "attempt": 0, "temperature": None, "guided": bool(guidance.text)}
        key = record_key("trajectory", task.id, agent.config, PROGRAM_VERSION, settings, guidance.key)
        cached = pipeline.results.get(key)
        if cached is not None:
            trajectory = Trajectory(**cached)
        else:
            with agent.context():
                trajectory = run_solver(pipeline.solver, task, guidance, agent.name)
            trajectory.category, trajectory.memory_ids = category, ids
            pipeline.results.put(key, "trajectory", task.id, agent.name, trajectory.model_dump())
    # A cached result may come from another method that showed the same prompt: the ids are this method's.
    return trajectory.model_copy(update={"memory_ids": ids, "category": category})
