"""The grid's tables from its per-task rows: every cell against `none` on the same tasks, paired.

A cell's accuracy carries a Wilson 95% interval; its difference to `none` a paired bootstrap 95% interval
and McNemar's exact p (`experiments.stats.compare`); `helps` / `hurts` only where that interval excludes 0.
A task the LM never answered (`lm_error`: its endpoint failed after retries) is missing data, not a wrong
answer: it leaves the comparison on both sides and is counted in `lm_errors`; a rerun asks for it again.
Per-category differences use the classifier's category of each task, the same for every cell. Pure
functions of the rows (a pandas DataFrame), so the notebook recomputes exactly what the run wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from memcollab.experiments.grid_config import Cell
from memcollab.experiments.metrics import wilson_interval
from memcollab.experiments.stats import compare

#: Columns of a per-task row (one task solved in one cell).
ROW_COLUMNS = (
    "cell",
    "benchmark",
    "target",
    "method",
    "family",
    "kind",
    "source",
    "seed",
    "k",
    "gate",
    "task_id",
    "category",
    "correct",
    "first_turn_correct",
    "turns",
    "retries_unchanged",
    "tokens",
    "latency_s",
    "format_error",
    "error_type",
    "lm_error",
    "memories",
    "memory_ids",
    "guidance_key",
    "memory_echo",
)

#: The per-grid tables, each written as `<name>.csv` after every cell and logged to the parent MLflow run.
TABLES = ("table", "categories", "k_ablation", "transfer", "echo", "placebo", "overlap", "memories", "best_of")

#: What a paired comparison with the no-memory cell adds to a summary line (`paired`).
PAIRED_COLUMNS = ("n", "accuracy", "none_accuracy", "diff", "diff_low", "diff_high", "p_value")


def none_rows(rows: pd.DataFrame, benchmark: str, target: str) -> pd.DataFrame:
    """The no-memory rows of one target, indexed by task id."""
    mask = (rows["benchmark"] == benchmark) & (rows["target"] == target) & (rows["kind"] == "none")
    return rows[mask].drop_duplicates("task_id").set_index("task_id")


def paired(rows: pd.DataFrame, baseline: pd.DataFrame, samples: int, seed: int = 0) -> dict[str, Any]:
    """Accuracy, interval and the paired comparison with `baseline` (the none rows, by task id) on `rows`' tasks,
    both without the tasks either side has no answer for (`lm_error`)."""
    missing = set(rows["task_id"]) - set(baseline.index)
    if missing:
        raise ValueError(f"{len(missing)} task(s) have no no-memory result to pair with (e.g. {sorted(missing)[0]})")
    unanswered = set(rows.loc[rows["lm_error"].astype(bool), "task_id"]) | set(
        baseline.index[baseline["lm_error"].astype(bool)]
    )
    lost = int(rows["task_id"].isin(unanswered).sum())
    rows = rows[~rows["task_id"].isin(unanswered)]
    n, correct = len(rows), int(rows["correct"].sum())
    low, high = wilson_interval(correct, n)
    out: dict[str, Any] = {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "acc_low": low,
        "acc_high": high,
        "lm_errors": lost,
    }
    base = baseline.loc[list(rows["task_id"]), "correct"].astype(bool).tolist()
    result = compare(base, rows["correct"].astype(bool).tolist(), samples=samples, seed=seed)
    out.update(
        {
            "none_accuracy": result.accuracy_a,
            "diff": result.difference,
            "diff_low": result.ci_low,
            "diff_high": result.ci_high,
            "p_value": result.p_value,
            "only_none": result.only_a,
            "only_method": result.only_b,
            "helps": result.ci_low > 0,
            "hurts": result.ci_high < 0,
        }
    )
    return out


def _effort(rows: pd.DataFrame) -> dict[str, float]:
    solved = rows[rows["correct"].astype(bool)]
    retries = int((rows["turns"] - 1).clip(lower=0).sum()) if len(rows) else 0
    return {
        "turns": float(rows["turns"].mean()) if len(rows) else 0.0,
        "turns_to_success": float(solved["turns"].mean()) if len(solved) else float("nan"),
        "first_turn_accuracy": float(rows["first_turn_correct"].mean()) if len(rows) else 0.0,
        # of the retries (turns after the first), the share that replay the turn before unchanged
        "retry_unchanged": float(rows["retries_unchanged"].sum() / retries) if retries else float("nan"),
        "tokens": float(rows["tokens"].mean()) if len(rows) else 0.0,
        "latency_s": float(rows["latency_s"].mean()) if len(rows) else 0.0,
        "format_errors": int(rows["format_error"].sum()),
        "memories": float(rows["memories"].mean()) if len(rows) else 0.0,
        "memory_echo": float(rows["memory_echo"].mean()) if len(rows) else 0.0,  # grading.echo
    }


def cell_table(
    rows: pd.DataFrame, cells: list[Cell], samples: int = 10_000, extra: dict[str, dict[str, Any]] | None = None
) -> pd.DataFrame:
    """One line per cell: accuracy (95% CI), difference to none (paired bootstrap 95% CI, McNemar p), effort.

    `extra`: more columns per cell id (wall time of this invocation, memory size and hash).
    """
    lines = []
    for cell in cells:
        mine = rows[rows["cell"] == cell.id]
        baseline = none_rows(rows, cell.benchmark, cell.target)
        line = {
            **cell.labels(),
            "k": cell.method.k if cell.method.kind != "none" else None,  # k means nothing without memory
            **paired(mine, baseline, samples),
            **_effort(mine),
            **(extra or {}).get(cell.id, {}),
        }
        lines.append(line)
    table = pd.DataFrame(lines)
    table["k"] = table["k"].astype("Int64")  # none has no k; the rest stay integers
    return table


#: The columns that name a cell in the per-cell tables other than `table.csv` (`_identity`).
IDENTITY_COLUMNS = ("cell", "benchmark", "target", "method", "source", "seed")


def _identity(cell: Cell) -> dict[str, Any]:
    """A cell's `IDENTITY_COLUMNS`, taken from `Cell.labels` (the one place that names a cell in a table)."""
    labels = cell.labels()
    return {column: labels[column] for column in IDENTITY_COLUMNS}


def category_table(rows: pd.DataFrame, cells: list[Cell], samples: int = 2_000) -> pd.DataFrame:
    """Per cell and category (the classifier's, the same for every cell): accuracy and difference to none."""
    lines = []
    for cell in cells:
        if cell.method.kind == "none":
            continue
        mine = rows[rows["cell"] == cell.id]
        baseline = none_rows(rows, cell.benchmark, cell.target)
        for category, group in mine.groupby("category", sort=True):
            stats = paired(group, baseline, samples)
            lines.append(
                {
                    **_identity(cell),
                    "category": category or "-",
                    "n": stats["n"],
                    "accuracy": stats["accuracy"],
                    "none_accuracy": stats["none_accuracy"],
                    "diff": stats["diff"],
                    "diff_low": stats["diff_low"],
                    "diff_high": stats["diff_high"],
                    "p_value": stats["p_value"],
                }
            )
    return pd.DataFrame(
        lines,
        columns=[*IDENTITY_COLUMNS, "category", *PAIRED_COLUMNS],
    )


#: Columns of `echo_table`.
ECHO_COLUMNS = (
    *IDENTITY_COLUMNS,
    "n",
    "echo",
    "solved_echoing",
    "lost_echoing",
    "solved_plain",
    "lost_plain",
)


def echo_table(rows: pd.DataFrame, cells: list[Cell]) -> pd.DataFrame:
    """Per memory cell: the share of answers that echo the memory (`grading.echo`) and, among the tasks the
    target solves without memory, how many it loses when its answer echoes the memory and when it does not.

    An association, not a cause: a task may both confuse the solver and draw it to the rules. The placebo
    cells are the controlled comparison."""
    lines = []
    for cell in cells:
        if cell.method.kind == "none":
            continue
        mine = rows[(rows["cell"] == cell.id) & ~rows["lm_error"].astype(bool)].drop_duplicates("task_id")
        baseline = none_rows(rows, cell.benchmark, cell.target)
        solved = mine[mine["task_id"].map(baseline["correct"]).fillna(False).astype(bool)]
        echoing = solved["memory_echo"].astype(bool)
        lines.append(
            {
                **_identity(cell),
                "n": len(mine),
                "echo": float(mine["memory_echo"].mean()) if len(mine) else 0.0,
                "solved_echoing": int(echoing.sum()),
                "lost_echoing": int((~solved.loc[echoing, "correct"].astype(bool)).sum()),
                "solved_plain": int((~echoing).sum()),
                "lost_plain": int((~solved.loc[~echoing, "correct"].astype(bool)).sum()),
            }
        )
    return pd.DataFrame(lines, columns=list(ECHO_COLUMNS))


#: Columns of `placebo_table`.
PLACEBO_COLUMNS = (
    *IDENTITY_COLUMNS,
    "placebo",
    "n",
    "accuracy",
    "placebo_accuracy",
    "diff",
    "diff_low",
    "diff_high",
    "p_value",
    "only_placebo",
    "only_method",
)


def placebo_table(rows: pd.DataFrame, cells: list[Cell], samples: int = 10_000) -> pd.DataFrame:
    """Each memory cell against its target's placebo cell (same benchmark and seed) on the tasks both ran, paired:
    what the memory's content adds or takes away beyond a rule block of the same size in the same place."""
    placebos = {(c.benchmark, c.target, c.seed): c for c in cells if c.method.kind == "placebo"}
    lines = []
    for cell in cells:
        placebo = placebos.get((cell.benchmark, cell.target, cell.seed))
        if placebo is None or cell.method.kind in ("none", "placebo"):
            continue
        control = rows[rows["cell"] == placebo.id].drop_duplicates("task_id").set_index("task_id")
        mine = rows[(rows["cell"] == cell.id) & rows["task_id"].isin(control.index)]
        if mine.empty:
            continue
        stats = paired(mine, control, samples)
        lines.append(
            {
                **_identity(cell),
                "placebo": placebo.id,
                **{k: stats[k] for k in ("n", "accuracy", "diff", "diff_low", "diff_high", "p_value", "only_method")},
                "placebo_accuracy": stats["none_accuracy"],
                "only_placebo": stats["only_none"],
            }
        )
    return pd.DataFrame(lines, columns=list(PLACEBO_COLUMNS))


#: Columns of `overlap_table`.
OVERLAP_COLUMNS = (
    "benchmark",
    "target",
    "seed",
    "cell",
    "method",
    "other_cell",
    "other_method",
    "n",
    "agree",
    "solved_none",
    "lost",
    "other_lost",
    "lost_both",
    "lost_both_if_independent",
)


def overlap_table(rows: pd.DataFrame, cells: list[Cell]) -> pd.DataFrame:
    """Each pair of memory cells of one target (same benchmark and seed) on the tasks both answered: how often they
    agree, and whether they lose the same tasks the target solves without memory.

    `lost_both_if_independent` is what two cells losing that many tasks each would share by chance
    (lost x other_lost / solved_none); far more shared losses than that say the tasks are lost to something the
    two memories have in common (a rule block at all, say) rather than to what each one says."""
    answered = rows[~rows["lm_error"].astype(bool)].drop_duplicates(["cell", "task_id"])
    memory_cells = [c for c in cells if c.method.kind != "none"]
    lines = []
    for i, cell in enumerate(memory_cells):
        mine = answered[answered["cell"] == cell.id].set_index("task_id")["correct"].astype(bool)
        baseline = none_rows(answered, cell.benchmark, cell.target)["correct"].astype(bool)
        for other in memory_cells[i + 1 :]:
            if (other.benchmark, other.target, other.seed) != (cell.benchmark, cell.target, cell.seed):
                continue
            theirs = answered[answered["cell"] == other.id].set_index("task_id")["correct"].astype(bool)
            both = mine.index.intersection(theirs.index)
            if both.empty:
                continue
            solved = both.intersection(baseline.index[baseline])
            lost, other_lost = ~mine[solved], ~theirs[solved]
            lines.append(
                {
                    "benchmark": cell.benchmark,
                    "target": cell.target,
                    "seed": cell.seed,
                    "cell": cell.id,
                    "method": cell.method.name,
                    "other_cell": other.id,
                    "other_method": other.method.name,
                    "n": len(both),
                    "agree": int((mine[both] == theirs[both]).sum()),
                    "solved_none": len(solved),
                    "lost": int(lost.sum()),
                    "other_lost": int(other_lost.sum()),
                    "lost_both": int((lost & other_lost).sum()),
                    "lost_both_if_independent": (
                        round(int(lost.sum()) * int(other_lost.sum()) / len(solved), 1) if len(solved) else 0.0
                    ),
                }
            )
    return pd.DataFrame(lines, columns=list(OVERLAP_COLUMNS))


#: What `k_ablation` reports for each k.
ABLATION_STATS = ("n", "accuracy", "acc_low", "acc_high", "none_accuracy", "diff", "diff_low", "diff_high", "p_value")


def k_ablation(rows: pd.DataFrame, table: pd.DataFrame, samples: int = 10_000) -> pd.DataFrame:
    """The cells of every method family run with more than one k (same target, source, seed), by k, each on the
    tasks every k of its family answered and paired with none on them: a main cell's k = 3 on 400 tasks beside
    ablation cells on 100 is compared on those 100, not on a different slice with a different baseline."""
    memory = table[table["kind"] != "none"]
    keys = ["benchmark", "target", "family", "source", "seed"]
    sizes = memory.groupby(keys)["k"].transform("nunique")
    lines = []
    for key, family in memory[sizes > 1].groupby(keys, sort=True):
        answered = [set(rows.loc[rows["cell"] == cell, "task_id"]) for cell in family["cell"]]
        common = set.intersection(*answered)
        baseline = none_rows(rows, key[0], key[1])
        for cell, k in zip(family["cell"], family["k"]):
            mine = rows[(rows["cell"] == cell) & rows["task_id"].isin(common)]
            stats = paired(mine, baseline, samples)
            lines.append({**dict(zip(keys, key)), "k": k, **{c: stats[c] for c in ABLATION_STATS}})
    columns = [*keys, "k", *ABLATION_STATS]
    return pd.DataFrame(lines, columns=columns).sort_values([*keys, "k"]).reset_index(drop=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_k_ablation(ablation: pd.DataFrame, path: Path) -> Path | None:
    """Accuracy against k, one line per (benchmark, target, family, source), with 95% intervals, and its
    no-memory accuracy on the same tasks as a dashed line of the same colour; None if empty."""
    if ablation.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for label, group in ablation.groupby(["benchmark", "target", "family", "source"]):
            group = group.groupby("k", as_index=False).mean(numeric_only=True)  # seeds averaged
            line = ax.errorbar(
                group["k"],
                group["accuracy"],
                yerr=[group["accuracy"] - group["acc_low"], group["acc_high"] - group["accuracy"]],
                marker="o",
                capsize=3,
                label=" / ".join(str(part) for part in label),
            )
            if "none_accuracy" in group:  # k_ablation.csv files from before it kept the baseline lack it
                color = line.lines[0].get_color()
                baseline = f"{label[0]} / {label[1]} / no memory"
                ax.axhline(group["none_accuracy"].mean(), color=color, linestyle="--", linewidth=1, label=baseline)
        ax.set_xlabel("memories per task (k)")
        ax.set_ylabel("accuracy")
        ax.set_xticks(sorted(ablation["k"].unique()))
        ax.legend(fontsize=7)
        ax.set_title("k ablation")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


#: The columns of the grid table as people read it (`display_table`: the CLI, `table.md`, the notebook).
DISPLAY_COLUMNS = (
    "benchmark",
    "target",
    "method",
    "source",
    "correct",
    "accuracy (95% CI)",
    "vs no memory (paired 95% CI)",
    "McNemar p",
    "lost / gained",
    "turns",
    "retries unchanged",
    "tokens/task",
    "echo",
)
#: The `DISPLAY_COLUMNS` that hold numbers (aligned right wherever the table is shown).
NUMERIC_DISPLAY_COLUMNS = frozenset(
    {"correct", "McNemar p", "lost / gained", "turns", "retries unchanged", "tokens/task", "echo"}
)


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _display_line(line: dict[str, Any]) -> dict[str, str]:
    baseline = line["kind"] == "none"
    mark = " helps" if line["helps"] else (" hurts" if line["hurts"] else "")
    retries = line["retry_unchanged"]
    return {
        "benchmark": line["benchmark"],
        "target": line["target"],
        "method": line["method"],
        "source": line["source"],
        "correct": f"{line['correct']}/{line['n']}",
        "accuracy (95% CI)": f"{line['accuracy']:.1%} ({100 * line['acc_low']:.1f}-{100 * line['acc_high']:.1f})",
        "vs no memory (paired 95% CI)": ""
        if baseline
        else f"{_points(line['diff'])} ({_points(line['diff_low'])} to {_points(line['diff_high'])}){mark}",
        "McNemar p": "" if baseline else f"{line['p_value']:.2g}",
        "lost / gained": "" if baseline else f"{line['only_none']} / {line['only_method']}",
        "turns": f"{line['turns']:.2f}",
        "retries unchanged": "" if pd.isna(retries) else f"{retries:.0%}",
        "tokens/task": f"{line['tokens']:,.0f}",
        "echo": "" if baseline else f"{line['memory_echo']:.0%}",
    }


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """`cell_table` as text, one formatting for every reader: accuracy with its Wilson interval, the difference to
    no memory in points with its paired bootstrap interval (marked `helps`/`hurts` where it excludes 0), McNemar's
    p, the tasks lost / gained against no memory, effort and echo; blank where a no-memory cell has nothing."""
    return pd.DataFrame([_display_line(line) for line in table.to_dict("records")], columns=list(DISPLAY_COLUMNS))


def markdown_table(table: pd.DataFrame) -> str:
    """`display_table` as a Markdown table (`table.md`), ready for a README or a paper's appendix."""
    shown = display_table(table)
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---:" if c in NUMERIC_DISPLAY_COLUMNS else "---" for c in shown.columns) + "|",
        *("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)),
    ]
    return "\n".join(lines) + "\n"
