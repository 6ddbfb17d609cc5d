"""The grid harness with scripted DSPy DummyLM agents: config expansion, paired tables, transfer matrix, k ablation,
resume, the time estimate, and the notebook on the committed smoke run (data flow only, no claims about accuracy).

`python tests/test_grid.py results/grid-smoke` regenerates the committed smoke run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from dspy.utils.dummies import DummyLM

from memcollab.benchmarks import get_benchmark, load_source
from memcollab.errors import ConfigError, MemCollabError
from memcollab.experiments.estimate import load_throughput
from memcollab.experiments.grid import evaluation_order, run_grid, run_order
from memcollab.experiments.grid_config import (
    BestOf,
    GridConfig,
    TransferSpec,
    expand_cells,
    is_grid_config,
    load_grid_config,
)
from memcollab.experiments.grid_estimate import (
    Finished,
    estimate_grid,
    estimate_grid_seconds,
    guidance_tokens,
    measured_turns,
)
from memcollab.experiments.grid_plan import plan_grid
from memcollab.paths import default_data_dir
from memcollab.programs.pipeline import Agent

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = ROOT / "configs" / "experiments" / "grid_smoke.yaml"
SMOKE_DIR = ROOT / "results" / "grid-smoke"
needs_data = pytest.mark.skipif(default_data_dir() is None, reason="benchmark data directory not found")

#: The one evaluation task the weak agent solves, and only when the prompt carries a rule list.
HELPED_TASK = "gsm8k/test/1"
RULE = {
    "when": "several quantities are combined into a total",
    "enforce": "write each partial result",
    "avoid": "dropping a group from the sum",
    "error_type": "missed_case",
}
CATEGORIES = ("multi_step_counting", "money_and_shopping", "rates_and_time")
#: What the scripted distiller writes per category: two categories fail alike, one differently (Fig. 5 has a shape).
CONTRAST_RULES = {
    "multi_step_counting": [
        RULE,
        {**RULE, "when": "a count is repeated over several days", "error_type": "arithmetic_slip"},
    ],
    "money_and_shopping": [
        {**RULE, "when": "a price applies to each item bought"},
        {**RULE, "when": "change is owed after paying", "error_type": "arithmetic_slip"},
    ],
    "rates_and_time": [
        {
            **RULE,
            "when": "a rate is given per hour",
            "enforce": "convert minutes to hours first",
            "error_type": "unit_or_format",
        }
    ],
}


def _tasks(cfg: GridConfig) -> list:
    """Every build and evaluation task the config names (what the scripted agents must answer)."""
    tasks = []
    for name in cfg.benchmarks:
        spec = get_benchmark(name)
        tasks += load_source(spec.build, ids=cfg.build_ids_for(name))
        ids = ",".join(g.ids_for(name) for g in cfg.cells if g.ids_for(name))
        tasks += load_source(spec.eval, ids=ids)
    return tasks


def scripted_agents(cfg: GridConfig) -> dict[str, Agent]:
    """weak: wrong everywhere except HELPED_TASK when given rules; strong: the reference everywhere, classifies
    (alternating categories), distils, reflects and curates; other: wrong everywhere. Keys are matched in order,
    so the distiller's prompts (which quote tasks) come before the tasks."""
    tasks = _tasks(cfg)
    weak, strong, other = (
        {},
        {
            **{
                f"{category}\n\n[[ ## successful_solution ## ]]": {"reasoning": "contrast", "constraints": rules}
                for category, rules in CONTRAST_RULES.items()
            },
            "successful_solution": {"reasoning": "contrast", "constraints": [RULE]},
            "[[ ## verdict ## ]]": {
                "reasoning": "reflect",
                "constraints": [
                    {**RULE, "when": "a quantity is reused in later steps", "error_type": "arithmetic_slip"}
                ],
            },
            "[[ ## contrasts ## ]]": {
                "reasoning": "shared",
                "constraints": [{**RULE, "when": "a total is split over groups", "error_type": "wrong_formula"}],
            },
            "[[ ## attempts ## ]]": {"updated": "1. write each partial total\n2. re-read what is asked"},
        },
        {},
    )
    for i, task in enumerate(tasks):
        if task.kind == "math":
            if task.id == HELPED_TASK:
                weak[f"{task.prompt}\n\n[[ ## guidance ## ]]\n1. "] = {
                    "reasoning": "as the rule says, avoid dropping a group from the sum",  # echoes every rule
                    "answer": task.answer,
                }
            weak[task.prompt] = {"reasoning": "guess", "answer": "0"}
            other[task.prompt] = {"reasoning": "guess", "answer": "1"}
            strong[task.prompt] = {"reasoning": "step by step", "answer": task.answer, "category": CATEGORIES[i % 3]}
        else:
            wrong = {"reasoning": "stub", "code": f"def {task.entry_point}(*args):\n    return None"}
            weak[task.prompt], other[task.prompt] = wrong, wrong
            strong[task.prompt] = {"reasoning": "reference", "code": task.solution, "category": "string_processing"}

    def agent(name: str, model: str, answers: dict) -> Agent:
        return Agent(
            name=name,
            lm=DummyLM(answers),
            config={
                "name": name,
                "model": model,
                "backend": "server",
                "temperature": 0.0,
                "max_tokens": 512,
                "seed": 0,
            },
        )

    return {
        "weak": agent("weak", "qwen2.5-coder-0.5b", weak),
        "strong": agent("strong", "qwen2.5-coder-1.5b", strong),
        "other": agent("other", "smollm2-135m", other),
    }


def smoke_config(run_dir: Path, **overrides) -> GridConfig:
    return load_grid_config(SMOKE_CONFIG, run_dir=run_dir, track=False, **overrides)


def make_smoke_run(run_dir: Path, **overrides):
    """The committed smoke run: grid_smoke.yaml with scripted agents (returns the result and the agents)."""
    cfg = smoke_config(run_dir, **overrides)
    agents = scripted_agents(cfg)
    return run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False), agents


def lm_calls(agents: dict[str, Agent]) -> int:
    return sum(len(agent.lm.history) for agent in agents.values())


# ----- config ------------------------------------------------------------------------------------------------
def grid(**fields) -> GridConfig:
    base = {
        "name": "t",
        "benchmarks": ["gsm8k"],
        "build_ids": "1-6",
        "cells": [
            {"target": "weak", "eval_ids": "1-4", "methods": ["memcollab", {"method": "memcollab", "k": [1, 3, 10]}]},
            {"target": "weak", "eval_ids": "5-6", "methods": ["naive"]},
            {"target": "strong", "eval_ids": "1-2", "methods": ["none", "naive"]},
        ],
    }
    return GridConfig(**{**base, **fields})


def small_grid(run_dir: Path, *cells: dict) -> GridConfig:
    """A GSM8K grid of a few tasks built from train 1-6, untracked: for runs with the scripted agents."""
    fields = {"name": "small", "benchmarks": ["gsm8k"], "build_ids": "1-6", "cells": list(cells), "run_dir": run_dir}
    return GridConfig(**fields, track=False, workers=1, bootstrap_samples=200)


def test_cells_pair_every_method_with_a_none_cell_over_the_union_of_its_tasks():
    cells = expand_cells(grid())
    by_id = {c.id: c for c in cells}
    assert [c.id for c in cells] == [
        "gsm8k.weak.none.none.s0",
        "gsm8k.weak.memcollab.weak_strong.s0",
        "gsm8k.weak.memcollab-k1.weak_strong.s0",
        "gsm8k.weak.memcollab-k10.weak_strong.s0",
        "gsm8k.weak.naive.strong.s0",
        "gsm8k.strong.none.none.s0",
        "gsm8k.strong.naive.weak.s0",
    ]
    assert by_id["gsm8k.weak.none.none.s0"].eval_ids == "1-4,5-6", "none runs on every task of the target's cells"
    assert by_id["gsm8k.weak.memcollab-k10.weak_strong.s0"].method.k == 10
    assert by_id["gsm8k.weak.memcollab-k10.weak_strong.s0"].family == "memcollab"
    assert by_id["gsm8k.strong.naive.weak.s0"].source == ("weak",), "peer of the strong target is weak"


def test_transfer_rows_are_sources_and_merge_with_the_same_cells_of_the_groups():
    cfg = grid(
        transfer={"sources": ["weak", "strong", "other", "weak+strong"], "targets": ["weak"], "eval_ids": "1-2"},
        seeds=[0, 1],
    )
    cells = {c.id: c for c in expand_cells(cfg)}
    assert cells["gsm8k.weak.self.weak.s0"].method.kind == "reflect"
    assert cells["gsm8k.weak.naive.other.s1"].source == ("other",), "an agent named other is an agent, not an alias"
    assert cells["gsm8k.weak.naive.strong.s0"].eval_ids == "5-6,1-2", "the group's naive cell, extended"
    assert cells["gsm8k.weak.memcollab.weak_strong.s1"].eval_ids == "1-4,1-2"
    assert "gsm8k.weak.none.none.s1" not in cells, "no memory has nothing to seed"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cells": [{"target": "weak", "eval_ids": "1-4", "methods": ["memcolab"]}]}, "did you mean 'memcollab'"),
        ({"build_ids": "9-1"}, "runs backwards"),
        ({"cells": [{"target": "weak", "eval_ids": "1-4", "methods": [{"method": "memcollab", "k": 0}]}]}, "k"),
        ({"methods": {"memcollab": {"kind": "memcollab"}}}, "is a preset"),
        ({"seeds": [0, 0]}, "each seed once"),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, fields, message):
    data = {
        "benchmarks": ["gsm8k"],
        "build_ids": "1-6",
        "cells": [{"target": "weak", "eval_ids": "1-2", "methods": ["none"]}],
        **fields,
    }
    path = tmp_path / "g.yaml"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as error:
        load_grid_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_grid_configs_are_told_apart_from_run_configs():
    assert is_grid_config(SMOKE_CONFIG)
    assert not is_grid_config(ROOT / "configs" / "experiments" / "gsm8k_default.yaml")
    for name in ("grid.yaml", "grid_main.yaml", "code_grid.yaml", "grid_smoke.yaml"):
        cfg = load_grid_config(ROOT / "configs" / "experiments" / name)
        assert expand_cells(cfg)


@needs_data
def test_shipped_grids_have_the_slices_the_issue_asks_for():
    cfg = load_grid_config(ROOT / "configs" / "experiments" / "grid.yaml")
    plan = plan_grid(cfg, injected={"weak", "strong", "other"})
    cells = {
        (c.target, c.method.name, c.source_label): len(plan.benchmarks["gsm8k"].cell_tasks[c.id]) for c in plan.cells
    }
    assert len(plan.benchmarks["gsm8k"].build_tasks) == 200
    for method, source in (
        ("none", "-"),
        ("naive", "strong"),
        ("memcollab", "weak+strong"),
        ("examples", "weak+strong"),
    ):
        assert cells[("weak", method, source)] == 400
    assert cells[("weak", "self", "weak")] == 200 and cells[("weak", "cheatsheet", "weak+strong")] == 100
    assert cells[("weak", "naive", "other")] == 100, "the transfer row of SmolLM2's memory (test 1-100)"
    assert cells[("weak", "placebo-code", "-")] == 200, (
        "the placebo control on the tasks of the weak target's self cell"
    )
    assert {m for t, m, _ in cells if t == "strong"} >= {"none", "self", "naive", "memcollab"}
    code = plan_grid(
        load_grid_config(ROOT / "configs" / "experiments" / "code_grid.yaml"), injected={"weak", "strong", "other"}
    )
    assert len(code.benchmarks["humaneval"].eval_tasks) == 164 and len(code.benchmarks["mbpp"].eval_tasks) == 200
    assert {b.build_source for b in code.benchmarks.values()} == {"mbpp/train"}
    assert len(code.benchmarks["mbpp"].build_tasks) == 200 and code.cfg.max_turns == 3
    contrast = [m for m in code.memories.values() if m.spec.kind == "memcollab"]
    assert len(contrast) == 1, "one MemCollab memory for both benchmarks (memcollab-verified runs on GSM8K only)"
    sizes = {(c.benchmark, c.method.name): len(code.benchmarks[c.benchmark].cell_tasks[c.id]) for c in code.cells}
    for benchmark, full in (("humaneval", 164), ("mbpp", 200)):
        assert all(sizes[(benchmark, m)] == full for m in ("none", "self", "naive", "memcollab")), "main: never shrunk"
        assert all(sizes[(benchmark, m)] == 100 for m in ("examples", "cheatsheet")), "secondary: shrunk first"
        assert sizes[(benchmark, "placebo-math")] == full, "the placebo control on the main cells' tasks"


@needs_data
@pytest.mark.parametrize(
    "full_name, main_name", [("grid.yaml", "grid_main.yaml"), ("code_grid.yaml", "code_grid_main.yaml")]
)
def test_the_main_part_of_the_grid_is_the_full_grids_first_part(full_name, main_name):
    """The main part runs first in the same run dir: its memories and cells are the full grid's, results reused."""
    full, main = (
        plan_grid(load_grid_config(ROOT / "configs" / "experiments" / name), injected={"weak", "strong", "other"})
        for name in (full_name, main_name)
    )
    assert main.cfg.run_dir == full.cfg.run_dir and main.cfg.name == full.cfg.name
    assert set(main.memories) <= set(full.memories)
    assert len([m for m in main.memories.values() if m.spec.kind != "placebo"]) == 3
    controls = {"placebo-code", "placebo-math"}
    assert {c.method.name for c in main.cells} - controls == {"none", "self", "naive", "memcollab"}
    assert len([c for c in main.cells if c.method.kind == "placebo"]) == len(main.benchmarks), "one control each"
    for name, bench in main.benchmarks.items():
        cells = [c.id for c in main.cells if c.benchmark == name]
        assert all(bench.cell_tasks[cid] == full.benchmarks[name].cell_tasks[cid] for cid in cells)


# ----- the smoke grid ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return make_smoke_run(tmp_path_factory.mktemp("grid") / "run")


@needs_data
def test_every_cell_is_compared_with_none_on_exactly_its_tasks(smoke):
    result, _ = smoke
    table = result.table.set_index("cell")
    rows = pd.read_json(result.run_dir / "tasks.jsonl", lines=True)
    for cell, line in table.iterrows():
        mine = rows[rows["cell"] == cell]
        none = rows[
            (rows["benchmark"] == line["benchmark"]) & (rows["target"] == line["target"]) & (rows["kind"] == "none")
        ]
        assert set(mine["task_id"]) <= set(none["task_id"]) and len(mine) == line["n"]
        expected = none.set_index("task_id").loc[list(mine["task_id"]), "correct"].mean()
        assert line["none_accuracy"] == pytest.approx(expected)
        assert line["diff"] == pytest.approx(line["accuracy"] - expected)
        assert line["diff_low"] <= line["diff"] <= line["diff_high"]


@needs_data
def test_rules_reach_the_solver_and_the_table_shows_what_they_did(smoke):
    result, agents = smoke
    table = result.table.set_index("cell")
    memcollab = table.loc["gsm8k.weak.memcollab.weak_strong.s0"]
    # the scripted weak agent solves one of the four tasks, and only with rules in its prompt
    assert (memcollab["n"], memcollab["correct"], memcollab["none_accuracy"]) == (4, 1, 0.0)
    assert memcollab["only_method"] == 1 and memcollab["p_value"] == 1.0 and not memcollab["helps"]
    examples = table.loc["gsm8k.weak.examples.weak_strong.s0"]
    assert examples["correct"] == 0 and examples["memories"] > 0, "worked examples are demos, not rules"
    # the one guided answer quotes its rules: 1 of 4 answers echoes the memory; nothing to echo without rules
    assert memcollab["memory_echo"] == 0.25
    assert table.loc["gsm8k.weak.none.none.s0", "memory_echo"] == examples["memory_echo"] == 0.0
    guided = [
        json.dumps(h["messages"])
        for h in agents["weak"].lm.history
        if "write each partial result" in json.dumps(h["messages"])
    ]
    assert guided, "the distilled rule is in the weak agent's prompts"
    strong_none = table.loc["gsm8k.strong.none.none.s0"]
    assert strong_none["accuracy"] == 1.0
    code = table.loc["humaneval.weak.none.none.s0"]
    assert code["turns"] == 2 and code["correct"] == 0, "a failed code task uses every turn"
    assert code["retry_unchanged"] == 1.0, "the scripted weak agent replays its stub whatever the feedback"
    assert table.loc["humaneval.weak.memcollab.weak_strong.s0", "memory_size"] >= 1


@needs_data
def test_table_md_is_the_table_as_people_read_it(smoke):
    result, _ = smoke
    lines = (result.run_dir / "table.md").read_text().splitlines()
    assert len(lines) == 2 + len(result.table), "a header, its rule, one line per cell"
    cells = {tuple(c.strip() for c in line.strip("|").split("|")[:4]): line for line in lines[2:]}
    memcollab = cells[("gsm8k", "weak", "memcollab", "weak+strong")]
    # 1 of 4 solved, 0 of 4 without memory: +25 points, 0 lost / 1 gained, p = 1, one answer in four echoes
    assert "| 1/4 | 25.0% (" in memcollab and "| +25.0 (" in memcollab and "| 0 / 1 |" in memcollab
    assert memcollab.endswith("| 25% |") and "helps" not in memcollab
    none = cells[("humaneval", "weak", "none", "-")]
    assert "| 0/3 | 0.0% (0.0-" in none and "| 2.00 | 100% |" in none, "every retry replays its stub"
    assert none.endswith("|  |"), "no memory: no echo, no difference"


@needs_data
def test_transfer_matrix_k_ablation_and_categories(smoke):
    result, _ = smoke
    transfer = result.transfer
    assert list(dict.fromkeys(transfer["source"])) == [
        "weak",
        "strong",
        "other",
        "weak+strong",
        "weak+other",
        "strong+other",
    ]
    assert set(transfer["target"]) == {"weak", "strong"} and len(transfer) == 12
    assert (transfer["n"] == 3).all(), "the transfer slice, not the cell's whole slice"
    line = transfer[(transfer["source"] == "strong") & (transfer["target"] == "weak")].iloc[0]
    assert line["method"] == "naive"
    assert (result.run_dir / "transfer.png").stat().st_size > 0
    ablation = result.ablation
    weak = ablation[(ablation["benchmark"] == "gsm8k") & (ablation["target"] == "weak")]
    assert list(weak["k"]) == [1, 3, 5]
    assert (result.run_dir / "k_ablation.png").stat().st_size > 0
    categories = result.categories
    assert set(categories["category"]) <= {*CATEGORIES, "string_processing"}
    per_cell = categories[categories["cell"] == "gsm8k.weak.memcollab.weak_strong.s0"]
    assert per_cell["n"].sum() == 4


@needs_data
def test_k_ablation_compares_every_k_on_the_tasks_they_all_answered(tmp_path):
    """k = 3 runs on 4 tasks and k = 1 on 2: the ablation puts both on those 2, each paired with none there."""
    cfg = small_grid(
        tmp_path,
        {"target": "weak", "eval_ids": "1-4", "methods": ["none", "memcollab"]},
        {"target": "weak", "eval_ids": "1-2", "methods": [{"method": "memcollab", "k": [1]}]},
    )
    result = run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)
    table = result.table.set_index("cell")
    assert table.loc["gsm8k.weak.memcollab.weak_strong.s0", "n"] == 4, "the cell itself keeps its 4 tasks"
    ablation = result.ablation.set_index("k")
    assert list(ablation.index) == [1, 3] and (ablation["n"] == 2).all()
    rows = pd.read_json(tmp_path / "tasks.jsonl", lines=True)
    first_two = {f"gsm8k/test/{i}" for i in (1, 2)}
    for k, cell in ((1, "gsm8k.weak.memcollab-k1.weak_strong.s0"), (3, "gsm8k.weak.memcollab.weak_strong.s0")):
        mine = rows[(rows["cell"] == cell) & rows["task_id"].isin(first_two)]
        assert len(mine) == 2 and ablation.loc[k, "accuracy"] == mine["correct"].mean()
    none = rows[(rows["method"] == "none") & rows["task_id"].isin(first_two)]
    assert (ablation["none_accuracy"] == none["correct"].mean()).all(), "one baseline for every k"


@needs_data
def test_cheatsheet_curation_reports_its_progress(tmp_path, capsys):
    """The curator walks the build tasks one call at a time (an hour on a small machine): it says how far it is."""
    cfg = small_grid(tmp_path, {"target": "weak", "eval_ids": "1-2", "methods": ["none", "cheatsheet"]})
    run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("curating the cheatsheet")]
    history = next(tmp_path.glob("memories/gsm8k.cheatsheet.*/cheatsheet_history.jsonl")).read_text().splitlines()
    assert lines and lines[-1].startswith(f"curating the cheatsheet (strong): {len(history)}/{len(history)} (")


@needs_data
def test_a_rerun_resumes_without_any_lm_call(tmp_path):
    first, agents = make_smoke_run(tmp_path / "run")
    calls = lm_calls(agents)
    made = "2000-01-01T00:00:00+00:00"  # as if the distillations had been made long before this rerun
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as db:
        dated = db.execute(
            "UPDATE records SET created_at = ? WHERE kind IN ('distill', 'category-distill')", (made,)
        ).rowcount
    assert dated > 0, "the smoke grid distils contrast pairs, one at a time and by category"
    cfg = smoke_config(tmp_path / "run")
    again = run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False)
    assert lm_calls(agents) == calls, "every LM result of the first invocation is read back"
    for kind in ("memcollab.weak_strong.", "category."):
        exported = next((tmp_path / "run" / "memories").glob(f"gsm8k.{kind}*/memory.jsonl")).read_text()
        entries = [json.loads(line) for line in exported.splitlines()]
        assert entries and {e["created_at"] for e in entries} == {made}, f"{kind} entries keep their first date"
    columns = ["cell", "n", "correct", "accuracy", "diff", "p_value"]
    pd.testing.assert_frame_equal(first.table[columns], again.table[columns])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["invocations"] == 2


@needs_data
def test_a_cell_whose_tasks_grew_since_it_finished_is_pending_and_solves_only_the_new_tasks(tmp_path):
    """Widening a finished cell's eval_ids (a transfer row from 50 tasks to 100) leaves it unfinished: the estimate
    counts only its new tasks, and the rerun asks the LM about those alone."""
    narrow = small_grid(tmp_path, {"target": "weak", "eval_ids": "1-3", "methods": ["none", "naive"]})
    run_grid(narrow, agents=scripted_agents(narrow), announce=lambda _: None, show_progress=False)
    wide = small_grid(tmp_path, {"target": "weak", "eval_ids": "1-5", "methods": ["none", "naive"]})
    plan = plan_grid(wide, injected={"weak", "strong", "other"})
    agents = scripted_agents(wide)
    configs = {name: agent.config for name, agent in agents.items()}
    times = estimate_grid(plan, configs, tmp_path, load_throughput())
    cells = {c.id for c in plan.cells}
    assert len(cells) == 2 and times.finished.cells == frozenset(), "both cells have tasks 4 and 5 to answer"
    assert {cell: len(ids) for cell, ids in times.finished.answered.items()} == dict.fromkeys(cells, 3)
    assert all(times.finished.tasks_left(c.id, plan.benchmarks["gsm8k"].cell_tasks[c.id]) == 2 for c in plan.cells)
    fresh = estimate_grid_seconds(plan, configs, load_throughput(), Finished(memories=times.finished.memories))
    assert times.left is not None and fresh is not None and 0 < times.left < fresh, "3 of 5 tasks are answered"

    result = run_grid(wide, agents=agents, announce=lambda _: None, show_progress=False)
    assert len(agents["weak"].lm.history) == 4, "tasks 4 and 5 of each cell, nothing answered before"
    assert set(result.table["n"]) == {5}
    assert estimate_grid(plan, configs, tmp_path, load_throughput()).finished.cells == cells, "finished again"


#: Rules of another domain (code) for the placebo control on math tasks.
OFF_DOMAIN = [
    {
        "when": f"a function receives a list argument {i}",
        "enforce": "return a new list",
        "avoid": "mutating the argument in place",
        "category": "list_processing",
        "error_type": "wrong_logic",
        "id": f"m-code{i}",
    }
    for i in range(6)
]


def placebo_grid(run_dir: Path, rules: Path) -> GridConfig:
    return GridConfig(
        name="placebo",
        benchmarks=["gsm8k"],
        build_ids="1-6",
        cells=[{"target": "weak", "eval_ids": "1-3", "methods": ["none", "code-rules"]}],
        methods={"code-rules": {"method": "placebo", "rules_from": str(rules), "k": 2}},
        run_dir=run_dir,
        track=False,
        workers=1,
        bootstrap_samples=1000,
    )


@needs_data
def test_a_placebo_shows_each_task_its_own_fixed_draw_of_off_domain_rules(tmp_path):
    rules = tmp_path / "code_memory.jsonl"
    rules.write_text("\n".join(json.dumps(r) for r in reversed(OFF_DOMAIN)) + "\n")
    cfg = placebo_grid(tmp_path / "run", rules)
    agents = scripted_agents(cfg)
    said: list[str] = []
    result = run_grid(cfg, agents=agents, announce=said.append, show_progress=False)
    (line,) = [s for s in said if s.startswith("memory gsm8k.placebo")]
    assert line.endswith(f"placebo rules read from {rules}"), "no agent, no build task: the rules' file"
    cell = result.table.set_index("cell").loc["gsm8k.weak.code-rules.none.s0"]
    assert (cell["n"], cell["memories"], cell["memory_size"]) == (3, 2, 6)
    rows = pd.read_json(tmp_path / "run" / "tasks.jsonl", lines=True)
    shown = {r.task_id: tuple(r.memory_ids.split(",")) for r in rows[rows["cell"] == cell.name].itertuples()}
    assert all(len(ids) == 2 and set(ids) <= {r["id"] for r in OFF_DOMAIN} for ids in shown.values())
    assert len(set(shown.values())) > 1, "each task draws its own rules"
    prompts = [json.dumps(h["messages"]) for h in agents["weak"].lm.history]
    assert sum("mutating the argument in place" in p for p in prompts) == 3, "the rules are in the solver's prompt"
    assert not any("list_processing" in p for p in prompts), "only the rule text, as for every memory"
    assert not any("[[ ## verdict ## ]]" in json.dumps(h["messages"]) for h in agents["strong"].lm.history)
    (audit,) = pd.read_csv(tmp_path / "run" / "memories.csv").to_dict("records")
    assert (audit["memory"], audit["kind"], audit["rules"], audit["empty"]) == (cell["memory_id"], "placebo", 6, 0)
    assert (audit["sourced"], audit["top_category"]) == (0, "list_processing"), "no source task here to restate"

    # --tables-only: the finished cells' tables again, read back, with agents whose LMs refuse every call.
    calls = len(agents["weak"].lm.history)
    summary = (tmp_path / "run" / "summary.json").read_text()
    only = run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False, tables_only=True)
    columns = ["cell", "n", "correct", "accuracy", "memories", "memory_hash"]
    pd.testing.assert_frame_equal(only.table[columns], result.table[columns])
    assert len(agents["weak"].lm.history) == calls, "not one call reached the scripted LM"
    assert (tmp_path / "run" / "summary.json").read_text() == summary, "no machine time spent on results"
    progress = tmp_path / "run" / "progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "done": ["gsm8k.weak.none.none.s0"]}))
    only = run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False, tables_only=True)
    assert list(only.table["cell"]) == ["gsm8k.weak.none.none.s0"], "only the cells finished before"
    assert json.loads(progress.read_text())["pending"] == [cell.name]
    (tmp_path / "run" / "results.sqlite").unlink()
    with pytest.raises(MemCollabError, match="would need a new LM call: a finished cell's result is not in the"):
        run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False, tables_only=True)

    # The file's order does not matter; its content does: the same rules are the same memory and the same draws.
    rules.write_text("\n".join(json.dumps(r) for r in OFF_DOMAIN) + "\n")
    again = run_grid(cfg, agents=agents, announce=lambda _: None, show_progress=False)
    rows = pd.read_json(tmp_path / "run" / "tasks.jsonl", lines=True)
    assert {r.task_id: tuple(r.memory_ids.split(",")) for r in rows[rows["cell"] == cell.name].itertuples()} == shown
    columns = ["cell", "n", "correct", "memories", "memory_id", "memory_hash"]
    pd.testing.assert_frame_equal(again.table[columns], result.table[columns])
    (memory,) = (tmp_path / "run" / "memories").glob("gsm8k.placebo*")
    rules.write_text(json.dumps({**OFF_DOMAIN[0], "avoid": "returning None"}) + "\n")
    (other,) = [m for m in plan_grid(cfg, injected=set(agents)).memories if m.startswith("gsm8k.placebo")]
    assert other != memory.name, "rewritten rules are another memory"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "memory file not found"),
        ("", "holds no memory entries"),
        ('{"when": "x"}', "rules.jsonl:1: not a memory entry (enforce: Field required)"),
        (b"\xff\xfe\x00", "rules.jsonl: not UTF-8 text"),
    ],
)
def test_a_placebo_without_readable_rules_fails_before_the_grid_starts(tmp_path, content, message):
    rules = tmp_path / "rules.jsonl"
    if isinstance(content, bytes):
        rules.write_bytes(content)
    elif content is not None:
        rules.write_text(content)
    cfg = placebo_grid(tmp_path / "run", rules)
    with pytest.raises(ConfigError) as error:
        plan_grid(cfg, injected={"weak", "strong"})
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()
    without = cfg.model_copy(update={"methods": {"code-rules": {"method": "placebo"}}})
    with pytest.raises(ConfigError, match="a placebo needs rules_from"):
        plan_grid(without, injected={"weak", "strong"})


@needs_data
def test_a_seed_rebuilds_memory_with_reseeded_agents_and_shares_the_rest(tmp_path):
    from memcollab.memory.results import ResultStore

    fields = {
        "name": "seeds",
        "benchmarks": ["gsm8k"],
        "build_ids": "1-3",
        "samples": 1,
        "track": False,
        "run_dir": tmp_path / "run",
        "cells": [{"target": "weak", "eval_ids": "1-2", "methods": ["none", "memcollab"]}],
    }

    def trajectories() -> int:
        with ResultStore(tmp_path / "run" / "results.sqlite") as store:
            return store.count("trajectory")

    cfg = GridConfig(**fields)
    run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)
    before = trajectories()
    result = run_grid(
        GridConfig(**fields, seeds=[0, 1]), agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False
    )
    # seed 1: both agents solve the 3 build tasks again under their new seed (every task has a contrast, so no
    # sample); the distilled memory is the same, so the seed-1 cell's solves are the seed-0 cell's results
    assert trajectories() - before == 6
    assert list(result.table["cell"]) == [
        "gsm8k.weak.none.none.s0",
        "gsm8k.weak.memcollab.weak_strong.s0",
        "gsm8k.weak.memcollab.weak_strong.s1",
    ]
    seeds = sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "run" / "memories").glob("*/build.json"))
    assert seeds == [0, 1]


@needs_data
def test_an_unanswered_task_is_missing_data_on_both_sides_not_a_wrong_answer(tmp_path, monkeypatch):
    from dspy.utils.exceptions import LMTimeoutError

    import memcollab.experiments.grid as grid_module

    solve = grid_module.solve_with

    def flaky(pipeline, task, agent, guidance):
        if task.id == "gsm8k/test/2" and guidance.text:  # the endpoint times out on one guided solve
            raise LMTimeoutError("no answer in 600 s")
        return solve(pipeline, task, agent, guidance)

    monkeypatch.setattr(grid_module, "solve_with", flaky)
    cfg = GridConfig(
        name="flaky",
        benchmarks=["gsm8k"],
        build_ids="1-3",
        track=False,
        run_dir=tmp_path / "run",
        cells=[{"target": "weak", "eval_ids": "1-3", "methods": ["none", "memcollab"]}],
    )
    table = run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False).table.set_index(
        "cell"
    )
    line = table.loc["gsm8k.weak.memcollab.weak_strong.s0"]
    assert (line["n"], line["lm_errors"], line["correct"]) == (2, 1, 1), "paired on the two answered tasks"
    assert table.loc["gsm8k.weak.none.none.s0", "n"] == 3
    rows = pd.read_json(tmp_path / "run" / "cells" / "gsm8k.weak.memcollab.weak_strong.s0.jsonl", lines=True)
    assert rows.set_index("task_id").loc["gsm8k/test/2", "error_type"] == "lm_error"

    monkeypatch.setattr(grid_module, "solve_with", lambda *a: (_ for _ in ()).throw(KeyError("a bug")))
    with pytest.raises(KeyError):
        run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)


@needs_data
def test_cells_run_memory_by_memory_each_baseline_before_its_targets_first_memory_cell():
    """A grid of many hours builds each memory just before its cells, so a stopped grid has comparisons to show."""
    plan = plan_grid(
        load_grid_config(ROOT / "configs" / "experiments" / "grid_main.yaml"), injected={"weak", "strong", "other"}
    )
    order = [c.id.removeprefix("gsm8k.").removesuffix(".s0") for c in evaluation_order(plan.cells, plan.cell_memory)]
    assert order == [
        "weak.none.none",
        "weak.naive.strong",  # the strong agent's reflection memory
        "strong.none.none",
        "strong.self.strong",
        "weak.memcollab.weak_strong",
        "strong.memcollab.weak_strong",
        "weak.self.weak",  # the weak agent's reflection memory
        "strong.naive.weak",
        "weak.placebo-code.none",  # the control, built from a file: its memory comes last
    ]


@needs_data
def test_a_stopped_grid_keeps_the_tables_of_its_finished_cells(tmp_path, monkeypatch, smoke):
    import memcollab.experiments.grid as grid_module

    solve = grid_module.solve_with

    def interrupted(pipeline, task, agent, guidance):
        if agent.name == "strong" and task.id.startswith("gsm8k/test/") and guidance.text:
            raise KeyboardInterrupt  # Ctrl-C (or the session's end) as the strong target's first memory cell starts
        return solve(pipeline, task, agent, guidance)

    monkeypatch.setattr(grid_module, "solve_with", interrupted)
    cfg = smoke_config(tmp_path / "run")
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, agents=scripted_agents(cfg), announce=said.append, show_progress=False)
    plan = plan_grid(cfg, injected={"weak", "strong", "other"})
    order = [c.id for c in evaluation_order(plan.cells, plan.cell_memory) if c.benchmark == "gsm8k"]
    finished = order[: next(i for i, c in enumerate(order) if c.startswith("gsm8k.strong.") and ".none." not in c)]
    assert len(finished) > 2, "the weak target's baseline and memory cells, and the strong target's baseline"
    full = smoke[0].table.set_index("cell")
    table = pd.read_csv(tmp_path / "run" / "table.csv").set_index("cell")
    assert set(table.index) == set(finished), "the finished cells, and only them"
    columns = ["n", "correct", "accuracy", "none_accuracy", "diff", "p_value"]
    pd.testing.assert_frame_equal(table[columns], full.loc[table.index, columns], check_dtype=False)
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["cells_done"] == len(finished)
    told = [s for s in said if s.startswith("grid: ")]
    assert told[0].startswith(f"grid: 1 of {len(plan.cells)} cells finished; about ") and told[0].endswith(
        " h left (estimate)"
    )
    assert told[-1].startswith(f"grid: {len(finished)} of {len(plan.cells)} cells finished"), "one line per cell"
    assert set(progress["pending"]) == set(full.index) - set(finished)
    stopped = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stopped["invocations"] == 1 and stopped["wall_s"] > 0, "the stopped invocation's time is kept"
    agents = {name: agent.config for name, agent in scripted_agents(cfg).items()}
    times = estimate_grid(plan, agents, tmp_path / "run", load_throughput())
    done = times.finished
    assert done.cells == set(finished) and done.memories, "the finished cells, and the memories they read"
    assert times.whole == estimate_grid_seconds(plan, agents, load_throughput()), "the whole grid, whatever is finished"
    assert times.whole is not None and times.left is not None, "every scripted agent has a rate"
    assert 0 < times.left < times.whole, "the time left: what is not finished"

    interrupted_cell = next(c for c in order if c not in finished)
    assert f"eval.{interrupted_cell}_s" in stopped["timings_s"], "the interrupted cell's time so far is kept"
    first, memory = finished[0], sorted(done.memories)[0]
    took = {f"eval.{first}_s": 1000.0, f"build.{memory}_s": 2000.0}  # as if the first invocation took that long
    stopped["timings_s"].update(took)
    (tmp_path / "run" / "summary.json").write_text(json.dumps(stopped))

    monkeypatch.setattr(grid_module, "solve_with", solve)  # the rerun resumes and finishes
    again = run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)
    assert again.table.set_index("cell").loc[first, "wall_s"] == 1000.0, "a read-back cell reports what it took"
    built = json.loads((tmp_path / "run" / "memories" / memory / "build.json").read_text())
    assert built["seconds"] == 2000.0, "a read-back memory reports what its build took, and no more"
    pd.testing.assert_frame_equal(
        again.table.set_index("cell")[columns], full[columns], check_dtype=False, check_like=True
    )
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["invocations"] == 2 and resumed["wall_s"] > stopped["wall_s"]
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["pending"] == []
    assert estimate_grid(plan, agents, tmp_path / "run", load_throughput()).left == 0, "nothing left"


@needs_data
def test_a_bigger_grid_stopped_early_keeps_the_cells_a_smaller_one_finished(tmp_path, monkeypatch):
    """The main grid finishes; the full grid on the same run dir (whose order puts new cells before them) is
    stopped after its first new cell: its tables and progress.json still cover what the main grid finished."""
    import memcollab.experiments.grid as grid_module

    solve = grid_module.solve_with

    weak = {"target": "weak", "eval_ids": "1-3", "methods": ["none", "naive"]}
    strong = {"target": "strong", "eval_ids": "1-3", "methods": ["self"]}
    main, full = small_grid(tmp_path, weak), small_grid(tmp_path, strong, weak)
    first = run_grid(main, agents=scripted_agents(main), announce=lambda _: None, show_progress=False)
    main_cells = set(first.table["cell"])
    plan = plan_grid(full, injected={"weak", "strong", "other"})
    assert run_order(plan)[-1].id in main_cells, "in the full grid's own order a main cell comes after a new one"

    def stop_at_strong_memory(pipeline, task, agent, guidance):
        if agent.name == "strong" and task.id.startswith("gsm8k/test/") and guidance.text:
            raise KeyboardInterrupt  # the session ends after the new baseline, as the new memory cell starts
        return solve(pipeline, task, agent, guidance)

    monkeypatch.setattr(grid_module, "solve_with", stop_at_strong_memory)
    with pytest.raises(KeyboardInterrupt):
        run_grid(full, agents=scripted_agents(full), announce=lambda _: None, show_progress=False)
    finished = main_cells | {"gsm8k.strong.none.none.s0"}
    assert set(pd.read_csv(tmp_path / "table.csv")["cell"]) == finished, "the main cells' tables, read back"
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert set(progress["done"]) == finished and progress["pending"] == ["gsm8k.strong.self.strong.s0"]


@needs_data
def test_a_throughput_file_edited_while_the_grid_runs_does_not_stop_it(tmp_path, monkeypatch):
    """The grid reads configs/throughput.yaml once: a file broken (or of a newer schema) after the first cell leaves
    the running grid's estimates as they were; a file broken before the start is one line, before any write."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    monkeypatch.setenv("MEMCOLLAB_CONFIG_DIR", str(configs))
    said: list[str] = []

    def announce(line: str) -> None:
        said.append(line)
        if line.startswith("grid: "):  # after every cell, before the next estimate
            (configs / "throughput.yaml").write_text("a_key_no_version_knows: 1\n")

    cfg = small_grid(tmp_path / "run", {"target": "weak", "eval_ids": "1-2", "methods": ["none", "naive"]})
    result = run_grid(cfg, agents=scripted_agents(cfg), announce=announce, show_progress=False)
    assert len(result.table) == 2, "both cells ran"
    told = [line for line in said if line.startswith("grid: ")]
    assert len(told) == 2 and all(line.endswith(" h left (estimate)") for line in told), "the estimates go on"
    again = small_grid(tmp_path / "again", {"target": "weak", "eval_ids": "1-2", "methods": ["none"]})
    with pytest.raises(ConfigError, match="^invalid throughput file .*throughput.yaml: "):
        run_grid(again, agents=scripted_agents(again), announce=lambda _: None, show_progress=False)
    assert not (tmp_path / "again").exists(), "refused before the run directory is made"


@needs_data
def test_a_code_grid_on_a_machine_with_no_sandbox_boundary_stops_before_anything(tmp_path, monkeypatch):
    """No bubblewrap and no usable uid (simulated): a grid with a code benchmark refuses in one line before its run
    directory exists, instead of grading model code behind the in-process guard alone; a math grid is not asked."""
    from memcollab.experiments.preflight import check_sandbox
    from memcollab.grading import sandbox

    monkeypatch.setattr(sandbox, "_modes", {})
    monkeypatch.setattr(sandbox, "_refused", {})
    monkeypatch.setattr(sandbox, "_unavailable", lambda mode: None if mode == "guard" else f"no {mode} here")
    monkeypatch.delenv("MEMCOLLAB_SANDBOX", raising=False)
    cfg = smoke_config(tmp_path / "run")
    assert "humaneval" in cfg.benchmarks
    with pytest.raises(sandbox.SandboxError, match="^no sandbox boundary .*MEMCOLLAB_SANDBOX=guard"):
        run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"
    assert check_sandbox(["gsm8k"]) == "-", "no model code runs on a math benchmark"
    monkeypatch.setenv("MEMCOLLAB_SANDBOX", "guard")  # asked for by name; the parent MLflow run records it
    assert check_sandbox(["gsm8k", "humaneval"]) == "guard"


@needs_data
def test_estimate_counts_the_grids_calls(tmp_path):
    small = plan_grid(smoke_config(tmp_path / "a"), injected={"weak", "strong", "other"})
    big_cfg = smoke_config(tmp_path / "b")
    big_cfg.cells[0].eval_ids = {"gsm8k": "1-40", "humaneval": "0-2"}
    big = plan_grid(big_cfg, injected={"weak", "strong", "other"})
    agents = {name: agent.config for name, agent in scripted_agents(big_cfg).items()}
    figures = load_throughput()
    low, high = estimate_grid_seconds(small, agents, figures), estimate_grid_seconds(big, agents, figures)
    assert low is not None and 0 < low < high
    one_turn = estimate_grid_seconds(big, agents, figures, turns={"humaneval": 1.0})
    assert one_turn is not None and one_turn < high, "a code task that took one turn costs less than max_turns"
    assert estimate_grid_seconds(big, agents, figures, turns={"gsm8k": 3.0}) == high, "a math task is one call whatever"
    pd.DataFrame(
        {"benchmark": ["humaneval", "humaneval", "gsm8k"], "n": [3, 1, 5], "turns": [1.0, 3.0, 1.0], "k": [3, 3, 3]}
    ).to_csv(tmp_path / "table.csv", index=False)
    assert measured_turns(tmp_path) == {"humaneval": 1.5, "gsm8k": 1.0}, "weighted by each cell's tasks"
    assert measured_turns(tmp_path / "nowhere") == {}
    agents["weak"] = {**agents["weak"], "backend": "litellm", "model": "openai/x"}
    assert estimate_grid_seconds(small, agents, figures) is None, "a remote agent has no measured rate"


@needs_data
def test_estimate_charges_each_cell_for_the_guidance_it_shows(tmp_path):
    """Worked examples are long: `examples` took three times an estimate that counted its calls alone."""
    methods = ["none", "memcollab", {"method": "memcollab", "k": [10]}, "examples", "cheatsheet"]
    plan = plan_grid(
        small_grid(tmp_path, {"target": "weak", "eval_ids": "1-4", "methods": methods}), {"weak", "strong"}
    )
    tokens = {
        cell.method.name: guidance_tokens(replace(plan, cells=[cell]), PER_ITEM).get("weak", 0.0) for cell in plan.cells
    }
    assert tokens == {
        "none": 0.0,
        "memcollab": 4 * 3 * 70,
        "memcollab-k10": 4 * 10 * 70,
        "examples": 4 * 3 * 400,
        "cheatsheet": 4 * 8 * 50,
    }
    finished = Finished(cells=frozenset(c.id for c in plan.cells if c.method.name == "examples"))
    assert sum(guidance_tokens(plan, PER_ITEM, finished).values()) == sum(tokens.values()) - tokens["examples"]
    agents = {name: agent.config for name, agent in scripted_agents(plan.cfg).items()}
    figures = load_throughput()
    assert figures is not None
    bare = estimate_grid_seconds(plan, agents, figures.model_copy(update={"guidance_tokens_per_item": {}}))
    full = estimate_grid_seconds(plan, agents, figures.model_copy(update={"guidance_tokens_per_item": PER_ITEM}))
    model, backend = agents["weak"]["model"], agents["weak"]["backend"]
    assert full - bare == pytest.approx(figures.prompt_seconds(model, backend, sum(tokens.values())))
    assert full > bare


PER_ITEM = {"rule": 70.0, "example": 400.0, "cheatsheet_entry": 50.0}


@needs_data
def test_cli_dry_run_validates_and_lists_cells_without_running(tmp_path):
    import typer
    from typer.testing import CliRunner

    from memcollab.cli.grid import register

    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "agents:\n"
        + "".join(f"  - {{name: {n}, backend: litellm, model: openai/{n}}}\n" for n in ("weak", "strong", "other"))
    )
    config = tmp_path / "grid.yaml"
    config.write_text(SMOKE_CONFIG.read_text() + f"agents_file: {agents}\n")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    result = CliRunner().invoke(app, ["grid", str(config), "--dry-run", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "gsm8k.weak.memcollab.weak_strong.s0: 4 tasks" in result.output
    assert "28 cells, 12 memories; in " in result.output
    assert "0 of 28 cells finished and 0 of 12 memories built" in result.output
    assert "unknown" in result.output
    assert "best of the rest on gsm8k (self, naive): compared on 2 tasks, held out on 2; chosen once" in result.output
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE_CONFIG.read_text().replace("memcollab-nogate", "memcollab-nogat"))
    failed = CliRunner().invoke(app, ["grid", str(bad), "--dry-run"])
    assert isinstance(failed.exception, ConfigError) and "did you mean 'memcollab-nogate'" in str(failed.exception)


# ----- the committed smoke run and the notebook ---------------------------------------------------------------
@needs_data
def test_committed_smoke_run_is_what_the_code_makes_now(smoke):
    result, _ = smoke
    committed = pd.read_csv(SMOKE_DIR / "table.csv")
    columns = ["cell", "n", "correct", "accuracy", "none_accuracy", "diff", "memories"]
    pd.testing.assert_frame_equal(committed[columns], result.table[columns], check_dtype=False)
    assert "data-flow smoke run" in (SMOKE_DIR / "README.md").read_text()


def test_notebook_runs_on_the_committed_smoke_run(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    run_dir = tmp_path / "grid-smoke"
    shutil.copytree(SMOKE_DIR, run_dir)
    unbuilt = next(run_dir.glob("memories/gsm8k.memcollab.strong_other.*"))
    shutil.rmtree(unbuilt)  # as in a grid stopped before it built every memory that grid.json names
    notebook = nbformat.read(ROOT / "notebooks" / "grid.ipynb", as_version=4)
    os.environ["MEMCOLLAB_GRID_DIR"] = str(run_dir)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        os.environ.pop("MEMCOLLAB_GRID_DIR")
    outputs = "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "DATA-FLOW SMOKE RUN" in outputs
    assert "gsm8k.weak.memcollab.weak_strong.s0" in outputs
    assert "lost_when_echoing" in outputs and "no placebo cell in this grid" in outputs, "section 7 ran"
    assert "other_method" in outputs and "(chance " in outputs, "section 8 ran"
    assert "top_error_type" in outputs and "mean_chars" in outputs, "section 9 ran"
    assert "held_out" in outputs and "chosen_on" in outputs, "section 10 ran"
    for figure in (
        "transfer_heatmap.png",
        "k_ablation_plot.png",
        "code_turns.png",
        "error_types.png",
        "category_dendrogram.png",
    ):
        assert (run_dir / "notebook" / figure).stat().st_size > 0, figure


@needs_data
def test_the_best_of_the_rest_is_chosen_on_its_slice_then_reported_held_out(tmp_path):
    """naive helps the weak agent on task 1, examples nowhere: naive wins though listed second as soon as both have
    run (before the transfer's cell), then runs on 1-5, and best_of.csv compares it with no memory on tasks 3-5,
    which the choice never saw."""
    cells = {"target": "weak", "eval_ids": "1-3", "methods": ["none", "examples", "naive"]}
    cfg = small_grid(tmp_path, cells)
    cfg.best_of = BestOf(target="weak", methods=["examples", "naive"], chosen_on="1-2", eval_ids="1-5")
    cfg.transfer = TransferSpec(sources=["other"], targets=["weak"], eval_ids="1-2")  # a naive cell from other too
    said: list[str] = []
    result = run_grid(cfg, agents=scripted_agents(cfg), announce=said.append, show_progress=False)
    assert json.loads((tmp_path / "best_of.json").read_text())["gsm8k"]["method"] == "naive"
    chose = next(i for i, line in enumerate(said) if line.startswith("best of the rest on gsm8k: naive"))
    finished = [line for line in said[:chose] if line.startswith("grid: ")]
    assert finished[-1].startswith("grid: 3 of 4 cells finished"), "chosen at once: the transfer cell runs after"
    tasks = pd.read_json(tmp_path / "tasks.jsonl", lines=True)
    naive = tasks[tasks["cell"] == "gsm8k.weak.naive.strong.s0"]
    assert sorted(naive["task_id"]) == [f"gsm8k/test/{i}" for i in range(1, 6)], "the winner ran on eval_ids"
    best = pd.read_csv(tmp_path / "best_of.csv")
    assert list(zip(best["method"], best["part"], best["n"], strict=True)) == [
        ("examples", "chosen_on", 2),
        ("naive", "chosen_on", 2),
        ("naive", "held_out", 3),
    ]
    assert set(best.loc[best["method"] == "naive", "cell"]) == {"gsm8k.weak.naive.strong.s0"}, "not naive from other"
    held = best[best["part"] == "held_out"].iloc[0]
    base = tasks[(tasks["cell"] == "gsm8k.weak.none.none.s0") & tasks["task_id"].isin(naive["task_id"])]
    assert set(base["task_id"]) == set(naive["task_id"]), "no memory ran on the winner's tasks too"
    held_ids = [f"gsm8k/test/{i}" for i in range(3, 6)]
    assert held["accuracy"] == naive[naive["task_id"].isin(held_ids)]["correct"].mean()
    assert result.table.set_index("cell").loc["gsm8k.weak.naive.strong.s0", "n"] == 5
    assert not result.chose, "the pass that ran the winner chose nothing new"
    again = run_grid(cfg, agents=scripted_agents(cfg), announce=lambda _: None, show_progress=False)
    assert not again.chose and json.loads((tmp_path / "best_of.json").read_text())["gsm8k"]["method"] == "naive"


@needs_data
@pytest.mark.parametrize(
    ("best_of", "message"),
    [
        ({"methods": ["examples", "self"], "chosen_on": "1-2", "eval_ids": "1-5"}, "'self' is not a cell of weak"),
        ({"methods": ["examples", "naive"], "chosen_on": "1-4", "eval_ids": "1-5"}, "does not run on every task"),
        ({"methods": ["examples", "naive"], "chosen_on": "1-2", "eval_ids": "1-2"}, "holds no task outside"),
    ],
)
def test_a_best_of_that_cannot_be_chosen_fairly_is_refused_before_anything_runs(tmp_path, best_of, message):
    cfg = small_grid(tmp_path / "run", {"target": "weak", "eval_ids": "1-3", "methods": ["none", "examples", "naive"]})
    cfg.best_of = BestOf(target="weak", **best_of)
    with pytest.raises(ConfigError, match=message):
        plan_grid(cfg, injected={"weak", "strong"})
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":  # regenerate the committed smoke run
    target = Path(sys.argv[1] if len(sys.argv) > 1 else SMOKE_DIR)
    if target.exists():
        shutil.rmtree(target)
    result, _ = make_smoke_run(target)
    for scratch in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm", "dspy_cache"):
        path = target / scratch
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for store in target.glob("memories/*/memory.sqlite*"):
        store.unlink()
    (target / "README.md").write_text(
        "# grid-smoke: a data-flow smoke run, NOT results\n\n"
        "Made by `python tests/test_grid.py results/grid-smoke` from `configs/experiments/grid_smoke.yaml` with\n"
        "scripted DSPy DummyLM agents (weak solves one task, and only when its prompt carries rules; strong\n"
        "answers every reference). It checks that the grid's tables, figures and the notebook `notebooks/grid.ipynb`\n"
        "work end to end; its numbers say nothing about any model. This is a data-flow smoke run.\n"
    )
    print(result.table[["cell", "n", "accuracy", "diff"]].to_string())
