"""Localization with class-specific filters (paper Sec. 5.1, Table 2, Appendix H), on Ray.

One task per (run, method, shard of images), GradMap's also per block of filters, each on a GPU
when the cluster has one. A task thresholds and scores its maps batch by batch and returns only
sums (`Tally`): per (filter, class) the IoU and the AP hits over the shard's images, and per
image the IoU summed over the filters that score it. ActivMap's thresholds and the top filters
of each class come first, from one statistics task per (run, shard) (`Statistics`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from analysis.localization_metrics import (
    AP_LEVELS,
    METRICS,
    Tally,
    merge,
    method_tables,
)
from analysis.saliency import (
    TEXT,
    GradMapSettings,
    activation_histogram,
    build_method,
    iou,
    top_thresholds,
)
from analysis.studies import Run, StudyError

MAX_MAP_ELEMENTS = 1 << 24  # pixels of maps held at once by a task: (batch x filters x H x W)


@dataclass
class Statistics:
    """Sums over a split: per class the GAP activations and image count; per filter the
    activation histogram behind ActivMap's top-30% threshold."""

    class_sums: np.ndarray  # (C, K)
    class_counts: np.ndarray  # (C,)
    histogram: torch.Tensor | None  # (K, bins)

    def __add__(self, other: Statistics) -> Statistics:
        hist = None if self.histogram is None else self.histogram + other.histogram
        return Statistics(self.class_sums + other.class_sums, self.class_counts + other.class_counts, hist)

    def top_filters(self, count: int) -> np.ndarray:
        """(C, K) bool: each class's `count` filters of largest mean activation (the code's choice)."""
        means = self.class_sums / np.maximum(self.class_counts, 1)[:, None]
        chosen = np.zeros(means.shape, bool)
        order = np.argsort(-means, axis=1, kind="stable")[:, :min(count, means.shape[1])]
        np.put_along_axis(chosen, order, True, axis=1)
        return chosen


class MaskedSplit(torch.utils.data.Dataset):
    """(image, label, mask, index) for the chosen images of a split."""

    def __init__(self, images, masks, indices):
        self.images, self.masks, self.indices = images, masks, np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = int(self.indices[i])
        image, label = self.images[index]
        return image, label, self.masks[index], index


def open_split(cfg, split: str, indices, batch_size: int):
    from csg import data as data_lib

    images = data_lib.evaluation_set(cfg.dataset, cfg.data, split, cfg.image_size, augment=cfg.augment)
    masks = data_lib.evaluation_masks(cfg.dataset, split, cfg.data, cfg.image_size, cfg.augment)
    return torch.utils.data.DataLoader(MaskedSplit(images, masks, indices), batch_size=batch_size)


def restore(checkpoint: str):
    from csg.store import checkpoint as ckpt_lib

    model, cfg, _ = ckpt_lib.restore_model(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), cfg, device


def statistics_task(checkpoint: str, split: str, indices, histogram: bool, batch_size: int = 64) -> Statistics:
    model, cfg, device = restore(checkpoint)
    sums = np.zeros((model.num_classes, model.num_filters))
    counts = np.zeros(model.num_classes)
    hist = None
    with torch.no_grad():
        for images, labels, _, _ in open_split(cfg, split, indices, batch_size):
            activation = model.features(images.to(device))
            np.add.at(sums, labels.numpy(), activation.mean(dim=(2, 3)).double().cpu().numpy())
            counts += np.bincount(labels.numpy(), minlength=model.num_classes)
            if histogram:
                part = activation_histogram(activation)
                hist = part if hist is None else hist + part
    return Statistics(sums, counts, hist)


def score_task(checkpoint: str, method_name: str, settings: GradMapSettings, split: str, indices, filters,
               thresholds=None, top_sets=None, batch_size: int = 64) -> Tally:
    model, cfg, device = restore(checkpoint)
    start = time.perf_counter()
    tally = score(model, build_method(method_name, settings), open_split(cfg, split, indices, batch_size),
                  filters, model.num_classes, thresholds, top_sets, device)
    tally.seconds = time.perf_counter() - start
    return tally


def score(model, method, loader, filters, num_classes: int, thresholds=None, top_sets=None, device="cpu") -> Tally:
    """Score `method` on every batch of `loader` ((image, label, mask, index) batches):
    per-filter methods for `filters`, CAM for each image's labelled class. With `top_sets`
    ((C, K) bool) an image is scored by the mean IoU of its class's filters among `filters`,
    and a batch computes only the filters of the classes in it (so the (filter, class) sums
    are complete only for a class's own top filters); otherwise a per-filter method's
    per-image sums stay empty."""
    filters = np.asarray(filters if method.per_filter else [], dtype=np.int64)
    f = len(filters)
    iou_sum, hits = np.zeros((f, num_classes)), {level: np.zeros((f, num_classes)) for level in AP_LEVELS}
    indices, image_sums, image_scored = [], [], []
    for images, labels, masks, index in loader:
        images, masks = images.to(device), masks.to(device)
        onehot = np.eye(num_classes)[labels.numpy()]  # (B, C)
        indices.append(index.numpy())
        forward = method.forward(model, images, labels)
        if not method.per_filter:
            ious = iou(method.segments(forward), masks).cpu().numpy()[:, 0]
            image_sums.append(ious)
            image_scored.append(np.ones_like(ious))
            continue
        sums, scored = np.zeros(len(labels)), np.zeros(len(labels))
        chunk = max(1, MAX_MAP_ELEMENTS // (len(labels) * images[0, 0].numel()))
        active = np.arange(f) if top_sets is None else \
            np.flatnonzero(top_sets[np.unique(labels.numpy())][:, filters].any(0))
        for start in range(0, len(active), chunk):
            rows = active[start:start + chunk]
            block = filters[rows]
            ious = iou(method.segments(forward, block, thresholds), masks).cpu().numpy()  # (B, F)
            iou_sum[rows] += ious.T @ onehot
            for level in AP_LEVELS:
                hits[level][rows] += (ious >= level / 100).T @ onehot
            if top_sets is not None:
                chosen = top_sets[labels.numpy()][:, block]
                sums += (ious * chosen).sum(1)
                scored += chosen.sum(1)
        image_sums.append(sums)
        image_scored.append(scored)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))
    return Tally(filters, iou_sum, hits, cat(indices).astype(np.int64), cat(image_sums), cat(image_scored))


def has_gap_linear_head(model: nn.Module) -> bool:
    """CAM needs logits = Linear(GAP(A)): the GatedClassifier head, not overridden."""
    from csg.method.models import GatedClassifier

    return isinstance(getattr(model, "fc", None), nn.Linear) and type(model).classify is GatedClassifier.classify


def check_runs(runs: list[Run], methods, split: str) -> dict:
    """Run id -> (config, class names, labels) after refusing bad input with a StudyError:
    a split without masks, masks of the wrong size, a model without a GAP + linear head for CAM."""
    from csg import data as data_lib
    from csg.store import checkpoint as ckpt_lib

    checked = {}
    for run in runs:
        model, cfg, _ = ckpt_lib.restore_model(run.checkpoint)
        if "cam" in methods and not has_gap_linear_head(model):
            raise StudyError(f"--methods cam: run {run.run_id}'s model does not end in global average pooling "
                             f"and one linear layer")
        try:
            images = data_lib.evaluation_set(cfg.dataset, cfg.data, split, cfg.image_size, augment=cfg.augment)
            masks = data_lib.evaluation_masks(cfg.dataset, split, cfg.data, cfg.image_size, cfg.augment)
            if hasattr(masks, "check_sizes"):
                masks.check_sizes()
        except data_lib.DataError as exc:
            raise StudyError(f"{exc} (run {run.run_id}, split {split})") from None
        labels = data_lib.split_labels(images)
        names = getattr(images, "classes", None) or [str(c) for c in range(run.num_classes)]
        checked[run.run_id] = (cfg, list(names), labels)
    return checked


# ---------------------------------------------------------------- the study


@dataclass
class Localized:
    """What `localize` found: both tables, per (run, method) the seconds its tasks took, per run
    the ActivMap thresholds, the split's labels and class names (for the figures) and the
    indices of the images scored."""

    tables: dict
    seconds: dict
    thresholds: dict
    labels: np.ndarray
    class_names: list
    scored: np.ndarray


def first_per_class(labels: np.ndarray, per_class: int | None = None) -> np.ndarray:
    """Image indices in label order (a batch then holds one class or few, which top-filters
    GradMap needs: it computes only the top filters of the classes in a batch), at most
    `per_class` of each class (the first ones), or all."""
    order = np.argsort(labels, kind="stable")
    if per_class is None:
        return order
    rank = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])
    return order[rank < per_class]


def localize(runs: list[Run], method_names, split: str = "test", settings: GradMapSettings = TEXT,
             shards: int = 2, filter_block: int = 512, batch_size: int = 64, per_class: int | None = None,
             progress=True) -> Localized:
    """Score every method on every run over the split's images (at most `per_class` of each
    class); bad input raises StudyError before any task starts."""
    import ray

    from analysis.studies import fan_out

    checked = check_runs(runs, method_names, split)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    _, names, labels = checked[runs[0].run_id]
    scored = first_per_class(labels, per_class)
    parts = np.array_split(scored, shards)
    top_scoring = "gradmap" in method_names and settings.scoring == "top-filters"
    stats = {}
    if "activmap" in method_names or top_scoring:
        found = fan_out("localize: statistics", {
            (run.run_id, i): (statistics_task, (run.checkpoint, split, part, "activmap" in method_names, batch_size))
            for run in runs for i, part in enumerate(parts)}, progress, gpus)
        for (run_id, _), part in found.items():
            stats[run_id] = stats[run_id] + part if run_id in stats else part
    thresholds = {run_id: top_thresholds(s.histogram) for run_id, s in stats.items() if s.histogram is not None}
    calls, context = {}, {}
    for run in runs:
        for name in method_names:
            method = build_method(name, settings)
            top_sets = stats[run.run_id].top_filters(settings.top_filters) if name == "gradmap" and top_scoring else None
            filters = np.arange(run.num_filters) if top_sets is None else np.flatnonzero(top_sets.any(0))
            blocks = [filters[i:i + filter_block] for i in range(0, len(filters), filter_block)] \
                if name == "gradmap" else [filters]
            context[run.run_id, name] = (method, top_sets)
            for i, part in enumerate(parts):
                for j, block in enumerate(blocks):
                    calls[run.run_id, name, i, j] = (score_task, (
                        run.checkpoint, name, settings, split, part, block, thresholds.get(run.run_id), top_sets,
                        batch_size))
    tallies = fan_out("localize", calls, progress, gpus)
    filter_frames, class_frames, seconds = [], [], {}
    for run in runs:
        for name in method_names:
            method, top_sets = context[run.run_id, name]
            total = merge([t for key, t in tallies.items() if key[:2] == (run.run_id, name)],
                          run.num_filters, run.num_classes, len(labels), scored)
            filters, classes = method_tables(run, method, total, labels[scored], names, top_sets)
            filter_frames += [filters] if filters is not None else []
            class_frames.append(classes)
            seconds[run.run_id, name] = total.seconds
    classes = pd.concat(class_frames, ignore_index=True).reindex(columns=[*class_frames[0].columns[:3], *METRICS,
                                                                         "n_filters", "n_images"])
    tables = {"localization": classes.astype({"n_filters": "Int64", "n_images": "Int64"})}
    if filter_frames:
        tables["localization_filters"] = pd.concat(filter_frames, ignore_index=True)
    return Localized(tables, seconds, thresholds, labels, names, scored)
