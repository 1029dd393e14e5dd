"""Masking (Sec. 4.2, Fig. 5): zero the filters related to some classes and compare the
confusion matrix before and after. If a CSG model's filters are class-specific, masking the
filters of class c kills class c and spares the others; an STD model's do not.

Which filters are "related" is a rule, one small class each (`select` is the one step):
- `gate`: G[c, k] > tau for a masked class c (CSG runs; tau = 0.5 as in the paper);
- `activation`: the `fraction` of filters with the largest mean activation on the masked
  classes' samples (the paper's rule for STD models, 10%);
- `random`: as many filters as the run's own rule masks, drawn at random (a control the paper
  lacks: it tells a specific drop from the effect of the count alone).

Masking acts on the GAP features: GAP is linear, so zeroing feature k is exactly zeroing
filter k's activation map before the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.fan_out import fan_out
from analysis.gate_stats import DEFAULT_TAU, owns
from analysis.options import Studied, option
from analysis.studies import RunArrays, StudyError, check_classes, labelled
from csg.store.results import register_schemas

DEFAULT_FRACTION = 0.1
RULES = ("gate", "activation", "random")

SCHEMAS = register_schemas({
    "masking": pa.schema([("mask_set", pa.string()), ("rule", pa.string()), ("n_masked", pa.int64()),
                          ("true_class", pa.int64()), ("predicted_class", pa.int64()), ("count", pa.int64()),
                          ("before_count", pa.int64())]),
})


@dataclass(frozen=True)
class Options(Studied):
    mask_sets: tuple[str, ...] = option(("0", "0,5"), "class sets masked together, e.g. 0 0,5")
    rule: str | None = option(None, "filters related to a class (default: gate for CSG, activation for STD runs)",
                              choices=RULES)
    tau: float = option(DEFAULT_TAU, "gate rule: G[c, k] > tau")
    fraction: float = option(DEFAULT_FRACTION, "activation rule: share of filters")
    seed: int = option(0, "seed of the random draws")


class MaskingRule:
    """The filters related to a set of classes; subclasses override `select`."""

    name = ""

    def select(self, arrays: RunArrays, classes: tuple[int, ...]) -> np.ndarray:
        """(K,) bool: the filters to zero."""
        raise NotImplementedError


class GateRule(MaskingRule):
    name = "gate"

    def __init__(self, tau: float = DEFAULT_TAU):
        self.tau = tau

    def select(self, arrays, classes):
        if arrays.gate is None:
            raise StudyError("--rule: gate needs CSG runs (an STD run has no gate); use activation or random")
        return owns(arrays.gate[list(classes)], self.tau).any(axis=0)


class ActivationRule(MaskingRule):
    name = "activation"

    def __init__(self, fraction: float = DEFAULT_FRACTION):
        self.fraction = fraction

    def select(self, arrays, classes):
        chosen = np.isin(arrays.labels, classes)
        mean = arrays.features[chosen].mean(axis=0) if chosen.any() else np.zeros(arrays.num_filters)
        count = max(1, round(self.fraction * arrays.num_filters))
        selected = np.zeros(arrays.num_filters, bool)
        selected[np.argsort(-mean, kind="stable")[:count]] = True
        return selected


class RandomRule(MaskingRule):
    name = "random"

    def __init__(self, reference: MaskingRule, seed: int = 0):
        self.reference, self.seed = reference, seed

    def select(self, arrays, classes):
        count = int(self.reference.select(arrays, classes).sum())
        selected = np.zeros(arrays.num_filters, bool)
        selected[np.random.default_rng([self.seed, *classes]).choice(arrays.num_filters, count, replace=False)] = True
        return selected


def rule_for(name: str | None, method: str, tau: float, fraction: float, seed: int) -> MaskingRule:
    """The named rule, or the run's own (gate for CSG runs, activation for STD runs)."""
    own = GateRule(tau) if method == "csg" else ActivationRule(fraction)
    return {None: own, "gate": GateRule(tau), "activation": ActivationRule(fraction),
            "random": RandomRule(own, seed)}[name]


def parse_mask_set(text: str) -> tuple[int, ...]:
    """'0,5' -> (0, 5)."""
    try:
        classes = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise StudyError(f"--mask-sets: {text!r} is not a comma-separated list of class ids") from None
    return classes


def options(runs, store, mask_sets, rule=None, tau=DEFAULT_TAU, fraction=DEFAULT_FRACTION, seed=0) -> dict:
    """Checked keyword arguments of `run` from the command line's values."""
    if not 0 < tau < 1:
        raise StudyError(f"--tau: must be in (0, 1) (got {tau})")
    if not 0 < fraction <= 1:
        raise StudyError(f"--fraction: must be in (0, 1] (got {fraction})")
    if rule == "gate" and any(run.method != "csg" for run in runs):
        raise StudyError("--rule: gate needs CSG runs (an STD run has no gate); use activation or random")
    parsed = [parse_mask_set(text) for text in mask_sets]
    for classes in parsed:
        check_classes("--mask-sets", classes, runs[0].num_classes)
    return {"mask_sets": parsed, "rule": rule, "tau": tau, "fraction": fraction, "seed": seed}


def confusion(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted class."""
    return np.bincount(true * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mask_rows(arrays: RunArrays, run_id: str, classes: tuple[int, ...], rule: MaskingRule) -> pd.DataFrame:
    """Rows of the `masking` table for one run and mask set: the whole confusion matrix after
    masking, beside the one before."""
    masked = rule.select(arrays, classes)
    if masked.all():
        raise StudyError(f"--mask-sets: {','.join(map(str, classes))} masks all {arrays.num_filters} filters of run "
                         f"{run_id} under rule {rule.name}; nothing would be left to classify with")
    c = arrays.num_classes
    before = confusion(arrays.labels, arrays.predict(), c)
    after = confusion(arrays.labels, arrays.predict(~masked), c)
    true, predicted = np.indices((c, c))
    return pd.DataFrame({
        "run_id": run_id, "mask_set": ",".join(map(str, classes)), "rule": rule.name,
        "n_masked": int(masked.sum()), "true_class": true.ravel(), "predicted_class": predicted.ravel(),
        "count": after.ravel(), "before_count": before.ravel(),
    })


def run(runs, arrays: dict, mask_sets, rule: str | None = None, tau: float = DEFAULT_TAU,
        fraction: float = DEFAULT_FRACTION, seed: int = 0) -> dict[str, pd.DataFrame]:
    """One Ray task per (run, mask set)."""
    calls = {(run.run_id, classes): (mask_rows, (arrays[run.run_id], run.run_id, classes,
                                                 rule_for(rule, run.method, tau, fraction, seed)))
             for run in runs for classes in mask_sets}
    return {"masking": pd.concat(fan_out("masking", calls).values(), ignore_index=True)}


def recalls(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (run, mask set): recall of the masked classes and mean recall of the others, before
    and after."""
    rows = []
    for (run_id, mask_set), part in frame.groupby(["run_id", "mask_set"], sort=False, observed=True):
        masked = [int(c) for c in mask_set.split(",")]
        row = {"run_id": run_id, "mask_set": mask_set, "rule": part["rule"].iloc[0],
               "n_masked": int(part["n_masked"].iloc[0])}
        for when, column in (("before", "before_count"), ("after", "count")):
            matrix = part.pivot(index="true_class", columns="predicted_class", values=column).to_numpy()
            with np.errstate(invalid="ignore"):
                recall = np.diag(matrix) / matrix.sum(axis=1)
            others = np.setdiff1d(np.arange(len(recall)), masked)
            row[f"masked_{when}"] = float(np.nanmean(recall[masked]))
            row[f"others_{when}"] = float(np.nanmean(recall[others]))
        rows.append(row)
    return pd.DataFrame(rows)


def headline(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> pd.DataFrame:
    return labelled(recalls(tables["masking"]), labels)


def summary(tables: dict[str, pd.DataFrame], labels: dict[str, str]) -> str:
    return ("recall of the masked classes and mean recall of the others, before -> after masking (Fig. 5)\n"
            + headline(tables, labels).to_string(index=False, float_format="{:.3f}".format))


def plot(tables: dict[str, pd.DataFrame], labels: dict[str, str], out) -> None:
    """Row-normalised confusion matrices after masking: a row per run, a column per mask set."""
    from analysis.figures import plt, save

    frame = tables["masking"]
    run_ids = list(dict.fromkeys(frame["run_id"].astype(str)))
    sets = list(dict.fromkeys(frame["mask_set"]))
    fig, axes = plt.subplots(len(run_ids), len(sets), figsize=(3.4 * len(sets), 3.2 * len(run_ids)),
                             squeeze=False, constrained_layout=True)
    for i, run_id in enumerate(run_ids):
        for j, mask_set in enumerate(sets):
            part = frame[(frame["run_id"].astype(str) == run_id) & (frame["mask_set"] == mask_set)]
            matrix = part.pivot(index="true_class", columns="predicted_class", values="count").to_numpy()
            shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
            image = axes[i, j].imshow(shown, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            axes[i, j].set(xlabel="predicted", ylabel="true",
                           title=f"{labels.get(run_id, run_id)}\nmask {mask_set}: {part['n_masked'].iloc[0]} "
                                 f"filters ({part['rule'].iloc[0]})")
            axes[i, j].title.set_fontsize(8)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, label="share of the true class")
    save(fig, out)

