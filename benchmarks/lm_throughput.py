"""Speed and GSM8K accuracy of the embedded models on this machine.

For every installed embedded model (smallest first):
- prompt processing (pp) and generation (tg) tokens/s, from llama.cpp's own
  performance counters, with the in-process backend;
- accuracy of a plain `dspy.ChainOfThought("question -> answer")` on the first
  N GSM8K test problems, per DSPy adapter (JSON, with a grammar, and Chat
  without its JSON fallback), with the number of outputs that did not parse.

Usage:
    python benchmarks/lm_throughput.py [--models smollm2-135m,qwen2.5-coder-0.5b] [--n 20]
        [--adapters json,chat] [--max-tokens 512] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def cpu_idle(window: float = 5.0) -> float:
    """Share of the machine's CPU time that was idle over `window` seconds (1.0 = nothing else running)."""
    total0, idle0 = _cpu_times()
    time.sleep(window)
    total1, idle1 = _cpu_times()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_idle(max_wait: float, threshold: float = 0.9, checks: int = 3) -> float:
    """Wait (up to `max_wait` s) until the CPU was idle in `checks` probes 20 s apart, so figures are not contention."""
    deadline = time.monotonic() + max_wait
    streak, idle = 0, 0.0
    while time.monotonic() < deadline:
        idle = cpu_idle()
        streak = streak + 1 if idle >= threshold else 0
        if streak >= checks:
            break
        if streak == 0:
            log(f"waiting for an idle CPU (idle {idle:.0%})")
        time.sleep(20)
    return round(idle, 3)


# ---------------------------------------------------------------- throughput


def throughput(
    name: str, n_ctx: int, threads: int | None, pp_tokens: int = 512, tg_tokens: int = 128
) -> dict[str, Any]:
    """pp: evaluate a `pp_tokens` prompt from an empty cache (3x); tg: generate up to `tg_tokens` (2x)."""
    import llama_cpp

    from memcollab.lm.assemble import model_path
    from memcollab.lm.local import load_model

    loaded = load_model(model_path(name), n_ctx=n_ctx, n_threads=threads)
    llm = loaded.llama
    ctx = llm._ctx.ctx
    text = " ".join(f"The {i}th number in the list is {i * 7 % 101}." for i in range(400))
    tokens = llm.tokenize(text.encode())[:pp_tokens]

    pp_rates = []
    for _ in range(3):
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        llama_cpp.llama_perf_context_reset(ctx)
        llm.eval(tokens)
        llama_cpp.llama_synchronize(ctx)  # counters are updated when the batch is awaited
        perf = llama_cpp.llama_perf_context(ctx)
        pp_rates.append(perf.n_p_eval / (perf.t_p_eval_ms / 1000))

    tg_rates = []
    for _ in range(2):
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        llama_cpp.llama_perf_context_reset(ctx)
        llm.create_completion(
            "Write a long story about a robot who learns to paint.\n\n", max_tokens=tg_tokens, temperature=0.0, seed=0
        )
        perf = llama_cpp.llama_perf_context(ctx)
        tg_rates.append(perf.n_eval / (perf.t_eval_ms / 1000))
    return {
        "pp_tokens": len(tokens),
        "pp_tok_s": round(statistics.median(pp_rates), 1),
        "tg_tok_s": round(statistics.median(tg_rates), 1),
        "threads": loaded.n_threads,
    }


# ---------------------------------------------------------------- GSM8K accuracy


def gsm8k_tasks(n: int, data_dir: str | None, start: int = 0) -> list[Any]:
    from memcollab.benchmarks import load_tasks

    return load_tasks("gsm8k", "test", data_dir=data_dir, limit=start + n)[start:]


def grade(task: Any, answer: str) -> bool:
    """The project's math grader when present, else a plain number comparison."""
    try:
        from memcollab.grading.math import grade_math
    except ImportError:
        import re

        nums = re.findall(r"-?\d[\d,]*\.?\d*", answer or "")
        return bool(nums) and float(nums[-1].replace(",", "").rstrip(".")) == float(task.answer)
    return grade_math(task, answer).correct


def accuracy(
    name: str, adapter_name: str, tasks: list[Any], max_tokens: int, n_ctx: int, threads: int | None
) -> dict[str, Any]:
    import dspy
    from dspy.utils.exceptions import AdapterParseError

    from memcollab.lm.config import AgentConfig
    from memcollab.lm.factory import build_lm

    agent = AgentConfig(
        name=name, model=name, max_tokens=max_tokens, n_ctx=n_ctx, n_threads=threads, temperature=0.0, seed=0
    )
    lm = build_lm(agent, cache=False)
    adapter = dspy.JSONAdapter() if adapter_name == "json" else dspy.ChatAdapter(use_json_adapter_fallback=False)
    solver = dspy.ChainOfThought("question -> answer")
    rows = []
    started = time.perf_counter()
    for task in tasks:
        t0 = time.perf_counter()
        n_hist = len(lm.history)
        try:
            with dspy.context(lm=lm, adapter=adapter):
                out = solver(question=task.prompt)
            answer, parsed = str(out.answer), True
        except AdapterParseError:
            answer, parsed = "", False
        calls = lm.history[n_hist:]
        timings = [c["response"]["timings"] for c in calls if isinstance(c.get("response"), dict)]
        rows.append(
            {
                "id": task.id,
                "gold": task.answer,
                "answer": answer[:200],
                "parsed": parsed,
                "correct": parsed and grade(task, answer),
                "prompt_tokens": sum(c["usage"].get("prompt_tokens", 0) for c in calls),
                "completion_tokens": sum(c["usage"].get("completion_tokens", 0) for c in calls),
                "predicted_n": sum(t["predicted_n"] for t in timings),
                "predicted_ms": sum(t["predicted_ms"] for t in timings),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        log(
            f"  {name}/{adapter_name} {task.id}: gold={task.answer} answer={answer[:40]!r} "
            f"parsed={parsed} correct={rows[-1]['correct']} ({rows[-1]['seconds']} s)"
        )
    gen_ms = sum(r["predicted_ms"] for r in rows)
    return {
        "adapter": adapter_name,
        "n": len(rows),
        "correct": sum(r["correct"] for r in rows),
        "accuracy": round(sum(r["correct"] for r in rows) / max(1, len(rows)), 3),
        "parse_failures": sum(not r["parsed"] for r in rows),
        "mean_completion_tokens": round(statistics.mean(r["completion_tokens"] for r in rows), 1) if rows else 0,
        "workload_tg_tok_s": round(sum(r["predicted_n"] for r in rows) / (gen_ms / 1000), 1) if gen_ms else None,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help="comma-separated catalogue names (default: every ready model)")
    parser.add_argument("--n", type=int, default=20, help="GSM8K test problems (the first N)")
    parser.add_argument("--start", type=int, default=0, help="skip the first START problems (to resume a run)")
    parser.add_argument("--adapters", default="json,chat", help="json and/or chat")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="write the full JSON report here")
    parser.add_argument("--skip-throughput", action="store_true", help="only GSM8K accuracy (deterministic under load)")
    parser.add_argument("--wait-idle", type=float, default=0, help="wait up to this many s for an idle CPU per model")
    args = parser.parse_args()

    import dspy

    from memcollab.lm.catalog import list_status
    from memcollab.lm.local import unload_all

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    ready = [s.spec.name for s in list_status() if s.ready]
    models = [m for m in args.models.split(",") if m] or ready
    missing = [m for m in models if m not in ready]
    if missing:
        sys.exit(f"not ready: {', '.join(missing)} (memcollab models prepare NAME)")
    tasks = gsm8k_tasks(args.n, args.data_dir, args.start)
    import llama_cpp

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "llama_cpp": llama_cpp.__version__,
            "dspy": dspy.__version__,
        },
        "settings": {
            "n": len(tasks),
            "max_tokens": args.max_tokens,
            "n_ctx": args.n_ctx,
            "temperature": 0.0,
            "seed": 0,
        },
        "models": {},
    }
    for name in models:
        idle = wait_idle(args.wait_idle) if args.wait_idle else None
        log(f"{name}: throughput (cpu idle before: {idle})")
        entry: dict[str, Any] = {
            "cpu_idle_before": idle,
            "throughput": None if args.skip_throughput else throughput(name, args.n_ctx, args.threads),
        }
        log(f"{name}: {entry['throughput']}")
        entry["gsm8k"] = {}
        for adapter in [a for a in args.adapters.split(",") if a]:
            result = accuracy(name, adapter, tasks, args.max_tokens, args.n_ctx, args.threads)
            entry["gsm8k"][adapter] = result
            log(
                f"{name}/{adapter}: accuracy {result['correct']}/{result['n']}, parse failures {result['parse_failures']}, "
                f"workload tg {result['workload_tg_tok_s']} tok/s, {result['seconds']} s"
            )
        entry["load_avg_after"] = os.getloadavg()
        report["models"][name] = entry
        unload_all()
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))

    log("summary")
    for name, entry in report["models"].items():
        tp = entry["throughput"] or {"pp_tok_s": float("nan"), "tg_tok_s": float("nan")}
        accs = ", ".join(
            f"{a}: {r['correct']}/{r['n']} (parse fail {r['parse_failures']})" for a, r in entry["gsm8k"].items()
        )
        print(f"{name:20s} pp {tp['pp_tok_s']:7.1f} tok/s  tg {tp['tg_tok_s']:6.1f} tok/s  GSM8K {accs}", flush=True)


if __name__ == "__main__":
    main()
