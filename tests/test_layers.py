"""The package's layers: every import points down (or stays inside its own package).

benchmark -> agents solve -> graded -> pairs -> distilled memory -> retrieval -> solver -> metrics -> MLflow
reads bottom-up in the tree below; a module may import its own package and any lower layer, never a
package beside or above it. Lazy imports inside functions count too: they are dependencies all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "memcollab"

#: Layer of each top-level module or package of `memcollab`, lowest first.
LAYERS: dict[str, int] = {
    # ground: errors; then typed records, paths and the parallel helper; then the taxonomy files
    "__init__": 0,
    "errors": 0,
    "records": 1,
    "paths": 1,
    "parallel": 1,
    "taxonomy": 2,
    # what the method stands on: data, judging, models
    "benchmarks": 3,
    "grading": 3,
    "lm": 3,
    # what the method keeps and asks
    "memory": 4,
    "signatures": 4,
    "tracking": 4,
    # the method
    "programs": 5,
    # experiments over the method
    "experiments": 6,
    # the command line
    "cli": 7,
}


def _unit(module: str) -> str:
    """`memcollab.grading.code` -> `grading`; `memcollab` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_unit(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every `memcollab` import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "memcollab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "memcollab":
                continue
            if target == "memcollab":  # `from memcollab import paths` names a module; `__version__` names an attribute
                found += [
                    (node.lineno, f"memcollab.{alias.name}" if _is_unit(alias.name) else "memcollab")
                    for alias in node.names
                ]
            else:
                found.append((node.lineno, target))
    return found


def check_file(path: Path, module: str, where: str) -> list[str]:
    """Problems of one file that sits at `module` in the package."""
    unit = _unit(module)
    if unit not in LAYERS:
        return [f"{where}: '{unit}' has no layer in tests/test_layers.py"]
    problems = []
    for line, imported in _imports(path, module):
        target = _unit(imported)
        if target not in LAYERS:
            problems.append(f"{where}:{line} imports unknown '{imported}'")
        elif target != unit and LAYERS[target] >= LAYERS[unit]:
            problems.append(
                f"{where}:{line} ({unit}, layer {LAYERS[unit]}) imports {imported} ({target}, layer {LAYERS[target]})"
            )
    return problems


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += check_file(path, _module_name(path), str(path.relative_to(PACKAGE.parent)))
    return problems


def test_every_import_points_down() -> None:
    problems = violations()
    assert not problems, "imports that point sideways or up:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from memcollab.experiments.runner import Experiment\n", "experiments"),
        ("import memcollab.cli\n", "cli"),
        ("from memcollab import cli\n", "cli"),
        ("from memcollab import programs\n", "programs"),
        ("def f():\n    from memcollab.memory import store\n", "memory"),
        ("from ..programs import pipeline\n", "programs"),
    ],
)
def test_checker_sees_upward_imports(tmp_path: Path, source: str, expected: str) -> None:
    """The checker itself can fail: each of these, placed in `grading`, points up."""
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    problems = check_file(probe, "memcollab.grading.probe", "probe")
    assert len(problems) == 1 and expected in problems[0]


def test_checker_allows_own_package_and_lower_layers(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from memcollab.grading.sandbox import run_program\nfrom memcollab.records import Task\nfrom . import math\n"
    )
    assert check_file(probe, "memcollab.grading.probe", "probe") == []
