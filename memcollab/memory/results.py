"""Keyed, persisted results: every trajectory, classification and distillation is saved the moment it exists.

A record's key hashes everything that determines it (task, agent config, program,
settings, memory content), so a rerun finds what it already did and resumes, and a
change to any of those makes a new key instead of reusing a stale result.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memcollab.errors import ResultStoreError, output_error
from memcollab.memory.store import user_tables
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
_HINT = "delete it (its results are recomputed) or pass another --run-dir"


def record_key(kind: str, task_id: str, agent: Any, program: str, settings: dict, memory_hash: str = "") -> str:
    """RunRecord key = hash(kind, task, agent config, program, settings, memory content)."""
    return stable_hash([kind, task_id, agent, program, settings, memory_hash], 24)


class ResultStore:
    """A SQLite file of JSON payloads by key; safe to write from many threads.

    `put` commits before it returns (autocommit, WAL): a result is kept the moment it
    exists and survives a killed run. The file is checked before anything is written to
    it: another program's database is refused, not given a `records` table, and a damaged
    file or row raises ResultStoreError with one line instead of a traceback mid-run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        self._where = str(path)
        if self.path is not None:
            if self.path.is_dir():
                raise ResultStoreError(f"results file {path} is a directory; {_HINT}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ResultStoreError(f"cannot create results file: {output_error(self.path, exc)}") from None
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        except sqlite3.DatabaseError as exc:
            raise ResultStoreError(f"cannot open results file {path}: {exc}") from None
        try:
            self._init_schema()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise ResultStoreError(f"cannot open results file {path}: {exc}; {_HINT}") from None
            raise
        self._lock = threading.Lock()

    def _init_schema(self) -> None:
        tables = user_tables(self._conn)
        if tables and "records" not in tables:
            raise ResultStoreError(
                f"{self._where} is an SQLite file but not a MemCollab results file; pass another --run-dir"
            )
        if "records" in tables:
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(records)").fetchall()}
            missing = [name for name in _COLUMNS if name not in columns]
            if missing:
                raise ResultStoreError(
                    f"results file {self._where} is damaged: its records table has no column(s) "
                    f"{', '.join(missing)}; {_HINT}"
                )
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

    def get(self, key: str) -> dict | None:
        with self._db("read a result") as conn:
            row = conn.execute("SELECT payload FROM records WHERE key = ?", (key,)).fetchone()
        if not row:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError):
            raise ResultStoreError(
                f"results file {self._where} is damaged: the result under key {key} is not JSON; {_HINT}"
            ) from None

    def put(self, key: str, kind: str, task_id: str, agent: str, payload: dict) -> None:
        blob = json.dumps(payload, default=str)
        with self._db("store a result") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO records(key, kind, task_id, agent, payload, created_at) VALUES (?,?,?,?,?,?)",
                (key, kind, task_id, agent, blob, utc_now()),
            )

    def count(self, kind: str | None = None) -> int:
        with self._db("count results") as conn:
            if kind is None:
                return conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            return conn.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
