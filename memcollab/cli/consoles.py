"""Rich consoles for the CLI: a terminal's own width, but a wide one for logs and pipes.

Rich falls back to 80 columns when output is not a terminal (`nohup ... > run.log`), which wraps the grid's wide
table (about 190 columns) into unreadable fragments; a log has no width to respect, so it gets `LOG_WIDTH`. An
explicit `COLUMNS` in the environment still wins.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console

#: Columns for output that is not a terminal (a log file, a pipe).
LOG_WIDTH = 200


def make_console(stderr: bool = False, **options: Any) -> Console:
    """A rich Console on stdout (or stderr): the terminal's width, or `LOG_WIDTH` when writing to a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    to_terminal = hasattr(stream, "isatty") and stream.isatty()
    width = None if to_terminal or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=stderr, width=width, **options)
