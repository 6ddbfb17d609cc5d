"""MemoryStore on a real SQLite file: dedup, round trips, schema guard, concurrency."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from memcollab.errors import MemoryStoreError
from memcollab.memory import MemoryStore
from memcollab.records import MemoryEntry, Provenance


def entry(
    when: str,
    enforce: str,
    avoid: str,
    category: str = "algebra",
    error_type: str = "sign_error",
    task: str = "t1",
    pos: str = "qwen",
    neg: str = "llama",
    domain: str = "math",
) -> MemoryEntry:
    return MemoryEntry(
        when=when,
        enforce=enforce,
        avoid=avoid,
        category=category,
        error_type=error_type,
        domain=domain,
        provenance=Provenance(task_ids=[task], positive_agents=[pos], negative_agents=[neg]),
    )


QUAD = (
    "solving a quadratic equation by factoring",
    "check every root by substituting it back into the original equation",
    "dropping a negative root or flipping a sign when moving terms",
)
QUAD_PARAPHRASE = (
    "solving quadratic equations by factoring",
    "check each root by substituting it back into the original equation",
    "dropping a negative root or flipping signs when moving terms",
)
INEQ = (
    "solving a linear inequality",
    "reverse the inequality when multiplying or dividing by a negative number",
    "keeping the inequality direction after dividing by a negative",
)


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
    store.add(
        entry(
            "a string slice",
            "use len(s) as the end",
            "off by one",
            category="strings",
            error_type="off_by_one",
            task="c1",
            domain="code",
        )
    )
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
    topics = [
        "modular arithmetic",
        "polygon angles",
        "probability trees",
        "string slicing",
        "recursion base cases",
        "unit conversion",
        "matrix shapes",
        "integer overflow",
    ]
    with MemoryStore(path) as store:

        def work(worker: int) -> None:
            for i in range(15):  # distinct constraints, different categories per worker
                store.add(
                    entry(
                        f"{topics[worker]} variant {i} with {worker * 100 + i} items",
                        f"rule {worker}-{i}: {topics[(worker + i) % 8]} check",
                        f"mistake {i * 7 + worker}",
                        category=f"cat{worker}",
                        task=f"w{worker}-{i}",
                    ),
                    dedup_threshold=None,
                )
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
                s.add(
                    entry(f"case {offset + i}", f"rule {offset + i}", "x", task=str(offset + i)), dedup_threshold=None
                )

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


# ------------------------------------------------------------------ reading never writes


def sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def delete_mode_store(path) -> None:
    """A MemCollab store in SQLite's DELETE journal mode (as an older tool or a copy may leave it)."""
    with MemoryStore(path) as s:
        s.add(entry(*QUAD))
        s.add(entry(*INEQ, task="t2"))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"


def test_read_only_store_reads_a_delete_mode_store_without_changing_a_byte(tmp_path):
    path = tmp_path / "delete.sqlite"
    delete_mode_store(path)
    before = sha(path)
    with MemoryStore(path, read_only=True) as s:
        assert len(s) == 2 and s.stats()["entries"] == 2
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        s.export_jsonl(tmp_path / "out.jsonl")
    assert sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delete.sqlite", "out.jsonl"]  # no -wal, no -shm


def test_read_only_store_cannot_write(tmp_path):
    path = tmp_path / "mem.sqlite"
    delete_mode_store(path)
    with MemoryStore(path, read_only=True) as s:
        with pytest.raises(MemoryStoreError, match="readonly"):
            s.add(entry("a new case", "a new rule", "a new mistake"))
    with MemoryStore(path, read_only=True) as s:
        assert len(s) == 2


def test_empty_file_is_refused_and_stays_empty(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    with pytest.raises(MemoryStoreError, match="empty file, not a MemCollab memory store"):
        MemoryStore(path, read_only=True)
    assert path.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["empty.sqlite"]


@pytest.mark.parametrize("read_only", [True, False])
def test_foreign_sqlite_file_keeps_its_bytes(tmp_path, read_only):
    """Refused before anything is written: the old order switched the file to WAL first."""
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    before = sha(foreign)
    with pytest.raises(MemoryStoreError, match="not a MemCollab memory store"):
        MemoryStore(foreign, read_only=read_only)
    assert sha(foreign) == before
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_newer_schema_keeps_its_bytes(tmp_path):
    path = tmp_path / "future.sqlite"
    delete_mode_store(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 2")
    before = sha(path)
    with pytest.raises(MemoryStoreError, match="schema version 2"):
        MemoryStore(path)
    assert sha(path) == before


def test_writing_store_still_switches_to_wal(tmp_path):
    path = tmp_path / "mem.sqlite"
    delete_mode_store(path)
    with MemoryStore(path) as s:
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_read_only_path_with_uri_characters(tmp_path):
    """The read-only URI escapes what SQLite would read as URI syntax (`?`, `#`, `%`, spaces)."""
    path = tmp_path / "a dir?#%20" / "mem [1].sqlite"
    path.parent.mkdir()
    delete_mode_store(path)
    with MemoryStore(path, read_only=True) as s:
        assert len(s) == 2


# ------------------------------------------------------------------ damage becomes one line


def test_memories_table_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "mem.sqlite"
    delete_mode_store(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE memories")
        conn.execute("CREATE TABLE memories (id TEXT, note TEXT)")
    for read_only in (True, False):
        with pytest.raises(MemoryStoreError, match="damaged.*without column.*when_") as info:
            MemoryStore(path, read_only=read_only)
        assert "\n" not in str(info.value)


def test_unparsable_row_is_named(tmp_path):
    path = tmp_path / "mem.sqlite"
    delete_mode_store(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE memories SET provenance = 'not json' WHERE rowid = 1")
    with MemoryStore(path, read_only=True) as s:
        bad_id = s._conn.execute("SELECT id FROM memories WHERE rowid = 1").fetchone()[0]
        with pytest.raises(MemoryStoreError, match=f"damaged: memory '{bad_id}' does not parse"):
            s.entries()


def test_damaged_pages_fail_on_the_query_with_one_line(tmp_path):
    import random

    path = tmp_path / "mem.sqlite"
    with MemoryStore(path) as s:
        for i in range(150):
            s.add(entry(f"case {i} " * 10, f"rule {i} " * 10, f"mistake {i}", task=f"t{i}"), dedup_threshold=None)
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for offset in range(len(data) // 2, len(data)):
        data[offset] = rng.randrange(256)
    path.write_bytes(bytes(data))
    with MemoryStore(path, read_only=True) as s:  # header and schema pages are intact
        with pytest.raises(MemoryStoreError, match="malformed") as info:
            s.entries()
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        assert not s.integrity_ok()


def test_export_destinations_that_cannot_be_written(store, tmp_path):
    from memcollab.errors import OutputError

    store.add(entry(*QUAD))
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    with pytest.raises(OutputError, match="file.txt is a file, not a directory"):
        store.export_jsonl(regular / "out.jsonl")
    with pytest.raises(OutputError, match="is a directory"):
        store.export_jsonl(tmp_path)
    assert regular.read_text() == "x"
    out = tmp_path / "out.jsonl"
    out.write_text("old content\n")
    assert store.export_jsonl(out) == 1
    assert json.loads(out.read_text())["id"] == entry(*QUAD).content_key()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ writers in separate processes

_WRITER = """
import os, sys
from memcollab.memory import MemoryStore
from memcollab.records import MemoryEntry, Provenance
path, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with MemoryStore(path) as store:
    for i in range(count):
        store.add(MemoryEntry(when=f"w{worker} case {i}", enforce=f"rule {worker}-{i}", avoid="x", category="c",
                              error_type="e", provenance=Provenance(task_ids=[f"{worker}-{i}"])), dedup_threshold=None)
        print(i, flush=True)  # printed only after the add committed
    if len(sys.argv) > 4:
        os.kill(os.getpid(), 9)  # no close, no checkpoint: what a killed run leaves behind
"""


def test_four_processes_create_and_fill_one_new_store(tmp_path):
    """The schema is created once however the four race for it, and every add of every process is kept."""
    import subprocess
    import sys

    path = tmp_path / "new" / "shared.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(w), "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with MemoryStore(path, read_only=True) as s:
        assert len(s) == 60 and s.integrity_ok()
        assert s._conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


def test_adds_survive_kill_9(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "killed.sqlite"
    proc = subprocess.run(
        [sys.executable, "-c", _WRITER, str(path), "0", "25", "kill"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9
    committed = len(proc.stdout.split())
    assert committed == 25
    with MemoryStore(path, read_only=True) as s:  # read-only still sees what only the WAL holds
        assert len(s) == committed
    with MemoryStore(path) as s:
        assert len(s) == committed and s.integrity_ok()


# ------------------------------------------------------------------ the result store


def test_result_is_kept_the_moment_it_is_put_even_if_killed(tmp_path):
    import subprocess
    import sys

    from memcollab.memory.results import ResultStore

    path = tmp_path / "results.sqlite"
    script = (
        "import os, sys\nfrom memcollab.memory.results import ResultStore\n"
        "r = ResultStore(sys.argv[1])\nr.put('k1', 'solve', 't1', 'weak', {'answer': 42})\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with ResultStore(path) as results:
        assert results.get("k1") == {"answer": 42} and results.count("solve") == 1


def test_result_store_refuses_a_foreign_file_without_touching_it(tmp_path):
    from memcollab.errors import ResultStoreError
    from memcollab.memory.results import ResultStore

    foreign = tmp_path / "mlflow.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    before = sha(foreign)
    with pytest.raises(ResultStoreError, match="not a MemCollab results file"):
        ResultStore(foreign)
    assert sha(foreign) == before

    memory = tmp_path / "memory.sqlite"  # the other store of a run dir, passed by mistake
    MemoryStore(memory).close()
    with pytest.raises(ResultStoreError, match="not a MemCollab results file"):
        ResultStore(memory)


def test_result_store_damage_is_one_line(tmp_path):
    from memcollab.errors import ResultStoreError
    from memcollab.memory.results import ResultStore

    wrong = tmp_path / "wrong.sqlite"
    with sqlite3.connect(wrong) as conn:
        conn.execute("CREATE TABLE records (key TEXT PRIMARY KEY, kind TEXT, agent TEXT)")
    with pytest.raises(ResultStoreError, match="damaged.*task_id, payload, created_at"):
        ResultStore(wrong)

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00\xff" * 4096)
    with pytest.raises(ResultStoreError, match="not a database"):
        ResultStore(garbage)

    rows = tmp_path / "rows.sqlite"
    with ResultStore(rows) as results:
        results.put("k1", "solve", "t1", "weak", {"answer": 1})
    with sqlite3.connect(rows) as conn:
        conn.execute("UPDATE records SET payload = '{truncated' WHERE key = 'k1'")
    with ResultStore(rows) as results:
        with pytest.raises(ResultStoreError, match="damaged: the result under key k1 is not JSON"):
            results.get("k1")

    regular = tmp_path / "file.txt"
    regular.write_text("x")
    with pytest.raises(ResultStoreError, match="file.txt is a file, not a directory"):
        ResultStore(regular / "run" / "results.sqlite")


def test_binary_import_file_is_named_not_a_traceback(store, tmp_path):
    blob = tmp_path / "photo.jsonl"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00" * 50)
    with pytest.raises(MemoryStoreError, match="photo.jsonl: not UTF-8 text"):
        store.import_jsonl(blob)
    assert len(store) == 0
