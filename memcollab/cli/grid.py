"""`memcollab experiment GRID.yaml`: a grid of paired comparisons of memory methods from one YAML file.

A thin layer over `memcollab.experiments.grid`: the YAML becomes a GridConfig, `plan_grid` validates every
slice, method and agent before anything is written or any LM is called, the machine-time estimate is printed,
then the grid runs (resuming whatever an earlier invocation in the same run directory did) and a table shows
each cell against no memory on the same tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from memcollab.cli.consoles import make_console

console = make_console()
err = make_console(stderr=True)


def print_grid(table, title: str) -> None:
    """The grid table (`report.display_table`, the same text as `table.md`): each cell against no memory."""
    from memcollab.experiments.report import DISPLAY_COLUMNS, NUMERIC_DISPLAY_COLUMNS, display_table

    out = Table(title=title)
    for column in DISPLAY_COLUMNS:
        out.add_column(column, justify="right" if column in NUMERIC_DISPLAY_COLUMNS else "left")
    out.caption = (
        "echo: answers that repeat a phrase of the memory they were shown that the task does not contain; "
        "retries unchanged: retries whose code is the turn before's"
    )
    for row in display_table(table).itertuples(index=False):
        out.add_row(*row)
    console.print(out)


def grid_command(
    config: Path = typer.Argument(..., help="grid YAML (cells, methods, slices; see configs/experiments/grid.yaml)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="override the config's run_dir (a rerun resumes)"),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow URI (default: sqlite in the run dir)"
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="override the config's concurrent LM calls"),
    max_errors: Optional[int] = typer.Option(
        None, "--max-errors", min=0, help="override the config's unanswered LM calls per cell (default 10)"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="validate, list the cells and the time estimate; run nothing"
    ),
    tables_only: Annotated[
        bool,
        typer.Option(
            "--tables-only",
            help="rewrite the tables and figures of the cells an earlier invocation finished, from the run dir's "
            "result store: no LM call, no model server, no MLflow run (after an update to how tables are made); "
            "stops with one line if a result is missing. Not while another invocation runs in the same run dir",
        ),
    ] = False,  # Annotated: a direct call (`memcollab experiment` dispatching a grid) gets False, not an OptionInfo
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            help="where the solves run: local (threads in this process, --workers of them) or ray (Ray tasks, one "
            "per CPU of the cluster at a time; retried if a worker dies; agents must be HTTP endpoints). The "
            "build and evaluation solves go to Ray; distillation and classification stay here; the tables are the same. "
            "ray needs: pip install 'memcollab[scale]'",
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address",
            help="with --executor ray: join this running cluster (auto, or ray://HOST:10001) instead of starting a "
            "local one for this run; its nodes need memcollab installed and the agents' API key variables set (and "
            "RAY_AUTH_MODE=token here if the cluster uses token authentication)",
        ),
    ] = None,
    store_url: Annotated[
        Optional[str],
        typer.Option(
            "--store-url",
            help="override the config's store_url: keep the result store and every memory's store in this PostgreSQL "
            "database (postgresql://user@host:port/db) instead of SQLite files in the run dir, each in a schema of "
            "its own named from the run dir's name and the store (mc_RUN__results, mc_RUN__memory_ID); "
            "password: PGPASSWORD or ~/.pgpass; needs pip install 'memcollab[scale]'",
        ),
    ] = None,
) -> None:
    """Run a grid: every method x memory source x target agent x benchmark, each compared with no memory.

    Prints the machine-time estimate (measured tokens/s) first; every LM result is kept under its key, so a
    rerun of the same config resumes. Tables, figures and per-task rows go to the run directory; MLflow gets a
    parent run for the invocation and a nested run per cell.
    """
    from memcollab.benchmarks import get_benchmark
    from memcollab.experiments.estimate import load_throughput
    from memcollab.experiments.executors import check_executor, make_executor
    from memcollab.experiments.grid import run_grid, run_order
    from memcollab.experiments.grid_config import load_grid_config
    from memcollab.experiments.grid_estimate import estimate_grid
    from memcollab.experiments.grid_plan import plan_grid
    from memcollab.experiments.report import TABLES

    check_executor(executor, ray_address)  # a wrong name or no Ray: one line, before anything is loaded
    cfg = load_grid_config(
        config,
        run_dir=run_dir,
        tracking_uri=tracking_uri,
        workers=workers,
        max_errors=max_errors,
        store_url=store_url,
    )
    if dry_run:
        plan = plan_grid(cfg, announce=err.print)
        for cell in run_order(plan):  # the order they run in: memory by memory, each baseline first
            tasks = len(plan.benchmarks[cell.benchmark].cell_tasks[cell.id])
            console.print(
                f"{cell.id}: {tasks} tasks, memory {plan.cell_memory[cell.id] or '-'}", markup=False, soft_wrap=True
            )
        agents = {n: a.model_dump(mode="json") for n, a in plan.agents.items()}
        times = estimate_grid(plan, agents, cfg.run_dir, load_throughput())
        finished = times.finished
        if times.whole is None or times.left is None:
            told = "unknown (an agent has no measured rate)"
        else:
            told = f"about {times.whole / 3600:.1f} h, {times.left / 3600:.1f} h of it left"
        console.print(
            f"{len(plan.cells)} cells, {len(plan.memories)} memories; in {cfg.run_dir}, {len(finished.cells)} of "
            f"{len(plan.cells)} cells finished and {len(finished.memories)} of {len(plan.memories)} memories built; "
            f"estimated machine time: {told}",
            markup=False,
            soft_wrap=True,
        )
        code = [b for b in plan.benchmarks if get_benchmark(b).kind == "code"]
        if code:
            counted = ", ".join(
                f"{b} {times.turns[b]:.2f} (measured here)" if b in times.turns else f"{b} {cfg.max_turns} (max_turns)"
                for b in code
            )
            console.print(f"calls per code task in the estimate: {counted}", markup=False, soft_wrap=True)
        for piece in plan.best_of:
            winner = plan.chosen.get(piece.benchmark)
            state = (
                f"chosen: {winner}"
                if winner
                else "chosen once they have all run there; the winner's extra tasks are not in the estimate yet"
            )
            console.print(
                f"best of the rest on {piece.benchmark} ({', '.join(piece.candidates)}): compared on "
                f"{len(piece.chosen_on)} tasks, held out on {len(piece.held_out)}; {state}",
                markup=False,
                soft_wrap=True,
            )
        return
    with make_executor(executor, ray_address) as runner:
        result = run_grid(cfg, announce=err.print, executor=runner, tables_only=tables_only)
    print_grid(result.table, f"{cfg.name}: every cell vs no memory on the same tasks")
    files = ", ".join([*(f"{name}.csv" for name in TABLES), "table.md", "figures"])
    console.print(f"results: {result.run_dir} ({files}; notebooks/grid.ipynb)", markup=False)


def register(app: typer.Typer) -> None:
    """`memcollab grid FILE` (the lead may prefer only the `experiment` dispatch)."""
    app.command("grid")(grid_command)
