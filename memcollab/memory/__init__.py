"""Shared memory: the SQLite store of distilled constraints and task-aware retrieval.

The store knows nothing of LMs; retrieval is a function of the store and the query.
Names are re-exported lazily (PEP 562) so that importing `memcollab.cli.memory`
for the CLI does not pull numpy and pydantic into `memcollab --help`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MemoryStore": "memcollab.memory.store",
    "SCHEMA_VERSION": "memcollab.memory.store",
    "merge_provenance": "memcollab.memory.store",
    "Embed": "memcollab.memory.retrieval",
    "FALLBACKS": "memcollab.memory.retrieval",
    "rank": "memcollab.memory.retrieval",
    "retrieve": "memcollab.memory.retrieval",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from memcollab.memory.retrieval import FALLBACKS as FALLBACKS
    from memcollab.memory.retrieval import Embed as Embed
    from memcollab.memory.retrieval import rank as rank
    from memcollab.memory.retrieval import retrieve as retrieve
    from memcollab.memory.store import SCHEMA_VERSION as SCHEMA_VERSION
    from memcollab.memory.store import MemoryStore as MemoryStore
    from memcollab.memory.store import merge_provenance as merge_provenance


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memcollab.memory' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
