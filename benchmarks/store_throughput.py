"""Store throughput: how many results and memory entries per second the run store and the memory store take,
SQLite (one file) against PostgreSQL (a real server on 127.0.0.1), from 1 and from 4 writer processes.

The question behind it (docs/scaling.md): when many workers solve tasks at once, when does the store become
the bottleneck instead of the LM? Each writer process opens its own store and writes `--n` records: result
records (one `put` per solved task, the grid's per-task write) and memory entries (`add` with near-duplicate
folding, the build's per-constraint write, entries of 8 categories). Ratios are against SQLite with one writer,
measured in the same run.

Usage: python benchmarks/store_throughput.py [--n 400] [--json results/benchmarks/store_throughput.json]
PostgreSQL needs Debian's `postgresql` package and psycopg (`pip install 'memcollab[scale]'`); without them
only the SQLite rows are measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PostgreSQL server helper the tests use

CATEGORIES = [f"category_{i}" for i in range(8)]


def _entry(writer: int, i: int) -> Any:
    from memcollab.records import MemoryEntry, Provenance

    return MemoryEntry(
        when=f"when a word problem of kind {i % 8} mentions quantity q{writer}_{i} and a rate",
        enforce=f"compute the total for item {writer}-{i} step by step and check the units of every product",
        avoid=f"adding quantities of unit u{i} to quantities of another unit without converting them first",
        category=CATEGORIES[i % len(CATEGORIES)],
        error_type="wrong_answer",
        provenance=Provenance(
            task_ids=[f"gsm8k/train/{writer}-{i}"], positive_agents=["strong"], negative_agents=["weak"]
        ),
    )


def _write(kind: str, target: str, writer: int, n: int, start: Any, out: Any) -> None:
    from memcollab.memory.results import ResultStore
    from memcollab.memory.store import MemoryStore

    store = ResultStore(target) if kind == "results" else MemoryStore(target)
    start.wait()
    began = time.perf_counter()
    for i in range(n):
        if kind == "results":
            payload = {"correct": i % 3 == 0, "text": "x" * 600, "tokens": 400}
            store.put(f"w{writer}-{i}", "trajectory", f"gsm8k/test/{i}", "weak", payload)
        else:
            store.add(_entry(writer, i))
    out.put(time.perf_counter() - began)
    store.close()


def measure(kind: str, target: str, writers: int, n: int) -> dict[str, Any]:
    """Records per second written by `writers` processes at once (wall time of the slowest)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=_write, args=(kind, target, w, n, start, out)) for w in range(writers)]
    for proc in procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - began
    return {
        "kind": kind,
        "writers": writers,
        "records": writers * n,
        "wall_s": round(wall, 3),
        "per_s": round(writers * n / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="records per writer process")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "benchmarks" / "store_throughput.json")
    args = parser.parse_args()

    import postgres_server

    server, reason = postgres_server.start()
    if server is None:
        print(f"PostgreSQL rows skipped: {reason}")
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ("results", "memory"):
                for writers in (1, 4):
                    targets = {"sqlite": str(Path(tmp) / f"{kind}-{writers}.sqlite")}
                    if server is not None:
                        targets["postgresql"] = server.create_database()
                    for backend, target in targets.items():
                        rows.append({"backend": backend, **measure(kind, target, writers, args.n)})
    finally:
        if server is not None:
            server.stop()
    base = {r["kind"]: r["per_s"] for r in rows if r["backend"] == "sqlite" and r["writers"] == 1}
    print(f"{'store':8} {'backend':11} {'writers':>7} {'records/s':>10} {'ratio':>6}")
    for row in rows:
        row["ratio"] = round(row["per_s"] / base[row["kind"]], 2)
        print(f"{row['kind']:8} {row['backend']:11} {row['writers']:>7} {row['per_s']:>10.1f} {row['ratio']:>6.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"n_per_writer": args.n, "cpus": mp.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"rows: {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")


if __name__ == "__main__":
    main()
