"""The shared memory: MemoryEntry rows in one SQLite file, or in a PostgreSQL database.

Why SQLite: one portable file that several agents (threads, or processes of a
run) can append to at once, with transactions so a crash never leaves half an
entry. WAL mode lets readers work while a writer commits. `MemoryStore(target)`
opens the backend its target names (see `memcollab.memory.backends`): a path or
`sqlite:///path` is this file; `postgresql://user@host:port/db` is a database
that builders on several machines share (`memcollab.memory.postgres`). Both run
the same store logic below; only the SQL seam (`_db`, `_rows`, `_exec`,
`_lock_category`) differs.

Reading never writes: `MemoryStore(path, read_only=True)` (what `memcollab
memory list/show/stats/export` use) opens the file through SQLite's
`mode=ro` URI, so an empty file, another program's database or a store in
another journal mode keeps its bytes. Only a writing store switches the file
to WAL, and only after checking that it is a MemCollab store. A damaged store
(a file that is not SQLite, a `memories` table with other columns, rows that
do not parse) raises MemoryStoreError with one line, on open or on the query
that finds the damage.

Near-duplicates are folded instead of stored twice: a new constraint whose
wording is close to an existing one of the *same category* raises that entry's
`support` and merges its provenance. Similarity is the cosine of hashed
character 3-5-gram vectors of `when | enforce | avoid` (see `_similarities`):
  * character n-grams survive small rewordings ("dividing by" / "division by"),
    which is what two distillations of the same lesson look like;
  * hashing is stateless, so whether A and B are duplicates never depends on
    what else is in the store (a TF-IDF fit would shift with every insert);
  * it is a sparse dot product, far cheaper than difflib's quadratic ratio.
The prompt template words ("When", "enforce", "avoid") are left out, so they do
not inflate the similarity of unrelated constraints.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from memcollab.errors import MemoryStoreError, output_error
from memcollab.memory.backends import backend_class, parse_target
from memcollab.records import MemoryEntry, Provenance, stable_hash

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    id          TEXT PRIMARY KEY,
    when_       TEXT NOT NULL,
    enforce     TEXT NOT NULL,
    avoid       TEXT NOT NULL,
    category    TEXT NOT NULL,
    error_type  TEXT NOT NULL,
    domain      TEXT NOT NULL DEFAULT '',
    support     INTEGER NOT NULL DEFAULT 1,
    provenance  TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_category ON memories (category);
CREATE INDEX IF NOT EXISTS memories_domain ON memories (domain);
"""

_COLUMNS = "id, when_, enforce, avoid, category, error_type, domain, support, provenance, created_at"
_COLUMN_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))
_INSERT = (
    f"INSERT INTO memories ({_COLUMNS}) VALUES ({', '.join(':' + name for name in _COLUMN_NAMES)}) "
    "ON CONFLICT (id) DO NOTHING"
)
_REPAIR_HINT = "restore it from a copy or from a `memcollab memory export` file, or pass another --store path"


class StoreNotFound(MemoryStoreError):
    """No store where one was to be read (no file, or a database or schema without the memory tables)."""


def _hint(exc: sqlite3.DatabaseError) -> str:
    """The repair hint, for damage only: a busy, full or read-only file is not fixed by restoring a copy."""
    name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11
    transient = name in {
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_FULL",
        "SQLITE_READONLY",
        "SQLITE_IOERR",
        "SQLITE_CANTOPEN",
        "SQLITE_PERM",
    } or any(word in str(exc) for word in ("locked", "disk is full", "readonly", "unable to open"))
    return "" if transient else f"; {_REPAIR_HINT}"


def user_tables(conn: sqlite3.Connection) -> set[str]:
    """Tables of an SQLite file, SQLite's own (`sqlite_sequence`, `sqlite_stat1`) left out."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return {row[0] for row in rows if not row[0].startswith("sqlite_")}


def read_only_uri(path: Path) -> str:
    """`file:` URI that opens `path` read-only: SQLite then cannot write the file, not even a journal-mode switch."""
    return path.absolute().as_uri() + "?mode=ro"


def _dedup_text(entry: MemoryEntry) -> str:
    """The content compared for near-duplicates (template words left out)."""
    return f"{entry.when} | {entry.enforce} | {entry.avoid}"


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """Order-preserving union: existing items first, then new ones."""
    return list(dict.fromkeys([*first, *second]))


def merge_provenance(a: Provenance, b: Provenance) -> Provenance:
    """Union of task ids and agents on each side, keeping first-seen order."""
    return Provenance(
        task_ids=_union(a.task_ids, b.task_ids),
        positive_agents=_union(a.positive_agents, b.positive_agents),
        negative_agents=_union(a.negative_agents, b.negative_agents),
    )


class MemoryStore:
    """MemoryEntry rows in a database: the store logic both backends share.

    `MemoryStore(target, ...)` returns the backend `target` names: an SQLite file
    (`SQLiteMemoryStore`, the default) or a PostgreSQL database (`PostgresMemoryStore`).
    A backend supplies the SQL seam: `_db` (a transaction, with its failures turned
    into one MemoryStoreError line), `_rows`/`_exec` (named `:param` SQL inside it),
    `_lock_category` and the insertion-order column.

    Uniqueness comes from the database, not from Python: an entry's id is a hash of
    its content and the primary key, and inserts are `ON CONFLICT (id) DO NOTHING`,
    so two writers of the same constraint end up with one row, merged.
    """

    path: str
    read_only: bool
    _vectors: dict[str, Any]  # id -> hashed n-gram vector; content of an id never changes
    #: Column that orders rows as they were inserted.
    _ORDER: ClassVar[str] = "rowid"
    #: Appended to a read of a row that is about to be merged (a row lock where the database has them).
    _FOR_UPDATE: ClassVar[str] = ""

    def __new__(cls, path: str | Path, *args: Any, **kwargs: Any) -> MemoryStore:
        if cls is MemoryStore:
            cls = backend_class(path, MemoryStoreError, SQLiteMemoryStore, "PostgresMemoryStore")
        return super().__new__(cls)

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        raise NotImplementedError  # every backend opens its own database

    # ------------------------------------------------------------ the SQL seam
    def _db(self, action: str, write: bool = False) -> AbstractContextManager[object]:
        """A transaction for `action` (a write one with `write`); a database failure in it is one line."""
        raise NotImplementedError

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """The rows of a query, inside `_db`."""
        raise NotImplementedError

    def _exec(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run a statement inside `_db`; returns the number of rows it changed."""
        raise NotImplementedError

    def _lock_category(self, category: str) -> None:
        """Serialise near-duplicate folding of one category across writers, until the transaction ends."""

    def close(self) -> None:
        raise NotImplementedError

    def _check_schema(self, found: object, columns: set[str]) -> None:
        """Refuse a store of another schema version, or one whose memories table lacks columns."""
        if found != SCHEMA_VERSION:
            raise MemoryStoreError(
                f"memory store {self.path} has schema version {found}, this MemCollab reads version "
                f"{SCHEMA_VERSION}; export it with the matching MemCollab version or use a new --store path"
            )
        missing = [name for name in _COLUMN_NAMES if name not in columns]
        if missing:
            what = f"a memories table without column(s) {', '.join(missing)}" if columns else "no memories table"
            raise MemoryStoreError(f"memory store {self.path} is damaged: it has {what}; {_REPAIR_HINT}")

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        with self._db("count memories"):
            return self._rows("SELECT COUNT(*) FROM memories")[0][0]

    def __repr__(self) -> str:
        return f"MemoryStore({self.path!r})"

    # ------------------------------------------------------------ row <-> entry
    def _row_to_entry(self, row: tuple) -> MemoryEntry:
        """A stored row as an entry; a row that does not parse is damage in the file, named with its id."""
        id_, when, enforce, avoid, category, error_type, domain, support, prov, created_at = row
        try:
            return MemoryEntry(
                id=id_,
                when=when,
                enforce=enforce,
                avoid=avoid,
                category=category,
                error_type=error_type,
                domain=domain,
                support=support,
                provenance=Provenance.model_validate_json(prov),
                created_at=created_at,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "row"
            raise MemoryStoreError(
                f"memory store {self.path} is damaged: memory {id_!r} does not parse "
                f"({where}: {first.get('msg', 'invalid')}); {_REPAIR_HINT}"
            ) from None

    @staticmethod
    def _entry_to_row(entry: MemoryEntry) -> dict[str, Any]:
        values = (
            entry.id,
            entry.when,
            entry.enforce,
            entry.avoid,
            entry.category,
            entry.error_type,
            entry.domain,
            entry.support,
            entry.provenance.model_dump_json(),
            entry.created_at,
        )
        return dict(zip(_COLUMN_NAMES, values))

    def _insert(self, entry: MemoryEntry) -> bool:
        """Insert unless the id exists (the primary key decides, also against a concurrent writer); True if inserted."""
        return self._exec(_INSERT, self._entry_to_row(entry)) == 1

    def _update_merge(self, existing: MemoryEntry, incoming: MemoryEntry) -> MemoryEntry:
        # Support counts distinct evidence: a constraint from tasks already in the entry's provenance (a rerun
        # re-applying cached distillations, or near-copies from one pair) does not raise it again.
        incoming_tasks = set(incoming.provenance.task_ids)
        if incoming_tasks and incoming_tasks <= set(existing.provenance.task_ids):
            return existing
        merged = existing.model_copy(
            update={
                "support": existing.support + incoming.support,
                "provenance": merge_provenance(existing.provenance, incoming.provenance),
                "domain": existing.domain or incoming.domain,
            }
        )
        self._exec(
            "UPDATE memories SET support=:support, provenance=:provenance, domain=:domain WHERE id=:id",
            {
                "support": merged.support,
                "provenance": merged.provenance.model_dump_json(),
                "domain": merged.domain,
                "id": merged.id,
            },
        )
        return merged

    def _get_unlocked(self, id_: str, for_update: bool = False) -> MemoryEntry | None:
        lock = self._FOR_UPDATE if for_update else ""
        rows = self._rows(f"SELECT {_COLUMNS} FROM memories WHERE id=:id{lock}", {"id": id_})
        return self._row_to_entry(rows[0]) if rows else None

    def _merge_by_id(self, entry: MemoryEntry) -> MemoryEntry | None:
        """Merge `entry` into the row of its id, read under a row lock; None if there is no such row."""
        existing = self._get_unlocked(entry.id, for_update=True)
        return None if existing is None else self._update_merge(existing, entry)

    # ------------------------------------------------------------ similarity
    def _similarities(self, entry: MemoryEntry, candidates: list[MemoryEntry]) -> list[float]:
        """Cosine of hashed char 3-5-gram vectors between `entry` and each candidate."""
        from sklearn.feature_extraction.text import HashingVectorizer

        vectorizer = HashingVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), n_features=2**18, alternate_sign=False, norm="l2"
        )
        missing = [c for c in candidates if c.id not in self._vectors]
        if missing:
            for cand, vec in zip(missing, vectorizer.transform([_dedup_text(c) for c in missing])):
                self._vectors[cand.id] = vec
        query = vectorizer.transform([_dedup_text(entry)])
        return [float(query.multiply(self._vectors[c.id]).sum()) for c in candidates]

    # ----------------------------------------------------------------- write
    def add(self, entry: MemoryEntry, dedup_threshold: float | None = 0.8) -> tuple[MemoryEntry, bool]:
        """Store `entry`, or fold it into an existing one; returns (stored entry, is_new).

        The id is `entry.id` or, if empty, `entry.content_key()`, so the same
        content always lands on the same row. An entry with a known id, or one
        whose similarity to an entry of the same category is >= `dedup_threshold`
        (None disables the near-duplicate check), raises that entry's support by
        `entry.support` (1 for a fresh distillation) and merges provenance.
        """
        entry = entry.model_copy(update={"id": entry.id or entry.content_key()})
        with self._db("add a memory", write=True):
            return self._add_unlocked(entry, dedup_threshold)

    def _add_unlocked(self, entry: MemoryEntry, dedup_threshold: float | None) -> tuple[MemoryEntry, bool]:
        """Folding reads the whole category, then inserts: `_lock_category` keeps two writers from both
        missing each other's near-duplicate; merges read their row under a row lock."""
        self._lock_category(entry.category)
        merged = self._merge_by_id(entry)
        if merged is not None:
            return merged, False
        if dedup_threshold is not None:
            same_category = self._select("WHERE category=:category", {"category": entry.category})
            if same_category:
                sims = self._similarities(entry, same_category)
                best_sim, best = min(zip(sims, same_category), key=lambda pair: (-pair[0], pair[1].id))
                if best_sim >= dedup_threshold:
                    return self._merge_by_id(entry.model_copy(update={"id": best.id})) or best, False
        if self._insert(entry):
            return entry, True
        # Another writer inserted this id since the read above (one holding another category's lock: an import).
        return self._merge_by_id(entry) or entry, False

    def clear(self) -> int:
        """Delete every entry (a memory rebuilt from cached results starts empty); returns how many there were."""
        with self._db("clear the memory store", write=True):
            return self._exec("DELETE FROM memories")

    def import_jsonl(self, path: str | Path) -> tuple[int, int]:
        """Add the entries of a JSONL export; returns (added, merged).

        Ids are kept, so export -> import into an empty store round-trips
        exactly. An entry whose id already exists is merged (support summed,
        provenance united) unless it is identical, in which case it is left as
        is - re-importing the same file is a no-op. No near-duplicate folding:
        the exporting store already decided what is distinct. The whole file is
        validated first and applied in one transaction (all or nothing).
        """
        return self.import_entries(read_memory_jsonl(path), source=str(path))

    def import_entries(self, entries: list[MemoryEntry], source: str = "entries") -> tuple[int, int]:
        """`import_jsonl` for entries already read (`read_memory_jsonl`): a caller that must not create a store
        for a bad file reads it first. Returns (added, merged); one transaction."""
        added = merged = 0
        with self._db(f"import {source}", write=True):
            for category in sorted({e.category for e in entries}):  # one order for every writer: no deadlock
                self._lock_category(category)
            for entry in entries:
                existing = self._get_unlocked(entry.id, for_update=True)
                if existing is None and self._insert(entry):
                    added += 1
                    continue
                if existing != entry:
                    self._merge_by_id(entry)
                merged += 1
        return added, merged

    # ------------------------------------------------------------------ read
    def _select(self, where: str = "", params: dict[str, Any] | None = None) -> list[MemoryEntry]:
        rows = self._rows(f"SELECT {_COLUMNS} FROM memories {where} ORDER BY {self._ORDER}", params)
        return [self._row_to_entry(row) for row in rows]

    def get(self, id_: str) -> MemoryEntry | None:
        with self._db("read a memory"):
            return self._get_unlocked(id_)

    def entries(self, category: str | None = None, domain: str | None = None) -> list[MemoryEntry]:
        """Entries in insertion order, optionally of one category and/or domain."""
        params = {name: value for name, value in (("category", category), ("domain", domain)) if value is not None}
        where = ("WHERE " + " AND ".join(f"{name}=:{name}" for name in params)) if params else ""
        with self._db("read memories"):
            return self._select(where, params)

    def __iter__(self) -> Iterator[MemoryEntry]:
        return iter(self.entries())

    def categories(self) -> dict[str, int]:
        """Number of entries per category, sorted by category name."""
        with self._db("count categories"):
            rows = self._rows("SELECT category, COUNT(*) FROM memories GROUP BY category ORDER BY category")
            return {cat: n for cat, n in rows}

    def stats(self) -> dict[str, Any]:
        """Counts per category, per error type and per (category, error type), plus total support."""
        entries = self.entries()
        matrix: dict[str, Counter[str]] = {}
        for e in entries:
            matrix.setdefault(e.category, Counter())[e.error_type] += 1
        return {
            "entries": len(entries),
            "total_support": sum(e.support for e in entries),
            "categories": dict(sorted(Counter(e.category for e in entries).items())),
            "error_types": dict(sorted(Counter(e.error_type for e in entries).items())),
            "domains": dict(sorted(Counter(e.domain for e in entries).items())),
            "matrix": {cat: dict(sorted(c.items())) for cat, c in sorted(matrix.items())},
        }

    def provenance_task_ids(self) -> set[str]:
        """Every task id any memory was distilled from (for the build/eval overlap check)."""
        return {tid for e in self.entries() for tid in e.provenance.task_ids}

    def source_agents(self) -> list[str]:
        """The agents whose trajectories the memories were distilled from (both sides of every contrast), sorted."""
        return sorted(
            {a for e in self.entries() for a in [*e.provenance.positive_agents, *e.provenance.negative_agents]}
        )

    def content_hash(self) -> str:
        """Stable hash of what a solver can see: content, category, domain and support of every entry.

        Provenance and created_at are left out: they do not change any prompt,
        so two stores that differ only there give the same run keys.
        """
        payload = sorted(
            [e.id, e.when, e.enforce, e.avoid, e.category, e.error_type, e.domain, e.support] for e in self.entries()
        )
        return stable_hash(payload)

    def export_jsonl(self, path: str | Path) -> int:
        """Write every entry as one JSON line (insertion order); returns the count.

        The store is read before anything is written, so a damaged store leaves no file behind,
        and the lines go to a temporary file renamed over `path`: a failed export (disk full,
        killed) never leaves a truncated JSONL that an import would take for the whole memory.
        An unwritable destination raises OutputError with one line.
        """
        file = Path(path)
        entries = self.entries()
        if file.is_dir():
            raise output_error(file, IsADirectoryError(21, "Is a directory"))
        tmp: Path | None = None
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            candidate = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            tmp = candidate
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for entry in entries:
                    handle.write(entry.model_dump_json() + "\n")
            os.replace(tmp, file)
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise output_error(file, exc) from None
        return len(entries)

    def integrity_ok(self) -> bool:
        """Whether every row reads and parses (a backend with its own check uses that instead)."""
        try:
            self.entries()
        except MemoryStoreError:
            return False
        return True


class OnSQLite:
    """The statements of a store's SQL seam on one sqlite3 connection, shared by threads behind `_lock`."""

    _conn: sqlite3.Connection
    _lock: AbstractContextManager[Any]

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._conn.execute(sql, params or {}).fetchall()

    def _exec(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self._conn.execute(sql, params or {}).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SQLiteMemoryStore(OnSQLite, MemoryStore):
    """MemoryEntry rows in one SQLite file (or ``":memory:"`` for tests).

    One connection shared by all threads behind a lock: SQLite serialises
    writers anyway, and a lock keeps `add` (read candidates, then insert or
    update) atomic within a process. `BEGIN IMMEDIATE` makes it atomic across
    processes writing the same file too, which is why `_lock_category` has
    nothing left to do here.
    """

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        """Open (or, with `create` and not `read_only`, create) the store at `path` (a path or `sqlite:///` URL).

        `read_only=True` never creates and never writes: the file is opened through a
        `mode=ro` URI, and a file that is not a MemCollab store is refused, not initialised.
        """
        self.path = parse_target(path, MemoryStoreError).location
        self.read_only = read_only and self.path != ":memory:"
        in_memory = self.path == ":memory:"
        if not in_memory:
            file = Path(self.path)
            if not file.exists():
                if not create or self.read_only:
                    raise StoreNotFound(
                        f"memory store not found: {file} (build one with `memcollab build-memory` or pass --store)"
                    )
                try:
                    file.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise MemoryStoreError(f"cannot create memory store: {output_error(file, exc)}") from None
            elif file.is_dir():
                raise MemoryStoreError(f"memory store path is a directory: {file}; pass a .sqlite file")
        self._lock = threading.RLock()
        self._vectors = {}
        try:
            self._connect(in_memory)
        except sqlite3.OperationalError as exc:
            if not (self.read_only and "unable to open" in str(exc) and not Path(f"{self.path}-wal").exists()):
                raise MemoryStoreError(f"cannot open memory store {self.path}: {exc}") from None
            # A WAL store in a directory nobody can write (a read-only mount or checkout): SQLite cannot make
            # the shared-memory file a WAL reader needs. With no -wal file there is nothing beyond the main
            # file, and no writer can exist there, so it is read as an immutable file.
            try:
                self._connect(in_memory, immutable=True)
            except sqlite3.DatabaseError as again:
                raise MemoryStoreError(f"cannot open memory store {self.path}: {again}") from None
        except sqlite3.DatabaseError as exc:
            raise MemoryStoreError(f"cannot open memory store {self.path}: {exc}") from None

    def _connect(self, in_memory: bool, immutable: bool = False) -> None:
        """Connect and check the file; the connection is closed again if the check fails."""
        if self.read_only:
            uri = read_only_uri(Path(self.path)) + ("&immutable=1" if immutable else "")
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30.0)
        else:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            self._init_schema(in_memory)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ setup
    def _init_schema(self, in_memory: bool) -> None:
        """Check what the file holds before anything is written; create the schema only in an empty file."""
        conn = self._conn
        tables = user_tables(conn)
        if "schema_version" not in tables:
            if tables:
                raise MemoryStoreError(
                    f"{self.path} is an SQLite file but not a MemCollab memory store; pass another --store path"
                )
            if self.read_only:
                empty = os.path.getsize(self.path) == 0
                raise MemoryStoreError(
                    f"{self.path} is {'an empty file' if empty else 'an empty SQLite database'}, "
                    "not a MemCollab memory store; pass another --store path"
                )
            self._set_write_mode(in_memory)
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-check inside the write lock: another process may have created it meanwhile.
                if not conn.execute("SELECT name FROM sqlite_master WHERE name='schema_version'").fetchone():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(memories)").fetchall()}
        self._check_schema(row[0] if row else None, columns)
        if not self.read_only and "schema_version" in tables:  # a store created above is in write mode already
            self._set_write_mode(in_memory)

    def _set_write_mode(self, in_memory: bool) -> None:
        """WAL (readers never block the writer) with NORMAL sync: a commit survives a killed process."""
        if not in_memory:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")

    def _rollback(self) -> None:
        """Roll back if a transaction is open; SQLite may already have rolled back itself (disk full, corruption)."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    # ------------------------------------------------------------ the SQL seam
    @contextmanager
    def _db(self, action: str, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock (in a `BEGIN IMMEDIATE` transaction with `write`: it takes the file's
        write lock at once, so a read-then-write is atomic across processes); damage found by the query becomes
        one MemoryStoreError line."""
        with self._lock:
            try:
                if not write:
                    yield self._conn
                    return
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.DatabaseError as exc:
                raise MemoryStoreError(f"memory store {self.path}: cannot {action}: {exc}{_hint(exc)}") from exc

    # ------------------------------------------------------------- lifecycle
    def integrity_ok(self) -> bool:
        """SQLite's own integrity check, for tests and `memory stats`; a file too damaged to check is not ok."""
        with self._lock:
            try:
                return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            except sqlite3.DatabaseError:
                return False


__all__ = ["SCHEMA_VERSION", "MemoryStore", "SQLiteMemoryStore", "StoreNotFound", "merge_provenance"]


def read_memory_jsonl(path: str | Path) -> list[MemoryEntry]:
    """The entries of a memory JSONL (`export_jsonl`'s format), each with an id (its content key when the line
    has none). One reader for every consumer, so a malformed file fails with the same one-line message (the
    file, the line and the first invalid field) wherever it is read."""
    file = Path(path)
    if not file.is_file():
        raise MemoryStoreError(f"memory file not found: {file}")
    entries: list[MemoryEntry] = []
    try:
        with file.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    entry = MemoryEntry.model_validate_json(line)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first.get("loc", ())) or "line"
                    raise MemoryStoreError(
                        f"{file}:{lineno}: not a memory entry ({where}: {first.get('msg', 'invalid')})"
                    ) from None
                entries.append(entry.model_copy(update={"id": entry.id or entry.content_key()}))
    except UnicodeDecodeError:
        raise MemoryStoreError(f"{file}: not UTF-8 text; is it a `memcollab memory export` file?") from None
    except OSError as exc:
        raise MemoryStoreError(f"cannot read {file}: {exc.strerror or exc}") from None
    return entries
