"""The paper's published figures beside the runs that repeat its experiments."""
import pandas as pd

from analysis.published import CIFAR10_RESNET20, beside, experiment_of


def test_a_run_of_a_paper_experiment_is_shown_beside_the_published_figures():
    cifar = pd.DataFrame({"dataset": ["cifar10", "cifar10"], "model": ["resnet20", "resnet20"],
                          "num_classes": [10, 10], "preset": ["cifar10-resnet20", None]})
    assert experiment_of(cifar.iloc[0]) == CIFAR10_RESNET20
    (line,) = beside("overview", cifar)
    assert line.startswith("Paper, Table 1, CIFAR-10 ResNet-20") and "CSG MIS 0.1603" in line
    assert "14.00% / 2.00%" in beside("blackbox", cifar)[0]
    assert "image" in beside("adversarial", cifar)[0]
    digits = cifar.assign(dataset="digits")
    assert beside("overview", digits) == [
        "Paper: no published figure for digits (it reports CIFAR-10 ResNet-20, ImageNet ResNet-18, "
        "PASCAL VOC 2010 ResNet-152 (six animals))."]
    assert beside("masking", digits) == [] and beside("adversarial", digits) == []
