"""The `memcollab` command.

One module per command group (`data.py`, `models.py`, `memory.py`, `run.py`); this module
assembles them and turns every :class:`MemCollabError`, and every known LM transport failure
(an endpoint that refuses, times out or is overloaded), into one line on stderr and a non-zero
exit, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import typer
from rich.console import Console
from rich.text import Text

from memcollab import __version__
from memcollab.errors import MemCollabError, exception_chain, lm_endpoint_error

app = typer.Typer(
    name="memcollab",
    help=(
        "MemCollab: different LLM agents share one memory, distilled by contrasting a "
        "success and a failure on the same task.\n\n"
        "Typical flow: `memcollab data check` -> `memcollab models prepare` -> "
        "`memcollab run` (or `build-memory` then `evaluate`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings reflow to the terminal's width
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"memcollab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """MemCollab command line."""


def _register() -> None:
    from memcollab.cli.data import data_app
    from memcollab.cli.grid import register as register_grid
    from memcollab.cli.memory import memory_app
    from memcollab.cli.models import models_app
    from memcollab.cli.prompts import show_prompt_command
    from memcollab.cli.run import register as register_pipeline

    app.add_typer(data_app, name="data", help="Benchmark data: load, inspect and check the graders.")
    app.add_typer(models_app, name="models", help="Embedded local models: list, prepare, build the llama-server.")
    app.add_typer(memory_app, name="memory", help="Inspect, export and import a memory store.")
    register_pipeline(app)
    register_grid(app)
    app.command("show-prompt")(show_prompt_command)


_register()


def print_error(message: str) -> None:
    """`error: <message>` on stderr as one line, the message verbatim.

    Never parsed as rich markup: hints such as `pip install 'memcollab[llama]'` and
    paths such as `runs/[/x]` are user text, not styles.
    """
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())  # one line, spacing kept
    Console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


#: What Ctrl-C leaves: every LM result is stored the moment it exists (the result store of the run directory).
INTERRUPTED = "interrupted: every finished LM call is kept in the run directory; the same command resumes from there"


class Terminated(SystemExit):
    """SIGTERM as an exit that unwinds: `finally` blocks and a grid's summary run, as they do on Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)  # the shell's convention for "ended by signal N"


def _terminate_gracefully() -> None:
    """SIGTERM (how `pkill` stops a `nohup`'d run) unwinds like Ctrl-C instead of killing the process.

    Installed before any server starts, so the server supervisor's handler stops the servers first and
    then chains to this one. A handler someone else installed, or an ignored SIGTERM, is left alone.
    """
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def _interrupted(exc: BaseException) -> bool:
    """Is this exit a stop the user asked for: SIGTERM, or typer's answer to Ctrl-C (exit 130 from it)?"""
    return isinstance(exc, Terminated) or any(isinstance(e, KeyboardInterrupt) for e in exception_chain(exc))


def main() -> None:
    """Console-script entry point: run the app, print user and environment errors as one line."""
    _terminate_gracefully()
    try:
        app()
    except MemCollabError as exc:
        # A summary error that chains an LM transport failure (a parallel map's "n of m items
        # failed") says less than the failure itself: where the endpoint is and why it did not answer.
        shown = lm_endpoint_error(exc) or exc
        print_error(str(shown))
        sys.exit(shown.exit_code)
    except SystemExit as exc:
        if _interrupted(exc):  # typer turns Ctrl-C into a silent exit 130, SIGTERM is 143: say what they left
            Console(stderr=True).print(INTERRUPTED, highlight=False, markup=False, soft_wrap=True)
        raise
    except Exception as exc:
        lm_error = lm_endpoint_error(exc)
        if lm_error is None:
            raise  # a bug: its traceback is what fixing it needs
        print_error(str(lm_error))
        sys.exit(lm_error.exit_code)


if __name__ == "__main__":
    main()
