"""User-facing errors.

Anything a user can cause (a missing file, a bad flag, a model that is not
installed) or the environment can cause (a damaged file, an unwritable
directory, an LM endpoint that does not answer) raises a subclass of
:class:`MemCollabError` with a one-line message that says what to do. The CLI
prints that line and exits non-zero; it never shows a traceback for these.
Bugs are not wrapped: they keep their traceback, which is what fixing them needs.

This module is the lowest layer: it imports nothing of MemCollab and no
third-party package, so LM client exceptions are recognised by class name
(:func:`lm_endpoint_error`), never by importing the client.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType
from typing import Any


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


class ResultStoreError(MemCollabError):
    """The run's results file is unreadable, damaged or belongs to something else."""


class OutputError(MemCollabError):
    """A file a command must write cannot be written (read-only place, a file or directory in the way)."""


class OverlapError(MemCollabError):
    """Evaluation tasks overlap with the tasks a memory was built from."""


class LMEndpointError(MemCollabError):
    """An LM endpoint did not answer (refused, timed out, rate-limited, overloaded): the environment, not a bug."""

    exit_code = 3


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The one-line error for an OSError raised while writing `path`.

    Names what is in the way when the OS's own words would mislead: under a
    regular file, mkdir says "File exists" and open says "Not a directory".
    """
    file = Path(path)
    blocker = next((p for p in file.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        reason = f"{blocker} is a file, not a directory"
    elif isinstance(exc, IsADirectoryError) or file.is_dir():
        reason = "it is a directory; name a file instead"
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"cannot write {file}: {reason}")


# ---------------------------------------------------------------- LM transport errors

#: (top-level package, class name) -> what went wrong. Matched on every class of an exception's MRO and on
#: every exception of its cause/context chain, so a wrapper (DSPy's LMTransportError around lm15's, litellm's
#: around httpx's) is recognised whichever layer raised it.
_LM_FAULTS: dict[tuple[str, str], str] = {
    # DSPy >= 3.4 (its own LM engine) and the lm15 transport it vendors
    ("dspy", "LMTransportError"): "connection failed",
    ("dspy", "LMTimeoutError"): "timed out",
    ("dspy", "LMServerError"): "server error",
    ("dspy", "LMRateLimitError"): "rate limited",
    ("lm15", "TransportError"): "connection failed",
    # litellm (DSPy < 3.4)
    ("litellm", "APIConnectionError"): "connection failed",
    ("litellm", "Timeout"): "timed out",
    ("litellm", "ServiceUnavailableError"): "service unavailable",
    ("litellm", "RateLimitError"): "rate limited",
    # the OpenAI SDK (litellm's errors subclass these)
    ("openai", "APIConnectionError"): "connection failed",
    ("openai", "APITimeoutError"): "timed out",
}

#: httpx errors count only when raised under an LM client: a dataset download uses httpx too.
_HTTPX_FAULTS = {"ConnectError": "connection failed", "ConnectTimeout": "timed out"}
_LM_CLIENTS = ("dspy", "litellm", "openai", "lm15")

_HOST_IN_MESSAGE = re.compile(r"connect(?:ing)? to\s+([\w.\-]+:\d+)")


def _root(module: str) -> str:
    """`dspy._vendor.lm15.errors` -> `lm15` (the vendored package is itself), `litellm.exceptions` -> `litellm`."""
    parts = module.split(".")
    return "lm15" if "lm15" in parts else parts[0]


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes/contexts, outermost first, each once; `raise ... from None` ends the chain."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        suppressed = current.__cause__ is None and current.__suppress_context__
        current = None if suppressed else (current.__cause__ or current.__context__)
    return seen


def _raised_under_lm_client(tb: TracebackType | None) -> bool:
    while tb is not None:
        if _root(str(tb.tb_frame.f_globals.get("__name__", ""))) in _LM_CLIENTS:
            return True
        tb = tb.tb_next
    return False


def _fault(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        key = (_root(cls.__module__), cls.__name__)
        if key in _LM_FAULTS:
            return _LM_FAULTS[key]
        if key[0] == "httpx" and cls.__name__ in _HTTPX_FAULTS and _raised_under_lm_client(exc.__traceback__):
            return _HTTPX_FAULTS[cls.__name__]
    return None


def _url(exc: BaseException) -> Any:
    try:  # httpx's `.request` raises RuntimeError when it was never set
        return getattr(getattr(exc, "request", None), "url", None)
    except RuntimeError:
        return None


def _where(chain: list[BaseException]) -> str:
    """The endpoint, innermost evidence first (litellm's own wrappers carry a placeholder request to
    api.openai.com; the httpx request under them went where the call really went): a request URL's
    origin, else a host:port named in a message; the model, when known, in parentheses."""
    place = ""
    for exc in reversed(chain):
        url = _url(exc)
        scheme, host, port = (getattr(url, name, None) for name in ("scheme", "host", "port"))
        if scheme and host:
            place = f"{scheme}://{host}" + (f":{port}" if port else "")
            break
    if not place:
        for exc in reversed(chain):
            found = _HOST_IN_MESSAGE.search(str(exc))
            if found:
                place = found.group(1)
                break
    model = next((str(m) for e in chain if (m := getattr(e, "model", None))), "")
    if place and model:
        return f"{place} ({model})"
    return place or model or "(unknown)"


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\]\s*([^\n\]]+)")


def _reason(chain: list[BaseException], culprit: BaseException, fault: str) -> str:
    """Short: the OS's words for a failed connection, else the fault and the culprit's HTTP status,
    else the fault and the first line of the innermost message."""
    for exc in reversed(chain):  # innermost first: the socket error says it best
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        found = _ERRNO_TEXT.search(str(exc))
        if found:
            return found.group(1).strip()
    status = getattr(culprit, "status_code", None) or getattr(culprit, "status", None)
    if isinstance(status, int):
        return f"{fault} (HTTP {status})"
    text = str(chain[-1]).strip().splitlines()
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else ""  # DSPy's "[model] " prefix
    detail = detail if len(detail) <= 160 else detail[:159] + "…"
    return f"{fault}: {detail}" if detail and detail != fault else fault


def lm_endpoint_error(exc: BaseException) -> LMEndpointError | None:
    """One line for a known LM transport failure anywhere in `exc`'s chain; None for anything else.

    `error: LM endpoint <where> unreachable: <short reason>` instead of the
    pages of traceback litellm and DSPy produce for a server that is down. A
    wrapper that chains the failure (`raise Summary(...) from transport_error`,
    as a parallel map reports its first failed item) is seen through.
    """
    if isinstance(exc, LMEndpointError):
        return exc
    chain = exception_chain(exc)
    # The innermost recognised failure names the fault: outer wrappers may relabel it (litellm reports a
    # refused connection as an InternalServerError with a made-up status 500).
    found = [(e, f) for e in chain if (f := _fault(e))]
    if not found:
        return None
    culprit, fault = found[-1]
    return LMEndpointError(f"LM endpoint {_where(chain)} unreachable: {_reason(chain, culprit, fault)}")
