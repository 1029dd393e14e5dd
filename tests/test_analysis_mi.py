"""The Ray layer of the MI analysis: fan-out, feature extraction, and the analyze job."""
import numpy as np
import pandas as pd
import pytest

from analysis.mutual_info import extract_features, mi_matrix, mi_matrix_ray
from tests.helpers import job_main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_ray_matrix_equals_the_single_process_one(ray_local):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 800)
    x = np.maximum(rng.normal(size=(800, 10)) + labels[:, None] * 0.2, 0)
    blocks = mi_matrix_ray(x, labels, 7, classes_per_task=2, filters_per_task=3, progress=False)
    np.testing.assert_array_equal(blocks, mi_matrix(x, labels, 7))


def test_sharded_extraction_equals_one_pass_and_reads_every_conv_layer(digits_run):
    results, row = digits_run
    one = extract_features(row["checkpoint"], all_layers=True)
    two = extract_features(row["checkpoint"], all_layers=True, shards=2)
    assert one["features"].shape == (360, 64) and one["all_layers"].shape[0] == 360
    assert one["all_layers"].shape[1] > 64  # every conv layer of ResNet-20, not just the last
    for name in one:
        np.testing.assert_allclose(one[name], two[name], rtol=0, atol=1e-5)
    accuracy = float((one["predictions"] == one["labels"]).mean())
    assert accuracy == pd.read_parquet(results / "runs").loc[0, "final_acc"]


def test_analyze_mi_recomputes_the_runs_mi_table(digits_copy):
    results, row = digits_copy
    trained = pd.read_parquet(results / "mi")
    mis = job_main("analyze")(["mi", "--results", str(results), "--run", row["run_id"]])
    recomputed = pd.read_parquet(results / "mi")
    np.testing.assert_allclose(recomputed["mi"], trained["mi"], rtol=0, atol=1e-9)
    assert abs(mis - row["mis"]) < 1e-9
