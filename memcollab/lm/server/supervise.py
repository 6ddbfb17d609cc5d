"""Child processes that never outlive this one.

Every supervised child runs in its own process group and is stopped by its
owner's `stop()`, by an atexit hook, by SIGTERM/SIGINT handlers that chain to
the handlers installed before them (a signal this process ignores, such as SIGINT
in a job a shell started in the background, stays ignored: the run goes on with
its servers), and, if this process is killed hard, by
the kernel (PR_SET_PDEATHSIG). The death signal fires when the *thread* that
forked the child exits, so children are forked from one long-lived daemon
thread rather than from whatever worker thread first asked for one.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import threading
from typing import Any, Protocol

_PR_SET_PDEATHSIG = 1


class Stoppable(Protocol):
    """What the cleanup hooks stop: anything with `stop(timeout)`."""

    def stop(self, timeout: float = ...) -> None: ...


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # not Linux/glibc: atexit + signal handlers still apply
        return None


_LIBC = _libc()


def _die_with_parent(parent_pid: int) -> Any:
    """preexec_fn: ask the kernel to SIGKILL the child when its parent dies (Linux only)."""

    def _preexec() -> None:
        if _LIBC is not None and hasattr(_LIBC, "prctl"):
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return _preexec


class _Spawner:
    """Forks children from one daemon thread that lives as long as the process (see module doc)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[concurrent.futures.Future, tuple, dict]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            future, args, kwargs = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(subprocess.Popen(*args, **kwargs))
                except BaseException as exc:  # handed back to the caller's thread
                    future.set_exception(exc)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="memcollab-server-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, args, kwargs))
        return future.result()


_SPAWNER = _Spawner()


def spawn(cmd: list[str], *, stdout: Any) -> subprocess.Popen:
    """Start `cmd` in its own session, to die with this process; output (and stderr) go to `stdout`."""
    install_cleanup()
    return _SPAWNER.popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def kill_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the child's process group, wait, then SIGKILL it, and reap the child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
    # Reap anything else left in the group (llama-server forks nothing, but be sure).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout)


# ---------------------------------------------------------------- what is alive, and the hooks that stop it

_LIVE: set[Stoppable] = set()
_LIVE_LOCK = threading.RLock()  # re-entrant: a signal handler may run while this thread holds it
_CLEANUP_LOCK = threading.Lock()
_CLEANUP_INSTALLED = False
_STOPPING = threading.Event()  # set by a signal that stops the servers: calls in flight must not retry them


def stopping() -> bool:
    """Has a signal stopped this process's servers? (Then an unanswered LM call is the stop, not a fault.)"""
    return _STOPPING.is_set()


_PREVIOUS_HANDLERS: dict[int, Any] = {}


def track(owner: Stoppable) -> None:
    """Stop `owner` at exit or on SIGTERM/SIGINT unless it is released first."""
    with _LIVE_LOCK:
        _LIVE.add(owner)


def release(owner: Stoppable) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(owner)


def stop_all() -> None:
    """Stop every tracked owner; best effort, so one failure does not spare the others."""
    # A short grace period: llama-server holds off its exit while a client still waits on an
    # in-flight request (here: our own worker threads, which a signal handler cannot close), so a
    # long wait only delays Ctrl-C. It keeps no state worth a graceful exit; SIGKILL follows.
    with _LIVE_LOCK:
        owners = list(_LIVE)
    for owner in owners:
        try:
            owner.stop(timeout=3.0)
        except Exception:
            pass


def _on_signal(signum: int, frame: Any) -> None:
    """Stop every child, then behave as the handler that was installed before ours."""
    _STOPPING.set()
    stop_all()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_cleanup() -> None:
    """atexit always; signal handlers only from the main thread (Python's rule)."""
    global _CLEANUP_INSTALLED
    with _CLEANUP_LOCK:
        if _CLEANUP_INSTALLED:
            return
        atexit.register(stop_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)
                if previous == signal.SIG_IGN:
                    continue  # ignored (nohup, a background job): stopping the servers would only break the run
                _PREVIOUS_HANDLERS[sig] = previous
                signal.signal(sig, _on_signal)
        _CLEANUP_INSTALLED = True
