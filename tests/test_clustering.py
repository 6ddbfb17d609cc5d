"""Category refinement: error-type matrix, clustering, merged labels, heatmap."""

from __future__ import annotations

import numpy as np
import pytest

from memcollab.errors import ConfigError
from memcollab.memory import MemoryStore
from memcollab.memory.clustering import cluster_categories, error_type_matrix, plot_heatmap, refine_taxonomy
from memcollab.records import MemoryEntry


def make(category: str, error_type: str, n: int = 1, support: int = 1) -> list[MemoryEntry]:
    return [
        MemoryEntry(
            when=f"{category} {error_type} {i}",
            enforce="e",
            avoid="a",
            category=category,
            error_type=error_type,
            support=support,
        )
        for i in range(n)
    ]


def two_groups() -> list[MemoryEntry]:
    """algebra/precalculus/intermediate_algebra fail on signs; geometry/counting fail on setup/casework."""
    return [
        *make("algebra", "sign_error", 5),
        *make("algebra", "arithmetic", 1),
        *make("precalculus", "sign_error", 4),
        *make("precalculus", "arithmetic", 2),
        *make("intermediate_algebra", "sign_error", 6),
        *make("intermediate_algebra", "arithmetic", 1),
        *make("geometry", "wrong_setup", 5),
        *make("geometry", "casework", 1),
        *make("counting", "wrong_setup", 3),
        *make("counting", "casework", 3),
    ]


def test_error_type_matrix_is_support_weighted_and_row_normalised():
    entries = [*make("a", "x", 1, support=3), *make("a", "y", 1), *make("b", "y", 2)]
    cats, types, m = error_type_matrix(entries)
    assert cats == ["a", "b"] and types == ["x", "y"]
    np.testing.assert_allclose(m, [[0.75, 0.25], [0.0, 1.0]])


def test_two_separated_groups_are_recovered():
    cats, _, m = error_type_matrix(two_groups())
    clusters = cluster_categories(m, cats)  # n_clusters chosen by silhouette
    assert len(set(clusters.values())) == 2
    assert clusters["algebra"] == clusters["precalculus"] == clusters["intermediate_algebra"]
    assert clusters["geometry"] == clusters["counting"] != clusters["algebra"]
    assert cluster_categories(m, cats, method="kmeans") == clusters


def test_refine_taxonomy_labels_merged_categories(tmp_path):
    with MemoryStore(tmp_path / "m.sqlite") as store:
        for e in two_groups():
            store.add(e, dedup_threshold=None)
        mapping = refine_taxonomy(store)
    assert mapping["precalculus"] == "algebra+intermediate_algebra+precalculus"
    assert mapping["geometry"] == mapping["counting"] == "counting+geometry"
    assert refine_taxonomy(two_groups(), n_clusters=5)["algebra"] == "algebra"


@pytest.mark.parametrize("n", [0, 1, 2])
def test_degenerate_inputs_do_not_crash(n):
    entries = [e for c in ["a", "b"][:n] for e in make(c, "x")]
    cats, types, m = error_type_matrix(entries)
    clusters = cluster_categories(m, cats)
    assert set(clusters) == set(cats)
    assert len(set(clusters.values())) == n  # too few categories to justify merging
    assert refine_taxonomy(entries) == {c: c for c in cats}


def test_identical_distributions_form_one_cluster():
    entries = [e for c in "abcd" for e in make(c, "x", 2)]
    cats, _, m = error_type_matrix(entries)
    assert set(cluster_categories(m, cats).values()) == {0}


def test_bad_arguments_are_config_errors():
    cats, _, m = error_type_matrix(two_groups())
    with pytest.raises(ConfigError):
        cluster_categories(m, cats, method="dbscan")
    with pytest.raises(ConfigError):
        cluster_categories(m, cats[:-1])
    with pytest.raises(ConfigError):
        cluster_categories(m, cats, n_clusters=0)


def test_heatmap_png_is_written(tmp_path):
    cats, types, m = error_type_matrix(two_groups())
    path = plot_heatmap(cats, types, m, tmp_path / "figs" / "heatmap.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    empty = plot_heatmap([], [], np.zeros((0, 0)), tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_heatmap_destinations_that_cannot_be_written_are_output_errors(tmp_path):
    """One-line OutputError before anything is drawn, not matplotlib's OSError or ValueError."""
    from memcollab.errors import OutputError

    args = error_type_matrix(two_groups())
    regular = tmp_path / "notes.txt"
    regular.write_text("x")
    with pytest.raises(OutputError, match="notes.txt is a file, not a directory"):
        plot_heatmap(*args, regular / "figs" / "heat.png")
    with pytest.raises(OutputError, match="is a directory"):
        plot_heatmap(*args, tmp_path)
    with pytest.raises(OutputError, match=r"unknown image format \.xyz"):
        plot_heatmap(*args, tmp_path / "heat.xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
