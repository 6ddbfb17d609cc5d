"""The contrast-distiller: turns (task, tau+, tau-) into abstract, agent-agnostic memory entries."""

from __future__ import annotations

import json
import re
from functools import cache

import dspy
import yaml
from pydantic import BaseModel

from memcollab.errors import ConfigError
from memcollab.paths import config_dir
from memcollab.programs.calls import call
from memcollab.records import ContrastPair, MemoryEntry, Provenance, Task, Trajectory, stable_hash
from memcollab.signatures import ContrastDistill, Reflect
from memcollab.signatures.distill import Constraint
from memcollab.taxonomy import Taxonomy

MAX_SOLUTION_CHARS = 3000
_RULE = re.compile(
    r"when\s+(?P<when>.+?),?\s+enforce:?\s+(?P<enforce>.+?)[;,.]?\s+avoid:?\s+(?P<avoid>.+)", re.I | re.S
)


def render_trajectory(trajectory: Trajectory) -> str:
    """A trajectory as the distiller reads it: each turn's reasoning, output and verdict, truncated."""
    parts = []
    for i, turn in enumerate(trajectory.turns, 1):
        head = f"Turn {i}" if len(trajectory.turns) > 1 else "Solution"
        verdict = "correct" if turn.verdict.correct else f"wrong ({turn.verdict.error_type})"
        parts.append(f"{head}:\n{turn.reasoning.strip()}\nOutput: {turn.output.strip()}\nGraded: {verdict}")
    return "\n\n".join(parts)[-MAX_SOLUTION_CHARS:]


def render_verdict(trajectory: Trajectory) -> str:
    verdict = trajectory.verdict
    return f"{verdict.error_type or 'wrong'}: {verdict.feedback}".strip()[:800]


def parse_lenient(raw: str) -> list[Constraint]:
    """Constraints from free text when the adapter could not parse them: JSON objects, then 'when/enforce/avoid' lines."""
    found: list[Constraint] = []
    for blob in re.findall(r"\{[^{}]*\}", raw or ""):
        try:
            found.append(Constraint(**{k: str(v) for k, v in json.loads(blob).items()}))
        except Exception:
            continue
    if found:
        return found
    for match in _RULE.finditer(raw or ""):
        found.append(
            Constraint(
                when=match["when"], enforce=match["enforce"], avoid=match["avoid"].split("\n")[0], error_type="other"
            )
        )
    return found


_LEAD = re.compile(r"^\s*(when|enforce|avoid)\b[:,]?\s*", re.I)
_TEMPLATE_PHRASES = tuple(
    field.description.lower()[:40] for field in Constraint.model_fields.values() if field.description
)


_PAIR_REFERENCE = re.compile(
    r"\b(successful|failed|failing|correct|wrong|incorrect) (solution|attempt|trajectory)\b|τ|\btau\b"
)


def clean_field(text: str) -> str:
    """Drop repeated lead words ('When when ...', 'enforce: enforce ...') and trailing punctuation."""
    previous, text = None, text.strip()
    while previous != text:
        previous, text = text, _LEAD.sub("", text).strip()
    return text.rstrip(".;,")


def task_names(prompt: str) -> set[str]:
    """Capitalised words that are not sentence-initial: the names and places of this particular task."""
    words = re.findall(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]{2,})\b", prompt)
    return set(words)


def is_transferable(constraint: Constraint, task: Task, agent_names: list[str]) -> bool:
    """Reject empty rules, rules naming an agent, copies of the field descriptions, and rules that quote
    this task's specific numbers or names (they cannot transfer to other tasks)."""
    fields = [clean_field(constraint.when), clean_field(constraint.enforce), clean_field(constraint.avoid)]
    if not all(fields):
        return False
    text = " ".join(fields)
    lowered = text.lower()
    if any(name and name.lower() in lowered for name in agent_names):
        return False
    if any(phrase in lowered for phrase in _TEMPLATE_PHRASES):
        return False
    if _PAIR_REFERENCE.search(lowered):  # describes the two trajectories, not the task
        return False
    if task_names(task.prompt) & set(re.findall(r"\b[A-Z][a-z]{2,}\b", text)):
        return False
    task_numbers = {n for n in re.findall(r"\d+(?:\.\d+)?", task.prompt) if len(n.replace(".", "")) >= 2}
    return not any(n in task_numbers for n in re.findall(r"\d+(?:\.\d+)?", text))


def to_entries(
    constraints: list[Constraint],
    task: Task,
    category: str,
    taxonomy: Taxonomy,
    provenance: Provenance,
    agent_names: list[str],
    made_at: str | None = None,
) -> list[MemoryEntry]:
    """The transferable constraints as entries, dated `made_at` (when their LM call was made) if given."""
    dated = {"created_at": made_at} if made_at else {}
    entries = []
    for constraint in constraints:
        if not is_transferable(constraint, task, agent_names):
            continue
        entry = MemoryEntry(
            when=clean_field(constraint.when),
            enforce=clean_field(constraint.enforce),
            avoid=clean_field(constraint.avoid),
            category=category,
            error_type=taxonomy.normalize_error_type(constraint.error_type),
            domain=taxonomy.domain,
            provenance=provenance,
            **dated,
        )
        entries.append(entry.model_copy(update={"id": entry.content_key()}))
    return entries


class DistillExample(BaseModel):
    """A worked contrast and the constraints a good distiller writes for it, shown as a DSPy demo."""

    task: str
    category: str
    successful_solution: str
    failed_solution: str
    failure_verdict: str
    reasoning: str
    constraints: list[Constraint]


@cache
def load_examples(domain: str) -> tuple[DistillExample, ...]:
    """The worked examples of a domain (`configs/distill_examples/<domain>.yaml`); none if the file is absent."""
    path = config_dir() / "distill_examples" / f"{domain}.yaml"
    if not path.is_file():
        return ()
    try:
        return tuple(DistillExample(**item) for item in yaml.safe_load(path.read_text()) or [])
    except Exception as exc:  # yaml or validation error -> one line
        raise ConfigError(f"invalid distiller examples {path}: {str(exc).splitlines()[0]}") from None


class Distiller(dspy.Module):
    """Contrasts a success and a failure of different agents on one task and writes constraints.

    With `use_examples`, the domain's worked examples precede every pair as demos, to show a small
    distiller what an abstract rule looks like (it tends to restate the task: "when the pizzas are
    sliced ..."). Off by default: on GSM8K with a 1.5B distiller they made rules look abstract but did
    not make the memory help (README, "Measured so far").
    """

    def __init__(self, taxonomy: Taxonomy, use_examples: bool = False) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.distill = dspy.ChainOfThought(ContrastDistill)
        examples = load_examples(taxonomy.domain) if use_examples else ()
        self.distill.predict.demos = [
            dspy.Example(**dict(example), error_types=taxonomy.render_error_types()) for example in examples
        ]
        #: Part of the cache key of a distillation: a different prompt must not reuse old outputs.
        self.version = stable_hash([example.model_dump() for example in examples]) if examples else ""

    def forward(self, pair: ContrastPair, task: Task, category: str) -> dspy.Prediction:
        result = call(
            self.distill,
            task=task.prompt,
            category=category,
            successful_solution=render_trajectory(pair.positive),
            failed_solution=render_trajectory(pair.negative),
            failure_verdict=render_verdict(pair.negative),
            error_types=self.taxonomy.render_error_types(),
        )
        constraints = list(result.outputs.get("constraints") or parse_lenient(result.raw))
        entries = self.entries_for(constraints, pair, task, category)
        return dspy.Prediction(
            constraints=constraints, entries=entries, proposed=len(constraints), tokens=result.tokens
        )

    def entries_for(
        self,
        constraints: list[Constraint],
        pair: ContrastPair,
        task: Task,
        category: str,
        made_at: str | None = None,
    ) -> list[MemoryEntry]:
        """The transferable constraints as memory entries; kept apart from the LM call so that a cached
        distillation is filtered by the current rules, not the ones in force when it was made."""
        provenance = Provenance(
            task_ids=[task.id], positive_agents=[pair.positive.agent], negative_agents=[pair.negative.agent]
        )
        agents = [pair.positive.agent, pair.negative.agent]
        return to_entries(constraints, task, category, self.taxonomy, provenance, agents, made_at)


class Reflector(dspy.Module):
    """Self-memory baseline: one agent reflects on its own single trajectory (no contrast)."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__()
        self.taxonomy = taxonomy
        self.reflect = dspy.ChainOfThought(Reflect)

    def forward(self, trajectory: Trajectory, task: Task, category: str) -> dspy.Prediction:
        verdict = "correct" if trajectory.correct else f"wrong: {render_verdict(trajectory)}"
        result = call(
            self.reflect,
            task=task.prompt,
            category=category,
            solution=render_trajectory(trajectory),
            verdict=verdict,
            error_types=self.taxonomy.render_error_types(),
        )
        constraints = result.outputs.get("constraints") or parse_lenient(result.raw)
        side = (
            {"positive_agents": [trajectory.agent]} if trajectory.correct else {"negative_agents": [trajectory.agent]}
        )
        provenance = Provenance(task_ids=[task.id], **side)
        entries = to_entries(list(constraints), task, category, self.taxonomy, provenance, [trajectory.agent])
        return dspy.Prediction(entries=entries, proposed=len(constraints), tokens=result.tokens)
