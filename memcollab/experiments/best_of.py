"""The best of the rest (`best_of` in a grid config): chosen by a rule fixed before its candidates ran, reported
on tasks the choice never saw.

Each candidate cell is compared with no memory on `chosen_on`, paired as every cell is; the highest difference
wins (a tie goes to the first in the config's list). The choice is written to `best_of.json` as soon as every
candidate has run there, and is never made again: the next plan adds the winner's cell on `eval_ids`, and
`best_of.csv` reports it on `eval_ids` minus `chosen_on` ("held_out") beside the candidates' own comparisons.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from memcollab.benchmarks import parse_ids
from memcollab.errors import ConfigError
from memcollab.experiments.grid_config import Cell, GridConfig
from memcollab.experiments.report import PAIRED_COLUMNS, none_rows, paired

if TYPE_CHECKING:
    from memcollab.experiments.grid_plan import BenchmarkPlan

CHOICE_FILE = "best_of.json"
BEST_OF_COLUMNS = ("benchmark", "target", "method", "cell", "part", "chosen", *PAIRED_COLUMNS)


@dataclass(frozen=True)
class BestOfSlice:
    """One benchmark's best of the rest: the candidate cells (by method name, in config order) and task ids."""

    benchmark: str
    target: str
    candidates: dict[str, Cell]
    chosen_on: list[str]
    held_out: list[str]


def _recorded(path: Path) -> dict[str, Any]:
    """best_of.json as written so far (empty when absent or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_choice(cfg: GridConfig) -> dict[str, str]:
    """The winners an earlier invocation chose, by benchmark (empty before the choice, or without `best_of`)."""
    if cfg.best_of is None:
        return {}
    path = Path(cfg.run_dir) / CHOICE_FILE
    chosen = {str(b): str(v["method"]) for b, v in _recorded(path).items() if isinstance(v, dict) and "method" in v}
    for name, method in chosen.items():
        if method not in cfg.best_of.methods:
            raise ConfigError(f"{path} chose '{method}' on {name}, not a best_of candidate; delete it to choose again")
    return chosen


def best_of_slices(cfg: GridConfig, cells: list[Cell], benchmarks: Mapping[str, BenchmarkPlan]) -> list[BestOfSlice]:
    """The checked slices of `cfg.best_of`: every candidate a cell of the target that runs on every `chosen_on`
    task, and some `eval_ids` task held out from the choice; a ConfigError naming the first thing wrong."""
    best = cfg.best_of
    if best is None:
        return []
    slices = []
    for name, bench in benchmarks.items():
        ids, on = best.ids_for(name), best.chosen_on_for(name)
        if ids is None or on is None:
            continue
        # by name and source: a transfer section may add a cell of the same name from another source
        mine = {(c.method.name, c.source): c for c in cells if c.benchmark == name and c.target == best.target}
        tasks = list(bench.eval_tasks.values())
        chosen_on = [t.id for t in parse_ids(on).select(tasks, name)]
        seen = set(chosen_on)
        held_out = [t.id for t in parse_ids(ids).select(tasks, name) if t.id not in seen]
        candidates: dict[str, Cell] = {}
        for method in best.methods:
            spec = cfg.method(method)[0]
            cell = mine.get((spec.name, cfg.resolve_source(spec.source, best.target)))
            if cell is None:
                raise ConfigError(f"best_of: '{method}' is not a cell of {best.target} on {name}; add it to cells")
            if not set(chosen_on) <= set(bench.cell_tasks[cell.id]):
                raise ConfigError(f"best_of: '{method}' does not run on every task of chosen_on ({on}) on {name}")
            candidates[method] = cell
        if not held_out:
            raise ConfigError(f"best_of: eval_ids ({ids}) holds no task outside chosen_on ({on}) on {name}")
        slices.append(BestOfSlice(name, best.target, candidates, chosen_on, held_out))
    return slices


def best_of_table(
    rows: pd.DataFrame, slices: list[BestOfSlice], chosen: Mapping[str, str], samples: int
) -> pd.DataFrame:
    """Each candidate that has run on all of `chosen_on` against no memory there; the winner on the held-out
    tasks it has run on."""
    lines: list[dict[str, Any]] = []
    for piece in slices:
        baseline = none_rows(rows, piece.benchmark, piece.target)
        winner = chosen.get(piece.benchmark)
        for method, cell in piece.candidates.items():
            parts = [("chosen_on", piece.chosen_on)] + ([("held_out", piece.held_out)] if method == winner else [])
            for part, ids in parts:
                mine = rows[(rows["cell"] == cell.id) & rows["task_id"].isin(ids)]
                if mine.empty or (part == "chosen_on" and mine["task_id"].nunique() < len(ids)):
                    continue  # a candidate not finished yet is no candidate yet
                stats = paired(mine, baseline, samples)
                lines.append(
                    {
                        "benchmark": piece.benchmark,
                        "target": piece.target,
                        "method": method,
                        "cell": cell.id,
                        "part": part,
                        "chosen": method == winner,
                        **{k: stats[k] for k in PAIRED_COLUMNS},
                    }
                )
    return pd.DataFrame(lines, columns=list(BEST_OF_COLUMNS))


def new_choices(table: pd.DataFrame, slices: list[BestOfSlice], chosen: Mapping[str, str]) -> dict[str, Any]:
    """The choices `table` allows now (benchmarks not chosen yet whose candidates have all run on `chosen_on`):
    the highest difference to no memory, a tie to the first in config order."""
    made: dict[str, Any] = {}
    for piece in slices:
        if piece.benchmark in chosen:
            continue
        mine = table[(table["benchmark"] == piece.benchmark) & (table["part"] == "chosen_on")]
        diffs = dict(zip(mine["method"], mine["diff"], strict=True))
        if set(diffs) != set(piece.candidates):
            continue
        winner = max(piece.candidates, key=diffs.__getitem__)  # max keeps the first of equals: config order
        made[piece.benchmark] = {"method": winner, "chosen_on": len(piece.chosen_on), "diff": diffs}
    return made


def write_choice(run_dir: Path, made: Mapping[str, Any]) -> None:
    """Add `made` to best_of.json (earlier choices stay as they were)."""
    path = run_dir / CHOICE_FILE
    path.write_text(json.dumps({**_recorded(path), **made}, indent=2))
