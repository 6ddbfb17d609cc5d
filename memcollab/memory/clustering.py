"""Category refinement: merge categories whose memories fail in the same ways.

Each category is described by the distribution of error types among its
memories (counts weighted by support, rows normalised to sum to 1). Categories
with similar distributions share failure modes, so their memories can be
pooled (the paper's Fig. 5 heatmap and its merged taxonomy).

Distance between two distributions is the Hellinger distance (Euclidean on
square roots, up to a constant): it is a proper metric on distributions,
unlike cosine it is defined for an all-zero row, and it does not let one
dominant error type swamp the rest. Agglomerative clustering with average
linkage on it; when no cluster count is given, the count with the best
silhouette score over 2..min(6, n-1) wins (ties -> fewer clusters).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memcollab.errors import ConfigError, OutputError, output_error
from memcollab.records import MemoryEntry

if TYPE_CHECKING:
    from memcollab.memory.store import MemoryStore

METHODS = ("agglomerative", "kmeans")


def error_type_matrix(entries: Iterable[MemoryEntry]) -> tuple[list[str], list[str], np.ndarray]:
    """(categories, error types, row-normalised support-weighted counts), both axes sorted."""
    entries = list(entries)
    categories = sorted({e.category for e in entries})
    error_types = sorted({e.error_type for e in entries})
    matrix = np.zeros((len(categories), len(error_types)))
    row = {c: i for i, c in enumerate(categories)}
    col = {t: j for j, t in enumerate(error_types)}
    for e in entries:
        matrix[row[e.category], col[e.error_type]] += max(e.support, 0)
    sums = matrix.sum(axis=1, keepdims=True)
    np.divide(matrix, sums, out=matrix, where=sums > 0)
    return categories, error_types, matrix


def _canonical(labels: np.ndarray) -> list[int]:
    """Renumber cluster labels by first appearance, so equal partitions give equal labels."""
    mapping: dict[int, int] = {}
    return [mapping.setdefault(int(label), len(mapping)) for label in labels]


def _fit(points: np.ndarray, n_clusters: int, method: str) -> np.ndarray:
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=n_clusters, n_init=10, random_state=0).fit_predict(points)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=n_clusters, metric="euclidean", linkage="average").fit_predict(points)


def cluster_categories(
    matrix: np.ndarray, categories: list[str], n_clusters: int | None = None, method: str = "agglomerative"
) -> dict[str, int]:
    """Cluster id per category (ids numbered by first appearance in `categories`).

    Degenerate inputs do not fail: 0 categories -> {}, 1 -> one cluster, and
    with `n_clusters=None` fewer than 3 categories (silhouette needs at least
    one cluster with two members and n-1 >= 2) keep every category apart.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown clustering method {method!r}; use one of {', '.join(METHODS)}")
    matrix = np.asarray(matrix, dtype=float)
    n = len(categories)
    if matrix.shape[0] != n:
        raise ConfigError(f"matrix has {matrix.shape[0]} rows but {n} categories were given")
    if n == 0:
        return {}
    points = np.sqrt(np.clip(matrix, 0, None))  # Hellinger embedding of the distributions
    distinct = len(np.unique(points.round(12), axis=0))
    if n_clusters is not None:
        if n_clusters < 1:
            raise ConfigError(f"n_clusters must be >= 1, got {n_clusters}")
        n_clusters = min(n_clusters, n)
    elif n < 3:
        n_clusters = n
    elif distinct < 2:
        n_clusters = 1
    else:
        from sklearn.metrics import silhouette_score

        best: tuple[float, int] | None = None
        for k in range(2, min(6, n - 1, distinct) + 1):
            score = float(silhouette_score(points, _fit(points, k, method), metric="euclidean"))
            if best is None or score > best[0] + 1e-12:
                best = (score, k)
        n_clusters = best[1] if best else 1
    labels = np.zeros(n, dtype=int) if n_clusters == 1 else _fit(points, n_clusters, method)
    return dict(zip(categories, _canonical(labels)))


def refine_taxonomy(
    store: MemoryStore | Iterable[MemoryEntry], n_clusters: int | None = None, method: str = "agglomerative"
) -> dict[str, str]:
    """Old category -> merged label, the members of its cluster joined by '+' (e.g. 'algebra+precalculus')."""
    entries = store.entries() if hasattr(store, "entries") else list(store)
    categories, _, matrix = error_type_matrix(entries)
    clusters = cluster_categories(matrix, categories, n_clusters=n_clusters, method=method)
    members: dict[int, list[str]] = {}
    for category, cluster in clusters.items():
        members.setdefault(cluster, []).append(category)
    return {category: "+".join(sorted(members[cluster])) for category, cluster in clusters.items()}


def plot_heatmap(categories: list[str], error_types: list[str], matrix: np.ndarray, path: str | Path) -> Path:
    """Save the category x error-type heatmap as a PNG (the paper's Fig. 5); returns the path.

    A destination that cannot be written (read-only directory, a file in the way, a
    directory of that name, an image format matplotlib does not know) raises OutputError
    with one line, checked before anything is drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; harmless if a backend is already set
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.is_dir():
        raise output_error(path, IsADirectoryError(21, "Is a directory"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    matrix = np.asarray(matrix, dtype=float)
    labels = max((len(c) for c in categories), default=0) * 0.09  # inches the category labels take
    width = max(5.0, 2.0 + labels + 0.9 * len(error_types))
    height = max(3.0, 1.0 + 0.5 * len(categories))
    fig, ax = plt.subplots(figsize=(width, height))
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        known = ", ".join(sorted(fig.canvas.get_supported_filetypes()))
        raise OutputError(f"cannot write {path}: unknown image format .{suffix}; use one of {known}")
    try:
        if matrix.size == 0:
            ax.text(0.5, 0.5, "no memories", ha="center", va="center")
            ax.set_axis_off()
        else:
            image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(range(len(error_types)), labels=error_types, rotation=45, ha="right")
            ax.set_yticks(range(len(categories)), labels=categories)
            for i in range(matrix.shape[0]):
                for j in range(matrix.shape[1]):
                    value = matrix[i, j]
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > 0.6 else "black",
                    )
            fig.colorbar(image, ax=ax, label="share")
            ax.set_xlabel("error type")
            ax.set_ylabel("category")
        fig.suptitle("Error-type distribution per category", fontsize=11)  # centred on the figure, labels and all
        fig.tight_layout()
        try:
            fig.savefig(path, dpi=120)
        except OSError as exc:
            raise output_error(path, exc) from None
    finally:
        plt.close(fig)
    return path


__all__ = ["METHODS", "error_type_matrix", "cluster_categories", "refine_taxonomy", "plot_heatmap"]
