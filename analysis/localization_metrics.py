"""The metrics of Appendix H from what the localization tasks return: `Tally` (sums, additive
over tasks), merged over a split, then per (filter, class) with each filter's focus class, per
class, and Table 2's shape."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.saliency import MAP_METHODS, build_method
from analysis.studies import Run

AP_LEVELS = (20, 30)


@dataclass
class Tally:
    """Additive sums of one task: `filters` (F,), per (filter, class) `iou_sum` and `hits`
    (AP level -> count of IoU >= level%); per image of the shard (`image_index`) the IoU
    summed over its scoring filters and their number."""

    filters: np.ndarray
    iou_sum: np.ndarray
    hits: dict
    image_index: np.ndarray
    image_iou_sum: np.ndarray
    image_scored: np.ndarray
    seconds: float = 0.0


def focus_classes(frame: pd.DataFrame, level: int) -> pd.Series:
    """Per (filter, class) rows -> bool: the class c* = argmax_c AP<level>_c^k of each filter
    (Appendix H.1), ties broken by the larger Avg-IoU, then the smaller class."""
    ranked = frame.sort_values(["filter", f"ap{level}", "avg_iou", "class"], ascending=[True, False, False, True])
    best = ranked.groupby("filter", sort=False).head(1).index
    return pd.Series(frame.index.isin(best), index=frame.index)


def filter_rows(total: Tally, images: np.ndarray, level: int, top_sets=None) -> pd.DataFrame:
    """One row per (scored filter, class with images; `images` (C,) counts them): Avg-IoU,
    AP20, AP30 and `focus`, the filter's focus class; with `top_sets`, only the pairs of a
    class and one of its top filters (the others were not computed on every image of the
    class), all `focus`."""
    classes = np.flatnonzero(images > 0)
    filters, cls = np.meshgrid(total.filters, classes, indexing="ij")
    frame = pd.DataFrame({"filter": filters.ravel(), "class": cls.ravel(),
                          "avg_iou": (total.iou_sum[:, classes] / images[classes]).ravel()})
    for level_ in AP_LEVELS:
        frame[f"ap{level_}"] = (total.hits[level_][:, classes] / images[classes]).ravel()
    if top_sets is not None:
        return frame[top_sets[frame["class"], frame["filter"]]].assign(focus=True).reset_index(drop=True)
    frame["focus"] = focus_classes(frame, level).to_numpy()
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


def merge(tallies: list[Tally], num_filters: int, num_classes: int, num_images: int, scored: np.ndarray) -> Tally:
    """Sum task tallies (shards of images, blocks of filters) into one over the `scored` images
    of a split of `num_images`; per-image arrays follow the order of `scored`."""
    iou_sum = np.zeros((num_filters, num_classes))
    hits = {level: np.zeros((num_filters, num_classes)) for level in AP_LEVELS}
    image_sums, image_scored = np.zeros(num_images), np.zeros(num_images)
    scored_filters = set()
    for tally in tallies:
        iou_sum[tally.filters] += tally.iou_sum
        for level in AP_LEVELS:
            hits[level][tally.filters] += tally.hits[level]
        np.add.at(image_sums, tally.image_index, tally.image_iou_sum)
        np.add.at(image_scored, tally.image_index, tally.image_scored)
        scored_filters.update(tally.filters.tolist())
    filters = np.array(sorted(scored_filters), dtype=np.int64)
    return Tally(filters, iou_sum[filters], {level: h[filters] for level, h in hits.items()}, scored,
                 image_sums[scored], image_scored[scored], sum(t.seconds for t in tallies))


def method_tables(run: Run, method, total: Tally, labels: np.ndarray, class_names, top_sets=None):
    """(localization_filters rows, localization rows) of one run and method; `labels` are
    those of the scored images, in `total`'s order."""
    per_image = not method.per_filter or top_sets is not None
    images = np.bincount(labels, minlength=len(class_names)).astype(float)
    filters = filter_rows(total, images, method.ap, top_sets) if method.per_filter else None
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


def table2(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Table 2's shape: rows (method, metric, run), one column per class and `total`; each
    method with Avg-IoU and the AP the paper reports for it (GradMap AP20, the others AP30)."""
    rows = []
    for method in [m for m in MAP_METHODS if m in set(frame["method"])]:
        for metric in ("avg_iou", f"ap{build_method(method).ap}"):
            for run_id, group in frame[frame["method"] == method].groupby("run_id", sort=False, observed=True):
                rows.append({"method": method, "metric": metric, "run": labels[str(run_id)],
                             **dict(zip(group["class"], group[metric]))})
    return pd.DataFrame(rows).set_index(["method", "metric", "run"])
