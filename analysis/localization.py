"""Localization with class-specific filters (paper Sec. 5.1, Table 2, Appendix H), on Ray.

One task per (run, method, shard of images), GradMap's also per block of filters, each on a GPU
when the cluster has one. A task thresholds and scores its maps batch by batch and returns only
sums (`Tally`): per (filter, class) the IoU and the AP hits over the shard's images, and per
image the IoU summed over the filters that score it. ActivMap's thresholds and the top filters
of each class come first, from one statistics task per (run, shard) (`Statistics`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from analysis.fan_out import fan_out, gpus_per_task
from analysis.localization_metrics import (
    AP_LEVELS,
    METRICS,
    Tally,
    merge,
    method_tables,
)
from analysis.options import Studied, option
from analysis.saliency import (
    AUTHORS,
    CHANNEL_REDUCTIONS,
    MAP_METHODS,
    SCORINGS,
    TEXT,
    GradMapSettings,
    activation_histogram,
    build_method,
    iou,
    top_thresholds,
)
from analysis.studies import Run, StudyError, resolve_runs, write_tables
from csg.method.features import default_device
from csg.store.results import register_schemas

MAX_MAP_ELEMENTS = 1 << 24  # pixels of maps held at once by a task: (batch x filters x H x W)

SCHEMAS = register_schemas({
    "localization_filters": pa.schema([("method", pa.string()), ("filter", pa.int64()), ("class", pa.int64()),
                                       ("avg_iou", pa.float64()), ("ap20", pa.float64()), ("ap30", pa.float64()),
                                       ("focus", pa.bool_())]),
    "localization": pa.schema([("method", pa.string()), ("class", pa.string()), ("avg_iou", pa.float64()),
                               ("ap20", pa.float64()), ("ap30", pa.float64()), ("n_filters", pa.int64()),
                               ("n_images", pa.int64())]),
})


@dataclass(frozen=True)
class Options(Studied):
    """The `localize` command's options; `gradmap()` and `scoring()` check and split them."""

    methods: tuple[str, ...] = option(MAP_METHODS, "techniques scored", choices=MAP_METHODS)
    sigma: float | None = option(None, f"GradMap blur sigma, pixels at 128 px, scaled to the image size "
                                       f"(text: {TEXT.sigma:g})")
    channels: str | None = option(None, f"GradMap colour-channel reduction (default {TEXT.channels})",
                                  choices=CHANNEL_REDUCTIONS)
    scoring: str | None = option(None, f"GradMap: every filter with its focus class, or each image with its "
                                       f"class's top filters (default {TEXT.scoring})", choices=SCORINGS)
    top_filters: int | None = option(None, f"with --scoring top-filters: filters per class "
                                           f"(default {TEXT.top_filters})")
    authors_settings: bool = option(False, f"GradMap as the authors' code: sigma {AUTHORS.sigma:g} (kernel +-1 "
                                           f"sigma), {AUTHORS.channels} channels, {AUTHORS.scoring} "
                                           f"{AUTHORS.top_filters}")
    shards: int = option(2, "Ray tasks per (run, method), each a slice of images")
    filter_block: int = option(512, "GradMap filters per Ray task")
    batch_size: int = option(64, "images per batch in a task")
    per_class: int | None = option(None, "score at most this many images of each class (the first ones; "
                                         "default: all)")
    examples: int = option(3, "images per class in the figures")

    def gradmap(self) -> GradMapSettings:
        """GradMap's settings: the text's, changed by the options given, or the authors'."""
        given = {name: getattr(self, name) for name in ("sigma", "channels", "scoring", "top_filters")
                 if getattr(self, name) is not None}
        if self.authors_settings and given:
            raise StudyError(f"--authors-settings sets GradMap's options; drop --{next(iter(given)).replace('_', '-')}")
        settings = AUTHORS if self.authors_settings else replace(TEXT, **given)
        if settings.sigma < 0 or settings.top_filters < 1:
            raise StudyError("--sigma must be >= 0 and --top-filters >= 1")
        return settings

    def scoring_settings(self) -> Scoring:
        per_class = 1 if self.per_class is None else self.per_class
        if min(self.shards, self.filter_block, self.batch_size, self.examples, per_class) < 1:
            raise StudyError("--shards, --filter-block, --batch-size, --per-class and --examples must be >= 1")
        return Scoring(self.methods, self.split, self.gradmap(), self.shards, self.filter_block, self.batch_size,
                       self.per_class)


@dataclass(frozen=True)
class Scoring:
    """What `localize` scores and how its work is cut into Ray tasks."""

    methods: tuple[str, ...] = MAP_METHODS
    split: str = "test"
    settings: GradMapSettings = TEXT
    shards: int = 2  # tasks per (run, method), each a slice of the images
    filter_block: int = 512  # GradMap filters per task
    batch_size: int = 64
    per_class: int | None = None  # at most this many images of each class (the first ones), or all


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
    device = default_device()
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


def check_runs(runs: list[Run], methods, split: str) -> dict:
    """Run id -> (config, class names, labels) after refusing bad input with a StudyError:
    a split without masks, masks of the wrong size, a model without a GAP + linear head for CAM."""
    from csg import data as data_lib
    from csg.store import checkpoint as ckpt_lib

    checked = {}
    for run in runs:
        model, cfg, _ = ckpt_lib.restore_model(run.checkpoint)
        if "cam" in methods and model.linear_head is None:
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


def localize(runs: list[Run], scoring: Scoring = Scoring(), progress=True, start=None) -> Localized:
    """Score every method on every run over the split's images (at most `per_class` of each
    class); bad input raises StudyError before `start()` starts Ray."""
    checked = check_runs(runs, scoring.methods, scoring.split)
    if start is not None:
        start()
    gpus = gpus_per_task()
    _, names, labels = checked[runs[0].run_id]
    scored = first_per_class(labels, scoring.per_class)
    parts = np.array_split(scored, scoring.shards)
    top_scoring = "gradmap" in scoring.methods and scoring.settings.scoring == "top-filters"
    stats = split_statistics(runs, scoring, parts, top_scoring, gpus, progress)
    thresholds = {run_id: top_thresholds(s.histogram) for run_id, s in stats.items() if s.histogram is not None}
    calls, context = {}, {}
    for run in runs:
        for name in scoring.methods:
            top_sets = stats[run.run_id].top_filters(scoring.settings.top_filters) \
                if name == "gradmap" and top_scoring else None
            context[run.run_id, name] = (build_method(name, scoring.settings), top_sets)
            calls.update(score_calls(run, name, scoring, parts, thresholds.get(run.run_id), top_sets))
    totals = merged(runs, scoring.methods, fan_out("localize", calls, progress, gpus), labels, scored)
    return Localized(tables_of(runs, scoring.methods, context, totals, labels[scored], names),
                     {key: total.seconds for key, total in totals.items()}, thresholds, labels, names, scored)


def split_statistics(runs, scoring: Scoring, parts, top_scoring: bool, gpus: int, progress) -> dict:
    """Run id -> its `Statistics` over the images scored, when ActivMap or top-filters GradMap needs them."""
    if "activmap" not in scoring.methods and not top_scoring:
        return {}
    found = fan_out("localize: statistics", {
        (run.run_id, i): (statistics_task, (run.checkpoint, scoring.split, part, "activmap" in scoring.methods,
                                            scoring.batch_size))
        for run in runs for i, part in enumerate(parts)}, progress, gpus)
    stats = {}
    for (run_id, _), part in found.items():
        stats[run_id] = stats[run_id] + part if run_id in stats else part
    return stats


def score_calls(run: Run, name: str, scoring: Scoring, parts, thresholds, top_sets) -> dict:
    """The scoring tasks of one (run, method): per shard of images and, for GradMap, per block of filters."""
    filters = np.arange(run.num_filters) if top_sets is None else np.flatnonzero(top_sets.any(0))
    blocks = [filters[i:i + scoring.filter_block] for i in range(0, len(filters), scoring.filter_block)] \
        if name == "gradmap" else [filters]
    return {(run.run_id, name, i, j): (score_task, (run.checkpoint, name, scoring.settings, scoring.split, part,
                                                     block, thresholds, top_sets, scoring.batch_size))
            for i, part in enumerate(parts) for j, block in enumerate(blocks)}


def merged(runs, methods, tallies: dict, labels, scored) -> dict:
    """(run id, method) -> the `Tally` of all its tasks."""
    return {(run.run_id, name): merge([t for key, t in tallies.items() if key[:2] == (run.run_id, name)],
                                      run.num_filters, run.num_classes, len(labels), scored)
            for run in runs for name in methods}


def tables_of(runs, methods, context: dict, totals: dict, labels, names) -> dict:
    """Both localization tables from each (run, method)'s merged tally; `labels` those of the images scored."""
    filter_frames, class_frames = [], []
    for run in runs:
        for name in methods:
            method, top_sets = context[run.run_id, name]
            filters, classes = method_tables(run, method, totals[run.run_id, name], labels, names, top_sets)
            filter_frames += [filters] if filters is not None else []
            class_frames.append(classes)
    classes = pd.concat(class_frames, ignore_index=True).reindex(columns=[*class_frames[0].columns[:3], *METRICS,
                                                                         "n_filters", "n_images"])
    tables = {"localization": classes.astype({"n_filters": "Int64", "n_images": "Int64"})}
    if filter_frames:
        tables["localization_filters"] = pd.concat(filter_frames, ignore_index=True)
    return tables


def main(store, options: Options, start=None, echo=print) -> Localized:
    """Table 2 and Fig. 9 for `options.runs`: refuse bad input (StudyError), `start()` Ray,
    score, write both tables, print Table 2 and the time per image, draw the figures."""
    from analysis.localization_metrics import table2
    from analysis.localization_plots import draw

    runs = resolve_runs(store, options.runs, options.checkpoint)
    scoring = options.scoring_settings()
    found = localize(runs, scoring, start=start)
    write_tables(store, found.tables)
    labels = {run.run_id: run.label for run in runs}
    echo(f"\nlocalization of {len(found.scored)} images of the {scoring.split} split, as Table 2 (GradMap: "
         f"{scoring.settings})")
    echo(table2(found.tables["localization"], labels).to_string(float_format="{:.4f}".format))
    for (run_id, method), seconds in found.seconds.items():
        echo(f"{labels[run_id]} {method}: {seconds:.1f} s in tasks, {1000 * seconds / len(found.scored):.2f} ms "
             f"per image")
    draw(runs, found, scoring.split, Path(options.results) / "figures", options.examples)
    return found
