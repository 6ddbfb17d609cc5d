"""What stands between model-written code and the machine: the mode, and how each mode launches the child.

Modes, strongest first:

- ``bwrap``: bubblewrap. New pid, net, ipc, uts and cgroup namespaces; a root
  file system that holds only read-only binds of ``/usr`` (``/bin``, ``/lib``,
  ``/lib64``), the interpreter's prefix, ``/etc/ld.so.cache`` and a few
  ``/dev`` nodes; a size-capped tmpfs as the only writable place; no
  environment but what we set. As root, bwrap keeps only CAP_SETUID/SETGID and
  the child drops to a fresh unprivileged uid before any program code runs:
  that uid (not root) is what makes RLIMIT_NPROC bound a fork bomb and file
  permissions apply. A user namespace is deliberately not used as root: its
  uid maps back to root outside, and it would forbid that drop. Not root,
  bwrap runs with ``--unshare-all`` (a user namespace included).
- ``uid``: no bubblewrap, harness is root: the child runs as a fresh
  unprivileged uid (host files stay readable as far as "other" permissions
  allow; the uid's processes are killed after the run).
- ``guard``: a plain subprocess with rlimits and the in-process guard of
  ``_child.py``: a hardening against naive code, not a boundary.

The in-process guard runs in every mode: it turns naive attempts (``socket``,
``subprocess``) into a clear PermissionError the model can act on.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Literal

Mode = Literal["bwrap", "uid", "guard"]
Requested = Literal["auto", "bwrap", "uid", "guard"]

CHILD = Path(__file__).resolve().with_name("_child.py")
CHILD_INSIDE = "/run/memcollab/_child.py"  # where bubblewrap shows the child script
PROGRAM_FILE = "program.py"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
NPROC_FRESH_UID = 64  # processes + threads of a fresh uid: room for threads, a wall for fork bombs
NPROC_HEADROOM = 16  # for a non-root harness: processes on top of the ones the user already runs
_DEV_NODES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


def is_root() -> bool:
    return os.geteuid() == 0


def bwrap_path() -> str | None:
    return shutil.which("bwrap", path=SAFE_PATH + os.pathsep + os.environ.get("PATH", ""))


def interpreter(site_packages: bool) -> str:
    """The Python to start in the sandbox: the real binary, not a virtualenv's link to it (the venv may live where
    the sandbox shows its own tmpfs, e.g. under /tmp; the child needs only the standard library). With
    `site_packages`, the venv's own interpreter, whose packages are then wanted."""
    return sys.executable if site_packages else os.path.realpath(sys.executable)


def python_argv(python: str, child: str, spec_json: str, site_packages: bool) -> list[str]:
    """`python -I -B -X utf8=1 [-S] child SPEC`: isolated mode, no bytecode files, no site unless asked."""
    argv = [python, "-I", "-B", "-X", "utf8=1"]
    if not site_packages:
        argv.append("-S")
    return [*argv, child, spec_json]


def clean_env(workdir: str) -> dict[str, str]:
    """A fresh environment: nothing of the parent's (no API keys); home and temp files inside the work dir."""
    return {"PATH": SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


# ------------------------------------------------------------------ uids


def _uid_range() -> range:
    """A block of uids that no account uses: high if this (possibly namespaced) root maps them, else below 65000."""
    high = range(0x7E4D0000, 0x7E4D0000 + 0x10000)
    try:
        for line in Path("/proc/self/uid_map").read_text().splitlines():
            inside, _, count = (int(x) for x in line.split())
            if inside <= high.start and high.stop <= inside + count:
                return high
    except (OSError, ValueError):
        pass
    return range(62000, 65000)


def uid_processes(uid: int) -> list[int]:
    """Pids whose real uid is `uid` (host view), zombies left out (they are dead; their parent reaps them)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return found


def kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of `uid` until none is left (a fork loop is bounded by RLIMIT_NPROC)."""
    for _ in range(rounds):
        pids = uid_processes(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class UidLeases:
    """Fresh uids, one per concurrent run: no account owns them, no process of ours runs as them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._range = _uid_range()
        self._cursor = random.SystemRandom().randrange(len(self._range))
        self._in_use: set[int] = set()

    def _free(self, uid: int, check_processes: bool) -> bool:
        if uid in self._in_use:
            return False
        try:
            pwd.getpwuid(uid)
            return False
        except KeyError:
            pass
        return not (check_processes and uid_processes(uid))

    def lease(self, check_processes: bool = False) -> int:
        """A free uid; `check_processes` also skips uids another harness is using right now (for the uid mode)."""
        with self._lock:
            for _ in range(len(self._range)):
                uid = self._range[self._cursor % len(self._range)]
                self._cursor += 1
                if self._free(uid, check_processes):
                    self._in_use.add(uid)
                    return uid
        raise RuntimeError("no free sandbox uid")

    def release(self, uid: int) -> None:
        with self._lock:
            self._in_use.discard(uid)


UIDS = UidLeases()


def nproc_for_harness_uid() -> int:
    """RLIMIT_NPROC for a child that keeps the harness's (non-root) uid: what the user runs now, plus headroom."""
    uid = os.getuid()
    return len(uid_processes(uid)) + NPROC_HEADROOM


# ------------------------------------------------------------------ bubblewrap


def interpreter_dirs() -> list[str]:
    """Directories the interpreter needs, outside /usr: its prefixes (a venv's and its base's)."""
    dirs: list[str] = []
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
    ]
    for path in sorted({os.path.realpath(p) for p in candidates}, key=len):
        if path == "/usr" or path.startswith("/usr/") or any(path == d or path.startswith(d + "/") for d in dirs):
            continue
        dirs.append(path)
    return dirs


def unsafe_interpreter_dir(path: str) -> str | None:
    """Why binding `path` would expose more than an interpreter (None when it is fine)."""
    home = os.path.realpath(os.path.expanduser("~"))
    if path in ("/", home) or os.path.isdir(os.path.join(path, ".ssh")):
        return f"the interpreter's prefix {path} is too wide to show inside the sandbox"
    return None


class _Tree:
    """bwrap arguments for a root file system built from nothing; parents are created 0755 (bwrap's own are 0700)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._dirs: set[str] = {"/"}

    def _parents(self, dest: str) -> None:
        parts = Path(dest).parent.parts[1:]
        for i in range(len(parts)):
            path = "/" + "/".join(parts[: i + 1])
            if path not in self._dirs:
                self.args += ["--perms", "0755", "--dir", path]
                self._dirs.add(path)

    def ro_bind(self, src: str, dest: str | None = None) -> None:
        dest = dest or src
        self._parents(dest)
        self.args += ["--ro-bind", src, dest]
        self._dirs.add(dest)

    def symlink(self, target: str, dest: str) -> None:
        self._parents(dest)
        self.args += ["--symlink", target, dest]

    def add(self, dest: str, *args: str) -> None:
        self._parents(dest)
        self.args += list(args)
        self._dirs.add(dest)


def bwrap_argv(
    bwrap: str,
    workdir: str,
    program: str | None,
    command: list[str],
    disk_bytes: int,
    privileged: bool,
    workdir_mode: str | None = None,
    extra_caps: tuple[str, ...] = (),
) -> list[str]:
    """The bubblewrap command line that runs `command` (whose script is CHILD_INSIDE) in `workdir`, a fresh tmpfs
    of `disk_bytes` holding `program` (read-only) when given."""
    argv = [bwrap]
    if privileged:
        argv += [
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--cap-drop",
            "ALL",
        ]
        for cap in ("CAP_SETUID", "CAP_SETGID", *extra_caps):
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-all"]
    # bwrap's own reaper stays the namespace's init: it keeps root's uid, so --die-with-parent's SIGKILL reaches it
    # when we kill bwrap (the kernel refuses a parent-death signal across uids), and the namespace dies with it.
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    for key, value in clean_env(workdir).items():
        argv += ["--setenv", key, value]

    tree = _Tree()
    tree.ro_bind("/usr")
    for top in ("/bin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            tree.symlink(os.readlink(top), top)
        elif os.path.isdir(top):
            tree.ro_bind(top)
    for path in interpreter_dirs():
        tree.ro_bind(path)
    tree.ro_bind("/etc/ld.so.cache")
    if os.path.exists("/etc/localtime"):
        tree.ro_bind("/etc/localtime")
    tree.add("/proc", "--proc", "/proc")
    tree.add("/dev", "--perms", "0755", "--dir", "/dev")
    for node in _DEV_NODES:
        tree.add(f"/dev/{node}", "--dev-bind-try", f"/dev/{node}", f"/dev/{node}")
    for target, link in _DEV_LINKS:
        tree.symlink(target, link)
    mode = workdir_mode or ("0777" if privileged else "0700")  # as root, the child writes as its dropped uid
    tree.add(workdir, "--size", str(disk_bytes), "--perms", mode, "--tmpfs", workdir)
    if program is not None:
        tree.ro_bind(program, f"{workdir}/{PROGRAM_FILE}")
    tree.ro_bind(str(CHILD), CHILD_INSIDE)
    return [*argv, *tree.args, "--chdir", workdir, "--", *command]


def bwrap_unavailable() -> str | None:
    """Why bubblewrap cannot be used here (None when it can; a probe run still decides)."""
    if bwrap_path() is None:
        return "bubblewrap (bwrap) is not installed"
    for path in interpreter_dirs():
        reason = unsafe_interpreter_dir(path)
        if reason:
            return reason
    if not os.path.exists("/etc/ld.so.cache"):
        return "/etc/ld.so.cache is missing"
    return None
