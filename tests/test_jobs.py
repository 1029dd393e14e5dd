"""CPU smoke runs of the jobs not covered elsewhere (the quickstart: tests/test_report.py)."""
import pandas as pd
import pytest

from tests.helpers import job_main, make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_train_imagenet_preset_on_a_tiny_tree(ray_local, tmp_path):
    tree = make_imagefolder(tmp_path / "tree", per_class=(4, 2), size=48)
    row = job_main("train_imagenet")(["--data", str(tree), "--workers", "1", "--epochs", "1", "--batch-size", "4",
                                      "--image-size", "32", "--g-density", "0.5", "--loader-workers", "0", "--results", str(tmp_path / "r")])
    assert row["status"] == "finished" and row["num_filters"] == 512
    runs = pd.read_parquet(tmp_path / "r" / "runs")
    assert runs.loc[0, "model"] == "resnet18" and runs.loc[0, "batch_size"] == 4
