"""Cluster centres of the GAP features (Appendix F, Fig. 11): k-means with C clusters, each
centre matched to a class by the Hungarian assignment on the (cluster, label) counts. Shown
with filters in the run's class-group order, a CSG model's centres should light up the
filters of their own class, like the gate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.fan_out import fan_out
from analysis.options import Studied, option
from analysis.studies import RunArrays, StudyError, filter_groups, labelled
from csg.store.results import register_schemas

DEFAULT_N_INIT = 10

SCHEMAS = register_schemas({
    "kmeans_centers": pa.schema([("cluster", pa.int64()), ("matched_class", pa.int64()), ("filter", pa.int64()),
                                 ("position", pa.int64()), ("value", pa.float64())]),
    "kmeans_summary": pa.schema([("purity", pa.float64()), ("adjusted_rand", pa.float64())]),
})


@dataclass(frozen=True)
class Options(Studied):
    n_init: int = option(DEFAULT_N_INIT, "k-means restarts")
    seed: int = option(0, "seed of the random draws")


def cluster(features: np.ndarray, labels: np.ndarray, num_classes: int, n_init: int = DEFAULT_N_INIT,
            seed: int = 0) -> dict:
    """k-means (C clusters, seeded) -> centres (C, K), each cluster's matched class, purity and
    the adjusted Rand index against the labels."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    fitted = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed).fit(features)
    counts = np.zeros((num_classes, num_classes), int)
    np.add.at(counts, (fitted.labels_, labels), 1)
    rows, matched = linear_sum_assignment(-counts)
    return {"centers": fitted.cluster_centers_, "matched_class": matched[np.argsort(rows)],
            "purity": float(counts.max(axis=1).sum() / len(labels)),
            "ari": float(adjusted_rand_score(labels, fitted.labels_))}


def kmeans_tables(arrays: RunArrays, run_id: str, n_init: int, seed: int) -> dict[str, pd.DataFrame]:
    found = cluster(arrays.features, arrays.labels, arrays.num_classes, n_init, seed)
    centers = found["centers"]
    clusters, filters = np.indices(centers.shape)
    position = filter_groups(arrays).set_index("filter")["position"].to_numpy()
    return {
        "kmeans_centers": pd.DataFrame({
            "run_id": run_id, "cluster": clusters.ravel(), "matched_class": found["matched_class"][clusters.ravel()],
            "filter": filters.ravel(), "position": position[filters.ravel()], "value": centers.ravel()}),
        "kmeans_summary": pd.DataFrame([{"run_id": run_id, "purity": found["purity"],
                                         "adjusted_rand": found["ari"]}]),
    }


def options(runs, store, n_init=DEFAULT_N_INIT, seed=0) -> dict:
    if n_init < 1:
        raise StudyError(f"--n-init: must be >= 1 (got {n_init})")
    return {"n_init": n_init, "seed": seed}


def run(runs, arrays: dict, n_init: int = DEFAULT_N_INIT, seed: int = 0) -> dict[str, pd.DataFrame]:
    """One Ray task per run."""
    calls = {run.run_id: (kmeans_tables, (arrays[run.run_id], run.run_id, n_init, seed)) for run in runs}
    parts = fan_out("kmeans", calls).values()
    return {table: pd.concat([part[table] for part in parts], ignore_index=True)
            for table in SCHEMAS}


def headline(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> pd.DataFrame:
    return labelled(tables["kmeans_summary"], labels)


def summary(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> str:
    return ("k-means on the GAP features (Appendix F): purity and adjusted Rand index against the labels\n"
            + headline(tables, labels).to_string(index=False, float_format="{:.4f}".format))


def plot(tables: dict[str, pd.DataFrame], labels: dict[str, str], out) -> None:
    """Fig. 11: centres as rows ordered by matched class, filters in the run's group order."""
    from analysis.figures import plt, save

    frame = tables["kmeans_centers"]
    run_ids = list(dict.fromkeys(frame["run_id"].astype(str)))
    fig, axes = plt.subplots(len(run_ids), 1, figsize=(9, 2.2 * len(run_ids) + 0.6), squeeze=False,
                             constrained_layout=True)
    for ax, run_id in zip(axes[:, 0], run_ids):
        rows = frame[frame["run_id"].astype(str) == run_id]
        shown = rows.pivot_table(index="matched_class", columns="position", values="value", observed=True)
        matrix = shown.to_numpy()
        image = ax.imshow(matrix / max(float(matrix.max()), 1e-12), cmap="viridis", vmin=0, vmax=1,
                          aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(shown.index)), shown.index, fontsize=7)
        ax.set(xlabel="filter (the run's class-group order)", ylabel="centre (matched class)",
               title=labels.get(run_id, run_id))
        ax.title.set_fontsize(8)
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.03, label="centre value / run's max")
    save(fig, out)
