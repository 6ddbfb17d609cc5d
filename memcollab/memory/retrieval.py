"""Task-aware retrieval: the top-k memories of the predicted category.

Ranking is cosine similarity between the task text and each memory's rendered
text: TF-IDF over word 1-2-grams by default (fit on the candidates plus the
query, so weights reflect what distinguishes *these* memories), or cosine on
the vectors of a pluggable embedding function. Support is not mixed into the
score - a frequently distilled but irrelevant constraint should not beat a
relevant one - it only breaks ties (higher support first, then id), so the
order is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from memcollab.errors import ConfigError
from memcollab.records import MemoryEntry

if TYPE_CHECKING:
    from memcollab.memory.store import MemoryStore

Embed = Callable[[list[str]], np.ndarray]
Fallback = Literal["none", "domain", "all"]
FALLBACKS: tuple[str, ...] = ("none", "domain", "all")


def _tfidf_scores(query: str, texts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
    try:
        matrix = vectorizer.fit_transform([query, *texts])
    except ValueError:  # empty vocabulary: query and texts are all stop words / punctuation
        return np.zeros(len(texts))
    return np.asarray((matrix[1:] @ matrix[0].T).toarray()).ravel()  # rows are L2-normalised


def _embedding_scores(query: str, texts: list[str], embed: Embed) -> np.ndarray:
    vectors = np.asarray(embed([query, *texts]), dtype=float)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts) + 1:
        raise ConfigError(
            f"embedding function returned shape {vectors.shape}, expected ({len(texts) + 1}, dim); "
            "it must map a list of n strings to an n x dim array"
        )
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0  # a zero vector has similarity 0 to everything
    unit = vectors / norms[:, None]
    return unit[1:] @ unit[0]


def rank(
    query: str, entries: Sequence[MemoryEntry], k: int, embed: Embed | None = None
) -> list[tuple[MemoryEntry, float]]:
    """The k entries most similar to `query`, best first, with their cosine scores.

    Ties (equal score after rounding to 1e-9) go to higher support, then id.
    """
    if k <= 0 or not entries:
        return []
    texts = [e.text for e in entries]
    scores = _embedding_scores(query, texts, embed) if embed is not None else _tfidf_scores(query, texts)
    order = sorted(range(len(entries)), key=lambda i: (-round(float(scores[i]), 9), -entries[i].support, entries[i].id))
    return [(entries[i], float(scores[i])) for i in order[:k]]


def retrieve(
    store: MemoryStore,
    query: str,
    category: str,
    k: int = 3,
    fallback: Fallback = "none",
    domain: str | None = None,
    embed: Embed | None = None,
) -> list[MemoryEntry]:
    """Top-k memories for a task whose predicted category is `category`.

    Only memories of that category are candidates. When it holds fewer than k,
    `fallback` decides what fills the rest (always ranked after the category's
    own entries, by similarity):
      * "none" (default, the paper's strict behaviour): return fewer than k;
      * "domain": entries of other categories with the same domain ("math" /
        "code"); `domain` defaults to the domain of the category's entries;
      * "all": entries of every other category.
    """
    if fallback not in FALLBACKS:
        raise ConfigError(f"unknown retrieval fallback {fallback!r}; use one of {', '.join(FALLBACKS)}")
    own = store.entries(category=category)
    picked = [e for e, _ in rank(query, own, k, embed)]
    missing = k - len(picked)
    if missing <= 0 or fallback == "none":
        return picked
    if fallback == "domain":
        domain = domain or next((e.domain for e in own if e.domain), None)
        if not domain:
            raise ConfigError(
                f"fallback 'domain' needs a domain: category {category!r} has no entry with one; pass domain='math' or 'code'"
            )
        others = store.entries(domain=domain)
    else:
        others = store.entries()
    others = [e for e in others if e.category != category]
    return picked + [e for e, _ in rank(query, others, missing, embed)]


__all__ = ["Embed", "FALLBACKS", "rank", "retrieve"]
