"""Memory methods: every way of giving an agent experience, behind one interface and one Solver.

`none`, `self` / `naive` (single-trajectory reflection), `memcollab` and its variants (contrast pairs,
the pipeline reused), `memcollab-category` (several pairs of one category at once), `examples`
(retrieved worked examples as demos) and `cheatsheet` (a curated cumulative cheatsheet). See `base`.
"""

from memcollab.programs.methods.base import (
    BuildInputs,
    Guidance,
    MemoryMethod,
    MethodContext,
    MethodSpec,
    StoreMethod,
)
from memcollab.programs.methods.registry import PRESETS, make_method, method_class
from memcollab.programs.methods.solve import run_solver, solve_with

__all__ = [
    "BuildInputs",
    "Guidance",
    "MemoryMethod",
    "MethodContext",
    "MethodSpec",
    "PRESETS",
    "StoreMethod",
    "make_method",
    "method_class",
    "run_solver",
    "solve_with",
]
