"""Placebo memory: k rules from another domain's memory, in the same format and the same place in the prompt.

A control, not a method to use. When memory lowers a small model's accuracy, two causes look alike: the
rules' content misleads it, or any three rules (a longer prompt, an instruction-shaped block) distract
it. A placebo cell shows the target k constraints of the same writer and format that cannot apply to
the task (a code memory's rules on math word problems, say): its difference to `none` is the cost of the
rule block itself, and a memory's difference to the placebo is what its content adds or takes away.

The rules are read from a memory JSONL (`rules_from`: what `memcollab grid` writes to
`memories/<id>/memory.jsonl`, or `memcollab memory export`). Each task gets its own k of them, drawn by
a generator seeded with the task id, so a rerun shows every task the same rules. Nothing is built and no
LM is called.
"""

from __future__ import annotations

import random
from pathlib import Path

from memcollab.errors import ConfigError, MemoryStoreError
from memcollab.memory.store import read_memory_jsonl
from memcollab.programs.methods.base import BuildInputs, Guidance, MemoryMethod, MethodContext, MethodSpec
from memcollab.programs.solver import render_guidance
from memcollab.records import MemoryEntry, Task, stable_hash


def read_rules(path: Path) -> list[MemoryEntry]:
    """The entries of a memory JSONL, sorted by id (the draw must not depend on the file's order)."""
    try:
        entries = read_memory_jsonl(path)
    except MemoryStoreError as exc:
        raise ConfigError(f"placebo rules_from: {exc}") from None
    if not entries:
        raise ConfigError(f"placebo rules_from: {path} holds no memory entries")
    return sorted(entries, key=lambda e: e.id or e.content_key())


def placebo_rules(spec: MethodSpec) -> list[MemoryEntry]:
    """The rule set a placebo spec names (a one-line ConfigError when it names none or an unreadable one)."""
    if not spec.rules_from:
        raise ConfigError(f"{spec.name}: a placebo needs rules_from: <a memory JSONL of another domain>")
    return read_rules(Path(spec.rules_from))


class PlaceboMemory(MemoryMethod):
    """k rules per task drawn from a fixed, off-domain rule set; no category, no similarity, no LM."""

    build_fields = ("rules_from",)

    def __init__(self, spec: MethodSpec, ctx: MethodContext, workdir: Path | None = None) -> None:
        super().__init__(spec, ctx, workdir)
        self._rules: list[MemoryEntry] = []

    def build(self, inputs: BuildInputs) -> dict[str, float]:
        self._rules = placebo_rules(self.spec)
        return {"size": len(self._rules)}

    def guidance(self, task: Task) -> Guidance:
        if not self._rules:
            raise RuntimeError(f"{self.spec.name}: build() before guidance()")
        draw = random.Random(stable_hash(["placebo", task.id])).sample(self._rules, min(self.spec.k, len(self._rules)))
        return Guidance(render_guidance([e.text for e in draw]), tuple(e.id for e in draw))

    def entries(self) -> list[MemoryEntry]:
        return list(self._rules)

    def content_hash(self) -> str:
        return rules_hash(self._rules)


def rules_hash(rules: list[MemoryEntry]) -> str:
    """The identity of a rule set: its entries without their dates (a file without dates gets today's on reading)."""
    return stable_hash([e.model_dump(exclude={"created_at"}) for e in rules])
