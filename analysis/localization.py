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

from analysis.saliency import METHODS, GradMapSettings, activation_histogram, build_method, iou, top_thresholds
from analysis.studies import Run, StudyError

AP_LEVELS = (20, 30)
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


@dataclass
class Tally:
    """Additive sums of one task: `filters` (F,), per (filter, class) `iou_sum` and `hits`
    (AP level -> count of IoU >= level%), `images` (C,) per class; per image of the shard
    (`image_index`) the IoU summed over its scoring filters and their number."""

    filters: np.ndarray
    iou_sum: np.ndarray
    hits: dict
    images: np.ndarray
    image_index: np.ndarray
    image_iou_sum: np.ndarray
    image_scored: np.ndarray
    seconds: float = 0.0


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

    images = data_lib.evaluation_set(cfg.dataset, cfg.data, split, cfg.image_size)
    masks = data_lib.evaluation_masks(cfg.dataset, split, cfg.data, cfg.image_size)
    return torch.utils.data.DataLoader(MaskedSplit(images, masks, indices), batch_size=batch_size)


def restore(checkpoint: str):
    from csg import checkpoint as ckpt_lib

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
    ((C, K) bool) an image is scored by the mean IoU of its class's filters among `filters`;
    otherwise a per-filter method's per-image sums stay empty."""
    filters = np.asarray(filters if method.per_filter else [], dtype=np.int64)
    f = len(filters)
    iou_sum, hits = np.zeros((f, num_classes)), {level: np.zeros((f, num_classes)) for level in AP_LEVELS}
    images_per_class = np.zeros(num_classes)
    indices, image_sums, image_scored = [], [], []
    for images, labels, masks, index in loader:
        images, masks = images.to(device), masks.to(device)
        onehot = np.eye(num_classes)[labels.numpy()]  # (B, C)
        images_per_class += onehot.sum(0)
        indices.append(index.numpy())
        if not method.per_filter:
            ious = iou(method.segments(model, images, labels), masks).cpu().numpy()[:, 0]
            image_sums.append(ious)
            image_scored.append(np.ones_like(ious))
            continue
        sums, scored = np.zeros(len(labels)), np.zeros(len(labels))
        chunk = max(1, MAX_MAP_ELEMENTS // (len(labels) * images[0, 0].numel()))
        for start in range(0, f, chunk):
            block = filters[start:start + chunk]
            ious = iou(method.segments(model, images, labels, block, thresholds), masks).cpu().numpy()  # (B, F)
            iou_sum[start:start + len(block)] += ious.T @ onehot
            for level in AP_LEVELS:
                hits[level][start:start + len(block)] += (ious >= level / 100).T @ onehot
            if top_sets is not None:
                chosen = top_sets[labels.numpy()][:, block]
                sums += (ious * chosen).sum(1)
                scored += chosen.sum(1)
        image_sums.append(sums)
        image_scored.append(scored)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))
    return Tally(filters, iou_sum, hits, images_per_class, cat(indices).astype(np.int64), cat(image_sums),
                 cat(image_scored))


def has_gap_linear_head(model: nn.Module) -> bool:
    """CAM needs logits = Linear(GAP(A)): the GatedClassifier head, not overridden."""
    from csg.models import GatedClassifier

    return isinstance(getattr(model, "fc", None), nn.Linear) and type(model).classify is GatedClassifier.classify


# ---------------------------------------------------------------- tables


def focus_classes(frame: pd.DataFrame, level: int) -> pd.Series:
    """Per (filter, class) rows -> bool: the class c* = argmax_c AP<level>_c^k of each filter
    (Appendix H.1), ties broken by the larger Avg-IoU, then the smaller class."""
    ranked = frame.sort_values(["filter", f"ap{level}", "avg_iou", "class"], ascending=[True, False, False, True])
    best = ranked.groupby("filter", sort=False).head(1).index
    return pd.Series(frame.index.isin(best), index=frame.index)


def filter_rows(total: Tally, level: int, top_sets=None) -> pd.DataFrame:
    """One row per (scored filter, class with images): Avg-IoU, AP20, AP30 and `focus`: the
    filter's focus class, or with `top_sets` the classes whose top filters it is among."""
    classes = np.flatnonzero(total.images > 0)
    filters, cls = np.meshgrid(total.filters, classes, indexing="ij")
    frame = pd.DataFrame({"filter": filters.ravel(), "class": cls.ravel(),
                          "avg_iou": (total.iou_sum[:, classes] / total.images[classes]).ravel()})
    for level_ in AP_LEVELS:
        frame[f"ap{level_}"] = (total.hits[level_][:, classes] / total.images[classes]).ravel()
    frame["focus"] = (top_sets[frame["class"], frame["filter"]] if top_sets is not None
                      else focus_classes(frame, level).to_numpy())
    return frame


METRICS = ("avg_iou", *(f"ap{level}" for level in AP_LEVELS))


def class_rows_from_filters(filters: pd.DataFrame, class_names) -> pd.DataFrame:
    """Appendix H.1: per class c the mean over the filters focused on c (F_c) of their metrics
    at c; `total` the mean over every filter. n_filters = |F_c| (K for total)."""
    focused = filters[filters["focus"]]
    rows = [{"class": name, **{m: (focused.loc[focused["class"] == c, m].mean()) for m in METRICS},
             "n_filters": int((focused["class"] == c).sum())} for c, name in enumerate(class_names)]
    rows.append({"class": "total", **{m: focused[m].mean() for m in METRICS}, "n_filters": len(focused)})
    return pd.DataFrame(rows)


def class_rows_from_images(image_iou: np.ndarray, labels: np.ndarray, class_names) -> pd.DataFrame:
    """Appendix H.2 (and the code's top-filters GradMap): per class the mean over its images of
    their IoU and of IoU >= n%; `total` over every image. n_images counts them."""
    def metrics(values):
        return {"avg_iou": values.mean() if len(values) else np.nan,
                **{f"ap{level}": (values >= level / 100).mean() if len(values) else np.nan for level in AP_LEVELS},
                "n_images": len(values)}
    rows = [{"class": name, **metrics(image_iou[labels == c])} for c, name in enumerate(class_names)]
    rows.append({"class": "total", **metrics(image_iou)})
    return pd.DataFrame(rows)


def merge(tallies: list[Tally], num_filters: int, labels: np.ndarray, num_classes: int) -> Tally:
    """Sum task tallies (shards of images, blocks of filters) into one over the whole split."""
    iou_sum = np.zeros((num_filters, num_classes))
    hits = {level: np.zeros((num_filters, num_classes)) for level in AP_LEVELS}
    image_sums, image_scored = np.zeros(len(labels)), np.zeros(len(labels))
    scored_filters = set()
    for tally in tallies:
        iou_sum[tally.filters] += tally.iou_sum
        for level in AP_LEVELS:
            hits[level][tally.filters] += tally.hits[level]
        np.add.at(image_sums, tally.image_index, tally.image_iou_sum)
        np.add.at(image_scored, tally.image_index, tally.image_scored)
        scored_filters.update(tally.filters.tolist())
    filters = np.array(sorted(scored_filters), dtype=np.int64)
    return Tally(filters, iou_sum[filters], {level: h[filters] for level, h in hits.items()},
                 np.bincount(labels, minlength=num_classes).astype(float), np.arange(len(labels)), image_sums,
                 image_scored,
                 sum(t.seconds for t in tallies))


def method_tables(run: Run, method, total: Tally, labels: np.ndarray, class_names, top_sets=None):
    """(localization_filters rows, localization rows) of one run and method."""
    per_image = not method.per_filter or top_sets is not None
    filters = filter_rows(total, method.ap, top_sets) if method.per_filter else None
    if per_image:
        image_iou = total.image_iou_sum / np.maximum(total.image_scored, 1)
        classes = class_rows_from_images(image_iou, labels, class_names)
    else:
        classes = class_rows_from_filters(filters, class_names)
    for frame in (filters, classes):
        if frame is not None:
            frame.insert(0, "method", method.name)
            frame.insert(0, "run_id", run.run_id)
    return filters, classes


def check_runs(runs: list[Run], methods, split: str) -> dict:
    """Run id -> (config, class names, labels) after refusing bad input with a StudyError:
    a split without masks, masks of the wrong size, a model without a GAP + linear head for CAM."""
    from csg import checkpoint as ckpt_lib
    from csg import data as data_lib

    checked = {}
    for run in runs:
        model, cfg, _ = ckpt_lib.restore_model(run.checkpoint)
        if "cam" in methods and not has_gap_linear_head(model):
            raise StudyError(f"--methods cam: run {run.run_id}'s model does not end in global average pooling "
                             f"and one linear layer")
        try:
            images = data_lib.evaluation_set(cfg.dataset, cfg.data, split, cfg.image_size)
            masks = data_lib.evaluation_masks(cfg.dataset, split, cfg.data, cfg.image_size)
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
    the ActivMap thresholds, and the split's labels and class names (for the figures)."""

    tables: dict
    seconds: dict
    thresholds: dict
    labels: np.ndarray
    class_names: list


def localize(runs: list[Run], method_names, split: str = "test", settings: GradMapSettings = GradMapSettings(),
             shards: int = 2, filter_block: int = 512, batch_size: int = 64, progress=True) -> Localized:
    """Score every method on every run over the split's images; bad input raises StudyError
    before any task starts."""
    import ray

    from analysis.studies import fan_out

    checked = check_runs(runs, method_names, split)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    parts = {run.run_id: np.array_split(np.arange(len(checked[run.run_id][2])), shards) for run in runs}
    top_scoring = "gradmap" in method_names and settings.scoring == "top-filters"
    stats = {}
    if "activmap" in method_names or top_scoring:
        found = fan_out("localize: statistics", {
            (run.run_id, i): (statistics_task, (run.checkpoint, split, part, "activmap" in method_names, batch_size))
            for run in runs for i, part in enumerate(parts[run.run_id])}, progress, gpus)
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
            for i, part in enumerate(parts[run.run_id]):
                for j, block in enumerate(blocks):
                    calls[run.run_id, name, i, j] = (score_task, (
                        run.checkpoint, name, settings, split, part, block, thresholds.get(run.run_id), top_sets,
                        batch_size))
    tallies = fan_out("localize", calls, progress, gpus)
    filter_frames, class_frames, seconds = [], [], {}
    for run in runs:
        _, names, labels = checked[run.run_id]
        for name in method_names:
            method, top_sets = context[run.run_id, name]
            total = merge([t for key, t in tallies.items() if key[:2] == (run.run_id, name)],
                          run.num_filters, labels, run.num_classes)
            filters, classes = method_tables(run, method, total, labels, names, top_sets)
            filter_frames += [filters] if filters is not None else []
            class_frames.append(classes)
            seconds[run.run_id, name] = total.seconds
    classes = pd.concat(class_frames, ignore_index=True).reindex(columns=[*class_frames[0].columns[:3], *METRICS,
                                                                         "n_filters", "n_images"])
    tables = {"localization": classes.astype({"n_filters": "Int64", "n_images": "Int64"})}
    if filter_frames:
        tables["localization_filters"] = pd.concat(filter_frames, ignore_index=True)
    _, names, labels = checked[runs[0].run_id]
    return Localized(tables, seconds, thresholds, labels, names)


def table2(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Table 2's shape: rows (method, metric, run), one column per class and `total`; each
    method with Avg-IoU and the AP the paper reports for it (GradMap AP20, the others AP30)."""
    rows = []
    for method in [m for m in METHODS if m in set(frame["method"])]:
        for metric in ("avg_iou", f"ap{build_method(method).ap}"):
            for run_id, group in frame[frame["method"] == method].groupby("run_id", sort=False, observed=True):
                rows.append({"method": method, "metric": metric, "run": labels[str(run_id)],
                             **dict(zip(group["class"], group[metric]))})
    return pd.DataFrame(rows).set_index(["method", "metric", "run"])
