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
    return _save(fig, path)


def plot_mi_pair(panels: dict[str, tuple[np.ndarray, float]], path: Path) -> Path:
    """MI matrices M (K filters x C classes) side by side, one per labelled run, one colour scale."""
    vmax = max(float(m.max()) for m, _ in panels.values()) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 7), squeeze=False,
                             constrained_layout=True)
    for ax, (label, (matrix, score)) in zip(axes[0], panels.items()):
        image = ax.imshow(matrix, cmap="magma", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set(xlabel="class c", ylabel="filter k", title=f"{label}: MIS = {score:.4f}")
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.05, label="MI(a_k ; 1{y=c})")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
