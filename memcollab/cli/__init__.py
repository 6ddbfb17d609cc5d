"""The `memcollab` command: one module per command group, assembled in `app.py`."""

from memcollab.cli.app import app, main

__all__ = ["app", "main"]
