"""How a learned gate splits the filters: for each class, the filters it monopolizes (it owns
them, G[c, k] > tau, and no other class does), and for the whole gate the filters shared by
two or more classes and those no class uses (Sec. 4.2, Appendix E).

Appendix E reads these off 20 CIFAR-10 ResNet-20 gates (about m1 = 6 monopolized per class,
m2 = 4 shared) to build the fixed gate that `--fixed-gate-from` trains with.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from csg.method.gate import (
    DEFAULT_TAU,
    classes_without_filters,
    empty_classes_note,
    filters_owned,
    owns,
)
from csg.store.results import ResultStore, register_schemas

__all__ = ["DEFAULT_TAU", "owns", "filters_owned", "gate_counts", "balance", "balance_line", "gate_matrix",
           "write_gate_stats", "summarize", "plot_histogram"]

SCHEMAS = register_schemas({
    "gate_stats": pa.schema([("seed", pa.int64()), ("class", pa.int64()), ("monopolized", pa.int64()),
                             ("shared", pa.int64()), ("unused", pa.int64()), ("tau", pa.float64())]),
})


def gate_counts(gate: np.ndarray, tau: float = DEFAULT_TAU) -> pd.DataFrame:
    """One (C, K) gate -> a row per class: monopolized (by that class), shared and unused
    (counts for the whole gate, the same on every row)."""
    used = owns(gate, tau)
    users = used.sum(axis=0)
    return pd.DataFrame({
        "class": np.arange(used.shape[0]),
        "monopolized": (used & (users == 1)).sum(axis=1),
        "shared": int((users >= 2).sum()),
        "unused": int((users == 0).sum()),
        "tau": float(tau),
    })


def balance(gate: np.ndarray, tau: float = DEFAULT_TAU) -> dict:
    """How evenly a gate shares its filters: min, median and max over classes of the filters
    each owns, and the classes that own none."""
    owned = filters_owned(gate, tau)
    return {"min": int(owned.min()), "median": float(np.median(owned)), "max": int(owned.max()),
            "classes_without": int((owned == 0).sum())}


def balance_line(gate: np.ndarray, tau: float = DEFAULT_TAU) -> str:
    found = balance(gate, tau)
    note = empty_classes_note(classes_without_filters(gate, tau), tau)
    return (f"filters per class (G > {tau:g}, those masking the class zeroes): min {found['min']}, "
            f"median {found['median']:g}, max {found['max']}"
            + (f"; {note}" if note else ""))


def gate_matrix(gates: pd.DataFrame) -> np.ndarray:
    """A run's rows of the `gates` table as its (C, K) matrix."""
    matrix = np.zeros((gates["class"].max() + 1, gates["filter"].max() + 1))
    matrix[gates["class"], gates["filter"]] = gates["value"]
    return matrix


def write_gate_stats(store: ResultStore, seeds: dict[str, int], tau: float = DEFAULT_TAU) -> pd.DataFrame:
    """`gate_stats` rows for each run in `seeds` (run id -> seed), from its `gates` table."""
    frames = []
    for run_id, seed in seeds.items():
        counts = gate_counts(gate_matrix(store.read("gates", run_id)), tau)
        counts.insert(0, "seed", int(seed))
        store.write("gate_stats", run_id, counts)
        frames.append(counts.assign(run_id=run_id))
    return pd.concat(frames, ignore_index=True)


def summarize(stats: pd.DataFrame) -> tuple[pd.DataFrame, float, float]:
    """Per class, mean and std over runs of m1 (filters it monopolizes); and of m2 (filters
    shared), mean and std over runs."""
    per_class = stats.groupby("class")["monopolized"].agg(m1_mean="mean", m1_std="std").reset_index()
    m2 = stats.groupby("run_id", observed=True)["shared"].first()
    return per_class, float(m2.mean()), float(m2.std())


def plot_histogram(stats: pd.DataFrame, out) -> None:
    """Histograms of m1 over (run, class) pairs and of m2 over runs (to a path or file object)."""
    from matplotlib.ticker import MaxNLocator

    from analysis.figures import plt, save

    m2 = stats.groupby("run_id", observed=True)["shared"].first()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, values, label in ((axes[0], stats["monopolized"], "m1: filters a class monopolizes"),
                              (axes[1], m2, "m2: filters shared by 2+ classes")):
        ax.hist(values, bins=np.arange(values.min(), values.max() + 2) - 0.5, rwidth=0.9)
        ax.set_xlim(values.min() - 1, values.max() + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label)
    axes[0].set_ylabel("count")
    fig.tight_layout()
    save(fig, out)
