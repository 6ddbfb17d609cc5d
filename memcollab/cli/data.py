"""`memcollab data ...`: inspect benchmark tasks and check the graders against the reference solutions.

Heavy modules (datasets, sympy, sklearn) are imported inside the commands so
that `memcollab --help` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

data_app = typer.Typer(
    no_args_is_help=True,
    help="Benchmark data: load, inspect and check the graders.",
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DATA_DIR_HELP = (
    "Directory with the benchmark JSONL files (default: MEMCOLLAB_DATA_DIR, ../shared/data, else the HF hub)."
)


@data_app.command("check")
def check(
    benchmark: list[str] | None = typer.Option(
        None,
        "--benchmark",
        "-b",
        help="Benchmark to check (repeatable), one of the registered benchmarks. Default: all.",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="Parallel graders (default: CPU count)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Grade every reference solution with the real graders; exit 1 if any is graded wrong."""
    from memcollab.cli.consoles import make_console
    from memcollab.experiments.data_check import check_references, summary_lines

    console = make_console(highlight=False, soft_wrap=True)
    start = time.monotonic()
    results = check_references(benchmark, data_dir=data_dir, workers=workers, show_progress=not no_progress)
    for line in summary_lines(results):
        console.print(line, markup=False)
    console.print(f"wall time: {time.monotonic() - start:.1f} s", markup=False)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)


@data_app.command("regrade")
def regrade(
    store: str = typer.Argument(
        ...,
        help="A result store: a run directory's results.sqlite (e.g. results/grid/code/results.sqlite) or a "
        "postgresql:// URL.",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="Parallel graders (default: CPU count)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Grade every stored turn again (code in the sandbox) and compare with the stored verdicts; exit 1 if any
    differ. Run it after a grader or sandbox change, or on a store graded on an unknown machine."""
    from memcollab.cli.consoles import make_console
    from memcollab.experiments.regrade import regrade_store

    console = make_console(highlight=False, soft_wrap=True)
    start = time.monotonic()
    report = regrade_store(store, data_dir=data_dir, workers=workers, show_progress=not no_progress)
    for line in report.lines():
        console.print(line, markup=False)
    console.print(f"wall time: {time.monotonic() - start:.1f} s", markup=False)
    if report.disagreements:
        raise typer.Exit(code=1)


def _clip(text: str, full: bool, limit: int = 600) -> str:
    text = text.rstrip()
    return (
        text
        if full or len(text) <= limit
        else text[:limit] + f"\n... ({len(text) - limit} more characters; --full shows all)"
    )


@data_app.command("show")
def show(
    benchmark: str = typer.Argument(..., help="A registered benchmark: math500, gsm8k, humaneval, mbpp."),
    split: str | None = typer.Option(None, "--split", "-s", help="Split (default: the benchmark's test split)."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Show the first N tasks (default 3)."),
    ids: list[str] | None = typer.Option(
        None,
        "--ids",
        help="Task ids, comma-separated or repeated: full ids, tails, or inclusive ranges of numeric tails "
        "(1-100, 1001-1100,1205; GSM8K ids are 1-based line numbers). Wins over --limit.",
    ),
    sample: int | None = typer.Option(None, "--sample", help="Show a seeded random sample of N tasks."),
    seed: int = typer.Option(0, "--seed", help="Seed for --sample."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    full: bool = typer.Option(False, "--full", help="Do not shorten long prompts, solutions and tests."),
) -> None:
    """Print a few tasks of a benchmark split as MemCollab sees them."""
    from rich.rule import Rule

    from memcollab.benchmarks import load_tasks
    from memcollab.cli.consoles import make_console
    from memcollab.errors import DataError

    if ids and sample is not None:
        raise DataError("--ids and --sample both choose tasks; use one of them")
    if limit is not None and sample is not None:
        raise DataError("use only one of --limit, --sample")
    if ids:
        limit = None  # ids win over --limit
    elif limit is None and sample is None:
        limit = 3
    tasks = load_tasks(benchmark, split, data_dir=data_dir, limit=limit, ids=ids or None, sample=sample, seed=seed)

    console = make_console(highlight=False, soft_wrap=True)
    for task in tasks:
        meta = [f"split {task.split}", f"kind {task.kind}"]
        if task.category:
            meta.append(f"category {task.category}")
        if task.level is not None:
            meta.append(f"level {task.level}")
        console.print(Rule(f"{task.id}  ({', '.join(meta)})", align="left"))
        console.print("[bold]prompt[/]")
        console.print(_clip(task.prompt, full), markup=False)
        if task.kind == "math":
            console.print("[bold]answer[/] ", end="")
            console.print(task.answer, markup=False)
        else:
            console.print("[bold]entry point[/] ", end="")
            console.print(task.entry_point, markup=False)
            if task.setup.strip():
                console.print("[bold]setup[/]")
                console.print(_clip(task.setup, full), markup=False)
            console.print("[bold]tests[/]")
            console.print(_clip(task.tests, full), markup=False)
        if full:
            console.print("[bold]solution[/]")
            console.print(task.solution.rstrip(), markup=False)
    console.print(f"{len(tasks)} task(s)", markup=False)
