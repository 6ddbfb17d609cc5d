"""What a rule memory holds, counted from its entries instead of read off a few examples.

Two failure shapes of a small distiller show in the text alone: a rule whose `enforce` and `avoid` say the
same words (it tells the solver nothing, or contradicts itself), and a rule that restates a task it was
distilled from instead of abstracting it (it shares a phrase of `PHRASE_WORDS` consecutive words with that
task's prompt; the paper's constraints are meant to be task-agnostic). Both are lower bounds: a paraphrased
restatement passes. A rule whose source tasks are not among the build tasks (a placebo's, read from another
grid) is not judged on restating.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from memcollab.grading.echo import phrases, words
from memcollab.records import MemoryEntry, Task

MEMORY_COLUMNS = (
    "memory",
    "kind",
    "source",
    "rules",
    "empty",
    "sourced",
    "restating",
    "categories",
    "top_category",
    "top_error_type",
    "top_error_share",
    "mean_chars",
)


def is_empty(entry: MemoryEntry) -> bool:
    """`enforce` and `avoid` are the same words (case and punctuation aside)."""
    return words(entry.enforce) == words(entry.avoid)


def restates(entry: MemoryEntry, prompts: Mapping[str, str]) -> bool | None:
    """Does the rule share a phrase with the prompt of a task it came from? None: none of its tasks is known."""
    sources = [prompts[i] for i in entry.provenance.task_ids if i in prompts]
    if not sources:
        return None
    rule = phrases(f"{entry.when} {entry.enforce} {entry.avoid}")
    return any(rule & phrases(prompt) for prompt in sources)


def audit_rules(entries: list[MemoryEntry], tasks: Iterable[Task]) -> dict[str, Any]:
    """Counts of one memory's rules: empty ones, restating ones (of those whose source task is known), how they
    spread over categories and error types, and their mean length in characters."""
    prompts = {t.id: t.prompt for t in tasks}
    judged = [r for r in (restates(e, prompts) for e in entries) if r is not None]
    categories = Counter(e.category for e in entries)
    error_types = Counter(e.error_type for e in entries)
    top_error, top_count = error_types.most_common(1)[0] if entries else ("", 0)
    return {
        "rules": len(entries),
        "empty": sum(is_empty(e) for e in entries),
        "sourced": len(judged),
        "restating": sum(judged),
        "categories": len(categories),
        "top_category": categories.most_common(1)[0][0] if entries else "",
        "top_error_type": top_error,
        "top_error_share": round(top_count / len(entries), 3) if entries else 0.0,
        "mean_chars": round(sum(len(e.text) for e in entries) / len(entries), 1) if entries else 0.0,
    }


def memory_table(audits: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per audited memory (`memory`, `kind`, `source` and the counts of `audit_rules`)."""
    return pd.DataFrame([dict(a) for a in audits], columns=list(MEMORY_COLUMNS))
