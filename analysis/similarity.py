"""Feature/gate similarity (Sec. 4.2, Appendix C, Fig. 6): S_yc = cos(a_y(D), G_c), with a_y(D)
the mean GAP feature of class y over D and G_c the gate row of class c, for D the true
positives (label and prediction y) and the false negatives (label y, predicted otherwise).

CSG's mechanism, if the paper is right: the true positives' features point along their own
class's gate row (S_TP diagonally dominant), the false negatives' do not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.fan_out import fan_out
from analysis.options import Studied, option
from analysis.studies import RunArrays, StudyError, class_means
from csg.store.results import register_schemas

SUBSETS = ("tp", "fn")

SCHEMAS = register_schemas({
    "similarity": pa.schema([("subset", pa.string()), ("true_class", pa.int64()), ("gate_class", pa.int64()),
                             ("cosine", pa.float64()), ("n_samples", pa.int64())]),
})


@dataclass(frozen=True)
class Options(Studied):
    order: tuple[int, ...] | None = option(None, "class order of the similarity figure (every class once)")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, d) x (m, d) -> (n, m) cosines; a zero or NaN row gives NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def similarity_rows(arrays: RunArrays, run_id: str) -> pd.DataFrame:
    """Rows of the `similarity` table for one gated run: S_TP and S_FN, every (y, c)."""
    c = arrays.num_classes
    frames = []
    for subset in SUBSETS:
        right = arrays.predictions == arrays.labels
        chosen = right if subset == "tp" else ~right
        means = class_means(arrays.features[chosen], arrays.labels[chosen], c)
        true, gate_class = np.indices((c, c))
        frames.append(pd.DataFrame({
            "run_id": run_id, "subset": subset, "true_class": true.ravel(), "gate_class": gate_class.ravel(),
            "cosine": cosine_rows(means, arrays.gate).ravel(),
            "n_samples": np.repeat(np.bincount(arrays.labels[chosen], minlength=c), c),
        }))
    return pd.concat(frames, ignore_index=True)


def run(runs, arrays: dict) -> dict[str, pd.DataFrame]:
    """One Ray task per run."""
    calls = {run.run_id: (similarity_rows, (arrays[run.run_id], run.run_id)) for run in runs}
    return {"similarity": pd.concat(fan_out("similarity", calls).values(), ignore_index=True)}


def options(runs, store, order=None) -> dict:
    """Checked keyword arguments of `run` (none) and of `plot` (the class order)."""
    std = [run.run_id for run in runs if run.method != "csg"]
    if std:
        raise StudyError(f"--runs: similarity needs CSG runs; {', '.join(std)} is an STD run and has no gate")
    if order is not None and sorted(order) != list(range(runs[0].num_classes)):
        raise StudyError(f"--order: must list every class 0..{runs[0].num_classes - 1} once (got {list(order)})")
    return {}


def matrices(frame: pd.DataFrame, run_id: str) -> dict[str, np.ndarray]:
    part = frame[frame["run_id"].astype(str) == run_id]
    return {subset: rows.pivot(index="true_class", columns="gate_class", values="cosine").to_numpy()
            for subset, rows in part.groupby("subset", sort=False)}


def summary(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> str:
    """Per run and subset: classes whose own gate row is the most similar, and the mean diagonal
    against the mean off-diagonal cosine; classes with no false negative named."""
    frame = tables["similarity"]
    lines = ["cosine between mean features and gate rows (Fig. 6): diagonal-dominant rows, mean diagonal "
             "vs off-diagonal"]
    for run_id in dict.fromkeys(frame["run_id"].astype(str)):
        for subset, matrix in matrices(frame, run_id).items():
            rows = ~np.isnan(matrix).all(axis=1)
            best = np.where(np.isnan(matrix), -np.inf, matrix).argmax(axis=1)
            dominant = int((best == np.arange(len(matrix)))[rows].sum())
            off = matrix[~np.eye(len(matrix), dtype=bool) & rows[:, None]]
            line = (f"  {labels.get(run_id, run_id)} S_{subset.upper()}: "
                    f"{dominant}/{rows.sum()} rows diagonal-dominant, "
                    f"diagonal {np.nanmean(np.diag(matrix)[rows]):.3f} vs off-diagonal {np.nanmean(off):.3f}")
            empty = np.flatnonzero(~rows)
            if empty.size:
                line += f"; no {subset.upper()} sample (NaN row) for class {', '.join(map(str, empty))}"
            lines.append(line)
    return "\n".join(lines)


def plot(tables: dict[str, pd.DataFrame], labels: dict[str, str], out, order=None) -> None:
    """S_TP and S_FN heatmaps side by side, a row per run; `order` permutes the classes shown."""
    from analysis.figures import plt, save

    frame = tables["similarity"]
    run_ids = list(dict.fromkeys(frame["run_id"].astype(str)))
    fig, axes = plt.subplots(len(run_ids), 2, figsize=(8, 3.6 * len(run_ids)), squeeze=False,
                             constrained_layout=True)
    for i, run_id in enumerate(run_ids):
        for j, (subset, matrix) in enumerate(matrices(frame, run_id).items()):
            shown_order = np.arange(len(matrix)) if order is None else np.asarray(order)
            image = axes[i, j].imshow(matrix[np.ix_(shown_order, shown_order)], cmap="viridis", vmin=0, vmax=1,
                                      interpolation="nearest")
            axes[i, j].set_xticks(range(len(shown_order)), shown_order, fontsize=7)
            axes[i, j].set_yticks(range(len(shown_order)), shown_order, fontsize=7)
            axes[i, j].set(xlabel="gate row c", ylabel="true class y",
                           title=f"{labels.get(run_id, run_id)}: S_{subset.upper()}")
            axes[i, j].title.set_fontsize(8)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, label="cos(a_y, G_c)")
    save(fig, out)
