"""The warm sandbox, host side: long-lived bubblewrap sandboxes that fork one child per program.

Starting bubblewrap and an interpreter per program costs several process
hand-offs (tens of ms on a loaded machine, more than the program itself).
As root, each worker instead keeps one sandbox (``_child.serve``: the same
namespaces and file system allowlist as a per-run sandbox, a size-capped
tmpfs at /tmp) and sends it programs; the child it forks per program drops to
that run's fresh uid before any program code runs, and the sandbox kills that
uid's processes and deletes its files before the next program. The uid is
what separates programs (and protects the sandbox process, which programs can
neither signal nor trace): without root there is no uid to drop to, so
non-root harnesses use the per-run sandbox instead.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from memcollab.grading import isolation as iso
from memcollab.grading.outcome import Outcome, collect, read_events

T = TypeVar("T")

WORKROOT = "/tmp"  # inside the sandbox: a tmpfs of the run's disk size, root's; each run gets a dir of its own
REPLY_BYTES = 4096


class ZygoteDied(RuntimeError):
    """The warm sandbox went away (or never came up); the caller may start another."""


_spawn_queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        fn, future = _spawn_queue.get()
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)


def _spawn(fn: Callable[[], T]) -> T:
    """Run `fn` (a Popen) on one long-lived thread.

    bubblewrap's --die-with-parent is a parent-death signal, and Linux sends it when the *thread* that
    forked the child exits: a sandbox started from a pool worker would die with that worker.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="sandbox-spawner", daemon=True)
            _spawner.start()
    future: Future[T] = Future()
    _spawn_queue.put((fn, future))
    return future.result()


class Zygote:
    """One warm sandbox; one request at a time (the pool hands each thread its own)."""

    def __init__(self, site_packages: bool, disk_mb: int) -> None:
        self.key = (site_packages, disk_mb)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {"serve": True, "control_fd": theirs.fileno(), "workroot": WORKROOT}
        command = iso.python_argv(iso.interpreter(site_packages), iso.CHILD_INSIDE, json.dumps(spec), site_packages)
        argv = iso.bwrap_argv(
            iso.bwrap_path() or "bwrap",
            WORKROOT,
            None,
            command,
            disk_mb * 1024 * 1024,
            privileged=True,
            workdir_mode="0755",
            extra_caps=("CAP_CHOWN",),
        )
        self.errors = tempfile.TemporaryFile()  # the sandbox's own stderr (programs get theirs): why it died
        try:
            self.proc = _spawn(
                lambda: subprocess.Popen(
                    argv,
                    cwd="/",
                    env={"PATH": iso.SAFE_PATH},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=self.errors,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(theirs.fileno(),),
                )
            )
        finally:
            theirs.close()

    def _died(self, what: str) -> ZygoteDied:
        """The error for a sandbox that went away, with the end of its own stderr."""
        try:
            self.errors.seek(0)
            tail = self.errors.read()[-400:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            tail = ""
        return ZygoteDied(f"the warm sandbox {what} (exit status {self.proc.poll()})" + (f": {tail}" if tail else ""))

    def submit(self, request: dict[str, Any], fds: list[int]) -> None:
        """Send one program (its descriptors are duplicated into the sandbox; the caller closes its own)."""
        try:
            socket.send_fds(self.control, [json.dumps(request).encode()], fds)
        except OSError as exc:
            raise self._died(f"is gone ({exc})") from exc

    def replied(self) -> bool:
        """True when a reply (or the sandbox's end) is waiting: the program's child has been reaped."""
        return bool(select.select([self.control], [], [], 0)[0])

    def reply(self, timeout_s: float) -> dict[str, Any]:
        """The wait status and CPU time of the last program; ZygoteDied if none comes in `timeout_s`."""
        if not select.select([self.control], [], [], timeout_s)[0]:
            raise self._died(f"did not answer within {timeout_s:g} s")
        try:
            data = self.control.recv(REPLY_BYTES)
        except OSError as exc:
            raise self._died(f"broke the connection ({exc})") from exc
        if not data:
            time.sleep(0.05)  # let it finish exiting, for the status
            raise self._died("exited")
        try:
            reply = json.loads(data)
        except ValueError as exc:
            raise self._died("sent a malformed reply") from exc
        if not isinstance(reply, dict) or "error" in reply:
            raise self._died(f"refused the request: {reply!r}")
        return reply

    def close(self) -> None:
        """Kill the sandbox (bubblewrap's reaper takes every process in it along) and reap it."""
        self.control.close()
        for kill in (os.killpg, os.kill):
            try:
                kill(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        self.errors.close()


class ZygotePool:
    """Idle warm sandboxes by (site packages, disk size); a thread takes one, uses it, gives it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[bool, int], list[Zygote]] = {}
        self._all: list[Zygote] = []

    def take(self, site_packages: bool, disk_mb: int) -> Zygote:
        key = (site_packages, disk_mb)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        zygote = Zygote(site_packages, disk_mb)
        with self._lock:
            self._all.append(zygote)
        return zygote

    def give_back(self, zygote: Zygote) -> None:
        with self._lock:
            self._idle.setdefault(zygote.key, []).append(zygote)

    def discard(self, zygote: Zygote) -> None:
        zygote.close()
        with self._lock:
            if zygote in self._all:
                self._all.remove(zygote)

    def close_all(self) -> None:
        with self._lock:
            zygotes, self._all, self._idle = self._all, [], {}
        for zygote in zygotes:
            try:
                zygote.close()
            except Exception:
                pass


POOL = ZygotePool()
atexit.register(POOL.close_all)


REPLY_GRACE_S = 10.0  # after the wall clock: how long the sandbox may take to reap, sweep and answer


def run_warm(
    code: str, spec: dict[str, Any], site_packages: bool, disk_mb: int, wall_s: float, output_bytes: int, start: float
) -> Outcome:
    """One program through a warm sandbox. `spec` holds the child's limits; a fresh uid is leased here.

    Raises ZygoteDied when the sandbox fails (the program may or may not have started).
    """
    uid = iso.UIDS.lease()
    zygote = POOL.take(site_packages, disk_mb)
    healthy = False
    mine: list[int] = []
    try:
        program = os.memfd_create("program", os.MFD_CLOEXEC)
        mine.append(program)
        os.write(program, code.encode("utf-8", "surrogateescape"))
        os.lseek(program, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        rep_r, rep_w = os.pipe()
        mine += [out_r, out_w, err_r, err_w, rep_r, rep_w]
        request = {
            **spec,
            "uid": uid,
            "gid": uid,
            "nproc": iso.NPROC_FRESH_UID,
            "workdir": f"memcollab-sbx-{uid}-{os.urandom(4).hex()}",
        }
        zygote.submit(request, [program, out_w, err_w, rep_w])
        for fd in (program, out_w, err_w, rep_w):  # the sandbox holds its own copies now
            os.close(fd)
            mine.remove(fd)
        stdout, stderr, early = collect(out_r, err_r, zygote.replied, output_bytes, start + wall_s)
        if early is not None:
            iso.kill_uid(uid)  # the program and whatever it forked: the sandbox then reaps and answers
        reply = zygote.reply(REPLY_GRACE_S)
        status, cpu = reply.get("status"), reply.get("cpu_s")
        if not isinstance(status, int):
            raise ZygoteDied(f"the warm sandbox sent a malformed reply: {reply!r}")
        healthy = not reply.get("retire")  # it could not clean up after this program: do not reuse it
        return Outcome(
            returncode=os.waitstatus_to_exitcode(status),
            early=early,
            stdout=stdout,
            stderr=stderr,
            events=read_events(rep_r),
            cpu_s=float(cpu) if isinstance(cpu, (int, float)) else 0.0,
        )
    finally:
        for fd in mine:
            os.close(fd)
        if healthy:
            POOL.give_back(zygote)
        else:
            iso.kill_uid(uid)
            POOL.discard(zygote)
        iso.UIDS.release(uid)
