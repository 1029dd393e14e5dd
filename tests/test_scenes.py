"""The embedded `digits-scenes` data set: deterministic, masks exactly the digit's pixels, and
a preset that trains."""
import numpy as np
import pandas as pd
import pytest

from csg import data as data_lib
from csg.data.scenes import CANVAS, make_scenes, render, scenes_split


@pytest.fixture(scope="module")
def digits():
    return data_lib.digits_split()[1]  # the 360 test digits, (N, 1, 8, 8)


def test_scenes_are_deterministic_from_the_seed(digits):
    a, b = (make_scenes(digits[:50], np.random.default_rng(7)) for _ in range(2))
    other = make_scenes(digits[:50], np.random.default_rng(8))
    assert all(np.array_equal(a[key], b[key]) for key in a)
    assert not np.array_equal(a["images"], other["images"])


def test_masks_cover_exactly_the_digits_nonzero_pixels(digits):
    scenes = make_scenes(digits, np.random.default_rng(0))
    for digit, mask, (top, left, size) in zip(digits, scenes["masks"], scenes["boxes"]):
        assert np.array_equal(mask, render(digit[0], size, top, left) > 0)
        assert mask.any() and not mask[:top].any() and not mask[top + size:].any()


def test_inside_its_mask_the_image_is_the_digit_plus_noise_alone(digits):
    """Distractors are kept off the digit: under the mask only the digit and the noise."""
    scenes = make_scenes(digits, np.random.default_rng(0))
    for digit, image, mask, (top, left, size) in zip(digits, scenes["images"], scenes["masks"], scenes["boxes"]):
        layer = render(digit[0], size, top, left)
        assert np.abs(image[0][mask] - layer[mask]).max() < 0.3  # 6 sigma of the noise
    outside = scenes["images"][:, 0][~scenes["masks"]]
    assert (outside > 0.3).mean() > 0.01  # but there is ink elsewhere: the fragments


def test_the_data_set_its_masks_and_its_preset():
    info = data_lib.describe("digits-scenes", None)
    train, test = data_lib.load("digits-scenes", None)
    assert (info.num_classes, info.train_size, info.in_channels) == (10, len(train), 1)
    assert test.tensors[0].shape[1:] == (1, CANVAS, CANVAS)
    masks = data_lib.evaluation_masks("digits-scenes", "test")
    assert masks.shape == (len(test), CANVAS, CANVAS)
    assert np.array_equal(test.tensors[1].numpy(), scenes_split()["test"]["labels"])


@pytest.mark.slow
def test_digits_scenes_trains_with_its_preset(scenes_runs):
    """Given only --dataset, the run takes the digits-scenes preset (the localization tests
    train the same runs: tests/conftest.py's scenes_runs)."""
    results, rows = scenes_runs
    runs = pd.read_parquet(results / "runs").set_index("run_id")
    assert rows["csg"]["status"] == "finished" and runs.loc["csg", "dataset"] == "digits-scenes"
    assert runs.loc["csg", "workers"] == 2 and runs.loc["csg", "lambda2"] == 0.3  # from the digits-scenes preset
    assert runs.loc["csg", "epochs_completed"] == 2 and runs.loc["std", "method"] == "std"
