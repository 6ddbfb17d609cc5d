"""An in-process llama.cpp model as a DSPy language model.

`LlamaCppLM` is a `dspy.BaseLM` whose `forward` runs llama-cpp-python's
`create_chat_completion` (chat template read from the GGUF) and returns an
OpenAI-shaped response (choices + usage), so DSPy's adapters, history and
usage tracking work unchanged.

Why this shape:
- One `llama_cpp.Llama` per (model file, n_ctx, threads), shared through a
  module registry, so two agents on the same model do not load it twice; one
  lock per loaded model because a llama.cpp context is not thread-safe, and
  a process-wide core budget so generations on *different* models do not
  oversubscribe the CPU (each one already uses every core).
- DSPy only applies its response cache to its own `dspy.LM`, not to custom
  `BaseLM` subclasses (dspy 3.4: `PreparedCall.cache` is False for them), so
  `forward` reads and writes `dspy.cache` itself with the same kind of
  request key. `dspy.configure_cache(...)` (see `memcollab.lm.factory.configure_dspy_cache`)
  therefore governs this cache too; `cache=False` per LM or per call skips it.
- JSON output (`response_format` from `dspy.JSONAdapter`) is enforced with a
  llama.cpp grammar built from the JSON schema, which makes small models emit
  parseable JSON.
- DSPy 3.4 deprecates `BaseLM.forward` subclasses in favour of engines
  (removal planned for 3.5); the subclass interface is the one that works
  on every DSPy 3.0-3.4, so we keep it and silence that one warning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

warnings.filterwarnings(
    "ignore", message=r"Implementing custom LMs through BaseLM\.forward", category=DeprecationWarning
)

# Sampling parameters passed through to llama-cpp-python; anything else DSPy sends is not for it.
_PASSTHROUGH = {
    "temperature",
    "max_tokens",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "logprobs",
    "top_logprobs",
}


def default_threads() -> int:
    """Cores this process may use (not the machine's total, which lies inside containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class LoadedModel:
    """A loaded llama.cpp model and the lock that serialises every call into it."""

    llama: Any
    lock: threading.Lock
    path: str
    n_ctx: int
    n_threads: int


_REGISTRY: dict[tuple[str, int, int], LoadedModel] = {}
_REGISTRY_LOCK = threading.Lock()

# Each generation already uses every core; two at once (different models, different threads)
# only make llama.cpp's worker threads spin against each other, which on 2 cores was measured
# ~10x slower. So generations in this process share a budget of cores.
_CORE_BUDGET = threading.Condition()
_CORES_IN_USE = 0


class _Cores:
    """Hold `n` cores of the process-wide budget for one generation (at least one generation always runs)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        global _CORES_IN_USE
        with _CORE_BUDGET:
            _CORE_BUDGET.wait_for(lambda: _CORES_IN_USE == 0 or _CORES_IN_USE + self.n <= default_threads())
            _CORES_IN_USE += self.n

    def __exit__(self, *exc: object) -> None:
        global _CORES_IN_USE
        with _CORE_BUDGET:
            _CORES_IN_USE -= self.n
            _CORE_BUDGET.notify_all()


def load_model(path: str | os.PathLike[str], n_ctx: int = 4096, n_threads: int | None = None) -> LoadedModel:
    """The shared loaded model for (path, n_ctx, n_threads), loading it on first use."""
    import llama_cpp

    resolved = str(Path(path).resolve())
    threads = n_threads or default_threads()
    key = (resolved, int(n_ctx), int(threads))
    with _REGISTRY_LOCK:
        loaded = _REGISTRY.get(key)
        if loaded is None:
            llama = llama_cpp.Llama(
                model_path=resolved,
                n_ctx=int(n_ctx),
                n_threads=threads,
                n_threads_batch=threads,
                seed=0,
                verbose=False,
            )
            loaded = LoadedModel(llama, threading.Lock(), resolved, int(n_ctx), threads)
            _REGISTRY[key] = loaded
        return loaded


def unload_all() -> None:
    """Drop every loaded model (frees their memory once no LM refers to them)."""
    with _REGISTRY_LOCK:
        for loaded in _REGISTRY.values():
            close = getattr(loaded.llama, "close", None)
            if close is not None:
                with loaded.lock:
                    close()
        _REGISTRY.clear()


class _Response(dict):
    """OpenAI-shaped chat completion: a dict (what llama.cpp returns) with attribute access (what DSPy reads)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _llama_response_format(fmt: Any) -> dict[str, Any] | None:
    """Map DSPy's response_format (pydantic class, json_schema or json_object dict) to llama.cpp's form."""
    if fmt is None:
        return None
    if isinstance(fmt, type):
        schema_fn = getattr(fmt, "model_json_schema", None)
        return {"type": "json_object", "schema": schema_fn()} if schema_fn else None
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
        if kind == "json_object":
            return {k: v for k, v in fmt.items() if k in ("type", "schema")}
    return None


def _perf(llama: Any) -> dict[str, float] | None:
    """Prompt/generation token counts and milliseconds of the last call (llama.cpp's own counters)."""
    try:
        import llama_cpp

        data = llama_cpp.llama_perf_context(llama._ctx.ctx)
        return {
            "prompt_n": int(data.n_p_eval),
            "prompt_ms": float(data.t_p_eval_ms),
            "predicted_n": int(data.n_eval),
            "predicted_ms": float(data.t_eval_ms),
        }
    except Exception:
        return None


def _perf_reset(llama: Any) -> None:
    try:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
    except Exception:
        logging.getLogger(__name__).debug("llama.cpp perf counters unavailable", exc_info=True)


class LlamaCppLM(dspy.BaseLM):
    """A GGUF model run in this process by llama.cpp, usable anywhere DSPy takes an LM."""

    def __init__(
        self,
        model: str = "",
        *,
        model_path: str | os.PathLike[str],
        n_ctx: int = 4096,
        n_threads: int | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        seed: int | None = 0,
        cache: bool = True,
        fingerprint: str | None = None,
        model_type: str = "chat",
        num_retries: int = 0,
        callbacks: list | None = None,
        **kwargs: Any,
    ):
        path = Path(model_path)
        super().__init__(
            model=model or f"local/{path.stem}",
            model_type=model_type,
            temperature=temperature,
            max_tokens=max_tokens,
            cache=cache,
            callbacks=callbacks,
            num_retries=num_retries,
            seed=seed,
            **kwargs,
        )
        self.model_path = str(path)
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads
        # Identifies the weights in cache keys: the sha256 when known, else the file's identity.
        self.fingerprint = fingerprint or self._file_identity(path)

    @staticmethod
    def _file_identity(path: Path) -> str:
        try:
            st = path.stat()
            return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return str(path)

    # -- DSPy capability flags: JSONAdapter sends a schema we can enforce with a grammar
    @property
    def supported_params(self) -> set[str]:
        return set(_PASSTHROUGH)

    @property
    def supports_response_schema(self) -> bool:
        return True

    def loaded(self) -> LoadedModel:
        """The shared llama.cpp model behind this LM (loaded on first call)."""
        return load_model(self.model_path, self.n_ctx, self.n_threads)

    def dump_state(self) -> dict[str, Any]:
        state = super().dump_state()
        state.update(
            model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads, fingerprint=self.fingerprint
        )
        return state

    # -- the call
    def forward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> _Response:
        merged = {**self.kwargs, **kwargs}
        use_cache = bool(merged.pop("cache", self.cache))
        rollout_id = merged.pop("rollout_id", None)
        n = int(merged.pop("n", 1) or 1)
        params = {k: v for k, v in merged.items() if k in _PASSTHROUGH and v is not None}
        if "response_format" in params:
            fmt = _llama_response_format(params.pop("response_format"))
            if fmt is not None:
                params["response_format"] = fmt
        chat = list(messages) if messages else [{"role": "user", "content": prompt or ""}]

        key = None
        if use_cache:
            key = {
                "_fn_identifier": f"{__name__}.LlamaCppLM.forward",
                "model": self.fingerprint,
                "n_ctx": self.n_ctx,
                "messages": chat,
                "params": params,
                "n": n,
                "rollout_id": rollout_id,
            }
            hit = dspy.cache.get(key)
            if hit is not None:
                response = _Response(hit)
                response["usage"] = {}
                response["cache_hit"] = True
                return response

        response = self._generate(chat, params, n)
        if key is not None:
            dspy.cache.put(key, dict(response))
        return response

    def _generate(self, chat: list[dict[str, Any]], params: dict[str, Any], n: int) -> _Response:
        loaded = self.loaded()
        choices: list[dict[str, Any]] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        timings = {"prompt_n": 0, "prompt_ms": 0.0, "predicted_n": 0, "predicted_ms": 0.0}
        started = time.perf_counter()
        for i in range(n):
            call = dict(params)
            if call.get("seed") is not None:
                call["seed"] = int(call["seed"]) + i  # distinct samples when n > 1
            with _Cores(loaded.n_threads), loaded.lock:
                _perf_reset(loaded.llama)
                raw = self._complete(loaded.llama, chat, call)
                perf = _perf(loaded.llama)
            choice = dict(raw["choices"][0])
            choice["index"] = i
            choices.append(choice)
            for k in usage:
                usage[k] += int(raw.get("usage", {}).get(k, 0))
            if perf:
                for k in timings:
                    timings[k] += perf[k]
        return _Response(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            object="chat.completion",
            created=int(time.time()),
            model=self.model,
            choices=choices,
            usage=usage,
            timings={**timings, "wall_ms": (time.perf_counter() - started) * 1000},
        )

    def _complete(self, llama: Any, chat: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        # llama-cpp-python itself falls back to a generic JSON grammar when a schema cannot be compiled.
        try:
            return llama.create_chat_completion(messages=chat, **params)
        except ValueError as exc:
            if "exceed context window" in str(exc):
                from dspy.utils.exceptions import ContextWindowExceededError

                raise ContextWindowExceededError(model=self.model, message=str(exc)) from exc
            raise
