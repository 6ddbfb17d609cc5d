"""Real HTTP endpoints on 127.0.0.1 for LM fault tests: a scripted OpenAI-compatible stub and a counting proxy.

`OpenAIStub` answers `/v1/chat/completions` the way a flaky endpoint does, on a schedule per task:
HTTP 500/503, 429 with Retry-After, a hang longer than the client's timeout, a body cut off
mid-way (the connection closes with bytes outstanding), a complete but garbled body, a 400
(not transient), then normal answers. It also answers llama-server's `/health` and `/props`.

`CountingProxy` forwards everything to a real server (llama-server) and logs each completion
request's body hash and whether its answer was delivered; it can hold the next request so a test
kills its client at a known point.

Both serve from daemon threads (stdlib `http.server`) and are context managers.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: What the stub does with one request: answer normally, or fail in one of these ways.
FAULTS = ("ok", "500", "503", "429", "hang", "cut", "garbled", "400")


def body_hash(body: bytes) -> str:
    """Identity of a request: the same prompt and settings give the same hash, whichever run sends it."""
    return hashlib.sha256(body).hexdigest()[:16]


def _prompt_text(payload: Any) -> str:
    """Every message's text of a chat request, joined (to find a task's marker in it)."""
    messages = payload.get("messages", []) if isinstance(payload, dict) else []
    parts = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        parts.append(str(content))
    return "\n".join(parts)


def completion(content: str, model: str = "stub") -> bytes:
    """An OpenAI chat.completion body with one assistant message."""
    return json.dumps(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    ).encode()


@dataclass
class Seen:
    """One completion request as the stub or proxy saw it."""

    index: int
    marker: str  # the stub's task marker found in the prompt ("" if none)
    hash: str
    fault: str = "ok"
    answered: bool = False  # the whole response was written to the client
    response: bytes = b""  # the proxy's: the upstream body it passed on


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Endpoint:
    """A threaded HTTP server on 127.0.0.1 with a request log; subclasses say how to answer."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                endpoint.handle_get(self)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.handle_post(self, body)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> _Endpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _reply(
        handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Write a whole response; False if the client was gone."""
        try:
            handler.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            handler.wfile.flush()
            return True
        except OSError:
            handler.close_connection = True
            return False

    def handle_get(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def handle_post(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        raise NotImplementedError


class OpenAIStub(_Endpoint):
    """An OpenAI-compatible chat endpoint that fails on a per-task schedule, then answers.

    `answers` maps a marker (a piece of a task's prompt) to the text the stub replies for it.
    `faults` maps a marker to its schedule: a list of faults for its first requests (then "ok"),
    or one fault as a string for every request. A request matching no marker gets `default`.
    `latency_s` delays every completion (so parallel requests overlap); `peak_in_flight` is the most
    completion requests it has had in flight at once.
    """

    def __init__(
        self,
        answers: Mapping[str, str],
        faults: Mapping[str, Sequence[str] | str] | None = None,
        *,
        default: str = "I do not know.",
        hang_s: float = 30.0,
        retry_after_s: int = 1,
        latency_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.answers = dict(answers)
        self.faults = dict(faults or {})
        for schedule in self.faults.values():
            unknown = {schedule} if isinstance(schedule, str) else set(schedule)
            assert unknown <= set(FAULTS), f"unknown fault(s) {unknown - set(FAULTS)}"
        self.default = default
        self.hang_s = hang_s
        self.retry_after_s = retry_after_s
        self.latency_s = latency_s
        self.in_flight = self.peak_in_flight = 0

    def requests(self, marker: str | None = None) -> list[Seen]:
        """Completion requests so far (for one marker)."""
        with self._lock:
            return [s for s in self.seen if marker is None or s.marker == marker]

    def _fault(self, marker: str) -> str:
        schedule = self.faults.get(marker, ())
        if isinstance(schedule, str):
            return schedule
        earlier = sum(1 for s in self.seen if s.marker == marker) - 1  # this request is logged already
        return schedule[earlier] if earlier < len(schedule) else "ok"

    def handle_get(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path.rstrip("/")
        if path.endswith("/models"):
            models = {"object": "list", "data": [{"id": "stub", "object": "model"}]}
            self._reply(handler, 200, json.dumps(models).encode())
        elif path == "/health":  # llama-server's, so a `backend: server` agent can use the stub too
            self._reply(handler, 200, b'{"status": "ok"}')
        elif path == "/props":
            self._reply(handler, 200, b'{"total_slots": 1}')
        else:
            self._reply(handler, 404, b'{"error": {"message": "not found"}}')

    def handle_post(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if not handler.path.rstrip("/").endswith("/chat/completions"):
            self._reply(handler, 404, b'{"error": {"message": "not found"}}')
            return
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            self._stop.wait(self.latency_s)
            self._complete(handler, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _complete(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        text = _prompt_text(json.loads(body or b"{}"))
        marker = next((m for m in self.answers if m in text), "")
        with self._lock:
            seen = Seen(index=len(self.seen), marker=marker, hash=body_hash(body))
            self.seen.append(seen)
            seen.fault = fault = self._fault(marker)
        ok = completion(self.answers.get(marker, self.default))
        if fault == "ok":
            seen.answered = self._reply(handler, 200, ok)
        elif fault in ("500", "503"):
            self._reply(handler, int(fault), b'{"error": {"message": "injected server error", "type": "server_error"}}')
        elif fault == "400":  # the request itself is wrong: retrying cannot help
            self._reply(handler, 400, b'{"error": {"message": "injected bad request", "type": "invalid_request"}}')
        elif fault == "429":
            self._reply(
                handler,
                429,
                b'{"error": {"message": "injected rate limit", "type": "rate_limit_error"}}',
                {"Retry-After": str(self.retry_after_s)},
            )
        elif fault == "hang":
            self._stop.wait(self.hang_s)  # longer than the client's timeout: it gives up first
            handler.close_connection = True
        elif fault == "cut":  # headers promise the whole body; half of it arrives, then the connection closes
            try:
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(ok)))
                handler.end_headers()
                handler.wfile.write(ok[: len(ok) // 2])
                handler.wfile.flush()
            except OSError:
                pass
            handler.close_connection = True
        elif fault == "garbled":  # a complete response whose body is not JSON (half of one)
            self._reply(handler, 200, ok[: len(ok) // 2])


class CountingProxy(_Endpoint):
    """Forwards every request to `upstream` (a server root, e.g. llama-server's) and logs completion requests.

    `hold_after(n)`: once `n` completion requests have been answered, the next one is held (never
    forwarded) and `held` is set, so a test can kill the client while exactly that call is in flight.
    `add_to_body` is merged into each completion request on its way up (the log keeps the client's body).
    """

    def __init__(self, upstream: str, add_to_body: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.add_to_body = dict(add_to_body or {})
        parsed = urllib.parse.urlsplit(upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._hold_after: int | None = None
        self.held = threading.Event()

    def hold_after(self, answered: int | None) -> None:
        self._hold_after = answered
        self.held.clear()

    def answered(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.answered]

    def _forward(
        self, handler: http.server.BaseHTTPRequestHandler, method: str, body: bytes | None, seen: Seen | None = None
    ) -> bool:
        conn = http.client.HTTPConnection(*self._upstream, timeout=600)
        try:
            dropped = ("host", "connection", "content-length")  # http.client sets them for the (maybe new) body
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in dropped}
            conn.request(method, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if seen is not None:
                seen.response = payload
            passed = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "content-type")
            }
            passed["Content-Type"] = response.getheader("Content-Type", "application/json")
            return self._reply(handler, response.status, payload, passed)
        finally:
            conn.close()

    def handle_get(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self._forward(handler, "GET", None)

    def handle_post(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        if not handler.path.rstrip("/").endswith("/chat/completions"):
            self._forward(handler, "POST", body)
            return
        with self._lock:
            seen = Seen(index=len(self.seen), marker="", hash=body_hash(body))
            self.seen.append(seen)
            hold = self._hold_after is not None and sum(s.answered for s in self.seen) >= self._hold_after
        if hold:
            seen.fault = "held"
            self.held.set()
            self._stop.wait()  # until the proxy stops; the client is killed meanwhile
            handler.close_connection = True
            return
        if self.add_to_body:
            body = json.dumps({**json.loads(body), **self.add_to_body}).encode()
        seen.answered = self._forward(handler, "POST", body, seen)
