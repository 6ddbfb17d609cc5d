"""Where MemCollab finds its data, configs and caches, in one place."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    """User cache root (`MEMCOLLAB_CACHE_DIR`, default `~/.cache/memcollab`)."""
    return Path(os.environ.get("MEMCOLLAB_CACHE_DIR", Path.home() / ".cache" / "memcollab")).expanduser()


def config_dir() -> Path:
    """Directory of the default YAML configs: `MEMCOLLAB_CONFIG_DIR` or the checkout's `configs/`."""
    env = os.environ.get("MEMCOLLAB_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    return SOURCE_ROOT / "configs"


def default_data_dir() -> Path | None:
    """`MEMCOLLAB_DATA_DIR`, else `../shared/data` beside the checkout or the cwd, else None (use the hub)."""
    env = os.environ.get("MEMCOLLAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), SOURCE_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None
