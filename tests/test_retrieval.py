"""Task-aware retrieval over a real store: category filter, fallbacks, ranking, pluggable embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from memcollab.errors import ConfigError
from memcollab.memory import MemoryStore, rank, retrieve
from memcollab.records import MemoryEntry

ROWS = [
    # category, domain, when, enforce, avoid
    (
        "algebra",
        "math",
        "solving a quadratic equation",
        "check each root in the original equation",
        "losing a negative root",
    ),
    (
        "algebra",
        "math",
        "simplifying a rational expression",
        "list excluded values before cancelling",
        "cancelling non-factors",
    ),
    (
        "geometry",
        "math",
        "computing the area of a triangle",
        "use one half base times height",
        "forgetting the one half",
    ),
    (
        "geometry",
        "math",
        "angles in a regular polygon",
        "use (n-2)*180/n for interior angles",
        "mixing interior and exterior angles",
    ),
    (
        "number_theory",
        "math",
        "working modulo a prime",
        "reduce intermediate powers modulo p",
        "computing huge powers directly",
    ),
    ("strings", "code", "slicing a string to its last character", "use s[-1] or s[len(s)-1]", "indexing s[len(s)]"),
    (
        "lists",
        "code",
        "removing items from a list while iterating",
        "iterate over a copy",
        "mutating the list being iterated",
    ),
]


@pytest.fixture
def store():
    with MemoryStore(":memory:") as s:
        for cat, dom, when, enforce, avoid in ROWS:
            s.add(MemoryEntry(when=when, enforce=enforce, avoid=avoid, category=cat, error_type="e", domain=dom))
        yield s


def test_strict_category_returns_only_that_category(store):
    got = retrieve(store, "Find the area of a triangle with base 4 and height 6.", "geometry", k=3)
    assert len(got) == 2  # fallback "none": fewer than k rather than other categories
    assert {e.category for e in got} == {"geometry"}
    assert got[0].when.startswith("computing the area of a triangle")


def test_relevant_entry_ranked_first(store):
    got = retrieve(store, "Solve the quadratic equation x^2 - 5x + 6 = 0 and check each root.", "algebra", k=1)
    assert got[0].when == "solving a quadratic equation"
    got = retrieve(store, "Simplify the rational expression (x^2-1)/(x-1); state excluded values.", "algebra", k=1)
    assert got[0].when == "simplifying a rational expression"


def test_domain_fallback_fills_from_same_domain(store):
    got = retrieve(store, "What is 3^100 modulo 7? Reduce powers modulo the prime.", "geometry", k=4, fallback="domain")
    assert len(got) == 4
    assert [e.category for e in got[:2]] == ["geometry", "geometry"]
    assert all(e.domain == "math" for e in got)
    assert got[2].category == "number_theory"  # the most relevant filler comes first


def test_domain_fallback_needs_a_domain_for_unknown_category(store):
    with pytest.raises(ConfigError, match="domain"):
        retrieve(store, "anything", "topology", k=2, fallback="domain")
    got = retrieve(store, "string slicing last character", "topology", k=2, fallback="domain", domain="code")
    assert {e.domain for e in got} == {"code"} and len(got) == 2
    assert got[0].category == "strings"


def test_all_fallback_fills_from_everything(store):
    got = retrieve(store, "remove items from a list while iterating over it", "geometry", k=5, fallback="all")
    assert len(got) == 5
    assert [e.category for e in got[:2]] == ["geometry", "geometry"]
    assert got[2].category == "lists"


def test_unknown_fallback_is_a_config_error(store):
    with pytest.raises(ConfigError, match="fallback"):
        retrieve(store, "q", "algebra", fallback="nearest")  # type: ignore[arg-type]


def test_rank_is_deterministic_and_breaks_ties_by_support_then_id():
    a = MemoryEntry(id="m-b", when="alpha", enforce="beta", avoid="gamma", category="c", error_type="e")
    b = MemoryEntry(id="m-a", when="alpha", enforce="beta", avoid="gamma", category="c", error_type="e")
    c = MemoryEntry(id="m-c", when="alpha", enforce="beta", avoid="gamma", category="c", error_type="e", support=3)
    ranked = rank("unrelated words entirely", [a, b, c], k=3)
    assert [e.id for e, _ in ranked] == ["m-c", "m-a", "m-b"]
    assert rank("q", [a], k=0) == [] and rank("q", [], k=3) == []


def test_pluggable_embedding_is_used(store):
    calls: list[int] = []

    def embed(texts: list[str]) -> np.ndarray:
        """Deterministic toy embedding with one 'synonym' axis: hexagon ~ polygon, and a triangle axis."""
        calls.append(len(texts))
        return np.array([[float("hexagon" in t or "polygon" in t), float("triangle" in t), 0.0] for t in texts])

    query = "What is each angle of a hexagon?"
    # No word of the query occurs in either geometry memory: TF-IDF scores both 0.
    assert [score for _, score in rank(query, store.entries(category="geometry"), k=2)] == [0.0, 0.0]
    ranked = rank(query, store.entries(category="geometry"), k=2, embed=embed)
    assert ranked[0][0].when == "angles in a regular polygon"
    assert ranked[0][1] == pytest.approx(1.0) and ranked[1][1] == pytest.approx(0.0)
    got = retrieve(store, query, "geometry", k=1, embed=embed)
    assert got[0].when == "angles in a regular polygon"
    assert calls == [3, 3]  # one call per ranking: the query plus the candidates


def test_bad_embedding_shape_is_a_config_error(store):
    with pytest.raises(ConfigError, match="shape"):
        rank("q", store.entries(), k=2, embed=lambda texts: np.zeros(3))
