"""The sandbox: every hostile program ends with a clear status, quickly, and leaves nothing behind."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from memcollab.grading.sandbox import ExecResult, SandboxLimits, SandboxPool, run_program

FAST = SandboxLimits(wall_s=3.0, cpu_s=2.0, memory_mb=512, output_bytes=4096)


def _last_err(result: ExecResult) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def test_ok_program_runs_in_a_fresh_temp_dir_that_is_removed() -> None:
    result = run_program("import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')", FAST)
    assert (result.status, result.returncode) == ("ok", 0)
    workdir = result.stdout.strip()
    assert "memcollab-sbx-" in workdir and not Path(workdir).exists()


def test_exception_is_an_error_with_a_traceback() -> None:
    result = run_program("def f():\n    raise KeyError('k')\nf()", FAST)
    assert (result.status, result.returncode) == ("error", 1)
    assert _last_err(result) == "KeyError: 'k'"
    assert 'File "program.py", line 2, in f' in result.stderr and "<string>" not in result.stderr


def test_failed_equality_assert_shows_both_sides() -> None:
    result = run_program("assert [1, 2] == [1, 3]", FAST)
    assert _last_err(result) == "AssertionError: [1, 2] != [1, 3]"


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass", FAST)
    assert result.status == "timeout"
    assert time.monotonic() - start < FAST.wall_s + 2


def test_sleeping_program_hits_the_wall_clock() -> None:
    result = run_program("import time\ntime.sleep(60)", SandboxLimits(wall_s=1.0, cpu_s=5.0))
    assert result.status == "timeout" and result.duration_s < 3


def test_closing_stdout_does_not_escape_the_wall_clock() -> None:
    result = run_program(
        "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", SandboxLimits(wall_s=1.0, cpu_s=5.0)
    )
    assert result.status == "timeout"


def test_fork_loop_is_refused() -> None:
    result = run_program("import os\nwhile True:\n    os.fork()", FAST)
    assert result.status == "error" and "PermissionError" in _last_err(result)


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "import multiprocessing",
        "import ctypes",
        "import resource",
    ],
)
def test_process_creation_and_escape_hatches_are_refused(code: str) -> None:
    result = run_program(code, FAST)
    assert result.status == "error", result
    assert _last_err(result).startswith(("PermissionError", "ModuleNotFoundError"))


def _processes_named(name: str) -> list[str]:
    """Host pids whose command name (/proc/<pid>/comm) is `name`, zombies excluded."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"Name:\t{name}\n" in text and "State:\tZ" not in text:
            found.append(status.parent.name)
    return found


def test_whole_process_group_is_killed_on_timeout() -> None:
    """Even a child forked behind the guard's back (a fresh posix module) dies with the run.

    The child renames itself (/proc/self/comm) to a unique marker, which the host sees whatever pid namespace
    the run had.
    """
    marker = "mc" + secrets.token_hex(6)
    code = (
        "import _imp, importlib.machinery as m, sys, time\n"
        "posix = _imp.create_builtin(m.ModuleSpec('posix', None, origin='built-in'))\n"
        "pid = posix.fork()\n"
        "if pid == 0:\n"
        f"    posix.write(posix.open('/proc/self/comm', 1), b'{marker}')\n"  # 1 = O_WRONLY
        "    posix.write(1, b'renamed\\n')\n"
        "    time.sleep(120)\n    posix._exit(0)\n"
        "while True:\n    pass\n"
    )
    result = run_program(code, SandboxLimits(wall_s=1.5, cpu_s=10.0))
    assert result.status == "timeout" and "renamed" in result.stdout, result
    time.sleep(0.2)
    assert _processes_named(marker) == []


def test_huge_allocation_hits_the_memory_limit() -> None:
    result = run_program("x = bytearray(20 * 1024 ** 3)", FAST)
    assert result.status == "memory_limit"


def test_growing_allocation_hits_the_memory_limit() -> None:
    result = run_program("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))", FAST)
    assert result.status == "memory_limit"


def test_early_exit_is_still_ok_for_the_sandbox() -> None:
    """The sandbox reports exit 0; the code grader's sentinel turns this into a failure (see test_code_grader)."""
    result = run_program("import os\nos._exit(0)\nprint('never')", FAST)
    assert (result.status, result.stdout) == ("ok", "")


def test_writes_outside_the_temp_dir_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    for code in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import shutil\nshutil.copy('program.py', {str(target)!r})",
        f"import os\nos.rename('program.py', {str(target)!r})",
    ):
        result = run_program(code, FAST)
        assert result.status == "error" and "PermissionError" in _last_err(result), code
    assert not target.exists()
    keep = tmp_path / "keep.txt"
    keep.write_text("data")
    assert run_program(f"import os\nos.remove({str(keep)!r})", FAST).status == "error"
    assert keep.read_text() == "data"


def test_parent_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMCOLLAB_TEST_SECRET", "s3cr3t-value")
    result = run_program("import os\nprint(sorted(os.environ))\nprint(os.environ.get('MEMCOLLAB_TEST_SECRET'))", FAST)
    assert result.status == "ok" and "s3cr3t" not in result.stdout
    assert "None" in result.stdout and "OPENAI" not in result.stdout
    sneaky = run_program("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())", FAST)
    assert sneaky.status == "error" and "s3cr3t" not in sneaky.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.socket().connect(('127.0.0.1', 9))",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import _socket\n_socket.socket()",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')",
    ],
)
def test_sockets_are_unusable(code: str) -> None:
    result = run_program(code, FAST)
    assert result.status == "error" and "disabled in the sandbox" in _last_err(result)


def test_output_flood_is_cut_off() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    print('x' * 1000)", FAST)
    assert result.status == "output_limit"
    assert len(result.stdout) <= FAST.output_bytes and time.monotonic() - start < FAST.wall_s


def test_pool_keeps_input_order() -> None:
    programs = [f"import time\ntime.sleep({0.3 if i % 2 == 0 else 0})\nprint({i})" for i in range(6)]
    seen: list[int] = []
    results = SandboxPool(workers=2).run_many(programs, FAST, on_result=lambda i, r: seen.append(i))
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert sorted(seen) == list(range(6))


def test_pool_survives_hostile_programs() -> None:
    programs = ["while True: pass", "x = bytearray(20 * 1024 ** 3)", "import os\nos.fork()", "print('fine')"]
    statuses = [r.status for r in SandboxPool(workers=2).run_many(programs, SandboxLimits(wall_s=1.5, cpu_s=1.0))]
    assert statuses == ["timeout", "memory_limit", "error", "ok"]
