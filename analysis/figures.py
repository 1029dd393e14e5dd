"""PNG figures written next to the tables: the gate matrix and MI matrices (paper Fig. 4)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def as_matrix(rows: pd.DataFrame, value: str) -> np.ndarray:
    """Long (class, filter, value) rows of one run -> (C, K) matrix."""
    return rows.pivot(index="class", columns="filter", values=value).sort_index().to_numpy()


def plot_gate(gate: np.ndarray, path: Path, title: str = "CSG gate matrix G") -> Path:
    fig, ax = plt.subplots(figsize=(max(6, gate.shape[1] / 8), max(2.5, gate.shape[0] / 3)),
                           constrained_layout=True)
    image = ax.imshow(gate, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set(xlabel="filter k", ylabel="class c", title=title)
    fig.colorbar(image, ax=ax, fraction=0.03)
    return save(fig, path)


def plot_mi_pair(panels: dict[str, tuple[np.ndarray, float]], path: Path) -> Path:
    """MI matrices M (K filters x C classes) side by side, one per labelled run, one colour scale."""
    vmax = max(float(m.max()) for m, _ in panels.values()) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 7), squeeze=False,
                             constrained_layout=True)
    for ax, (label, (matrix, score)) in zip(axes[0], panels.items()):
        image = ax.imshow(matrix, cmap="magma", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set(xlabel="class c", ylabel="filter k", title=f"{label}\nMIS = {score:.4f}")
        ax.title.set_fontsize(8)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.05, label="MI(a_k ; 1{y=c})")
    return save(fig, path)


def plot_overlay(gate: np.ndarray, mi: np.ndarray, label: str, out) -> None:
    """Fig. 4(c): the gate (red) and the MI matrix scaled to its max (green), both (C, K) with
    filters grouped by their gate class; where they agree the cell is yellow."""
    order = np.lexsort((-gate.max(axis=0), gate.argmax(axis=0)))
    rgb = np.zeros((*gate.shape, 3))
    rgb[..., 0] = gate[:, order]
    rgb[..., 1] = (mi / max(float(mi.max()), 1e-12))[:, order]
    fig, ax = plt.subplots(figsize=(max(6, gate.shape[1] / 8), max(2.5, gate.shape[0] / 3)), constrained_layout=True)
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set(xlabel="filter k (grouped by gate class)", ylabel="class c",
           title=f"(c) {label}: gate (red) and MI (green) overlaid, agreement yellow")
    save(fig, out)


def plot_curves(epochs: pd.DataFrame, labels: dict[str, str], out) -> None:
    """Per run: accuracy, every loss term and the L1-density against epoch, CSG epochs shaded."""
    run_ids = list(dict.fromkeys(epochs["run_id"].astype(str)))
    fig, axes = plt.subplots(len(run_ids), 3, figsize=(12, 2.8 * len(run_ids)), squeeze=False,
                             constrained_layout=True)
    panels = (("accuracy", ("train_acc", "test_acc")),
              ("loss", ("loss_total", "loss_ce_std", "loss_ce_csg", "loss_sparsity")), ("L1-density", ("l1_density",)))
    for row, run_id in zip(axes, run_ids):
        rows = epochs[epochs["run_id"].astype(str) == run_id].sort_values("epoch")
        for ax, (name, columns) in zip(row, panels):
            for epoch in rows.loc[rows["path"] != "std", "epoch"]:
                ax.axvspan(epoch - 0.5, epoch + 0.5, color="#f2d7a6", linewidth=0)
            for column in columns:
                if rows[column].notna().any():
                    ax.plot(rows["epoch"], rows[column], marker=".", label=column)
            ax.set(xlabel="epoch", title=f"{labels.get(run_id, run_id)}: {name}")
            ax.title.set_fontsize(8)
            if name == "loss":
                ax.set_yscale("symlog", linthresh=1e-2)  # the sparsity term dwarfs the CE at first
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, "no gate (STD run)", ha="center", va="center", transform=ax.transAxes)
    save(fig, out)


def save(fig, out) -> Path | None:
    """Write a figure as PNG to a path (its folder made) or to a binary file object (the report)."""
    if isinstance(out, (str, Path)):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out if isinstance(out, Path) else None
