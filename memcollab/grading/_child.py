"""The sandbox's child side: set limits, drop privileges, guard, run the program, report how it ended.

The parent (``sandbox.py``) runs this file by path::

    python -I -B -X utf8=1 [-S] .../_child.py SPEC_JSON

inside bubblewrap, as an unprivileged uid, or (weakest) as a plain subprocess.
It imports only the standard library: inside bubblewrap the interpreter's
prefix is visible but this package is not. Importing it has no side effects,
so tests and linters reach every function.

Side channel: ``spec["report_fd"]`` is the write end of a pipe. The child
writes JSON lines to it: ``{"event": "start"}`` once limits and privileges are
in place (before any program code runs; no start means the sandbox itself
failed), then ``{"event": "exception", "type": ..., "message": ...}`` when
the program ends by an exception. The parent files errors by that class
name, never by parsing stderr, which the program controls.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import os
import reprlib
import sys
import traceback

TYPE_CHECKING = False  # `typing` costs startup time in every sandboxed run; annotations are strings here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PROGRAM_FILE = "program.py"
MEMORY_EXIT_CODE = 125  # an uncaught MemoryError
SETUP_EXIT_CODE = 126  # limits or privilege drop failed: no program code ran
MESSAGE_CHARS = 500  # longest exception message sent over the side channel
NAME_CHARS = 80

_last_failed_eq: list[Any] = []
_REPR = reprlib.Repr()
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12


# ------------------------------------------------------------------ limits and privileges


def set_limits(cpu_s: float, memory_bytes: int, fsize_bytes: int, nproc: int) -> None:
    """Kernel-enforced limits; the values come from the parent, which knows the harness's uid and mode."""
    import resource

    def limit(which: int, soft: int, hard: int) -> None:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass

    cpu = max(1, int(cpu_s + 0.999))
    limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    if memory_bytes > 0:
        limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    limit(resource.RLIMIT_FSIZE, fsize_bytes, fsize_bytes)
    limit(resource.RLIMIT_CORE, 0, 0)
    if nproc > 0:  # counts every process and thread of the (real) uid; root is exempt, hence the uid drop
        limit(resource.RLIMIT_NPROC, nproc, nproc)


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`:`gid` for good (no supplementary groups, no capabilities left); raise if anything remains."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise PermissionError(f"privilege drop to {uid}:{gid} did not take")
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            caps = {k: v.strip() for k, _, v in (line.partition(":") for line in fh) if k in ("CapPrm", "CapEff")}
    except OSError:
        return
    if any(int(v, 16) for v in caps.values()):
        raise PermissionError(f"capabilities left after the privilege drop: {caps}")
    _make_dumpable()


def _make_dumpable() -> None:
    """Undo the 'non-dumpable' mark the kernel sets on a uid change, which makes /proc/self root's.

    Nothing privileged is left in the process to protect. Best effort (ctypes may be missing); the warm
    sandbox has ctypes preloaded, so this costs a call, not an import.
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, SUID_DUMP_USER
    except (ImportError, OSError, AttributeError):
        pass


# ------------------------------------------------------------------ the in-process guard


def _deny(what: str) -> Callable[..., Any]:
    def blocked(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(f"{what} is disabled in the sandbox")

    blocked.__name__ = what.split()[0].split(".")[-1]
    return blocked


def install_guard(root: str) -> None:
    """Make process creation, sockets, ctypes and writes outside `root` fail with a clear PermissionError.

    Friendly errors for naive code, not a boundary: a program that wants out
    can rebuild what this removes. The boundary is bubblewrap or the uid drop.
    """
    import _io
    import _posixsubprocess
    import _socket
    import posix
    import signal
    import socket
    import subprocess

    root = os.path.realpath(root)
    pid = os.getpid()
    realpath, fspath = os.path.realpath, os.fspath

    def inside(path: Any) -> bool:
        try:
            real = realpath(fspath(path))
        except (TypeError, ValueError):
            return True  # file descriptors and odd objects: let the real call decide
        return real == root or real.startswith(root + os.sep) or real == "/dev/null"

    def foreign_environ(path: Any) -> bool:
        try:
            parts = realpath(fspath(path)).split("/")
        except (TypeError, ValueError):
            return False
        return len(parts) >= 4 and parts[1] == "proc" and parts[-1] == "environ" and parts[2] != str(pid)

    real_open = _io.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int):
            if any(c in mode for c in "wax+") and not inside(file):
                raise PermissionError(f"writing outside the sandbox directory is not allowed: {file}")
            if foreign_environ(file):
                raise PermissionError("reading another process's environment is not allowed")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open  # type: ignore[assignment]

    real_os_open = os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & write_flags and not inside(path):
            raise PermissionError(f"writing outside the sandbox directory is not allowed: {path}")
        if foreign_environ(path):
            raise PermissionError("reading another process's environment is not allowed")
        return real_os_open(path, flags, *args, **kwargs)

    os.open = guarded_os_open  # type: ignore[assignment]

    def guard_paths(name: str, count: int) -> None:
        real = getattr(os, name, None)
        if real is None:
            return

        def guarded(*args: Any, **kwargs: Any) -> Any:
            for path in args[:count]:
                if not inside(path):
                    raise PermissionError(f"modifying paths outside the sandbox directory is not allowed: {path}")
            return real(*args, **kwargs)

        guarded.__name__ = name
        setattr(os, name, guarded)

    for name, count in (
        ("remove", 1),
        ("unlink", 1),
        ("rmdir", 1),
        ("mkdir", 1),
        ("chmod", 1),
        ("chown", 1),
        ("lchown", 1),
        ("truncate", 1),
        ("utime", 1),
        ("mkfifo", 1),
        ("mknod", 1),
        ("rename", 2),
        ("replace", 2),
        ("link", 2),
        ("symlink", 2),
    ):
        guard_paths(name, count)

    for mod in (os, posix):
        for name in (
            "fork",
            "forkpty",
            "execv",
            "execve",
            "execl",
            "execle",
            "execlp",
            "execlpe",
            "execvp",
            "execvpe",
            "spawnv",
            "spawnve",
            "spawnl",
            "spawnle",
            "spawnlp",
            "spawnlpe",
            "spawnvp",
            "spawnvpe",
            "posix_spawn",
            "posix_spawnp",
            "system",
            "popen",
            "setsid",
            "setpgid",
            "setpgrp",
            "kill",
            "killpg",
        ):
            if hasattr(mod, name):
                setattr(mod, name, _deny(f"{name} (process control)"))
    signal.pthread_kill = _deny("pthread_kill (process control)")
    _posixsubprocess.fork_exec = _deny("fork_exec (subprocesses)")

    class NoPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise PermissionError("subprocesses are disabled in the sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise PermissionError("network access is disabled in the sandbox")

    class NoRawSocket(_socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise PermissionError("network access is disabled in the sandbox")

    subprocess.Popen = NoPopen  # type: ignore[misc]
    socket.socket = socket.SocketType = NoSocket  # type: ignore[misc]
    _socket.socket = _socket.SocketType = NoRawSocket  # type: ignore[misc]
    for name in (
        "create_connection",
        "create_server",
        "socketpair",
        "fromfd",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
    ):
        for mod in (socket, _socket):
            if hasattr(mod, name):
                setattr(mod, name, _deny(f"{name} (network)"))
    for name in ("ctypes", "_ctypes", "resource", "multiprocessing", "_multiprocessing", "pty"):
        sys.modules[name] = None  # type: ignore[assignment]


# ------------------------------------------------------------------ the program


def __mc_eq__(left: Any, right: Any, lineno: int) -> bool:
    """`assert a == b` rewritten: the same truth value, but remember both sides when it fails."""
    result = left == right
    if not result:
        _last_failed_eq[:] = [lineno, left, right]
    return bool(result)


class _AssertEq(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        test = node.test
        if (
            node.msg is None
            and isinstance(test, ast.Compare)
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
        ):
            call = ast.Call(
                ast.Name("__mc_eq__", ast.Load()), [test.left, test.comparators[0], ast.Constant(node.lineno)], []
            )
            node.test = ast.copy_location(call, test)
        return node


def compile_program(source: str, filename: str) -> Any:
    """Compile with `assert a == b` rewritten so a failure can show both sides."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid-escape warnings of old code are not the program's output
        tree = _AssertEq().visit(ast.parse(source, filename))
        return compile(ast.fix_missing_locations(tree), filename, "exec")


def _program_tb(exc: BaseException, filename: str) -> Any:
    """The traceback from the first frame of the program on (this file's frames are noise to the model)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return tb


def explain_assert(exc: BaseException, tb: Any) -> None:
    """A bare failed `assert a == b` gets 'left != right' as its message."""
    if not (isinstance(exc, AssertionError) and not exc.args and _last_failed_eq):
        return
    last = tb
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    if last is not None and last.tb_lineno == _last_failed_eq[0]:
        try:
            exc.args = (f"{_REPR.repr(_last_failed_eq[1])} != {_REPR.repr(_last_failed_eq[2])}",)
        except Exception:
            pass


def safe_name(name: object) -> str:
    """A class name fit to become an error type: an identifier, short; anything else is 'Unknown'."""
    text = name if isinstance(name, str) else ""
    return text if text.isascii() and text.isidentifier() and len(text) <= NAME_CHARS else "Unknown"


def exception_event(exc: BaseException) -> dict[str, Any]:
    """The side-channel record of an exception: its class (not its text) decides the error type."""
    try:
        message = str(exc.code) if isinstance(exc, SystemExit) else str(exc)
    except Exception:
        message = "<unprintable message>"
    return {
        "event": "exception",
        "type": safe_name(type(exc).__name__),
        "module": safe_name(str(getattr(type(exc), "__module__", "")).replace(".", "_")),
        "message": message[:MESSAGE_CHARS],
    }


def emit(fd: int, event: dict[str, Any]) -> None:
    """One JSON line on the side channel; a closed or full channel is the program's doing, not ours."""
    if fd < 0:
        return
    try:
        os.write(fd, (json.dumps(event) + "\n").encode("utf-8", "replace"))
    except (OSError, ValueError):
        pass


def _print_traceback(exc: BaseException, filename: str) -> None:
    tb = _program_tb(exc, filename)
    explain_assert(exc, tb)
    err = sys.__stderr__
    if err is not None:
        err.write("".join(traceback.format_exception(type(exc), exc, tb)))
        err.flush()


def _cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (bubblewrap's reaper does not pass them on)."""
    if _getrusage is None:
        return 0.0
    own, kids = _getrusage(0), _getrusage(-1)  # RUSAGE_SELF, RUSAGE_CHILDREN
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


_getrusage: Callable[[int], Any] | None = None


def run(spec: dict[str, Any], enter: Callable[[], None] | None = None) -> int:
    """Everything after argument parsing; returns the exit status (or exits with SystemExit's).

    `enter` runs after the privilege drop, before the start event (the warm sandbox makes the work dir there).
    """
    global _getrusage
    fd = int(spec.get("report_fd", -1))
    if fd >= 0:
        os.set_inheritable(fd, False)  # a program that execs (where it may) does not carry the channel along
    try:
        set_limits(float(spec["cpu_s"]), int(spec["memory_bytes"]), int(spec["fsize_bytes"]), int(spec.get("nproc", 0)))
        if spec.get("uid") is not None:
            drop_privileges(int(spec["uid"]), int(spec["gid"]))
        if enter is not None:
            enter()
    except Exception as exc:  # never run the program with privileges we meant to drop
        emit(fd, {"event": "setup_error", "message": f"{type(exc).__name__}: {exc}"[:MESSAGE_CHARS]})
        return SETUP_EXIT_CODE
    import resource

    _getrusage = resource.getrusage  # kept: the guard hides the module from the program
    emit(fd, {"event": "start"})

    filename = spec.get("program", "program.py")
    try:
        try:
            with open(filename, encoding="utf-8") as fh:
                source = fh.read()
            here = os.path.dirname(os.path.abspath(__file__))
            sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # grading/ holds math.py, code.py
            sys.argv = [filename]
            if spec.get("guard", True):
                install_guard(os.getcwd())
            code = compile_program(source, filename)
            del source
            exec(code, {"__name__": "__main__", "__file__": filename, "__builtins__": builtins, "__mc_eq__": __mc_eq__})
        finally:
            emit(fd, {"event": "exit", "cpu_s": round(_cpu_s(), 4)})
    except MemoryError as exc:
        emit(fd, exception_event(exc))
        os.write(2, b"MemoryError: the program exceeded the sandbox memory limit\n")
        os._exit(MEMORY_EXIT_CODE)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            emit(fd, exception_event(exc))
        raise
    except BaseException as exc:
        emit(fd, exception_event(exc))
        try:
            _print_traceback(exc, filename)
        except MemoryError:
            os._exit(MEMORY_EXIT_CODE)
        return 1
    return 0


# ------------------------------------------------------------------ the warm sandbox


MAX_REQUEST = 65536
MAX_PROGRAM = 16 * 1024 * 1024
_PRELOAD = (
    "_posixsubprocess",
    "_socket",
    "ast",
    "collections",
    "ctypes",
    "functools",
    "heapq",
    "itertools",
    "math",
    "re",
    "reprlib",
    "resource",
    "shutil",
    "signal",
    "socket",
    "string",
    "subprocess",
    "traceback",
    "typing",
    "warnings",
)


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter would exit with for `exc` (printing a non-integer code, as it does)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        sys.stderr.write(f"{exc.code}\n")
    except Exception:
        pass
    return 1


def _finish() -> None:
    """What interpreter shutdown does before exiting: wait for threads, run atexit handlers, flush."""
    import atexit
    import threading

    for step in (getattr(threading, "_shutdown", None), getattr(atexit, "_run_exitfuncs", None)):
        try:
            if step is not None:
                step()
        except BaseException:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass


def _forked(control_fd: int, fds: list[int], request: dict[str, Any], workroot: str) -> None:
    """A forked zygote child: take the passed descriptors as stdio, then run the program as usual; never returns."""
    code = 1
    try:
        os.close(control_fd)  # first: the program must never reach the zygote's control channel
        os.setsid()
        program_fd, out_fd, err_fd, report_fd = fds
        chunks, size = [], 0
        while size < MAX_PROGRAM:  # read before the dup2s below, which may reuse its number
            chunk = os.read(program_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        source = b"".join(chunks)
        null = os.open("/dev/null", os.O_RDONLY)
        for src, dest in ((null, 0), (out_fd, 1), (err_fd, 2), (report_fd, 3)):
            if src != dest:
                os.dup2(src, dest)
        os.closerange(4, 1 << 16)  # the passed originals, the zygote's copies: only stdio and the report remain
        workdir = os.path.join(workroot, str(request["workdir"]))
        os.mkdir(workdir, 0o700)  # the only place the program may write: its own, in a directory of root's
        os.chown(workdir, int(request["uid"]), int(request["gid"]))

        def enter() -> None:
            os.chdir(workdir)
            with open(PROGRAM_FILE, "wb") as fh:
                fh.write(source)
            os.environ.update(HOME=workdir, TMPDIR=workdir)

        code = run({**request, "report_fd": 3, "program": PROGRAM_FILE}, enter=enter)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # the child's own setup failed (before run() could report): say so, run nothing
        emit(3, {"event": "setup_error", "message": f"{type(exc).__name__}: {exc}"[:MESSAGE_CHARS]})
        code = SETUP_EXIT_CODE
    finally:
        _finish()
        os._exit(code)


def _living(uid: int, me: int) -> bool:
    """Whether any process of `uid` other than `me` is alive (not a zombie) in this pid namespace."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith("Z"):
            return True
    return False


def _sweep(uid: int, workdir: str) -> bool:
    """As `uid` (a forked helper): kill every process it still has and empty its `workdir`; then remove the dir.

    False when something is left behind (the caller then retires this sandbox rather than reuse it).
    """
    import shutil
    import signal
    import time

    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            me = os.getpid()
            for _ in range(2000):  # kill(-1) reaches every process of ours (it succeeds even when none is left)
                os.kill(-1, signal.SIGKILL)
                if not _living(uid, me):
                    break
                time.sleep(0.001)

            def unlock(func: Callable[[str], Any], path: str, _exc: Any) -> None:
                os.chmod(path, 0o700)  # the program may have locked a directory of its own
                func(path)

            os.chmod(workdir, 0o700)
            for entry in os.scandir(workdir):
                try:
                    if entry.is_dir(follow_symlinks=False):
                        os.chmod(entry.path, 0o700)
                        shutil.rmtree(entry.path, onerror=unlock)
                    else:
                        os.unlink(entry.path)
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    try:
        os.rmdir(workdir)  # empty now; the entry is in root's directory
    except OSError:
        return False
    return True


def serve(spec: dict[str, Any]) -> int:
    """The warm sandbox (a zygote, root inside bubblewrap): run each program it is sent in a forked child.

    A request is one JSON message on the control socket (limits, uid, work dir name) with four descriptors:
    the program (readable), stdout, stderr and the report channel. The child drops to the request's uid
    before any program code runs; afterwards every process of that uid is killed and its files removed,
    and the reply carries the wait status and CPU time. Programs never share a uid, never see the
    control socket, and cannot signal or trace the zygote (it is another uid).
    """
    import importlib
    import socket

    for name in _PRELOAD:  # what every run imports anyway: forks start warm
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    compile_program("assert 1 == 1\n", "warm.py")
    control_fd = int(spec["control_fd"])
    workroot = str(spec["workroot"])
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, 4)
        except (OSError, ValueError):
            return 0
        if not message:
            return 0
        try:
            request = json.loads(message)
            uid = int(request["uid"])
            name = str(request["workdir"])
            valid = (
                len(fds) == 4
                and uid > 0
                and int(request["gid"]) > 0
                and "/" not in name
                and name not in ("", ".", "..")
            )
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": "malformed request"}).encode())
            continue
        pid = os.fork()
        if pid == 0:
            _forked(control_fd, fds, request, workroot)
        for fd in fds:
            os.close(fd)
        _, status, usage = os.wait4(pid, 0)
        clean = _sweep(uid, os.path.join(workroot, str(request["workdir"])))
        reply = {"status": status, "cpu_s": round(usage.ru_utime + usage.ru_stime, 4), "retire": not clean}
        control.send(json.dumps(reply).encode())
        if not clean:
            return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: _child.py SPEC_JSON\n")
        return 2
    spec = json.loads(args[0])
    return serve(spec) if spec.get("serve") else run(spec)


if __name__ == "__main__":
    sys.exit(main())
