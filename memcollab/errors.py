"""User-facing errors.

Anything a user can cause (a missing file, a bad flag, a model that is not
installed) raises a subclass of :class:`MemCollabError` with a one-line
message that says what to do. The CLI prints that line and exits non-zero;
it never shows a traceback for these.
"""


class MemCollabError(Exception):
    """A mistake or missing piece the user can fix; the message is one line."""

    exit_code: int = 2


class DataError(MemCollabError):
    """Benchmark data is missing, malformed or the selection is invalid."""


class ConfigError(MemCollabError):
    """An agent or run configuration is invalid or cannot be satisfied."""


class ModelError(MemCollabError):
    """An embedded model is not installed, not assembled or fails verification."""


class ServerError(MemCollabError):
    """The llama.cpp server binary is missing or the server failed to start."""


class MemoryStoreError(MemCollabError):
    """The memory store file is unreadable, of another schema, or an import is malformed."""


class OverlapError(MemCollabError):
    """Evaluation tasks overlap with the tasks a memory was built from."""
