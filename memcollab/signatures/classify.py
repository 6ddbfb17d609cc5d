"""Task classifier signature: which category of the taxonomy a task belongs to."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import dspy

from memcollab.lm.adapters import Natural


def first_line(text: str, _inputs: Mapping[str, Any]) -> str:
    """The answer's first non-empty line without markdown, quotes or a trailing period."""
    for line in text.splitlines():
        cleaned = line.replace("**", "").strip(" \t>*_`\"'#-")
        cleaned = re.sub(r"^category\s*[:=-]\s*", "", cleaned, flags=re.IGNORECASE).strip(" \t*_`\"'.")
        if cleaned:
            return cleaned
    return ""


class ClassifyTask(dspy.Signature):
    """Which category does the task belong to? Answer with the category's name only."""

    task: Annotated[str, Natural("context", title="Task")] = dspy.InputField(desc="the task statement")
    categories: Annotated[str, Natural("context", title="Categories")] = dspy.InputField(
        desc="one per line: name: description"
    )
    category: Annotated[str, Natural("output", extract=first_line)] = dspy.OutputField(
        desc="one category name from the list"
    )
