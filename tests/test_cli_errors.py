"""User mistakes and environment faults end in one line on stderr, through the real console script.

Damaged memory stores, destinations that cannot be written, an LM endpoint that stops answering,
and messages that look like rich markup: each must print `error: ...` as one line with its text
intact and exit non-zero, never a traceback. Everything here is real: SQLite files, a read-only
mount, a TCP port that closes, the installed `memcollab` command.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from memcollab.errors import LMEndpointError, lm_endpoint_error
from memcollab.memory import MemoryStore
from memcollab.records import MemoryEntry

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **extra}
    env.pop("MEMCOLLAB_STORE", None)
    return env


def run_cli(
    *args: str, cwd: Path, prefix: Sequence[str] = (), env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    exe = shutil.which("memcollab")
    if exe is None:
        pytest.fail("console script `memcollab` not on PATH; run `pip install -e . --no-deps`")
    return subprocess.run(
        [*prefix, exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or cli_env()
    )


def error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one `error:` line of a failed run; progress output before it is allowed, a traceback is not."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def read_only_prefix(directory: Path) -> list[str]:
    """A command prefix under which `directory` cannot be written, even by root.

    Root ignores permission bits, so chmod proves nothing there: as root the directory becomes a
    read-only bind mount in a private mount namespace (`unshare -m`; writes fail with EROFS for
    root too, and the mount vanishes with the process). Other users get chmod 0555 (EACCES).
    """
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("running as root without `unshare -m`: no way to make a directory read-only for root")
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(directory)]


def entry(i: int, category: str = "algebra") -> MemoryEntry:
    return MemoryEntry(
        when=f"case {i} " * 12,
        enforce=f"rule {i} " * 12,
        avoid=f"mistake {i} " * 8,
        category=category,
        error_type="sign_error",
        domain="math",
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "mem.sqlite"
    with MemoryStore(path) as store:
        for i in range(3):
            store.add(entry(i, category=f"c{i}"), dedup_threshold=None)
    return path


def damage_columns(path: Path) -> None:
    """The `memories` table dropped and recreated with other columns (schema_version still says 1)."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE memories")
        conn.execute("CREATE TABLE memories (note TEXT)")
        conn.execute("INSERT INTO memories VALUES ('hello')")


def damage_pages(path: Path) -> None:
    """Garbage bytes over the second half of the file: the header and schema still read, the rows do not."""
    with MemoryStore(path) as store:  # enough rows to span many pages
        for i in range(3, 200):
            store.add(entry(i, category=f"c{i % 5}"), dedup_threshold=None)
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for offset in range(len(data) // 2, len(data)):
        data[offset] = rng.randrange(256)
    path.write_bytes(bytes(data))


DAMAGE = {"wrong columns": damage_columns, "garbage pages": damage_pages}


# ------------------------------------------------------------------ damaged memory stores


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", [["stats"], ["list"], ["export", "out.jsonl"], ["import", "in.jsonl"]])
def test_damaged_store_is_one_line_for_every_command(
    tmp_path: Path, store_path: Path, damage: str, command: list[str]
) -> None:
    DAMAGE[damage](store_path)
    (tmp_path / "in.jsonl").write_text(entry(999).model_dump_json() + "\n")
    line = error_line(run_cli("memory", *command, "--store", str(store_path), cwd=tmp_path), str(store_path))
    assert "damaged" in line or "malformed" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_non_sqlite_file_is_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "noise.sqlite"
    garbage.write_bytes(random.Random(1).randbytes(8192))
    for command in (["stats"], ["list"], ["export", "out.jsonl"]):
        error_line(run_cli("memory", *command, "--store", str(garbage), cwd=tmp_path), "not a database")


# ------------------------------------------------------------------ unwritable destinations


def test_export_into_a_read_only_directory(tmp_path: Path, store_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix = read_only_prefix(locked)
    try:
        proc = run_cli(
            "memory", "export", str(locked / "out.jsonl"), "--store", str(store_path), cwd=tmp_path, prefix=prefix
        )
    finally:
        locked.chmod(0o755)
    error_line(proc, "cannot write", str(locked / "out.jsonl"))
    assert list(locked.iterdir()) == []


def test_export_under_a_regular_file_and_onto_a_directory(tmp_path: Path, store_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("a file, not a directory\n")
    for out in (regular / "out.jsonl", regular / "sub" / "out.jsonl"):
        proc = run_cli("memory", "export", str(out), "--store", str(store_path), cwd=tmp_path)
        error_line(proc, "cannot write", f"{regular} is a file, not a directory")
    assert regular.read_text() == "a file, not a directory\n"

    existing = tmp_path / "dump"
    existing.mkdir()
    error_line(
        run_cli("memory", "export", str(existing), "--store", str(store_path), cwd=tmp_path),
        "cannot write",
        "is a directory",
    )
    assert list(existing.iterdir()) == []


def test_heatmap_into_a_read_only_directory(tmp_path: Path, store_path: Path) -> None:
    locked = tmp_path / "figures"
    locked.mkdir()
    prefix = read_only_prefix(locked)
    try:
        proc = run_cli(
            "memory",
            "stats",
            "--store",
            str(store_path),
            "--heatmap",
            str(locked / "heat.png"),
            cwd=tmp_path,
            prefix=prefix,
        )
    finally:
        locked.chmod(0o755)
    error_line(proc, "cannot write", str(locked / "heat.png"))
    assert list(locked.iterdir()) == []


def test_store_in_a_read_only_directory_can_be_read(tmp_path: Path, store_path: Path) -> None:
    """A WAL store on a read-only mount (a shipped results/ directory): SQLite cannot create the -shm file
    a WAL reader needs, so the read commands read it as an immutable file instead of failing."""
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shutil.move(store_path, shelf / "mem.sqlite")  # closed cleanly: no -wal beside it
    before = sorted(p.name for p in shelf.iterdir())
    prefix = read_only_prefix(shelf)
    try:
        for command in (["list"], ["stats"], ["export", str(tmp_path / "out.jsonl")]):
            proc = run_cli("memory", *command, "--store", str(shelf / "mem.sqlite"), cwd=tmp_path, prefix=prefix)
            assert proc.returncode == 0, proc.stderr
    finally:
        shelf.chmod(0o755)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in shelf.iterdir()) == before


# ------------------------------------------------------------------ markup is not interpreted


def test_path_with_markup_characters_prints_verbatim(tmp_path: Path) -> None:
    odd = tmp_path / "[/x]" / "[bold]mem.sqlite"
    proc = run_cli("memory", "list", "--store", str(odd), cwd=tmp_path)
    error_line(proc, str(odd), "not found")
    assert "MarkupError" not in proc.stderr

    odd.parent.mkdir(parents=True)
    with MemoryStore(odd) as store:
        store.add(
            MemoryEntry(
                when="a [/x] tag in a rule",
                enforce="keep [red]brackets[/red]",
                avoid="[/]",
                category="[/x]",
                error_type="[bold]",
                domain="math",
            )
        )
    for command in (["list"], ["stats"]):
        proc = run_cli("memory", *command, "--store", str(odd), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "[/x]" in proc.stdout and "[bold]" in proc.stdout
    with MemoryStore(odd, read_only=True) as store:
        entry_id = store.entries()[0].id
    proc = run_cli("memory", "show", entry_id, "--store", str(odd), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "keep [red]brackets[/red]" in proc.stdout


def test_install_hint_keeps_its_brackets(tmp_path: Path) -> None:
    """The llama-cpp-python hint names the extra `memcollab[llama]`; rich used to eat `[llama]` as a style.

    llama-cpp-python is hidden from this one process (`sys.modules['llama_cpp'] = None`, the way
    Python marks a module as unimportable) so the real CLI hits the real check and prints its hint.
    """
    script = (
        "import sys; sys.modules['llama_cpp'] = None; sys.argv[0] = 'memcollab'; from memcollab.cli import main; main()"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "evaluate",
            "--agent",
            "local:smollm2-135m",
            "--backend",
            "local",
            "--limit",
            "1",
            "--no-track",
            "--run-dir",
            str(tmp_path / "run"),
            "--data-dir",
            str(data_dir()),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    error_line(proc, "pip install 'memcollab[llama]'")


# ------------------------------------------------------------------ an LM endpoint that stops answering


@pytest.fixture
def endpoint_that_closes() -> Iterator[int]:
    """A port on 127.0.0.1 that answers one request (the CLI's reachability check) and is closed before
    that answer is sent: every LM call after it meets a closed port (connection refused)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(120)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        finally:
            listener.close()
        with conn:
            conn.recv(65536)
            body = b'{"object": "list", "data": []}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()
    thread.join(timeout=5)


def data_dir() -> Path:
    for candidate in (os.environ.get("MEMCOLLAB_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "gsm8k").is_dir():
            return Path(candidate)
    pytest.skip("no local benchmark data (../shared/data or MEMCOLLAB_DATA_DIR)")


def test_unreachable_lm_endpoint_is_one_line(tmp_path: Path, endpoint_that_closes: int) -> None:
    port = endpoint_that_closes
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "agents:\n"
        "  - name: remote\n"
        "    backend: litellm\n"
        "    model: openai/x\n"
        f"    api_base: http://127.0.0.1:{port}/v1\n"
        "    api_key_env: MEMCOLLAB_TEST_LM_KEY\n"
        "    extra: {num_retries: 0}\n"  # one attempt: the test is about the message, not DSPy's back-off
    )
    proc = run_cli(
        "evaluate",
        "--agent",
        "remote",
        "--agents-file",
        str(agents),
        "--limit",
        "1",
        "--workers",
        "1",
        "--max-errors",
        "0",  # no budget: the first unanswered call stops the run (within a budget it is counted instead)
        "--no-track",
        "--no-cache",
        "--run-dir",
        str(tmp_path / "run"),
        "--data-dir",
        str(data_dir()),
        cwd=tmp_path,
        env=cli_env(MEMCOLLAB_TEST_LM_KEY="not-a-real-key"),
    )
    line = error_line(proc, "error: ", f"LM endpoint 127.0.0.1:{port}", "unreachable", "refused")
    assert len(line) < 300, line


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_stops_at_once_and_says_what_it_kept(tmp_path: Path, sig: str, code: int) -> None:
    """Ctrl-C (or SIGTERM, how `pkill` stops a nohup'd run) in a run: its exit code within seconds, one line
    saying the finished calls are kept, no traceback. SIGTERM unwinds rather than kills, so cleanup runs."""
    import signal
    import sys
    import time

    sys.path.insert(0, str(REPO / "tests"))
    from openai_stub import OpenAIStub

    from memcollab.cli.app import INTERRUPTED

    with OpenAIStub({}, default="The answer is \\boxed{3}.", latency_s=2.0) as stub:
        agents = tmp_path / "agents.yaml"
        agents.write_text(
            "agents:\n  - name: remote\n    backend: litellm\n    model: openai/x\n"
            f"    api_base: {stub.url}\n    api_key_env: MEMCOLLAB_TEST_LM_KEY\n"
        )
        exe = shutil.which("memcollab")
        assert exe is not None, "console script `memcollab` not on PATH; run `pip install -e . --no-deps`"
        args = ["evaluate", "--agent", "remote", "--agents-file", str(agents), "--limit", "40", "--workers", "2"]
        args += ["--no-track", "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir())]
        proc = subprocess.Popen(
            [exe, *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(MEMCOLLAB_TEST_LM_KEY="k"),
            # As from a terminal: a suite started in the background (`nohup ... &`) passes SIGINT on ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while len(stub.requests()) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # until the first calls are answered and more are in flight
        proc.send_signal(getattr(signal, sig))
        start = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - start
    assert proc.returncode == code, err
    assert stopped_in < 10, f"took {stopped_in:.1f} s to stop"
    assert "Traceback" not in err and "retry" not in err, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert len(stub.requests()) < 40, "the run stopped: it did not go on with the remaining tasks"


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]  # closed when the block ends: nothing listens there


def test_transport_errors_of_each_client_are_recognised() -> None:
    """Real failures of the real clients against a closed port, each classified without importing them."""
    port = closed_port()
    dspy = pytest.importorskip("dspy")
    lm = dspy.LM("openai/x", api_base=f"http://127.0.0.1:{port}/v1", api_key="k", cache=False, num_retries=0)
    with pytest.raises(Exception) as dspy_failure:
        lm("hello")
    found = lm_endpoint_error(dspy_failure.value)
    assert isinstance(found, LMEndpointError)
    assert str(found) == f"LM endpoint 127.0.0.1:{port} (openai/x) unreachable: Connection refused"

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as openai_failure:
        client.models.list()
    found = lm_endpoint_error(openai_failure.value)
    assert found is not None and f"http://127.0.0.1:{port}" in str(found) and "unreachable" in str(found)


def test_litellm_connection_error_names_the_real_endpoint() -> None:
    """litellm relabels a refused connection as an InternalServerError (status 500) carrying a placeholder
    request to api.openai.com; the line must name the port that refused and the OS's reason instead."""
    litellm = pytest.importorskip("litellm")
    port = closed_port()
    with pytest.raises(Exception) as failure:
        litellm.completion(
            model="openai/x",
            api_base=f"http://127.0.0.1:{port}/v1",
            api_key="k",
            messages=[{"role": "user", "content": "hi"}],
            num_retries=0,
            max_retries=0,
        )
    found = lm_endpoint_error(failure.value)
    assert found is not None
    assert str(found).startswith(f"LM endpoint http://127.0.0.1:{port} ")
    assert str(found).endswith("unreachable: Connection refused")


@pytest.mark.parametrize(("status", "reason"), [(429, "rate limited (HTTP 429)"), (503, "server error (HTTP 503)")])
def test_overloaded_endpoint_is_one_line(status: int, reason: str) -> None:
    """A real HTTP server that answers every completion with 429 or 503."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    dspy = pytest.importorskip("dspy")

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b'{"error": {"message": "try again later", "type": "overloaded"}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        lm = dspy.LM(
            "openai/x",
            api_base=f"http://127.0.0.1:{server.server_address[1]}/v1",
            api_key="k",
            cache=False,
            num_retries=0,
        )
        with pytest.raises(Exception) as failure:
            lm("hello")
    finally:
        server.shutdown()
        server.server_close()
    assert str(lm_endpoint_error(failure.value)) == f"LM endpoint openai/x unreachable: {reason}"


def test_other_failures_are_not_called_lm_errors() -> None:
    """A bug keeps its traceback, and httpx failing outside any LM client (a dataset download) is not an LM."""
    assert lm_endpoint_error(ValueError("a bug")) is None
    assert lm_endpoint_error(KeyError("x")) is None
    httpx = pytest.importorskip("httpx")
    with pytest.raises(httpx.ConnectError) as failure:
        httpx.get(f"http://127.0.0.1:{closed_port()}/data.json")
    assert lm_endpoint_error(failure.value) is None
