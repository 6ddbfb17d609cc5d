"""Memory echo: does an answer repeat a phrase of the memory it was shown that is not the task's own wording?

Why: a small solver can take memory rules for part of the problem and work them as steps (a pizza order
"adds the cost of the doctor's visit" because a rule from another task said so). Accuracy alone cannot
tell that failure from a wrong rule or a distracted model; a cell's echo rate next to its accuracy can,
without reading transcripts. A phrase is `PHRASE_WORDS` consecutive words (lower-case letters and digits);
phrases that occur in the task itself do not count, since a solver restating the task is not echoing the
memory. List numbering of the rendered rules is dropped first.
"""

from __future__ import annotations

import re

#: Words in a phrase: long enough that a shared phrase is a copy, not common wording ("the total cost of").
PHRASE_WORDS = 5

_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_NUMBERING = re.compile(r"^\s*\d+[.)]\s+", re.MULTILINE)


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased and without punctuation."""
    return _WORD.findall(text.lower())


def phrases(text: str, size: int = PHRASE_WORDS) -> set[str]:
    """Every run of `size` consecutive words of `text` (`words`)."""
    tokens = words(text)
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def echoed_phrases(memory: str, task: str, answer: str) -> set[str]:
    """The phrases of `memory` (the guidance text the solver saw) that `answer` repeats and `task` does not hold."""
    if not memory:
        return set()
    shown = phrases(_NUMBERING.sub("", memory)) - phrases(task)
    return shown & phrases(answer)


def echoes_memory(memory: str, task: str, answer: str) -> bool:
    """True when the answer repeats at least one phrase of the memory that is not in the task."""
    return bool(echoed_phrases(memory, task, answer))
