"""Category taxonomies (YAML data files, not code): categories and error types with descriptions."""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel

from memcollab.errors import ConfigError
from memcollab.paths import config_dir


class Taxonomy(BaseModel):
    """Categories and error types of one domain, each with a one-line description."""

    name: str
    domain: str
    categories: dict[str, str]
    error_types: dict[str, str]

    def render_categories(self) -> str:
        return "\n".join(f"{name}: {desc}" for name, desc in self.categories.items())

    def render_error_types(self) -> str:
        return "\n".join(f"{name}: {desc}" for name, desc in self.error_types.items())

    def normalize_category(self, raw: str) -> str:
        """Map an LM's free-text answer to a category name (exact, substring, then closest match)."""
        return _closest(raw, list(self.categories))

    def normalize_error_type(self, raw: str) -> str:
        return _closest(raw, list(self.error_types), default="other" if "other" in self.error_types else None)


def _closest(raw: str, names: list[str], default: str | None = None) -> str:
    text = (raw or "").strip().lower().replace(" ", "_").replace("-", "_").strip("`'\".:*")
    if text in names:
        return text
    hits = [name for name in names if name in text]
    if hits:
        return max(hits, key=len)
    match = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
    if match:
        return match[0]
    return default if default is not None else names[0]


@cache
def load_taxonomy(name_or_path: str) -> Taxonomy:
    """Load a taxonomy by name (a file in `configs/taxonomies/`) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / "taxonomies" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"taxonomy file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
        return Taxonomy(**data)
    except Exception as exc:  # yaml or validation error -> one line
        raise ConfigError(f"invalid taxonomy file {path}: {str(exc).splitlines()[0]}") from None
