"""Keyed, persisted results: every trajectory, classification and distillation is saved the moment it exists.

A record's key hashes everything that determines it (task, agent config, program,
settings, memory content), so a rerun finds what it already did and resumes, and a
change to any of those makes a new key instead of reusing a stale result.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from memcollab.errors import MemCollabError
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


def record_key(kind: str, task_id: str, agent: Any, program: str, settings: dict, memory_hash: str = "") -> str:
    """RunRecord key = hash(kind, task, agent config, program, settings, memory content)."""
    return stable_hash([kind, task_id, agent, program, settings, memory_hash], 24)


class ResultStore:
    """A SQLite file of JSON payloads by key; safe to write from many threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise MemCollabError(f"cannot open results file {path}: {exc}") from None
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT payload FROM records WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, kind: str, task_id: str, agent: str, payload: dict) -> None:
        blob = json.dumps(payload, default=str)
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO records(key, kind, task_id, agent, payload, created_at) VALUES (?,?,?,?,?,?)",
                (key, kind, task_id, agent, blob, utc_now()),
            )

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            return self._conn.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
