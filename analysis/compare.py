"""Table-1-style comparison of finished runs (paper Sec. 4.1)."""
from __future__ import annotations

import pandas as pd

from csg.method.gate import inside_interval

SCORES = ("accuracy: higher is better; MIS: the mean over filters of each one's largest MI with a class, "
          "higher is more class-specific")


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: data, model, C, K, training, accuracy, MIS, L1-density and interval."""
    frame = pd.DataFrame(
        {
            "dataset": runs["dataset"],
            "model": runs["model"],
            "C": runs["num_classes"],
            "K": runs["num_filters"],
            "training": runs["method"].str.upper(),
            "accuracy": runs["final_acc"].round(4),
            "MIS": runs["mis"].round(4),
            "L1-density": runs["l1_density"].round(4),
            "L1-interval": [
                "-" if pd.isna(lo) else f"[{lo:.4g}, {hi:.4g}]"
                for lo, hi in zip(runs["l1_interval_low"], runs["l1_interval_high"])
            ],
        }
    )
    frame["L1-density"] = frame["L1-density"].astype(object).where(runs["method"] == "csg", "-")
    return frame.reset_index(drop=True)


def legend(runs: pd.DataFrame, labels: dict | None = None) -> list[str]:
    """Table 1's numbers in words: accuracy and MIS, then each gated run's L1-density against
    its interval, saying whether the gate reached its sparsity target."""
    lines = [SCORES]
    for run in runs[runs["method"] == "csg"].itertuples():
        name = (labels or {}).get(str(run.run_id), str(run.run_id))
        low, high = run.l1_interval_low, run.l1_interval_high
        reached = inside_interval(run.l1_density, low, high)
        lines.append(
            f"L1-density: the share of G left open; {name}'s {run.l1_density:.4f} is {'inside' if reached else 'outside'} "
            f"its L1-interval [1/C, g/(CK)] = [{low:.4g}, {high:.4g}]: "
            + ("the gate reached its sparsity target" if reached else "the gate has not reached its sparsity target yet"))
    return lines
