"""A sweep's results read back: the Pareto front of accuracy against MIS, the console summary
and the figure (`jobs/tune_cifar.py` prints and plots them after the sweep)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from csg.config import TrainConfig


def pareto_front(frame: pd.DataFrame, x: str = "mis", y: str = "final_acc") -> pd.DataFrame:
    """Rows no other row beats on both columns (higher is better), sorted by `x`."""
    scored = frame.dropna(subset=[x, y])
    keep = [
        not ((scored[x] >= row[x]) & (scored[y] >= row[y]) & ((scored[x] > row[x]) | (scored[y] > row[y]))).any()
        for _, row in scored.iterrows()
    ]
    return scored[keep].sort_values(x)


def print_summary(frame: pd.DataFrame, top: int) -> None:
    columns = ["trial_id", "period", "csg_epochs", "lambda1", "lambda2", "g_density", "psi", "final_acc", "mis",
               "l1_density", "inside_interval", "epochs_completed", "stop_reason"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(f"\ntop {min(top, len(frame))} of {len(frame)} trials by accuracy:")
        print(frame.sort_values("final_acc", ascending=False)[columns].head(top).to_string(index=False))
        print("\nPareto front, accuracy against MIS:")
        print(pareto_front(frame)[columns].to_string(index=False))
    if (frame["stop_reason"] == "interrupted").any():
        print(f"\nsweep interrupted; continue it with: --resume --sweep-id {frame['sweep_id'].iloc[0]}")


def figure_path(cfg: TrainConfig, frame: pd.DataFrame) -> str:
    return f"{cfg.results.rstrip('/')}/figures/tune_{frame['sweep_id'].iloc[0]}.png"


def plot_sweep(frame: pd.DataFrame, path) -> None:
    """Accuracy against MIS, one point per trial, coloured by L1-density; the Pareto front joined."""
    from analysis.figures import plt

    scored = frame.dropna(subset=["mis", "final_acc"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    points = ax.scatter(scored["mis"], scored["final_acc"], c=scored["l1_density"], cmap="viridis")
    front = pareto_front(scored)
    ax.plot(front["mis"], front["final_acc"], color="grey", lw=1, zorder=0, label="Pareto front")
    fig.colorbar(points, ax=ax, label="L1-density")
    ax.set_xlabel("MIS")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="best")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
