"""Solver fidelity: does MemCollab's solver keep a model's own accuracy?

Every memory result is a difference between two runs of the solver, so the solver must not cost
the model accuracy. For each embedded model, on one llama-server, the same tasks are solved by:

  plain     the question and a one-sentence instruction as one user message, sent over HTTP with no
            DSPy at all; the whole reply graded by the project's grader (the reference);
  repeat    `plain` sent again: how far two identical runs differ on a batched llama-server (near-ties flip
            with the batch), the noise floor every other variant's difference is read against;
  default   MemCollab's solver with the agent's default adapter (natural text for llama.cpp models);
  json      the same solver with DSPy's JSONAdapter (grammar-constrained JSON);
  compiled  the default solver with labeled demos (`memcollab compile --program solver`; GSM8K only:
            HumanEval has no build split of its own).

It prints accuracy, parse failures, tokens/task and latency per row, the difference to `plain` and
McNemar's exact p on the paired tasks. Per-task rows are appended to a JSONL file as they finish, so
an interrupted run resumes; the summary goes to `results/benchmarks/solver_fidelity.json`.

    python benchmarks/solver_fidelity.py                          # GSM8K test 1-100 + HumanEval 164
    python benchmarks/solver_fidelity.py --models qwen2.5-coder-0.5b --benchmarks gsm8k --variants plain,default
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASK_ROWS = ROOT / "results" / "benchmarks" / "solver_fidelity_tasks.jsonl"
SUMMARY = ROOT / "results" / "benchmarks" / "solver_fidelity.json"
SLICES = {"gsm8k": ("test", "1-100"), "humaneval": ("test", None)}
VARIANTS = ("plain", "repeat", "default", "json", "compiled")

#: The plain prompts, written out here on purpose (not imported from the signatures): the reference
#: must not change when the solver's prompts do.
PLAIN_MATH = "{prompt}\n\nSolve step by step. Put the final answer in \\boxed{{}}."
PLAIN_CODE = (
    "Complete the following Python function. Reply with the whole function, including the signature, "
    "in one ```python code block.\n\n{prompt}"
)


def load(benchmark: str, ids: str | None) -> list[Any]:
    """The benchmark's slice: `ids` (e.g. "1-100"; GSM8K ids are 1-based line numbers) or the default slice."""
    from memcollab.benchmarks import load_tasks

    split, default_ids = SLICES[benchmark]
    return load_tasks(benchmark, split=split, ids=ids or default_ids)


class RowFile:
    """Per-task rows in a JSONL file, appended as they finish (thread-safe), read back to resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def done(self, model: str, benchmark: str, variant: str) -> dict[str, dict[str, Any]]:
        return {
            r["task_id"]: r
            for r in self.rows()
            if (r["model"], r["benchmark"], r["variant"]) == (model, benchmark, variant)
        }

    def append(self, row: dict[str, Any]) -> None:
        with self.lock, self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def plain_reply(url: str, model: str, prompt: str, max_tokens: int, seed: int) -> tuple[str, int]:
    """One chat completion straight from llama-server's OpenAI endpoint: (text, total tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    request = urllib.request.Request(
        url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        payload = json.loads(response.read())
    return payload["choices"][0]["message"]["content"] or "", int(payload.get("usage", {}).get("total_tokens", 0))


def solve_plain(task: Any, lm: Any) -> dict[str, Any]:
    from memcollab.grading import grade

    template = PLAIN_MATH if task.kind == "math" else PLAIN_CODE
    start = time.perf_counter()
    text, tokens = plain_reply(
        lm.kwargs["api_base"],
        lm.model.split("/", 1)[1],
        template.format(prompt=task.prompt.strip()),
        lm.kwargs["max_tokens"],
        lm.kwargs["seed"],
    )
    verdict = grade(task, text)
    parse_failure = verdict.error_type in ("no_answer", "no_code")
    return {
        "correct": verdict.correct,
        "parse_failure": parse_failure,
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "error_type": verdict.error_type,
    }


def solver_runner(lm: Any, adapter: Any, program: Path | None) -> Callable[[Any], dict[str, Any]]:
    import dspy

    from memcollab.programs.solver import Solver

    solver = Solver(max_turns=1)  # single turn: the fidelity question is about one answer
    if program is not None:
        solver.load(str(program))

    def solve(task: Any) -> dict[str, Any]:
        start = time.perf_counter()
        with dspy.context(lm=lm, adapter=adapter):
            trajectory = solver(task=task).trajectory
        return {
            "correct": trajectory.correct,
            "parse_failure": bool(trajectory.error),
            "tokens": trajectory.tokens,
            "seconds": time.perf_counter() - start,
            "error_type": trajectory.verdict.error_type,
        }

    return solve


def compiled_program(path: Path) -> Path:
    """The labeled-demo solver (3 GSM8K train solutions), compiled without an LM; made once."""
    if not path.is_file():
        from memcollab.benchmarks import load_tasks
        from memcollab.programs.compile import compile_solver, save_program

        save_program(compile_solver(load_tasks("gsm8k", split="train", limit=3), "labeled"), path)
    return path


def run_cell(
    rows: RowFile,
    model: str,
    benchmark: str,
    variant: str,
    tasks: list[Any],
    solve: Callable[[Any], dict[str, Any]],
    workers: int,
) -> None:
    from rich.progress import Progress

    done = rows.done(model, benchmark, variant)
    todo = [t for t in tasks if t.id not in done]
    if not todo:
        return

    failures: list[str] = []

    def one(task: Any) -> None:
        try:
            row = solve(task)
        except Exception as exc:  # an endpoint fault loses this task only; a rerun retries it
            failures.append(f"{task.id}: {type(exc).__name__}: {exc}"[:200])
            return
        rows.append({"model": model, "benchmark": benchmark, "variant": variant, "task_id": task.id, **row})

    with Progress(transient=True) as progress, ThreadPoolExecutor(max_workers=workers) as pool:
        bar = progress.add_task(f"{model} {benchmark} {variant}", total=len(todo))
        for _ in pool.map(one, todo):
            progress.advance(bar)
    if failures:
        print(
            f"{model} {benchmark} {variant}: {len(failures)} task(s) failed and are not recorded (rerun to retry); "
            f"first: {failures[0]}"
        )


def summarise(rows: list[dict[str, Any]], tasks_by_bench: dict[str, list[str]]) -> list[dict[str, Any]]:
    from memcollab.experiments.stats import compare

    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["model"], row["benchmark"], row["variant"]), {})[row["task_id"]] = row
    out = []
    for (model, benchmark, variant), by_task in sorted(cells.items()):
        ids = [i for i in tasks_by_bench.get(benchmark, []) if i in by_task]
        if not ids:
            continue
        picked = [by_task[i] for i in ids]
        entry: dict[str, Any] = {
            "model": model,
            "benchmark": benchmark,
            "variant": variant,
            "n": len(ids),
            "correct": sum(r["correct"] for r in picked),
            "accuracy": sum(r["correct"] for r in picked) / len(ids),
            "parse_failures": sum(r["parse_failure"] for r in picked),
            "tokens_per_task": sum(r["tokens"] for r in picked) / len(ids),
            "seconds_per_task": sum(r["seconds"] for r in picked) / len(ids),
        }
        plain = cells.get((model, benchmark, "plain"), {})
        paired = [i for i in ids if i in plain]
        if variant != "plain" and paired:
            cmp = compare([plain[i]["correct"] for i in paired], [by_task[i]["correct"] for i in paired])
            entry.update(
                {
                    "paired_n": cmp.n,
                    "diff_vs_plain": cmp.difference,
                    "diff_ci": [cmp.ci_low, cmp.ci_high],
                    "mcnemar_p": cmp.p_value,
                }
            )
        out.append(entry)
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="solver fidelity (same llama-server, temperature 0)")
    for column in (
        "model",
        "benchmark",
        "variant",
        "n",
        "accuracy",
        "parse fail",
        "tokens/task",
        "s/task",
        "vs plain",
        "McNemar p",
    ):
        table.add_column(column)
    for s in summary:
        diff = f"{s['diff_vs_plain']:+.1%}" if "diff_vs_plain" in s else ""
        p = f"{s['mcnemar_p']:.3f}" if "mcnemar_p" in s else ""
        table.add_row(
            s["model"],
            s["benchmark"],
            s["variant"],
            str(s["n"]),
            f"{s['correct']}/{s['n']} ({s['accuracy']:.1%})",
            str(s["parse_failures"]),
            f"{s['tokens_per_task']:.0f}",
            f"{s['seconds_per_task']:.1f}",
            diff,
            p,
        )
    Console().print(table)


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as the table in benchmarks/README.md."""
    lines = [
        "| model | benchmark | variant | accuracy | parse failures | tokens/task | s/task | vs plain (95% CI) | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        diff = ""
        if "diff_vs_plain" in s:
            low, high = s["diff_ci"]
            diff = f"{s['diff_vs_plain']:+.1%} ({low:+.1%} to {high:+.1%}; {s['paired_n']} paired)"
        p = f"{s['mcnemar_p']:.2f}" if "mcnemar_p" in s else ""
        lines.append(
            f"| {s['model']} | {s['benchmark']} | {s['variant']} | {s['correct']}/{s['n']} ({s['accuracy']:.1%}) | "
            f"{s['parse_failures']} | {s['tokens_per_task']:.0f} | {s['seconds_per_task']:.1f} | {diff} | {p} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b", help="embedded model names")
    parser.add_argument("--benchmarks", default="gsm8k,humaneval")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests (llama-server slots)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument(
        "--ids",
        default=None,
        help="task ids or ranges for every benchmark (default: GSM8K test 1-100, all of HumanEval)",
    )
    parser.add_argument("--solver-program", type=Path, default=None, help="compiled solver (default: labeled demos)")
    parser.add_argument(
        "--report", action="store_true", help="summarise the rows so far (markdown, and the summary JSON); run no model"
    )
    args = parser.parse_args()
    if args.report:
        benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
        ids = {b: [t.id for t in load(b, args.ids)] for b in benchmarks}
        summary = summarise(RowFile(TASK_ROWS).rows(), ids)
        SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
        print(markdown(summary))
        return

    import dspy

    from memcollab.lm.adapters import NaturalAdapter
    from memcollab.lm.config import apply_overrides, resolve_agent
    from memcollab.lm.factory import build_lm

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)  # measure, don't replay
    rows = RowFile(TASK_ROWS)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    tasks = {b: load(b, args.ids) for b in benchmarks}
    program = args.solver_program or compiled_program(ROOT / "results" / "benchmarks" / "solver_labeled_gsm8k.json")
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        agent = apply_overrides(resolve_agent(f"server:{model}"), max_tokens=args.max_tokens, temperature=0.0, seed=0)
        lm = build_lm(agent, cache=False)
        runners: dict[str, Callable[[Any], dict[str, Any]]] = {
            "plain": lambda task, lm=lm: solve_plain(task, lm),
            "repeat": lambda task, lm=lm: solve_plain(task, lm),
            "default": solver_runner(lm, NaturalAdapter(), None),
            "json": solver_runner(lm, dspy.JSONAdapter(), None),
            "compiled": solver_runner(lm, NaturalAdapter(), program),
        }
        for benchmark in benchmarks:
            for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
                if variant == "compiled" and benchmark != "gsm8k":
                    continue
                run_cell(rows, model, benchmark, variant, tasks[benchmark], runners[variant], args.workers)
    summary = summarise(rows.rows(), {b: [t.id for t in ts] for b, ts in tasks.items()})
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    print(f"per-task rows: {TASK_ROWS.relative_to(ROOT)}; summary: {SUMMARY.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
