"""Table-1-style comparison of finished runs (paper Sec. 4.1)."""
from __future__ import annotations

import pandas as pd


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
