"""Keyed, persisted results: every trajectory, classification and distillation is saved the moment it exists.

A record's key hashes everything that determines it (task, agent config, program,
settings, memory content), so a rerun finds what it already did and resumes, and a
change to any of those makes a new key instead of reusing a stale result.

`ResultStore(target)` opens the backend its target names, like the memory store: an
SQLite file (a path or `sqlite:///path`, the default) or a PostgreSQL database
(`postgresql://user@host:port/db`) that workers on several machines share. A put is
one `INSERT ... ON CONFLICT (key) DO UPDATE`: the primary key, not a Python lock,
keeps one row per key however many processes write it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from memcollab.errors import ResultStoreError, output_error
from memcollab.memory.backends import backend_class, parse_target
from memcollab.memory.store import OnSQLite, user_tables
from memcollab.records import stable_hash, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    task_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, agent);
"""

_COLUMNS = ("key", "kind", "task_id", "agent", "payload", "created_at")
_PUT = (
    f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)}) "
    f"ON CONFLICT (key) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}"
)
_HINT = "delete it (its results are recomputed) or pass another --run-dir"


def record_key(kind: str, task_id: str, agent: Any, program: str, settings: dict, memory_hash: str = "") -> str:
    """RunRecord key = hash(kind, task, agent config, program, settings, memory content)."""
    return stable_hash([kind, task_id, agent, program, settings, memory_hash], 24)


class ResultStore:
    """JSON payloads by key; safe to write from many threads and, by key, from many processes.

    `ResultStore(target)` returns the backend `target` names (`SQLiteResultStore` for a
    path, `PostgresResultStore` for a postgresql:// URL). `put` commits before it returns:
    a result is kept the moment it exists and survives a killed run. A backend supplies
    `_db` (its failures as one ResultStoreError line), `_rows` and `_exec`.
    """

    path: Path | None
    _where: str

    def __new__(cls, path: str | Path, *args: Any, **kwargs: Any) -> ResultStore:
        if cls is ResultStore:
            cls = backend_class(path, ResultStoreError, SQLiteResultStore, "PostgresResultStore")
        return super().__new__(cls)

    # ------------------------------------------------------------ the SQL seam
    def _db(self, action: str) -> AbstractContextManager[object]:
        """A transaction for `action`; a database failure in it is one ResultStoreError line."""
        raise NotImplementedError

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        raise NotImplementedError

    def _exec(self, sql: str, params: dict[str, Any] | None = None) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _check_columns(self, columns: set[str]) -> None:
        """Refuse a records table that lacks columns: someone else's, or damaged."""
        missing = [name for name in _COLUMNS if name not in columns]
        if missing:
            raise ResultStoreError(
                f"results file {self._where} is damaged: its records table has no column(s) "
                f"{', '.join(missing)}; {_HINT}"
            )

    # ------------------------------------------------------------------ API
    def get(self, key: str) -> dict | None:
        with self._db("read a result"):
            rows = self._rows("SELECT payload FROM records WHERE key = :key", {"key": key})
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except (TypeError, ValueError):
            raise ResultStoreError(
                f"results file {self._where} is damaged: the result under key {key} is not JSON; {_HINT}"
            ) from None

    def made_at(self, key: str) -> str | None:
        """When the result under `key` was stored (UTC, ISO 8601): what a resumed build dates its output by."""
        with self._db("read a result"):
            rows = self._rows("SELECT created_at FROM records WHERE key = :key", {"key": key})
        return str(rows[0][0]) if rows else None

    def put(self, key: str, kind: str, task_id: str, agent: str, payload: dict) -> None:
        row = {"key": key, "kind": kind, "task_id": task_id, "agent": agent}
        row.update(payload=json.dumps(payload, default=str), created_at=utc_now())
        with self._db("store a result"):
            self._exec(_PUT, row)

    def payloads(self, kind: str) -> list[tuple[str, dict]]:
        """Every (key, payload) of one kind, in key order: what a check over the whole store reads."""
        with self._db("read results"):
            rows = self._rows("SELECT key, payload FROM records WHERE kind = :kind ORDER BY key", {"kind": kind})
        try:
            return [(str(key), json.loads(payload)) for key, payload in rows]
        except (TypeError, ValueError):
            raise ResultStoreError(
                f"results file {self._where} is damaged: a {kind} result is not JSON; {_HINT}"
            ) from None

    def count(self, kind: str | None = None) -> int:
        with self._db("count results"):
            if kind is None:
                return self._rows("SELECT COUNT(*) FROM records")[0][0]
            return self._rows("SELECT COUNT(*) FROM records WHERE kind = :kind", {"kind": kind})[0][0]

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteResultStore(OnSQLite, ResultStore):
    """A SQLite file of JSON payloads (autocommit, WAL).

    The file is checked before anything is written to it: another program's database is
    refused, not given a `records` table, and a damaged file or row raises ResultStoreError
    with one line instead of a traceback mid-run.
    """

    def __init__(self, path: str | Path) -> None:
        location = parse_target(path, ResultStoreError).location
        self.path = Path(location) if location != ":memory:" else None
        self._where = location
        if self.path is not None:
            if self.path.is_dir():
                raise ResultStoreError(f"results file {location} is a directory; {_HINT}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ResultStoreError(f"cannot create results file: {output_error(self.path, exc)}") from None
        try:
            self._conn = sqlite3.connect(location, check_same_thread=False, isolation_level=None, timeout=30.0)
        except sqlite3.DatabaseError as exc:
            raise ResultStoreError(f"cannot open results file {location}: {exc}") from None
        try:
            self._init_schema()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise ResultStoreError(f"cannot open results file {location}: {exc}; {_HINT}") from None
            raise
        self._lock = threading.Lock()

    def _init_schema(self) -> None:
        tables = user_tables(self._conn)
        if tables and "records" not in tables:
            raise ResultStoreError(
                f"{self._where} is an SQLite file but not a MemCollab results file; pass another --run-dir"
            )
        if "records" in tables:
            self._check_columns({row[1] for row in self._conn.execute("PRAGMA table_info(records)").fetchall()})
        if self.path is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)

    @contextmanager
    def _db(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; an SQLite failure becomes one ResultStoreError line."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise ResultStoreError(f"results file {self._where}: cannot {action}: {exc}") from exc


__all__ = ["SCHEMA", "ResultStore", "SQLiteResultStore", "record_key"]
