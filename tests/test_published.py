"""The paper's published figures beside the runs that repeat its experiments."""
import pandas as pd

from analysis.published import CIFAR10_ALEXNET, CIFAR10_RESNET20, beside, experiment_of


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
    assert beside("masking", digits) == [
        "Paper: no published figure for digits; Fig. 5 gives its confusion matrices after masking as images only."]
    assert beside("fig4", digits) == []  # the paper publishes nothing a section without figures could show


def test_alexnet_and_cifar100_are_named_not_left_blank():
    alexnet = pd.DataFrame({"dataset": ["cifar10"], "model": ["alexnet"], "num_classes": [10], "preset": [None]})
    assert experiment_of(alexnet.iloc[0]) == CIFAR10_ALEXNET
    assert beside("correlation", alexnet) == ["Paper: Fig. 7 gives C_IC and r_0.1 in its image only."]
    assert beside("overview", alexnet)[0].startswith("Paper: no published figure for CIFAR-10 AlexNet (it reports")
    cifar100 = alexnet.assign(dataset="cifar100", model="resnet20", num_classes=100)
    assert experiment_of(cifar100.iloc[0]) is None
    assert beside("blackbox", cifar100) == ["Paper: no published figure for cifar100 (it reports CIFAR-10 ResNet-20)."]
