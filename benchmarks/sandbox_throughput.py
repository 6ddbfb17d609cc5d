"""Sandbox throughput with isolation on (bubblewrap) and off (the in-process guard only), as ratios from one run.

Usage: python benchmarks/sandbox_throughput.py [--workers N] [--rounds R] [--limit N] [--data-dir DIR]

Programs: the HumanEval canonical solutions with their tests (164), or, without the data, 100 small
synthetic programs. Both modes run the same programs through the same pool, interleaved round by round
(the order flips every round) so that load from anything else on the machine falls on both alike;
the ratios are of the median round of each mode. "bwrap" is what runs by default as root (a warm sandbox
per worker, a fresh uid per program); "bwrap-cold" starts fresh namespaces for every program (warm=False).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from memcollab.grading.code import prepare, verdict_from_result
from memcollab.grading.sandbox import SandboxLimits, SandboxPool, isolation_mode

MODES = ("bwrap", "bwrap-cold", "guard")
LABELS = {
    "bwrap": "isolation on (bwrap, warm)",
    "bwrap-cold": "isolation on (bwrap, cold)",
    "guard": "isolation off (guard)",
}


def _programs(data_dir: str | None, limit: int | None) -> tuple[str, list[str], list[str]]:
    """(description, programs, sentinels); a sentinel is '' where passing means exit status 0."""
    try:
        from memcollab.benchmarks import load_tasks

        tasks = load_tasks("humaneval", data_dir=data_dir)
    except Exception as exc:  # no data here: synthetic programs of about the same size and run time
        print(f"(HumanEval not available: {type(exc).__name__}; using synthetic programs)")
        programs = [
            f"def f(n):\n    return sum(i * i for i in range(n))\n\nassert f({i}) == {sum(j * j for j in range(i))}\n"
            for i in range(100)
        ]
        return "synthetic programs", programs[:limit], [""] * len(programs[:limit])
    prepared = [prepare(t, t.solution) for t in tasks][:limit]
    return "HumanEval canonical solutions + tests", [p.program for p in prepared], [p.sentinel for p in prepared]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N programs")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    what, programs, sentinels = _programs(args.data_dir, args.limit)
    limits = {
        mode: SandboxLimits(wall_s=30.0, cpu_s=20.0, isolation=mode.split("-")[0], warm=mode != "bwrap-cold")
        for mode in MODES
    }
    for mode in MODES:
        isolation_mode(limits[mode].isolation)  # probe before timing; raises if bubblewrap is unavailable
    pool = SandboxPool(workers=args.workers)

    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    passed: dict[str, int] = {}
    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else tuple(reversed(MODES)):
            start = time.perf_counter()
            results = pool.run_many(programs, limits[mode])
            seconds[mode].append(time.perf_counter() - start)
            passed[mode] = sum(
                verdict_from_result(r, s, limits[mode]).correct if s else r.status == "ok"
                for r, s in zip(results, sentinels)
            )

    n = len(programs)
    print(f"programs: {n} ({what}), cpu_count: {os.cpu_count()}, workers: {args.workers}, rounds: {args.rounds}")
    rate = {}
    for mode in MODES:
        median = statistics.median(seconds[mode])
        rate[mode] = n / median
        rounds = ", ".join(f"{s:.2f}" for s in seconds[mode])
        print(
            f"{LABELS[mode]:27}: {rate[mode]:6.1f} programs/s  (median {median:.2f} s; rounds {rounds} s; "
            f"{passed[mode]}/{n} passed)"
        )
    for mode in ("bwrap", "bwrap-cold"):
        print(f"ratio {mode + ' / guard':21}: {rate[mode] / rate['guard']:.3f}  (target: at least 0.9)")


if __name__ == "__main__":
    main()
