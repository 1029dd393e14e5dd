"""What the class-specificity studies share (masking, similarity, correlation, k-means): the
runs they compare, the arrays each reads from a run's checkpoint, the class
grouping of filters, and one writer for their tables.

Every study reads, per run, one `RunArrays`: the STD path's GAP features of one unaugmented
split (through `engine.gap_features`), the classifier head, the last conv layer's filters and
the gate. Loading them is one Ray task per run; the studies then fan out over those objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from csg.store.results import ResultStore


class StudyError(ValueError):
    """Bad input to a study: one line naming the option and what is allowed."""


@dataclass(frozen=True)
class Run:
    """A finished run a study reads: its id, method, class count and chosen checkpoint."""

    run_id: str
    method: str
    num_classes: int
    num_filters: int
    checkpoint: str
    dataset: str

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.run_id}"


def resolve_runs(store: ResultStore, run_ids, which: str = "latest", option: str = "--runs") -> list[Run]:
    """The `runs` rows of `run_ids` with their `which` ('latest' or 'best') checkpoint; runs
    that are missing, have no checkpoint, or were trained on different data are refused."""
    column = {"latest": "checkpoint", "best": "best_checkpoint"}[which]
    runs = []
    for run_id in run_ids:
        if not store.exists("runs", run_id):
            raise StudyError(f"{option}: no run {run_id!r} under {store.root}/runs")
        row = store.read("runs", run_id).iloc[0]
        if not isinstance(row[column], str):
            raise StudyError(f"{option}: run {run_id} has no {which} checkpoint (status {row['status']})")
        runs.append(Run(run_id, row["method"], int(row["num_classes"]), int(row["num_filters"]), row[column],
                        f"{row['dataset']} {row['data'] or ''}".strip()))
    if len({run.dataset for run in runs}) > 1:
        raise StudyError(f"{option}: the runs were trained on different data sets "
                         f"({', '.join(sorted({run.dataset for run in runs}))}); a study compares them on one")
    return runs


@dataclass
class RunArrays:
    """What a study needs of one run: features (N, K), labels and STD-path predictions (N,),
    the head fc (C, K) and (C,) when it is Linear(GAP(A)) (None for any other head), the gated
    channels' conv filters flattened (K, D) or None, and G (C, K) or None. Without a linear
    head, predictions with filters masked come from the model itself (`checkpoint`, `split`)."""

    features: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    fc_weight: np.ndarray | None
    fc_bias: np.ndarray | None
    filters: np.ndarray | None
    gate: np.ndarray | None
    classes: int | None = None  # C, when there is no fc_weight to read it from
    checkpoint: str | None = None
    split: str = "test"

    @property
    def num_classes(self) -> int:
        return self.fc_weight.shape[0] if self.fc_weight is not None else self.classes

    @property
    def num_filters(self) -> int:
        return self.features.shape[1]

    def predict(self, keep: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
        """Predictions with the filters outside `keep` (a (K,) bool mask) zeroed. With a linear
        head, from the features, in chunks so memory stays O(chunk x C): GAP is linear, so zeroing
        a feature is exactly zeroing its filter's map. With any other head, by the model itself,
        its gate point multiplying the map by `keep`."""
        if self.fc_weight is None:
            return self.predictions if keep is None else masked_predictions(self.checkpoint, self.split, keep)
        weight = self.fc_weight if keep is None else self.fc_weight * keep
        return np.concatenate([(self.features[i:i + chunk] @ weight.T + self.fc_bias).argmax(1)
                               for i in range(0, len(self.features), chunk)])


@torch.no_grad()
def masked_predictions(checkpoint: str, split: str, keep: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The STD-path predictions of a checkpoint's model over its split with each filter's map
    multiplied by `keep` (K,): the gate point set to one row for every image."""
    from torch.utils.data import DataLoader

    from csg.data import collate_skipping_bad
    from csg.method.features import default_device
    from csg.store import checkpoint as ckpt_lib

    model, cfg, _ = ckpt_lib.restore_model(checkpoint)
    device = default_device()
    model.to(device)
    row = torch.as_tensor(keep, dtype=torch.float32, device=device)[None]
    loader = DataLoader(ckpt_lib.evaluation_split(cfg, split), batch_size=batch_size, collate_fn=collate_skipping_bad)
    return np.concatenate([model(images.to(device), row.expand(len(images), -1)).argmax(1).cpu().numpy()
                           for images, _ in loader])


def last_conv_filters(model) -> np.ndarray | None:
    """The weights of the conv layer whose output channels are the K gated filters, (K, D);
    None when no conv emits them (a concatenation, a norm or a linear layer comes last)."""
    if model.producer is None:
        return None
    conv = model.net.get_submodule(model.producer)
    return conv.weight.detach().flatten(1).cpu().numpy().astype(np.float64)


def load_run_arrays(checkpoint: str, split: str = "test", batch_size: int = 256) -> RunArrays:
    """One run's arrays from one read of its checkpoint."""
    from csg.store import checkpoint as ckpt_lib

    state = ckpt_lib.read(checkpoint)
    model, _, _ = ckpt_lib.restore_model(checkpoint, state)
    extracted = ckpt_lib.checkpoint_features(checkpoint, split, batch_size=batch_size, state=state)
    head = model.linear_head
    return RunArrays(
        features=extracted["features"].astype(np.float64), labels=extracted["labels"],
        predictions=extracted["predictions"],
        fc_weight=None if head is None else head.weight.detach().numpy().astype(np.float64),
        fc_bias=None if head is None else _bias(head),
        filters=last_conv_filters(model), gate=ckpt_lib.saved_gate(state),
        classes=model.num_classes, checkpoint=str(checkpoint), split=split,
    )


def _bias(head) -> np.ndarray:
    if head.bias is None:
        return np.zeros(head.out_features)
    return head.bias.detach().numpy().astype(np.float64)


def load_arrays(runs: list[Run], split: str = "test") -> dict:
    """Run id -> an object ref of its `RunArrays`, one Ray task per run (on a GPU when the
    cluster has one); in process, the arrays themselves."""
    from analysis.fan_out import gpus_per_task, submit

    gpus = gpus_per_task()
    return {run.run_id: submit(load_run_arrays, run.checkpoint, split, num_gpus=gpus) for run in runs}


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, K) mean feature of each class; a class without samples gets NaN."""
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def filter_groups(arrays: RunArrays) -> pd.DataFrame:
    """Each filter's class group and display position: for a gated run the class of its largest
    gate value, otherwise the class with its largest mean activation; within a group, the
    strongest first. Columns: filter, group, position, ordering ('gate' or 'activation')."""
    if arrays.gate is not None:
        strength, ordering = arrays.gate, "gate"
    else:
        strength, ordering = np.nan_to_num(class_means(arrays.features, arrays.labels, arrays.num_classes),
                                           nan=-np.inf), "activation"
    group = strength.argmax(axis=0)
    order = np.lexsort((np.arange(len(group)), -strength[group, np.arange(len(group))], group))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return pd.DataFrame({"filter": np.arange(len(group)), "group": group, "position": position,
                         "ordering": ordering})


def write_tables(store: ResultStore, tables: dict[str, pd.DataFrame]) -> None:
    """One partition per run id in each table; a rerun replaces that run's rows."""
    for table, frame in tables.items():
        for run_id, rows in frame.groupby("run_id", sort=False, observed=True):
            store.write(table, str(run_id), rows)


def read_tables(store: ResultStore, tables, run_ids) -> dict[str, pd.DataFrame]:
    """The rows of `run_ids` in each of `tables` that exist; a table with none of them is left out."""
    found = {}
    for table in tables:
        parts = [store.read(table, run_id) for run_id in run_ids if store.exists(table, run_id)]
        if parts:
            found[table] = pd.concat(parts, ignore_index=True)
    return found


def labelled(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """A per-run table for people: its run id replaced by the run's label, first."""
    table = frame.copy()
    table.insert(0, "run", table.pop("run_id").astype(str).map(labels))
    return table


def check_classes(option: str, classes, num_classes: int) -> None:
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise StudyError(f"{option}: class {bad[0]} is outside [0, {num_classes})")

