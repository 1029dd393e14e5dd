"""Filter correlation (Sec. 4.3, Figs. 7 and 8, Appendix D): the cosine between the weights of
every pair of last-conv filters, each flattened over input channels and kernel.

- Ordered into class groups (`studies.filter_groups`), a CSG model's matrix should look
  block-diagonal: filters of one class correlated, filters of different classes orthogonal.
- r_s: the share of off-diagonal elements >= s, for s on a grid over [0, 1] (redundancy).
- C_IC: the mean correlation between the groups A_c of the m1 filters most activated by each
  class, over pairs of different classes:
  C_IC = sum_{c != c'} sum_{k in A_c, k' in A_c'} C[k, k'] / (C (C - 1) m1^2).

Costs K^2 (the matrix) and C K^2 + C^2 K (C_IC through the group indicator); none of it
grows with the number of images beyond one pass for the class means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.fan_out import fan_out
from analysis.options import Studied, option
from analysis.similarity import cosine_rows
from analysis.studies import RunArrays, StudyError, class_means, filter_groups, labelled
from csg.store.results import register_schemas

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)
SUMMARY_THRESHOLD = 0.1

SCHEMAS = register_schemas({
    "correlation": pa.schema([("threshold", pa.float64()), ("ratio", pa.float64())]),
    "correlation_summary": pa.schema([("m1", pa.int64()), ("c_ic", pa.float64()), ("r_0.1", pa.float64()),
                                      ("ordering", pa.string())]),
    "filter_groups": pa.schema([("filter", pa.int64()), ("group", pa.int64()), ("position", pa.int64()),
                                ("ordering", pa.string())]),
    "correlation_matrix": pa.schema([("filter_a", pa.int64()), ("filter_b", pa.int64()), ("cosine", pa.float64())]),
})


@dataclass(frozen=True)
class Options(Studied):
    m1: int | None = option(None, "size of the groups A_c (default: gate_stats m1, else round(K/C))")


def correlation_matrix(filters: np.ndarray) -> np.ndarray:
    """(K, D) weights -> (K, K) cosines; a zero filter correlates with nothing (0)."""
    return np.nan_to_num(cosine_rows(filters, filters))


def ratios(matrix: np.ndarray, thresholds=THRESHOLDS) -> np.ndarray:
    """r_s for each s: the share of off-diagonal elements >= s."""
    off = np.sort(matrix[~np.eye(len(matrix), dtype=bool)])
    return 1.0 - np.searchsorted(off, thresholds, side="left") / max(off.size, 1)


def top_groups(features: np.ndarray, labels: np.ndarray, num_classes: int, m1: int) -> np.ndarray:
    """(C, K) bool: A_c, the m1 filters with the largest mean activation on class c."""
    means = np.nan_to_num(class_means(features, labels, num_classes), nan=-np.inf)
    chosen = np.zeros(means.shape, bool)
    np.put_along_axis(chosen, np.argsort(-means, axis=1, kind="stable")[:, :m1], True, axis=1)
    return chosen


def inter_class_correlation(matrix: np.ndarray, groups: np.ndarray) -> float:
    """C_IC from the (K, K) correlation matrix and the (C, K) group indicator."""
    indicator = groups.astype(float)
    pairs = indicator @ matrix @ indicator.T  # (C, C): sums over k in A_c, k' in A_c'
    c, m1 = groups.shape[0], groups.sum(axis=1).max()
    return float((pairs.sum() - np.trace(pairs)) / (c * (c - 1) * m1 ** 2))


def correlation_tables(arrays: RunArrays, run_id: str, m1: int) -> dict[str, pd.DataFrame] | None:
    """The four tables of one run: r_s curve, summary, filter groups and the matrix itself;
    None when no conv layer emits the gated channels (DenseNet's concatenation, ConvNeXt)."""
    if arrays.filters is None:
        return None
    matrix = correlation_matrix(arrays.filters)
    curve = ratios(matrix)
    groups = filter_groups(arrays)
    a, b = np.indices(matrix.shape)
    summary = {"run_id": run_id, "m1": m1,
               "c_ic": inter_class_correlation(matrix, top_groups(arrays.features, arrays.labels,
                                                                   arrays.num_classes, m1)),
               "r_0.1": float(ratios(matrix, [SUMMARY_THRESHOLD])[0]), "ordering": groups["ordering"].iloc[0]}
    return {
        "correlation": pd.DataFrame({"run_id": run_id, "threshold": THRESHOLDS, "ratio": curve}),
        "correlation_summary": pd.DataFrame([summary]),
        "filter_groups": groups.assign(run_id=run_id),
        "correlation_matrix": pd.DataFrame({"run_id": run_id, "filter_a": a.ravel(), "filter_b": b.ravel(),
                                            "cosine": matrix.ravel()}),
    }


def default_m1(store, run_id: str, num_filters: int, num_classes: int) -> int:
    """The rounded mean m1 of the `gate_stats` rows of runs with this run's data, model and
    class count when there are any (Appendix E's statistic), else round(K / C)."""
    if store.has_table("gate_stats"):
        stats = store.read("gate_stats")
        runs = store.read("runs")[["run_id", "dataset", "model", "num_classes"]]
        mine = runs[runs["run_id"].astype(str) == run_id].iloc[0]
        same = runs[(runs["dataset"] == mine["dataset"]) & (runs["model"] == mine["model"])
                    & (runs["num_classes"] == num_classes)]["run_id"].astype(str)
        matching = stats[stats["run_id"].astype(str).isin(set(same))]
        if len(matching):
            return max(1, round(float(matching["monopolized"].mean())))
    return max(1, round(num_filters / num_classes))


def options(runs, store, m1=None) -> dict:
    """Each run's group size m1: the one given (1 <= m1 <= K), else `default_m1`."""
    for run in runs:
        if m1 is not None and not 1 <= m1 <= run.num_filters:
            raise StudyError(f"--m1: must be between 1 and K = {run.num_filters} (got {m1})")
    return {"m1": {run.run_id: m1 or default_m1(store, run.run_id, run.num_filters, run.num_classes) for run in runs}}


def run(runs, arrays: dict, m1: dict[str, int]) -> dict[str, pd.DataFrame]:
    """One Ray task per run; `m1` gives each run's group size."""
    calls = {run.run_id: (correlation_tables, (arrays[run.run_id], run.run_id, m1[run.run_id])) for run in runs}
    parts = fan_out("correlation", calls)
    for run_id in [run_id for run_id, part in parts.items() if part is None]:
        print(f"correlation: skipped run {run_id}: no conv layer emits its gated channels, so no filters "
              f"to correlate", flush=True)
    kept = [part for part in parts.values() if part is not None]
    if not kept:
        raise StudyError("correlation: no run has a conv layer that emits its gated channels")
    return {table: pd.concat([part[table] for part in kept], ignore_index=True) for table in SCHEMAS}


def ordered_matrix(tables: dict[str, pd.DataFrame], run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's matrix in display order and the group of each displayed filter."""
    rows = tables["correlation_matrix"]
    rows = rows[rows["run_id"].astype(str) == run_id]
    k = int(rows["filter_a"].max()) + 1
    matrix = np.zeros((k, k))
    matrix[rows["filter_a"], rows["filter_b"]] = rows["cosine"]
    groups = tables["filter_groups"]
    groups = groups[groups["run_id"].astype(str) == run_id].sort_values("position")
    order = groups["filter"].to_numpy()
    return matrix[np.ix_(order, order)], groups["group"].to_numpy()


def block_contrast(matrix: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean cosine within class groups and between them (off-diagonal elements only)."""
    same = groups[:, None] == groups[None, :]
    off = ~np.eye(len(groups), dtype=bool)
    within, between = matrix[same & off], matrix[~same]
    return _mean_or_nan(within), _mean_or_nan(between)


def _mean_or_nan(values: np.ndarray) -> float:
    """NaN where there is nothing to average (every filter in one group), without numpy's warning."""
    return float(values.mean()) if values.size else float("nan")


def headline(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> pd.DataFrame:
    return labelled(tables["correlation_summary"], labels)


def summary(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> str:
    lines = ["filter correlation (Figs. 7, 8): C_IC, r_0.1 and the mean cosine within and between class groups"]
    for _, row in tables["correlation_summary"].iterrows():
        run_id = str(row["run_id"])
        within, between = block_contrast(*ordered_matrix(tables, run_id))
        lines.append(f"  {labels.get(run_id, run_id)}: C_IC {row['c_ic']:.4f} (m1 = {row['m1']}), "
                     f"r_0.1 {row['r_0.1']:.4f}, within groups {within:.3f} vs between {between:.3f} "
                     f"(grouped by {row['ordering']})")
    return "\n".join(lines)


def plot(tables: dict[str, pd.DataFrame], labels: dict[str, str], out) -> None:
    """Fig. 7: the matrices side by side in class-group order, group boundaries drawn."""
    from analysis.figures import plt, save

    run_ids = [str(r) for r in tables["correlation_summary"]["run_id"]]
    fig, axes = plt.subplots(1, len(run_ids), figsize=(4.2 * len(run_ids) + 0.8, 4.2), squeeze=False,
                             constrained_layout=True)
    for ax, run_id in zip(axes[0], run_ids):
        matrix, groups = ordered_matrix(tables, run_id)
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for edge in np.flatnonzero(np.diff(groups)) + 0.5:
            ax.axhline(edge, color="k", linewidth=0.4)
            ax.axvline(edge, color="k", linewidth=0.4)
        row = tables["correlation_summary"].set_index(tables["correlation_summary"]["run_id"].astype(str)).loc[run_id]
        ax.set(xlabel="filter (grouped by class)", ylabel="filter",
               title=f"{labels.get(run_id, run_id)}\nr_0.1 = {row['r_0.1']:.3f}, C_IC = {row['c_ic']:.3f}")
        ax.title.set_fontsize(8)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03, label="cosine of filter weights")
    save(fig, out)


def plot_ratios(tables: dict[str, pd.DataFrame], labels: dict[str, str], out) -> None:
    """Fig. 8: r_s against s, every run on one plot."""
    from analysis.figures import plt, save

    fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    for run_id, rows in tables["correlation"].groupby("run_id", sort=False, observed=True):
        ax.plot(rows["threshold"], rows["ratio"], label=labels.get(str(run_id), str(run_id)))
    ax.axvline(SUMMARY_THRESHOLD, color="grey", linewidth=0.6, linestyle=":")
    ax.set(xlabel="threshold s", ylabel="r_s: share of correlations >= s", ylim=(0, 1))
    ax.legend(fontsize=7)
    save(fig, out)
