"""The sandbox as a boundary: with bubblewrap, model code cannot read secrets, reach the network or outlive its run.

Every hostile program here first gets past the in-process guard (fresh `posix`, the real socket class under
the guard's subclass, a re-imported ctypes), so what stops it is the boundary. Where it is safe, the same
program is also run behind the guard alone to show that the probe really does get through there: a test
that passes for the wrong reason would be worthless.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memcollab.grading import isolation as iso
from memcollab.grading._child import SETUP_EXIT_CODE
from memcollab.grading.sandbox import SandboxLimits, SandboxPool, isolation_mode, run_program

BWRAP_MISSING = iso.bwrap_unavailable()
needs_bwrap = pytest.mark.skipif(
    BWRAP_MISSING is not None,
    reason=f"bubblewrap isolation not testable here: {BWRAP_MISSING} (apt-get install -y bubblewrap)",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the guard-only comparison reads root's files")

BOX = SandboxLimits(wall_s=5.0, cpu_s=3.0, memory_mb=512, output_bytes=16384, isolation="bwrap")
GUARD = BOX.model_copy(update={"isolation": "guard"})


@pytest.fixture(params=["warm", "cold"])
def box(request: pytest.FixtureRequest) -> SandboxLimits:
    """Both ways bubblewrap runs: forked from a warm sandbox (root's default) and a fresh sandbox per program."""
    return BOX.model_copy(update={"warm": request.param == "warm"})


# A fresh posix module: none of the guard's replacements (fork, open for writing, kill...) apply to it.
FRESH_POSIX = "import _imp, importlib.machinery as _m\nposix = _imp.create_builtin(_m.ModuleSpec('posix', None, origin='built-in'))\n"


@pytest.fixture(scope="module", autouse=True)
def _bwrap_mode() -> None:
    if BWRAP_MISSING is None:
        assert isolation_mode("bwrap") == "bwrap"


def _reader(paths: list[str]) -> str:
    """A program that tries to read each path and prints `path -> OK content` or `path -> ExceptionName`."""
    return FRESH_POSIX + (
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        fd = posix.open(path, 0)\n"  # O_RDONLY
        "        print(path, '->', 'OK', posix.read(fd, 4096).decode(errors='replace'))\n"
        "    except OSError as exc:\n"
        "        print(path, '->', type(exc).__name__)\n"
    )


@pytest.fixture
def ssh_secret() -> Iterator[Path]:
    """A secret file under ~/.ssh (created for the test, removed after; the directory too if we made it)."""
    ssh = Path.home() / ".ssh"
    made = not ssh.exists()
    ssh.mkdir(mode=0o700, exist_ok=True)
    secret = ssh / f"memcollab_test_{secrets.token_hex(4)}"
    secret.write_text("ssh-secret-" + secrets.token_hex(8))
    secret.chmod(0o600)
    try:
        yield secret
    finally:
        secret.unlink(missing_ok=True)
        if made:
            ssh.rmdir()


@needs_bwrap
def test_secret_files_are_unreadable(tmp_path: Path, ssh_secret: Path, box: SandboxLimits) -> None:
    outside = tmp_path / "outside_secret.txt"
    outside.write_text("outside-secret-" + secrets.token_hex(8))
    paths = ["/etc/shadow", "/etc/passwd", str(ssh_secret), str(outside), str(Path.home()), "/home"]
    result = run_program(_reader(paths), box)
    assert result.status == "ok", result
    lines = dict(line.split(" -> ", 1) for line in result.stdout.splitlines())
    assert set(lines) == set(paths)
    assert all(not verdict.startswith("OK") for verdict in lines.values()), lines
    for secret in (ssh_secret, outside):
        assert secret.read_text() not in result.stdout


@needs_bwrap
@needs_root
def test_the_reader_does_get_through_the_guard_alone(tmp_path: Path, ssh_secret: Path) -> None:
    """The same program behind the guard only reads everything: the test above fails if the boundary is gone."""
    outside = tmp_path / "outside_secret.txt"
    outside.write_text("outside-secret-" + secrets.token_hex(8))
    result = run_program(_reader([str(ssh_secret), str(outside)]), GUARD)
    assert ssh_secret.read_text() in result.stdout and outside.read_text() in result.stdout


@needs_bwrap
def test_only_the_work_dir_is_writable(tmp_path: Path, box: SandboxLimits) -> None:
    targets = [
        "/tmp/escape",
        "/escape",
        "/usr/escape",
        "/etc/escape",
        "/dev/shm/escape",
        iso.CHILD_INSIDE,
        str(tmp_path / "escape"),
        "inside.txt",
    ]
    code = FRESH_POSIX + (
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        fd = posix.open(path, 0o1 | 0o100 | 0o1000, 0o644)\n"  # O_WRONLY | O_CREAT | O_TRUNC
        "        posix.write(fd, b'x')\n"
        "        print(path, '->', 'OK')\n"
        "    except OSError as exc:\n"
        "        print(path, '->', type(exc).__name__)\n"
    )
    result = run_program(code, box)
    lines = dict(line.split(" -> ", 1) for line in result.stdout.splitlines())
    assert lines.pop("inside.txt") == "OK", result
    assert set(lines) == set(targets) - {"inside.txt"}
    assert "OK" not in lines.values(), lines
    assert not (tmp_path / "escape").exists()


@needs_bwrap
def test_the_work_dir_has_a_size_cap(box: SandboxLimits) -> None:
    limits = box.model_copy(update={"disk_mb": 8, "file_size_mb": 64})
    code = "with open('big', 'wb') as fh:\n    for _ in range(64):\n        fh.write(b'x' * 2 ** 20)\n"
    result = run_program(code, limits)
    assert result.status == "error" and result.exception == "OSError" and "No space left" in result.exception_message


@needs_bwrap
def test_runs_as_an_unprivileged_uid_without_capabilities(box: SandboxLimits) -> None:
    code = "import os\nprint(os.getuid(), os.geteuid())\nprint(open('/proc/self/status').read())"
    result = run_program(code, box)
    uid, euid = map(int, result.stdout.split("\n", 1)[0].split())
    assert uid != 0 and euid != 0
    caps = {k: v.strip() for k, _, v in (ln.partition(":") for ln in result.stdout.splitlines()) if k.startswith("Cap")}
    assert int(caps["CapEff"], 16) == int(caps["CapPrm"], 16) == 0, caps


@pytest.fixture
def env_holder() -> Iterator[str]:
    """A real host process whose environment holds a secret (what a harness with API keys looks like)."""
    secret = "env-secret-" + secrets.token_hex(8)
    proc = subprocess.Popen(["sleep", "60"], env={"MEMCOLLAB_TEST_API_KEY": secret, "PATH": "/usr/bin:/bin"})
    try:
        yield secret
    finally:
        proc.kill()
        proc.wait()


@needs_bwrap
def test_environment_secrets_are_unreachable(
    monkeypatch: pytest.MonkeyPatch, env_holder: str, box: SandboxLimits
) -> None:
    monkeypatch.setenv("MEMCOLLAB_TEST_SECRET", "parent-secret-value")
    code = FRESH_POSIX + (
        "import os\n"
        "print(sorted(os.environ))\n"
        "found = []\n"
        "for pid in posix.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            found.append(posix.read(posix.open(f'/proc/{pid}/environ', 0), 65536).decode(errors='replace'))\n"
        "        except OSError:\n"
        "            pass\n"
        "print('ENVIRONS', len(found), '|'.join(found))\n"
    )
    result = run_program(code, box)
    assert result.status == "ok", result
    assert "parent-secret-value" not in result.stdout and env_holder not in result.stdout
    assert "MEMCOLLAB_TEST_SECRET" not in result.stdout


@needs_bwrap
@needs_root
def test_environment_probe_gets_through_the_guard_alone(env_holder: str) -> None:
    code = FRESH_POSIX + (
        "for pid in posix.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            print(posix.read(posix.open(f'/proc/{pid}/environ', 0), 65536).decode(errors='replace'))\n"
        "        except OSError:\n"
        "            pass\n"
    )
    assert env_holder in run_program(code, GUARD.model_copy(update={"output_bytes": 1 << 20})).stdout


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that records what any client sends."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(100) or b"<connected>")
                except OSError:
                    received.append(b"<connected>")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join(2)
        server.close()


def _connectors(port: int) -> dict[str, str]:
    """Programs that connect to the listener around the guard: via ctypes (re-imported), via the real _socket class."""
    via_ctypes = (
        "import sys\n"
        "for name in ('ctypes', '_ctypes', 'ctypes._endian', 'struct', '_struct'):\n"
        "    sys.modules.pop(name, None)\n"
        "import ctypes, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(2, 1, 0)\n"  # AF_INET, SOCK_STREAM
        f"addr = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
        "addr = addr[:2][::-1] + addr[2:]\n"  # sa_family is host byte order
        "rc = libc.connect(fd, addr, len(addr))\n"
        "print('connect', rc, ctypes.get_errno(), flush=True)\n"
        "if rc == 0:\n"
        "    libc.send(fd, b'ctypes-was-here', 15, 0)\n"
    )
    via_socket = (
        "import _socket\n"
        "real = _socket.socket.__mro__[1]\n"  # the guard's subclass sits on top of the real class
        "s = real(2, 1, 0)\n"
        f"s.connect(('127.0.0.1', {port}))\n"
        "s.send(b'socket-was-here')\n"
        "print('connect 0', flush=True)\n"
    )
    return {"ctypes": via_ctypes, "socket": via_socket}


@needs_bwrap
@pytest.mark.parametrize("how", ["ctypes", "socket"])
def test_sockets_cannot_reach_a_host_listener(listener: tuple[int, list[bytes]], how: str, box: SandboxLimits) -> None:
    port, received = listener
    result = run_program(_connectors(port)[how], box)
    time.sleep(0.3)
    assert received == [], result
    assert "connect 0" not in result.stdout, result


@needs_bwrap
@pytest.mark.parametrize("how", ["ctypes", "socket"])
def test_the_connectors_do_get_through_the_guard_alone(listener: tuple[int, list[bytes]], how: str) -> None:
    port, received = listener
    result = run_program(_connectors(port)[how], GUARD)
    deadline = time.monotonic() + 3
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "connect 0" in result.stdout and received, result


def _alive_named(name: str) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"Name:\t{name}\n" in text and "State:\tZ" not in text:
            found.append(int(status.parent.name))
    return found


@needs_bwrap
def test_fork_bomb_is_bounded_and_leaves_no_process(box: SandboxLimits) -> None:
    """Every process forks as fast as it can; each success prints one '+'. RLIMIT_NPROC of the fresh uid caps them."""
    marker = "mb" + secrets.token_hex(6)
    code = FRESH_POSIX + (
        f"posix.write(posix.open('/proc/self/comm', 1), b'{marker}')\n"
        "import time\n"
        "end = time.monotonic() + 60\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        if posix.fork() > 0:\n"
        "            posix.write(1, b'+')\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    start = time.monotonic()
    result = run_program(code, box.model_copy(update={"wall_s": 3.0, "output_bytes": 1 << 20}))
    assert time.monotonic() - start < 3.0 + 3
    forks = result.stdout.count("+")
    assert 0 < forks < iso.NPROC_FRESH_UID, (forks, result)
    assert result.status in ("timeout", "killed")
    time.sleep(0.3)
    assert _alive_named(marker) == []


@needs_bwrap
def test_hostile_programs_still_end_with_a_verdict(box: SandboxLimits) -> None:
    hostile = {
        "ignores SIGXCPU and spins": "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass",
        "floods stderr": "import sys\nwhile True: sys.stderr.write('e' * 10000)",
        "closes its pipes and sleeps": "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)",
        "exits but leaves a child": FRESH_POSIX
        + "import time\nif posix.fork() == 0:\n    time.sleep(60)\nprint('bye')",
        "forks children that hold the pipes": FRESH_POSIX
        + "import time\nfor _ in range(5):\n    posix.fork()\ntime.sleep(60)",
        "fills the disk": "import os\nn = 0\nwhile True:\n    open(f'f{n}', 'wb').write(b'x' * 2 ** 20)\n    n += 1",
        "allocates without end": "x = []\nwhile True: x.append(bytearray(10 ** 7))",
        "recurses": "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n): return f(n + 1)\nf(0)",
    }
    limits = box.model_copy(update={"wall_s": 2.0, "cpu_s": 1.0, "memory_mb": 256, "output_bytes": 4096, "disk_mb": 16})
    start = time.monotonic()
    results = SandboxPool(workers=2, limits=limits).run_many(list(hostile.values()))
    elapsed = time.monotonic() - start
    statuses = dict(zip(hostile, (r.status for r in results)))
    assert statuses == {
        "ignores SIGXCPU and spins": "timeout",
        "floods stderr": "output_limit",
        "closes its pipes and sleeps": "timeout",
        "exits but leaves a child": "ok",
        "forks children that hold the pipes": "timeout",
        "fills the disk": "error",
        "allocates without end": "memory_limit",
        "recurses": statuses[
            "recurses"
        ],  # a segfault, a RecursionError, MemoryError or the clock: by platform and load
    }
    assert statuses["recurses"] in ("killed", "error", "memory_limit", "timeout")
    assert elapsed < len(hostile) * (limits.wall_s + 1) / 2 + 5, elapsed


@needs_bwrap
@needs_root
def test_programs_in_one_warm_sandbox_cannot_see_each_other() -> None:
    """The warm sandbox runs programs one after another: the next finds nothing of the last (files, processes)."""
    marker = "mw" + secrets.token_hex(6)
    first = FRESH_POSIX + (
        "import os, time\n"
        "open('secret.txt', 'w').write('left behind')\n"
        "os.mkdir('sub')\nos.chmod('.', 0)\n"  # try to make the clean-up fail
        "if posix.fork() == 0:\n"
        f"    posix.write(posix.open('/proc/self/comm', 1), b'{marker}')\n"
        "    time.sleep(60)\n"
        "print(os.getcwd(), os.getuid(), flush=True)\n"
    )
    second = FRESH_POSIX + (
        "import os\n"
        "print(os.getuid(), sorted(os.listdir('/tmp')))\n"
        f"print([p for p in posix.listdir('/proc') if p.isdigit() and '{marker}' in open(f'/proc/{{p}}/comm').read()])\n"
    )
    limits = BOX.model_copy(update={"warm": True})
    a = run_program(first, limits)
    b = run_program(second, limits)  # one thread: the same warm sandbox, given back and taken again
    assert a.status == "ok" and b.status == "ok", (a, b)
    a_dir, a_uid = a.stdout.split()
    b_uid, listing = b.stdout.splitlines()[0].split(" ", 1)
    assert a_uid != b_uid
    assert os.path.basename(a_dir) not in listing and len(eval(listing)) == 1
    assert b.stdout.splitlines()[1] == "[]"
    assert _alive_named(marker) == []


def test_a_failed_privilege_drop_runs_nothing(tmp_path: Path) -> None:
    """The child refuses to run the program when it cannot become who it was told to be (fail closed)."""
    (tmp_path / "program.py").write_text("print('PROGRAM RAN')")
    read, write = os.pipe()
    spec = {
        "program": "program.py",
        "cpu_s": 2,
        "memory_bytes": 0,
        "fsize_bytes": 2**20,
        "report_fd": write,
        "uid": 1,
        "gid": -7,
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(iso.CHILD), __import__("json").dumps(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        pass_fds=(write,),
        timeout=60,
    )
    os.close(write)
    report = os.read(read, 65536).decode()
    os.close(read)
    assert proc.returncode == SETUP_EXIT_CODE and "PROGRAM RAN" not in proc.stdout
    assert '"setup_error"' in report and '"start"' not in report


def test_child_module_imports_without_side_effects() -> None:
    code = (
        "import builtins, os\nopen_ = builtins.open\nimport memcollab.grading._child as c\nassert builtins.open is open_ and c.main\n"
        "assert os.fork.__module__ == 'posix'\nprint('clean')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "clean", proc.stderr


def test_child_module_runs_with_dash_m(tmp_path: Path) -> None:
    """`python -m memcollab.grading._child SPEC` is the same child (what a linter or a debugger would run)."""
    (tmp_path / "program.py").write_text("raise KeyError('k')")
    spec = {"program": "program.py", "cpu_s": 2, "memory_bytes": 0, "fsize_bytes": 2**20, "report_fd": -1}
    proc = subprocess.run(
        [sys.executable, "-m", "memcollab.grading._child", __import__("json").dumps(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.strip().endswith("KeyError: 'k'")


def test_without_a_boundary_auto_refuses_and_only_guard_asks_for_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where bubblewrap is missing (simulated: not found on PATH) and no unprivileged uid can run the interpreter,
    "auto" refuses in one line naming both ways out, rather than run model code behind the guard alone."""
    from memcollab.grading import sandbox

    monkeypatch.setattr(iso, "bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_modes", {})
    monkeypatch.setattr(sandbox, "_refused", {})
    monkeypatch.delenv("MEMCOLLAB_SANDBOX", raising=False)
    missing = "bubblewrap (bwrap) is not installed"
    if sandbox._unavailable("uid") is None:  # a root harness whose interpreter an unprivileged uid can run
        assert isolation_mode("auto") == "uid"
        missing = "no bwrap here"
        monkeypatch.setattr(sandbox, "_unavailable", lambda mode: None if mode == "guard" else f"no {mode} here")
        sandbox._modes.clear()
    with pytest.raises(sandbox.SandboxError) as refused:
        run_program("print('never runs')")
    said = str(refused.value)
    assert said.startswith("no sandbox boundary for model code on this machine (") and "\n" not in said
    assert missing in said and "not a security boundary" in said, "why, and what the guard alone is"
    assert "apt-get install -y bubblewrap" in said and "MEMCOLLAB_SANDBOX=guard" in said
    with pytest.raises(sandbox.SandboxError, match="^no sandbox boundary"):
        isolation_mode("auto")  # remembered: a pool of workers does not probe again
    with pytest.raises(sandbox.SandboxError, match="^sandbox isolation 'bwrap' is unavailable: "):
        isolation_mode("bwrap")
    result = run_program("print('still graded')", SandboxLimits(isolation="guard"))  # asked for by name
    assert (result.status, result.isolation) == ("ok", "guard")
    monkeypatch.setenv("MEMCOLLAB_SANDBOX", "guard")  # or by the environment, for "auto"
    result = run_program("print('still graded')")
    assert (result.status, result.isolation) == ("ok", "guard")


def test_environment_variable_chooses_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from memcollab.errors import ConfigError

    monkeypatch.setenv("MEMCOLLAB_SANDBOX", "guard")
    assert run_program("print(1)").isolation == "guard"
    monkeypatch.setenv("MEMCOLLAB_SANDBOX", "docker")
    with pytest.raises(ConfigError, match="MEMCOLLAB_SANDBOX"):
        run_program("print(1)")
