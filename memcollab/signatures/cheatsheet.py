"""Dynamic Cheatsheet (cumulative) curation: one short list of strategies, rewritten after each build task.

Plain text in and out (`Natural` fields): the curator is a small local model, which keeps a numbered
list far better than a JSON object. The list is cut to a few entries by the program as well, because
the whole cheatsheet goes into every solver prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import dspy

from memcollab.lm.adapters import Natural

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(?P<text>.+?)\s*$")


def list_items(text: str) -> list[str]:
    """The items of the lists in a reply ("1. ...", "2) ...", "- ..."), without their markers; prose is not an item."""
    items = []
    for line in (text or "").splitlines():
        match = _ITEM.match(line.replace("**", ""))
        if match:
            items.append(match["text"].strip())
    return items


def numbered(items: list[str]) -> str:
    """Items as the numbered list the curator reads and writes."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def numbered_list(text: str, _inputs: Mapping[str, Any]) -> str:
    """The reply's list, renumbered ("" when it has none: a parse failure, the old cheatsheet stays)."""
    return numbered(list_items(text))


class CurateCheatsheet(dspy.Signature):
    """Update a short cheatsheet of general strategies and pitfalls for solving tasks like this one.

    Keep the entries that are still useful, add at most one new general strategy or pitfall that this task's
    graded attempts teach, merge entries that say the same thing, and drop anything that only fits one task
    (its numbers, names or values). Reply with the whole cheatsheet as a numbered list, one short entry per line.
    """

    cheatsheet: Annotated[str, Natural("context", title="Current cheatsheet")] = dspy.InputField(
        desc="numbered entries; empty at the start"
    )
    task: Annotated[str, Natural("context", title="Task")] = dspy.InputField(desc="the task statement")
    attempts: Annotated[str, Natural("context", title="Graded attempts")] = dspy.InputField(
        desc="attempts at the task, each with its grade"
    )
    limit: Annotated[str, Natural("context", title="Length")] = dspy.InputField(desc="how many entries at most")
    updated: Annotated[str, Natural("output", extract=numbered_list)] = dspy.OutputField(
        desc="the whole updated cheatsheet, one entry per line"
    )
