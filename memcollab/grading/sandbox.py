"""Run untrusted Python programs in limited subprocesses, one at a time or as a pool.

Each program runs in its own ``python -I -B`` process (``-S`` too unless site
packages are allowed), in a new session, with a fresh temporary directory as
cwd (deleted afterwards) and a stripped environment. Hard limits, enforced by
the kernel or by this process: wall clock (the whole process group is killed),
CPU time (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE),
process count (RLIMIT_NPROC, only when not root: root ignores it) and captured
output (the process group is killed past the cap). The process group is also
killed after a normal exit, so no forked leftover survives a run.

A Python preamble then makes process creation (fork/exec/spawn/subprocess,
setsid), sockets, ctypes and the ``resource`` module unusable, and refuses
writes outside the temporary directory and reads of other processes'
``/proc/<pid>/environ``. The preamble is best-effort hardening against
mistakes and naive hostility in model-written code, NOT a security boundary:
code that really wants out (e.g. by re-creating C modules) can get out. Run
untrusted models inside a container/VM if that matters.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Literal

from pydantic import BaseModel

ExecStatus = Literal["ok", "error", "timeout", "memory_limit", "killed", "output_limit"]

PROGRAM_FILE = "program.py"
MEMORY_EXIT_CODE = 125  # the preamble exits with this after an uncaught MemoryError
_SAFE_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed run (wall and CPU in seconds, memory in MB, output in bytes per stream)."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    output_bytes: int = 64 * 1024
    file_size_mb: int = 16
    site_packages: bool = False


class ExecResult(BaseModel):
    """What happened when a program ran: status, exit code, captured output and wall time."""

    status: ExecStatus
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    cpu_s: float = 0.0


# The preamble runs as `python -c PREAMBLE program.py cpu_s memory_bytes fsize_bytes` inside the temp dir.
_PREAMBLE = r'''
import sys, os, builtins, io, _io, ast, reprlib, traceback
_prog, _cpu, _mem, _fsize = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.argv = [_prog]

import resource as _resource
def _limit(which, soft, hard):
    try:
        _resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass
_limit(_resource.RLIMIT_CPU, max(1, int(_cpu + 0.999)), max(1, int(_cpu + 0.999)) + 1)
if _mem > 0:
    _limit(_resource.RLIMIT_AS, _mem, _mem)
_limit(_resource.RLIMIT_FSIZE, _fsize, _fsize)
_limit(_resource.RLIMIT_CORE, 0, 0)
if os.geteuid() != 0:  # root ignores RLIMIT_NPROC; for other users it caps processes of the whole uid
    _uid = os.getuid()
    _mine = 0
    for _entry in os.scandir("/proc"):
        try:
            _mine += _entry.name.isdigit() and _entry.stat().st_uid == _uid
        except OSError:
            pass
    _limit(_resource.RLIMIT_NPROC, _mine + 16, _mine + 16)
del _resource, _limit

with open(_prog, encoding="utf-8") as _fh:
    _source = _fh.read()

_ROOT = os.path.realpath(os.getcwd())
_PID = os.getpid()
_realpath = os.path.realpath
_fspath = os.fspath

def _deny(what):
    def blocked(*args, **kwargs):
        raise PermissionError(f"{what} is disabled in the sandbox")
    blocked.__name__ = what.split()[0].split(".")[-1]
    return blocked

def _inside(path):
    try:
        real = _realpath(_fspath(path))
    except (TypeError, ValueError):
        return True  # file descriptors and odd objects: let the real call decide
    return real == _ROOT or real.startswith(_ROOT + os.sep) or real == "/dev/null"

def _foreign_environ(path):
    try:
        parts = _realpath(_fspath(path)).split("/")
    except (TypeError, ValueError):
        return False
    return len(parts) >= 4 and parts[1] == "proc" and parts[-1] == "environ" and parts[2] != str(_PID)

_real_open = _io.open
def _open(file, mode="r", *args, **kwargs):
    if not isinstance(file, int):
        if any(c in mode for c in "wax+") and not _inside(file):
            raise PermissionError(f"writing outside the sandbox directory is not allowed: {file}")
        if _foreign_environ(file):
            raise PermissionError("reading another process's environment is not allowed")
    return _real_open(file, mode, *args, **kwargs)
builtins.open = io.open = _io.open = _open

_real_os_open = os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS and not _inside(path):
        raise PermissionError(f"writing outside the sandbox directory is not allowed: {path}")
    if _foreign_environ(path):
        raise PermissionError("reading another process's environment is not allowed")
    return _real_os_open(path, flags, *args, **kwargs)
os.open = _os_open

def _guard_paths(name, count):
    real = getattr(os, name, None)
    if real is None:
        return
    def guarded(*args, **kwargs):
        for path in args[:count]:
            if not _inside(path):
                raise PermissionError(f"modifying paths outside the sandbox directory is not allowed: {path}")
        return real(*args, **kwargs)
    guarded.__name__ = name
    setattr(os, name, guarded)
for _name, _count in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("chmod", 1), ("chown", 1),
                      ("lchown", 1), ("truncate", 1), ("utime", 1), ("mkfifo", 1), ("mknod", 1),
                      ("rename", 2), ("replace", 2), ("link", 2), ("symlink", 2)):
    _guard_paths(_name, _count)

import posix, signal as _signal, subprocess, _posixsubprocess, socket, _socket
for _mod in (os, posix):
    for _name in ("fork", "forkpty", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                  "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
                  "posix_spawn", "posix_spawnp", "system", "popen", "setsid", "setpgid", "setpgrp", "kill", "killpg"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _deny(f"{_name} (process control)"))
_signal.pthread_kill = _deny("pthread_kill (process control)")
_posixsubprocess.fork_exec = _deny("fork_exec (subprocesses)")
class _Popen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        raise PermissionError("subprocesses are disabled in the sandbox")
subprocess.Popen = _Popen

class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
class _NoRawSocket(_socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
socket.socket = socket.SocketType = _NoSocket
_socket.socket = _socket.SocketType = _NoRawSocket
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname",
              "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
    for _mod in (socket, _socket):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _deny(f"{_name} (network)"))
for _name in ("ctypes", "_ctypes", "resource", "multiprocessing", "_multiprocessing", "pty"):
    sys.modules[_name] = None
del _mod, _name, _count

_last_failed_eq = []
_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 12

def __mc_eq__(left, right, lineno):
    """`assert a == b` rewritten: the same truth value, but remember both sides when it fails."""
    result = left == right
    if not result:
        _last_failed_eq[:] = [lineno, left, right]
    return result

class _AssertEq(ast.NodeTransformer):
    def visit_Assert(self, node):
        test = node.test
        if node.msg is None and isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            call = ast.Call(ast.Name("__mc_eq__", ast.Load()),
                            [test.left, test.comparators[0], ast.Constant(node.lineno)], [])
            node.test = ast.copy_location(call, test)
        return node

def _report(exc):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != _prog:
        tb = tb.tb_next
    if isinstance(exc, AssertionError) and not exc.args and _last_failed_eq:
        last = tb
        while last is not None and last.tb_next is not None:
            last = last.tb_next
        if last is not None and last.tb_lineno == _last_failed_eq[0]:
            try:
                exc.args = (f"{_repr.repr(_last_failed_eq[1])} != {_repr.repr(_last_failed_eq[2])}",)
            except Exception:
                pass
    err = sys.__stderr__
    err.write("".join(traceback.format_exception(type(exc), exc, tb)))
    err.flush()

try:
    import warnings as _warnings
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # invalid-escape warnings of old code are not the program's output
        _tree = _AssertEq().visit(ast.parse(_source, _prog))
        _code = compile(ast.fix_missing_locations(_tree), _prog, "exec")
    del _tree, _source
    _globals = {"__name__": "__main__", "__file__": _prog, "__builtins__": builtins, "__mc_eq__": __mc_eq__}
    exec(_code, _globals)
except MemoryError:
    sys.__stderr__.write("MemoryError: the program exceeded the sandbox memory limit\n")
    sys.__stderr__.flush()
    os._exit(125)
except SystemExit:
    raise
except BaseException as _exc:
    try:
        _report(_exc)
    except MemoryError:
        os._exit(125)
    sys.exit(1)
'''


def _clean_env(tmp: str) -> dict[str, str]:
    """A fresh environment: nothing of the parent's (no API keys), temp files inside the sandbox."""
    return {"PATH": _SAFE_ENV_PATH, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group and the child itself (in case it left the group)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _exited(pid: int) -> bool:
    """True when the child has exited (checked without reaping it, so its group id stays reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _collect(proc: subprocess.Popen, limits: SandboxLimits, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Read both pipes until EOF, the deadline or the output cap; return (stdout, stderr, reason we stopped early)."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()  # type: ignore[union-attr]
    bufs = {out_fd: bytearray(), err_fd: bytearray()}

    def done(reason: str | None) -> tuple[bytes, bytes, str | None]:
        return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason

    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return done("timeout")
            for key, _ in sel.select(min(left, 0.5)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk
                if len(buf) > limits.output_bytes:
                    del buf[limits.output_bytes :]
                    return done("output_limit")
    # Both pipes closed; the process may still run (it can close its own stdout): wait for the rest of the time.
    while not _exited(proc.pid):
        if time.monotonic() >= deadline:
            return done("timeout")
        time.sleep(0.005)
    return done(None)


def _status(returncode: int, early: str | None, cpu_s: float, limits: SandboxLimits) -> ExecStatus:
    if early == "output_limit":
        return "output_limit"
    if early == "timeout":
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode == MEMORY_EXIT_CODE:
        return "memory_limit"
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu_s >= limits.cpu_s - 0.05):
        return "timeout"
    if returncode < 0:
        return "killed"
    return "error"


def run_program(code: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Run `code` as a program in the sandbox and report how it ended; never raises for anything the code does."""
    limits = limits or SandboxLimits()
    tmp = tempfile.mkdtemp(prefix="memcollab-sbx-")
    start = time.monotonic()
    try:
        with open(os.path.join(tmp, PROGRAM_FILE), "w", encoding="utf-8") as fh:
            fh.write(code)
        argv = [sys.executable, "-I", "-B", "-X", "utf8=1"]
        if not limits.site_packages:
            argv.append("-S")
        argv += [
            "-c",
            _PREAMBLE,
            PROGRAM_FILE,
            str(limits.cpu_s),
            str(limits.memory_mb * 1024 * 1024),
            str(limits.file_size_mb * 1024 * 1024),
        ]
        proc = subprocess.Popen(
            argv,
            cwd=tmp,
            env=_clean_env(tmp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        try:
            stdout, stderr, early = _collect(proc, limits, start + limits.wall_s)
        finally:
            _kill_group(proc.pid)  # also ends any descendants; the child is a zombie or alive here, so the group id is ours
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        cpu_s = usage.ru_utime + usage.ru_stime
        return ExecResult(
            status=_status(proc.returncode, early, cpu_s, limits),
            returncode=proc.returncode,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
            duration_s=round(time.monotonic() - start, 4),
            cpu_s=round(cpu_s, 4),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class SandboxPool:
    """Run many programs concurrently: a thread pool in which each thread drives one sandbox subprocess."""

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or SandboxLimits()

    def run_many(
        self,
        programs: Sequence[str],
        limits: SandboxLimits | None = None,
        on_result: Callable[[int, ExecResult], None] | None = None,
    ) -> list[ExecResult]:
        """Results in input order; `on_result(index, result)` is called as each one finishes (e.g. a progress bar)."""
        limits = limits or self.limits
        results: list[ExecResult | None] = [None] * len(programs)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            futures = {pool.submit(run_program, code, limits): i for i, code in enumerate(programs)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]
