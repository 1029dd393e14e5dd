"""Localization figures: Fig. 9's grid (images, ground truth, the CAM of each run) and, per
run, the ActivMap of each class's best filter on a few images of that class. The maps come
from one Ray task per run (`example_maps`), on a GPU when the cluster has one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.figures import plt, save
from analysis.localization import first_per_class, open_split, restore
from analysis.saliency import CAM, ActivMap, iou


def best_filters(filters: pd.DataFrame, run_id: str) -> dict[int, int]:
    """Class -> the filter focused on it with the largest Avg-IoU, from ActivMap's rows."""
    rows = filters[(filters["run_id"].astype(str) == run_id) & (filters["method"] == "activmap") & filters["focus"]]
    best = rows.sort_values("avg_iou", ascending=False).groupby("class").head(1)
    return dict(zip(best["class"].astype(int), best["filter"].astype(int)))


def example_maps(checkpoint: str, split: str, indices, class_filters: dict | None = None,
                 thresholds: torch.Tensor | None = None, cam: bool = True) -> dict:
    """Images, masks, with `cam` the CAM of the labelled class (map, segmentation, IoU) and,
    with `class_filters`, the ActivMap of the label's best filter, for the chosen images."""
    model, cfg, device = restore(checkpoint)
    images, labels, masks, _ = next(iter(open_split(cfg, split, indices, len(indices))))
    images, masks = images.to(device), masks.to(device)
    forward = CAM().forward(model, images, labels)
    out = {"images": images.cpu().numpy(), "labels": labels.numpy(), "masks": masks.cpu().numpy()}
    if cam:
        maps, segments = CAM.maps(forward), CAM().segments(forward)
        out.update(cam=maps[:, 0].cpu().numpy(), cam_segments=segments[:, 0].cpu().numpy(),
                   cam_iou=iou(segments, masks)[:, 0].cpu().numpy())
    if class_filters:
        chosen = np.array([class_filters.get(int(y), -1) for y in labels])  # -1: no filter focused on it
        maps = ActivMap.maps(forward, chosen.clip(0)).diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # image i, filter i
        segments = maps >= thresholds[chosen.clip(0)].to(maps)[:, None, None]
        out.update(filters=chosen, activ=maps.cpu().numpy(), activ_segments=segments.cpu().numpy(),
                   activ_iou=iou(segments[:, None], masks)[:, 0].cpu().numpy())
    return out


def _show(ax, image: np.ndarray):
    ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax, image, heat, segment, title):
    _show(ax, image)
    ax.imshow(heat, cmap="jet", alpha=0.45)
    if segment.any() and not segment.all():
        ax.contour(segment.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.set_title(title, fontsize=7)


def plot_cams(examples: dict[str, dict], class_names, path: Path) -> Path:
    """Fig. 9: one column per image; rows: the image, its ground truth, then each run's CAM of
    the labelled class with its top-30% segmentation outlined and its IoU."""
    first = next(iter(examples.values()))
    n = len(first["labels"])
    fig, axes = plt.subplots(2 + len(examples), n, figsize=(1.3 * n + 1, 1.4 * (2 + len(examples))),
                             squeeze=False, constrained_layout=True)
    for i in range(n):
        _show(axes[0, i], first["images"][i])
        axes[0, i].set_title(class_names[int(first["labels"][i])], fontsize=7)
        _show(axes[1, i], first["masks"][i][None].astype(float))
        for row, maps in enumerate(examples.values(), start=2):
            _overlay(axes[row, i], maps["images"][i], maps["cam"][i], maps["cam_segments"][i],
                     f"IoU {maps['cam_iou'][i]:.2f}")
    axes[1, 0].set_ylabel("ground truth", fontsize=7)
    for row, label in enumerate(examples, start=2):
        axes[row, 0].set_ylabel(f"CAM\n{label.split()[0]} ({row - 1})", fontsize=7)
    fig.suptitle("CAM of the labelled class, top 30% outlined: " +
                 ", ".join(f"({row}) {label}" for row, label in enumerate(examples, start=1)), fontsize=8)
    return save(fig, path)


def plot_activmaps(maps: dict, class_names, label: str, path: Path) -> Path:
    """One row per class: its best filter's ActivMap on that class's example images."""
    classes = list(dict.fromkeys(int(y) for y, k in zip(maps["labels"], maps["filters"]) if k >= 0))
    per_class = max(int((maps["labels"] == c).sum()) for c in classes)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.4 * per_class + 1, 1.4 * len(classes)),
                             squeeze=False, constrained_layout=True)
    for row, c in enumerate(classes):
        for col, i in enumerate(np.flatnonzero(maps["labels"] == c)):
            _overlay(axes[row, col], maps["images"][i], maps["activ"][i], maps["activ_segments"][i],
                     f"IoU {maps['activ_iou'][i]:.2f}")
        for col in range(int((maps["labels"] == c).sum()), per_class):
            axes[row, col].axis("off")
        axes[row, 0].set_ylabel(f"{class_names[c]}\nfilter {maps['filters'][np.flatnonzero(maps['labels'] == c)[0]]}",
                                fontsize=7)
    fig.suptitle(f"ActivMap of each class's best filter, {label}", fontsize=8)
    return save(fig, path)


def draw(runs, found, split: str, figures_dir: Path, per_class: int = 3, echo=print) -> list[Path]:
    """Fig. 9's grid for all runs (when CAM ran) and each run's best-filter ActivMaps (when
    ActivMap ran)."""
    from analysis.fan_out import fan_out, gpus_per_task

    indices = first_per_class(found.labels, per_class)
    methods = set(found.tables["localization"]["method"])
    if not methods & {"cam", "activmap"}:
        return []
    filters = found.tables["localization_filters"] if "activmap" in methods else None
    calls = {run.run_id: (example_maps, (run.checkpoint, split, indices,
                                          None if filters is None else best_filters(filters, run.run_id),
                                          found.thresholds.get(run.run_id), "cam" in methods))
             for run in runs}
    maps = fan_out("localize: figures", calls, progress=False, num_gpus=gpus_per_task())
    stem = "_".join(run.run_id for run in runs)
    one_each = first_per_class(found.labels[indices], 1)
    grid = {run.label: {name: value[one_each] if isinstance(value, np.ndarray) else value
                        for name, value in maps[run.run_id].items()} for run in runs}
    paths = []
    if "cam" in methods:
        paths.append(plot_cams(grid, found.class_names, Path(figures_dir) / f"localization_cam_{stem}.png"))
    for run in runs:
        if "filters" in maps[run.run_id]:
            paths.append(plot_activmaps(maps[run.run_id], found.class_names, run.label,
                                        Path(figures_dir) / f"localization_activmap_{run.run_id}.png"))
    for path in paths:
        echo(f"figure: {path}")
    return paths


def plot_filter_iou(filters: pd.DataFrame, labels: dict[str, str], out) -> Path:
    """Per method, the distribution over filters of each run's Avg-IoU at its focus class(es)."""
    focused = filters[filters["focus"]]
    methods = list(dict.fromkeys(focused["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3), squeeze=False, constrained_layout=True)
    bins = np.linspace(0, 1, 41)
    for ax, method in zip(axes[0], methods):
        for run_id, rows in focused[focused["method"] == method].groupby("run_id", sort=False, observed=True):
            ax.hist(rows["avg_iou"], bins=bins, histtype="step", linewidth=1.4,
                    label=f"{labels[str(run_id)]} (mean {rows['avg_iou'].mean():.3f})")
        ax.set(title=method, xlabel="Avg-IoU of a filter at its focus class", ylabel="filters")
        ax.legend(fontsize=7)
    return save(fig, out)
