"""Retrieval latency vs memory-store size, relative to a brute-force baseline.

For each store size the script fills a temporary SQLite store with synthetic
constraints spread over categories, then times, per query:
  * `retrieve(store, query, category, k=3)` - the real path: SQL fetch of the
    category's entries + TF-IDF fit + cosine ranking;
  * a brute-force baseline measured in the same run: pure-Python bag-of-words
    cosine of the query against *every* entry in the store, then a full sort.
The ratio retrieve / baseline is what to compare across machines; absolute
milliseconds depend on the host.

    python benchmarks/retrieval_speed.py --sizes 100 1000 5000 --queries 20
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from memcollab.memory import MemoryStore, retrieve
from memcollab.records import MemoryEntry

WORDS = (
    "root sign factor equation triangle angle polygon modulo prime probability count case string index list loop "
    "boundary recursion base overflow integer fraction ratio area volume digit sum product parity remainder "
    "inequality absolute value graph slope vertex matrix vector sort key dictionary copy mutate slice empty"
).split()


def synthetic_entries(n: int, n_categories: int, seed: int = 0) -> list[MemoryEntry]:
    rng = random.Random(seed)

    def phrase(length: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(length))

    return [
        MemoryEntry(
            id=f"m-{i:06d}",
            when=phrase(8),
            enforce=phrase(10),
            avoid=phrase(8),
            category=f"cat{i % n_categories}",
            error_type=f"err{rng.randrange(5)}",
            domain="math" if i % n_categories < n_categories // 2 else "code",
        )
        for i in range(n)
    ]


def brute_force(query: str, entries: list[MemoryEntry], k: int) -> list[MemoryEntry]:
    """Baseline: score every entry with pure-Python word-count cosine, sort all, take k."""
    q = Counter(query.lower().split())
    q_norm = math.sqrt(sum(v * v for v in q.values())) or 1.0
    scored = []
    for e in entries:
        c = Counter(e.text.lower().split())
        dot = sum(q[w] * c[w] for w in q)
        norm = math.sqrt(sum(v * v for v in c.values())) or 1.0
        scored.append((-dot / (q_norm * norm), e.id, e))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [e for _, _, e in scored[:k]]


def measure(size: int, n_queries: int, n_categories: int, k: int) -> dict:
    rng = random.Random(size)
    queries = [
        (" ".join(rng.choice(WORDS) for _ in range(15)), f"cat{rng.randrange(n_categories)}") for _ in range(n_queries)
    ]
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(Path(tmp) / "bench.sqlite") as store:
        for entry in synthetic_entries(size, n_categories):
            store.add(entry, dedup_threshold=None)
        retrieve(store, *queries[0], k=k)  # warm-up: imports scikit-learn once
        fast, slow = [], []
        for query, category in queries:
            start = time.perf_counter()
            retrieve(store, query, category, k=k)
            fast.append(time.perf_counter() - start)
            start = time.perf_counter()
            brute_force(query, store.entries(), k)  # the baseline pays the full-table fetch too
            slow.append(time.perf_counter() - start)
    retrieve_ms, brute_ms = statistics.median(fast) * 1e3, statistics.median(slow) * 1e3
    return {
        "size": size,
        "categories": n_categories,
        "k": k,
        "queries": n_queries,
        "retrieve_ms": round(retrieve_ms, 2),
        "brute_force_ms": round(brute_ms, 2),
        "ratio": round(retrieve_ms / brute_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--categories", type=int, default=7)
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the rows to this JSON file.")
    args = parser.parse_args()
    rows = [measure(size, args.queries, args.categories, args.k) for size in args.sizes]
    print("| entries | retrieve ms (median) | brute force ms (median) | ratio |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['retrieve_ms']} | {r['brute_force_ms']} | {r['ratio']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
