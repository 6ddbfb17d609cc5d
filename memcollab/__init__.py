"""MemCollab: cross-agent memory collaboration via contrastive trajectory distillation."""

import os
from importlib.metadata import PackageNotFoundError, version

# LiteLLM/DSPy otherwise fetch a model cost map from the internet on first use (a 5 s timeout
# offline); the bundled snapshot is all MemCollab needs.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

try:
    __version__ = version("memcollab")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
