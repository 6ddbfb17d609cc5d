"""Build and locate llama.cpp's `llama-server` binary.

Where the binary comes from: the llama.cpp tree vendored in llama-cpp-python's
MIT-licensed sdist (fetched with `pip download`, i.e. the package index, never
a release download at run time), compiled for the `llama-server` target only:
no tests, examples, other tools, web UI (npm) or HTTPS, so the build needs no
network and compiles only what the server links (ggml, llama, common, mtmd,
the server). When llama-cpp-python is installed, its version is used, so the
server and the in-process backend run the same llama.cpp revision.

Flags are portable on purpose: `GGML_NATIVE=OFF` plus AVX/AVX2/FMA/F16C/BMI2.
A native build on a CPU that advertises instructions the VM does not enable
(AMX here) crashes at the first token. Static llama/ggml libraries make the
installed binary self-contained.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TextIO

from memcollab import paths
from memcollab.errors import ServerError

BINARY_ENV = "MEMCOLLAB_LLAMA_SERVER"
BINARY_NAME = "llama-server"
SDIST_PACKAGE = "llama-cpp-python"
DEFAULT_SDIST_VERSION = "0.3.36"  # used only when llama-cpp-python is not installed
BUILD_HINT = "memcollab models build-server"

CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    # Explicitly off (not just default): a kept build directory must not carry
    # a non-portable value over from an earlier configure.
    "-DGGML_AVX_VNNI=OFF",
    "-DGGML_AVX512=OFF",
    "-DGGML_AVX512_VBMI=OFF",
    "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",  # the server lives under tools/; only its target is built
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)

Log = Callable[[str], None]
"""log(line): every output line of the build, for a progress display."""

_STEP = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\s*\]")  # ninja: "[12/345] Building CXX object ..."
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")  # make: "[ 12%] Building CXX object ..."


@dataclass
class BuildReport:
    """What a build did and how long each phase took (seconds), for the CLI to print."""

    binary: Path
    version: str
    log_path: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def compile_progress(line: str) -> tuple[int, int] | None:
    """(done, total) from one line of build output, or None; make's percentage reads as (pct, 100)."""
    if m := _STEP.match(line):
        return int(m[1]), int(m[2])
    if m := _PERCENT.match(line):
        return int(m[1]), 100
    return None


def bin_dir() -> Path:
    """Where `build_server` installs the binary."""
    return paths.cache_dir() / "bin"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_server_binary() -> Path:
    """`MEMCOLLAB_LLAMA_SERVER`, else `<cache>/bin/llama-server`, else `llama-server` on PATH.

    An explicit env path that is not executable is an error rather than a
    silent fallback, so a typo never runs a different binary than intended.
    """
    env = os.environ.get(BINARY_ENV)
    if env:
        path = Path(env).expanduser()
        if not _is_executable(path):
            raise ServerError(f"{BINARY_ENV}={env} is not an executable file: fix or unset it, or run `{BUILD_HINT}`")
        return path
    cached = bin_dir() / BINARY_NAME
    if _is_executable(cached):
        return cached
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path)
    raise ServerError(f"llama-server binary not found: build it with `{BUILD_HINT}` (or set {BINARY_ENV})")


def sdist_version() -> str:
    """The installed llama-cpp-python version (server and in-process backend then match), else a pinned one."""
    try:
        return metadata.version(SDIST_PACKAGE)
    except metadata.PackageNotFoundError:
        return DEFAULT_SDIST_VERSION


def default_jobs() -> int:
    """Cores this process may use (inside containers `os.cpu_count()` reports the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _run_logged(label: str, cmd: list[str], log_fh: TextIO, log: Log | None) -> None:
    """Run `cmd`, appending its output to the log file and passing each line to `log`."""
    log_fh.write(f"$ {' '.join(cmd)}\n")
    log_fh.flush()
    if log:
        log(f"$ {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=5)
    for line in proc.stdout:
        log_fh.write(line)
        tail.append(line.rstrip())
        if log:
            log(line.rstrip())
    rc = proc.wait()
    log_fh.flush()
    if rc != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise ServerError(f"{label} failed (exit {rc}): {last[:200]} (full log: {log_fh.name})")


def _fetch_sdist(version: str, src_root: Path, log_fh: TextIO, log: Log | None) -> Path:
    """The sdist tarball, kept in the cache so a rebuild does not fetch it again."""
    tarball = src_root / f"llama_cpp_python-{version}.tar.gz"
    if tarball.is_file():
        return tarball
    src_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=src_root) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"{SDIST_PACKAGE}=={version}",
            "-d",
            tmp,
        ]
        _run_logged("pip download", cmd, log_fh, log)
        found = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not found:
            raise ServerError(f"pip download of {SDIST_PACKAGE}=={version} produced no sdist (full log: {log_fh.name})")
        os.replace(found[0], tarball)
    return tarball


def _extract(tarball: Path, src_root: Path) -> Path:
    """Extract once; refuse members that would land outside the source directory."""
    top = src_root / tarball.name.removesuffix(".tar.gz")
    llama_dir = top / "vendor" / "llama.cpp"
    if (llama_dir / "CMakeLists.txt").is_file():
        return llama_dir
    with tempfile.TemporaryDirectory(dir=src_root) as tmp, tarfile.open(tarball) as tar:
        root = Path(tmp).resolve()
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # Python without extraction filters: plain files and dirs only, inside root
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            for member in members:
                if not (root / member.name).resolve().is_relative_to(root):
                    raise ServerError(f"refusing to extract {tarball.name}: {member.name} escapes the directory")
            tar.extractall(root, members=members)
        shutil.rmtree(top, ignore_errors=True)
        os.replace(root / top.name, top)
    return llama_dir


def _generator(build_dir: Path) -> list[str]:
    """Ninja when available (parallel scheduling, one `[n/N]` line per step), unless a kept build dir used another."""
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file():
        return []  # cmake refuses to switch generators in an existing build dir: keep its own
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def build_server(
    log: Log | None = None,
    *,
    version: str | None = None,
    jobs: int | None = None,
    force: bool = False,
) -> BuildReport:
    """Fetch llama-cpp-python's sdist, build `llama-server` portably, install it into `<cache>/bin`.

    `log` receives every output line (see `compile_progress` to read the
    step counter); the full output also goes to
    `<cache>/build/llama-server-<version>.log`. The build directory is kept,
    so a second call is an incremental (near no-op) build.
    """
    if not shutil.which("cmake") or not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        raise ServerError("cmake or a C++ compiler is missing: install them (e.g. apt-get install cmake g++) and retry")
    version = version or sdist_version()
    cache = paths.cache_dir()
    src_root, build_root = cache / "src", cache / "build"
    build_root.mkdir(parents=True, exist_ok=True)
    build_dir = build_root / f"llama-server-{version}"
    report = BuildReport(bin_dir() / BINARY_NAME, version, build_root / f"llama-server-{version}.log")
    if force:
        shutil.rmtree(build_dir, ignore_errors=True)
    with report.log_path.open("w") as log_fh:
        started = time.monotonic()
        tarball = _fetch_sdist(version, src_root, log_fh, log)
        llama_dir = _extract(tarball, src_root)
        if not (llama_dir / "tools" / "server" / "server.cpp").is_file():
            raise ServerError(f"{tarball.name} has no llama.cpp server sources: use another llama-cpp-python version")
        report.seconds["fetch"] = time.monotonic() - started

        started = time.monotonic()
        configure = ["cmake", "-S", str(llama_dir), "-B", str(build_dir), *_generator(build_dir), *CMAKE_FLAGS]
        _run_logged("cmake configure", configure, log_fh, log)
        report.seconds["configure"] = time.monotonic() - started

        started = time.monotonic()
        n_jobs = str(jobs or default_jobs())
        build_cmd = ["cmake", "--build", str(build_dir), "--config", "Release", "--target", BINARY_NAME, "-j", n_jobs]
        _run_logged("cmake build", build_cmd, log_fh, log)
        report.seconds["compile"] = time.monotonic() - started

        built = build_dir / "bin" / BINARY_NAME
        if not _is_executable(built):
            raise ServerError(f"build finished but {built} is missing (full log: {report.log_path})")
        target = report.binary
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copy2(built, tmp)
        os.replace(tmp, target)  # atomic: a running server keeps its old inode
        check = subprocess.run([str(target), "--version"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise ServerError(f"built {target} does not run: {(check.stderr or check.stdout).strip()[-200:]}")
        times = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
        log_fh.write(f"installed {target} ({times})\n")
    return report
