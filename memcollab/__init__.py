"""MemCollab: cross-agent memory collaboration via contrastive trajectory distillation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("memcollab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
