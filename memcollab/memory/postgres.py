"""The memory and run stores in PostgreSQL, for builders on several machines (`pip install 'memcollab[scale]'`).

Imported only when a store's target is a ``postgresql://`` URL: SQLAlchemy Core over
the psycopg 3 driver, one pooled connection per thread, every call one transaction
(READ COMMITTED, PostgreSQL's default). The store logic is `MemoryStore`'s and
`ResultStore`'s own; this module supplies their SQL seam, the schema, and the locks:

* uniqueness is the primary key's: an entry id hashes its content and a result is
  keyed by its record key, and inserts are `ON CONFLICT`, so concurrent writers of the
  same thing make one row; no Python lock could see another machine's writes;
* near-duplicate folding reads a whole category, then inserts: two writers of two
  paraphrases would each miss the other's uncommitted row and both insert. An
  advisory transaction lock per category (`pg_advisory_xact_lock`) serialises the
  writers of one category, in every process on every machine, and is released at
  commit or rollback, also when the writer's connection dies. `SELECT ... FOR UPDATE`
  cannot do this: it locks rows that exist, not the row a rival is about to insert.
  Under READ COMMITTED each statement after the lock sees what the previous holder
  committed. Merges re-read their row `FOR UPDATE`, so support is never summed twice.

A URL's ``?schema=NAME`` puts the store in that schema of the database (a run keeps its results and
each memory apart in one database): every connection starts with ``search_path`` set to it, so the
stores' SQL stays unqualified; a writer creates the schema if it is missing, a reader never does. The
advisory locks are database-wide, so their names carry the schema: stores in two schemas never wait
for each other.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memcollab.errors import MemCollabError, MemoryStoreError, ResultStoreError
from memcollab.memory.backends import SCALE_HINT, SCHEMA_NAME, parse_target
from memcollab.memory.results import SCHEMA as RESULTS_SCHEMA
from memcollab.memory.results import ResultStore
from memcollab.memory.store import _SCHEMA as _SQLITE_MEMORY_SCHEMA
from memcollab.memory.store import SCHEMA_VERSION, MemoryStore, StoreNotFound


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


#: The file store's tables (their SQL is PostgreSQL's too), plus `seq`: it orders rows as they were
#: inserted, what SQLite's rowid does for the file.
_MEMORY_SCHEMA = [
    *_statements(_SQLITE_MEMORY_SCHEMA),
    "ALTER TABLE memories ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE",
]


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for `name`, the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(f"memcollab:{name}".encode()).digest()[:8], "big", signed=True)


def _one_line(exc: BaseException) -> str:
    """The driver's own first line (SQLAlchemy's wrapper adds the SQL and a link over several lines)."""
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__


class PostgresDatabase:
    """One PostgreSQL database through a SQLAlchemy engine: per-thread transactions, failures as one line."""

    def __init__(self, url: str, error: type[MemCollabError], what: str, read_only: bool = False) -> None:
        self.error, self.what, self.read_only = error, what, read_only
        try:
            import sqlalchemy
            import sqlalchemy.exc
        except ImportError:
            raise error(f"a PostgreSQL {what} needs SQLAlchemy and psycopg, not installed here: {SCALE_HINT}") from None
        try:
            import psycopg  # noqa: F401  # imported here so that its absence is one line, not SQLAlchemy's traceback
        except ImportError:
            raise error(f"a PostgreSQL {what} needs psycopg 3, not installed here: {SCALE_HINT}") from None
        try:
            parsed = sqlalchemy.make_url(url)
            parsed.port  # noqa: B018  # a port that is not a number fails here, not at connect
        except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
            shown = re.sub(r":[^:@/]*@", ":***@", url.replace("postgresql+psycopg://", "postgresql://", 1))
            raise error(f"bad {what} URL {shown}: {exc}") from None
        self.where = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
        if not parsed.database:
            raise error(f"bad {what} URL {self.where}: name a database, e.g. postgresql://user@host:5432/memcollab")
        schema = parsed.query.get("schema")
        if schema is not None and (not isinstance(schema, str) or not SCHEMA_NAME.match(schema)):
            raise error(
                f"bad {what} URL {self.where}: schema must be one name of lower-case letters, digits and _ "
                "(at most 63, not pg_...)"
            )
        self.schema: str | None = schema
        parsed = parsed.difference_update_query(["schema"])  # not a connection option: psycopg would refuse it
        connect_args: dict[str, Any] = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
        if schema is not None:  # every pooled connection starts in the schema (the SQL stays unqualified)
            options = parsed.query.get("options", "")
            connect_args["options"] = f"{options} -c search_path={schema}".strip()
            parsed = parsed.difference_update_query(["options"])
        self._text = sqlalchemy.text
        self._errors = sqlalchemy.exc.SQLAlchemyError
        self._local = threading.local()
        self.engine = sqlalchemy.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        try:
            with self.engine.connect():
                pass
        except self._errors as exc:
            self.engine.dispose()
            raise error(
                f"cannot open {what} {self.where}: {_one_line(exc)} (is the server up and the URL right?)"
            ) from None

    @contextmanager
    def transaction(self, action: str) -> Iterator[Any]:
        """This thread's transaction (a nested call joins it); commit at the end, rollback on any exception."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        try:
            with self.engine.begin() as conn:
                if self.read_only:
                    conn.execute(self._text("SET TRANSACTION READ ONLY"))
                self._local.conn = conn
                try:
                    yield conn
                finally:
                    self._local.conn = None
        except self._errors as exc:
            raise self.error(f"{self.what} {self.where}: cannot {action}: {_one_line(exc)}") from exc

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return [tuple(row) for row in self._local.conn.execute(self._text(sql), params or {})]

    def exec(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self._local.conn.execute(self._text(sql), params or {}).rowcount

    def lock(self, name: str) -> None:
        """Hold the advisory lock `name` of this schema until this transaction ends (in every process, on every
        machine)."""
        self.exec("SELECT pg_advisory_xact_lock(:key)", {"key": _lock_key(f"{self.schema or ''}/{name}")})

    def ensure_schema(self) -> None:
        """Create the URL's schema if it is missing (under a lock: concurrent IF NOT EXISTS can still collide)."""
        if self.schema is not None:
            self.lock("create schema")
            self.exec(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def columns(self, table: str) -> set[str]:
        """Column names of `table` in the connection's current schema (empty if there is no such table)."""
        sql = "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = :t"
        return {row[0] for row in self.rows(sql, {"t": table})}

    def create_once(self, table: str, statements: list[str], check: Callable[[], None] | None = None) -> bool:
        """Run `statements` unless `table` exists; under a lock, so racing processes create it once. True if run.

        `check` runs under the lock just before creating: a refusal based on what it reads cannot mistake
        another process's store, committed between two unlocked reads, for a foreign table.
        """
        self.lock(f"schema/{table}")
        if self.columns(table):  # re-check under the lock: another process may have created it meanwhile
            return False
        if check is not None:
            check()
        for statement in statements:
            self.exec(statement)
        return True

    def dispose(self) -> None:
        self.engine.dispose()


def check_server(url: str, error: type[MemCollabError]) -> None:
    """Connect to `url` once and write nothing: an unreachable server or a bad URL fails a run before it starts."""
    PostgresDatabase(url, error, "store database", read_only=True).dispose()


class _OnPostgres:
    """The SQL seam of a store, on a `PostgresDatabase` in `self._pg`."""

    _pg: PostgresDatabase

    def _db(self, action: str, write: bool = False) -> Any:
        return self._pg.transaction(action)

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self._pg.rows(sql, params)

    def _exec(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self._pg.exec(sql, params)

    def close(self) -> None:
        self._pg.dispose()


class PostgresMemoryStore(_OnPostgres, MemoryStore):
    """The memory store in a PostgreSQL database (the tables `schema_version` and `memories`)."""

    _ORDER = "seq"
    _FOR_UPDATE = " FOR UPDATE"

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        """Open the store at a postgresql:// URL; with `create` (and not `read_only`) make its tables if missing.

        `read_only=True` runs every transaction READ ONLY: the server refuses any write.
        """
        url = parse_target(path, MemoryStoreError).location
        self._pg = PostgresDatabase(url, MemoryStoreError, "memory store", read_only=read_only)
        self.path, self.read_only, self._vectors = self._pg.where, read_only, {}
        try:
            with self._db("open the memory store"):
                self._init_schema(create and not read_only)
        except BaseException:
            self._pg.dispose()
            raise

    def _init_schema(self, create: bool) -> None:
        if create:
            self._pg.ensure_schema()
        if not self._pg.columns("schema_version"):
            if not create:
                raise StoreNotFound(
                    f"memory store not found: {self.path} has no MemCollab memory tables "
                    "(build one with `memcollab build-memory` or pass --store)"
                )
            if self._pg.create_once("schema_version", _MEMORY_SCHEMA, check=self._refuse_foreign_memories):
                self._exec("INSERT INTO schema_version (version) VALUES (:v)", {"v": SCHEMA_VERSION})
        rows = self._rows("SELECT version FROM schema_version")
        self._check_schema(rows[0][0] if rows else None, self._pg.columns("memories"))

    def _refuse_foreign_memories(self) -> None:
        """Refuse another program's `memories` table rather than alter it (called under the creation lock)."""
        if self._pg.columns("memories"):
            raise MemoryStoreError(
                f"{self.path} has a memories table but no schema_version: not a MemCollab memory store; "
                "pass another --store URL (or a database of its own)"
            )

    def _lock_category(self, category: str) -> None:
        self._pg.lock(f"memories/{category}")


class PostgresResultStore(_OnPostgres, ResultStore):
    """The run's results in a PostgreSQL database (the table `records`)."""

    def __init__(self, path: str | Path) -> None:
        url = parse_target(path, ResultStoreError).location
        self._pg = PostgresDatabase(url, ResultStoreError, "results database")
        self.path, self._where = None, self._pg.where
        try:
            with self._db("open the results"):
                self._pg.ensure_schema()
                if not self._pg.create_once("records", _statements(RESULTS_SCHEMA)):
                    self._check_columns(self._pg.columns("records"))
        except BaseException:
            self._pg.dispose()
            raise


__all__ = ["PostgresDatabase", "PostgresMemoryStore", "PostgresResultStore", "check_server"]
