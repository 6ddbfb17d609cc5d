"""The transfer matrix as the paper means it: memory source (rows) x target agent (columns).

A row is whose trajectories the memory came from: one agent alone (its reflection memory: `self` on
its own column, `naive` on the others) or several agents (MemCollab's contrast memory of them). A cell
is the target's accuracy with that memory on the transfer slice and its paired change vs no memory on
the same tasks. (`Tracker.log_transfer_matrix` of a plain run is fed condition x agent instead; this is
the producer of the real thing.)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from memcollab.experiments.grid_config import GridConfig, transfer_method, transfer_source
from memcollab.experiments.report import PAIRED_COLUMNS, none_rows, paired

COLUMNS = ["benchmark", "source", "target", "method", *PAIRED_COLUMNS]


def transfer_table(
    rows: pd.DataFrame, cfg: GridConfig, task_ids: dict[str, list[str]], samples: int = 10_000
) -> pd.DataFrame:
    """One line per (benchmark, source, target) of `cfg.transfer`, on the transfer slice's tasks (`task_ids`
    per benchmark), for the grid's first seed."""
    spec = cfg.transfer
    if spec is None:
        return pd.DataFrame(columns=COLUMNS)
    seed = cfg.seeds[0]
    lines = []
    for benchmark, ids in task_ids.items():
        for label in spec.sources:
            source = transfer_source(label)
            for target in spec.targets:
                method = transfer_method(cfg, source, target).name
                mask = (
                    (rows["benchmark"] == benchmark)
                    & (rows["target"] == target)
                    & (rows["method"] == method)
                    & (rows["source"] == "+".join(source))
                    & (rows["seed"] == seed)
                    & rows["task_id"].isin(ids)
                )
                mine = rows[mask].drop_duplicates("task_id")
                if mine.empty:
                    continue  # its cell has not run yet (tables written while a grid runs)
                stats = paired(mine, none_rows(rows, benchmark, target), samples)
                lines.append(
                    {
                        "benchmark": benchmark,
                        "source": label,
                        "target": target,
                        "method": method,
                        **{k: stats[k] for k in COLUMNS[4:]},
                    }
                )
    return pd.DataFrame(lines, columns=COLUMNS)


def matrix(table: pd.DataFrame, value: str = "accuracy", benchmark: str | None = None) -> pd.DataFrame:
    """`value` as a source x target matrix (rows and columns in the config's order)."""
    if benchmark is not None:
        table = table[table["benchmark"] == benchmark]
    sources = list(dict.fromkeys(table["source"]))
    targets = list(dict.fromkeys(table["target"]))
    return table.pivot(index="source", columns="target", values=value).reindex(index=sources, columns=targets)


def tracker_matrix(table: pd.DataFrame, value: str = "accuracy") -> dict[str, dict[str, float]]:
    """{source: {target: value}} with MLflow-safe names (`weak+strong` -> `weak_strong`), benchmark-prefixed."""
    out: dict[str, dict[str, float]] = {}
    for line in table.to_dict("records"):
        row = f"{line['benchmark']}.{line['source'].replace('+', '_')}"
        out.setdefault(row, {})[line["target"]] = float(line[value])
    return out


def plot_transfer(table: pd.DataFrame, path: Path) -> Path | None:
    """Heatmaps per benchmark: the change vs no memory in points (colour, red = the memory hurts), annotated with
    the accuracy; None if empty. Colour is the change because accuracy mostly shows which target it is."""
    if table.empty:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(table["benchmark"]))
    limit = max(5.0, float(table["diff"].abs().max()) * 100)  # symmetric, so 0 is the map's neutral middle
    fig, axes = plt.subplots(
        1, len(benchmarks), figsize=(4.5 * len(benchmarks) + 1, 0.6 * table["source"].nunique() + 2), squeeze=False
    )
    try:
        for ax, benchmark in zip(axes[0], benchmarks):
            acc = matrix(table, "accuracy", benchmark)
            points = matrix(table, "diff", benchmark) * 100
            image = ax.imshow(points.to_numpy(dtype=float), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
            ax.set_xticks(range(acc.shape[1]), labels=list(acc.columns))
            ax.set_yticks(range(acc.shape[0]), labels=list(acc.index))
            for i in range(acc.shape[0]):
                for j in range(acc.shape[1]):
                    a, d = acc.iat[i, j], points.iat[i, j]
                    if pd.notna(a):
                        strong = abs(d) > 0.6 * limit  # white on the map's dark ends
                        ax.text(
                            j,
                            i,
                            f"{d:+.0f} pts\n({a:.0%})",
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="white" if strong else "black",
                        )
            ax.set_xlabel("target agent")
            ax.set_ylabel("memory source")
            ax.set_title(f"{benchmark}: change vs no memory (accuracy)")
            fig.colorbar(image, ax=ax, fraction=0.046, label="points vs no memory")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
