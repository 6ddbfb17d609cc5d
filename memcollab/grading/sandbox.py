"""Run untrusted Python programs behind the strongest boundary this machine offers, one at a time or as a pool.

Modes (:mod:`memcollab.grading.isolation`): bubblewrap, else an unprivileged
uid; with neither, "auto" refuses (a one-line SandboxError) rather than run model
code behind the in-process guard alone, which only MEMCOLLAB_SANDBOX=guard asks for. As
root, bubblewrap runs are forked from a warm sandbox per worker
(:mod:`memcollab.grading.zygote`) with a fresh uid per program; otherwise each
program is its own ``python -I -B [-S]`` process. The child side of both is
:mod:`memcollab.grading._child`.

Hard limits, enforced by the kernel or by this process: wall clock (the
program and everything it started are killed), CPU time (RLIMIT_CPU), address
space (RLIMIT_AS), file size (RLIMIT_FSIZE), disk (a size-capped tmpfs under
bubblewrap), process count (RLIMIT_NPROC of the unprivileged uid) and captured
output (killed past the cap). Nothing a program starts outlives its run.

How a program ended comes from a side channel (a pipe the child writes JSON
lines to), not from its stderr, which the program controls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from memcollab.errors import ConfigError, MemCollabError
from memcollab.grading import isolation as iso
from memcollab.grading import zygote
from memcollab.grading._child import MEMORY_EXIT_CODE
from memcollab.grading.isolation import PROGRAM_FILE, Mode, Requested
from memcollab.grading.outcome import Outcome, collect, read_events, reported_cpu
from memcollab.parallel import parallel_map

ExecStatus = Literal["ok", "error", "timeout", "memory_limit", "killed", "output_limit"]

__all__ = [
    "MEMORY_EXIT_CODE",
    "PROGRAM_FILE",
    "ExecResult",
    "ExecStatus",
    "SandboxError",
    "SandboxLimits",
    "SandboxPool",
    "isolation_mode",
    "run_program",
]

MESSAGE_CHARS = 500
_NAME = re.compile(r"^[A-Za-z_]\w{0,79}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class SandboxError(MemCollabError):
    """The sandbox itself could not run a program (not the program's fault): bubblewrap or the uid drop failed."""


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed run (wall and CPU in seconds, memory and disk in MB, output in bytes per stream).

    `isolation`: "auto" picks the strongest available boundary (bwrap > uid) and
    raises :class:`SandboxError` when there is none; the environment variable
    MEMCOLLAB_SANDBOX overrides "auto" (`guard` accepts the in-process guard alone);
    naming a mode requires it and raises :class:`SandboxError` when it is unavailable.
    `warm`: as root, bubblewrap runs fork from a warm sandbox per worker (a fresh
    uid per program); False starts fresh namespaces for every program, at
    tens of ms more per program.
    """

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    output_bytes: int = 64 * 1024
    file_size_mb: int = 16
    disk_mb: int = 64
    site_packages: bool = False
    isolation: Requested = "auto"
    warm: bool = True


class ExecResult(BaseModel):
    """What happened when a program ran: status, exit code, captured output, wall time, and the exception (if any).

    `exception` is the class name of the exception that ended the program, as
    the child reported it over the side channel ("" when none or unknown);
    `exception_message` its message, capped. `isolation` is the mode it ran in.
    """

    status: ExecStatus
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    cpu_s: float = 0.0
    exception: str = ""
    exception_message: str = ""
    isolation: str = ""


# ------------------------------------------------------------------ which mode


_modes: dict[str, Mode] = {}
_modes_lock = threading.Lock()
_refused: dict[str, str] = {}  # "auto" with no boundary: the one-line reason, so a pool does not probe again


def _probe(mode: Mode) -> str | None:
    """Run a trivial program in `mode`; None when it worked, else why not."""
    try:
        result = _execute("print('ok')", SandboxLimits(wall_s=30.0, cpu_s=10.0), mode)
    except (SandboxError, OSError) as exc:
        return str(exc)
    if result.status != "ok" or result.stdout.strip() != "ok":
        return f"{mode} probe ended {result.status}: {_clean(result.stderr)[-300:]}"
    return None


def _unavailable(mode: Mode) -> str | None:
    if mode == "bwrap":
        return iso.bwrap_unavailable() or _probe("bwrap")
    if mode == "uid":
        if not iso.is_root():
            return "dropping to another uid needs root"
        reason = _probe("uid")
        return reason and f"an unprivileged uid cannot run the interpreter ({reason})"
    return None


def isolation_mode(requested: Requested = "auto") -> Mode:
    """The mode runs use for `requested` (probed once per process).

    "auto" never falls back to the guard alone: the guard stops naive fork, exec and sockets but not a program
    reading the machine's files (as root, every file), so it raises a one-line SandboxError instead.
    """
    if requested == "auto":
        requested = os.environ.get("MEMCOLLAB_SANDBOX", "auto") or "auto"  # type: ignore[assignment]
        if requested not in ("auto", "bwrap", "uid", "guard"):
            raise ConfigError(f"MEMCOLLAB_SANDBOX={requested!r}: use auto, bwrap, uid or guard")
    with _modes_lock:
        if requested in _modes:
            return _modes[requested]
        if requested == "auto":
            if "auto" in _refused:
                raise SandboxError(_refused["auto"])
            reasons = []
            for mode in ("bwrap", "uid"):
                reason = _unavailable(mode)  # type: ignore[arg-type]
                if reason is None:
                    _modes[requested] = mode  # type: ignore[assignment]
                    return mode  # type: ignore[return-value]
                reasons.append(reason)
            _refused["auto"] = (
                f"no sandbox boundary for model code on this machine ({'; '.join(reasons)}): install bubblewrap "
                "(apt-get install -y bubblewrap), or set MEMCOLLAB_SANDBOX=guard to run it behind the in-process "
                "guard alone, which is hardening, not a security boundary"
            )
            raise SandboxError(_refused["auto"])
        reason = _unavailable(requested)  # type: ignore[arg-type]
        if reason is not None:
            raise SandboxError(f"sandbox isolation {requested!r} is unavailable: {reason}")
        _modes[requested] = requested  # type: ignore[assignment]
        return requested  # type: ignore[return-value]


# ------------------------------------------------------------------ one run


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


def _clean(text: str, limit: int = MESSAGE_CHARS) -> str:
    """Printable text (no terminal escapes or control characters), at most `limit` characters."""
    return _CONTROL.sub("", text)[:limit]


def _exception(events: list[dict[str, Any]]) -> tuple[str, str]:
    """(class name, message) of the last reported exception; a name that is not an identifier is 'Unknown'."""
    for event in reversed(events):
        if event["event"] == "exception":
            name = event.get("type")
            name = name if isinstance(name, str) and _NAME.match(name) else "Unknown"
            message = event.get("message")
            return name, _clean(message if isinstance(message, str) else "")
    return "", ""


def _status(returncode: int, early: str | None, cpu_s: float, limits: SandboxLimits) -> ExecStatus:
    """The status of a finished run; `cpu_s` is an upper bound when the CPU time is unknown (see _execute)."""
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


def _launch(
    mode: Mode, tmp: str, limits: SandboxLimits, report_fd: int
) -> tuple[list[str], dict[str, Any], int | None]:
    """(argv, extra Popen arguments, leased uid) for one per-process run in `mode`."""
    spec = {**_child_spec(limits), "report_fd": report_fd, "program": PROGRAM_FILE}
    root = iso.is_root()
    uid = iso.UIDS.lease(check_processes=mode == "uid") if root and mode in ("bwrap", "uid") else None
    if uid is not None:
        spec["nproc"] = iso.NPROC_FRESH_UID
    elif not root:
        spec["nproc"] = iso.nproc_for_harness_uid()
    extra: dict[str, Any] = {}
    if mode == "bwrap":
        if uid is not None:
            spec.update(uid=uid, gid=uid)  # the child drops to it inside the namespaces
        command = iso.python_argv(
            iso.interpreter(limits.site_packages), iso.CHILD_INSIDE, json.dumps(spec), limits.site_packages
        )
        argv = iso.bwrap_argv(
            iso.bwrap_path() or "bwrap",
            tmp,
            os.path.join(tmp, PROGRAM_FILE),
            command,
            limits.disk_mb * 1024 * 1024,
            privileged=root,
        )  # the same path names a tmpfs inside
        return argv, extra, uid
    if mode == "uid":
        assert uid is not None
        os.chown(tmp, uid, uid)
        extra = {"user": uid, "group": uid, "extra_groups": []}
    return (
        iso.python_argv(iso.interpreter(limits.site_packages), str(iso.CHILD), json.dumps(spec), limits.site_packages),
        extra,
        uid,
    )


def _child_spec(limits: SandboxLimits) -> dict[str, Any]:
    """The limits part of the child's spec."""
    return {
        "cpu_s": limits.cpu_s,
        "memory_bytes": limits.memory_mb * 1024 * 1024,
        "fsize_bytes": limits.file_size_mb * 1024 * 1024,
        "nproc": 0,
        "guard": True,
    }


def _run_process(code: str, limits: SandboxLimits, mode: Mode, start: float) -> Outcome:
    """One program in its own process (and, for bwrap, its own sandbox)."""
    tmp = tempfile.mkdtemp(prefix="memcollab-sbx-")
    report_r, report_w = os.pipe()
    uid: int | None = None
    try:
        with open(os.path.join(tmp, PROGRAM_FILE), "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(code)
        os.chmod(os.path.join(tmp, PROGRAM_FILE), 0o644)
        argv, extra, uid = _launch(mode, tmp, limits, report_w)
        env = {"PATH": iso.SAFE_PATH} if mode == "bwrap" else iso.clean_env(tmp)
        proc = subprocess.Popen(
            argv,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=(report_w,),
            **extra,
        )
        os.close(report_w)
        report_w = -1
        try:
            stdout, stderr, early = collect(
                proc.stdout.fileno(),
                proc.stderr.fileno(),  # type: ignore[union-attr]
                lambda: _exited(proc.pid),
                limits.output_bytes,
                start + limits.wall_s,
            )
        finally:
            _kill_group(proc.pid)  # also ends any descendants; bubblewrap's pid namespace dies with it
            _, status, usage = os.wait4(proc.pid, 0)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
            if mode == "uid" and uid is not None:
                iso.kill_uid(uid)
        returncode = os.waitstatus_to_exitcode(status)
        if mode == "bwrap" and returncode > 128 and returncode - 128 in signal.valid_signals():
            returncode = -(returncode - 128)  # bubblewrap reports a signalled child as 128 + signal
        events = read_events(report_r)
        reported = reported_cpu(events)
        # bubblewrap's reaper exits unwaited, so only the child's own report carries its CPU time
        return Outcome(
            returncode,
            early,
            stdout,
            stderr,
            events,
            max([usage.ru_utime + usage.ru_stime, *reported]),
            cpu_known=mode != "bwrap" or bool(reported),
        )
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        if uid is not None:
            iso.UIDS.release(uid)
        shutil.rmtree(tmp, ignore_errors=True)


def _result(outcome: Outcome, limits: SandboxLimits, mode: Mode, start: float) -> ExecResult:
    """The ExecResult of an outcome; raises SandboxError when the sandbox never started the program."""
    events = outcome.events
    started = any(e["event"] == "start" for e in events)
    if not started and outcome.early is None:
        setup = next((e for e in events if e["event"] == "setup_error"), None)
        why = setup.get("message") if setup else outcome.stderr.decode("utf-8", "replace").strip()[-300:]
        raise SandboxError(
            f"the sandbox ({mode}) did not start the program (exit status {outcome.returncode}): {_clean(str(why))}"
        )
    duration = time.monotonic() - start
    # A SIGKILL whose CPU time we could not measure is judged by the wall time it had, which bounds it.
    cpu_bound = outcome.cpu_s if outcome.cpu_known else max(outcome.cpu_s, duration)
    name, message = _exception(events)
    return ExecResult(
        status=_status(outcome.returncode, outcome.early, cpu_bound, limits),
        returncode=outcome.returncode,
        stdout=outcome.stdout.decode("utf-8", "replace"),
        stderr=outcome.stderr.decode("utf-8", "replace"),
        duration_s=round(duration, 4),
        cpu_s=round(outcome.cpu_s, 4),
        exception=name,
        exception_message=message,
        isolation=mode,
    )


def _execute(code: str, limits: SandboxLimits, mode: Mode) -> ExecResult:
    """One run of `code` in `mode`; raises SandboxError only when the sandbox itself failed.

    As root, bubblewrap runs go through a warm sandbox (see zygote.py); a warm sandbox that dies is replaced
    once, since rerunning a program has no effect outside its sandbox.
    """
    if mode == "bwrap" and limits.warm and iso.is_root():
        for attempt in (1, 2):
            start = time.monotonic()
            try:
                outcome = zygote.run_warm(
                    code,
                    _child_spec(limits),
                    limits.site_packages,
                    limits.disk_mb,
                    limits.wall_s,
                    limits.output_bytes,
                    start,
                )
            except zygote.ZygoteDied as exc:
                if attempt == 2:
                    raise SandboxError(f"the sandbox (bwrap) failed twice: {exc}") from exc
                continue
            return _result(outcome, limits, mode, start)
    start = time.monotonic()
    return _result(_run_process(code, limits, mode, start), limits, mode, start)


def run_program(code: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Run `code` as a program in the sandbox and report how it ended; never raises for anything the code does."""
    limits = limits or SandboxLimits()
    return _execute(code, limits, isolation_mode(limits.isolation))


class SandboxPool:
    """Run many programs concurrently: each worker thread drives one sandbox subprocess."""

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
        isolation_mode(limits.isolation)  # probe (and warn) once, before the threads start
        return list(
            parallel_map(
                lambda code: run_program(code, limits),
                programs,
                workers=self.workers,
                show=False,
                on_result=on_result,
                thread_name_prefix="sandbox",
            )
        )
