"""MemoryStore on a real SQLite file: dedup, round trips, schema guard, concurrency."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from memcollab.errors import MemoryStoreError
from memcollab.memory import MemoryStore
from memcollab.records import MemoryEntry, Provenance


def entry(when: str, enforce: str, avoid: str, category: str = "algebra", error_type: str = "sign_error",
          task: str = "t1", pos: str = "qwen", neg: str = "llama", domain: str = "math") -> MemoryEntry:
    return MemoryEntry(
        when=when, enforce=enforce, avoid=avoid, category=category, error_type=error_type, domain=domain,
        provenance=Provenance(task_ids=[task], positive_agents=[pos], negative_agents=[neg]),
    )


QUAD = ("solving a quadratic equation by factoring",
        "check every root by substituting it back into the original equation",
        "dropping a negative root or flipping a sign when moving terms")
QUAD_PARAPHRASE = ("solving quadratic equations by factoring",
                   "check each root by substituting it back into the original equation",
                   "dropping a negative root or flipping signs when moving terms")
INEQ = ("solving a linear inequality",
        "reverse the inequality when multiplying or dividing by a negative number",
        "keeping the inequality direction after dividing by a negative")


@pytest.fixture
def store(tmp_path):
    with MemoryStore(tmp_path / "mem.sqlite") as s:
        yield s


def test_near_duplicate_raises_support_and_merges_provenance(store):
    first, new1 = store.add(entry(*QUAD, task="t1", pos="qwen", neg="llama"))
    second, new2 = store.add(entry(*QUAD_PARAPHRASE, task="t2", pos="gpt", neg="llama"))
    assert (new1, new2) == (True, False)
    assert len(store) == 1
    assert second.id == first.id
    stored = store.get(first.id)
    assert stored.support == 2
    assert stored.when == QUAD[0]  # the first wording is kept
    assert stored.provenance.task_ids == ["t1", "t2"]
    assert stored.provenance.positive_agents == ["qwen", "gpt"]
    assert stored.provenance.negative_agents == ["llama"]


def test_exact_same_content_gets_same_id_and_support(store):
    a, _ = store.add(entry(*QUAD, task="t1"))
    b, is_new = store.add(entry(*QUAD, task="t1"))
    assert not is_new and a.id == b.id == entry(*QUAD).content_key()
    assert store.get(a.id).support == 1  # the same evidence again (e.g. a resumed build) is not new support
    c, is_new = store.add(entry(*QUAD, task="t2"))
    assert not is_new and c.id == a.id and store.get(a.id).support == 2
    assert store.get(a.id).provenance.task_ids == ["t1", "t2"]  # union, not a duplicate task id


def test_distinct_constraint_same_category_is_kept(store):
    store.add(entry(*QUAD))
    _, is_new = store.add(entry(*INEQ))
    assert is_new and len(store) == 2


def test_same_text_in_other_category_is_not_merged(store):
    store.add(entry(*QUAD, category="algebra"))
    _, is_new = store.add(entry(*QUAD, category="precalculus"))
    assert is_new
    assert store.categories() == {"algebra": 1, "precalculus": 1}


def test_dedup_can_be_disabled(store):
    store.add(entry(*QUAD))
    _, is_new = store.add(entry(*QUAD_PARAPHRASE), dedup_threshold=None)
    assert is_new and len(store) == 2


def test_queries_stats_and_hash(store):
    store.add(entry(*QUAD, task="t1"))
    store.add(entry(*INEQ, task="t2", error_type="direction"))
    store.add(entry("a string slice", "use len(s) as the end", "off by one", category="strings",
                    error_type="off_by_one", task="c1", domain="code"))
    assert [e.category for e in store.entries(domain="code")] == ["strings"]
    assert len(store.entries(category="algebra", domain="math")) == 2
    stats = store.stats()
    assert stats["entries"] == 3 and stats["total_support"] == 3
    assert stats["matrix"]["algebra"] == {"direction": 1, "sign_error": 1}
    assert store.provenance_task_ids() == {"t1", "t2", "c1"}
    before = store.content_hash()
    assert before == store.content_hash()
    store.add(entry(*QUAD, task="t9"))  # support changes -> what a solver sees may change
    assert store.content_hash() != before
    assert store.integrity_ok()


def test_export_import_round_trip(store, tmp_path):
    store.add(entry(*QUAD, task="t1"))
    store.add(entry(*QUAD_PARAPHRASE, task="t2", pos="gpt"))
    store.add(entry(*INEQ, task="t3", error_type="direction"))
    out = tmp_path / "mem.jsonl"
    assert store.export_jsonl(out) == 2
    with MemoryStore(tmp_path / "copy.sqlite") as copy:
        assert copy.import_jsonl(out) == (2, 0)
        assert copy.entries() == store.entries()  # ids, support, provenance, created_at
        assert copy.content_hash() == store.content_hash()
        assert copy.import_jsonl(out) == (0, 2)  # identical entries: idempotent
        assert copy.entries() == store.entries()


def test_import_merges_entries_with_known_ids(store, tmp_path):
    store.add(entry(*QUAD, task="t1"))
    other = MemoryStore(":memory:")
    other.add(entry(*QUAD, task="t7", pos="gpt"))
    out = tmp_path / "other.jsonl"
    other.export_jsonl(out)
    assert store.import_jsonl(out) == (0, 1)
    merged = store.entries()[0]
    assert merged.support == 2 and merged.provenance.task_ids == ["t1", "t7"]


def test_malformed_import_line_is_named_and_nothing_is_applied(store, tmp_path):
    good = entry(*QUAD).model_copy(update={"id": "m-good"}).model_dump_json()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n\n" + '{"when": "x", "enforce": "y"\n')
    with pytest.raises(MemoryStoreError) as info:
        store.import_jsonl(bad)
    message = str(info.value)
    assert "bad.jsonl:3:" in message and "\n" not in message
    assert len(store) == 0


def test_schema_version_mismatch_is_refused(tmp_path):
    path = tmp_path / "old.sqlite"
    MemoryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(MemoryStoreError, match="schema version 99"):
        MemoryStore(path)


def test_foreign_sqlite_and_non_sqlite_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(MemoryStoreError, match="not a MemCollab memory store"):
        MemoryStore(foreign)
    text = tmp_path / "notes.sqlite"
    text.write_text("just some text, definitely not a database file " * 20)
    with pytest.raises(MemoryStoreError, match="cannot open"):
        MemoryStore(text)


def test_missing_file_not_created_when_create_false(tmp_path):
    path = tmp_path / "absent.sqlite"
    with pytest.raises(MemoryStoreError, match="not found"):
        MemoryStore(path, create=False)
    assert not path.exists()


def test_wal_mode_on_file(store):
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_adds_from_8_threads(tmp_path):
    path = tmp_path / "shared.sqlite"
    topics = ["modular arithmetic", "polygon angles", "probability trees", "string slicing",
              "recursion base cases", "unit conversion", "matrix shapes", "integer overflow"]
    with MemoryStore(path) as store:
        def work(worker: int) -> None:
            for i in range(15):  # distinct constraints, different categories per worker
                store.add(entry(f"{topics[worker]} variant {i} with {worker * 100 + i} items",
                                f"rule {worker}-{i}: {topics[(worker + i) % 8]} check",
                                f"mistake {i * 7 + worker}", category=f"cat{worker}", task=f"w{worker}-{i}"),
                          dedup_threshold=None)
            store.add(entry(*QUAD, task=f"shared-{worker}"))  # the same lesson from every worker

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(work, range(8)))
        assert len(store) == 8 * 15 + 1
        shared = store.get(entry(*QUAD).content_key())
        assert shared.support == 8
        assert sorted(shared.provenance.task_ids) == sorted(f"shared-{w}" for w in range(8))
        assert store.integrity_ok()
    # a second, independent connection sees everything and the file is sound
    with MemoryStore(path) as again:
        assert len(again) == 121 and again.integrity_ok()


def test_two_connections_writing_the_same_file(tmp_path):
    path = tmp_path / "two.sqlite"
    a, b = MemoryStore(path), MemoryStore(path)
    try:
        def work(args: tuple[MemoryStore, int]) -> None:
            s, offset = args
            for i in range(20):
                s.add(entry(f"case {offset + i}", f"rule {offset + i}", "x", task=str(offset + i)),
                      dedup_threshold=None)

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(work, [(a, 0), (b, 1000)]))
        assert len(a) == len(b) == 40
    finally:
        a.close()
        b.close()


def test_export_lines_are_json_entries(store, tmp_path):
    store.add(entry(*QUAD))
    out = tmp_path / "e.jsonl"
    store.export_jsonl(out)
    row = json.loads(out.read_text().splitlines()[0])
    assert row["id"] == entry(*QUAD).content_key() and row["support"] == 1
