"""The paper's published figures (Liang et al., ECCV 2020), to set beside a run of the same
experiment: a user who runs the CIFAR-10 recipe sees at a glance whether it reproduced.

Only figures the paper prints as numbers are here. Table 3 (adversarial detection), Figs. 5
(masking), 6 (similarity), 7 (C_IC, r_0.1) and 11 (k-means) give theirs in images the text does
not carry; their sections say so. The paper has no CIFAR-100 experiment, and its AlexNet (on
CIFAR-10) appears only in Fig. 7.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

CIFAR10_RESNET20 = "CIFAR-10 ResNet-20"
IMAGENET_RESNET18 = "ImageNet ResNet-18"
VOC_RESNET152 = "PASCAL VOC 2010 ResNet-152 (six animals)"
CIFAR10_ALEXNET = "CIFAR-10 AlexNet"


@dataclass(frozen=True)
class Published:
    section: str  # the report section (its anchor) the figures belong to
    experiment: str
    source: str  # where in the paper
    figures: dict  # what -> value, as the paper prints it


PUBLISHED = (
    Published("overview", CIFAR10_RESNET20, "Table 1",
              {"CSG accuracy": 0.9192, "CSG MIS": 0.1603, "CSG L1-density": 0.1000, "L1-interval": "[0.1, 0.1]",
               "STD accuracy": 0.9169, "STD MIS": 0.1119}),
    Published("overview", IMAGENET_RESNET18, "Table 1",
              {"CSG accuracy": 0.6784, "CSG MIS": 0.6259, "CSG L1-density": 0.0016, "L1-interval": "[0.001, 0.1]",
               "STD accuracy": 0.6976, "STD MIS": 0.5514}),
    Published("overview", VOC_RESNET152, "Table 1",
              {"CSG accuracy": 0.8518, "CSG MIS": 0.1998, "CSG L1-density": 0.1996, "L1-interval": "[0.1667, 0.2]",
               "STD accuracy": 0.8447, "STD MIS": 0.1428}),
    Published("gate_stats", CIFAR10_RESNET20, "Appendix E (20 CSG gates)",
              {"m1, filters a class monopolizes": "about 6", "m2, filters shared": "about 4"}),
    Published("localization", VOC_RESNET152, "Table 2, all six classes",
              {"GradMap one filter Avg-IoU, CSG / STD": "0.3035 / 0.2606",
               "GradMap one filter AP20, CSG / STD": "0.8165 / 0.7029",
               "ActivMap one filter Avg-IoU, CSG / STD": "0.4289 / 0.3602",
               "ActivMap one filter AP30, CSG / STD": "0.8251 / 0.6759",
               "CAM all filters Avg-IoU, CSG / STD": "0.3694 / 0.3483",
               "CAM all filters AP30, CSG / STD": "0.7300 / 0.6853"}),
    Published("blackbox", CIFAR10_RESNET20, "Table 4",
              {"accuracy, STD / CSG": "88.03% / 88.85%", "one-pixel attack success, STD / CSG": "14.00% / 2.00%",
               "local-search attack success, STD / CSG": "15.00% / 2.00%"}),
)
NOT_IN_TEXT = {
    "masking": "Fig. 5 gives its confusion matrices after masking as images only",
    "similarity": "Fig. 6 gives its similarity matrices as images only",
    "correlation": "Fig. 7 gives C_IC and r_0.1 in its image only",
    "kmeans": "Fig. 11 gives its cluster centres as an image only",
    "adversarial": "Table 3's error rates are printed in an image the paper's text does not carry",
}


def experiment_of(run: pd.Series) -> str | None:
    """The paper's experiment a run repeats, from its data set, model and class count."""
    model, classes = run["model"], run["num_classes"]
    if run["dataset"] == "cifar10" and model == "resnet20":
        return CIFAR10_RESNET20
    if run["dataset"] == "cifar10" and model == "alexnet":
        return CIFAR10_ALEXNET
    if run["dataset"] == "imagefolder" and model == "resnet18" and classes == 1000:
        return IMAGENET_RESNET18
    if run["dataset"] == "imagefolder" and model == "resnet152" and classes == 6 and run.get("preset") == "voc-resnet152":
        return VOC_RESNET152
    return None


def beside(section: str, runs: pd.DataFrame) -> list[str]:
    """Lines for a report section: the paper's figures for the experiments these runs repeat,
    or why there are none."""
    experiments = {experiment_of(run) for _, run in runs.iterrows()} - {None}
    found = [p for p in PUBLISHED if p.section == section and p.experiment in experiments]
    lines = [f"Paper, {p.source}, {p.experiment}: " + "; ".join(f"{k} {v}" for k, v in p.figures.items())
             for p in found]
    if lines:
        return lines
    unmatched = ", ".join(sorted(experiments)) or ", ".join(sorted(set(runs["dataset"].astype(str))))
    if section in NOT_IN_TEXT:
        note = NOT_IN_TEXT[section]
        return [f"Paper: {note}." if experiments else f"Paper: no published figure for {unmatched}; {note}."]
    reported = _experiments(section)
    if reported:
        return [f"Paper: no published figure for {unmatched} (it reports {', '.join(reported)})."]
    return []


def _experiments(section: str) -> list[str]:
    return list(dict.fromkeys(p.experiment for p in PUBLISHED if p.section == section))
