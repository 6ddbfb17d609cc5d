"""The servers this process runs: one per (model, slots, context, threads), shared by every agent that asks.

Two agents on the same model and settings share one process (its slots serve
both); a server that died (e.g. after Ctrl-C) is replaced on the next request;
`shutdown_all` stops them all, and the supervision hooks stop them at exit
even when nobody calls it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from memcollab.errors import ModelError
from memcollab.lm.server import supervise
from memcollab.lm.server.process import DEFAULT_CTX_PER_SLOT, DEFAULT_N_PARALLEL, LlamaServer

_REGISTRY: dict[tuple[str, int, int, int], LlamaServer] = {}
_REGISTRY_LOCK = threading.RLock()


def resolve_model(model: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """(GGUF path, name) for a catalogue name or a path to a .gguf file."""
    candidate = Path(model).expanduser()
    if candidate.suffix == ".gguf" or candidate.is_file():
        if not candidate.is_file():
            raise ModelError(f"model file not found: {candidate}")
        return candidate.resolve(), candidate.stem
    from memcollab.lm.assemble import model_path

    return Path(model_path(str(model), model_dir)), str(model)


def ensure_server(
    model: str | os.PathLike[str],
    n_parallel: int = DEFAULT_N_PARALLEL,
    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
    threads: int | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> LlamaServer:
    """The running server for this model and configuration, started on first use."""
    path, name = resolve_model(model, model_dir)
    threads = threads or os.cpu_count() or 1
    key = (str(path), n_parallel, ctx_per_slot, threads)
    with _REGISTRY_LOCK:
        server = _REGISTRY.get(key)
        if server is None or not server.running:
            if server is not None:
                server.stop()  # reap the dead process and close its log
            server = LlamaServer(path, n_parallel, ctx_per_slot, threads, alias=name, **kwargs)
            server.start()
            _REGISTRY[key] = server
        return server


def running_servers() -> list[LlamaServer]:
    with _REGISTRY_LOCK:
        return [s for s in _REGISTRY.values() if s.running]


def shutdown_all() -> None:
    """Stop every server this process started (registry or not)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
    supervise.stop_all()
