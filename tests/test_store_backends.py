"""The memory and result stores on both backends, with the real engines: an SQLite file and a PostgreSQL server.

Every store test here runs twice, on `sqlite:///…` and on a fresh database of the session's PostgreSQL
server (tests/postgres_server.py; skipped, saying why, where none can run). Concurrent writers are real
threads and real processes: no entry may be lost and none stored twice, and near-duplicates written at the
same moment by different processes still fold into one entry.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_memory_store import INEQ, QUAD, QUAD_PARAPHRASE, entry

from memcollab.errors import MemoryStoreError, ResultStoreError
from memcollab.memory.backends import SCHEMA_NAME, parse_target, schema_name, with_schema
from memcollab.memory.results import ResultStore
from memcollab.memory.store import MemoryStore, StoreNotFound


@pytest.fixture(params=["sqlite", "postgresql"])
def new_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A maker of fresh, empty store targets on one backend: SQLite files, or databases of the session's server."""
    if request.param == "sqlite":
        counter = itertools.count()
        return lambda: f"sqlite:///{tmp_path}/store{next(counter)}.sqlite"
    server = request.getfixturevalue("postgres_server")
    made: list[str] = []

    def make() -> str:
        made.append(server.create_database())
        return made[-1]

    request.addfinalizer(lambda: [server.drop_database(url) for url in made])
    return make


@pytest.fixture
def target(new_target: Callable[[], str]) -> str:
    return new_target()


@pytest.fixture
def store(target: str):
    with MemoryStore(target) as s:
        yield s


def backend(store: MemoryStore) -> str:
    return {"SQLiteMemoryStore": "sqlite", "PostgresMemoryStore": "postgresql"}[type(store).__name__]


# ------------------------------------------------------------------ the same behaviour on both


def test_target_opens_its_backend(store, target):
    assert backend(store) == parse_target(target, MemoryStoreError).kind
    assert isinstance(store, MemoryStore) and "***" not in repr(store)


def test_near_duplicate_raises_support_and_merges_provenance(store):
    first, new1 = store.add(entry(*QUAD, task="t1", pos="qwen"))
    second, new2 = store.add(entry(*QUAD_PARAPHRASE, task="t2", pos="gpt"))
    assert (new1, new2) == (True, False) and second.id == first.id and len(store) == 1
    stored = store.get(first.id)
    assert stored.support == 2 and stored.when == QUAD[0]
    assert stored.provenance.task_ids == ["t1", "t2"] and stored.provenance.positive_agents == ["qwen", "gpt"]


def test_same_content_same_row_and_evidence_counted_once(store):
    a, _ = store.add(entry(*QUAD, task="t1"))
    b, is_new = store.add(entry(*QUAD, task="t1"))
    assert not is_new and a.id == b.id == entry(*QUAD).content_key() and store.get(a.id).support == 1
    store.add(entry(*QUAD, task="t2"))
    assert store.get(a.id).support == 2 and store.get(a.id).provenance.task_ids == ["t1", "t2"]


def test_categories_distinct_entries_and_disabled_dedup(store):
    store.add(entry(*QUAD))
    assert store.add(entry(*INEQ))[1]
    assert store.add(entry(*QUAD, category="precalculus"))[1]
    assert store.add(entry(*QUAD_PARAPHRASE), dedup_threshold=None)[1]
    assert store.categories() == {"algebra": 3, "precalculus": 1}


def test_queries_order_stats_and_hash(store):
    store.add(entry(*QUAD, task="t1"))
    store.add(entry(*INEQ, task="t2", error_type="direction"))
    store.add(
        entry("a string slice", "use len(s) as the end", "off by one", "strings", "off_by_one", "c1", domain="code")
    )
    assert [e.when for e in store.entries()] == [QUAD[0], INEQ[0], "a string slice"]  # insertion order
    assert [e.category for e in store.entries(domain="code")] == ["strings"]
    assert len(store.entries(category="algebra", domain="math")) == 2
    stats = store.stats()
    assert stats["entries"] == 3 and stats["total_support"] == 3
    assert stats["matrix"]["algebra"] == {"direction": 1, "sign_error": 1}
    assert store.provenance_task_ids() == {"t1", "t2", "c1"} and store.source_agents() == ["llama", "qwen"]
    before = store.content_hash()
    store.add(entry(*QUAD, task="t9"))
    assert store.content_hash() != before and store.integrity_ok()


def test_export_import_round_trip_and_merge(store, new_target, tmp_path):
    store.add(entry(*QUAD, task="t1"))
    store.add(entry(*QUAD_PARAPHRASE, task="t2", pos="gpt"))
    store.add(entry(*INEQ, task="t3", error_type="direction"))
    out = tmp_path / "mem.jsonl"
    assert store.export_jsonl(out) == 2
    with MemoryStore(new_target()) as copy:
        assert copy.import_jsonl(out) == (2, 0)
        assert copy.entries() == store.entries() and copy.content_hash() == store.content_hash()
        assert copy.import_jsonl(out) == (0, 2) and copy.entries() == store.entries()  # idempotent
        other = MemoryStore(":memory:")
        other.add(entry(*QUAD, task="t7", pos="gpt"))
        other.export_jsonl(tmp_path / "other.jsonl")
        assert copy.import_jsonl(tmp_path / "other.jsonl") == (0, 1)
        assert copy.entries()[0].support == 3 and copy.entries()[0].provenance.task_ids == ["t1", "t2", "t7"]


def test_a_bad_import_line_applies_nothing(store, tmp_path):
    good = entry(*QUAD).model_copy(update={"id": "m-good"}).model_dump_json()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n\n" + '{"when": "x", "enforce": "y"\n')
    with pytest.raises(MemoryStoreError, match="bad.jsonl:3:") as info:
        store.import_jsonl(bad)
    assert "\n" not in str(info.value) and len(store) == 0


def test_schema_version_mismatch_is_refused(target):
    with MemoryStore(target) as s, s._db("age the schema", write=True):
        s._exec("UPDATE schema_version SET version = 99")
    with pytest.raises(MemoryStoreError, match="schema version 99"):
        MemoryStore(target)


def test_unparsable_row_is_named_in_one_line(store):
    added, _ = store.add(entry(*QUAD))
    with store._db("damage a row", write=True):
        store._exec("UPDATE memories SET provenance = 'not json' WHERE id = :id", {"id": added.id})
    with pytest.raises(MemoryStoreError, match=f"damaged: memory '{added.id}' does not parse") as info:
        store.entries()
    assert "\n" not in str(info.value)


def test_missing_store_is_not_created_when_reading(target):
    """No file, or a database (a server holds many) without the memory tables: refused, and nothing is made."""
    for kwargs in ({"create": False}, {"read_only": True}):
        with pytest.raises(MemoryStoreError, match="not found"):
            MemoryStore(target, **kwargs)
    if target.startswith("sqlite"):
        assert not Path(parse_target(target, MemoryStoreError).location).exists()
    with MemoryStore(target) as s:  # a writer still starts from nothing
        assert len(s) == 0


def test_read_only_store_reads_but_cannot_write(target):
    with MemoryStore(target) as s:
        s.add(entry(*QUAD))
    with MemoryStore(target, read_only=True) as s:
        assert len(s) == 1 and s.stats()["entries"] == 1
        with pytest.raises(MemoryStoreError, match="read-?only") as info:
            s.add(entry(*INEQ))
        assert "\n" not in str(info.value)
    with MemoryStore(target, read_only=True) as s:
        assert len(s) == 1


def test_concurrent_adds_from_8_threads(target):
    with MemoryStore(target) as store:

        def work(worker: int) -> None:
            for i in range(10):
                store.add(entry(f"case {worker}-{i}", f"rule {worker}-{i}", "x", f"cat{worker}", task=f"w{worker}-{i}"))
            store.add(entry(*QUAD, task=f"shared-{worker}"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(work, range(8)))
        shared = store.get(entry(*QUAD).content_key())
        assert len(store) == 81 and shared.support == 8
        assert sorted(shared.provenance.task_ids) == sorted(f"shared-{w}" for w in range(8))
    with MemoryStore(target) as again:
        assert len(again) == 81 and again.integrity_ok()


# ------------------------------------------------------------------ writers in separate processes

_MEMORY_WRITER = """
import sys
from memcollab.memory import MemoryStore
from memcollab.records import MemoryEntry, Provenance
target, worker = sys.argv[1], int(sys.argv[2])
def add(when, enforce, category, task, threshold=0.8):
    store.add(MemoryEntry(when=when, enforce=enforce, avoid="x", category=category, error_type="e",
                          provenance=Provenance(task_ids=[task])), dedup_threshold=threshold)
with MemoryStore(target) as store:
    print("ready", flush=True)
    sys.stdin.readline()  # every writer starts at once
    for lesson in range(6):  # each writer words the same lesson its own way, at the same moment
        add(f"solving lesson {lesson} equations by factoring, as writer {worker} puts it",
            f"check every root of lesson {lesson} by substituting it back", f"lesson{lesson}", f"p{worker}")
    for i in range(worker * 10, worker * 10 + 20):  # overlapping ranges: entry i comes from two writers
        add(f"case {i}", f"rule {i}", "shared", f"w{worker}", threshold=None)
"""


def _run_writers(script: str, target: str, writers: int) -> None:
    """Start `writers` processes, release them together once all are ready, and wait for every one to succeed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, target, str(w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.communicate()[1]
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_processes_writing_at_once_lose_nothing_and_duplicate_nothing(target):
    writers = 4
    with MemoryStore(target):
        pass  # the schema exists before they race (racing for it is covered below)
    _run_writers(_MEMORY_WRITER, target, writers)
    with MemoryStore(target, read_only=True) as store:
        entries = store.entries()
        ids = [e.id for e in entries]
        assert len(ids) == len(set(ids))  # no duplicate row
        shared = {e.when: e for e in entries if e.category == "shared"}
        assert sorted(shared) == sorted(f"case {i}" for i in range(writers * 10 + 10))  # no lost entry
        for i, e in ((int(w.split()[1]), e) for w, e in shared.items()):
            from_writers = {w for w in range(writers) if w * 10 <= i < w * 10 + 20}
            assert e.support == len(from_writers) and sorted(e.provenance.task_ids) == [f"w{w}" for w in from_writers]
        for lesson in range(6):  # the paraphrases written at the same moment fold into one entry
            folded = store.entries(category=f"lesson{lesson}")
            assert len(folded) == 1, [e.when for e in folded]
            assert folded[0].support == writers and len(folded[0].provenance.task_ids) == writers
        assert store.integrity_ok()


def test_processes_create_one_new_store_together(target):
    _run_writers(_MEMORY_WRITER, target, 3)
    with MemoryStore(target, read_only=True) as store, store._db("count schema rows"):
        assert store._rows("SELECT COUNT(*) FROM schema_version")[0][0] == 1
        assert len(store.entries(category="shared")) == 40 and len(store.categories()) == 7


def test_a_store_another_process_commits_between_two_reads_is_opened(postgres_url, monkeypatch):
    """The race CI once hit: this process reads no schema_version, another commits a whole new store, and this
    one then reads its memories table. It must open that store, not refuse it as another program's table."""
    from memcollab.memory.postgres import PostgresDatabase

    real_columns, interleaved = PostgresDatabase.columns, []

    def columns_then_another_creates(self: PostgresDatabase, table: str) -> set[str]:
        found = real_columns(self, table)
        if table == "schema_version" and not found and not interleaved:
            interleaved.append(table)  # before the other opens: its own reads must not interleave again
            MemoryStore(postgres_url).close()  # the other process: creates the store and commits it
        return found

    monkeypatch.setattr(PostgresDatabase, "columns", columns_then_another_creates)
    with MemoryStore(postgres_url) as store, store._db("count schema rows"):
        assert interleaved and store._rows("SELECT COUNT(*) FROM schema_version")[0][0] == 1


def test_another_programs_memories_table_is_refused_not_altered(postgres_url):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE memories (id integer)"))
    with pytest.raises(MemoryStoreError, match="has a memories table but no schema_version"):
        MemoryStore(postgres_url)
    with engine.connect() as conn:
        tables = conn.execute(sqlalchemy.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        assert {row[0] for row in tables} == {"memories"}
    engine.dispose()


# ------------------------------------------------------------------ the result store

_RESULT_WRITER = """
import sys
from memcollab.memory.results import ResultStore
target, worker = sys.argv[1], int(sys.argv[2])
with ResultStore(target) as results:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(worker * 15, worker * 15 + 30):
        results.put(f"k{i}", "solve", f"t{i}", "weak", {"answer": i, "by": worker})
"""


def test_result_store_put_get_count_replace(target):
    with ResultStore(target) as results:
        assert results.get("k1") is None and results.count() == 0
        results.put("k1", "solve", "t1", "weak", {"answer": 1})
        results.put("k1", "solve", "t1", "weak", {"answer": 2})  # the same key again: one row, the latest payload
        results.put("k2", "classify", "t1", "weak", {"category": "algebra"})
    with ResultStore(target) as results:
        assert results.get("k1") == {"answer": 2} and results.count() == 2 and results.count("solve") == 1


def test_result_store_processes_writing_overlapping_keys(target):
    ResultStore(target).close()
    _run_writers(_RESULT_WRITER, target, 4)
    with ResultStore(target) as results:
        assert results.count() == 75 and results.count("solve") == 75
        for i in range(75):
            got = results.get(f"k{i}")
            assert got["answer"] == i and got["by"] in {w for w in range(4) if w * 15 <= i < w * 15 + 30}


def test_memory_and_results_share_one_postgres_database(postgres_url):
    """One database can hold a run's memory and its results (their tables differ), as a shared server would.
    (An SQLite file holds one of them: a results file refuses a memory file passed by mistake.)"""
    with MemoryStore(postgres_url) as store, ResultStore(postgres_url) as results:
        store.add(entry(*QUAD))
        results.put("k", "solve", "t", "weak", {"a": 1})
        assert len(store) == 1 and results.count() == 1


# ------------------------------------------------------------------ choosing the backend, and its errors


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("runs/m.sqlite", ("sqlite", "runs/m.sqlite")),
        (Path("/abs/m.sqlite"), ("sqlite", "/abs/m.sqlite")),
        (":memory:", ("sqlite", ":memory:")),
        ("sqlite:///runs/m.sqlite", ("sqlite", "runs/m.sqlite")),
        ("sqlite:////abs/m.sqlite", ("sqlite", "/abs/m.sqlite")),
        ("sqlite://", ("sqlite", ":memory:")),
        ("postgresql://u:pw@db.example:5432/mem", ("postgresql", "postgresql+psycopg://u:pw@db.example:5432/mem")),
        ("postgres://u@h/mem", ("postgresql", "postgresql+psycopg://u@h/mem")),
        ("postgresql+psycopg://u@h/mem", ("postgresql", "postgresql+psycopg://u@h/mem")),
    ],
)
def test_targets_name_their_backend(given, expected):
    assert tuple(parse_target(given, MemoryStoreError)) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mysql://u@h/db", "use a file path, sqlite:///path or postgresql://"),
        ("postgresql+psycopg2://u@h/db", "through psycopg 3"),
        ("sqlite://host/m.sqlite", "an SQLite URL has no host"),
        ("postgresql://", "name a server and database"),
    ],
)
def test_bad_urls_are_one_line(given, message):
    for cls, error in ((MemoryStore, MemoryStoreError), (ResultStore, ResultStoreError)):
        with pytest.raises(error, match=message) as info:
            cls(given)
        assert "\n" not in str(info.value)


def test_a_url_mangled_into_a_path_is_refused_not_created(tmp_path, monkeypatch):
    """Path("postgresql://h/db") is "postgresql:/h/db": taken as a file it would make a directory "postgresql:"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MemoryStoreError, match="a URL that went through a file path"):
        MemoryStore(Path("postgresql://u@h:5432/db"))
    with pytest.raises(ResultStoreError, match="a URL that went through a file path"):
        ResultStore(Path("sqlite:///m.sqlite"))
    assert list(tmp_path.iterdir()) == []


def test_sqlite_path_url_is_the_same_file(tmp_path):
    with MemoryStore(tmp_path / "m.sqlite") as s:
        s.add(entry(*QUAD))
    with MemoryStore(f"sqlite:///{tmp_path}/m.sqlite", read_only=True) as s:
        assert len(s) == 1 and s.path == str(tmp_path / "m.sqlite")
    with ResultStore(f"sqlite:///{tmp_path}/r.sqlite") as r:
        r.put("k", "solve", "t", "a", {})
    assert (tmp_path / "r.sqlite").is_file()


_IMPORTS = """
import sys
from memcollab.memory import MemoryStore
from memcollab.memory.results import ResultStore
MemoryStore(sys.argv[1] + "/m.sqlite").close()
MemoryStore("sqlite:///" + sys.argv[1] + "/n.sqlite").close()
ResultStore(sys.argv[1] + "/r.sqlite").close()
print(sorted(m for m in sys.modules if m.split(".")[0] in {"psycopg", "sqlalchemy", "memcollab"} and "postgres" in m
             or m.split(".")[0] in {"psycopg", "sqlalchemy"}))
"""


def test_the_sqlite_path_imports_no_postgresql_code(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


_NO_DRIVER = """
import sys
sys.modules["psycopg"] = None  # as if psycopg were not installed
from memcollab.errors import MemCollabError
from memcollab.memory import MemoryStore
from memcollab.memory.results import ResultStore
for cls in (MemoryStore, ResultStore):
    try:
        cls("postgresql://u@127.0.0.1:1/db")
    except MemCollabError as exc:
        print(type(exc).__name__, exc)
"""


def test_missing_driver_is_one_line_with_the_install_hint():
    proc = subprocess.run([sys.executable, "-c", _NO_DRIVER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["MemoryStoreError", "ResultStoreError"]
    assert all("needs psycopg 3" in line and "pip install 'memcollab[scale]'" in line for line in lines)


def test_unreachable_server_is_one_line():
    with pytest.raises(
        MemoryStoreError, match="cannot open memory store postgresql://u:\\*\\*\\*@127.0.0.1:1/db"
    ) as info:
        MemoryStore("postgresql://u:secret@127.0.0.1:1/db")
    assert "\n" not in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(ResultStoreError, match="cannot open results database") as info:
        ResultStore("postgresql://u@127.0.0.1:1/db")
    with pytest.raises(MemoryStoreError, match="bad memory store URL") as info:
        MemoryStore("postgresql://u:secret@h:port/db")
    assert "secret" not in str(info.value)


# ------------------------------------------------------------------ PostgreSQL only


def test_postgres_database_of_another_app(postgres_url):
    """Other tables in the database are fine (a shared server); a memories or records table of another shape is not."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with MemoryStore(postgres_url) as s:
        assert len(s) == 0
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE schema_version, memories")
        conn.execute("CREATE TABLE memories (id TEXT)")
        conn.execute("CREATE TABLE records (key TEXT PRIMARY KEY, kind TEXT)")
    with pytest.raises(MemoryStoreError, match="not a MemCollab memory store"):
        MemoryStore(postgres_url)
    with pytest.raises(ResultStoreError, match="damaged.*task_id, agent, payload, created_at"):
        ResultStore(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0  # left as it was


# ------------------------------------------------------------------ stores in schemas of one database


def test_schema_names_are_valid_short_and_one_per_store():
    pairs = [
        ("default", "results"),
        ("default", "memory"),
        ("grid-small-stub", "results"),
        ("grid_small_stub", "results"),
        ("a__b", "c"),
        ("a", "b__c"),
        ("Run", "memory"),
        ("run", "memory"),
        ("x" * 80, "memory_gsm8k.memcollab.weak_strong.s0"),
        ("x" * 80, "memory_gsm8k.memcollab.weak_strong.s1"),
        ("", ""),
    ]
    names = [schema_name(run, store) for run, store in pairs]
    assert len(set(names)) == len(pairs)
    assert all(SCHEMA_NAME.match(name) and len(name) <= 63 for name in names)
    assert names[:2] == ["mc_default__results", "mc_default__memory"]  # clean names stay readable
    assert names[2].startswith("mc_grid_small_stub__results___")
    assert schema_name("grid-small-stub", "results") == names[2]  # the same on every machine
    assert with_schema("postgresql://u@h/db?sslmode=require", "s") == "postgresql://u@h/db?sslmode=require&schema=s"


def test_stores_in_schemas_of_one_database_stay_apart(postgres_url):
    import psycopg

    first, second = with_schema(postgres_url, "mc_one__memory"), with_schema(postgres_url, "mc_two__memory")
    with MemoryStore(first) as one, MemoryStore(second) as two, ResultStore(with_schema(postgres_url, "r")) as results:
        one.add(entry(*QUAD))
        results.put("k", "solve", "t", "weak", {"a": 1})
        assert (len(one), len(two), results.count()) == (1, 0, 1)
        assert one.path.endswith("?schema=mc_one__memory")
    with MemoryStore(first, read_only=True) as again:
        assert len(again) == 1
    with pytest.raises(StoreNotFound, match="not found"):  # a reader never creates the schema it names
        MemoryStore(with_schema(postgres_url, "mc_missing"), read_only=True)
    with psycopg.connect(postgres_url) as conn:
        found = {row[0] for row in conn.execute("SELECT schema_name FROM information_schema.schemata")}
        public = {
            row[0]
            for row in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        }
    assert {"mc_one__memory", "mc_two__memory", "r"} <= found and "mc_missing" not in found and not public
    for bad in ("Upper", "pg_catalog", "a;drop", "x" * 64):
        with pytest.raises(MemoryStoreError, match="schema must be one name") as info:
            MemoryStore(with_schema(postgres_url, bad))
        assert "\n" not in str(info.value)


def test_processes_writing_to_one_schema_url_land_in_one_store(postgres_url):
    """Two builders on one `--store-url` schema: both writers' entries in that store, nothing outside it."""
    target = with_schema(postgres_url, schema_name("shared", "memory"))
    _run_writers(_MEMORY_WRITER, target, 2)
    with MemoryStore(target, read_only=True) as store:
        shared = store.entries(category="shared")
        assert len(shared) == 30 and {t for e in shared for t in e.provenance.task_ids} == {"w0", "w1"}
        assert all(len(store.entries(category=f"lesson{n}")) == 1 for n in range(6))
    with pytest.raises(StoreNotFound):
        MemoryStore(postgres_url, read_only=True)  # the database's public schema holds no store


def test_memory_cli_takes_a_postgresql_url(postgres_url, tmp_path):
    """`--store` is text: a URL keeps its '//' and its schema; reading never creates; the password is never shown."""
    from typer.testing import CliRunner

    from memcollab.cli.app import app

    url = with_schema(postgres_url, "mc_cli__memory")
    source = tmp_path / "in.jsonl"
    with MemoryStore(":memory:") as scratch:
        scratch.add(entry(*QUAD, task="t1"))
        scratch.add(entry(*INEQ, task="t2"))
        scratch.export_jsonl(source)
    runner = CliRunner()
    missing = runner.invoke(app, ["memory", "list", "--store", url])
    assert isinstance(missing.exception, StoreNotFound) and "\n" not in str(missing.exception)
    imported = runner.invoke(app, ["memory", "import", str(source), "--store", url])
    assert imported.exit_code == 0, imported.output
    assert "2 added" in imported.output and "?schema=mc_cli__memory now holds 2 memories" in imported.output
    listed = runner.invoke(app, ["memory", "list", "--store", url])
    assert listed.exit_code == 0 and "2 memories" in listed.output
    stats = runner.invoke(app, ["memory", "stats", "--store", url])
    assert stats.exit_code == 0 and "total support 2" in " ".join(stats.output.split())  # the title wraps
    assert runner.invoke(app, ["memory", "export", str(tmp_path / "out.jsonl"), "--store", url]).exit_code == 0
    assert (tmp_path / "out.jsonl").read_text() == source.read_text()
    secret = url.replace("postgres@", "postgres:secret@")
    shown = runner.invoke(app, ["memory", "show", "nope", "--store", secret])
    assert "secret" not in str(shown.exception) and "no memory with id 'nope'" in str(shown.exception)
