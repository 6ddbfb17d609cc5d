"""Category-level distillation (`memcollab-category`): the distiller sees 3-5 contrast pairs of one category
at once and writes the invariants they share, instead of one pair's rules.

The pairs are MemCollab's (a success and a failure of two agents on one task); they are grouped by the
classifier's category and cut into balanced groups of at most `group_size`. A category with fewer than
`min_group` pairs writes nothing: a single pair is plain MemCollab, not this method. A rule is kept only
if it quotes no number or name of any task of its group (the pipeline's transferability filter, applied
to each task).
"""

from __future__ import annotations

import math
from collections import defaultdict

import dspy

from memcollab.errors import ConfigError
from memcollab.memory.results import record_key
from memcollab.programs.calls import call
from memcollab.programs.distiller import is_transferable, parse_lenient, render_trajectory, render_verdict, to_entries
from memcollab.programs.methods.base import METHODS_VERSION, BuildInputs, StoreMethod
from memcollab.programs.pairs import build_pairs
from memcollab.programs.pipeline import PROGRAM_VERSION
from memcollab.records import ContrastPair, MemoryEntry, Provenance, Task
from memcollab.signatures.category_distill import CategoryDistill
from memcollab.signatures.distill import Constraint
from memcollab.taxonomy import Taxonomy

#: Characters of each solution shown per pair: several pairs share one prompt of a small model.
SOLUTION_CHARS = 1200


def render_contrasts(pairs: list[ContrastPair], tasks: dict[str, Task]) -> str:
    """The group's pairs as one numbered text: task, successful solution, failed solution, why it failed."""
    blocks = []
    for i, pair in enumerate(pairs, 1):
        blocks.append(
            f"Task {i}:\n{tasks[pair.task_id].prompt.strip()}\n\n"
            f"Successful solution:\n{render_trajectory(pair.positive)[-SOLUTION_CHARS:]}\n\n"
            f"Failed solution:\n{render_trajectory(pair.negative)[-SOLUTION_CHARS:]}\n\n"
            f"Why it failed: {render_verdict(pair.negative)}"
        )
    return "\n\n---\n\n".join(blocks)


def balanced_groups(items: list, size: int) -> list[list]:
    """`items` cut into the fewest groups of at most `size`, their sizes differing by at most one."""
    if not items:
        return []
    count = math.ceil(len(items) / size)
    base, extra = divmod(len(items), count)
    groups, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        groups.append(items[start:end])
        start = end
    return groups


class CategoryDistiller(dspy.Module):
    """Several contrast pairs of one category -> the constraints they share."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.distill = dspy.ChainOfThought(CategoryDistill)

    def forward(self, pairs: list[ContrastPair], tasks: dict[str, Task], category: str) -> dspy.Prediction:
        result = call(
            self.distill,
            category=category,
            contrasts=render_contrasts(pairs, tasks),
            error_types=self.taxonomy.render_error_types(),
        )
        constraints = list(result.outputs.get("constraints") or parse_lenient(result.raw))
        return dspy.Prediction(constraints=constraints)

    def entries_for(
        self,
        constraints: list[Constraint],
        pairs: list[ContrastPair],
        tasks: dict[str, Task],
        category: str,
        made_at: str | None = None,
    ) -> list[MemoryEntry]:
        """The constraints that transfer from every task of the group, as entries with the group's provenance."""
        agents = sorted({p.positive.agent for p in pairs} | {p.negative.agent for p in pairs})
        group = [tasks[p.task_id] for p in pairs]
        kept = [c for c in constraints if all(is_transferable(c, task, agents) for task in group)]
        provenance = Provenance(
            task_ids=[p.task_id for p in pairs],
            positive_agents=list(dict.fromkeys(p.positive.agent for p in pairs)),
            negative_agents=list(dict.fromkeys(p.negative.agent for p in pairs)),
        )
        return to_entries(kept, group[0], category, self.taxonomy, provenance, agents, made_at)


class CategoryMemory(StoreMethod):
    """Contrast pairs grouped by category, one distillation per group."""

    build_fields = ("group_size", "min_group")

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        distiller = self.ctx.distiller
        if distiller is None:
            raise ConfigError(f"{self.spec.name}: needs a distiller agent")
        tasks = {task.id: task for task in inputs.tasks}
        pairs, _ = build_pairs([t for t in inputs.trajectories if t.task_id in tasks])
        categories = self.ctx.map(lambda p: self.ctx.classify(tasks[p.task_id]), pairs, "classifying paired tasks")
        by_category: dict[str, list[ContrastPair]] = defaultdict(list)
        for pair, category in zip(pairs, categories):
            by_category[category].append(pair)
        groups = [
            (category, group)
            for category, members in sorted(by_category.items())
            if len(members) >= self.spec.min_group
            for group in balanced_groups(members, self.spec.group_size)
        ]
        program = CategoryDistiller(self.ctx.taxonomy)
        results = self.ctx.map(
            lambda g: self._distill(program, g[1], tasks, g[0]), groups, f"distilling {len(groups)} category groups"
        )
        entries = [entry for found, _ in results for entry in found]
        added, merged = self.add(entries)
        return {
            "pairs": len(pairs),
            "groups": len(groups),
            "pairs_grouped": sum(len(g) for _, g in groups),
            "proposed": sum(n for _, n in results),
            "added": added,
            "merged": merged,
            "size": len(self.store),
        }

    def _distill(
        self, program: CategoryDistiller, pairs: list[ContrastPair], tasks: dict[str, Task], category: str
    ) -> tuple[list[MemoryEntry], int]:
        """One group's constraints (the raw ones cached by key, re-filtered by the current rules)."""
        distiller = self.ctx.distiller
        assert distiller is not None
        ids = ",".join(p.task_id for p in pairs)
        key = record_key(
            "category-distill",
            ids,
            distiller.config,
            f"{PROGRAM_VERSION}/{METHODS_VERSION}",
            {"category": category, "pairs": [p.model_dump() for p in pairs]},
        )
        cached = self.ctx.results.get(key)
        if cached is None:
            with distiller.context():
                prediction = program(pairs=pairs, tasks=tasks, category=category)
            cached = {"constraints": [c.model_dump() for c in prediction.constraints]}
            self.ctx.results.put(key, "category-distill", ids, distiller.name, cached)
        constraints = [Constraint(**c) for c in cached["constraints"]]
        made_at = self.ctx.results.made_at(key)  # a resumed build dates its entries as the first one did
        return program.entries_for(constraints, pairs, tasks, category, made_at), len(constraints)
