"""Local serving throughput and determinism: in-process llama-cpp-python vs llama-server slots.

For each embedded model:
  * baseline: single-stream generation tokens/s through llama-cpp-python in-process;
  * server: aggregate generation tokens/s at 1, 4, 8, 16 slots with as many
    concurrent OpenAI-compatible requests, reported as a ratio to the baseline;
  * determinism: the first GSM8K test tasks at temperature 0, sequential
    (1 slot) vs batched (8 slots): agreement of final answers and accuracy.

Tokens/s = completion tokens / wall time of the whole batch (prompt
processing included, for both baseline and server), over GSM8K CoT prompts.

    python benchmarks/local_serving.py --models qwen2.5-coder-0.5b --n-prompts 16 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from memcollab.errors import MemCollabError
from memcollab.lm.server import LlamaServer, resolve_model

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
SYSTEM = "Solve the math word problem step by step. End with: The answer is <number>."
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def load_gsm8k(path: Path, n: int) -> list[dict[str, str]]:
    rows = []
    with path.open() as fh:
        for line in fh:
            if len(rows) >= n:
                break
            row = json.loads(line)
            rows.append({"question": row["question"], "reference": row["answer"].split("####")[-1].strip()})
    return rows


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The first number after the last 'answer', else the last number in the text."""
    idx = text.lower().rfind("answer")
    found = _NUM.findall(text[idx:]) if idx >= 0 else []
    if found:
        return found[0].replace(",", "")
    found = _NUM.findall(text)
    return found[-1].replace(",", "") if found else None


def same_number(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return abs(float(a) - float(b.replace(",", ""))) < 1e-6
    except ValueError:
        return a.strip() == b.strip()


def _project_grader() -> tuple[Any, Any] | None:
    """(extract_answer, answers_match) from memcollab.grading.math when present."""
    try:
        from memcollab.grading.math import answers_match, extract_answer
    except ImportError:
        return None
    return extract_answer, answers_match


def extract(text: str) -> str | None:
    """The final answer of a completion (the project's extractor when available)."""
    grader = _project_grader()
    return (grader[0](text) or None) if grader else final_number(text)


def grade(prediction_text: str, reference: str) -> bool:
    """The project's math grader when present, else a numeric comparison."""
    grader = _project_grader()
    if grader:
        pred = grader[0](prediction_text)
        return bool(pred) and grader[1](reference, pred)
    return same_number(final_number(prediction_text), reference)


# ---------------------------------------------------------------- CPU contention
# This box is shared: other work on the same 2 cores distorts tokens/s badly
# (llama.cpp threads spin on barriers). Each measurement therefore records the
# share of the machine's CPU used by *other* processes while it ran, and
# --wait-idle holds a measurement back until the machine is quiet.

_TICK = os.sysconf("SC_CLK_TCK")


def _busy_jiffies() -> int:
    """All CPUs' non-idle jiffies since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _proc_jiffies(pid: int) -> int:
    """utime + stime of one process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class CpuMeter:
    """Foreign CPU share = (machine busy time - our processes' time) / (wall * cores)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> CpuMeter:
        self.t0, self.busy0 = time.perf_counter(), _busy_jiffies()
        self.own0 = sum(_proc_jiffies(p) for p in self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        own = sum(_proc_jiffies(p) for p in self.pids) - self.own0
        foreign = max(0, _busy_jiffies() - self.busy0 - own) / _TICK
        self.foreign_share = round(foreign / (wall * (os.cpu_count() or 1)), 3)


def cpu_idle_share(seconds: float = 3.0) -> float:
    """Idle share of all CPUs over a short window."""
    busy0, t0 = _busy_jiffies(), time.perf_counter()
    time.sleep(seconds)
    busy = (_busy_jiffies() - busy0) / _TICK
    return 1 - busy / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def wait_for_idle(max_wait: float, threshold: float = 0.85) -> float:
    """Block until the machine is at least `threshold` idle or `max_wait` s passed; returns the last idle share."""
    deadline = time.monotonic() + max_wait
    idle = cpu_idle_share()
    while idle < threshold and time.monotonic() < deadline:
        time.sleep(5)
        idle = cpu_idle_share()
    return round(idle, 3)


# ---------------------------------------------------------------- runners


def run_baseline(
    model_path: Path, rows: list[dict], max_tokens: int, threads: int, wait_idle: float = 0
) -> dict[str, Any]:
    """Single-stream in-process llama-cpp-python: the speed an agent gets without the server."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=2048, n_threads=threads, seed=0, verbose=False)
    llm.create_chat_completion(messages("What is 1 + 1?"), max_tokens=8, temperature=0.0)  # warm-up
    idle = wait_for_idle(wait_idle) if wait_idle else None
    tokens = 0
    with CpuMeter([os.getpid()]) as meter:
        started = time.perf_counter()
        for row in rows:
            out = llm.create_chat_completion(messages(row["question"]), max_tokens=max_tokens, temperature=0.0, seed=0)
            tokens += out["usage"]["completion_tokens"]
        wall = time.perf_counter() - started
    del llm
    return {
        "requests": len(rows),
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 2),
        "idle_before": idle,
        "foreign_cpu_share": meter.foreign_share,
    }


def _chat(client: httpx.Client, url: str, question: str, max_tokens: int) -> dict[str, Any]:
    body = {"messages": messages(question), "max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
    resp = client.post(url + "/chat/completions", json=body, timeout=1800)
    resp.raise_for_status()
    return resp.json()


def run_server_batch(
    server: LlamaServer, rows: list[dict], max_tokens: int, workers: int, wait_idle: float = 0
) -> tuple[dict, list[str]]:
    """All prompts through `workers` concurrent requests; aggregate tokens/s and the answers in order."""
    limits = httpx.Limits(max_connections=workers + 2, max_keepalive_connections=workers + 2)
    with httpx.Client(limits=limits) as client:
        _chat(client, server.url, "What is 1 + 1?", 8)  # warm-up
        idle = wait_for_idle(wait_idle) if wait_idle else None
        assert server.pid is not None
        with CpuMeter([os.getpid(), server.pid]) as meter, ThreadPoolExecutor(max_workers=workers) as pool:
            started = time.perf_counter()
            outs = list(pool.map(lambda r: _chat(client, server.url, r["question"], max_tokens), rows))
            wall = time.perf_counter() - started
    tokens = sum(o["usage"]["completion_tokens"] for o in outs)
    stats = {
        "requests": len(rows),
        "workers": workers,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 2),
        "idle_before": idle,
        "foreign_cpu_share": meter.foreign_share,
    }
    return stats, [o["choices"][0]["message"]["content"] or "" for o in outs]


def _server(path: Path, slots: int, args: argparse.Namespace) -> LlamaServer:
    """A llama-server with the command line's settings and `slots` parallel slots."""
    return LlamaServer(
        path,
        n_parallel=slots,
        ctx_per_slot=args.ctx_per_slot,
        threads=args.threads,
        binary=args.binary,
        extra_args=tuple(args.server_args.split()),
    )


def bench_model(name: str, args: argparse.Namespace, rows: list[dict], det_rows: list[dict]) -> dict[str, Any]:
    path, _ = resolve_model(name)
    result: dict[str, Any] = {
        "model": name,
        "path": str(path),
        "threads": args.threads,
        "server_args": args.server_args,
        "max_tokens": args.max_tokens,
        "n_prompts": len(rows),
    }
    base_rows = rows[: args.baseline_prompts or len(rows)]
    if not args.skip_baseline:
        result["baseline"] = run_baseline(path, base_rows, args.max_tokens, args.threads, args.wait_idle)
        print(f"[{name}] in-process baseline: {result['baseline']}", flush=True)
    result["server"] = {}
    for slots in args.slots:
        with _server(path, slots, args) as server:
            stats, _ = run_server_batch(server, rows, args.max_tokens, slots, args.wait_idle)
        if "baseline" in result:
            stats["ratio_to_baseline"] = round(stats["tok_s"] / result["baseline"]["tok_s"], 2)
        result["server"][str(slots)] = stats
        print(f"[{name}] server {slots:>2} slots: {stats}", flush=True)
    if det_rows:
        answers = {}
        for slots in (1, 8):
            with _server(path, slots, args) as server:
                stats, texts = run_server_batch(server, det_rows, args.det_max_tokens, slots, args.wait_idle)
            answers[slots] = texts
            result[f"determinism_{slots}slot"] = stats
        finals = {k: [extract(t) for t in v] for k, v in answers.items()}
        n = len(det_rows)
        agree = sum(a == b for a, b in zip(finals[1], finals[8]))
        identical = sum(a == b for a, b in zip(answers[1], answers[8]))
        result["determinism"] = {
            "tasks": n,
            "max_tokens": args.det_max_tokens,
            "final_answer_agreement": round(agree / n, 3),
            "identical_text": round(identical / n, 3),
            "accuracy_sequential_1slot": round(
                sum(grade(t, r["reference"]) for t, r in zip(answers[1], det_rows)) / n, 3
            ),
            "accuracy_batched_8slot": round(sum(grade(t, r["reference"]) for t, r in zip(answers[8], det_rows)) / n, 3),
        }
        print(f"[{name}] determinism: {result['determinism']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help=f"comma list (default: every installed one of {', '.join(MODELS)})")
    p.add_argument("--slots", default="1,4,8,16", help="slot counts to measure (workers = slots)")
    p.add_argument("--n-prompts", type=int, default=16, help="GSM8K prompts per throughput setting")
    p.add_argument(
        "--baseline-prompts", type=int, default=0, help="prompts for the in-process baseline (0 = n-prompts)"
    )
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--ctx-per-slot", type=int, default=1024)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--det-tasks", type=int, default=20, help="GSM8K tasks for the determinism check (0 = skip)")
    p.add_argument("--det-max-tokens", type=int, default=256)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--binary", default=None, help="llama-server to use (default: find_server_binary())")
    p.add_argument("--server-args", default="", help="extra llama-server arguments, e.g. '-kvu'")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        help="before each measurement wait up to this many seconds for the CPUs to be >= 85%% idle",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K test.jsonl")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.slots = [int(s) for s in args.slots.split(",") if s.strip()]

    names = [m.strip() for m in args.models.split(",") if m.strip()] or list(MODELS)
    rows = load_gsm8k(args.data, max(args.n_prompts, args.det_tasks))
    results = []
    for name in names:
        try:
            resolve_model(name)
        except MemCollabError as exc:
            print(f"[{name}] skipped: {exc}", flush=True)
            continue
        results.append(bench_model(name, args, rows[: args.n_prompts], rows[: args.det_tasks]))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
