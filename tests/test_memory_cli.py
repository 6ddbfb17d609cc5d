"""`memcollab memory ...`: one-line errors via the real console script, happy paths via CliRunner."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memcollab.cli.memory import memory_app
from memcollab.memory import MemoryStore
from memcollab.records import MemoryEntry, Provenance

runner = CliRunner()


def run_cli(*args: str, cwd: Path, columns: int | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("memcollab")
    if exe is None:
        pytest.fail("console script `memcollab` not on PATH; run `pip install -e . --no-deps`")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("MEMCOLLAB_STORE", None)
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def store_path(tmp_path) -> Path:
    path = tmp_path / "mem.sqlite"
    with MemoryStore(path) as store:
        store.add(
            MemoryEntry(
                when="solving a quadratic equation",
                enforce="check each root",
                avoid="losing a negative root",
                category="algebra",
                error_type="sign_error",
                domain="math",
                provenance=Provenance(task_ids=["math500/12"], positive_agents=["qwen"], negative_agents=["smol"]),
            )
        )
        store.add(
            MemoryEntry(
                when="slicing strings",
                enforce="use s[-1]",
                avoid="s[len(s)]",
                category="strings",
                error_type="off_by_one",
                domain="code",
            )
        )
    return path


def test_read_commands_refuse_a_missing_store(tmp_path):
    for args in (["list"], ["stats"], ["show", "m-x"], ["export", "out.jsonl"]):
        proc = run_cli("memory", *args, "--store", "absent.sqlite", cwd=tmp_path)
        assert_one_line_error(proc, "absent.sqlite", "not found")
    assert not (tmp_path / "absent.sqlite").exists()
    assert not (tmp_path / "out.jsonl").exists()


def test_default_store_path_is_runs_memory_sqlite(tmp_path):
    assert_one_line_error(run_cli("memory", "list", cwd=tmp_path), "runs/memory.sqlite")
    assert not (tmp_path / "runs").exists()


def test_unknown_id_schema_mismatch_and_malformed_import(tmp_path, store_path):
    assert_one_line_error(run_cli("memory", "show", "m-nope", "--store", str(store_path), cwd=tmp_path), "m-nope")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"when": "w", "enforce": "e", "avoid": "a", "category": "c", "error_type": "t"}\nnot json\n')
    proc = run_cli("memory", "import", str(bad), "--store", str(store_path), cwd=tmp_path)
    assert_one_line_error(proc, "bad.jsonl:2:")
    into_new = run_cli("memory", "import", str(bad), "--store", "fresh.sqlite", cwd=tmp_path)
    assert_one_line_error(into_new, "bad.jsonl:2: not a memory entry")
    assert not (tmp_path / "fresh.sqlite").exists(), "a bad file is read before any store is created"

    missing = run_cli("memory", "import", "nope.jsonl", "--store", "new.sqlite", cwd=tmp_path)
    assert_one_line_error(missing, "nope.jsonl")
    assert not (tmp_path / "new.sqlite").exists()

    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE schema_version SET version = 7")
    assert_one_line_error(run_cli("memory", "stats", "--store", str(store_path), cwd=tmp_path), "schema version 7")


def test_console_script_lists_entries(tmp_path, store_path):
    proc = run_cli("memory", "list", "--store", str(store_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "algebra" in proc.stdout and "strings" in proc.stdout and "sign_error" in proc.stdout
    with MemoryStore(store_path) as store:
        rows = [(e.id, e.text[:60]) for e in store.entries()]
    lines = proc.stdout.splitlines()
    assert all(any(i in line and text in line for line in lines) for i, text in rows), (
        "a pipe is not an 80-column terminal: each entry's row stays on one line"
    )
    narrow = run_cli("memory", "list", "--store", str(store_path), cwd=tmp_path, columns=60).stdout.splitlines()
    assert max(map(len, narrow)) <= 60 < max(map(len, lines)), "an explicit COLUMNS still wins"


def test_list_show_stats(store_path, tmp_path):
    result = runner.invoke(memory_app, ["list", "--store", str(store_path), "--category", "algebra"])
    assert result.exit_code == 0, result.output
    assert "algebra" in result.output and "strings" not in result.output

    result = runner.invoke(memory_app, ["list", "--store", str(store_path), "--limit", "1"])
    assert result.exit_code == 0 and "showing 1 of 2" in result.output

    with MemoryStore(store_path) as store:
        entry_id = store.entries(category="algebra")[0].id
    result = runner.invoke(memory_app, ["show", entry_id, "--store", str(store_path)])
    assert result.exit_code == 0, result.output
    for text in ("math500/12", "qwen", "smol", "check each root", "sign_error"):
        assert text in result.output

    result = runner.invoke(memory_app, ["show", entry_id, "--store", str(store_path), "--json"])
    assert json.loads(result.output)["provenance"]["task_ids"] == ["math500/12"]

    png = tmp_path / "heat.png"
    result = runner.invoke(memory_app, ["stats", "--store", str(store_path), "--heatmap", str(png)])
    assert result.exit_code == 0, result.output
    assert "off_by_one" in result.output and "sign_error" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_export_then_import_round_trips(store_path, tmp_path):
    out = tmp_path / "dump.jsonl"
    result = runner.invoke(memory_app, ["export", str(out), "--store", str(store_path)])
    assert result.exit_code == 0 and "exported 2" in result.output
    copy = tmp_path / "copy" / "mem.sqlite"
    result = runner.invoke(memory_app, ["import", str(out), "--store", str(copy)])
    assert result.exit_code == 0 and "2 added, 0 merged" in result.output
    with MemoryStore(copy) as imported, MemoryStore(store_path) as original:
        assert imported.entries() == original.entries()


# ------------------------------------------------------------------ read commands never write


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


READ_COMMANDS = (["stats"], ["list"], ["export", "out.jsonl"])


def test_read_commands_leave_an_empty_file_empty(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    for args in READ_COMMANDS:
        proc = run_cli("memory", *args, "--store", str(empty), cwd=tmp_path)
        assert_one_line_error(proc, "empty.sqlite", "not a MemCollab memory store")
    assert empty.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]  # no schema, no -wal, no export


def test_read_commands_and_import_leave_a_foreign_database_alone(tmp_path):
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    before = sha(foreign)
    dump = tmp_path / "in.jsonl"
    one = MemoryEntry(when="w", enforce="e", avoid="a", category="c", error_type="t")
    dump.write_text(one.model_dump_json() + "\n")
    for args in (*READ_COMMANDS, ["import", str(dump)]):
        proc = run_cli("memory", *args, "--store", str(foreign), cwd=tmp_path)
        assert_one_line_error(proc, "not a MemCollab memory store")
        assert sha(foreign) == before, args  # not switched to WAL, no tables added
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_read_commands_read_a_delete_mode_store_without_switching_it(tmp_path, store_path):
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    entry_id = conn.execute("SELECT id FROM memories ORDER BY rowid").fetchone()[0]
    conn.close()
    before = sha(store_path)
    for args in (*READ_COMMANDS, ["show", entry_id]):
        proc = run_cli("memory", *args, "--store", str(store_path), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert sha(store_path) == before, args
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    assert not any(p.name.startswith("mem.sqlite-") for p in tmp_path.iterdir())  # no -wal / -shm either
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
