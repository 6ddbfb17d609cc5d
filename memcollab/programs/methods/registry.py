"""Method kinds and the named presets a grid config can use by name."""

from __future__ import annotations

from pathlib import Path

from memcollab.errors import ConfigError
from memcollab.programs.methods.base import MemoryMethod, MethodContext, MethodSpec


def method_class(kind: str) -> type[MemoryMethod]:
    """The class that implements a method kind."""
    from memcollab.programs.methods.category import CategoryMemory
    from memcollab.programs.methods.cheatsheet import CheatsheetMemory
    from memcollab.programs.methods.contrastive import ContrastiveMemory
    from memcollab.programs.methods.examples import ExamplesMemory
    from memcollab.programs.methods.none import NoMemory
    from memcollab.programs.methods.placebo import PlaceboMemory
    from memcollab.programs.methods.reflection import ReflectionMemory

    classes: dict[str, type[MemoryMethod]] = {
        "none": NoMemory,
        "reflect": ReflectionMemory,
        "memcollab": ContrastiveMemory,
        "category": CategoryMemory,
        "examples": ExamplesMemory,
        "cheatsheet": CheatsheetMemory,
        "placebo": PlaceboMemory,
    }
    if kind not in classes:
        raise ConfigError(f"unknown method kind '{kind}'; choose one of: {', '.join(classes)}")
    return classes[kind]


#: Methods by the names grid configs use; `source` is relative to the target agent.
PRESETS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(name="none", kind="none", source="none"),
        MethodSpec(name="self", kind="reflect", source="self"),
        MethodSpec(name="naive", kind="reflect", source="peer"),
        MethodSpec(name="memcollab", kind="memcollab", source="pair"),
        MethodSpec(name="memcollab-xfamily", kind="memcollab", source="xfamily"),
        MethodSpec(name="memcollab-verified", kind="memcollab", source="pair", verify=True),
        MethodSpec(name="memcollab-category", kind="category", source="pair"),
        MethodSpec(name="memcollab-nogate", kind="memcollab", source="pair", gate="none"),
        MethodSpec(name="memcollab-merged", kind="memcollab", source="pair", gate="merged"),
        MethodSpec(name="examples", kind="examples", source="pair"),
        MethodSpec(name="cheatsheet", kind="cheatsheet", source="pair"),
        MethodSpec(name="placebo", kind="placebo", source="none"),  # needs rules_from (a control)
    )
}


def make_method(spec: MethodSpec, ctx: MethodContext, workdir: Path | None = None) -> MemoryMethod:
    """An unbuilt method of `spec`'s kind (`workdir`: where a store or history goes; None keeps it in memory)."""
    return method_class(spec.kind)(spec, ctx, workdir)
