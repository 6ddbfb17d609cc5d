"""llama.cpp's `llama-server` as a backend: build it, run it without orphans, hand DSPy an LM on it.

Modules, one job each: `build` (compile and locate the binary), `supervise`
(children that never outlive this process), `process` (one server process),
`registry` (the servers this process runs, shared between agents), `dspy_lm`
(the DSPy LM on a server). Importing this package is cheap: dspy is loaded
only when an LM is built.
"""

from memcollab.lm.server.build import build_server, find_server_binary
from memcollab.lm.server.dspy_lm import server_lm
from memcollab.lm.server.process import LlamaServer, server_healthy
from memcollab.lm.server.registry import ensure_server, resolve_model, running_servers, shutdown_all

__all__ = [
    "LlamaServer",
    "build_server",
    "ensure_server",
    "find_server_binary",
    "resolve_model",
    "running_servers",
    "server_healthy",
    "server_lm",
    "shutdown_all",
]
