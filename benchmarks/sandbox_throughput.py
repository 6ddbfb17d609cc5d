"""Sandbox throughput: all 164 HumanEval canonical solutions (with their tests), pool vs sequential.

Usage: python benchmarks/sandbox_throughput.py [--workers N] [--data-dir DIR]
Both measurements run in the same process, one after the other, on the same programs.
"""

from __future__ import annotations

import argparse
import os
import time

from memcollab.benchmarks.loaders import load_tasks
from memcollab.grading.code import prepare, verdict_from_result
from memcollab.grading.sandbox import SandboxLimits, SandboxPool, run_program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    limits = SandboxLimits(wall_s=30.0, cpu_s=20.0)
    tasks = load_tasks("humaneval", data_dir=args.data_dir)
    prepared = [prepare(t, t.solution) for t in tasks]
    programs = [p.program for p in prepared]

    start = time.perf_counter()
    pooled = SandboxPool(workers=args.workers, limits=limits).run_many(programs)
    pool_s = time.perf_counter() - start

    start = time.perf_counter()
    sequential = [run_program(code, limits) for code in programs]
    seq_s = time.perf_counter() - start

    def passed(results) -> int:
        return sum(verdict_from_result(r, p.sentinel, limits).correct for r, p in zip(results, prepared))

    n = len(programs)
    print(f"programs: {n} (HumanEval canonical solutions + tests), cpu_count: {os.cpu_count()}, workers: {args.workers}")
    print(f"pool       : {n / pool_s:6.1f} programs/s  ({pool_s:.2f} s, {passed(pooled)}/{n} passed)")
    print(f"sequential : {n / seq_s:6.1f} programs/s  ({seq_s:.2f} s, {passed(sequential)}/{n} passed)")
    print(f"speed-up   : {seq_s / pool_s:.2f}x")


if __name__ == "__main__":
    main()
